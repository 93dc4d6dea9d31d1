//! Strided reads and parallel output filling: [`gather`] copies a strided
//! view into row-major order; [`fill`] writes an output on the calling
//! thread for small arrays and in coarse parallel chunks otherwise.

use crate::host_vec::HostVec;
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
) -> Result<HostVec<U>> {
    // Pooled when large (fresh large buffers ask for huge pages).
    let mut out: HostVec<U> = crate::memory::take_vec(op, n)?;
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
pub fn gather<T: Element>(op: &'static str, src: &[T], layout: &Layout) -> Result<HostVec<T>> {
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

/// `dst[i] = src[at + i * step]` for every `i < dst.len()`, any step: a
/// broadcast (`step == 0`) fills, a reversed run is read forwards and
/// reversed in `dst` (element by element through negative strides, a
/// flipped row read at a third of a forward copy's speed).
pub fn copy_strided<T: Copy>(src: &[T], at: usize, step: isize, dst: &mut [T]) {
    let Some(last) = dst.len().checked_sub(1) else { return };
    match step {
        0 => dst.fill(src[at]),
        1.. => copy_every(src, at, step as usize, dst),
        -1 => {
            for (d, v) in dst.iter_mut().zip(src[at - last..=at].iter().rev()) {
                *d = *v;
            }
        }
        _ => {
            let m = step.unsigned_abs();
            copy_every(src, at - last * m, m, dst);
            dst.reverse();
        }
    }
}

/// Most steps [`copy_every`] reads as whole vectors combined by permutes.
#[cfg(target_arch = "x86_64")]
const PERMUTED_STEPS: usize = 8;

/// `dst[i] = src[at + i * step]` for every `i < dst.len()` (`step > 0`):
/// the run is bounds-checked once, and 4-byte elements are read 16 at a
/// time where the CPU has AVX-512: steps up to 8 as `step` whole vectors
/// picked from by permutes, longer steps by vector gathers (with gathers,
/// `x[:, ::2] * 2` took 2.3x as long as `x * 2`, which writes twice as much).
pub fn copy_every<T: Copy>(src: &[T], at: usize, step: usize, dst: &mut [T]) {
    let Some(last) = dst.len().checked_sub(1) else { return };
    let run = &src[at..=at + last * step];
    if step == 1 {
        dst.copy_from_slice(run);
        return;
    }
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    {
        use crate::backend::cpu::simd_math::{detected_level, Level};
        if std::mem::size_of::<T>() == 4 && detected_level() == Level::Avx512 {
            if step <= PERMUTED_STEPS {
                // Whole vectors: group `k` reads `run[16 step k..16 step (k + 1)]`.
                let groups = (dst.len() / 16).min(run.len() / (16 * step));
                done = groups * 16;
                // SAFETY: AVX-512F was detected; group `k` reads `16 step`
                // elements from `16 step k`, within `run` as `groups * 16
                // step <= run.len()`, and writes `dst[16 k..16 k + 16]`,
                // within `done <= dst.len()`; `T` is 4 bytes, moved as such.
                unsafe { x86::permuted4(run.as_ptr().cast(), step, dst.as_mut_ptr().cast(), groups) };
            } else if 15 * step <= i32::MAX as usize {
                // (Gather indices are i32: the run's reach must fit.)
                done = dst.len() / 16 * 16;
                // SAFETY: AVX-512F was detected; gather `k` reads `run` at
                // `(16 k + j) * step` for `j < 16`, at most `last * step` (in
                // bounds), and writes `dst[16 k..16 k + 16]` with `16 k + 16
                // <= done <= dst.len()`; `T` is 4 bytes, read and written as
                // such without interpreting the bits.
                unsafe { x86::gather4(run.as_ptr().cast(), step, dst.as_mut_ptr().cast(), done / 16) };
            }
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
    /// `groups` vectors of 16 4-byte elements, `step` in `2..=8`: element
    /// `j` of vector `k` is read at `src + (16 k + j) * step` and written at
    /// `dst + 16 k + j`. Each group loads its `step` whole vectors and picks
    /// from them with two-source permutes: the first two, then each further
    /// vector into the elements it holds.
    ///
    /// # Safety
    /// AVX-512F is available; `src + 16 step k .. src + 16 step (k + 1)`
    /// is readable and `dst + 16 k .. dst + 16 k + 16` writable for every
    /// `k < groups`.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn permuted4(src: *const i32, step: usize, dst: *mut i32, groups: usize) {
        debug_assert!((2..=super::PERMUTED_STEPS).contains(&step));
        // Index vectors: `first` picks from vectors 0 and 1 the elements
        // they hold; `idx[m]` keeps the elements already picked (lanes
        // 0..16 of the first source) and takes those of vector `m` (lanes
        // 16..32, the second source).
        let mut first = [0i32; 16];
        let mut idx = [[0i32; 16]; super::PERMUTED_STEPS];
        for j in 0..16 {
            let e = j * step;
            if e < 32 {
                first[j] = e as i32;
            }
            for (m, ix) in idx.iter_mut().enumerate().take(step).skip(2) {
                ix[j] = if e / 16 == m { (16 + e % 16) as i32 } else { j as i32 };
            }
        }
        // SAFETY: reading 16 `i32`s from arrays of 16.
        let first = unsafe { _mm512_loadu_si512(first.as_ptr().cast()) };
        let mut ixs = [_mm512_setzero_si512(); super::PERMUTED_STEPS];
        for (v, ix) in ixs.iter_mut().zip(&idx) {
            // SAFETY: as above.
            *v = unsafe { _mm512_loadu_si512(ix.as_ptr().cast()) };
        }
        for k in 0..groups {
            // SAFETY: the caller's contract covers each group's `step`
            // vector reads and its one vector write.
            unsafe {
                let at = src.add(16 * step * k);
                let mut v = _mm512_permutex2var_epi32(
                    _mm512_loadu_si512(at.cast()),
                    first,
                    _mm512_loadu_si512(at.add(16).cast()),
                );
                for (m, ix) in ixs.iter().enumerate().take(step).skip(2) {
                    v = _mm512_permutex2var_epi32(v, *ix, _mm512_loadu_si512(at.add(16 * m).cast()));
                }
                _mm512_storeu_si512(dst.add(16 * k).cast(), v);
            }
        }
    }

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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every step from -10 to 10 over lengths around the 16-element
    /// vectors, 4-byte (the permuted and gathered paths) and 8-byte
    /// elements, from the start and from an offset, against indexing; runs
    /// that end exactly at the source's end keep the vector reads inside it.
    #[test]
    fn copy_strided_matches_indexing_for_every_step() {
        for step in -10isize..=10 {
            for len in [0usize, 1, 15, 16, 17, 31, 32, 33, 100, 161] {
                let reach = len.saturating_sub(1) * step.unsigned_abs();
                for lead in [0usize, 3] {
                    let n = lead + reach + 1;
                    let src: Vec<i32> = (0..n as i32).map(|i| i * 7 - 3).collect();
                    let wide: Vec<f64> = src.iter().map(|&v| v as f64 + 0.5).collect();
                    let at = if step < 0 { n - 1 } else { lead };
                    let want: Vec<i32> = (0..len).map(|i| src[(at as isize + i as isize * step) as usize]).collect();
                    let mut got = vec![0i32; len];
                    copy_strided(&src, at, step, &mut got);
                    assert_eq!(got, want, "i32 step {step} len {len} lead {lead}");
                    let mut got = vec![0f64; len];
                    copy_strided(&wide, at, step, &mut got);
                    let want: Vec<f64> = want.iter().map(|&v| v as f64 + 0.5).collect();
                    assert_eq!(got, want, "f64 step {step} len {len} lead {lead}");
                }
            }
        }
    }
}
