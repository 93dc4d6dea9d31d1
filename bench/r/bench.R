# The R benchmark: compiled kiln (mlx_compile) against the same R functions
# called uncompiled on mlx arrays and against base R on doubles, for three
# workloads (gelu on 2^22 elements, layernorm over 2048 x 1024, the seed's
# matmul_add 32 x 128 by 128 x 256 plus 256), then the R overhead of one
# compiled call: the compiled matmul_add timed from R against the same call
# from Rust (crates/kiln/examples/r_overhead.rs), alternating the two.
#
#   bash bench/r/bench.sh      installs R and the package, builds the Rust
#                              example, then runs this script
#   Rscript bench/r/bench.R    the same, once target/R holds the package and
#                              target/release/examples/r_overhead is built
#
# Times are medians over rounds; each round times an inner loop of k calls
# (5 for gelu and layernorm, 1000 for matmul_add) and divides by k. The three variants of a workload run in turn inside each
# round, so that the drift of this shared VM's speed hits them alike.
# Per-element figures divide by the elements of the output (gelu 2^22,
# layernorm 2048 x 1024, matmul_add 32 x 256).

# Run from the repository root wherever the script is called from.
local({
  file <- sub("^--file=", "", grep("^--file=", commandArgs(FALSE), value = TRUE))
  if (length(file) == 1L) setwd(normalizePath(file.path(dirname(file), "..", "..")))
})

# The package may be reinstalled while this starts: retry a few times.
for (attempt in 1:5) {
  ok <- suppressPackageStartupMessages(
    tryCatch({
      library(kiln, lib.loc = "target/R")
      TRUE
    }, error = function(e) {
      message("library(kiln) failed (attempt ", attempt, "): ", conditionMessage(e))
      FALSE
    })
  )
  if (ok) break
  if (attempt == 5) stop("cannot load kiln from target/R: run bash scripts/r-install.sh")
  Sys.sleep(5)
}

mlx_seed(0)
set.seed(0)

now <- function() as.double(Sys.time())

# Seconds per call of f() over an inner loop of k calls. No gc() here: a
# collection right before a timed call leaves that call's caches cold (gelu
# 2.1 -> 3.5 ms); dead arrays are collected as in any R session (kiln asks R
# for a collection every 256 MiB of array data handed to R).
per_call <- function(f, k) {
  t0 <- now()
  for (i in seq_len(k)) f()
  (now() - t0) / k
}

# Times the named functions in turn, r rounds of k calls each, after one
# warm-up call each; returns the median seconds per call of each.
bench <- function(fs, k, r) {
  for (f in fs) f()
  t <- matrix(NA_real_, r, length(fs), dimnames = list(NULL, names(fs)))
  for (j in seq_len(r)) {
    for (n in names(fs)) t[j, n] <- per_call(fs[[n]], k)
  }
  apply(t, 2, median)
}

# Compiled and uncompiled kiln against base R: max |difference| within 1e-3
# of the result's magnitude (float32 against doubles), else stop.
check <- function(name, compiled, uncompiled, base) {
  base <- as.vector(base)
  scale <- max(1, max(abs(base)))
  for (v in list(list("compiled", compiled), list("uncompiled", uncompiled))) {
    got <- as.vector(as.array(v[[2]]))
    if (length(got) != length(base)) {
      stop(sprintf("%s: %s kiln gives %d elements, base R %d", name, v[[1]], length(got), length(base)))
    }
    d <- max(abs(got - base))
    if (!is.finite(d) || d > 1e-3 * scale) {
      stop(sprintf("%s: %s kiln differs from base R by %.3g (allowed %.3g)", name, v[[1]], d, 1e-3 * scale))
    }
    cat(sprintf("  check %-10s %-10s max |kiln - base R| = %.2e (allowed %.2e)\n", name, v[[1]], d, 1e-3 * scale))
  }
}

fmt_time <- function(s) {
  if (s >= 1) sprintf("%.2f s", s) else if (s >= 1e-3) sprintf("%.2f ms", s * 1e3) else sprintf("%.1f us", s * 1e6)
}

rows <- list()
add_row <- function(name, n, t) {
  rows[[name]] <<- list(n = n, t = t)
}

cat(sprintf("== kiln from R: compiled vs uncompiled vs base R (%s, %d cores, %s) ==\n\n",
            R.version.string, parallel::detectCores(), sessionInfo()$BLAS))

