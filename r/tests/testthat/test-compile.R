# mlx_compile: the seed's contract (../shared/seed/mlx_compile.txt), one
# test per promise.

counting <- function(body) {
  calls <- 0L
  f <- function(x, w) {
    calls <<- calls + 1L
    body(x, w)
  }
  list(f = f, calls = function() calls)
}

test_that("mlx_compile returns at once without calling f, with f's formals", {
  k <- counting(function(x, w) x + w)
  cf <- mlx_compile(k$f)
  expect_equal(k$calls(), 0L)
  expect_true(is.function(cf))
  expect_identical(names(formals(cf)), c("x", "w"))
  expect_equal(mlx_compile_stats(cf)$traces, 0L)
})

test_that("the first call traces once; same signature reuses the cache and never calls f", {
  k <- counting(function(x, w) x * w + 1)
  cf <- mlx_compile(k$f)
  x <- mlx_rand_normal(c(4, 3))
  w <- mlx_rand_normal(c(4, 3))
  r <- cf(x, w)
  expect_equal(k$calls(), 1L)
  for (i in 1:20) r <- cf(mlx_rand_normal(c(4, 3)), w)
  expect_equal(k$calls(), 1L)
  s <- mlx_compile_stats(cf)
  expect_equal(s$traces, 1L)
  expect_equal(s$hits, 20L)
  expect_equal(s$entries, 1L)
  expect_equal(as.matrix(cf(x, w)), as.matrix(x) * as.matrix(w) + 1, tolerance = 1e-6)
})

test_that("named arguments match by name, as for f", {
  cf <- mlx_compile(function(x, w) x - w)
  x <- as_mlx(c(10, 20))
  w <- as_mlx(c(1, 2))
  expect_equal(as.vector(cf(w = w, x = x)), c(9, 18))
})

test_that("a new shape, dtype or argument count retraces; shapeless keeps one graph", {
  k <- counting(function(x, w) x %*% w)
  cf <- mlx_compile(k$f)
  w <- mlx_rand_normal(c(64, 32))
  cf(mlx_zeros(c(10, 64)), w)
  cf(mlx_zeros(c(20, 64)), w)
  expect_equal(k$calls(), 2L)
  cf(mlx_zeros(c(20, 64), dtype = "float64"), mlx_cast(w, "float64"))
  expect_equal(k$calls(), 3L)

  k2 <- counting(function(x, w) x %*% w)
  sl <- mlx_compile(k2$f, shapeless = TRUE)
  a <- sl(mlx_ones(c(10, 64)), w)
  b <- sl(mlx_ones(c(20, 64)), w)
  expect_equal(k2$calls(), 1L)
  expect_equal(dim(b), c(20L, 32L))
  expect_equal(as.matrix(b), matrix(1, 20, 64) %*% as.matrix(w), tolerance = 1e-4)
  sl(mlx_ones(c(2, 3, 64)), w)
  expect_equal(k2$calls(), 2L)
})

test_that("a list result keeps its names per cache entry; a length-1 list stays a list", {
  cf <- mlx_compile(function(x) list(double = x * 2, half = x / 2))
  r <- cf(as_mlx(c(2, 4)))
  expect_type(r, "list")
  expect_identical(names(r), c("double", "half"))
  expect_equal(as.vector(r$half), c(1, 2))
  r <- cf(as_mlx(c(6, 8)))
  expect_identical(names(r), c("double", "half"))
  one <- mlx_compile(function(x) list(x + 1))
  r1 <- one(as_mlx(1))
  expect_type(r1, "list")
  expect_length(r1, 1L)
  expect_true(is_mlx(r1[[1]]))
  bare <- mlx_compile(function(x) x + 1)
  expect_true(is_mlx(bare(as_mlx(1))))
})

test_that("R numbers and matrices as arguments are converted; numbers inside f are constants", {
  cf <- mlx_compile(function(x, y) x * 3 + y)
  m <- matrix(1:6, 2)
  r <- cf(m, 1)
  expect_true(is_mlx(r))
  expect_equal(as.matrix(r), m * 3 + 1)
  expect_equal(mlx_dtype(r), "float32")
})

test_that("random draws inside a compiled function are fresh on every call", {
  cf <- mlx_compile(function(x) x + mlx_rand_normal(c(8)))
  z <- mlx_zeros(8)
  a <- as.vector(cf(z))
  b <- as.vector(cf(z))
  expect_false(isTRUE(all.equal(a, b)))
  expect_equal(mlx_compile_stats(cf)$traces, 1L)
})

