#!/bin/sh
set -eu
ln -sf busybox /usr/bin/wget
rm -rf /etc/nginx/sites-enabled /etc/nginx/sites-available /var/www/html
mkdir -p /var/log/nginx /var/cache/nginx
ln -sf /dev/stdout /var/log/nginx/access.log
ln -sf /dev/stderr /var/log/nginx/error.log
chmod 0755 /docker-entrypoint.sh /docker-entrypoint.d/*.sh
nginx -t
