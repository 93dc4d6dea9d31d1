#' kiln: lazy arrays with an MLX-style tracing compiler
#'
#' Arrays of class `"mlx"` with the names and semantics of Rmlx, computed by
#' kiln (a Rust library). Operations are lazy: they record a graph and run
#' when a value is read (`as.array()`, `print()`) or on [mlx_eval()].
#' [mlx_compile()] traces a function of arrays once and reruns its fused
#' kernels on later calls.
#'
#' @section Dimensions and order:
#' An R array of `dim` `c(d1, ..., dn)` becomes an array of shape
#' `c(d1, ..., dn)`: `as.matrix(as_mlx(m))` is identical to `m` (up to the
#' dtype) and `x[i, j]` is R's element. R vectors (no `dim`) become 1-d
#' arrays. Broadcasting follows NumPy's rules on these shapes, aligned at the
#' last dimension: a length-256 vector added to a 32 x 256 matrix adds to
#' every row (where base R would recycle down the columns).
#'
#' @section Where kiln differs from base R:
#' * `dim<-`, [mlx_reshape()] and [mlx_flatten()] reorder in kiln's row-major
#'   (C) element order, not R's column-major order.
#' * Broadcasting aligns trailing dimensions (NumPy), instead of recycling.
#' * The default dtype is float32 (as in Rmlx): results differ from R's
#'   doubles by float32 rounding. Pass `dtype = "float64"` for doubles.
#' * Arithmetic on integer arrays wraps on overflow instead of giving `NA`;
#'   `/` of integers gives float32; `%/%` and `%%` by zero give 0.
#' * `NA` has no place in an array: logical `NA` is an error; integer
#'   `NA` arrives as the smallest int32; double `NA` arrives as `NaN`.
#' * Reductions take 1-based `axes` and a `drop` flag; `mlx_argmax()` and
#'   `mlx_argmin()` return 1-based positions.
#' * int64 and uint32 arrays come back to R as doubles.
#' * An mlx array points to memory outside R: `saveRDS()`, `save()` or
#'   sending it to another R process keeps the object but not its data, and
#'   using the copy is an error ("no longer valid"). Save `as.array(x)`.
#'
#' @keywords internal
#' @useDynLib kiln, .registration = TRUE
"_PACKAGE"

.dtypes <- c("float32", "float64", "float16", "bfloat16", "int32", "int64", "uint8", "uint32", "bool")

.check_dtype <- function(dtype) {
  if (!is.character(dtype) || length(dtype) != 1L || !dtype %in% .dtypes) {
    stop("dtype must be one of ", paste(.dtypes, collapse = ", "), call. = FALSE)
  }
  dtype
}

.dim_of <- function(x) {
  d <- dim(x)
  if (is.null(d)) length(x) else d
}

#' Is this an mlx array?
#'
#' @param x Any R object.
#' @return `TRUE` when `x` is an array of class `"mlx"`.
#' @export
#' @examples
#' is_mlx(as_mlx(1:3))
#' is_mlx(1:3)
is_mlx <- function(x) inherits(x, "mlx")

#' Convert R data to an mlx array
#'
#' @param x A numeric, integer or logical vector, matrix or array, or an mlx
#'   array.
#' @param dtype The array's dtype: `"float32"` (default), `"float64"`,
#'   `"float16"`, `"bfloat16"`, `"int32"`, `"int64"`, `"uint8"`, `"uint32"`
#'   or `"bool"`. For an mlx array, `NULL` keeps its dtype.
#' @param device `"cpu"` or `"gpu"` (see [mlx_default_device()]): where the
#'   array goes. `NULL`: R data goes to the default device, an mlx array
#'   stays where it is.
#' @return An mlx array with `x`'s dimensions (a vector gives a 1-d array).
#' @export
#' @examples
#' m <- matrix(1:6, 2, 3)
#' x <- as_mlx(m)
#' identical(as.matrix(x), matrix(as.double(1:6), 2, 3))
#' as_mlx(c(TRUE, FALSE), dtype = "bool")
as_mlx <- function(x, dtype = NULL, device = NULL) {
  if (is_mlx(x)) {
    x <- if (is.null(dtype)) x else mlx_cast(x, dtype)
  } else {
    if (!(is.numeric(x) || is.logical(x)) || is.object(x) && !is.matrix(x) && !is.array(x)) {
      stop("as_mlx: cannot convert an object of class ", paste(class(x), collapse = "/"),
           " to an mlx array (numeric, integer or logical data only)", call. = FALSE)
    }
    x <- with_default_device("cpu", kiln_from_r(x, .dim_of(x), .check_dtype(if (is.null(dtype)) "float32" else dtype)))
    if (is.null(device)) device <- kiln_default_device()
  }
  if (is.null(device)) x else kiln_to_device(x, match.arg(device, c("cpu", "gpu")))
}

