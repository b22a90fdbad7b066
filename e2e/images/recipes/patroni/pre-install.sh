#!/bin/sh
set -eu
# Spilo's uid/gid for postgres
groupadd -r -g 101 postgres
useradd -r -u 101 -g postgres -d /home/postgres -s /bin/bash postgres
mkdir -p /home/postgres/pgdata /etc/postgresql-common
chown -R postgres:postgres /home/postgres
echo 'create_main_cluster = false' > /etc/postgresql-common/createcluster.conf
