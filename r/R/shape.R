#' Matrix products
#'
#' `x %*% y` multiplies matrices (batched over leading dimensions, with 1-d
#' operands as in NumPy's `matmul`); `crossprod(x, y)` is `t(x) %*% y` and
#' `tcrossprod(x, y)` is `x %*% t(y)`. R numbers, vectors and matrices are
#' converted with [as_mlx()]. kiln masks base R's `%*%`, `crossprod` and
#' `tcrossprod` (R 4.2 has no S3 dispatch for them); for non-mlx arguments
#' the base functions run.
#'
#' @param x,y mlx arrays or R matrices.
#' @param ... Passed to base R for non-mlx arguments.
#' @return An mlx array.
#' @examples
#' x <- mlx_ones(c(2, 3))
#' w <- mlx_ones(c(3, 4))
#' x %*% w
#' crossprod(x)
#' @export
`%*%` <- function(x, y) {
  if (!is_mlx(x) && !is_mlx(y)) return(base::`%*%`(x, y))
  kiln_matmul(.operand(x, y), .operand(y, x))
}

#' @rdname grapes-times-grapes
#' @export
crossprod <- function(x, y = NULL, ...) {
  if (!is_mlx(x) && !is_mlx(y)) return(base::crossprod(x, y, ...))
  x <- as_mlx(x)
  t(x) %*% (if (is.null(y)) x else y)
}

#' @rdname grapes-times-grapes
#' @export
tcrossprod <- function(x, y = NULL, ...) {
  if (!is_mlx(x) && !is_mlx(y)) return(base::tcrossprod(x, y, ...))
  x <- as_mlx(x)
  x %*% t(if (is.null(y)) x else as_mlx(y))
}

#' Transpose and permute axes
#'
#' `t()` swaps the two axes of a matrix (a 1-d array becomes a 1 x n
#' matrix, as in R); `aperm(a, perm)` permutes axes by the 1-based `perm`
#' (default: reversed). Both are views, no copy.
#'
#' @param x,a An mlx array.
#' @param perm A permutation of `1:ndim`.
#' @param ... Ignored.
#' @return An mlx array.
#' @examples
#' x <- as_mlx(matrix(1:6, 2))
#' dim(t(x))
#' dim(aperm(mlx_zeros(c(2, 3, 4)), c(3, 1, 2)))
#' @export
t.mlx <- function(x) {
  d <- kiln_shape(x)
  if (length(d) == 1L) return(kiln_reshape(x, c(1L, d)))
  if (length(d) != 2L) stop("t: an mlx array with ", length(d), " dimensions is not a matrix", call. = FALSE)
  kiln_permute(x, c(1L, 0L))
}

#' @rdname t.mlx
#' @export
aperm.mlx <- function(a, perm = NULL, ...) {
  nd <- length(kiln_shape(a))
  perm <- if (is.null(perm)) rev(seq_len(nd)) else as.integer(perm)
  kiln_permute(a, perm - 1L)
}

#' Reshape, flatten, squeeze, expand and broadcast
#'
#' `mlx_reshape(x, dim)` and `dim(x) <- dim` give `x`'s elements a new
#' shape in kiln's **row-major** order (unlike base R's `dim<-`, which keeps
#' column-major order); one entry of `dim` may be -1 (inferred).
#' `mlx_flatten()` is `mlx_reshape(x, -1)`. `mlx_squeeze()` drops axes of
#' length 1 (`axes` 1-based, default all); `mlx_expand_dims()` inserts
#' length-1 axes at the 1-based positions `axes` of the result;
#' `mlx_broadcast_to()` broadcasts to `dim` (NumPy rules).
#'
#' @param x An mlx array.
#' @param dim,value The new dimensions.
#' @param axes 1-based axes.
#' @return An mlx array.
#' @examples
#' x <- mlx_arange(6)
#' mlx_reshape(x, c(2, 3))
#' mlx_squeeze(mlx_zeros(c(1, 3, 1)))
#' dim(mlx_expand_dims(x, 1))
#' mlx_broadcast_to(as_mlx(1:3), c(2, 3))
#' @export
mlx_reshape <- function(x, dim) kiln_reshape(as_mlx(x), as.integer(dim))

#' @rdname mlx_reshape
#' @export
`dim<-.mlx` <- function(x, value) kiln_reshape(x, as.integer(value))

#' @rdname mlx_reshape
#' @export
mlx_flatten <- function(x) kiln_reshape(as_mlx(x), -1L)

#' @rdname mlx_reshape
#' @export
mlx_squeeze <- function(x, axes = NULL) kiln_squeeze(as_mlx(x), .axes0(axes))

#' @rdname mlx_reshape
#' @export
mlx_expand_dims <- function(x, axes) kiln_expand_dims(as_mlx(x), .axes0(axes))

#' @rdname mlx_reshape
#' @export
mlx_broadcast_to <- function(x, dim) kiln_broadcast_to(as_mlx(x), dim)

#' Join and split arrays
#'
#' `mlx_stack()` stacks arrays of one shape along a new 1-based `axis`;
#' `cbind()` and `rbind()` join matrices (vectors count as columns and rows)
#' along columns and rows; `mlx_split()` splits into `sections` equal parts,
#' or before each 1-based position in `indices`, along `axis`.
#'
#' @param ... mlx arrays (or R data), or one list of them.
#' @param arrays A list of arrays.
#' @param axis A 1-based axis.
#' @param x An mlx array.
#' @param sections Number of equal parts.
#' @param indices 1-based positions where new parts start.
#' @param deparse.level Ignored.
#' @return An mlx array; `mlx_split()` a list of them.
#' @examples
#' a <- as_mlx(1:3)
#' mlx_stack(list(a, a))
#' cbind(a, a)
#' mlx_split(mlx_arange(6), 3)
#' @export
mlx_stack <- function(arrays, axis = 1) {
  if (is_mlx(arrays)) arrays <- list(arrays)
  kiln_stack(lapply(arrays, as_mlx), .axes0(axis))
}

