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
