#!/bin/sh
set -eu
chmod 0755 /usr/local/bin/host-entrypoint.sh
# /opt/infra/bin: where the harness bind-mounts the operator binaries;
# /var/lib/infra: the operators' state and logs.
mkdir -p /opt/infra/bin /var/lib/infra
# Debug and overlay-network tools docker.io ships that a simulated host never
# runs (dockerd uses the runc v2 shim); about 70 MB.
rm -f /usr/bin/dnet /usr/sbin/ovrouter /usr/bin/ctr /usr/bin/containerd-stress \
      /usr/bin/containerd-shim /usr/bin/containerd-shim-runc-v1
dockerd --version
