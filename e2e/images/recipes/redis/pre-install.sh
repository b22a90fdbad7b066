#!/bin/sh
set -eu
# uid/gid 999 like the official redis and valkey images
groupadd -r -g 999 redis
useradd -r -u 999 -g redis -d /var/lib/redis -s /usr/sbin/nologin redis
