# Stands in for quay.io/coreos/etcd (Compose pins v3.6.7; bookworm ships
# etcd 3.4.23). Upstream contract kept: /usr/local/bin/etcd and
# /usr/local/bin/etcdctl, configured by ETCD_* variables only, data in
# ETCD_DATA_DIR (the stack mounts a volume there), v3 API, no shell needed
# for its health check (`etcdctl ... endpoint health`).
TAG=infra-local/etcd:3
PACKAGES="etcd-server etcd-client"
CHANGES=(
  'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
  'ENV ETCDCTL_API=3'
  'EXPOSE 2379 2380'
  'CMD ["/usr/local/bin/etcd"]'
)
