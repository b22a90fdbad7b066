#!/bin/sh
set -eu
ln -sf busybox /usr/bin/wget
ln -sf prometheus-pushgateway /usr/bin/pushgateway
test -x /bin/pushgateway
mkdir -p /pushgateway && chown nobody:nogroup /pushgateway
