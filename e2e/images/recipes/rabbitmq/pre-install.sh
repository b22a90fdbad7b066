#!/bin/sh
set -eu
groupadd -r -g 999 rabbitmq
useradd -r -u 999 -g rabbitmq -d /var/lib/rabbitmq -s /bin/sh rabbitmq
mkdir -p /var/lib/rabbitmq && chown rabbitmq:rabbitmq /var/lib/rabbitmq
