#!/bin/sh
# Behaves like the entrypoint of the official redis / valkey images.
set -e

# first arg is `-f` or `--some-option`, or a .conf file
if [ "${1#-}" != "$1" ] || [ "${1%.conf}" != "$1" ]; then
  set -- redis-server "$@"
fi

case "$1" in
  redis-server|valkey-server)
    # The official images are built with protected mode off (the container
    # network is the boundary); Debian's binary is not, so switch it off here
    # unless the caller chose.
    case " $* " in *protected-mode*) ;; *) set -- "$@" --protected-mode no ;; esac
    if [ "$(id -u)" = 0 ]; then
      find . \! -user redis -exec chown redis '{}' + 2>/dev/null || true
      exec setpriv --reuid=redis --regid=redis --init-groups "$0" "$@"
    fi
    ;;
esac

umask 0077
exec "$@"
