# Stands in for haproxy:3.2.9-alpine (bookworm ships HAProxy 2.6). Upstream
# contract kept: config at /usr/local/etc/haproxy/haproxy.cfg, `haproxy -W
# -db -f <that file>` as the default command, logs to stdout, busybox wget
# for health checks, STOPSIGNAL SIGUSR1 (soft stop), user haproxy.
TAG=infra-local/haproxy:2
PACKAGES="haproxy busybox"
STOPSIGNAL=SIGUSR1
CHANGES=(
  'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
  'WORKDIR /var/lib/haproxy'
  'USER haproxy'
  'CMD ["haproxy", "-W", "-db", "-f", "/usr/local/etc/haproxy/haproxy.cfg"]'
)
