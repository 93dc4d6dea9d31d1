# The seed's examples (../shared/seed/mlx_compile.txt), verbatim where R
# allows, with assertions.

test_that("the first example as printed: x %*% w does not conform, and the session goes on", {
  matmul_add <- function(x, w, b) {
    (x %*% w) + b
  }
  fast_fn <- mlx_compile(matmul_add)
  x <- mlx_rand_normal(c(32, 128))
  w <- mlx_rand_normal(c(256, 128))
  b <- mlx_rand_normal(c(256))
  err <- expect_error(result <- fast_fn(x, w, b))
  expect_match(conditionMessage(err), "(32, 128)", fixed = TRUE)
  expect_match(conditionMessage(err), "(256, 128)", fixed = TRUE)
  expect_equal(as.vector(sum(mlx_ones(3))), 3)
})

test_that("with w 128 x 256 the result is R's own, and 1000 batches trace once", {
  matmul_add <- function(x, w, b) {
    (x %*% w) + b
  }
  fast_fn <- mlx_compile(matmul_add)
  x <- mlx_rand_normal(c(32, 128))
  w <- mlx_rand_normal(c(128, 256))
  b <- mlx_rand_normal(c(256))
  result <- fast_fn(x, w, b)
  expect_equal(dim(result), c(32L, 256L))
  ref <- as.matrix(x) %*% as.matrix(w) + matrix(as.vector(b), 32, 256, byrow = TRUE)
  expect_equal(as.matrix(result), ref, tolerance = 1e-5)
  batch_data <- lapply(1:1000, function(i) mlx_rand_normal(c(32, 128)))
  for (i in 1:1000) {
    result <- fast_fn(batch_data[[i]], w, b)
  }
  expect_equal(mlx_compile_stats(fast_fn)$traces, 1L)
  expect_equal(mlx_compile_stats(fast_fn)$hits, 1000L)
  ref <- as.matrix(batch_data[[1000]]) %*% as.matrix(w) + matrix(as.vector(b), 32, 256, byrow = TRUE)
  expect_equal(as.matrix(result), ref, tolerance = 1e-5)
})

test_that("forward_and_norm returns list(y, norm)", {
  forward_and_norm <- function(x, w) {
    y <- x %*% w
    norm <- sqrt(sum(y * y))
    list(y, norm) # Return list of mlx objects
  }
  x <- mlx_rand_normal(c(32, 128))
  w <- mlx_rand_normal(c(128, 256))
  compiled_fn <- mlx_compile(forward_and_norm)
  results <- compiled_fn(x, w) # Returns list(y, norm)
  expect_length(results, 2L)
  expect_equal(dim(results[[1]]), c(32L, 256L))
  expect_equal(mlx_shape(results[[2]]), integer(0))
  y <- as.matrix(x) %*% as.matrix(w)
  expect_equal(as.vector(results[[2]]), sqrt(sum(y * y)), tolerance = 1e-5)
})

test_that("the shapeless example: one trace with shapeless = TRUE, two without", {
  weights <- mlx_rand_normal(c(64, 32))
  traces <- 0L
  matmul_fn <- function(x, w) {
    traces <<- traces + 1L
    x %*% w
  }
  fast_fn <- mlx_compile(matmul_fn)
  fast_fn(mlx_zeros(c(10, 64)), weights) # Compiles for shape (10, 64)
  fast_fn(mlx_zeros(c(20, 64)), weights) # Recompiles for shape (20, 64)
  expect_equal(traces, 2L)
  expect_equal(mlx_compile_stats(fast_fn)$traces, 2L)

  traces <- 0L
  fast_fn <- mlx_compile(matmul_fn, shapeless = TRUE)
  fast_fn(mlx_zeros(c(10, 64)), weights) # Compiles once
  r <- fast_fn(mlx_zeros(c(20, 64)), weights) # No recompilation!
  expect_equal(traces, 1L)
  expect_equal(dim(r), c(20L, 32L))
})
