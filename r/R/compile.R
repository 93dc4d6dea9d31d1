#' Compile a function of mlx arrays
#'
#' Returns a compiled version of `f` that traces and optimizes the
#' computation graph on its first call, then reuses the compiled graph for
#' later calls with matching inputs.
#'
#' `mlx_compile(f)` returns a function at once, without calling `f`. The
#' returned function has `f`'s formals (`args()` shows them, and arguments
#' match by name as for `f`).
#'
#' 1. **First call** with a new signature (number of arguments, and each
#'    argument's dtype, number of dimensions and, unless `shapeless`, shape):
#'    kiln calls `f` once with placeholder mlx arrays (a shape and dtype, no
#'    data), records the graph, optimizes it (drops dead and repeated work,
#'    fuses elementwise and reduction work into single kernels), caches it
#'    and runs it on the real inputs.
#' 2. **Later calls** with a known signature run the cached kernels and never
#'    call `f`.
#' 3. **Recompilation** happens when shapes change (unless `shapeless =
#'    TRUE`), when dtypes change, or when the number of arguments or
#'    dimensions changes.
#'
#' Arguments that are R numbers, vectors or matrices are converted with
#' [as_mlx()] (float32; logicals to bool) on every call; R numbers used
#' inside `f` are constants of the graph, and mlx arrays captured from
#' `f`'s environment are constants frozen at the first trace (pass values
#' that change as arguments). Random draws inside `f` without a `key` are
#' fresh on every call.
#'
#' `f` returns one mlx array or a list of mlx arrays; a list keeps its names
#' (per cache entry), and a list of length one stays a list.
#'
#' @section Requirements for compiled functions:
#' `f` must accept only mlx arrays, return mlx arrays, use only mlx
#' operations and be pure. While tracing, the arrays have no values, so
#' printing or reading them (`print()`, `as.matrix()`, `as.numeric()`,
#' `[[`) and control flow on their values (`if (x > 0)`) are errors that say
#' which argument the value depends on. Use [mlx_where()] for elementwise
#' choices, and [mlx_disable_compile()] to run `f` eagerly while debugging.
#' Errors raised by `f` come back as R errors with their message; the compiled
#' function stays usable.
#'
#' @section Shapeless compilation:
#' With `shapeless = TRUE` the compiled function keeps one graph across input
#' shape changes: each op re-infers its output shape from the new inputs;
#' dtype or dimension-count changes still recompile. An op whose shape was
#' fixed while tracing (a reshape to constant dimensions, for example) fails
#' with an error naming it when it cannot follow.
#'
#' @section Lifetime:
#' The compiled function keeps `f` (and what `f` captures) alive as long as
#' it lives, and releases it with its cache when it is garbage collected.
#'
#' @param f An R function that takes mlx arrays and returns an mlx array or a
#'   list of mlx arrays.
#' @param shapeless If `TRUE`, the compiled function won't recompile when
#'   input shapes change; dtype or dimension-count changes still recompile.
#' @return A compiled function with the same formals as `f`.
#' @seealso [mlx_compile_stats()], [mlx_compile_explain()],
#'   [mlx_disable_compile()].
#' @examples
#' matmul_add <- function(x, w, b) (x %*% w) + b
#' fast_fn <- mlx_compile(matmul_add)
#' x <- mlx_rand_normal(c(32, 128))
#' w <- mlx_rand_normal(c(128, 256))
#' b <- mlx_rand_normal(256)
#' result <- fast_fn(x, w, b) # traces and compiles
#' result <- fast_fn(x, w, b) # cached
#' mlx_compile_stats(fast_fn)$traces
#'
#' forward_and_norm <- function(x, w) {
#'   y <- x %*% w
#'   norm <- sqrt(sum(y * y))
#'   list(y, norm)
#' }
#' results <- mlx_compile(forward_and_norm)(x, w)
#' @export
mlx_compile <- function(f, shapeless = FALSE) {
  if (!is.function(f) || is.primitive(f)) stop("mlx_compile: f must be an R function", call. = FALSE)
  if (!is.logical(shapeless) || length(shapeless) != 1L || is.na(shapeless)) {
    stop("mlx_compile: shapeless must be TRUE or FALSE", call. = FALSE)
  }
  handle <- kiln_compile(f, .kiln_trace, shapeless)
  fmls <- formals(f)
  g <- function() NULL
  formals(g) <- fmls
  args <- as.call(c(as.name("list"), lapply(names(fmls), as.name)))
  body(g) <- bquote(.Call(.(kiln_call), handle, .(args)))
  env <- new.env(parent = asNamespace("kiln"))
  env$handle <- handle
  environment(g) <- env
  class(g) <- c("mlx_compiled", "function")
  g
}

