#!/usr/bin/env bash
# Runs the tests that exercise kiln's unsafe kernels (the fused executor's raw
# output writes, uninitialized output buffers, gemm calls, SIMD math) under
# valgrind's memcheck. Miri and the sanitizers need a nightly toolchain, which
# this project's machines do not have; valgrind is installed here if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v valgrind >/dev/null; then
  apt-get update -qq && apt-get install -y -qq valgrind >/dev/null
fi
export CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER="valgrind --error-exitcode=9 -q"
cargo test -p kiln --test compile --test shape --test linalg --test fused --test block_fold -- --test-threads=2
# Generated code (valgrind reports AVX2, not AVX-512: the AVX2 generator,
# whose last partial vector moves bytes and 16-bit floats through stack slots).
cargo test -p kiln --test jit -- --test-threads=2
# The thread team (its lifetime-erased task pointer) and the products split over it.
cargo test -p kiln --lib -- --test-threads=2 team::
# The accuracy sweeps take minutes under valgrind: check every length and the special values.
cargo test -p kiln --test simd_math -- --test-threads=2 lengths_and_levels_agree special_values
