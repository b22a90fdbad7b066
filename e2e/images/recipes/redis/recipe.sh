# Stands in for valkey/valkey (and the official redis image): redis-server 7
# from bookworm, with valkey-server/valkey-cli/valkey-benchmark as symlinks,
# uid 999, /data, and the official entrypoint's behaviour (protected mode off,
# privileges dropped to the redis user when started as root).
TAG=infra-local/redis:7
PACKAGES="redis-server"
CHANGES=(
  'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
  'ENV LANG=C.UTF-8'
  'VOLUME /data'
  'WORKDIR /data'
  'EXPOSE 6379'
  'ENTRYPOINT ["docker-entrypoint.sh"]'
  'CMD ["redis-server"]'
)
