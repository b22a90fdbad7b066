#!/bin/sh
# Like the upstream nginx image's /docker-entrypoint.sh: when starting nginx,
# run /docker-entrypoint.d/*.sh (templating lives there), then exec the command.
set -e
if [ "$1" = nginx ] || [ "$1" = nginx-debug ]; then
  if [ -z "${NGINX_ENTRYPOINT_QUIET_LOGS:-}" ]; then exec 3>&1; else exec 3>/dev/null; fi
  for f in $(find /docker-entrypoint.d/ -follow -type f -name '*.sh' -print | sort -V); do
    if [ -x "$f" ]; then echo >&3 "$0: Launching $f"; "$f"; else echo >&3 "$0: Ignoring $f, not executable"; fi
  done
  echo >&3 "$0: Configuration complete; ready for start up"
fi
exec "$@"
