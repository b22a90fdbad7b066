# Recipes for the infra platform. `just --list` shows them.

set shell := ["bash", "-euo", "pipefail", "-c"]

# Bring the platform up on this host and deploy the core stack.
up selection="core":
    bash e2e/local/up.sh {{selection}}

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

# The whole test suite: lints, unit, integration (real Docker and NATS) and end to end (real grpcurl).
test: check
    bash e2e/local/install-tools.sh
    bash e2e/images/build.sh
    bash e2e/images/make-dev-secrets.sh
    cargo build --workspace --bins
    cargo test --workspace --no-fail-fast

# Bring-up benchmark against docker-compose 1.29 (prints medians, ratio, critical path, RSS).
bench-up rounds="3":
    bash e2e/local/install-tools.sh
    bash e2e/images/build.sh
    bash e2e/images/make-dev-secrets.sh
    cargo build --release --bins
    cargo run --release -p infra-e2e --bin bench-up -- --rounds {{rounds}}
