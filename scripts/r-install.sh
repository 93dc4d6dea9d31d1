#!/usr/bin/env bash
# Installs R (Debian's packages) when missing, then builds and installs the
# kiln R package from this checkout into target/R. Sourced or run by the
# walkthrough, the tests and the R benchmark.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v Rscript >/dev/null 2>&1 || ! Rscript -e 'library(testthat)' >/dev/null 2>&1; then
  echo "== installing R (r-base-core, r-base-dev, r-cran-testthat) =="
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq r-base-core r-base-dev r-cran-testthat >/dev/null
fi
mkdir -p target/R
# One cargo build folder for every install from this checkout.
export KILN_TARGET_DIR="$PWD/target/r-build"
R CMD INSTALL --no-multiarch -l target/R r
