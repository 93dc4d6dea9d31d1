test_that("float32 products are true float32 unless TF32 is asked for", {
  expect_equal(mlx_matmul_precision(), "highest")
  expect_error(mlx_matmul_precision("bf16"), "should be one of")
  set.seed(7)
  # 64 x 4096 by 4096 x 96: large enough for cuBLAS on a GPU.
  a <- matrix(runif(64 * 4096, -2, 2), 64)
  b <- matrix(runif(4096 * 96, -2, 2), 4096)
  ref <- a %*% b
  scale <- abs(a) %*% abs(b)
  xa <- as_mlx(a)
  xb <- as_mlx(b)
  f <- mlx_compile(function(x, y) x %*% y)
  err <- function(p) max(abs(as.matrix(p) - ref) / scale)
  highest <- c(err(xa %*% xb), err(f(xa, xb)))
  expect_equal(mlx_matmul_precision("tf32"), "highest")
  on.exit(mlx_matmul_precision("highest"), add = TRUE)
  expect_equal(mlx_matmul_precision(), "tf32")
  tf32 <- c(err(xa %*% xb), err(f(xa, xb)))
  expect_equal(mlx_matmul_precision("highest"), "tf32")
  # True float32: the sums' rounding only (inputs are rounded to float32
  # from R's doubles, about 2^-24 each).
  expect_true(all(highest < 2^-19))
  expect_true(all(tf32 <= 2^-9))
  if (mlx_device(xa) == "gpu") {
    expect_true(all(tf32 > 2^-17))
  } else {
    expect_identical(tf32, highest)
  }
})

test_that("bfloat16 products sum in float32 and round once, compiled or not", {
  set.seed(11)
  a <- matrix(runif(150 * 300, -2, 2), 150)
  b <- matrix(runif(300 * 170, -2, 2), 300)
  xa <- as_mlx(a, dtype = "bfloat16")
  xb <- as_mlx(b, dtype = "bfloat16")
  # The exact product of the rounded operands (doubles hold it to 2^-40).
  ra <- as.matrix(xa)
  rb <- as.matrix(xb)
  ref <- ra %*% rb
  scale <- abs(ra) %*% abs(rb)
  f <- mlx_compile(function(x, y) x %*% y)
  for (p in list(xa %*% xb, f(xa, xb))) {
    expect_equal(mlx_dtype(p), "bfloat16")
    expect_equal(dim(p), c(150L, 170L))
    got <- as.matrix(p)
    # One rounding to bfloat16 (2^-9 of the value, 2^-8 to be safe) after
    # float32 sums (2^-24 per term, 300 terms).
    expect_true(all(abs(got - ref) <= abs(ref) * 2^-8 + scale * 300 * 2^-24))
  }
  expect_identical(as.matrix(xa %*% xb), as.matrix(f(xa, xb)))
})
