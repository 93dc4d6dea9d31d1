//! Unary elementwise kernels: one definition per op for all float types and
//! one for all integer types.

use crate::backend::cpu::half_conv::Half;
use crate::backend::cpu::math::{sigmoid_f32, sign_f32, sign_f64, FloatMath, IntMath};
use crate::backend::cpu::math_f64;
use crate::backend::cpu::simd_math::{self, Func};
use crate::backend::cpu::tile::{map1, multiversion, Src};
use crate::buffer::{Buffer, BufferElement};
use crate::primitive::UnaryOp;

#[inline(always)]
fn float_unary<F: FloatMath>(op: UnaryOp, x: Src, out: &mut Buffer) {
    use UnaryOp::*;
    macro_rules! m {
        ($f32:expr, $f64:expr) => {
            map1(x, out, |v: F| v.lift($f32, $f64))
        };
    }
    macro_rules! p {
        ($pred:expr) => {
            map1(x, out, $pred)
        };
    }
    match op {
        Neg => m!(|v| -v, |v| -v),
        Abs => m!(f32::abs, f64::abs),
        Sign => m!(sign_f32, sign_f64),
        Sqrt => m!(f32::sqrt, f64::sqrt),
        Rsqrt => m!(|v| 1.0 / v.sqrt(), |v| 1.0 / v.sqrt()),
        Square => m!(|v| v * v, |v| v * v),
        Reciprocal => m!(|v| 1.0 / v, |v| 1.0 / v),
        Exp => m!(f32::exp, math_f64::exp),
        Expm1 => m!(f32::exp_m1, math_f64::expm1),
        Log => m!(f32::ln, math_f64::log),
        Log1p => m!(f32::ln_1p, math_f64::log1p),
        Log2 => m!(f32::log2, math_f64::log2),
        Log10 => m!(f32::log10, math_f64::log10),
        Sin => m!(f32::sin, math_f64::sin_reduced),
        Cos => m!(f32::cos, math_f64::cos_reduced),
        Tan => m!(f32::tan, math_f64::tan_reduced),
        Tanh => m!(f32::tanh, math_f64::tanh),
        Sigmoid => m!(sigmoid_f32, math_f64::sigmoid),
        Erf => m!(libm::erff, math_f64::erf),
        Floor => m!(f32::floor, f64::floor),
        Ceil => m!(f32::ceil, f64::ceil),
        Round => m!(f32::round_ties_even, f64::round_ties_even),
        LogicalNot => p!(|v: F| v == F::zero()),
        IsNan => p!(|v: F| v.is_nan_()),
        IsInf => p!(|v: F| v.is_inf_()),
        IsFinite => p!(|v: F| !v.is_nan_() && !v.is_inf_()),
    }
}

fn int_unary<I: IntMath>(op: UnaryOp, x: Src, out: &mut Buffer) {
    use UnaryOp::*;
    match op {
        Neg => map1(x, out, |v: I| v.neg_()),
        Abs => map1(x, out, |v: I| v.abs_()),
        Sign => map1(x, out, |v: I| v.sign_()),
        Square => map1(x, out, |v: I| v.mul_(v)),
        Floor | Ceil | Round => map1(x, out, |v: I| v),
        LogicalNot => map1(x, out, |v: I| v == I::zero()),
        IsNan | IsInf => map1(x, out, |_: I| false),
        IsFinite => map1(x, out, |_: I| true),
        _ => unreachable!("float-only ops are rejected by UnaryOp::out_dtype"),
    }
}

fn bool_unary(op: UnaryOp, x: Src, out: &mut Buffer) {
    use UnaryOp::*;
    match op {
        LogicalNot => map1(x, out, |v: bool| !v),
        IsNan | IsInf => map1(x, out, |_: bool| false),
        IsFinite => map1(x, out, |_: bool| true),
        _ => unreachable!("numeric ops on bool are rejected by UnaryOp::out_dtype"),
    }
}

multiversion! {
    /// `f32`/`f64` unary ops, vectorized at the best SIMD level (the
    /// transcendental `f32` ones go through [`simd_math`] instead; `f64`
    /// `exp`, `expm1`, `log`, `log1p`, `sin`, `cos`, `tan`, `tanh`, `sigmoid`
    /// and `erf` are [`math_f64`]'s branch-free
    /// forms, which vectorize here, the other `f64` functions the C
    /// library's, one element per call).
    fn float_unary_simd<F: FloatMath>(op: UnaryOp, x: Src, out: &mut Buffer) => float_unary
}

