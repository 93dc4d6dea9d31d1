# 1-based R axes to 0-based kiln axes (NULL: every axis); negative axes
# count from the end as in kiln (-1 is the last).
.axes0 <- function(axes) {
  if (is.null(axes)) return(NULL)
  axes <- as.integer(axes)
  ifelse(axes > 0L, axes - 1L, axes)
}

.reduce <- function(op, x, axes = NULL, drop = TRUE, ddof = 0) {
  kiln_reduce(op, as_mlx(x), .axes0(axes), !isTRUE(drop), ddof)
}

#' Sums, products, extrema and tests over axes
#'
#' The Summary group (`sum prod max min all any`) and `mean()` reduce over
#' every axis by default, or over `axes` (1-based); `drop = FALSE` keeps the
#' reduced axes with length 1. Float sums of float16 and bfloat16 accumulate
#' in float32. The result is a (0-d, for a full reduction) mlx array.
#'
#' @param x An mlx array.
#' @param ... For the Summary group: one mlx array, then `axes` and `drop`
#'   by name. `na.rm` is accepted and ignored (arrays hold no `NA`).
#' @param na.rm Ignored.
#' @param axes 1-based axes to reduce over, or `NULL` for all.
#' @param drop `FALSE` keeps reduced axes (length 1).
#' @param ddof Delta degrees of freedom for `mlx_var()` and `mlx_std()`
#'   (0: divide by n; 1: by n - 1, as R's `var()`).
#' @return An mlx array.
#' @examples
#' x <- as_mlx(matrix(1:6, 2))
#' sum(x)
#' sum(x, axes = 1)
#' max(x, axes = 2, drop = FALSE)
#' mean(x)
#' mlx_var(x, ddof = 1)
#' @export
Summary.mlx <- function(..., na.rm = FALSE) {
  args <- list(...)
  axes <- args$axes
  drop <- if (is.null(args$drop)) TRUE else args$drop
  args$axes <- NULL
  args$drop <- NULL
  if (length(args) != 1L || !is_mlx(args[[1]])) {
    stop(.Generic, "(): give one mlx array (and axes =, drop = by name)", call. = FALSE)
  }
  if (.Generic == "range") {
    x <- args[[1]]
    return(mlx_stack(list(.reduce("min", x, axes, drop), .reduce("max", x, axes, drop)), axis = 1))
  }
  .reduce(.Generic, args[[1]], axes, drop)
}

#' @rdname Summary.mlx
#' @export
mean.mlx <- function(x, axes = NULL, drop = TRUE, ...) .reduce("mean", x, axes, drop)

#' @rdname Summary.mlx
#' @export
mlx_sum <- function(x, axes = NULL, drop = TRUE) .reduce("sum", x, axes, drop)

#' @rdname Summary.mlx
#' @export
mlx_mean <- function(x, axes = NULL, drop = TRUE) .reduce("mean", x, axes, drop)

#' @rdname Summary.mlx
#' @export
mlx_var <- function(x, axes = NULL, drop = TRUE, ddof = 0) .reduce("var", x, axes, drop, ddof)

#' @rdname Summary.mlx
#' @export
mlx_std <- function(x, axes = NULL, drop = TRUE, ddof = 0) .reduce("std", x, axes, drop, ddof)

#' @rdname Summary.mlx
#' @export
mlx_logsumexp <- function(x, axes = NULL, drop = TRUE) .reduce("logsumexp", x, axes, drop)

#' Softmax and positions of extrema
#'
#' `mlx_softmax(x, axis)` is `exp(x) / sum(exp(x))` along `axis` (1-based;
#' default the last), computed stably. `mlx_argmax()` and `mlx_argmin()`
#' give 1-based positions along `axis`, or with `axis = NULL` the 1-based
#' position in R's column-major order (as [which.max()]).
#'
#' @param x An mlx array.
#' @param axis A 1-based axis (negative counts from the end).
#' @param drop `FALSE` keeps the reduced axis.
#' @return An mlx array (int32 positions for the arg functions).
#' @examples
#' x <- as_mlx(matrix(c(1, 5, 3, 2), 2))
#' mlx_softmax(x)
#' mlx_argmax(x)
#' mlx_argmax(x, axis = 1)
#' @export
mlx_softmax <- function(x, axis = -1) kiln_softmax(as_mlx(x), .axes0(axis))

.argreduce <- function(op, x, axis, drop) {
  x <- as_mlx(x)
  if (is.null(axis)) {
    nd <- length(kiln_shape(x))
    # R's linear positions run column-major: reverse the axes, then flatten.
    if (nd > 1L) x <- kiln_permute(x, rev(seq_len(nd)) - 1L)
    x <- kiln_reshape(x, -1)
    r <- kiln_argreduce(op, x, NULL, FALSE)
  } else {
    r <- kiln_argreduce(op, x, .axes0(axis), !isTRUE(drop))
  }
  kiln_astype(r, "int32") + 1L
}

#' @rdname mlx_softmax
#' @export
mlx_argmax <- function(x, axis = NULL, drop = TRUE) .argreduce("argmax", x, axis, drop)

#' @rdname mlx_softmax
#' @export
mlx_argmin <- function(x, axis = NULL, drop = TRUE) .argreduce("argmin", x, axis, drop)

#' Row and column sums and means
#'
#' For mlx arrays these reduce with kiln, as base R's do for R arrays:
#' `colSums()` over the first `dims` axes, `rowSums()` over the others. For
#' any other argument they call base R's functions (kiln masks them so that
#' one name serves both).
#'
#' @param x An mlx array or an R array.
#' @param na.rm,dims,... As in base R.
#' @return An mlx array (or base R's result).
#' @examples
#' x <- as_mlx(matrix(1:6, 2))
#' colSums(x)
#' rowMeans(x)
#' @export
colSums <- function(x, na.rm = FALSE, dims = 1L, ...) {
  if (!is_mlx(x)) return(base::colSums(x, na.rm = na.rm, dims = dims, ...))
  .reduce("sum", x, seq_len(dims))
}

#' @rdname colSums
#' @export
rowSums <- function(x, na.rm = FALSE, dims = 1L, ...) {
  if (!is_mlx(x)) return(base::rowSums(x, na.rm = na.rm, dims = dims, ...))
  .reduce("sum", x, seq.int(dims + 1L, length(kiln_shape(x))))
}

#' @rdname colSums
#' @export
colMeans <- function(x, na.rm = FALSE, dims = 1L, ...) {
  if (!is_mlx(x)) return(base::colMeans(x, na.rm = na.rm, dims = dims, ...))
  .reduce("mean", x, seq_len(dims))
}

#' @rdname colSums
#' @export
rowMeans <- function(x, na.rm = FALSE, dims = 1L, ...) {
  if (!is_mlx(x)) return(base::rowMeans(x, na.rm = na.rm, dims = dims, ...))
  .reduce("mean", x, seq.int(dims + 1L, length(kiln_shape(x))))
}
