//! Elementwise maps over strided operands, the one place where kernels meet
//! layouts. Operands are broadcast to the output shape as views, dimensions
//! are collapsed, and the output is written in row-major order, on the
//! calling thread for small arrays and in coarse parallel chunks otherwise.

use std::mem::MaybeUninit;

use rayon::prelude::*;

use crate::array::Data;
use crate::dtype::Element;
use crate::layout::{collapse, for_each_block, Layout};

/// Below this many output elements, kernels stay on the calling thread.
pub const PAR_THRESHOLD: usize = 1 << 15;
/// Elements per parallel task.
pub const PAR_CHUNK: usize = 1 << 14;

/// Allocates `n` outputs and lets `fill(start, chunk)` write every element
/// of each chunk (`chunk[i]` is output `start + i`), in parallel above the
/// threshold.
pub fn fill<U: Send>(n: usize, fill: impl Fn(usize, &mut [MaybeUninit<U>]) + Sync) -> Vec<U> {
    let mut out: Vec<U> = Vec::with_capacity(n);
    let spare = &mut out.spare_capacity_mut()[..n];
    if n < PAR_THRESHOLD {
        fill(0, spare);
    } else {
        spare.par_chunks_mut(PAR_CHUNK).enumerate().for_each(|(i, c)| fill(i * PAR_CHUNK, c));
    }
    // SAFETY: `fill` wrote every element of every chunk, and the chunks
    // cover `0..n` of the spare capacity, so the first `n` are initialized.
    unsafe { out.set_len(n) };
    out
}

fn view_of(d: &Data, shape: &[usize]) -> Layout {
    if d.layout.shape == shape {
        d.layout.clone()
    } else {
        d.layout.broadcast_to(shape)
    }
}

fn slice_of<T: Element>(d: &Data) -> &[T] {
    d.buffer.as_slice::<T>().expect("kernel called with the dtype the primitive inferred")
}

/// The elements of a strided layout in row-major order.
pub fn gather<T: Element>(src: &[T], layout: &Layout) -> Vec<T> {
    let (shape, st) = collapse(&layout.shape, &[&layout.strides]);
    let s = st[0].last().copied().unwrap_or(0);
    let n = layout.numel();
    fill(n, |start, out| {
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

/// `f` applied to each element of `x` (broadcast to `shape`).
pub fn map1<T: Element, U: Element>(x: &Data, shape: &[usize], f: impl Fn(T) -> U + Sync) -> Vec<U> {
    let src = slice_of::<T>(x);
    let l = view_of(x, shape);
    let n = l.numel();
    if let Some(r) = l.contiguous_range() {
        let src = &src[r];
        return fill(n, |start, out| {
            let end = start + out.len();
            for (d, v) in out.iter_mut().zip(&src[start..end]) {
                d.write(f(*v));
            }
        });
    }
    let (cs, st) = collapse(&l.shape, &[&l.strides]);
    let s = st[0].last().copied().unwrap_or(0);
    fill(n, |start, out| {
        for_each_block(&cs, [&st[0]], [l.offset], start..start + out.len(), |pos, o, cnt| {
            for (i, d) in out[pos - start..pos - start + cnt].iter_mut().enumerate() {
                d.write(f(src[(o[0] + i as isize * s) as usize]));
            }
        })
    })
}

/// `f` applied pairwise to `a` and `b`, both broadcast to `shape`.
pub fn map2<A: Element, B: Element, U: Element>(
    a: &Data,
    b: &Data,
    shape: &[usize],
    f: impl Fn(A, B) -> U + Sync,
) -> Vec<U> {
    let (sa, sb) = (slice_of::<A>(a), slice_of::<B>(b));
    let (la, lb) = (view_of(a, shape), view_of(b, shape));
    let n = la.numel();
    if let (Some(ra), Some(rb)) = (la.contiguous_range(), lb.contiguous_range()) {
        let (sa, sb) = (&sa[ra], &sb[rb]);
        return fill(n, |start, out| {
            let end = start + out.len();
            for ((d, x), y) in out.iter_mut().zip(&sa[start..end]).zip(&sb[start..end]) {
                d.write(f(*x, *y));
            }
        });
    }
    let (cs, st) = collapse(shape, &[&la.strides, &lb.strides]);
    let (ia, ib) = (st[0].last().copied().unwrap_or(0), st[1].last().copied().unwrap_or(0));
    fill(n, |start, out| {
        for_each_block(&cs, [&st[0], &st[1]], [la.offset, lb.offset], start..start + out.len(), |pos, o, cnt| {
            for (i, d) in out[pos - start..pos - start + cnt].iter_mut().enumerate() {
                let i = i as isize;
                d.write(f(sa[(o[0] + i * ia) as usize], sb[(o[1] + i * ib) as usize]));
            }
        })
    })
}

/// `f` applied to triples of `a`, `b`, `c`, all broadcast to `shape`.
pub fn map3<A: Element, B: Element, C: Element, U: Element>(
    a: &Data,
    b: &Data,
    c: &Data,
    shape: &[usize],
    f: impl Fn(A, B, C) -> U + Sync,
) -> Vec<U> {
    let (sa, sb, sc) = (slice_of::<A>(a), slice_of::<B>(b), slice_of::<C>(c));
    let (la, lb, lc) = (view_of(a, shape), view_of(b, shape), view_of(c, shape));
    let n = la.numel();
    let (cs, st) = collapse(shape, &[&la.strides, &lb.strides, &lc.strides]);
    let inner = |k: usize| st[k].last().copied().unwrap_or(0);
    let (ia, ib, ic) = (inner(0), inner(1), inner(2));
    fill(n, |start, out| {
        for_each_block(
            &cs,
            [&st[0], &st[1], &st[2]],
            [la.offset, lb.offset, lc.offset],
            start..start + out.len(),
            |pos, o, cnt| {
                for (i, d) in out[pos - start..pos - start + cnt].iter_mut().enumerate() {
                    let i = i as isize;
                    d.write(f(
                        sa[(o[0] + i * ia) as usize],
                        sb[(o[1] + i * ib) as usize],
                        sc[(o[2] + i * ic) as usize],
                    ));
                }
            },
        )
    })
}
