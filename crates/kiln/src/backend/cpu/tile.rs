//! Tile-level maps: the inner loops of every elementwise kernel. A tile is
//! a short contiguous run (at most [`TILE`] elements) of each operand, already
//! broadcast and gathered by the fused executor, so these loops are plain
//! slice zips the compiler vectorizes.

use crate::buffer::Buffer;
use crate::dtype::Element;

/// Elements per tile: small enough that a group's live registers stay in L1.
pub const TILE: usize = 2048;

/// A read-only tile: `len` elements of `buf` from `start`, or, when
/// `bcast` is set, element `start` repeated `len` times (a broadcast scalar
/// or a broadcast row's value, read without filling a register).
#[derive(Clone, Copy, Debug)]
pub struct Src<'a> {
    /// The buffer (an input's own buffer, or a register's tile buffer).
    pub buf: &'a Buffer,
    /// First element.
    pub start: usize,
    /// Number of elements.
    pub len: usize,
    /// One value repeated: element `start` only is read.
    pub bcast: bool,
}

impl<'a> Src<'a> {
    /// `len` elements of `buf` from `start`.
    pub fn run(buf: &'a Buffer, start: usize, len: usize) -> Src<'a> {
        Src { buf, start, len, bcast: false }
    }

    /// Element `at` of `buf`, repeated `len` times.
    pub fn repeat(buf: &'a Buffer, at: usize, len: usize) -> Src<'a> {
        Src { buf, start: at, len, bcast: true }
    }

    /// The elements read as `T` (the dtype was checked when the op was
    /// built): the tile, or the one repeated value.
    #[inline(always)]
    pub fn slice<T: Element>(&self) -> &'a [T] {
        let n = if self.bcast { 1 } else { self.len };
        &self.buf.as_slice::<T>().expect("tile dtype matches the op's inferred dtype")[self.start..self.start + n]
    }
}

#[inline(always)]
fn out_slice<U: Element>(out: &mut Buffer, len: usize) -> &mut [U] {
    &mut U::slice_of_mut(out).expect("register dtype matches the op's output dtype")[..len]
}

/// An operand as a map's loop reads it: a tile (`&[T]`, element `i` at
/// position `i`) or one broadcast value (`T`, the same at every position).
/// Each combination of the two gets its own loop, with the broadcast value
/// held in a register.
trait Operand<T>: Copy {
    /// The operand's value at position `i`.
    fn at(self, i: usize) -> T;
}

impl<T: Copy> Operand<T> for &[T] {
    #[inline(always)]
    fn at(self, i: usize) -> T {
        self[i]
    }
}

impl<T: Element> Operand<T> for T {
    #[inline(always)]
    fn at(self, _: usize) -> T {
        self
    }
}

/// Calls `$go(o1, o2, .., args)` with each tile `Src` turned into its
/// [`Operand`]: the broadcast value when `bcast`, else the slice of the
/// output's length `$o.len()` (cut to it, so the loop has no bounds checks).
macro_rules! by_bcast {
    ($go:ident [$($src:expr => $t:ty),*] ($o:expr, $f:expr)) => {
        by_bcast!(@go $go [] [$($src => $t),*] ($o, $f))
    };
    (@go $go:ident [$($c:expr,)*] [] ($o:expr, $f:expr)) => {
        $go($($c,)* $o, $f)
    };
    (@go $go:ident [$($c:expr,)*] [$src:expr => $t:ty $(, $rest:expr => $rt:ty)*] ($o:expr, $f:expr)) => {
        if $src.bcast {
            let v: $t = $src.slice::<$t>()[0];
            by_bcast!(@go $go [$($c,)* v,] [$($rest => $rt),*] ($o, $f))
        } else {
            let v: &[$t] = &$src.slice::<$t>()[..$o.len()];
            by_bcast!(@go $go [$($c,)* v,] [$($rest => $rt),*] ($o, $f))
        }
    };
}

// The maps index `0..o.len()` rather than zip or enumerate iterators:
// with operands cut to `o.len()` the bounds checks vanish, and LLVM then
// vectorizes the whole tile (with `enumerate` it left the last 64
// elements of every tile to a scalar epilogue).

/// `out[i] = f(x[i])`.
#[inline(always)]
pub fn map1<T: Element, U: Element>(x: Src, out: &mut Buffer, f: impl Fn(T) -> U) {
    #[inline(always)]
    #[allow(clippy::needless_range_loop)] // see above: the indexed form vectorizes whole tiles
    fn go<T, U: Element>(x: impl Operand<T>, o: &mut [U], f: impl Fn(T) -> U) {
        for i in 0..o.len() {
            o[i] = f(x.at(i));
        }
    }
    let o = out_slice::<U>(out, x.len);
    by_bcast!(go [x => T] (o, f))
}

/// `out[i] = f(a[i], b[i])`.
#[inline(always)]
pub fn map2<A: Element, B: Element, U: Element>(a: Src, b: Src, out: &mut Buffer, f: impl Fn(A, B) -> U) {
    #[inline(always)]
    #[allow(clippy::needless_range_loop)]
    fn go<A, B, U: Element>(x: impl Operand<A>, y: impl Operand<B>, o: &mut [U], f: impl Fn(A, B) -> U) {
        for i in 0..o.len() {
            o[i] = f(x.at(i), y.at(i));
        }
    }
    let o = out_slice::<U>(out, a.len);
    by_bcast!(go [a => A, b => B] (o, f))
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
    #[inline(always)]
    #[allow(clippy::needless_range_loop)]
    fn go<A, B, C, U: Element>(
        x: impl Operand<A>,
        y: impl Operand<B>,
        z: impl Operand<C>,
        o: &mut [U],
        f: impl Fn(A, B, C) -> U,
    ) {
        for i in 0..o.len() {
            o[i] = f(x.at(i), y.at(i), z.at(i));
        }
    }
    let o = out_slice::<U>(out, a.len);
    by_bcast!(go [a => A, b => B, c => C] (o, f))
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
    ($(#[$m:meta])* $vis:vis fn $name:ident $(<$($g:ident: $b:path),+>)? ($($a:ident: $t:ty),* $(,)?) $(-> $ret:ty)? => $inner:ident) => {
        $(#[$m])*
        $vis fn $name $(<$($g: $b),+>)? ($($a: $t),*) $(-> $ret)? {
            #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
            {
                use $crate::backend::cpu::simd_math::{detected_level, Level};
                #[target_feature(enable = "avx512f,avx2,fma")]
                fn avx512 $(<$($g: $b),+>)? ($($a: $t),*) $(-> $ret)? {
                    $inner $(::<$($g),+>)? ($($a),*)
                }
                #[target_feature(enable = "avx2,fma")]
                fn avx2 $(<$($g: $b),+>)? ($($a: $t),*) $(-> $ret)? {
                    $inner $(::<$($g),+>)? ($($a),*)
                }
                match detected_level() {
                    // SAFETY: the CPU reported AVX-512F, AVX2 and FMA support.
                    Level::Avx512 => return unsafe { avx512 $(::<$($g),+>)? ($($a),*) },
                    // SAFETY: the CPU reported AVX2 and FMA support.
                    Level::Avx2 => return unsafe { avx2 $(::<$($g),+>)? ($($a),*) },
                    Level::Scalar => {}
                }
            }
            $inner $(::<$($g),+>)? ($($a),*)
        }
    };
}
pub(crate) use multiversion;
