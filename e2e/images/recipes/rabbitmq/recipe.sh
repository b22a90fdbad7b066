# Stands in for rabbitmq:4-management: rabbitmq-server 3.10 from bookworm,
# management (and prometheus) plugins enabled, uid 999, logs to stdout,
# RABBITMQ_DEFAULT_USER/PASS (and *_FILE) honoured, HOME=/var/lib/rabbitmq so
# `rabbitmq-diagnostics -q ping` works as root (docker exec / health checks).
TAG=infra-local/rabbitmq:3
PACKAGES="rabbitmq-server"
CHANGES=(
  'ENV PATH=/usr/lib/rabbitmq/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
  'ENV LANG=C.UTF-8'
  'ENV HOME=/var/lib/rabbitmq'
  'ENV RABBITMQ_LOGS=-'
  'ENV RABBITMQ_DATA_DIR=/var/lib/rabbitmq'
  'VOLUME /var/lib/rabbitmq'
  'EXPOSE 4369 5671 5672 15671 15672 15692 25672'
  'ENTRYPOINT ["docker-entrypoint.sh"]'
  'CMD ["rabbitmq-server"]'
)
