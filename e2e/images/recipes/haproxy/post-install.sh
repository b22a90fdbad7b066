#!/bin/sh
set -eu
ln -sf busybox /usr/bin/wget
haproxy -v
haproxy -c -f /usr/local/etc/haproxy/haproxy.cfg
rm -rf /etc/haproxy/errors /etc/init.d/haproxy /etc/default/haproxy