/// A 16-bit float element of a tile.
pub(super) trait HalfElement: Half + BufferElement + crate::dtype::Element {}
impl<H: Half + BufferElement + crate::dtype::Element> HalfElement for H {}

#[inline(always)]
fn widen<H: HalfElement>(xs: &[H], out: &mut [f32]) {
    for (o, &x) in out.iter_mut().zip(xs) {
        *o = x.widen();
    }
}

#[inline(always)]
fn narrow<H: HalfElement>(xs: &[f32], out: &mut [H]) {
    for (o, &x) in out.iter_mut().zip(xs) {
        *o = H::narrow(x);
    }
}

multiversion! {
    /// Half floats to `f32`, vectorized at the best SIMD level.
    pub(super) fn widen_simd<H: HalfElement>(xs: &[H], out: &mut [f32]) => widen
}

multiversion! {
    /// `f32` to half floats, vectorized at the best SIMD level.
    pub(super) fn narrow_simd<H: HalfElement>(xs: &[f32], out: &mut [H]) => narrow
}

/// A half-float transcendental: the tile widened to `f32` a chunk at a
/// time, [`simd_math`]'s `f32` kernel (as for `f32` arrays), rounded back.
fn half_through_f32<H: HalfElement>(f: Func, x: Src, out: &mut Buffer) {
    const CHUNK: usize = 256;
    let xs = x.slice::<H>();
    let os = H::slice_of_mut(out).expect("register dtype matches the op's output dtype");
    let (mut a, mut b) = ([0f32; CHUNK], [0f32; CHUNK]);
    for (xc, oc) in xs.chunks(CHUNK).zip(os[..x.len].chunks_mut(CHUNK)) {
        let n = xc.len();
        widen_simd(xc, &mut a[..n]);
        simd_math::apply(f, simd_math::detected_level(), &a[..n], &mut b[..n]);
        narrow_simd(&b[..n], oc);
    }
}

/// The vectorized `f32` kernel for `op`, if [`simd_math`] has one.
pub(crate) fn simd_func(op: UnaryOp) -> Option<Func> {
    Func::of(op)
}

/// Runs a unary op on a tile of `x`, writing `out` (of the op's output dtype).
pub fn unary(op: UnaryOp, x: Src, out: &mut Buffer) {
    match x.buf {
        Buffer::Bool(_) => bool_unary(op, x, out),
        Buffer::U8(_) => int_unary::<u8>(op, x, out),
        Buffer::U32(_) => int_unary::<u32>(op, x, out),
        Buffer::I32(_) => int_unary::<i32>(op, x, out),
        Buffer::I64(_) => int_unary::<i64>(op, x, out),
        Buffer::F16(_) => match simd_func(op) {
            Some(f) if !x.bcast => half_through_f32::<half::f16>(f, x, out),
            _ => float_unary_simd::<half::f16>(op, x, out),
        },
        Buffer::BF16(_) => match simd_func(op) {
            Some(f) if !x.bcast => half_through_f32::<half::bf16>(f, x, out),
            _ => float_unary_simd::<half::bf16>(op, x, out),
        },
        Buffer::F32(_) => match simd_func(op) {
            Some(f) => {
                // `fused::apply` runs an op of broadcast values on one element.
                debug_assert!(!x.bcast, "simd_math kernels map tiles, not broadcast values");
                let os = f32::slice_of_mut(out).expect("register dtype matches the op's output dtype");
                simd_math::apply(f, simd_math::detected_level(), x.slice::<f32>(), &mut os[..x.len]);
            }
            None => float_unary_simd::<f32>(op, x, out),
        },
        Buffer::F64(_) => {
            float_unary_simd::<f64>(op, x, out);
            // The lanes the vector trigonometry leaves to the C library.
            if let Some(f) = math_f64::Trig::of(op).map(math_f64::Trig::library) {
                let os = f64::slice_of_mut(out).expect("register dtype matches the op's output dtype");
                for (o, &a) in os[..x.len].iter_mut().zip(x.slice::<f64>()) {
                    *o = math_f64::library_if_nan(*o, a, f);
                }
            }
        }
    }
}
