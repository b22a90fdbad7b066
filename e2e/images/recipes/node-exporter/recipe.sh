# Stands in for prom/node-exporter (bookworm ships 1.5).
TAG=infra-local/node-exporter:1
PACKAGES="prometheus-node-exporter busybox"
CHANGES=(
  'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
  'USER nobody'
  'EXPOSE 9100'
  'ENTRYPOINT ["/bin/node_exporter"]'
)
