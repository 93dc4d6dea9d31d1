//! Streaming (non-temporal) stores for large outputs.
//!
//! A kernel that writes an output much larger than the caches gains nothing
//! from leaving it in cache, and an ordinary store first reads each cache
//! line it writes (a read for ownership), so a copy-like kernel moves three
//! bytes for every two it needs. Streaming stores write whole lines straight
//! to memory. The fused executor stores its output tiles through [`copy`]
//! when the destination is at least [`stream_min_bytes`], and calls
//! [`fence`] before its task ends so the lines are visible to the threads
//! that read them next.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::LazyLock;

use crate::backend::cpu::simd_math::{detected_level, Level};

/// Outputs of at least this many bytes are written with streaming stores
/// (see [`stream_min_bytes`]).
pub const STREAM_MIN_BYTES: usize = 4 << 20;

/// The smallest output written with streaming stores: [`STREAM_MIN_BYTES`],
/// larger than a core's L2, so the next kernel would read it from memory
/// anyway; the environment variable `KILN_STREAM_MIN_BYTES` (bytes, read
/// once) overrides it, for measurements.
///
/// Not the last-level cache's size, though an output that fits there could
/// stay in it for the next call. Measured with ordinary stores below that
/// size: on an AMD EPYC (32 MiB L3) layernorm over (1024, 1024) and
/// (4096, 1024) was 1.2-1.4x slower; on an Intel Xeon (300 MiB L3)
/// softmax, layernorm and rmsnorm over 4096x4096 were 1.1-1.3x slower
/// (these two-pass rows write their output while their next rows stream
/// in), while layernorm over (1024, 1024) and gelu_erf over 2^24 were
/// 1.1-1.2x faster. No cache-derived size served both machines.
pub fn stream_min_bytes() -> usize {
    MIN_BYTES.load(Ordering::Relaxed)
}

static MIN_BYTES: LazyLock<AtomicUsize> = LazyLock::new(|| {
    AtomicUsize::new(
        std::env::var("KILN_STREAM_MIN_BYTES").ok().and_then(|v| v.trim().parse().ok()).unwrap_or(STREAM_MIN_BYTES),
    )
});

/// Sets [`stream_min_bytes`] for the rest of the process (`usize::MAX`:
/// never stream): for measurements, which alternate settings in one run.
pub fn set_stream_min_bytes(bytes: usize) {
    MIN_BYTES.store(bytes, Ordering::Relaxed);
}

/// Copies `bytes` bytes from `src` to `dst` with streaming stores where the
/// CPU has them (the unaligned head and tail with ordinary stores).
///
/// # Safety
/// `src` must be valid for reading and `dst` for writing `bytes` bytes, and
/// the two ranges must not overlap.
pub unsafe fn copy(dst: *mut u8, src: *const u8, bytes: usize) {
    match detected_level() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX-512F; the caller's contract covers the ranges.
        Level::Avx512 => unsafe { x86::copy512(dst, src, bytes) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX2; the caller's contract covers the ranges.
        Level::Avx2 => unsafe { x86::copy256(dst, src, bytes) },
        // SAFETY: the caller's contract.
        _ => unsafe { std::ptr::copy_nonoverlapping(src, dst, bytes) },
    }
}

/// Orders this thread's streaming stores before its later stores (and so
/// before the synchronization that hands the output to another thread).
pub fn fence() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: SFENCE is part of SSE, which every x86-64 CPU has.
    unsafe {
        std::arch::x86_64::_mm_sfence()
    }
}

/// Asks the CPU to start loading elements `range` of `buf` into cache (the
/// next tile of an input read in place from memory, while this tile is
/// computed: a kernel with long per-element work, such as `tanh`, keeps
/// too few loads in flight to stream from memory on its own).
pub fn prefetch(buf: &crate::buffer::Buffer, range: std::ops::Range<usize>) {
    #[cfg(target_arch = "x86_64")]
    crate::with_buffer!(buf, v => {
        let (lo, hi) = (range.start.min(v.len()), range.end.min(v.len()));
        let bytes = std::mem::size_of_val(&v[lo..hi]);
        let base = v[lo..hi].as_ptr().cast::<i8>();
        for b in (0..bytes).step_by(64) {
            // SAFETY: PREFETCHT0 is part of SSE (every x86-64 CPU); the
            // address is inside `v`, and a prefetch is only a hint.
            unsafe { std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(base.add(b)) };
        }
    });
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (buf, range);
}

