#!/bin/sh
set -eu
ln -sf busybox /usr/bin/wget
cd /tmp
apt-get download prometheus-postgres-exporter || { apt-get update -q && apt-get download prometheus-postgres-exporter; }
dpkg-deb -x prometheus-postgres-exporter_*.deb /tmp/pe
install -m 0755 /tmp/pe/usr/bin/prometheus-postgres-exporter /usr/bin/postgres_exporter
rm -rf /tmp/pe /tmp/*.deb
/bin/postgres_exporter --version
