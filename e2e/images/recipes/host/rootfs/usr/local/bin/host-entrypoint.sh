#!/bin/sh
# Entrypoint of infra-local/host: run an inner Docker engine and stay up as
# long as it does. /var/lib/docker and /run are tmpfs (see e2e/src/hosts.rs),
# so every start begins with an empty engine. The engine logs to $DOCKERD_LOG
# (default /var/log/dockerd.log); arguments are passed on to dockerd.
set -eu
log="${DOCKERD_LOG:-/var/log/dockerd.log}"
rm -f /run/host-ready
mkdir -p "$(dirname "$log")"
echo "=== host-entrypoint: start $(date -u +%FT%TZ)" >>"$log"
dockerd --storage-driver=vfs --host=unix:///var/run/docker.sock "$@" >>"$log" 2>&1 &
pid=$!
trap 'kill -TERM "$pid" 2>/dev/null; wait "$pid"; exit 0' TERM INT
i=0
until docker info >/dev/null 2>&1; do
  if ! kill -0 "$pid" 2>/dev/null; then
    echo "host-entrypoint: dockerd exited" >&2; tail -n 50 "$log" >&2; exit 1
  fi
  i=$((i + 1))
  if [ "$i" -gt 600 ]; then
    echo "host-entrypoint: dockerd not ready after 60s" >&2; tail -n 50 "$log" >&2; exit 1
  fi
  sleep 0.1
done
touch /run/host-ready
echo "host-entrypoint: dockerd ready" >&2
wait "$pid"
