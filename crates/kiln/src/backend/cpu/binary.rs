//! Binary elementwise tile kernels and `where` (operands are already
//! broadcast by the fused executor's load step).

use std::marker::PhantomData;

use crate::backend::cpu::math::{floordiv_f32, floordiv_f64, max_nan, min_nan, rem_f32, rem_f64, FloatMath, IntMath};
use crate::backend::cpu::simd_math;
use crate::backend::cpu::tile::{map2, map3, multiversion, Src};
use crate::backend::cpu::unary::{narrow_simd, widen_simd, HalfElement};
use crate::buffer::elem_type;
use crate::buffer::{Buffer, BufferElement};
use crate::dtype::{DType, Element};
use crate::primitive::BinaryOp;

/// Comparisons and logical ops: defined for every element type.
#[inline(always)]
fn predicate<T: Element>(op: BinaryOp, a: Src, b: Src, out: &mut Buffer) {
    use BinaryOp::*;
    let z = T::zero();
    match op {
        Equal => map2(a, b, out, |x: T, y: T| x == y),
        NotEqual => map2(a, b, out, |x: T, y: T| x != y),
        Less => map2(a, b, out, |x: T, y: T| x < y),
        LessEqual => map2(a, b, out, |x: T, y: T| x <= y),
        Greater => map2(a, b, out, |x: T, y: T| x > y),
        GreaterEqual => map2(a, b, out, |x: T, y: T| x >= y),
        LogicalAnd => map2(a, b, out, |x: T, y: T| x != z && y != z),
        LogicalOr => map2(a, b, out, |x: T, y: T| x != z || y != z),
        _ => unreachable!("not a predicate"),
    }
}

#[inline(always)]
fn float_binary<F: FloatMath>(op: BinaryOp, a: Src, b: Src, out: &mut Buffer) {
    use BinaryOp::*;
    macro_rules! m {
        ($f32:expr, $f64:expr) => {
            map2(a, b, out, |x: F, y: F| x.lift2(y, $f32, $f64))
        };
    }
    match op {
        Add => m!(|x, y| x + y, |x, y| x + y),
        Sub => m!(|x, y| x - y, |x, y| x - y),
        Mul => m!(|x, y| x * y, |x, y| x * y),
        Div => m!(|x, y| x / y, |x, y| x / y),
        FloorDivide => m!(floordiv_f32, floordiv_f64),
        Remainder => m!(rem_f32, rem_f64),
        Pow => m!(f32::powf, crate::backend::cpu::math_f64::pow),
        Atan2 => m!(f32::atan2, crate::backend::cpu::math_f64::atan2),
        Maximum => map2(a, b, out, |x: F, y: F| max_nan(x, y, x.is_nan_())),
        Minimum => map2(a, b, out, |x: F, y: F| min_nan(x, y, x.is_nan_())),
        _ => predicate::<F>(op, a, b, out),
    }
}

fn int_binary<I: IntMath>(op: BinaryOp, a: Src, b: Src, out: &mut Buffer) {
    use BinaryOp::*;
    macro_rules! m {
        ($f:expr) => {
            map2(a, b, out, $f)
        };
    }
    match op {
        Add => m!(|x: I, y: I| x.add_(y)),
        Sub => m!(|x: I, y: I| x.sub_(y)),
        Mul => m!(|x: I, y: I| x.mul_(y)),
        FloorDivide => m!(|x: I, y: I| x.floordiv_(y)),
        Remainder => m!(|x: I, y: I| x.rem_(y)),
        Pow => m!(|x: I, y: I| x.pow_(y)),
        Maximum => m!(|x: I, y: I| x.max(y)),
        Minimum => m!(|x: I, y: I| x.min(y)),
        Div | Atan2 => unreachable!("integer operands are cast to float first"),
        _ => predicate::<I>(op, a, b, out),
    }
}

fn bool_binary(op: BinaryOp, a: Src, b: Src, out: &mut Buffer) {
    use BinaryOp::*;
    match op {
        Add | Maximum => map2(a, b, out, |x: bool, y: bool| x | y),
        Mul | Minimum => map2(a, b, out, |x: bool, y: bool| x & y),
        _ => predicate::<bool>(op, a, b, out),
    }
}

multiversion! {
    /// `f32`/`f64` binary ops, vectorized at the best SIMD level.
    fn float_binary_simd<F: FloatMath>(op: BinaryOp, a: Src, b: Src, out: &mut Buffer) => float_binary
}

