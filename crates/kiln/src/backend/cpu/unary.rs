//! Unary elementwise kernels: one definition per op for all float types and
//! one for all integer types.

use crate::array::Data;
use crate::backend::cpu::math::{sigmoid_f32, sigmoid_f64, sign_f32, sign_f64, FloatMath, IntMath};
use crate::backend::cpu::strided::map1;
use crate::backend::cpu::Buffer;
use crate::primitive::UnaryOp;

fn float_unary<F: FloatMath>(op: UnaryOp, x: &Data, shape: &[usize]) -> Buffer {
    use UnaryOp::*;
    macro_rules! m {
        ($f32:expr, $f64:expr) => {
            Buffer::from_vec(map1(x, shape, |v: F| v.lift($f32, $f64)))
        };
    }
    macro_rules! p {
        ($pred:expr) => {
            Buffer::from_vec(map1(x, shape, $pred))
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
        Exp => m!(f32::exp, f64::exp),
        Expm1 => m!(f32::exp_m1, f64::exp_m1),
        Log => m!(f32::ln, f64::ln),
        Log1p => m!(f32::ln_1p, f64::ln_1p),
        Log2 => m!(f32::log2, f64::log2),
        Log10 => m!(f32::log10, f64::log10),
        Sin => m!(f32::sin, f64::sin),
        Cos => m!(f32::cos, f64::cos),
        Tan => m!(f32::tan, f64::tan),
        Tanh => m!(f32::tanh, f64::tanh),
        Sigmoid => m!(sigmoid_f32, sigmoid_f64),
        Erf => m!(libm::erff, libm::erf),
        Floor => m!(f32::floor, f64::floor),
        Ceil => m!(f32::ceil, f64::ceil),
        Round => m!(f32::round_ties_even, f64::round_ties_even),
        LogicalNot => p!(|v: F| v == F::zero()),
        IsNan => p!(|v: F| v.is_nan_()),
        IsInf => p!(|v: F| v.is_inf_()),
        IsFinite => p!(|v: F| !v.is_nan_() && !v.is_inf_()),
    }
}

fn int_unary<I: IntMath>(op: UnaryOp, x: &Data, shape: &[usize]) -> Buffer {
    use UnaryOp::*;
    match op {
        Neg => Buffer::from_vec(map1(x, shape, |v: I| v.neg_())),
        Abs => Buffer::from_vec(map1(x, shape, |v: I| v.abs_())),
        Sign => Buffer::from_vec(map1(x, shape, |v: I| v.sign_())),
        Square => Buffer::from_vec(map1(x, shape, |v: I| v.mul_(v))),
        Floor | Ceil | Round => Buffer::from_vec(map1(x, shape, |v: I| v)),
        LogicalNot => Buffer::from_vec(map1(x, shape, |v: I| v == I::zero())),
        IsNan | IsInf => Buffer::from_vec(map1(x, shape, |_: I| false)),
        IsFinite => Buffer::from_vec(map1(x, shape, |_: I| true)),
        _ => unreachable!("float-only ops are rejected by UnaryOp::out_dtype"),
    }
}

fn bool_unary(op: UnaryOp, x: &Data, shape: &[usize]) -> Buffer {
    use UnaryOp::*;
    match op {
        LogicalNot => Buffer::from_vec(map1(x, shape, |v: bool| !v)),
        IsNan | IsInf => Buffer::from_vec(map1(x, shape, |_: bool| false)),
        IsFinite => Buffer::from_vec(map1(x, shape, |_: bool| true)),
        _ => unreachable!("numeric ops on bool are rejected by UnaryOp::out_dtype"),
    }
}

/// Runs a unary op on `x` (its shape is `shape`).
pub fn unary(op: UnaryOp, x: &Data, shape: &[usize]) -> Buffer {
    match &*x.buffer {
        Buffer::Bool(_) => bool_unary(op, x, shape),
        Buffer::U8(_) => int_unary::<u8>(op, x, shape),
        Buffer::U32(_) => int_unary::<u32>(op, x, shape),
        Buffer::I32(_) => int_unary::<i32>(op, x, shape),
        Buffer::I64(_) => int_unary::<i64>(op, x, shape),
        Buffer::F16(_) => float_unary::<half::f16>(op, x, shape),
        Buffer::BF16(_) => float_unary::<half::bf16>(op, x, shape),
        Buffer::F32(_) => float_unary::<f32>(op, x, shape),
        Buffer::F64(_) => float_unary::<f64>(op, x, shape),
    }
}
