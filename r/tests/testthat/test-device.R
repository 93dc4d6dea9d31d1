test_that("arrays live on the CPU by default and report it", {
  skip_if(Sys.getenv("KILN_TEST_DEVICE", "cpu") != "cpu", "the suite runs with another default device")
  expect_equal(mlx_default_device(), "cpu")
  x <- as_mlx(1:3)
  expect_equal(mlx_device(x), "cpu")
  expect_equal(mlx_device(as_mlx(x, device = "cpu")), "cpu")
  expect_equal(as.vector(with_default_device("cpu", mlx_zeros(2) + 1)), c(1, 1))
  expect_null(mlx_synchronize())
  expect_error(mlx_default_device("tpu"), "should be one of")
})

test_that("mlx_has_gpu() answers, and a missing GPU is an R error, not a crash", {
  has <- mlx_has_gpu()
  expect_true(is.logical(has) && length(has) == 1 && !is.na(has))
  if (!has) {
    expect_error(mlx_default_device("gpu"), "gpu|GPU|CUDA|cuda")
    expect_equal(mlx_default_device(), "cpu")
    expect_error(as_mlx(1:3, device = "gpu"), "GPU|CUDA|cuda")
    expect_error(with_default_device("gpu", mlx_zeros(2)), "GPU|CUDA|cuda")
    expect_equal(mlx_default_device(), "cpu")
  } else {
    x <- as_mlx(matrix(1:6, 2, 3), device = "gpu")
    expect_equal(mlx_device(x), "gpu")
    f <- mlx_compile(function(a) exp(a * 0.1) + 1)
    expect_equal(as.matrix(f(x)), exp(matrix(1:6, 2, 3) * 0.1) + 1, tolerance = 1e-6)
  }
})