/// Asks the CPU to start loading the cache line `bytes` past `at`. Only a
/// hint: the address is never dereferenced, so it may lie past the end of
/// the allocation `at` points into.
#[inline(always)]
pub fn prefetch_ahead(at: *const u8, bytes: usize) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: PREFETCHT0 is part of SSE (every x86-64 CPU) and never faults,
    // whatever the address; `wrapping_add` computes it without a claim that
    // it is in bounds.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(at.wrapping_add(bytes).cast())
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (at, bytes);
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// Bytes to copy with ordinary stores before `dst` reaches alignment `a`.
    fn head(dst: *mut u8, bytes: usize, a: usize) -> usize {
        ((a - dst as usize % a) % a).min(bytes)
    }

    /// Copies with ordinary stores up to `w`-byte alignment of `dst`, then
    /// `w` bytes at a time with `line(dst + i, src + i)`, then the tail.
    ///
    /// # Safety
    /// As [`super::copy`]; `line` must write exactly `w` bytes at an aligned `dst`.
    #[inline(always)]
    unsafe fn copy_lines(dst: *mut u8, src: *const u8, bytes: usize, w: usize, line: impl Fn(*mut u8, *const u8)) {
        let h = head(dst, bytes, w);
        // SAFETY: `h <= bytes`, inside both ranges, which do not overlap.
        unsafe { std::ptr::copy_nonoverlapping(src, dst, h) };
        let mut i = h;
        while i + w <= bytes {
            // SAFETY: `i + w <= bytes`, and `dst + i` is `w`-aligned (past the head).
            line(unsafe { dst.add(i) }, unsafe { src.add(i) });
            i += w;
        }
        // SAFETY: the tail `i..bytes` is inside both ranges.
        unsafe { std::ptr::copy_nonoverlapping(src.add(i), dst.add(i), bytes - i) };
    }

    /// # Safety
    /// AVX-512F is available; the ranges are as in [`super::copy`].
    #[target_feature(enable = "avx512f")]
    pub unsafe fn copy512(dst: *mut u8, src: *const u8, bytes: usize) {
        // SAFETY: each line is 64 bytes inside the ranges, `d` 64-byte
        // aligned as the streaming store requires; the load is unaligned.
        unsafe { copy_lines(dst, src, bytes, 64, |d, s| _mm512_stream_si512(d.cast(), _mm512_loadu_si512(s.cast()))) }
    }

    /// # Safety
    /// AVX2 is available; the ranges are as in [`super::copy`].
    #[target_feature(enable = "avx2")]
    pub unsafe fn copy256(dst: *mut u8, src: *const u8, bytes: usize) {
        // SAFETY: each line is 32 bytes inside the ranges, `d` 32-byte
        // aligned as the streaming store requires; the load is unaligned.
        unsafe { copy_lines(dst, src, bytes, 32, |d, s| _mm256_stream_si256(d.cast(), _mm256_loadu_si256(s.cast()))) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_every_byte_at_any_alignment_and_length() {
        let src: Vec<u8> = (0..1000u32).map(|i| (i * 7 + 3) as u8).collect();
        for off in [0usize, 1, 3, 16, 31, 33, 63] {
            for len in [0usize, 1, 15, 31, 32, 63, 64, 65, 127, 300, 900] {
                let mut dst = vec![0xAAu8; 1000 + 64];
                // SAFETY: `off + len <= 1000 + 64` and `len <= src.len()`; distinct vectors.
                unsafe { copy(dst.as_mut_ptr().add(off), src.as_ptr(), len) };
                fence();
                assert_eq!(&dst[off..off + len], &src[..len], "offset {off}, length {len}");
                assert!(dst[..off].iter().all(|&b| b == 0xAA), "offset {off}, length {len}: wrote before");
                assert!(dst[off + len..].iter().all(|&b| b == 0xAA), "offset {off}, length {len}: wrote after");
            }
        }
    }
}
