#!/bin/sh
set -eu
rm -rf /var/lib/mysql
mkdir -p /var/lib/mysql /run/mysqld /docker-entrypoint-initdb.d
chown -R mysql:mysql /var/lib/mysql /run/mysqld
# the socket and lock files must be writable whatever uid the server runs as
chmod 1777 /run/mysqld
# as the official image: listen on every interface, log to stderr (docker
# logs), no fixed user line (the entrypoint drops to mysql itself)
find /etc/mysql -name '*.cnf' -exec sed -Ei 's/^(bind-address|log|user\s)/#&/' {} +
if grep -rE '^(bind-address|log|user\s)' /etc/mysql; then exit 1; fi
# containers reach each other by name: no reverse lookups, no host cache
printf '[mariadb]\nhost-cache-size=0\nskip-name-resolve\n' > /etc/mysql/mariadb.conf.d/05-skipcache.cnf
# as the official image: /etc/mysql/conf.d (where stacks mount their files)
# is read after mariadb.conf.d, so it wins
sed -i -e '/^!includedir/d' /etc/mysql/mariadb.cnf
printf '!includedir /etc/mysql/mariadb.conf.d/\n!includedir /etc/mysql/conf.d/\n' >> /etc/mysql/mariadb.cnf
mkdir -p /etc/mysql/conf.d
# the Galera provider where the stack's galera.cnf (and upstream) expect it
test -f /usr/lib/galera/libgalera_smm.so
for b in mariabackup wsrep_sst_mariabackup socat ss mariadb-install-db mariadbd mariadb mariadb-tzinfo-to-sql; do command -v "$b"; done
chmod 0755 /usr/local/bin/docker-entrypoint.sh
ln -sf usr/local/bin/docker-entrypoint.sh /docker-entrypoint.sh
# not needed in a container: the test suite and SysV/systemd glue
rm -rf /usr/share/mysql/mysql-test /etc/init.d/mariadb /etc/init.d/mysql /lib/systemd/system/mariadb* /lib/systemd/system/mysql*
