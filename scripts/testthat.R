# The kiln R package's testthat suite (r/tests/testthat), run from the
# repository's root with the installed package on R_LIBS: prints
# "testthat: N passed, M failed, K skipped" and exits 1 on a failure.
# `--gpu` first checks that a GPU can be used (scripts/gpu.sh r-test).
suppressPackageStartupMessages({
  library(testthat)
  library(kiln)
})
if ("--gpu" %in% commandArgs(trailingOnly = TRUE)) stopifnot(mlx_has_gpu())
res <- as.data.frame(test_dir("r/tests/testthat", reporter = "summary", stop_on_failure = FALSE))
failed <- sum(res$failed) + sum(res$error)
cat(sprintf("testthat: %d passed, %d failed, %d skipped\n", sum(res$nb) - failed, failed, sum(res$skipped)))
if (failed > 0) quit(status = 1)
