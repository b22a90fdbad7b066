#!/bin/sh
set -eu
ln -sf busybox /usr/bin/wget
test -x /bin/prometheus && test -x /bin/promtool
mkdir -p /prometheus && chown nobody:nogroup /prometheus
chown -R nobody:nogroup /etc/prometheus
# the classic web UI needs one file of moment-timezone; its data/ dir is 210 MB
find /usr/share/javascript/moment-timezone -mindepth 1 -maxdepth 1 ! -name 'moment-timezone-with-data.min.js' -exec rm -rf {} +
rm -rf /usr/share/sass
