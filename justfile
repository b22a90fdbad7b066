# Recipes for the infra platform. `just --list` shows them.

set shell := ["bash", "-euo", "pipefail", "-c"]

# Bring the platform up on this host and deploy the core stack.
up selection="core":
    bash e2e/local/up.sh {{selection}}

# The install image (infra-local/operators:TAG) from the release build: run it on each host (docs/operating.md).
image tag="dev":
    cargo build --release -p infra-operators --bin infra-operator
    bash e2e/images/build.sh debian
    INFRA_OPERATORS_TAG={{tag}} bash e2e/images/build.sh operators

# Take the local platform down (add --volumes to delete named volumes too).
down *flags:
    bash e2e/local/down.sh {{flags}}

# Status table of every deployed service.
status:
    target/release/infractl status

# Build the stand-in service images from Debian packages (cached).
images *names:
    bash e2e/images/build.sh {{names}}

# Formatting and lints, as CI runs them.
check:
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings

# Every test that needs neither Docker nor NATS: the pure logic, on any machine.
unit:
    bash e2e/images/make-dev-secrets.sh
    cargo test --workspace --lib --bins
    cargo test -p infra-coordinator --test catalog --test lint

# The whole test suite: lints, unit, integration (real Docker and NATS) and end to end (real grpcurl).
test: check
    bash e2e/local/install-tools.sh
    bash e2e/images/build.sh
    bash e2e/images/make-dev-secrets.sh
    cargo build --workspace --bins
    INFRA_PROFILE=debug bash e2e/images/build.sh operators
    bash e2e/local/verify-units.sh
    cargo test --workspace --no-fail-fast

# Bring-up benchmark against docker-compose 1.29 (prints medians, ratio, critical path, RSS).
bench-up rounds="3":
    bash e2e/local/install-tools.sh
    bash e2e/images/build.sh
    bash e2e/images/make-dev-secrets.sh
    cargo build --release --bins
    cargo run --release -p infra-e2e --bin bench-up -- --rounds {{rounds}}

# Simulated hosts (Docker-in-Docker) with a NATS cluster and a coordinator, until Ctrl-C (e.g. `just hosts-up 3 --tiers data,gateway --image infra-local/nginx:1`).
hosts-up n="3" *flags:
    bash e2e/images/build.sh host nats
    cargo build --workspace --bins
    target/debug/hosts up {{n}} {{flags}}

# Remove simulated-host clusters left running (an id, or every one hosts-up started; --all: also kept test clusters).
hosts-down *args:
    cargo build -p infra-e2e --bin hosts
    target/debug/hosts down {{args}}

# Rollouts, host loss and leadership across simulated hosts (prints figures; see e2e/BENCH.md).
bench-hosts rounds="3":
    bash e2e/local/install-tools.sh
    bash e2e/images/build.sh host nats nginx debian
    cargo build --workspace --bins
    target/debug/bench-hosts --rounds {{rounds}}

# The shipped `ha` selection over three joined hosts (the headline: whole roll, a lost host that comes back, three clients), then the Valkey cluster and Galera on their own, `rounds` times: the suite runs each once, this repeats them for e2e/BENCH.md (prints the FAULT and BENCH lines).
bench-ha rounds="3":
    bash e2e/local/install-tools.sh
    bash e2e/images/build.sh
    bash e2e/images/make-dev-secrets.sh
    cargo build --workspace --bins
    INFRA_PROFILE=debug bash e2e/images/build.sh operators
    for i in $(seq {{rounds}}); do echo "round $i"; cargo test -p infra-e2e --test ha -- --nocapture 2>&1 | grep -E '^(BENCH|FAULT|test result)'; cargo test -p infra-e2e --test valkey --test galera_hosts -- over_three --nocapture --test-threads 1 2>&1 | grep -E '^(BENCH|FAULT|test result)'; done

# Logs under a burst: `mb` MB written at once, read whole across the bus (throughput, the operator's and the coordinator's memory, another call meanwhile) and the follow latency across hosts; the suite runs it with 5 MB.
bench-logs mb="50":
    bash e2e/local/install-tools.sh
    bash e2e/images/build.sh host nats debian
    cargo build --workspace --bins
    LOGS_BURST_MB={{mb}} cargo test -p infra-e2e --test logs -- --nocapture --test-threads 1 2>&1 | grep -E '^(BENCH|test result)'
