# Stands in for oliver006/redis_exporter (-alpine variant; bookworm ships
# 1.45). Upstream puts the binary at /redis_exporter and runs as uid 59000.
TAG=infra-local/redis-exporter:1
PACKAGES="prometheus-redis-exporter busybox"
CHANGES=(
  'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
  'USER 59000:59000'
  'EXPOSE 9121'
  'ENTRYPOINT ["/redis_exporter"]'
)
