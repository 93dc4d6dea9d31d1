#!/usr/bin/env bash
# Runs every test (the README's test command): the Rust workspace and a
# fixed set of cases of each fuzz target, then the
# R package (installing R from Debian's packages when missing): its testthat
# suite against the package installed from this checkout, and R CMD check
# on the tarball that R CMD build makes.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace --all-targets
cargo test --workspace --doc

echo "== the kernels of CPUs without AVX-512, and without AVX2 (KILN_SIMD caps the level) =="
# The same test binaries: the level is read at run time.
KILN_SIMD=avx2 cargo test -p kiln --tests
KILN_SIMD=scalar cargo test -p kiln --tests

echo "== CUDA backend (feature cuda): builds with no CUDA installed; GPU tests skip here =="
# They run on a GPU with scripts/gpu.sh; here they check the clear errors.
# The library's own tests with the feature include the CUDA planner's.
cargo test --release -p kiln --features cuda --lib --test cuda --test seam --test device

echo "== fuzz: a short run of each target (RELIABILITY.md) =="
# A fixed seed and case count: the same cases on every run.
cargo run --release -q -p kiln-fuzz -- run ops --seconds 600 --cases 200000 --seed 1
cargo run --release -q -p kiln-fuzz -- run programs --seconds 600 --cases 150000 --seed 1
KILN_SIMD=avx2 cargo run --release -q -p kiln-fuzz -- run programs --seconds 600 --cases 50000 --seed 2

echo "== R package: install from the checkout =="
bash scripts/r-install.sh >target/r-install.log 2>&1 || { cat target/r-install.log; exit 1; }

echo "== R package: testthat =="
R_LIBS="$PWD/target/R" Rscript scripts/testthat.R

echo "== R package: R CMD build and R CMD check --no-manual on the tarball =="
rm -rf target/r-check && mkdir -p target/r-check
(cd target/r-check && R CMD build --no-build-vignettes ../../r)
tarball=$(ls target/r-check/kiln_*.tar.gz)
# The install's cargo build folder serves the check too: the dependencies
# are built once (kiln itself builds again, from the tarball's copy).
(cd target/r-check && KILN_TARGET_DIR="$PWD/../r-build" R CMD check --no-manual "$(basename "$tarball")") \
  | tee target/r-check/check.log
if grep -Eq "^Status: .*(ERROR|WARNING)" target/r-check/check.log; then
  echo "R CMD check reported an ERROR or WARNING" >&2
  exit 1
fi
