//! Tile-level maps: the inner loops of every elementwise kernel. A tile is
//! a short contiguous run (at most [`TILE`] elements) of each operand, already
//! broadcast and gathered by the fused executor, so these loops are plain
//! slice zips the compiler vectorizes.

use crate::backend::cpu::Buffer;
use crate::dtype::Element;

/// Elements per tile: small enough that a group's live registers stay in L1.
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
    #[inline(always)]
    pub fn slice<T: Element>(&self) -> &'a [T] {
        &self.buf.as_slice::<T>().expect("tile dtype matches the op's inferred dtype")
            [self.start..self.start + self.len]
    }
}

#[inline(always)]
fn out_slice<U: Element>(out: &mut Buffer, len: usize) -> &mut [U] {
    &mut U::slice_of_mut(out).expect("register dtype matches the op's output dtype")[..len]
}

/// `out[i] = f(x[i])`.
#[inline(always)]
pub fn map1<T: Element, U: Element>(x: Src, out: &mut Buffer, f: impl Fn(T) -> U) {
    let xs = x.slice::<T>();
    for (o, v) in out_slice::<U>(out, x.len).iter_mut().zip(xs) {
        *o = f(*v);
    }
}

/// `out[i] = f(a[i], b[i])`.
#[inline(always)]
pub fn map2<A: Element, B: Element, U: Element>(a: Src, b: Src, out: &mut Buffer, f: impl Fn(A, B) -> U) {
    let (xs, ys) = (a.slice::<A>(), b.slice::<B>());
    for ((o, x), y) in out_slice::<U>(out, a.len).iter_mut().zip(xs).zip(ys) {
        *o = f(*x, *y);
    }
}

/// `out[i] = f(a[i], b[i], c[i])`.
#[inline(always)]
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

/// Defines `fn $name(args)` that runs `$inner(args)` compiled for the best
/// SIMD level the CPU supports ([`simd_math::detected_level`]), so the tile
/// loops inlined into `$inner` (which must be `#[inline(always)]`) are
/// autovectorized with AVX-512 or AVX2 lanes, with the portable build as the
/// fallback. Plain arithmetic is not contracted into FMAs by LLVM, so every
/// level gives bit-identical results.
///
/// [`simd_math::detected_level`]: crate::backend::cpu::simd_math::detected_level
macro_rules! multiversion {
    ($(#[$m:meta])* $vis:vis fn $name:ident $(<$g:ident: $b:path>)? ($($a:ident: $t:ty),* $(,)?) => $inner:ident) => {
        $(#[$m])*
        $vis fn $name $(<$g: $b>)? ($($a: $t),*) {
            #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
            {
                use $crate::backend::cpu::simd_math::{detected_level, Level};
                #[target_feature(enable = "avx512f,avx2,fma")]
                fn avx512 $(<$g: $b>)? ($($a: $t),*) {
                    $inner $(::<$g>)? ($($a),*)
                }
                #[target_feature(enable = "avx2,fma")]
                fn avx2 $(<$g: $b>)? ($($a: $t),*) {
                    $inner $(::<$g>)? ($($a),*)
                }
                match detected_level() {
                    // SAFETY: the CPU reported AVX-512F, AVX2 and FMA support.
                    Level::Avx512 => return unsafe { avx512 $(::<$g>)? ($($a),*) },
                    // SAFETY: the CPU reported AVX2 and FMA support.
                    Level::Avx2 => return unsafe { avx2 $(::<$g>)? ($($a),*) },
                    Level::Scalar => {}
                }
            }
            $inner $(::<$g>)? ($($a),*)
        }
    };
}
pub(crate) use multiversion;
