#!/bin/sh
set -eu
ln -sf busybox /usr/bin/wget
ln -sf prometheus-alertmanager /usr/bin/alertmanager
test -x /bin/alertmanager && test -x /bin/amtool
mkdir -p /alertmanager && chown nobody:nogroup /alertmanager