test_that("mlx_disable_compile() affects functions compiled before it", {
  k <- counting(function(x, w) x + w)
  cf <- mlx_compile(k$f)
  x <- as_mlx(1:3)
  cf(x, x)
  mlx_disable_compile()
  on.exit(mlx_enable_compile())
  expect_false(mlx_compile_enabled())
  cf(x, x)
  cf(x, x)
  expect_equal(k$calls(), 3L)
  # Disabled, f runs eagerly: printing inside it works.
  p <- mlx_compile(function(x) {
    print(x)
    x
  })
  expect_output(p(x), "mlx array")
  mlx_enable_compile()
  cf(x, x)
  expect_equal(k$calls(), 3L)
})

test_that("reading a placeholder while tracing is an R error naming the argument", {
  for (reader in list(print, as.matrix, as.numeric, as.vector, function(v) v[[1]])) {
    cf <- mlx_compile(function(x, y) {
      reader(y * 2)
      x
    })
    err <- expect_error(cf(mlx_ones(c(2, 2)), mlx_ones(3)))
    msg <- conditionMessage(err)
    expect_match(msg, "argument 2 `y` \\(f32\\[3\\]\\)")
    expect_match(msg, "placeholder")
    expect_match(msg, "mlx_disable_compile()", fixed = TRUE)
  }
  iff <- mlx_compile(function(x) if (x > 0) x else -x)
  err <- expect_error(iff(mlx_scalar(1)))
  expect_match(conditionMessage(err), "^`if \\(x > 0\\)`: cannot read array values while tracing")
  expect_match(conditionMessage(err), "argument 1 `x`")
  # The session and the compiled function go on.
  ok <- mlx_compile(function(x) x + 1)
  expect_equal(as.vector(ok(as_mlx(1))), 2)
})

test_that("errors leave the compiled function usable", {
  calls <- 0L
  cf <- mlx_compile(function(x) {
    calls <<- calls + 1L
    if (calls == 1L) stop("boom from f")
    x * 2
  })
  expect_error(cf(as_mlx(1)), "boom from f")
  expect_equal(as.vector(cf(as_mlx(2))), 4)
  expect_equal(mlx_compile_stats(cf)$entries, 1L)

  bad <- mlx_compile(function(x) as.vector(1))
  expect_error(bad(as_mlx(1)), "must return an mlx array or a list of mlx arrays.*numeric")
  bad_list <- mlx_compile(function(x) list(x, "a"))
  expect_error(bad_list(as_mlx(1)), "element 2 of the returned list")

  shapes <- mlx_compile(function(x, w) x %*% w)
  expect_error(shapes(mlx_zeros(c(32, 128)), mlx_zeros(c(256, 128))), "matmul.*\\(32, 128\\).*\\(256, 128\\)")
  expect_equal(dim(shapes(mlx_zeros(c(32, 128)), mlx_zeros(c(128, 256)))), c(32L, 256L))
})

test_that("the compiled function keeps f and its captures alive, and releases them with it", {
  released <- FALSE
  make <- function() {
    e <- new.env()
    e$scale <- 3
    reg.finalizer(e, function(e) released <<- TRUE)
    f <- function(x) x * e$scale
    mlx_compile(f)
  }
  cf <- make()
  gc()
  gc()
  expect_false(released)
  expect_equal(as.vector(cf(as_mlx(2))), 6)
  rm(cf)
  gc()
  gc()
  expect_true(released)
})

test_that("mlx_compile_explain shows the fused kernels", {
  cf <- mlx_compile(function(x) exp(x) * 2 + 1)
  x <- mlx_ones(c(4, 4))
  txt <- mlx_compile_explain(cf, x)
  expect_s3_class(txt, "kiln_explain")
  expect_match(txt, "kernel 0 \\[fused\\]")
  expect_match(txt, "exp")
  expect_output(print(txt), "kernel")
})

test_that("bad arguments to mlx_compile are clear errors", {
  expect_error(mlx_compile(1), "f must be an R function")
  expect_error(mlx_compile(function(x) x, shapeless = NA), "shapeless")
  expect_error(mlx_compile_stats(function(x) x), "made by mlx_compile")
})

test_that("a compiled call checks its handle and its arguments", {
  f <- mlx_compile(function(x, y) x + y)
  expect_error(.Call(kiln:::kiln_call, "not a handle", list()), "compiled function's handle")
  expect_error(.Call(kiln:::kiln_call, mlx_scalar(1), list()), "compiled function's handle")
  h <- environment(f)$handle
  expect_error(.Call(kiln:::kiln_call, h, "not a list"), "list of arguments")
  # A compiled function's handle is not an array, and vice versa.
  expect_error(f(h, 1), "expected an mlx array")
  # Many results, dropped and collected, each freed once: values stay right.
  x <- mlx_array(1:6, c(2, 3))
  for (i in 1:2000) y <- f(x, i)
  gc()
  expect_equal(as.matrix(y), matrix(1:6, 2) + 2000)
})
