#!/bin/sh
set -eu
ln -sf busybox /usr/bin/wget
ln -sf /usr/bin/prometheus-redis-exporter /redis_exporter
/redis_exporter --version
