//! Binary elementwise tile kernels and `where` (operands are already
//! broadcast by the fused executor's load step).

use std::marker::PhantomData;

use crate::backend::cpu::math::{floordiv_f32, floordiv_f64, max_nan, min_nan, rem_f32, rem_f64, FloatMath, IntMath};
use crate::backend::cpu::simd_math;
use crate::backend::cpu::tile::{map2, map3, multiversion, Src};
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
        Pow => m!(f32::powf, f64::powf),
        Atan2 => m!(f32::atan2, f64::atan2),
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
    match a.buf {
        Buffer::Bool(_) => bool_binary(op, a, b, out),
        Buffer::U8(_) => int_binary::<u8>(op, a, b, out),
        Buffer::U32(_) => int_binary::<u32>(op, a, b, out),
        Buffer::I32(_) => int_binary::<i32>(op, a, b, out),
        Buffer::I64(_) => int_binary::<i64>(op, a, b, out),
        Buffer::F16(_) => float_binary_simd::<half::f16>(op, a, b, out),
        Buffer::BF16(_) => float_binary_simd::<half::bf16>(op, a, b, out),
        Buffer::F32(_) if matches!(op, BinaryOp::Pow | BinaryOp::Atan2) => {
            // simd_math's vector pow and atan2 (an operand broadcast is one value).
            let os = f32::slice_of_mut(out).expect("register dtype matches the op's output dtype");
            let n = a.len;
            let f = if op == BinaryOp::Pow { simd_math::pow_f32 } else { simd_math::atan2_f32 };
            f(a.slice::<f32>(), b.slice::<f32>(), &mut os[..n]);
        }
        Buffer::F32(_) => float_binary_simd::<f32>(op, a, b, out),
        Buffer::F64(_) => float_binary_simd::<f64>(op, a, b, out),
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