# ---- a. gelu (tanh form) on 2^22 float32 elements --------------------------
gelu <- function(x) 0.5 * x * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 * x^3)))
n_gelu <- 2^22
x_gelu <- mlx_rand_normal(n_gelu)
mlx_eval(x_gelu)
xr_gelu <- as.vector(x_gelu)
gelu_c <- mlx_compile(gelu)
check("gelu", gelu_c(x_gelu), mlx_eval(gelu(x_gelu))[[1]], gelu(xr_gelu))
add_row("gelu 2^22", n_gelu, bench(list(
  compiled = function() gelu_c(x_gelu),
  uncompiled = function() mlx_eval(gelu(x_gelu)),
  base = function() gelu(xr_gelu)
), k = 5, r = 7))

# ---- b. layernorm over 2048 x 1024 -----------------------------------------
layernorm <- function(x, g, b) {
  (x - mean(x, axes = 2, drop = FALSE)) / sqrt(mlx_var(x, axes = 2, drop = FALSE) + 1e-5) * g + b
}
# Base R on its own terms: each row normalized, g and b per column.
layernorm_r <- function(x, g, b) {
  mu <- rowMeans(x)
  xc <- x - mu
  v <- rowMeans(xc * xc)
  xc / sqrt(v + 1e-5) * rep(g, each = nrow(x)) + rep(b, each = nrow(x))
}
x_ln <- mlx_rand_normal(c(2048, 1024))
g_ln <- mlx_rand_normal(1024, mean = 1, sd = 0.1)
b_ln <- mlx_rand_normal(1024, sd = 0.1)
mlx_eval(x_ln, g_ln, b_ln)
xr_ln <- as.matrix(x_ln)
gr_ln <- as.vector(g_ln)
br_ln <- as.vector(b_ln)
layernorm_c <- mlx_compile(layernorm)
check("layernorm", layernorm_c(x_ln, g_ln, b_ln), mlx_eval(layernorm(x_ln, g_ln, b_ln))[[1]],
      layernorm_r(xr_ln, gr_ln, br_ln))
add_row("layernorm 2048x1024", 2048 * 1024, bench(list(
  compiled = function() layernorm_c(x_ln, g_ln, b_ln),
  uncompiled = function() mlx_eval(layernorm(x_ln, g_ln, b_ln)),
  base = function() layernorm_r(xr_ln, gr_ln, br_ln)
), k = 5, r = 7))

# ---- c. the seed's matmul_add, loops of 1000 calls -------------------------
matmul_add <- function(x, w, b) (x %*% w) + b
matmul_add_r <- function(x, w, b) base::`%*%`(x, w) + rep(b, each = nrow(x))
x_mm <- mlx_rand_normal(c(32, 128))
w_mm <- mlx_rand_normal(c(128, 256))
b_mm <- mlx_rand_normal(256)
mlx_eval(x_mm, w_mm, b_mm)
xr_mm <- as.matrix(x_mm)
wr_mm <- as.matrix(w_mm)
br_mm <- as.vector(b_mm)
matmul_add_c <- mlx_compile(matmul_add)
check("matmul_add", matmul_add_c(x_mm, w_mm, b_mm), mlx_eval(matmul_add(x_mm, w_mm, b_mm))[[1]],
      matmul_add_r(xr_mm, wr_mm, br_mm))
add_row("matmul_add 32x128 @ 128x256", 32 * 256, bench(list(
  compiled = function() matmul_add_c(x_mm, w_mm, b_mm),
  uncompiled = function() mlx_eval(matmul_add(x_mm, w_mm, b_mm)),
  base = function() matmul_add_r(xr_mm, wr_mm, br_mm)
), k = 1000, r = 7))

# ---- the table -------------------------------------------------------------
cell <- function(s, n) sprintf("%s (%.2f ns/el)", fmt_time(s), s * 1e9 / n)
tab <- do.call(rbind, lapply(names(rows), function(name) {
  r <- rows[[name]]
  data.frame(
    workload = name,
    `compiled kiln` = cell(r$t[["compiled"]], r$n),
    `uncompiled kiln` = cell(r$t[["uncompiled"]], r$n),
    `base R` = cell(r$t[["base"]], r$n),
    `compiled/uncompiled` = sprintf("%.1fx", r$t[["uncompiled"]] / r$t[["compiled"]]),
    `compiled/base R` = sprintf("%.1fx", r$t[["base"]] / r$t[["compiled"]]),
    check.names = FALSE
  )
}))
cat("\nMedian time per call (ns per output element); speedups are how many times faster compiled kiln is:\n\n")
options(width = 250)
print(tab, row.names = FALSE, right = FALSE)

