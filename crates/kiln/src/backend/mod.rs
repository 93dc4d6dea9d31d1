//! Backends: where primitives run. This module is the one place outside a
//! backend that names it: the crate's process-wide settings reach the CPU
//! backend through the functions here.

pub mod cpu;

pub use cpu::pool::{memory_limit, set_memory_limit};
pub use cpu::team::{set_threads, threads};

/// Frees the memory kiln keeps for reuse (large buffers of arrays that were
/// dropped, and the C allocator's free heap); returns the bytes of buffers
/// freed. Live arrays are not touched.
pub fn release_memory() -> usize {
    cpu::pool::release()
}

/// For hosts that free arrays in batches (a garbage-collected language such
/// as R): asks the C allocator to keep up to `bytes` of freed memory for the
/// next outputs instead of returning it to the OS, where every new output
/// would fault in fresh pages. [`release_memory`] gives it back.
pub fn retain_freed_memory(bytes: usize) {
    cpu::pool::retain_freed_memory(bytes)
}
