#!/bin/sh
set -eu
ln -sf busybox /usr/bin/wget
ln -sf prometheus-node-exporter /usr/bin/node_exporter
test -x /bin/node_exporter
