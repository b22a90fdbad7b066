#!/bin/sh
# Spilo's entrypoint, as far as the stack uses it: `/launch.sh init` writes a
# Patroni configuration from the environment (see configure-patroni.py) and
# runs Patroni as the postgres user. Anything else is run as given.
set -eu
if [ "${1:-init}" != init ]; then exec "$@"; fi
: "${PGROOT:=/home/postgres/pgdata/pgroot}"
export PGROOT
mkdir -p "$PGROOT" /run/postgresql
chown postgres:postgres "$(dirname "$PGROOT")" "$PGROOT" /run/postgresql
chmod 0700 "$PGROOT"
python3 /usr/local/bin/configure-patroni.py > /run/postgresql/patroni.yml
chown postgres:postgres /run/postgresql/patroni.yml
chmod 0600 /run/postgresql/patroni.yml
exec setpriv --reuid=postgres --regid=postgres --init-groups \
  env HOME=/home/postgres patroni /run/postgresql/patroni.yml
