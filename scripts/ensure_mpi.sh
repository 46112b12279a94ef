#!/usr/bin/env bash
# Installs MPICH and what the `mpi` crate's build needs (libclang for bindgen) when missing:
# for `cargo build -p mm-train --features mpi` and `mpiexec -n N mm-train ...`. Debian/Ubuntu.
set -euo pipefail
if command -v mpiexec >/dev/null && [ -e /usr/include/x86_64-linux-gnu/mpich/mpi.h -o -e /usr/include/mpi.h ] \
  && ls /usr/lib/llvm-*/lib/libclang*.so* >/dev/null 2>&1; then
  exit 0
fi
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
$SUDO apt-get install -y -q mpich libmpich-dev libclang-dev >/dev/null 2>&1 \
  || { $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q mpich libmpich-dev libclang-dev >/dev/null; }
command -v mpiexec >/dev/null
