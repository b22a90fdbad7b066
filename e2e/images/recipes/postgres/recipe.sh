# Stands in for the official `postgres` image (Compose files use postgres:17;
# bookworm ships PostgreSQL 15). Same entrypoint contract: POSTGRES_PASSWORD /
# POSTGRES_PASSWORD_FILE, POSTGRES_USER, POSTGRES_DB, POSTGRES_INITDB_ARGS,
# PGDATA, /docker-entrypoint-initdb.d/*.sql|*.sql.gz|*.sh, uid 999.
TAG=infra-local/postgres:15
PACKAGES="postgresql-15"
STOPSIGNAL=SIGINT
CHANGES=(
  'ENV PATH=/usr/lib/postgresql/15/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
  'ENV LANG=C.UTF-8'
  'ENV PG_MAJOR=15'
  'ENV PGDATA=/var/lib/postgresql/data'
  'VOLUME /var/lib/postgresql/data'
  'EXPOSE 5432'
  'ENTRYPOINT ["docker-entrypoint.sh"]'
  'CMD ["postgres"]'
)
