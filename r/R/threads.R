#' Threads and memory
#'
#' `mlx_set_threads(n)` caps the threads that kiln's kernels use at `n`
#' (from the next operation on; kiln starts with one per core, or
#' `RAYON_NUM_THREADS` when that is set before the package loads; a cap
#' above that adds no thread). `mlx_release_memory()` runs R's garbage collector,
#' so that arrays no longer referenced from R are freed, then frees the
#' buffers kiln keeps for reuse (in main memory, and on a GPU in use the
#' freed blocks it keeps).
#'
#' kiln also asks R for a young-generation collection each time 256 MiB of
#' new array data has been handed to R: an mlx array is a small R object
#' holding a large buffer R cannot see, so without this R would collect too
#' rarely and dead arrays would keep their memory.
#'
#' @param n Number of threads (at least 1).
#' @return `mlx_set_threads()`: the number of threads kernels may now use,
#'   invisibly. `mlx_release_memory()`: the bytes freed from kiln's reuse
#'   pools, invisibly.
#' @examples
#' old <- mlx_set_threads(1)
#' sum(mlx_ones(1000))
#' mlx_release_memory()
#' @export
mlx_set_threads <- function(n) invisible(kiln_set_threads(n))

#' @rdname mlx_set_threads
#' @export
mlx_release_memory <- function() {
  gc(verbose = FALSE)
  invisible(kiln_release_memory())
}
