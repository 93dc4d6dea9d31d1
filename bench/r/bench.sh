#!/usr/bin/env bash
# The R benchmark: installs R (if missing) and the kiln R package into
# target/R, builds the Rust baseline for the R-overhead figure
# (crates/kiln/examples/r_overhead.rs), then runs bench/r/bench.R, which
# prints compiled kiln vs uncompiled kiln vs base R for gelu, layernorm and
# matmul_add, and the R overhead of a compiled call. About a minute on 2 cores
# once built.
#
#   bash bench/r/bench.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
bash scripts/r-install.sh
cargo build --release --example r_overhead
Rscript bench/r/bench.R
