#!/bin/sh
set -eu
# like the official image: listen on all interfaces by default
sed -ri "s!^#?(listen_addresses)\s*=\s*\S+.*!\1 = '*'!" /usr/share/postgresql/15/postgresql.conf.sample
grep -F "listen_addresses = '*'" /usr/share/postgresql/15/postgresql.conf.sample
# JIT is dropped to keep the image small (libLLVM + libz3 are ~130 MB); the
# official image has it, but nothing here relies on it.
sed -ri "s!^#?(jit)\s*=\s*\S+.*!\1 = off!" /usr/share/postgresql/15/postgresql.conf.sample
grep -E '^jit = off' /usr/share/postgresql/15/postgresql.conf.sample
rm -rf /usr/lib/postgresql/15/lib/llvmjit.so /usr/lib/postgresql/15/lib/llvmjit_types.bc /usr/lib/postgresql/15/lib/bitcode \
       /usr/lib/x86_64-linux-gnu/libLLVM-14.so* /usr/lib/x86_64-linux-gnu/libz3.so*
mkdir -p /var/run/postgresql /var/lib/postgresql/data /docker-entrypoint-initdb.d
chown -R postgres:postgres /var/run/postgresql /var/lib/postgresql
chmod 3777 /var/run/postgresql
chmod 1777 /var/lib/postgresql/data
chmod 0755 /usr/local/bin/docker-entrypoint.sh
# locale sources are only needed to generate locales (C.UTF-8 is built in)
rm -rf /usr/share/i18n/locales /usr/share/i18n/charmaps
