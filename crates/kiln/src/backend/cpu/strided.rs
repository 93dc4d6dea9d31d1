//! Strided reads and parallel output filling: [`gather`] copies a strided
//! view into row-major order; [`fill`] writes an output on the calling
//! thread for small arrays and in coarse parallel chunks otherwise.

use std::mem::MaybeUninit;

use crate::dtype::Element;
use crate::error::Result;
use crate::layout::{collapse, for_each_block, Layout};

/// Below this many output elements, kernels stay on the calling thread.
pub const PAR_THRESHOLD: usize = 1 << 15;
/// Elements per parallel task.
pub const PAR_CHUNK: usize = 1 << 14;

/// Allocates `n` outputs and lets `fill(start, chunk)` write every element
/// of each chunk (`chunk[i]` is output `start + i`), in parallel above the
/// threshold. An allocation that fails is an `OutOfMemory` error naming `op`.
pub fn fill<U: Element>(
    op: &'static str,
    n: usize,
    fill: impl Fn(usize, &mut [MaybeUninit<U>]) + Sync,
) -> Result<Vec<U>> {
    // Pooled when large (fresh large buffers ask for huge pages).
    let mut out: Vec<U> = crate::memory::take_vec(op, n)?;
    let spare = &mut out.spare_capacity_mut()[..n];
    if n < PAR_THRESHOLD {
        fill(0, spare);
    } else {
        crate::backend::cpu::team::chunks(spare, PAR_CHUNK, fill);
    }
    // SAFETY: `fill` wrote every element of every chunk, and the chunks
    // cover `0..n` of the spare capacity, so the first `n` are initialized.
    unsafe { out.set_len(n) };
    Ok(out)
}

/// The elements of a strided layout in row-major order, in a vector
/// allocated for `op` (an `OutOfMemory` error when that fails). The layout
/// must fit `src` ([`Layout::fits`]).
pub fn gather<T: Element>(op: &'static str, src: &[T], layout: &Layout) -> Result<Vec<T>> {
    debug_assert!(layout.fits(src.len()), "gather: the layout reaches outside its buffer");
    if let Some(r) = layout.contiguous_range() {
        let mut out = crate::memory::take_vec(op, r.len())?;
        out.extend_from_slice(&src[r]);
        return Ok(out);
    }
    // Read across its layout (a transpose): in blocks.
    if let Some(out) = crate::backend::cpu::blocked::copy(op, src, layout) {
        return out;
    }
    let (shape, st) = collapse(&layout.shape, &[&layout.strides]);
    let s = st[0].last().copied().unwrap_or(0);
    let n = layout.numel();
    fill(op, n, |start, out| {
        for_each_block(&shape, [&st[0]], [layout.offset], start..start + out.len(), |pos, o, cnt| {
            let dst = &mut out[pos - start..pos - start + cnt];
            if s == 1 {
                for (d, v) in dst.iter_mut().zip(&src[o[0] as usize..o[0] as usize + cnt]) {
                    d.write(*v);
                }
            } else {
                for (i, d) in dst.iter_mut().enumerate() {
                    d.write(src[(o[0] + i as isize * s) as usize]);
                }
            }
        })
    })
}

/// `dst[i] = src[at + i * step]` for every `i < dst.len()` (`step > 0`):
/// the run is bounds-checked once, and 4-byte elements are read 16 at a
/// time with vector gathers where the CPU has AVX-512.
pub fn copy_every<T: Copy>(src: &[T], at: usize, step: usize, dst: &mut [T]) {
    let Some(last) = dst.len().checked_sub(1) else { return };
    let run = &src[at..=at + last * step];
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    {
        use crate::backend::cpu::simd_math::{detected_level, Level};
        // (Gather indices are i32: the run's reach must fit.)
        if std::mem::size_of::<T>() == 4 && detected_level() == Level::Avx512 && 15 * step <= i32::MAX as usize {
            done = dst.len() / 16 * 16;
            // SAFETY: AVX-512F was detected; gather `k` reads `run` at
            // `(16 k + j) * step` for `j < 16`, at most `last * step` (in
            // bounds), and writes `dst[16 k..16 k + 16]` with `16 k + 16
            // <= done <= dst.len()`; `T` is 4 bytes, read and written as
            // such without interpreting the bits.
            unsafe { x86::gather4(run.as_ptr().cast(), step, dst.as_mut_ptr().cast(), done / 16) };
        }
    }
    for (i, d) in dst.iter_mut().enumerate().skip(done) {
        *d = run[i * step];
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// `groups` vectors of 16 4-byte elements: element `j` of vector `k` is
    /// read at `src + (16 k + j) * step` and written at `dst + 16 k + j`.
    ///
    /// # Safety
    /// AVX-512F is available; every address read and written is valid, and
    /// `15 * step` fits an `i32`.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn gather4(src: *const i32, step: usize, dst: *mut i32, groups: usize) {
        let s = step as i32;
        let idx = _mm512_mullo_epi32(
            _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
            _mm512_set1_epi32(s),
        );
        for k in 0..groups {
            // SAFETY: the caller's contract covers each group's reads and writes.
            unsafe {
                let v = _mm512_i32gather_epi32::<4>(idx, src.add(16 * k * step));
                _mm512_storeu_si512(dst.add(16 * k).cast(), v);
            }
        }
    }
}
