# Stands in for prom/pushgateway (Compose pins v1.11.2; bookworm ships 1.5).
TAG=infra-local/pushgateway:1
PACKAGES="prometheus-pushgateway busybox"
CHANGES=(
  'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
  'USER nobody'
  'WORKDIR /pushgateway'
  'EXPOSE 9091'
  'ENTRYPOINT ["/bin/pushgateway"]'
)
