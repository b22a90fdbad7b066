# Stands in for the official `mariadb` image (the mariadb-galera stack uses
# mariadb:11.8.3; bookworm ships MariaDB 10.11 LTS with Galera 4). Same
# entrypoint contract: MARIADB_ROOT_PASSWORD(_FILE), MARIADB_DATABASE,
# MARIADB_USER, MARIADB_PASSWORD(_FILE) (and their MYSQL_* aliases),
# /docker-entrypoint-initdb.d/*.sh|*.sql|*.sql.gz|*.sql.xz run once on an empty
# datadir against a socket-only server with wsrep off, then `exec mariadbd` as
# uid 999. mariadb-backup and socat make the mariabackup SST work.
TAG=infra-local/mariadb:10
PACKAGES="mariadb-server mariadb-client mariadb-backup galera-4 socat iproute2 procps tzdata xz-utils"
CHANGES=(
  'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
  'ENV LANG=C.UTF-8'
  'VOLUME /var/lib/mysql'
  'EXPOSE 3306'
  'ENTRYPOINT ["docker-entrypoint.sh"]'
  'CMD ["mariadbd"]'
)
