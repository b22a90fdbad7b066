#!/bin/sh
set -eu
# the upstream image's binary paths
ln -sf /usr/bin/etcd /usr/local/bin/etcd
ln -sf /usr/bin/etcdctl /usr/local/bin/etcdctl
/usr/local/bin/etcd --version
# etcdutl and the Debian service bits are not needed in a container
rm -f /usr/bin/etcdutl /etc/default/etcd
