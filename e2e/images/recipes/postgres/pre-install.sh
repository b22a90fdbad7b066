#!/bin/sh
set -eu
# same uid/gid as the official image, so volumes move between the two
groupadd -r -g 999 postgres
useradd -r -u 999 -g postgres -d /var/lib/postgresql -s /bin/bash postgres
mkdir -p /var/lib/postgresql /etc/postgresql-common
chown postgres:postgres /var/lib/postgresql
# the package must not create a "main" cluster: the entrypoint runs initdb
echo 'create_main_cluster = false' > /etc/postgresql-common/createcluster.conf