#' @export
print.mlx_compiled <- function(x, ...) {
  s <- mlx_compile_stats(x)
  cat(sprintf("<mlx_compiled function: %d trace(s), %d hit(s), %d cached graph(s)>\n",
              s$traces, s$hits, s$entries))
  cat("args: ")
  print(args(x))
  invisible(x)
}

# Calls `f` on placeholder arrays for kiln's trace. Returns list(value), or
# the condition `f` signalled: R errors must not unwind through Rust.
.kiln_trace <- function(f, args) {
  tryCatch(withCallingHandlers(list(do.call(f, args)), error = .explain_value_error),
           error = function(e) e)
}

# `if (x > 0)` on a placeholder fails inside R's `if` with a message about
# logicals; find the mlx condition in the erring frame and say instead what
# kiln says for any read of a placeholder (which argument, why, what to do).
.explain_value_error <- function(e) {
  call <- conditionCall(e)
  if (!is.call(call) || !(identical(call[[1]], as.name("if")) || identical(call[[1]], as.name("while")))) {
    return(invisible(NULL))
  }
  cond <- call[[2]]
  for (k in rev(seq_len(sys.nframe() - 1L))) {
    v <- tryCatch(eval(cond, sys.frame(k)), error = function(e) NULL)
    if (is_mlx(v)) {
      msg <- tryCatch({
        kiln_to_r(v, paste0("`", as.character(call[[1]]), " (", deparse(cond)[1], ")`"))
        NULL
      }, error = conditionMessage)
      if (!is.null(msg)) stop(simpleError(msg, call))
      return(invisible(NULL))
    }
  }
  invisible(NULL)
}

.handle <- function(cf) {
  h <- if (is.function(cf)) environment(cf)$handle
  if (!inherits(cf, "mlx_compiled") || is.null(h)) stop("expected a function made by mlx_compile()", call. = FALSE)
  h
}

#' Inspect a compiled function
#'
#' `mlx_compile_stats()` counts traces (calls of `f`), cache hits and misses,
#' and the graphs cached now. `mlx_compile_explain()` shows the optimized
#' program for the given arguments (tracing it if needed, which counts as a
#' miss): each kernel, the ops it fuses, its inputs and outputs and the bytes
#' it moves, then the reason for every cache miss so far.
#'
#' @param cf A function made by [mlx_compile()].
#' @param ... Arguments as for a call of `cf`.
#' @return `mlx_compile_stats()`: a list with `traces`, `hits`, `misses` and
#'   `entries`. `mlx_compile_explain()`: the text (class `kiln_explain`,
#'   printed as is).
#' @examples
#' f <- mlx_compile(function(x) exp(x) * 2 + 1)
#' x <- mlx_ones(c(4, 4))
#' y <- f(x)
#' y <- f(x)
#' mlx_compile_stats(f)
#' mlx_compile_explain(f, x)
#' @export
mlx_compile_stats <- function(cf) as.list(kiln_compile_stats(.handle(cf)))

#' @rdname mlx_compile_stats
#' @export
mlx_compile_explain <- function(cf, ...) {
  h <- .handle(cf)
  structure(kiln_compile_explain(h, lapply(list(...), as_mlx)), class = "kiln_explain")
}

#' @export
print.kiln_explain <- function(x, ...) {
  cat(x, "\n", sep = "")
  invisible(x)
}

#' Turn compilation off and on
#'
#' `mlx_disable_compile()` makes every compiled function (including those
#' compiled before) call its R function directly, eagerly, so that values
#' can be printed and inspected; `mlx_enable_compile()` turns compilation
#' back on. Setting the environment variable `MLX_DISABLE_COMPILE` (or
#' `KILN_DISABLE_COMPILE`) to `1` or `true` before the package first
#' compiles disables it for the session.
#'
#' @return `NULL`, invisibly. `mlx_compile_enabled()` returns `TRUE` or `FALSE`.
#' @examples
#' mlx_disable_compile()
#' mlx_compile_enabled()
#' mlx_enable_compile()
#' @export
mlx_disable_compile <- function() kiln_set_compile(FALSE)

#' @rdname mlx_disable_compile
#' @export
mlx_enable_compile <- function() kiln_set_compile(TRUE)

#' @rdname mlx_disable_compile
#' @export
mlx_compile_enabled <- function() kiln_compile_enabled()
