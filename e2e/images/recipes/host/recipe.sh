# A simulated host for the multi-host harness (e2e/src/hosts.rs): bookworm
# with Debian's docker.io (the same 20.10 engine as the real hosts) and what
# its dockerd needs (iptables, iproute2, procps), plus ca-certificates and
# curl. The entrypoint starts an inner `dockerd --storage-driver=vfs` (logs
# in /var/log/dockerd.log), waits until `docker info` answers, touches
# /run/host-ready and keeps running; the container dies with its engine.
# Run it with the flags of e2e/src/hosts.rs (named capabilities, seccomp and
# apparmor unconfined, tmpfs /run and /var/lib/docker:exec, /sys/fs/cgroup).
TAG=infra-local/host:1
PACKAGES="docker.io iptables iproute2 procps ca-certificates curl"
CHANGES=(
  'ENV PATH=/opt/infra/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
  'ENV LANG=C.UTF-8'
  'ENTRYPOINT ["/usr/local/bin/host-entrypoint.sh"]'
)
