# The package's calls into its Rust library (src/rust/src/lib.rs), one R
# function per Rust function. Internal: users call the mlx_* API.

.onLoad <- function(libname, pkgname) .Call(wrap__kiln_on_load)

kiln_from_r <- function(data, dim, dtype) .Call(wrap__kiln_from_r, data, dim, dtype)
kiln_to_r <- function(x, what) .Call(wrap__kiln_to_r, x, what)
kiln_shape <- function(x) .Call(wrap__kiln_shape, x)
kiln_default_device <- function() .Call(wrap__kiln_default_device)
kiln_set_default_device <- function(name) .Call(wrap__kiln_set_default_device, name)
kiln_device <- function(x) .Call(wrap__kiln_device, x)
kiln_to_device <- function(x, name) .Call(wrap__kiln_to_device, x, name)
kiln_has_gpu <- function() .Call(wrap__kiln_has_gpu)
kiln_synchronize <- function(name) .Call(wrap__kiln_synchronize, name)
kiln_dtype <- function(x) .Call(wrap__kiln_dtype, x)
kiln_eval <- function(xs) invisible(.Call(wrap__kiln_eval, xs))
kiln_astype <- function(x, dtype) .Call(wrap__kiln_astype, x, dtype)
kiln_full <- function(dim, value, dtype) .Call(wrap__kiln_full, dim, value, dtype)
kiln_eye <- function(n, m, k, dtype) .Call(wrap__kiln_eye, n, m, k, dtype)
kiln_arange <- function(start, stop, step, dtype) {
  .Call(wrap__kiln_arange, as.double(start), as.double(stop), as.double(step), dtype)
}
kiln_linspace <- function(start, stop, num, dtype) {
  .Call(wrap__kiln_linspace, as.double(start), as.double(stop), num, dtype)
}
kiln_unary <- function(op, x) .Call(wrap__kiln_unary, op, x)
kiln_binary <- function(op, a, b) .Call(wrap__kiln_binary, op, a, b)
kiln_where <- function(cond, a, b) .Call(wrap__kiln_where, cond, a, b)
kiln_clip <- function(x, lo, hi) .Call(wrap__kiln_clip, x, lo, hi)
kiln_reduce <- function(op, x, axes, keepdims, ddof = 0) {
  .Call(wrap__kiln_reduce, op, x, axes, keepdims, ddof)
}
kiln_argreduce <- function(op, x, axis, keepdims) .Call(wrap__kiln_argreduce, op, x, axis, keepdims)
kiln_softmax <- function(x, axis) .Call(wrap__kiln_softmax, x, axis)
kiln_matmul <- function(a, b) .Call(wrap__kiln_matmul, a, b)
kiln_permute <- function(x, perm) .Call(wrap__kiln_permute, x, perm)
kiln_reshape <- function(x, shape) .Call(wrap__kiln_reshape, x, shape)
kiln_squeeze <- function(x, axes) .Call(wrap__kiln_squeeze, x, axes)
kiln_expand_dims <- function(x, axes) .Call(wrap__kiln_expand_dims, x, axes)
kiln_broadcast_to <- function(x, shape) .Call(wrap__kiln_broadcast_to, x, shape)
kiln_concatenate <- function(xs, axis) .Call(wrap__kiln_concatenate, xs, axis)
kiln_stack <- function(xs, axis) .Call(wrap__kiln_stack, xs, axis)
kiln_split <- function(x, sections, indices, axis) .Call(wrap__kiln_split, x, sections, indices, axis)
kiln_slice_axis <- function(x, axis, start, stop, step) {
  .Call(wrap__kiln_slice_axis, x, axis, start, stop, step)
}
kiln_take <- function(x, indices, axis) .Call(wrap__kiln_take, x, indices, axis)
kiln_key <- function(seed) .Call(wrap__kiln_key, seed)
kiln_key_split <- function(key, n) .Call(wrap__kiln_key_split, key, n)
kiln_seed <- function(seed) invisible(.Call(wrap__kiln_seed, seed))
kiln_random <- function(kind, dim, a, b, dtype, key) {
  .Call(wrap__kiln_random, kind, dim, as.double(a), as.double(b), dtype, key)
}
kiln_compile <- function(f, tracer, shapeless) .Call(wrap__kiln_compile, f, tracer, shapeless)
kiln_compile_stats <- function(handle) .Call(wrap__kiln_compile_stats, handle)
kiln_compile_explain <- function(handle, args) .Call(wrap__kiln_compile_explain, handle, args)
kiln_compile_clear <- function(handle) invisible(.Call(wrap__kiln_compile_clear, handle))
kiln_set_compile <- function(enabled) invisible(.Call(wrap__kiln_set_compile, enabled))
kiln_compile_enabled <- function() .Call(wrap__kiln_compile_enabled)
kiln_set_threads <- function(n) .Call(wrap__kiln_set_threads, n)
kiln_release_memory <- function() .Call(wrap__kiln_release_memory)
kiln_matmul_precision <- function() .Call(wrap__kiln_matmul_precision)
kiln_set_matmul_precision <- function(name) .Call(wrap__kiln_set_matmul_precision, name)
