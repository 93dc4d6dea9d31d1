#' Random numbers
#'
#' Counter-based (threefry) random numbers, as in JAX and MLX. Without a
#' `key`, each draw splits a fresh key off the global key, so draws differ and
#' `mlx_seed(s)` makes the sequence repeat; with a `key` (from `mlx_key()` or
#' `mlx_key_split()`) the same key gives the same numbers, on any number of
#' threads. Inside a compiled function, draws without a key are fresh on
#' every call.
#'
#' @param dim Integer vector of dimensions.
#' @param mean,sd Mean and standard deviation of the normal distribution.
#' @param min,max Bounds of the uniform distribution, `[min, max)`.
#' @param prob Probability of `TRUE`.
#' @param low,high Bounds of the integers, `[low, high)`.
#' @param dtype A float dtype (`mlx_rand_randint()`: an integer dtype).
#' @param key A key array, or `NULL` for the global key.
#' @param seed A whole number.
#' @param num Number of keys to make.
#' @return An mlx array (`mlx_key_split()`: a list of keys; `mlx_seed()`:
#'   nothing).
#' @examples
#' mlx_seed(1)
#' x <- mlx_rand_normal(c(2, 3))
#' k <- mlx_key(42)
#' identical(as.vector(mlx_rand_uniform(3, key = k)), as.vector(mlx_rand_uniform(3, key = k)))
#' mlx_rand_bernoulli(5, 0.3)
#' mlx_rand_randint(4, 0, 10)
#' @export
mlx_rand_normal <- function(dim, mean = 0, sd = 1, dtype = "float32", key = NULL) {
  kiln_random("normal", dim, mean, sd, .check_dtype(dtype), key)
}

#' @rdname mlx_rand_normal
#' @export
mlx_rand_uniform <- function(dim, min = 0, max = 1, dtype = "float32", key = NULL) {
  kiln_random("uniform", dim, min, max, .check_dtype(dtype), key)
}

#' @rdname mlx_rand_normal
#' @export
mlx_rand_bernoulli <- function(dim, prob = 0.5, key = NULL) {
  kiln_random("bernoulli", dim, prob, 0, "bool", key)
}

#' @rdname mlx_rand_normal
#' @export
mlx_rand_randint <- function(dim, low, high, dtype = "int32", key = NULL) {
  kiln_random("randint", dim, low, high, .check_dtype(dtype), key)
}

#' @rdname mlx_rand_normal
#' @export
mlx_key <- function(seed) kiln_key(seed)

#' @rdname mlx_rand_normal
#' @export
mlx_key_split <- function(key, num = 2) kiln_key_split(key, num)

#' @rdname mlx_rand_normal
#' @export
mlx_seed <- function(seed) kiln_seed(seed)
