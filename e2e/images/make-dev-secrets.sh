#!/usr/bin/env bash
# Create compose/secrets/<name> with a random value for every
# compose/secrets/<name>.example that has no real file yet. Never overwrites.
#   e2e/images/make-dev-secrets.sh [SECRETS_DIR]
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
DIR="${1:-$HERE/../../compose/secrets}"
DIR="$(cd "$DIR" && pwd)"
chmod 0700 "$DIR"
made=0 kept=0
for ex in "$DIR"/*.example; do
  [ -e "$ex" ] || continue
  f="${ex%.example}"
  if [ -e "$f" ]; then kept=$((kept + 1)); continue; fi
  # 32 hex characters: safe in URLs, shell words and config files
  val="$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
  (umask 0022; printf '%s\n' "$val" > "$f.tmp") && mv "$f.tmp" "$f"
  chmod 0644 "$f"   # read by non-root container users; the directory is 0700
  echo "created $(basename "$f")"
  made=$((made + 1))
done
echo "secrets in $DIR: $made created, $kept kept"
