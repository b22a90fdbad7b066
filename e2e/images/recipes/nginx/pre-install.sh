#!/bin/sh
set -eu
groupadd -r -g 101 nginx
useradd -r -u 101 -g nginx -d /nonexistent -s /usr/sbin/nologin nginx
