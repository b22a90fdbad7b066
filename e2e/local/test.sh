#!/usr/bin/env bash
# The whole test suite, on a fresh machine: installs the tools it needs
# (just, nats-server, grpcurl, debootstrap), then `just test` (lints, unit,
# integration against real Docker and NATS, end to end with the real grpcurl).
set -euo pipefail
cd "$(dirname "$0")/../.."
bash e2e/local/install-tools.sh
just test
