#!/usr/bin/env bash
# The main job: the mlx_compile seed walkthrough in R (installing R from
# Debian's packages and the kiln R package into target/R when needed), then
# in Rust, each with timings.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/r-install.sh >/tmp/kiln-r-install.log 2>&1 || { cat /tmp/kiln-r-install.log; exit 1; }
R_LIBS="$PWD/target/R" Rscript r/inst/examples/seed.R
echo
cargo run --release --example seed
