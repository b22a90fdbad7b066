#!/bin/sh
set -eu
for b in server cli benchmark check-aof check-rdb sentinel; do
  [ -e /usr/bin/redis-$b ] && ln -sf redis-$b /usr/bin/valkey-$b
done
mkdir -p /data && chown redis:redis /data
chmod 0755 /usr/local/bin/docker-entrypoint.sh
ln -sf /usr/local/bin/docker-entrypoint.sh /docker-entrypoint.sh
