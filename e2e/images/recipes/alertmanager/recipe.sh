# Stands in for prom/alertmanager (Compose pins v0.30.0; bookworm ships 0.25).
TAG=infra-local/alertmanager:0
PACKAGES="prometheus-alertmanager busybox"
CHANGES=(
  'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
  'USER nobody'
  'WORKDIR /alertmanager'
  'VOLUME /alertmanager'
  'EXPOSE 9093'
  'ENTRYPOINT ["/bin/alertmanager"]'
  'CMD ["--config.file=/etc/alertmanager/alertmanager.yml", "--storage.path=/alertmanager"]'
)
