#!/usr/bin/env bash
# Runs a cross-built, statically linked test binary under qemu-user: qemu_test.sh QEMU [ARGS] BINARY
set -euo pipefail
qemu="$1"
shift
command -v "$qemu" >/dev/null || { echo "$qemu not found: run ./bazelw to install qemu-user" >&2; exit 1; }
exec "$qemu" "$@"
