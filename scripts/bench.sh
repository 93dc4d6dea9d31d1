#!/usr/bin/env bash
# The side-by-side CPU benchmark (issue 4): kiln against NumPy, JAX, PyTorch
# and MLX on this machine, in one run. Compile times are measured in fresh
# processes with empty caches; the steady-state runs may reuse torch's
# inductor cache in target/bench/torch-cache (compiling is not timed there).
#
#   bash scripts/bench.sh           full run (about 20-30 minutes on 2 cores:
#                                   two rounds of kiln and the peers, see
#                                   below);
#                                   installs the peers into target/bench/venv
#   bash scripts/bench.sh --quick   smoke run: tiny sizes, kiln only, no venv
#
# Writes target/bench/cpu.json, cpu.md, cpu.png and missing.json
# (--quick: target/bench/quick/cpu.json, cpu.md, missing.json).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
OUT=$ROOT/target/bench

if [[ "${1:-}" == "--quick" ]]; then
    cargo build --release -p kiln-bench
    "$TARGET/release/kiln-bench" --quick --out "$OUT/quick"
    echo "wrote $OUT/quick/cpu.json, cpu.md"
    exit 0
fi

mkdir -p "$OUT"
VENV=$OUT/venv
PY=${PYTHON:-python3}
LOG=$OUT/install.log
: > "$LOG"
if [[ ! -x "$VENV/bin/python" ]]; then
    echo "bench: creating $VENV"
    "$PY" -m venv "$VENV"
fi
# Each peer is installed on its own, so one failure does not block the others;
# a peer that fails to install is reported as missing by peers.py (it cannot
# be imported), with the reason in $LOG.
for pkg in numpy scipy threadpoolctl matplotlib "jax[cpu]" torch "mlx[cpu]"; do
    mod=${pkg%%[*}; [[ $mod == mlx ]] && mod=mlx.core
    if "$VENV/bin/python" -c "import $mod" >/dev/null 2>&1; then
        continue
    fi
    echo "bench: pip install $pkg"
    if ! "$VENV/bin/pip" install "$pkg" >>"$LOG" 2>&1; then
        echo "bench: WARNING: pip install $pkg failed (see $LOG); it will be reported as missing"
    fi
done

echo "bench: building kiln-bench (release)"
cargo build --release -p kiln-bench
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)

# Two rounds, each running kiln, the peers and the peers with reused
# blocks in turn, each timed row given half the usual seconds; the report
# keeps each row's faster round. A shared machine's bandwidth drifts over
# minutes (bench/README.md), and one pass ran kiln and the peers a quarter
# of an hour apart, so that a slow phase could fall on either alone.
export KILN_BENCH_BUDGET_S=${KILN_BENCH_BUDGET_S:-1.25}
PARTS=()
for round in 1 2; do
    echo "bench: round $round: kiln"
    "$TARGET/release/kiln-bench" run --out "$OUT/kiln-$round.json" --sizes "$OUT/sizes.json"

    # The fresh-process workloads (compile time) run only in the first round.
    fresh=()
    [[ $round == 1 ]] || fresh=(--no-fresh)
    echo "bench: round $round: peers"
    # Some machines here set these for old OpenBLAS builds; they slow a current
    # numpy, so the peers run without them (peers.py notes which kernel runs).
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE TORCHINDUCTOR_CACHE_DIR="$OUT/torch-cache" \
        "$VENV/bin/python" bench/peers/peers.py --all "${fresh[@]}" --sizes "$OUT/sizes.json" \
        --out "$OUT/peers-$round.json"

    # The peers again, with glibc's malloc set to keep freed large blocks for
    # reuse (issue 17): by default a block above the mmap threshold (128 KiB,
    # rising to at most 32 MiB) is unmapped when freed, or the heap's top is
    # trimmed, and a fresh 64 MiB output faults its pages in again on every
    # call. Both limits at 4 GiB stop that (glibc 2.36 accepts values above
    # 32 MiB from the environment; 0 faults per call measured,
    # bench/README.md). Their records are named with the suffix +reuse; the
    # targets use the faster setting.
    echo "bench: round $round: peers (+reuse: MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_ = 4 GiB)"
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE TORCHINDUCTOR_CACHE_DIR="$OUT/torch-cache" \
        MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=4294967296 \
        "$VENV/bin/python" bench/peers/peers.py --all --no-fresh --suffix +reuse \
        --sizes "$OUT/sizes.json" --out "$OUT/peers-reuse-$round.json"
    PARTS+=("$OUT/kiln-$round.json" "$OUT/peers-$round.json" "$OUT/peers-reuse-$round.json")
done

LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)
cat > "$OUT/machine.json" <<EOF
{"records": [], "missing": [], "notes": [
  "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), load average (1/5/15 min) $LOAD_START at start, $LOAD_END at end"
]}
EOF

"$TARGET/release/kiln-bench" report --out "$OUT" "$OUT/machine.json" "${PARTS[@]}" >/dev/null
if ! "$VENV/bin/python" bench/peers/plot.py "$OUT/cpu.json" "$OUT/cpu.png" "$OUT/missing.json"; then
    echo "bench: WARNING: could not draw $OUT/cpu.png"
fi
cat "$OUT/cpu.md"
echo
echo "wrote $OUT/cpu.json, $OUT/cpu.md, $OUT/cpu.png, $OUT/missing.json"
