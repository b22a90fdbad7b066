# Stands in for ghcr.io/zalando/spilo-17 (PostgreSQL 17 + Patroni) with
# bookworm's patroni 3.0 and postgresql-15. Spilo's contract as the stack uses
# it: `/launch.sh init` reads SCOPE, ETCD3_HOSTS, PGUSER_SUPERUSER /
# PGPASSWORD_SUPERUSER, PGUSER_STANDBY / PGPASSWORD_STANDBY, PGUSER_ADMIN /
# PGPASSWORD_ADMIN, PGROOT and SPILO_CONFIGURATION (YAML merged over the
# generated configuration); the member name and the addresses it advertises
# follow the hostname; REST API on 8008, PostgreSQL on 5432; curl for health
# checks; started as root, runs as postgres (uid 101, Spilo's). Plain PATRONI_*
# variables work as well (Patroni reads them itself).
TAG=infra-local/patroni:3
PACKAGES="patroni python3-etcd postgresql-15 curl"
STOPSIGNAL=SIGINT
CHANGES=(
  'ENV PATH=/usr/lib/postgresql/15/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
  'ENV LANG=C.UTF-8'
  'ENV PGROOT=/home/postgres/pgdata/pgroot'
  'VOLUME /home/postgres/pgdata'
  'EXPOSE 5432 8008'
  'ENTRYPOINT ["/bin/sh", "/launch.sh"]'
  'CMD ["init"]'
)
