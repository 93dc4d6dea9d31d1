# The mlx_compile seed walkthrough (the Rmlx help page of mlx_compile), in R,
# with timings: compiled against uncompiled kiln.
#   Rscript r/inst/examples/seed.R       (after bash scripts/r-install.sh)
# or, with the package installed: source(system.file("examples", "seed.R", package = "kiln"))

suppressPackageStartupMessages(library(kiln))

# A warm-up round first: R frees dead arrays only when it collects garbage
# (kiln asks for a collection every 256 MiB handed to R), so the first calls
# with large outputs map fresh memory until freed buffers come back to
# kiln's pool.
per_call <- function(f, n) {
  for (i in seq_len(max(n, 20))) f()
  t <- numeric(5)
  for (r in 1:5) {
    t0 <- proc.time()[["elapsed"]]
    for (i in seq_len(n)) f()
    t[r] <- (proc.time()[["elapsed"]] - t0) / n
  }
  median(t)
}
us <- function(s) sprintf("%.1f us", s * 1e6)
ms <- function(s) sprintf("%.2f ms", s * 1e3)

cat("== kiln: the mlx_compile seed, in R ==\n\n")

cat("-- matmul_add with the seed's shapes: x (32, 128), w (256, 128), b (256)\n")
matmul_add <- function(x, w, b) {
  (x %*% w) + b
}
fast_fn <- mlx_compile(matmul_add) # returns immediately, no tracing yet
x <- mlx_rand_normal(c(32, 128))
w <- mlx_rand_normal(c(256, 128))
b <- mlx_rand_normal(c(256))
err <- tryCatch(fast_fn(x, w, b), error = function(e) e)
cat("error (as expected, x %*% w does not conform):\n  ", conditionMessage(err), "\n\n", sep = "")

cat("-- matmul_add with w (128, 256)\n")
w <- mlx_rand_normal(c(128, 256))
t0 <- proc.time()[["elapsed"]]
result <- fast_fn(x, w, b) # compiles during this call
first <- proc.time()[["elapsed"]] - t0
cat("first call (trace + compile + run): ", ms(first), " -> result [", paste(dim(result), collapse = ", "), "]\n", sep = "")
batch_data <- lapply(1:1000, function(i) mlx_rand_normal(c(32, 128)))
do.call(mlx_eval, batch_data) # draw the batches now, not inside the timed loop
t0 <- proc.time()[["elapsed"]]
for (i in 1:1000) {
  result <- fast_fn(batch_data[[i]], w, b) # very fast
}
loop <- (proc.time()[["elapsed"]] - t0) / 1000
eager <- per_call(function() mlx_eval(matmul_add(x, w, b)), 1000)
compiled <- per_call(function() fast_fn(x, w, b), 1000)
ref <- as.matrix(batch_data[[1000]]) %*% as.matrix(w) + matrix(as.vector(b), 32, 256, byrow = TRUE)
s <- mlx_compile_stats(fast_fn)
cat(sprintf("1000 batches: %s per call; median per call: compiled %s, uncompiled %s; traces = %d, hits = %d; max |kiln - base R| = %.2g\n\n",
            us(loop), us(compiled), us(eager), s$traces, s$hits, max(abs(as.matrix(result) - ref))))

cat("-- forward_and_norm returns list(y, norm)\n")
forward_and_norm <- function(x, w) {
  y <- x %*% w
  norm <- sqrt(sum(y * y))
  list(y, norm) # Return list of mlx objects
}
compiled_fn <- mlx_compile(forward_and_norm)
results <- compiled_fn(x, w) # Returns list(y, norm)
cat(sprintf("y: [%s], norm = %.4f (uncompiled %.4f)\n\n", paste(dim(results[[1]]), collapse = ", "),
            as.vector(results[[2]]), as.vector(forward_and_norm(x, w)[[2]])))

cat("-- shapeless: matmul_fn over (10, 64) then (20, 64)\n")
weights <- mlx_rand_normal(c(64, 32))
matmul_fn <- function(x, w) x %*% w
fast_fn <- mlx_compile(matmul_fn)
invisible(fast_fn(mlx_zeros(c(10, 64)), weights)) # Compiles for shape (10, 64)
invisible(fast_fn(mlx_zeros(c(20, 64)), weights)) # Recompiles for shape (20, 64)
cat("regular:   traces =", mlx_compile_stats(fast_fn)$traces, "(recompiled for (20, 64))\n")
fast_fn <- mlx_compile(matmul_fn, shapeless = TRUE)
invisible(fast_fn(mlx_zeros(c(10, 64)), weights)) # Compiles once
r <- fast_fn(mlx_zeros(c(20, 64)), weights) # No recompilation!
cat("shapeless: traces =", mlx_compile_stats(fast_fn)$traces, "(no recompilation), second result [",
    paste(dim(r), collapse = ", "), "]\n\n")

cat("-- compiled vs uncompiled (median of 5 rounds)\n")
gelu <- function(x) 0.5 * x * (1 + tanh(0.7978845608 * (x + 0.044715 * x^3)))
layernorm <- function(x, g, b) {
  mu <- mean(x, axes = 2, drop = FALSE)
  (x - mu) / sqrt(mlx_var(x, axes = 2, drop = FALSE) + 1e-5) * g + b
}
xg <- mlx_rand_normal(2^22)
cg <- mlx_compile(gelu)
tc <- per_call(function() cg(xg), 10)
te <- per_call(function() mlx_eval(gelu(xg)), 10)
cat(sprintf("gelu (tanh) on 2^22 f32:        uncompiled %s  compiled %s  speedup %.1fx\n", ms(te), ms(tc), te / tc))
xl <- mlx_rand_normal(c(2048, 1024))
g <- mlx_rand_normal(1024)
bl <- mlx_rand_normal(1024)
cl <- mlx_compile(layernorm)
tc <- per_call(function() cl(xl, g, bl), 5)
te <- per_call(function() mlx_eval(layernorm(xl, g, bl)), 5)
cat(sprintf("layernorm on (2048, 1024) f32:  uncompiled %s  compiled %s  speedup %.1fx\n\n", ms(te), ms(tc), te / tc))
cat("The compiled layernorm program:\n")
print(mlx_compile_explain(cl, xl, g, bl))
