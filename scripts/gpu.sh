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
#   bash scripts/gpu.sh r-build # here: the R package built with the CUDA
#                               # backend, and an R runtime to carry (the
#                               # GPU machine has no R): target/carry/r/
#   bash scripts/gpu.sh r-test  # on the GPU machine: the R package's
#                               # testthat suite, then the same suite with
#                               # the GPU as the default device
#   bash scripts/gpu.sh cpu-bench [DIR [PARTS]]
#                               # on the GPU machine: the CPU benchmark on
#                               # its host cores (issue 17's second CPU):
#                               # one round of scripts/bench.sh's (kiln, the
#                               # peers, the peers with reused blocks), the
#                               # image's torch and jax on the CPU, report in
#                               # DIR (default target/bench/host); PARTS
#                               # picks some of kiln,peers,reuse (default
#                               # all three) so the round can span calls
#
# At run time kiln loads libcuda, libnvrtc.so.13 and libcublas.so.13 by
# name; KILN_CUDA_LIB_DIR names a folder to load them from first. On the
# GPU machine of this workplace they are found in the image's Python
# site-packages (nvidia/cu13/lib) or /usr/local/cuda/lib64, which the test
# step adds to LD_LIBRARY_PATH when present.
set -euo pipefail
cd "$(dirname "$0")/.."
carry=target/carry
# Puts the CUDA libraries of this machine's image (see above) on the
# loader's path.
cuda_libraries() {
    local d
    for d in /usr/local/cuda/lib64 $(python3 -c 'import site; print(" ".join(p + "/nvidia/cu13/lib" for p in site.getsitepackages()))' 2>/dev/null || true); do
        if [ -d "$d" ]; then export LD_LIBRARY_PATH="$d:${LD_LIBRARY_PATH:-}"; fi
    done
}
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
    cuda_libraries
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
r-build)
    # R from Debian's packages here (scripts/r-install.sh installs it when
    # missing), then the package with KILN_FEATURES=cuda.
    command -v Rscript >/dev/null 2>&1 || bash scripts/r-install.sh >/dev/null
    rm -rf "$carry/r" "$carry/rlib" && mkdir -p "$carry/r" "$carry/rlib"
    KILN_FEATURES=cuda KILN_TARGET_DIR="$PWD/target/r-build-cuda" R CMD INSTALL --no-multiarch -l "$carry/rlib" r
    strip "$carry"/rlib/kiln/libs/kiln.so
    tar -C "$carry" -cJf "$carry/r/kiln-rlib.tar.xz" rlib
    # The R runtime: R's own tree, its base packages, testthat and what it
    # imports, and the shared libraries R links (not glibc's).
    pkgs=$(Rscript -e 'ip <- installed.packages(); d <- c("testthat", tools::package_dependencies("testthat", db = ip,
      recursive = TRUE, which = c("Depends", "Imports", "LinkingTo"))[[1]]); cat(d[is.na(ip[match(d, ip[, 1]), "Priority"])])')
    libs=$(mktemp -d)
    mkdir -p "$libs/lib"
    for l in $(ldd /usr/lib/R/lib/libR.so /usr/lib/x86_64-linux-gnu/liblapack.so.3 | awk '$3 ~ /^\// {print $3}' | sort -u |
        grep -v -E '/(libc|libm|libresolv|ld-linux[^/]*)\.so'); do
        cp -L "$l" "$libs/lib/"
    done
    cp -L /usr/lib/x86_64-linux-gnu/liblapack.so.3 "$libs/lib/"
    list="usr/lib/R/bin usr/lib/R/lib usr/lib/R/etc usr/lib/R/modules usr/share/R etc/R usr/bin/R usr/bin/Rscript"
    for p in base compiler datasets graphics grDevices grid methods parallel splines stats stats4 tools utils; do
        list="$list usr/lib/R/library/$p"
    done
    for p in $pkgs; do
        for d in usr/lib/R/site-library usr/lib/R/library; do
            if [ -d "/$d/$p" ]; then list="$list $d/$p" && break; fi
        done
    done
    # shellcheck disable=SC2086
    tar -C / -cf - --exclude='*/doc/*' --exclude='*/html/*' --exclude='*/help/*' --exclude='*/po/*' $list \
        -C "$libs" lib | xz -T2 -9 >"$carry/r/r-runtime.tar.xz"
    rm -rf "$libs"
    ls -la "$carry/r"
    ;;
