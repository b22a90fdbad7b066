# Stands in for prom/prometheus (Compose pins v3.9.0; bookworm ships 2.42).
# Upstream layout: /bin/prometheus, config /etc/prometheus/prometheus.yml,
# data /prometheus, user nobody, busybox wget for health checks.
TAG=infra-local/prometheus:2
PACKAGES="prometheus busybox"
CHANGES=(
  'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
  'USER nobody'
  'WORKDIR /prometheus'
  'VOLUME /prometheus'
  'EXPOSE 9090'
  'ENTRYPOINT ["/bin/prometheus"]'
  'CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]'
)