#' Create an mlx array from data and dimensions
#'
#' `mlx_array()` fills `dim` from `data` in R's column-major order, as
#' [array()] does; `mlx_matrix()` as [matrix()] does; `mlx_scalar()` makes a
#' 0-d array.
#'
#' @param data Numeric or logical values (recycled).
#' @param dim Integer vector of dimensions.
#' @param nrow,ncol,byrow As for [matrix()].
#' @param value A single number.
#' @inheritParams as_mlx
#' @return An mlx array.
#' @export
#' @examples
#' mlx_array(1:6, c(2, 3))
#' mlx_matrix(1:6, nrow = 2, byrow = TRUE)
#' mlx_scalar(3.5)
mlx_array <- function(data, dim = length(data), dtype = "float32") {
  as_mlx(array(data, dim = dim), dtype)
}

#' @rdname mlx_array
#' @export
mlx_matrix <- function(data, nrow = 1, ncol = 1, byrow = FALSE, dtype = "float32") {
  if (missing(nrow)) nrow <- length(data) / ncol
  if (missing(ncol)) ncol <- length(data) / nrow
  as_mlx(matrix(data, nrow = nrow, ncol = ncol, byrow = byrow), dtype)
}

#' @rdname mlx_array
#' @export
mlx_scalar <- function(value, dtype = "float32") {
  if (length(value) != 1L) stop("mlx_scalar: value must have length 1", call. = FALSE)
  kiln_from_r(as.vector(value), integer(0), .check_dtype(dtype))
}

#' Arrays of zeros, ones, a constant, the identity, ranges
#'
#' @param dim Integer vector of dimensions.
#' @param value The fill value (a single number).
#' @param x An mlx array whose shape (and, by default, dtype) to take.
#' @param n,m Rows and columns of the identity (`m` defaults to `n`).
#' @param k Index of the diagonal of ones (0 the main, positive above).
#' @param start,stop,step `mlx_arange()` gives `start, start + step, ...`
#'   up to but excluding `stop` (NumPy's `arange`); with one argument,
#'   `0, 1, ..., start - 1`.
#' @param num Number of evenly spaced values from `start` to `stop`,
#'   inclusive.
#' @inheritParams as_mlx
#' @return An mlx array.
#' @export
#' @examples
#' mlx_zeros(c(2, 3))
#' mlx_full(c(2, 2), 7, dtype = "int32")
#' mlx_eye(3)
#' mlx_arange(5)
#' mlx_linspace(0, 1, 5)
mlx_zeros <- function(dim, dtype = "float32") kiln_full(dim, 0, .check_dtype(dtype))

#' @rdname mlx_zeros
#' @export
mlx_ones <- function(dim, dtype = "float32") kiln_full(dim, 1, .check_dtype(dtype))

#' @rdname mlx_zeros
#' @export
mlx_full <- function(dim, value, dtype = "float32") kiln_full(dim, value, .check_dtype(dtype))

#' @rdname mlx_zeros
#' @export
mlx_zeros_like <- function(x, dtype = mlx_dtype(x)) kiln_full(kiln_shape(x), 0, .check_dtype(dtype))

#' @rdname mlx_zeros
#' @export
mlx_ones_like <- function(x, dtype = mlx_dtype(x)) kiln_full(kiln_shape(x), 1, .check_dtype(dtype))

#' @rdname mlx_zeros
#' @export
mlx_eye <- function(n, m = n, k = 0, dtype = "float32") kiln_eye(n, m, k, .check_dtype(dtype))

#' @rdname mlx_zeros
#' @export
mlx_arange <- function(start, stop = NULL, step = 1, dtype = "float32") {
  if (is.null(stop)) {
    stop <- start
    start <- 0
  }
  kiln_arange(start, stop, step, .check_dtype(dtype))
}

#' @rdname mlx_zeros
#' @export
mlx_linspace <- function(start, stop, num = 50, dtype = "float32") {
  kiln_linspace(start, stop, num, .check_dtype(dtype))
}

#' Evaluate arrays now
#'
#' Runs the pending computation of every array given, sharing the work they
#' have in common. Arrays are otherwise computed when a value is read.
#'
#' @param ... mlx arrays, or lists of them.
#' @return Its arguments, invisibly.
#' @export
#' @examples
#' x <- mlx_ones(c(2, 2)) * 3
#' mlx_eval(x)
mlx_eval <- function(...) {
  xs <- Filter(is_mlx, unlist(list(...), recursive = TRUE))
  kiln_eval(xs)
  invisible(list(...))
}

