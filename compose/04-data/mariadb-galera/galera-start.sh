#!/bin/bash
# Starts one node of mariadb-galera through the image's own entrypoint (which
# initialises an empty data directory first, with wsrep off). Runs as root
# (the entrypoint drops to mysql).
#   GALERA_NODE       this node's name (galera-1..3)
#   GALERA_BOOTSTRAP  1 on the node that may create the cluster (galera-1)
#   INFRA_HOST_ADDR   the host's private address, set by the operator when
#                     this node's ports are published there (peers on other
#                     hosts)
# galera-1 bootstraps (--wsrep-new-cluster) only when its data directory is
# new or Galera marked it safe_to_bootstrap (it was the last node to stop);
# otherwise it joins the running nodes like the others. After an unclean
# stop of the whole cluster, pick the most advanced node and set
# safe_to_bootstrap: 1 in its grastate.dat by hand (Galera's usual recovery).
# The SST credentials go into a config file only mysql can read, never on
# the command line: the server logs its command line whenever it starts a
# state transfer ("WSREP: Running: 'wsrep_sst_mariabackup ... --mysqld-args
# ..."), and /proc/<pid>/cmdline is world-readable.
set -euo pipefail
auth=/etc/mysql/mariadb.conf.d/99-galera-sst-auth.cnf
install -m 0600 -o mysql -g mysql /dev/null "$auth"
printf '[mariadbd]\nwsrep_sst_auth = mariabackup:%s\n' "$(< /run/secrets/galera_sst_password)" > "$auth"
args=("--wsrep-node-name=${GALERA_NODE}")
# Across hosts the peers reach this node at its host's private address (the
# operator's INFRA_HOST_ADDR, where this node's ports are published), which
# is not an address of the container: Galera advertises it for group
# communication, state transfer (SST, 4444) and incremental transfer (IST,
# 4568) but listens on every address of the container. On one host Galera
# takes the container's own address.
if [ -n "${INFRA_HOST_ADDR:-}" ]; then
  args+=("--wsrep-node-address=${INFRA_HOST_ADDR}")
  args+=("--wsrep-sst-receive-address=${INFRA_HOST_ADDR}:4444")
  args+=("--wsrep-provider-options=ist.recv_addr=${INFRA_HOST_ADDR}:4568;ist.recv_bind=0.0.0.0")
fi
state=/var/lib/mysql/grastate.dat
if [ "${GALERA_BOOTSTRAP:-0}" = 1 ]; then
  if [ ! -s "$state" ] || grep -q '^safe_to_bootstrap: *1' "$state"; then
    echo "galera-start: bootstrapping a new cluster on ${GALERA_NODE}"
    args+=("--wsrep-new-cluster")
  fi
fi
exec docker-entrypoint.sh mariadbd "${args[@]}" "$@"
