#!/usr/bin/env bash
# Compiles samus-core's CUDA attention kernels for the CPU under host emulation and
# checks them against a double-precision reference (no GPU, no nvcc needed; a C++20
# compiler is). See crates/samus-core/kernels/emulation/emulate.cpp.
# Usage: scripts/emulate-cuda-kernels.sh [RANDOM_CASES]   (default 40)
set -euo pipefail
cd "$(dirname "$0")/../crates/samus-core/kernels/emulation"
exe="${TMPDIR:-/tmp}/samus-emulate-kernels"
"${CXX:-g++}" -std=c++20 -O2 -pthread -I . -o "$exe" emulate.cpp
"$exe" "${1:-40}"
