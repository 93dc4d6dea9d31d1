.binary_ops <- c(
  "+" = "add", "-" = "sub", "*" = "mul", "/" = "div", "^" = "pow",
  "%%" = "remainder", "%/%" = "floor_divide",
  "==" = "equal", "!=" = "not_equal", "<" = "less", "<=" = "less_equal",
  ">" = "greater", ">=" = "greater_equal", "&" = "logical_and", "|" = "logical_or"
)

# The other operand of a binary op as kiln takes it: mlx arrays as they are,
# single R numbers as weakly typed scalars (an f16 array times 2 stays f16),
# R vectors and arrays converted (doubles to the mlx operand's float dtype,
# else float32; integers to int32; logicals to bool).
.operand <- function(x, other) {
  if (is_mlx(x)) return(x)
  if ((is.numeric(x) || is.logical(x)) && length(x) == 1L && is.null(dim(x))) return(x)
  dtype <- if (is.logical(x)) {
    "bool"
  } else if (is.integer(x)) {
    "int32"
  } else if (is_mlx(other) && kiln_dtype(other) %in% c("float16", "bfloat16", "float64")) {
    kiln_dtype(other)
  } else {
    "float32"
  }
  as_mlx(x, dtype)
}

#' Arithmetic, comparison and logic on mlx arrays
#'
#' The Ops group: `+ - * / ^ %% %/%`, `== != < <= > >=`, `& | !` and unary
#' minus, elementwise with NumPy broadcasting. Either side may be an R number
#' (a weakly typed scalar: `x * 2` keeps `x`'s dtype) or an R vector, matrix
#' or array (converted with [as_mlx()]). `%/%` and `%%` follow R (and
#' Python): the remainder takes the divisor's sign.
#'
#' @param e1,e2 mlx arrays or R numbers, vectors, matrices, arrays.
#' @return An mlx array.
#' @examples
#' x <- as_mlx(matrix(1:6, 2))
#' x * 2 + 1
#' x > 3
#' -x
#' 1 / x
#' @export
Ops.mlx <- function(e1, e2) {
  if (missing(e2)) {
    return(switch(.Generic,
      "-" = kiln_unary("neg", e1),
      "+" = e1,
      "!" = kiln_unary("logical_not", e1),
      stop("unary ", .Generic, " is not defined for mlx arrays", call. = FALSE)
    ))
  }
  op <- .binary_ops[.Generic]
  if (is.na(op)) stop(.Generic, " is not defined for mlx arrays", call. = FALSE)
  kiln_binary(op, .operand(e1, e2), .operand(e2, e1))
}

.math_ops <- c(
  abs = "abs", sqrt = "sqrt", exp = "exp", expm1 = "expm1", log1p = "log1p",
  log2 = "log2", log10 = "log10", sin = "sin", cos = "cos", tan = "tan",
  tanh = "tanh", floor = "floor", ceiling = "ceil", sign = "sign"
)

#' Elementwise math on mlx arrays
#'
#' The Math group: `abs sqrt exp expm1 log log1p log2 log10 sin cos tan tanh
#' floor ceiling round sign`. `log(x, base)` divides by `log(base)`;
#' `round(x, digits)` rounds half to even, as R does.
#'
#' @param x An mlx array.
#' @param ... `base` for `log()`, `digits` for `round()`.
#' @return An mlx array.
#' @examples
#' x <- as_mlx(c(1, 4, 9))
#' sqrt(x)
#' log(x, 3)
#' round(as_mlx(c(0.5, 1.5, 2.25)), 1)
#' @export
Math.mlx <- function(x, ...) {
  g <- .Generic
  if (g == "log") {
    args <- list(...)
    y <- kiln_unary("log", x)
    return(if (length(args)) y / log(args[[1]]) else y)
  }
  if (g == "round") {
    args <- list(...)
    digits <- if (length(args)) args[[1]] else 0
    if (digits == 0) return(kiln_unary("round", x))
    s <- 10^digits
    return(kiln_unary("round", x * s) / s)
  }
  op <- .math_ops[g]
  if (is.na(op)) stop(g, " is not supported for mlx arrays", call. = FALSE)
  kiln_unary(op, x)
}

#' More elementwise functions
#'
#' `mlx_sigmoid(x)` is `1 / (1 + exp(-x))`; `mlx_erf()` the error function;
#' `mlx_maximum()`, `mlx_minimum()` elementwise extrema with broadcasting;
#' `mlx_clip()` limits to `[min, max]` (either may be `NULL`);
#' `mlx_where(cond, x, y)` takes `x` where `cond` is true, else `y`.
#' `is.nan()`, `is.finite()`, `is.infinite()` give bool arrays.
#'
#' @param x,y,a,b mlx arrays or R numbers.
#' @param cond A bool mlx array (or R logicals).
#' @param min,max Bounds (numbers or arrays), or `NULL` for none.
#' @return An mlx array.
#' @examples
#' x <- as_mlx(c(-2, 0, 2))
#' mlx_sigmoid(x)
#' mlx_clip(x, -1, 1)
#' mlx_where(x > 0, x, 0)
#' is.finite(x / 0)
#' @export
mlx_sigmoid <- function(x) kiln_unary("sigmoid", as_mlx(x))

#' @rdname mlx_sigmoid
#' @export
mlx_erf <- function(x) kiln_unary("erf", as_mlx(x))

#' @rdname mlx_sigmoid
#' @export
mlx_maximum <- function(a, b) kiln_binary("maximum", .operand(a, b), .operand(b, a))

#' @rdname mlx_sigmoid
#' @export
mlx_minimum <- function(a, b) kiln_binary("minimum", .operand(a, b), .operand(b, a))

#' @rdname mlx_sigmoid
#' @export
mlx_clip <- function(x, min = NULL, max = NULL) {
  x <- as_mlx(x)
  kiln_clip(x, if (is.null(min)) NULL else .operand(min, x), if (is.null(max)) NULL else .operand(max, x))
}

#' @rdname mlx_sigmoid
#' @export
mlx_where <- function(cond, x, y) {
  other <- if (is_mlx(x)) x else y
  cond <- if (is_mlx(cond)) cond else as_mlx(as.logical(cond), "bool")
  kiln_where(cond, .operand(x, other), .operand(y, other))
}

#' @rdname mlx_sigmoid
#' @export
is.nan.mlx <- function(x) kiln_unary("isnan", x)

#' @rdname mlx_sigmoid
#' @export
is.finite.mlx <- function(x) kiln_unary("isfinite", x)

#' @rdname mlx_sigmoid
#' @export
is.infinite.mlx <- function(x) kiln_unary("isinf", x)
