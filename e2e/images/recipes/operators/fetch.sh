#!/usr/bin/env bash
# Copy the operators' binary into the build context, without its debug
# sections (a debug build is about half debug info).
set -euo pipefail
cp "$OPERATOR_BIN" infra-operator
if command -v strip >/dev/null 2>&1; then strip infra-operator; fi
ls -l infra-operator