#' Shape, dtype and conversion of an mlx array
#'
#' @param x An mlx array.
#' @param dtype A dtype name (see [as_mlx()]).
#' @return `mlx_shape()`: an integer vector (empty for a 0-d array).
#'   `mlx_dtype()`: the dtype's name. `mlx_cast()`: an array of `dtype`.
#' @export
#' @examples
#' x <- mlx_zeros(c(2, 3))
#' mlx_shape(x)
#' mlx_dtype(mlx_cast(x, "float64"))
mlx_shape <- function(x) kiln_shape(x)

#' @rdname mlx_shape
#' @export
mlx_dtype <- function(x) kiln_dtype(x)

#' @rdname mlx_shape
#' @export
mlx_cast <- function(x, dtype) kiln_astype(as_mlx(x), .check_dtype(dtype))

#' Read an mlx array into R
#'
#' These methods compute the array (if pending) and copy it into an R vector,
#' matrix or array in R's column-major order. Floating dtypes, int64 and
#' uint32 give doubles; int32 and uint8 integers; bool logicals. Inside a
#' compiled function they are errors (the values do not exist yet).
#'
#' @param x An mlx array.
#' @param mode As for [as.vector()].
#' @param ... Ignored.
#' @return An R vector, matrix or array.
#' @name mlx-conversion
#' @examples
#' x <- as_mlx(matrix(1:4, 2))
#' as.matrix(x)
#' as.vector(x)
#' as.integer(x)
NULL

#' @rdname mlx-conversion
#' @export
as.array.mlx <- function(x, ...) {
  v <- kiln_to_r(x, "as.array")
  d <- kiln_shape(x)
  dim(v) <- if (length(d) == 0L) 1L else d
  v
}

#' @rdname mlx-conversion
#' @export
as.matrix.mlx <- function(x, ...) {
  d <- kiln_shape(x)
  if (length(d) > 2L) {
    stop("as.matrix: an mlx array with ", length(d), " dimensions is not a matrix; use as.array()",
         call. = FALSE)
  }
  v <- kiln_to_r(x, "as.matrix")
  dim(v) <- if (length(d) == 2L) d else c(length(v), 1L)
  v
}

#' @rdname mlx-conversion
#' @export
as.vector.mlx <- function(x, mode = "any") as.vector(kiln_to_r(x, "as.vector"), mode)

#' @rdname mlx-conversion
#' @export
as.double.mlx <- function(x, ...) as.double(kiln_to_r(x, "as.numeric"))

#' @rdname mlx-conversion
#' @export
as.numeric.mlx <- as.double.mlx

#' @rdname mlx-conversion
#' @export
as.integer.mlx <- function(x, ...) as.integer(kiln_to_r(x, "as.integer"))

#' @rdname mlx-conversion
#' @export
as.logical.mlx <- function(x, ...) as.logical(kiln_to_r(x, "as.logical"))

#' Print, format and describe an mlx array
#'
#' `print()` shows the shape and dtype, then the values as R prints the
#' equivalent array; `format()` gives the values as strings; `str()` one line.
#'
#' @param x,object An mlx array.
#' @param ... Passed to R's own methods.
#' @return `print()` returns `x` invisibly; `format()` a character array.
#' @name mlx-print
#' @examples
#' x <- mlx_eye(2)
#' print(x)
#' format(x)
#' str(x)
#' length(x)
#' dim(x)
NULL

.header <- function(x) {
  d <- kiln_shape(x)
  sprintf("mlx array [%s] %s", if (length(d)) paste(d, collapse = " x ") else "scalar", kiln_dtype(x))
}

#' @rdname mlx-print
#' @export
print.mlx <- function(x, ...) {
  v <- kiln_to_r(x, "print")
  d <- kiln_shape(x)
  cat(.header(x), "\n", sep = "")
  if (length(d) >= 2L) dim(v) <- d
  print(v, ...)
  invisible(x)
}

#' @rdname mlx-print
#' @export
format.mlx <- function(x, ...) {
  v <- kiln_to_r(x, "format")
  d <- kiln_shape(x)
  if (length(d) >= 2L) dim(v) <- d
  format(v, ...)
}

#' @rdname mlx-print
#' @export
str.mlx <- function(object, ...) {
  cat(" ", .header(object), "\n", sep = "")
  invisible(NULL)
}

#' @rdname mlx-print
#' @export
length.mlx <- function(x) as.integer(prod(kiln_shape(x)))

#' @rdname mlx-print
#' @export
dim.mlx <- function(x) {
  d <- kiln_shape(x)
  if (length(d) == 0L) NULL else d
}
