#!/usr/bin/env bash
# Builds, on a machine without a GPU, everything scripts/gpu-check.sh runs on a GPU
# machine that has the NVIDIA driver and CUDA 13 libraries but no Rust toolchain,
# and packs it into one tarball:
#
#   tests/   samus-core's CUDA-vs-CPU attention tests (proptests), `--features cuda`
#   bench/   the fused-vs-unfused attention benchmark (criterion)
#   bin/     the `samus` CLI with `--features cuda` (samus bench/train --device cuda)
#   gpu-check.sh, pytorch_reference.py, BUILD-INFO.txt
#
# Usage:  scripts/build-gpu-bundle.sh [OUTPUT.tar.xz]     (default /tmp/samus-gpu-bundle.tar.xz)
#
# The executables are stripped and xz-compressed: about 25 MB in all (each one holds
# candle's PTX kernels).
#
# Environment: CUDA_COMPUTE_CAP (default 80: candle's PTX kernels, JIT-compiled on
# newer GPUs), SAMUS_CUDA_CAPS (default 80,90: machine code of the fused attention
# kernels for A100 and H100/H200, plus PTX for newer GPUs), CARGO_TARGET_DIR
# (default target-cuda in the repository, kept apart from the CPU build),
# CARGO_BUILD_JOBS. All executables use one cargo profile (test: optimised) so that
# the dependencies are compiled once.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
output="${1:-/tmp/samus-gpu-bundle.tar.xz}"

start=$(date +%s)
eval "$(scripts/install-cuda-toolchain.sh)"
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-80}"
export SAMUS_CUDA_CAPS="${SAMUS_CUDA_CAPS:-80,90}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$repo/target-cuda}"

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
bundle="$stage/samus-gpu-bundle"
mkdir -p "$bundle/tests" "$bundle/bench" "$bundle/bin"

# Executables from cargo's JSON messages: "<kind> <name> <path>" per line.
executables() {
    python3 -c '
import json, sys
for line in sys.stdin:
    try:
        msg = json.loads(line)
    except ValueError:
        continue
    if msg.get("reason") != "compiler-artifact" or not msg.get("executable"):
        continue
    kind = msg["target"]["kind"][0]
    print(kind, msg["target"]["name"], msg["executable"])
'
}

echo "== building samus-core tests and benches with --features cuda" >&2
cargo test -p samus-core --features cuda --no-run --test cuda_attention --bench cuda_attention \
    --message-format=json-render-diagnostics | executables >"$stage/core.txt"
echo "== building the samus CLI with --features cuda" >&2
cargo build -p samus-cli --features cuda --profile test \
    --message-format=json-render-diagnostics | executables >"$stage/cli.txt"

copy() {
    # Symbols and debug info are not needed on the GPU machine.
    cp "$1" "$2"
    strip --strip-all "$2" 2>/dev/null || true
    chmod +x "$2"
}
while read -r kind name path; do
    case "$kind:$name" in
    test:cuda_attention) copy "$path" "$bundle/tests/$name" ;;
    bench:cuda_attention) copy "$path" "$bundle/bench/$name" ;;
    esac
done <"$stage/core.txt"
while read -r kind name path; do
    if [ "$kind" = bin ] && [ "$name" = samus ]; then copy "$path" "$bundle/bin/samus"; fi
done <"$stage/cli.txt"
for required in tests/cuda_attention bench/cuda_attention bin/samus; do
    if [ ! -x "$bundle/$required" ]; then
        echo "error: $required was not built" >&2
        exit 1
    fi
done

cp scripts/gpu-check.sh "$bundle/"
if [ -f bench/pytorch_reference.py ]; then cp bench/pytorch_reference.py "$bundle/"; fi
{
    echo "commit: $(git rev-parse HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (with uncommitted changes)')"
    echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -m), $(ldd --version | head -n 1)"
    echo "nvcc: $(nvcc --version | tail -n 2 | head -n 1)"
    echo "CUDA_COMPUTE_CAP=$CUDA_COMPUTE_CAP (candle kernels, PTX)  SAMUS_CUDA_CAPS=$SAMUS_CUDA_CAPS (fused attention)"
    echo "needs: NVIDIA driver >= 580 (CUDA 13.0), libcublas.so.13, libcublasLt.so.13, libcurand.so.10, libnvrtc.so.13, libcudart.so.13"
} >"$bundle/BUILD-INFO.txt"

XZ_OPT="${XZ_OPT:--6 -T0}" tar -C "$stage" -cJf "$output" samus-gpu-bundle
echo "wrote $output ($(du -h "$output" | cut -f1)) in $(($(date +%s) - start)) s" >&2
