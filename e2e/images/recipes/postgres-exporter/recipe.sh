# Stands in for quay.io/prometheuscommunity/postgres-exporter (bookworm ships
# 0.11). The Debian package depends on systemd-sysv, so only its binary is
# taken (apt-get download + dpkg-deb -x); it needs nothing but libc.
TAG=infra-local/postgres-exporter:0
PACKAGES="busybox"
CHANGES=(
  'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
  'USER nobody'
  'EXPOSE 9187'
  'ENTRYPOINT ["/bin/postgres_exporter"]'
)