r-test)
    # R's tree goes where Debian puts it (/usr/lib/R, /etc/R, /usr/share/R,
    # new paths there: a machine that has R already keeps its own); the
    # libraries R links go to a folder of their own on the loader's path.
    rt=/tmp/kiln-r
    mkdir -p "$rt"
    if [ ! -e /usr/lib/R ]; then
        tar -C "$rt" -xJf "$carry/r/r-runtime.tar.xz"
        cp -a "$rt"/usr "$rt"/etc /
    fi
    tar -C "$rt" -xJf "$carry/r/kiln-rlib.tar.xz"
    export LD_LIBRARY_PATH="$rt/lib:${LD_LIBRARY_PATH:-}"
    cuda_libraries
    status=0
    for dev in cpu gpu; do
        echo "== R package: testthat, default device $dev =="
        KILN_TEST_DEVICE=$dev R_LIBS="$rt/rlib" Rscript scripts/testthat.R --gpu || status=1
    done
    exit $status
    ;;
cpu-bench)
    # One round of scripts/bench.sh with the image's Python (torch and jax;
    # MLX is not installed there and is reported missing), both kept off the
    # GPU. Each timed row gets KILN_BENCH_BUDGET_S seconds (default 0.6, a
    # call's time on that machine is limited); the parts land in DIR as they
    # finish, so an interrupted run still leaves the finished ones.
    out=${2:-target/bench/host}
    mkdir -p "$out"
    export KILN_BENCH_BUDGET_S=${KILN_BENCH_BUDGET_S:-0.6}
    peers() {
        env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE JAX_PLATFORMS=cpu CUDA_VISIBLE_DEVICES= \
            TORCHINDUCTOR_CACHE_DIR=/tmp/kiln-torch-cache "$@"
    }
    { lscpu; grep -m1 '^flags' /proc/cpuinfo; } > "$out/lscpu.txt"
    want=",${3:-kiln,peers,reuse},"
    # The peers read the sizes kiln's run writes; a later call carries them.
    if [[ $want == *,kiln,* || ! -f "$out/sizes.json" ]]; then
        "$carry/kiln-bench-gpu" run --out "$out/kiln-1.json" --sizes "$out/sizes.json"
    fi
    if [[ $want == *,peers,* ]]; then
        peers python3 bench/peers/peers.py --all --sizes "$out/sizes.json" --out "$out/peers-1.json" || true
    fi
    if [[ $want == *,reuse,* ]]; then
        peers env MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=4294967296 \
            python3 bench/peers/peers.py --all --no-fresh --suffix +reuse \
            --sizes "$out/sizes.json" --out "$out/peers-reuse-1.json" || true
    fi
    cat > "$out/machine.json" <<EOF
{"records": [], "missing": [], "notes": [
  "machine: the GPU machine's host, $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); one round, KILN_BENCH_BUDGET_S=$KILN_BENCH_BUDGET_S; peers: the image's Python (torch $(python3 -c 'import torch; print(torch.__version__)' 2>/dev/null), jax $(python3 -c 'import jax; print(jax.__version__)' 2>/dev/null)) on the CPU"
]}
EOF
    parts=()
    for f in "$out"/kiln-1.json "$out"/peers-1.json "$out"/peers-reuse-1.json; do
        if [ -f "$f" ]; then parts+=("$f"); fi
    done
    "$carry/kiln-bench-gpu" report --out "$out" "$out/machine.json" "${parts[@]}" >/dev/null
    cat "$out/cpu.md"
    ;;
*)
    echo "usage: bash scripts/gpu.sh build|test|bench [--quick]|fuzz [SECONDS] [SEED]|r-build|r-test|cpu-bench [DIR]" >&2
    exit 2
    ;;
esac
