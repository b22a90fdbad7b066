#!/bin/sh
set -eu
# uid/gid 999 like the official image, so volumes move between the two
groupadd -r -g 999 mysql
useradd -r -u 999 -g mysql -d /var/lib/mysql -s /usr/sbin/nologin mysql
# the package's postinst initialises /var/lib/mysql unless a system database
# seems to be there: the entrypoint does that at first start instead
mkdir -p /var/lib/mysql/mysql
touch /var/lib/mysql/mysql/user.frm
