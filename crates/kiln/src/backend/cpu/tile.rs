//! Tile-level maps: the inner loops of every elementwise kernel. A tile is
//! a short contiguous run (at most [`TILE`] elements) of each operand, already
//! broadcast and gathered by the fused executor, so these loops are plain
//! slice zips the compiler vectorizes.

use crate::backend::cpu::Buffer;
use crate::dtype::Element;

/// Elements per tile: small enough that a group's registers stay in L1/L2.
pub const TILE: usize = 1024;

/// A read-only tile: `len` elements of `buf` from `start`.
#[derive(Clone, Copy, Debug)]
pub struct Src<'a> {
    /// The buffer (an input's own buffer, or a register's tile buffer).
    pub buf: &'a Buffer,
    /// First element.
    pub start: usize,
    /// Number of elements.
    pub len: usize,
}

impl<'a> Src<'a> {
    /// The tile's elements as `T` (the dtype was checked when the op was built).
    #[inline]
    pub fn slice<T: Element>(&self) -> &'a [T] {
        &self.buf.as_slice::<T>().expect("tile dtype matches the op's inferred dtype")
            [self.start..self.start + self.len]
    }
}

#[inline]
fn out_slice<U: Element>(out: &mut Buffer, len: usize) -> &mut [U] {
    &mut U::slice_of_mut(out).expect("register dtype matches the op's output dtype")[..len]
}

/// `out[i] = f(x[i])`.
#[inline]
pub fn map1<T: Element, U: Element>(x: Src, out: &mut Buffer, f: impl Fn(T) -> U) {
    let xs = x.slice::<T>();
    for (o, v) in out_slice::<U>(out, x.len).iter_mut().zip(xs) {
        *o = f(*v);
    }
}

/// `out[i] = f(a[i], b[i])`.
#[inline]
pub fn map2<A: Element, B: Element, U: Element>(a: Src, b: Src, out: &mut Buffer, f: impl Fn(A, B) -> U) {
    let (xs, ys) = (a.slice::<A>(), b.slice::<B>());
    for ((o, x), y) in out_slice::<U>(out, a.len).iter_mut().zip(xs).zip(ys) {
        *o = f(*x, *y);
    }
}

/// `out[i] = f(a[i], b[i], c[i])`.
#[inline]
pub fn map3<A: Element, B: Element, C: Element, U: Element>(
    a: Src,
    b: Src,
    c: Src,
    out: &mut Buffer,
    f: impl Fn(A, B, C) -> U,
) {
    let (xs, ys, zs) = (a.slice::<A>(), b.slice::<B>(), c.slice::<C>());
    for (((o, x), y), z) in out_slice::<U>(out, a.len).iter_mut().zip(xs).zip(ys).zip(zs) {
        *o = f(*x, *y, *z);
    }
}
