#!/usr/bin/env bash
# Runs a statically linked cross-built test binary under qemu-user: qemu_test.sh QEMU BINARY
set -euo pipefail
qemu="$1"
binary="$2"
shift 2
command -v "$qemu" >/dev/null || { echo "$qemu not found: run ./bazelw to install qemu-user" >&2; exit 1; }
exec "$qemu" "$binary" "$@"
