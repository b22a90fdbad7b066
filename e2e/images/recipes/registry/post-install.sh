#!/bin/sh
set -eu
test -x /usr/bin/docker-registry
test -f /etc/docker/registry/config.yml
mkdir -p /var/lib/registry
