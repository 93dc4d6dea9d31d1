#' Precision of float32 matrix products
#'
#' `mlx_matmul_precision()` returns how float32 matrix products compute,
#' `mlx_matmul_precision(value)` sets it for every later product, eager or
#' compiled, and returns the previous setting invisibly.
#'
#' `"highest"` (the default) is true float32. `"tf32"` allows NVIDIA GPUs
#' to use TF32 on their tensor cores for large float32 products: each
#' operand is cut to 10 bits of mantissa (of float32's 23) and the products
#' summed in float32, several times faster, with an error up to about
#' `2^-9` times the sum of `abs(a[i, k] * b[k, j])` over `k` (like float16
#' inputs). It is a permission: the CPU, and the GPU's own kernel for small
#' products, have no TF32 path and stay true float32; other dtypes are
#' never affected. The environment variable `KILN_MATMUL_PRECISION`
#' (`highest` or `tf32`), set before the first matrix product, gives the
#' default.
#' This is JAX's `precision = "highest"` or `"tensorfloat32"`, and
#' PyTorch's `torch.backends.cuda.matmul.allow_tf32`.
#'
#' Products of float16 and bfloat16 arrays always sum in float32 and round
#' the result once to their dtype. On Intel CPUs with AMX (Sapphire Rapids
#' and later, on Linux) bfloat16 products run on the AMX tiles, several
#' times faster than float32 products of the same size; the sums then come
#' in the hardware's order, and subnormal inputs count as zero.
#'
#' @param value `"highest"` or `"tf32"`. If missing, the current setting is
#'   returned.
#' @return The current setting (character); when `value` is given, the
#'   previous one, invisibly.
#' @examples
#' mlx_matmul_precision()
#' old <- mlx_matmul_precision("tf32")
#' x <- mlx_rand_normal(c(256, 512))
#' y <- x %*% t(x)
#' mlx_matmul_precision(old)
#' @export
mlx_matmul_precision <- function(value) {
  if (missing(value)) {
    return(kiln_matmul_precision())
  }
  value <- match.arg(value, c("highest", "tf32"))
  invisible(kiln_set_matmul_precision(value))
}