.as_matrix_part <- function(x, column) {
  x <- as_mlx(x)
  d <- kiln_shape(x)
  if (length(d) == 1L) return(kiln_reshape(x, if (column) c(d, 1L) else c(1L, d)))
  if (length(d) != 2L) stop("cbind/rbind: mlx arguments must be vectors or matrices", call. = FALSE)
  x
}

#' @rdname mlx_stack
#' @export
cbind.mlx <- function(..., deparse.level = 1) {
  kiln_concatenate(lapply(list(...), .as_matrix_part, column = TRUE), 1L)
}

#' @rdname mlx_stack
#' @export
rbind.mlx <- function(..., deparse.level = 1) {
  kiln_concatenate(lapply(list(...), .as_matrix_part, column = FALSE), 0L)
}

#' @rdname mlx_stack
#' @export
mlx_split <- function(x, sections = 2, axis = 1, indices = NULL) {
  kiln_split(as_mlx(x), sections, if (is.null(indices)) NULL else as.integer(indices) - 1L, .axes0(axis))
}

# One axis of `[`: NULL for all of it, else 0-based positions from R's
# positive, negative (exclusion), zero (ignored) or logical subscripts.
.positions <- function(i, n, axis) {
  if (is_mlx(i)) {
    stop("[: indexing by an mlx array is not supported (the result's shape would depend on values); ",
         "convert the index with as.vector() first", call. = FALSE)
  }
  if (is.logical(i)) {
    if (anyNA(i)) stop("[: NA subscripts are not supported", call. = FALSE)
    return(which(rep_len(i, n)) - 1L)
  }
  if (!is.numeric(i)) stop("[: subscripts must be numeric or logical", call. = FALSE)
  if (anyNA(i)) stop("[: NA subscripts are not supported", call. = FALSE)
  i <- trunc(i)
  if (any(i < 0)) {
    if (any(i > 0)) stop("[: cannot mix positive and negative subscripts", call. = FALSE)
    return(setdiff(seq_len(n), -i) - 1L)
  }
  i <- i[i != 0]
  if (any(i > n)) {
    stop(sprintf("[: subscript %g out of bounds for axis %d of length %d", max(i), axis, n), call. = FALSE)
  }
  as.integer(i) - 1L
}

# Takes 0-based positions `p` along 0-based `axis`: a strided slice when
# they are evenly spaced, a gather otherwise.
.take_axis <- function(x, p, axis, n) {
  k <- length(p)
  if (k == n && all(p == seq_len(n) - 1L)) return(x)
  if (k >= 1L) {
    step <- if (k == 1L) 1L else p[2] - p[1]
    if (step != 0L && all(diff(p) == step)) {
      last <- p[k]
      stop <- last + step
      return(kiln_slice_axis(x, axis, p[1], if (stop < 0L) NULL else stop, step))
    }
  }
  kiln_take(x, p, axis)
}

#' Index an mlx array
#'
#' `x[i, j, ...]` with R's 1-based subscripts per axis: positive positions,
#' negative ones (to exclude), logical masks (recycled), or missing (the whole
#' axis). Evenly spaced positions become a strided view; others a gather.
#' With one subscript on an array of several dimensions, positions are R's
#' linear (column-major) ones. `drop = TRUE` (default) drops axes of length 1,
#' as R does. `x[[i]]` reads one value into R.
#'
#' @param x An mlx array.
#' @param ... Subscripts: one per axis (`x[i, j]`), or one of R's linear
#'   positions (`x[i]`).
#' @param drop Drop axes of length 1.
#' @return An mlx array (`[[` an R value).
#' @examples
#' x <- as_mlx(matrix(1:12, 3))
#' x[2, ]
#' x[-1, c(TRUE, FALSE)]
#' x[, 2:3, drop = FALSE]
#' x[[2, 2]]
#' @export
`[.mlx` <- function(x, ..., drop = TRUE) {
  subs <- as.list(sys.call())[-(1:2)]
  if (!is.null(names(subs))) subs <- subs[names(subs) != "drop"]
  d <- kiln_shape(x)
  nd <- length(d)
  if (length(subs) == 1L && nd != 1L) {
    i <- eval(subs[[1]], parent.frame())
    if (nd > 1L) x <- kiln_permute(x, rev(seq_len(nd)) - 1L)
    x <- kiln_reshape(x, -1L)
    return(.take_axis(x, .positions(i, prod(d), 1L), 0L, prod(d)))
  }
  if (length(subs) != nd) {
    stop(sprintf("[: %d subscript(s) given for an mlx array with %d dimension(s)", length(subs), nd),
         call. = FALSE)
  }
  for (k in seq_len(nd)) {
    if (identical(subs[[k]], quote(expr = ))) next
    p <- .positions(eval(subs[[k]], parent.frame()), d[k], k)
    x <- .take_axis(x, p, k - 1L, d[k])
  }
  if (isTRUE(drop)) {
    r <- kiln_shape(x)
    if (any(r == 1L) && length(r) > 1L) {
      keep <- r[r != 1L]
      x <- kiln_reshape(x, if (length(keep)) keep else 1L)
    }
  }
  x
}

#' @rdname sub-.mlx
#' @export
`[[.mlx` <- function(x, ...) {
  d <- kiln_shape(x)
  v <- kiln_to_r(x, "[[")
  if (length(d) > 1L) dim(v) <- d
  v[[...]]
}
