#!/usr/bin/env bash
# Takes the local platform down: removes the deployed services through the
# coordinator (named volumes are kept unless --volumes), then stops the
# operators, the coordinator and NATS.
set -euo pipefail
cd "$(dirname "$0")/../.."
state=$PWD/.state
profile=${PROFILE:-release}
grpc=${INFRA_GRPC:-127.0.0.1:50051}
volumes=()
[ "${1:-}" = "--volumes" ] && volumes=(--volumes)

project=${INFRA_PROJECT:-infra}

running() { [ -f "$state/pids/$1" ] && kill -0 "$(cat "$state/pids/$1")" 2>/dev/null; }
if running coordinator; then
  "target/$profile/infractl" --addr "http://$grpc" --leader-wait 30 remove --all "${volumes[@]}" || true
fi
for name in coordinator gateway-operator auth-operator data-operator messaging-operator observability-operator \
  ai-operator workflow-operator tooling-operator communication-operator nats; do
  if running "$name"; then
    kill "$(cat "$state/pids/$name")" 2>/dev/null || true
    for _ in $(seq 50); do running "$name" || break; sleep 0.1; done
    echo "down: stopped $name"
  fi
  rm -f "$state/pids/$name"
done
# The networks the operators made for the project, now that nothing is
# attached to them (as `docker compose down` does).
for net in $(docker network ls -q --filter "label=io.infra.managed-by=infra-operator" --filter "name=${project}_"); do
  name=$(docker network inspect -f '{{.Name}}' "$net" 2>/dev/null || echo "$net")
  if docker network rm "$net" >/dev/null 2>&1; then echo "down: removed network $name"; fi
done
