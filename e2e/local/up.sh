#!/usr/bin/env bash
# Brings the platform up on this host: a local NATS server with JetStream,
# the coordinator and the nine tier operators (as background processes,
# state and logs under .state/), then deploys the core stack through the
# coordinator and prints the status of every service.
#
#   e2e/local/up.sh [SELECTION]     default selection: core (compose/selections.yml)
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
state=$root/.state
selection=${1:-core}
profile=${PROFILE:-release}
nats_port=${INFRA_NATS_PORT:-4222}
grpc=${INFRA_GRPC:-127.0.0.1:50051}
host_id=${INFRA_HOST_ID:-local}
bin=$root/target/$profile
mkdir -p "$state/logs" "$state/pids" "$state/operators"

bash e2e/local/install-tools.sh
bash e2e/images/build.sh
bash e2e/images/make-dev-secrets.sh
[ -f compose/.env ] || cp compose/.env.example compose/.env

echo "up: building the operators and the coordinator ($profile)"
if [ "$profile" = release ]; then cargo build --release --bins -q; else cargo build --bins -q; fi

running() { [ -f "$state/pids/$1" ] && kill -0 "$(cat "$state/pids/$1")" 2>/dev/null; }
start() { # name, command...
  local name=$1; shift
  if running "$name"; then echo "up: $name already running (pid $(cat "$state/pids/$name"))"; return; fi
  nohup "$@" >"$state/logs/$name.log" 2>&1 &
  echo $! >"$state/pids/$name"
  echo "up: started $name (pid $!, log .state/logs/$name.log)"
}

start nats nats-server -js -a 127.0.0.1 -p "$nats_port" -sd "$state/nats"
for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/"$nats_port") 2>/dev/null && break; sleep 0.1; done
export INFRA_NATS__URL="nats://127.0.0.1:$nats_port"

start coordinator "$bin/coordinator" --grpc-listen "$grpc" --compose-dir compose --override e2e/images/local.override.yml
for tier in gateway auth data messaging observability ai workflow tooling communication; do
  start "$tier-operator" "$bin/$tier-operator" --host "$host_id" --state-dir "$state/operators"
done

ctl=("$bin/infractl" --addr "http://$grpc")
"${ctl[@]}" wait --operators 9 --timeout 60
echo
echo "up: deploying the '$selection' selection in dependency order"
"${ctl[@]}" deploy --named "$selection" --timeout 180
echo
"${ctl[@]}" status
cat <<MSG

The platform is up. Drive the coordinator with grpcurl (reflection is on):
  grpcurl -plaintext $grpc list
  grpcurl -plaintext $grpc infra.coordinator.v1.CoordinatorService/GetStatus
  grpcurl -plaintext -d '{"selection":{"named":"$selection"}}' $grpc infra.coordinator.v1.CoordinatorService/Plan
  grpcurl -plaintext $grpc infra.coordinator.v1.CoordinatorService/WatchEvents
or with the table client: target/$profile/infractl status | hosts | plan --named core
Take everything down (volumes kept):  just down      (and volumes too: just down --volumes)
MSG
