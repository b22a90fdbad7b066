#!/bin/sh
set -eu
# JIT and LLVM are dropped (about 130 MB); nothing here needs them
rm -rf /usr/lib/postgresql/15/lib/llvmjit.so /usr/lib/postgresql/15/lib/llvmjit_types.bc /usr/lib/postgresql/15/lib/bitcode \
       /usr/lib/x86_64-linux-gnu/libLLVM-14.so* /usr/lib/x86_64-linux-gnu/libz3.so*
rm -rf /usr/share/i18n/locales /usr/share/i18n/charmaps
mkdir -p /var/run/postgresql /home/postgres/pgdata
chown -R postgres:postgres /var/run/postgresql /home/postgres
chmod 3777 /var/run/postgresql
chmod 0755 /launch.sh
patroni --version
python3 -c 'import etcd, psycopg2, yaml'
