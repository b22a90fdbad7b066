#!/usr/bin/env bash
# Checks the systemd units of operators/systemd/ (the install path beside
# the operators image) with `systemd-analyze verify`, as systemd on a
# Debian host would load them: every tier's instance of
# infra-operator@.service and infra-coordinator.service, in a scratch root
# holding the units, the system's own units and stand-ins for the binaries
# at the paths the units name. Any warning fails (systemd-analyze exits 0
# on an unknown key, so its output is checked too).
set -euo pipefail
cd "$(dirname "$0")/../.."
if ! command -v systemd-analyze >/dev/null 2>&1; then
  echo "verify-units: apt-get install systemd (for systemd-analyze)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends systemd >/dev/null
fi
root="$(mktemp -d)"
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/etc/systemd/system" "$root/usr/lib/systemd" "$root/usr/local/bin"
cp -a /lib/systemd/system "$root/usr/lib/systemd/"
cp operators/systemd/*.service "$root/etc/systemd/system/"
units=(infra-coordinator.service)
for t in gateway auth data messaging observability workflow ai tooling communication; do
  units+=("infra-operator@$t.service")
done
# The binaries the units start, as stand-ins (the check is of the units).
grep -ho '^ExecStart=[^ ]*' operators/systemd/*.service | cut -d= -f2 | while read -r exe; do
  for t in gateway auth data messaging observability workflow ai tooling communication; do
    p="$root${exe//%i/$t}"
    mkdir -p "$(dirname "$p")"; printf '#!/bin/sh\n' > "$p"; chmod +x "$p"
  done
done
out="$(systemd-analyze verify --root="$root" "${units[@]}" 2>&1)" || { echo "$out" >&2; exit 1; }
if [ -n "$out" ]; then
  echo "verify-units: systemd-analyze warned:" >&2
  echo "$out" >&2
  exit 1
fi
echo "verify-units: ${#units[@]} units verified"
