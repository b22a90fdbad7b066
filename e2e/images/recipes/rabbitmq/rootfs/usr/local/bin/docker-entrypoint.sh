#!/bin/bash
# Behaves like the official rabbitmq image's entrypoint for what our Compose
# files use: RABBITMQ_DEFAULT_USER / RABBITMQ_DEFAULT_PASS / RABBITMQ_DEFAULT_VHOST
# (and their *_FILE variants), RABBITMQ_ERLANG_COOKIE, privilege drop to uid 999.
set -euo pipefail

file_env() {
  local var="$1" fileVar="${1}_FILE"
  if [ -n "${!fileVar:-}" ] && [ -z "${!var:-}" ]; then export "$var"="$(< "${!fileVar}")"; fi
  unset "$fileVar"
}

if [ "${1:0:1}" = '-' ]; then set -- rabbitmq-server "$@"; fi

if [ "$1" = rabbitmq-server ]; then
  file_env RABBITMQ_DEFAULT_USER
  file_env RABBITMQ_DEFAULT_PASS
  file_env RABBITMQ_DEFAULT_VHOST
  file_env RABBITMQ_ERLANG_COOKIE
  if [ "$(id -u)" = 0 ]; then
    # RabbitMQ 3.10 reads RABBITMQ_DEFAULT_USER/PASS from the environment only
    # through the official image's entrypoint; write them as configuration.
    conf=/etc/rabbitmq/conf.d/20-default-user.conf
    : > "$conf"
    [ -z "${RABBITMQ_DEFAULT_USER:-}" ]  || echo "default_user = $RABBITMQ_DEFAULT_USER" >> "$conf"
    [ -z "${RABBITMQ_DEFAULT_PASS:-}" ]  || echo "default_pass = $RABBITMQ_DEFAULT_PASS" >> "$conf"
    [ -z "${RABBITMQ_DEFAULT_VHOST:-}" ] || echo "default_vhost = $RABBITMQ_DEFAULT_VHOST" >> "$conf"
    chown rabbitmq:rabbitmq "$conf"; chmod 0600 "$conf"
    if [ -n "${RABBITMQ_ERLANG_COOKIE:-}" ]; then
      printf '%s' "$RABBITMQ_ERLANG_COOKIE" > /var/lib/rabbitmq/.erlang.cookie
      chmod 0400 /var/lib/rabbitmq/.erlang.cookie
    fi
    # a per-container cookie, created before any CLI call (health checks run
    # as root with HOME=/var/lib/rabbitmq and would otherwise create it root-owned)
    if [ ! -s /var/lib/rabbitmq/.erlang.cookie ]; then
      (umask 0377; od -An -N16 -tx1 /dev/urandom | tr -d ' \n' | tr 'a-f0-9' 'A-P' > /var/lib/rabbitmq/.erlang.cookie)
    fi
    find /var/lib/rabbitmq /var/log/rabbitmq \! -user rabbitmq -exec chown rabbitmq '{}' + 2>/dev/null || true
    exec setpriv --reuid=rabbitmq --regid=rabbitmq --init-groups "$0" "$@"
  fi
fi
exec "$@"
