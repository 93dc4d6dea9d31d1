#!/usr/bin/env bash
# kiln on an NVIDIA GPU. The GPU machine may have no Rust toolchain, so the
# test binaries are built here (the `cuda` feature needs no CUDA to build),
# stripped into target/carry/ (git-ignored), and run there:
#
#   bash scripts/gpu.sh build   # here: build and strip the GPU test binaries
#   bash scripts/gpu.sh test    # on the GPU machine: run them
#   bash scripts/gpu.sh bench [--quick]
#                               # on the GPU machine: kiln's GPU rows and the
#                               # peers (torch, jax) in one run, and the
#                               # report: target/bench/cuda.md (.json, .png)
#   bash scripts/gpu.sh fuzz [SECONDS] [SEED]
#                               # on the GPU machine: random programs compiled
#                               # on the GPU against eager results on the CPU
#
# At run time kiln loads libcuda, libnvrtc.so.13 and libcublas.so.13 by
# name; KILN_CUDA_LIB_DIR names a folder to load them from first. On the
# GPU machine of this workplace they are found in the image's Python
# site-packages (nvidia/cu13/lib) or /usr/local/cuda/lib64, which the test
# step adds to LD_LIBRARY_PATH when present.
set -euo pipefail
cd "$(dirname "$0")/.."
carry=target/carry
case "${1:-}" in
build)
    mkdir -p "$carry"
    rm -f "$carry"/kiln-gpu-* "$carry"/kiln-fuzz-gpu "$carry"/kiln-bench-gpu
    for t in cuda; do
        cargo test --release -p kiln --features cuda --test "$t" --no-run
        bin=$(ls -t target/release/deps/"$t"-* | grep -v '\.d$' | head -1)
        cp "$bin" "$carry/kiln-gpu-$t"
        strip "$carry/kiln-gpu-$t"
    done
    cargo build --release -p kiln-fuzz --features cuda
    cp target/release/kiln-fuzz "$carry/kiln-fuzz-gpu"
    strip "$carry/kiln-fuzz-gpu"
    cargo build --release -p kiln-bench --features cuda
    cp target/release/kiln-bench "$carry/kiln-bench-gpu"
    strip "$carry/kiln-bench-gpu"
    ls -la "$carry"
    ;;
test | fuzz | bench)
    for d in /usr/local/cuda/lib64 $(python3 -c 'import site; print(" ".join(p + "/nvidia/cu13/lib" for p in site.getsitepackages()))' 2>/dev/null || true); do
        if [ -d "$d" ]; then export LD_LIBRARY_PATH="$d:${LD_LIBRARY_PATH:-}"; fi
    done
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
    if [ "$1" = fuzz ]; then
        KILN_FUZZ_DEVICE=cuda:0 exec "$carry/kiln-fuzz-gpu" run programs --mem-mb 0 \
            --seconds "${2:-120}" --seed "${3:-1}" --out target/fuzz-cases
    fi
    if [ "$1" = bench ]; then
        mkdir -p target/bench
        # First calls in fresh processes: an empty kernel cache, then the
        # disk cache the first left (kiln's and jax's alike); the median of
        # three such pairs each (NVRTC's and XLA's compile times on that
        # host vary several-fold from one process to the next).
        median() { printf '%s\n' "$@" | sort -g | sed -n 2p; }
        first() { # first WHICH -> "kiln_cold kiln_disk jax_cold jax_disk"
            local kc jc r a=() b=() c=() d=()
            for r in 1 2 3; do
                kc=$(mktemp -d)
                jc=$(mktemp -d)
                a+=("$(KILN_CACHE_DIR="$kc" "$carry/kiln-bench-gpu" cuda-first "$1")")
                b+=("$(KILN_CACHE_DIR="$kc" "$carry/kiln-bench-gpu" cuda-first "$1")")
                c+=("$(python3 bench/peers/cuda_peers.py --first "$1" "$jc" 2>/dev/null || echo null)")
                d+=("$(python3 bench/peers/cuda_peers.py --first "$1" "$jc" 2>/dev/null || echo null)")
            done
            echo "$(median "${a[@]}") $(median "${b[@]}") $(median "${c[@]}") $(median "${d[@]}")"
        }
        read -r a b c d <<<"$(first gelu)"
        read -r e f g h <<<"$(first layernorm)"
        printf '{"gelu": {"kiln_cold_ms": %s, "kiln_disk_ms": %s, "jax_cold_ms": %s, "jax_disk_ms": %s},\n "layernorm": {"kiln_cold_ms": %s, "kiln_disk_ms": %s, "jax_cold_ms": %s, "jax_disk_ms": %s}}\n' \
            "$a" "$b" "$c" "$d" "$e" "$f" "$g" "$h" > target/bench/cuda_first.json
        cat target/bench/cuda_first.json
        "$carry/kiln-bench-gpu" cuda ${2:-} --out target/bench/cuda.json
        python3 bench/peers/cuda_peers.py target/bench/cuda_peers.json ${2:-}
        python3 bench/peers/cuda_report.py target/bench
        exit 0
    fi
    status=0
    for bin in "$carry"/kiln-gpu-*; do
        echo "== $bin"
        "$bin" --test-threads=1 || status=1
    done
    exit $status
    ;;
*)
    echo "usage: bash scripts/gpu.sh build|test|bench [--quick]|fuzz [SECONDS] [SEED]" >&2
    exit 2
    ;;
esac