/// Runs a binary op on tiles of two operands of one dtype.
pub fn binary(op: BinaryOp, a: Src, b: Src, out: &mut Buffer) {
    match (a.buf, vector_pair(op)) {
        (Buffer::Bool(_), _) => bool_binary(op, a, b, out),
        (Buffer::U8(_), _) => int_binary::<u8>(op, a, b, out),
        (Buffer::U32(_), _) => int_binary::<u32>(op, a, b, out),
        (Buffer::I32(_), _) => int_binary::<i32>(op, a, b, out),
        (Buffer::I64(_), _) => int_binary::<i64>(op, a, b, out),
        (Buffer::F16(_), Some(f)) => half_pair::<half::f16>(f, a, b, out),
        (Buffer::BF16(_), Some(f)) => half_pair::<half::bf16>(f, a, b, out),
        (Buffer::F16(_), None) => float_binary_simd::<half::f16>(op, a, b, out),
        (Buffer::BF16(_), None) => float_binary_simd::<half::bf16>(op, a, b, out),
        (Buffer::F32(_), Some(f)) => {
            // simd_math's vector pow and atan2 (an operand broadcast is one value).
            let os = f32::slice_of_mut(out).expect("register dtype matches the op's output dtype");
            f(a.slice::<f32>(), b.slice::<f32>(), &mut os[..a.len]);
        }
        (Buffer::F32(_), None) => float_binary_simd::<f32>(op, a, b, out),
        (Buffer::F64(_), _) => float_binary_simd::<f64>(op, a, b, out),
    }
}

/// A slice kernel of two `f32` operands (each of the output's length, or one value).
type PairKernel = fn(&[f32], &[f32], &mut [f32]);

/// `simd_math`'s vector kernel of a two-operand function (`pow`, `atan2`).
fn vector_pair(op: BinaryOp) -> Option<PairKernel> {
    match op {
        BinaryOp::Pow => Some(simd_math::pow_f32),
        BinaryOp::Atan2 => Some(simd_math::atan2_f32),
        _ => None,
    }
}

/// A two-operand function of 16-bit floats as of `f32` ones: the operands
/// widened a chunk at a time, its `f32` kernel `f` ([`vector_pair`]), the
/// result rounded back (as every other op of these types computes).
fn half_pair<H: HalfElement>(f: PairKernel, a: Src, b: Src, out: &mut Buffer) {
    const CHUNK: usize = 256;
    let (xa, xb) = (a.slice::<H>(), b.slice::<H>());
    let os = H::slice_of_mut(out).expect("register dtype matches the op's output dtype");
    let (mut wa, mut wb, mut wo) = ([0f32; CHUNK], [0f32; CHUNK], [0f32; CHUNK]);
    let n = a.len;
    let mut at = 0;
    while at < n {
        let m = CHUNK.min(n - at);
        // A broadcast operand is one value (the kernel splats it).
        let widen = |x: &[H], w: &mut [f32; CHUNK]| -> usize {
            let k = if x.len() == 1 { 1 } else { m };
            let from = if x.len() == 1 { 0 } else { at };
            widen_simd(&x[from..from + k], &mut w[..k]);
            k
        };
        let (ka, kb) = (widen(xa, &mut wa), widen(xb, &mut wb));
        f(&wa[..ka], &wb[..kb], &mut wo[..m]);
        narrow_simd(&wo[..m], &mut os[at..at + m]);
        at += m;
    }
}

#[inline(always)]
fn sel<T: Element>(cond: Src, a: Src, b: Src, out: &mut Buffer) {
    map3(cond, a, b, out, |c: bool, x: T, y: T| if c { x } else { y })
}

multiversion! {
    /// `where` on 32-bit and 64-bit elements, vectorized at the best SIMD level.
    fn sel_simd<T: Element>(cond: Src, a: Src, b: Src, out: &mut Buffer) => sel
}

/// `where(cond, a, b)` on tiles.
pub fn select(cond: Src, a: Src, b: Src, out: &mut Buffer) {
    fn go<T: Element>(_: PhantomData<T>, cond: Src, a: Src, b: Src, out: &mut Buffer) {
        if T::DTYPE == DType::F32 || T::DTYPE == DType::F64 {
            sel_simd::<T>(cond, a, b, out)
        } else {
            sel::<T>(cond, a, b, out)
        }
    }
    crate::with_buffer!(a.buf, v => go(elem_type(v), cond, a, b, out))
}
