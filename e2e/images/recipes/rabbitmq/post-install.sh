#!/bin/sh
set -eu
echo '[rabbitmq_management,rabbitmq_prometheus].' > /etc/rabbitmq/enabled_plugins
mkdir -p /var/lib/rabbitmq /var/log/rabbitmq /etc/rabbitmq/conf.d
chown -R rabbitmq:rabbitmq /var/lib/rabbitmq /var/log/rabbitmq /etc/rabbitmq
chmod 0755 /usr/local/bin/docker-entrypoint.sh
# the Debian wrappers in /usr/sbin su to the rabbitmq user; the real scripts in
# /usr/lib/rabbitmq/bin come first on PATH, like in the official image.
ls /usr/lib/rabbitmq/bin/
# docs and the erlang sources/headers are not needed at run time
rm -rf /usr/lib/erlang/lib/*/src /usr/lib/erlang/lib/*/include /usr/lib/erlang/lib/*/examples \
       /usr/lib/erlang/man /usr/lib/erlang/erts-*/src /usr/lib/erlang/erts-*/include || true
# the package's postinst generated an Erlang cookie: never bake one into the
# image (the entrypoint creates one per container on first start)
rm -f /var/lib/rabbitmq/.erlang.cookie