gelu_speedup <- rows[["gelu 2^22"]]$t[["uncompiled"]] / rows[["gelu 2^22"]]$t[["compiled"]]
cat(sprintf("\ngelu: compiled at least 5x faster than uncompiled: %s (%.1f)\n",
            if (gelu_speedup >= 5) "MET" else "NOT MET", gelu_speedup))

# ---- d. R overhead of a compiled call --------------------------------------
# The compiled matmul_add, and a tiny compiled call (a + 1 on a 0-d array),
# from R (median per call over 20 rounds of 1000) and from Rust (the
# r_overhead example, the same measurement), alternated three times; the
# overhead is the median of the per-round differences.
#
# R frees an output only when its collector runs (kiln asks for a collection
# once 256 MiB of array data were handed to R), so R's outputs are fresh
# memory until then, while a Rust loop that drops each output at once writes
# the next one into the same cache-hot buffer. r_overhead therefore also
# times matmul_add with its outputs kept alive as R keeps them (dropped all at
# once every 256 MiB): R's overhead is measured against that call, the same
# work with the same output lifetime, and the plain Rust figure is printed
# beside it to show what the lifetime itself costs.
target_dir <- Sys.getenv("CARGO_TARGET_DIR", "target")
rust_bin <- file.path(target_dir, "release", "examples", "r_overhead")
rounds <- 20L
calls <- 1000L
tiny_c <- mlx_compile(function(a) a + 1)
a_tiny <- mlx_scalar(2)

r_us_per_call <- function(call) {
  t <- vapply(seq_len(rounds), function(j) per_call(call, calls), 0)
  median(t) * 1e6
}

rust_us_per_call <- function() {
  out <- system2(rust_bin, as.character(rounds), stdout = TRUE)
  get <- function(key) {
    line <- grep(paste0("^", key, " "), out, value = TRUE)
    if (length(line) != 1L) stop("r_overhead printed no ", key, " line:\n", paste(out, collapse = "\n"))
    as.double(sub(paste0("^", key, " "), "", line))
  }
  c(matmul_add = get("rust_held_us_per_call"), tiny = get("rust_tiny_us_per_call"),
    dropped = get("rust_us_per_call"))
}

cat("\n")
if (!file.exists(rust_bin)) stop(rust_bin, " is not built: run bash bench/r/bench.sh")
for (i in 1:200) {
  matmul_add_c(x_mm, w_mm, b_mm)
  tiny_c(a_tiny)
}
r_us <- matrix(NA_real_, 3, 2, dimnames = list(NULL, c("matmul_add", "tiny")))
rust_us <- matrix(NA_real_, 3, 3, dimnames = list(NULL, c("matmul_add", "tiny", "dropped")))
for (i in 1:3) {
  r_us[i, ] <- c(r_us_per_call(function() matmul_add_c(x_mm, w_mm, b_mm)), r_us_per_call(function() tiny_c(a_tiny)))
  rust_us[i, ] <- rust_us_per_call()
  cat(sprintf("  round %d: matmul_add R %.2f us, Rust %.2f us (outputs held as R holds them; %.2f us dropped at once); tiny R %.2f us, Rust %.2f us\n",
              i, r_us[i, 1], rust_us[i, 1], rust_us[i, 3], r_us[i, 2], rust_us[i, 2]))
}
cat(sprintf("Output lifetime: Rust's matmul_add with outputs held as R holds them %.2f us, dropped at once %.2f us\n",
            median(rust_us[, "matmul_add"]), median(rust_us[, "dropped"])))
for (k in colnames(r_us)) {
  diff_us <- median(r_us[, k] - rust_us[, k])
  cat(sprintf("R overhead of a compiled %s call: R %.2f us, Rust %.2f us, difference %.2f us (target <= 3 us): %s\n",
              k, median(r_us[, k]), median(rust_us[, k]), diff_us, if (diff_us <= 3) "MET" else "NOT MET"))
}
