#' Devices: CPU and GPU
#'
#' Every mlx array lives on a device, `"cpu"` or `"gpu"` (an NVIDIA GPU,
#' through kiln's CUDA backend). Operations run on the device of their
#' inputs, which must share one; new arrays (`as_mlx()`, `mlx_zeros()`,
#' random draws without a key) go to the default device.
#' `mlx_default_device()` returns it, `mlx_default_device(value)` sets it,
#' and `with_default_device(device, code)` sets it while `code` runs.
#' `mlx_device(x)` is the device of an array; `as_mlx(x, device = )` moves
#' one. `mlx_has_gpu()` says whether a GPU can be used; asking for one
#' where there is none is an R error saying why. GPU work is queued and
#' runs while R goes on; reading values waits for it, and so does
#' `mlx_synchronize()` (for timing).
#'
#' GPU support is built into the package when it is installed with the
#' environment variable `KILN_FEATURES=cuda` (no CUDA is needed to build;
#' at run time the NVIDIA driver and CUDA 13's NVRTC and cuBLAS are
#' loaded, from `KILN_CUDA_LIB_DIR` first when that is set).
#'
#' @param value New default device, `"cpu"` or `"gpu"`. If missing, the
#'   current default is returned.
#' @param device `"cpu"` or `"gpu"`.
#' @param code An expression, evaluated with `device` as the default.
#' @param x An mlx array.
#' @return `mlx_default_device()`: the default device (character), set to
#'   `value` when given. `with_default_device()`: the value of `code`.
#'   `mlx_device()`: `"cpu"` or `"gpu"`. `mlx_has_gpu()`: `TRUE` or `FALSE`.
#'   `mlx_synchronize()`: `NULL`, invisibly.
#' @examples
#' mlx_default_device()
#' x <- as_mlx(1:3)
#' mlx_device(x)
#' if (mlx_has_gpu()) {
#'   y <- as_mlx(x, device = "gpu") * 2
#'   as.vector(y)
#' }
#' with_default_device("cpu", mlx_zeros(2))
#' @export
mlx_default_device <- function(value) {
  if (missing(value)) {
    return(kiln_default_device())
  }
  value <- match.arg(value, c("cpu", "gpu"))
  kiln_set_default_device(value)
  value
}

#' @rdname mlx_default_device
#' @export
with_default_device <- function(device, code) {
  device <- match.arg(device, c("cpu", "gpu"))
  old <- kiln_default_device()
  kiln_set_default_device(device)
  on.exit(kiln_set_default_device(old), add = TRUE)
  code
}

#' @rdname mlx_default_device
#' @export
mlx_device <- function(x) {
  kiln_device(as_mlx(x))
}

#' @rdname mlx_default_device
#' @export
mlx_has_gpu <- function() kiln_has_gpu()

#' @rdname mlx_default_device
#' @export
mlx_synchronize <- function(device = mlx_default_device()) {
  invisible(kiln_synchronize(match.arg(device, c("cpu", "gpu"))))
}
