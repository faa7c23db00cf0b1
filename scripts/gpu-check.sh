#!/usr/bin/env bash
# Runs the SAMUS CUDA checks on a machine with an NVIDIA GPU, its driver and the
# CUDA 13 libraries (a CUDA toolkit in /usr/local/cuda, or PyTorch's nvidia-* cu13
# wheels) but no Rust toolchain, from the bundle that scripts/build-gpu-bundle.sh
# makes elsewhere:
#
#   1. the fused attention kernels against the CPU ops, forward and backward,
#      f32 and bf16, random shapes (tests/cuda_attention);
#   2. fused vs. unfused attention at B=8, H=12, N=1024, Dh=64 (bench/cuda_attention);
#   3. `samus bench --device cuda` (ViT-B forward, images/s), and the PyTorch peer
#      on the same GPU when pytorch_reference.py takes `--device`;
#   4. a short `samus train --device cuda` on synthetic data (training images/s).
#
# Usage:  gpu-check.sh [BUNDLE.tar.xz|BUNDLE_DIR] [RESULTS_DIR]
#   (run from an unpacked bundle, both default: the bundle is this script's folder,
#   results go to ./samus-gpu-results). Every step has a time limit; the script
#   goes on after a failure and ends with summary.txt; its exit status is that of
#   the correctness tests.
set -uo pipefail

here=$(cd "$(dirname "$0")" && pwd)
bundle="${1:-$here}"
results="${2:-$PWD/samus-gpu-results}"
mkdir -p "$results"
results=$(cd "$results" && pwd)
if [ -f "$bundle" ]; then
    unpack=$(mktemp -d)
    tar -C "$unpack" -xf "$bundle"
    bundle="$unpack/samus-gpu-bundle"
fi
if [ ! -x "$bundle/tests/cuda_attention" ]; then
    echo "error: $bundle holds no tests/cuda_attention: give the bundle made by build-gpu-bundle.sh" >&2
    exit 2
fi
summary="$results/summary.txt"
: >"$summary"
note() { echo "$*" | tee -a "$summary"; }

# The CUDA libraries the executables link against.
libdirs=()
for dir in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib /usr/local/nvidia/lib64 /usr/lib/x86_64-linux-gnu; do
    [ -d "$dir" ] && libdirs+=("$dir")
done
if command -v python3 >/dev/null 2>&1; then
    while IFS= read -r dir; do
        [ -n "$dir" ] && libdirs+=("$dir")
    done < <(python3 - <<'EOF' 2>/dev/null
import glob, os, site, sys
roots = site.getsitepackages() + [site.getusersitepackages()]
for root in roots:
    for lib in sorted(glob.glob(os.path.join(root, "nvidia", "*", "lib"))) + sorted(glob.glob(os.path.join(root, "nvidia", "*", "*", "lib"))):
        print(lib)
EOF
)
fi
LD_LIBRARY_PATH="$(IFS=:; echo "${libdirs[*]}")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export LD_LIBRARY_PATH

{
    cat "$bundle/BUILD-INFO.txt" 2>/dev/null
    echo "host: $(uname -a)"
    nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total --format=csv 2>&1
    echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
} >"$results/environment.txt"
cat "$results/environment.txt"

missing=0
for exe in "$bundle"/tests/* "$bundle"/bench/* "$bundle"/bin/*; do
    if ldd "$exe" | grep -q "not found"; then
        note "MISSING LIBRARIES for $(basename "$exe"): $(ldd "$exe" | grep 'not found' | tr -s ' \t' ' ' | tr '\n' ';')"
        missing=1
    fi
done
if [ "$missing" = 1 ]; then
    note "install the CUDA 13 libraries (or set LD_LIBRARY_PATH) and run again"
    exit 2
fi

# run NAME LIMIT_S COMMAND...: output to NAME.log, status to the summary.
run() {
    local name=$1 limit=$2
    shift 2
    local t0=$(date +%s)
    timeout "$limit" "$@" >"$results/$name.log" 2>&1
    local rc=$?
    local verdict=ok
    [ $rc -ne 0 ] && verdict="FAILED (exit $rc$([ $rc -eq 124 ] && echo ', time limit'))"
    note "$name: $verdict in $(($(date +%s) - t0)) s"
    return $rc
}

status=0
run cuda_attention_tests 600 "$bundle/tests/cuda_attention" --test-threads 1 || status=1
if grep -q "SKIPPED" "$results/cuda_attention_tests.log"; then
    note "NOT VERIFIED: the CUDA tests were skipped: $(grep -h -o 'SKIPPED.*' "$results/cuda_attention_tests.log" | head -n 1)"
    status=1
fi
grep -E "^test result" "$results/cuda_attention_tests.log" | tee -a "$summary"

run attention_bench 600 "$bundle/bench/cuda_attention" --bench --noplot
grep -E "^attention_|time:|thrpt:" "$results/attention_bench.log" | tee -a "$summary"

work=$(mktemp -d)
run samus_bench_cuda 600 "$bundle/bin/samus" --device cuda bench --config vit_b --random-weights \
    --iters 10 --json --save-weights "$work/w.safetensors" --write-io "$work/io.safetensors"
tail -n 1 "$results/samus_bench_cuda.log" | tee -a "$summary"
if [ -f "$bundle/pytorch_reference.py" ] && python3 "$bundle/pytorch_reference.py" --help 2>/dev/null | grep -q -- "--device"; then
    run pytorch_bench_cuda 600 python3 "$bundle/pytorch_reference.py" --config vit_b \
        --weights "$work/w.safetensors" --io "$work/io.safetensors" --device cuda --iters 10 --json
    tail -n 1 "$results/pytorch_bench_cuda.log" | tee -a "$summary"
else
    note "pytorch_bench_cuda: not run (pytorch_reference.py has no --device option)"
fi

if run synth 300 "$bundle/bin/samus" synth --out "$work/synth" --per-dataset 16; then
    t0=$(date +%s.%N)
    if run samus_train_cuda 600 "$bundle/bin/samus" --device cuda train --config vit_b \
        --data "$work/synth" --split train-Breast-SynthBUSI --trainable all \
        --batch-size 8 --epochs 1 --out "$work/run"; then
        t1=$(date +%s.%N)
        note "samus_train_cuda: one epoch (model set-up included) in $(awk "BEGIN { printf \"%.1f\", $t1 - $t0 }") s; per-step figures in samus_train_cuda.log"
    fi
fi
rm -rf "$work"
note "results in $results"
exit $status
