//! Elementwise functions of one array. Float-only functions (`exp`, `sqrt`,
//! `erf`, ...) reject integer and bool arrays with a dtype error; convert with
//! `astype` first.

use crate::array::Array;
use crate::error::Result;
use crate::primitive::{Primitive, UnaryOp};

/// Records a unary op.
pub fn unary(op: UnaryOp, x: &Array) -> Result<Array> {
    Array::from_op(Primitive::Unary(op), vec![x.clone()])
}

macro_rules! unary_fns {
    ($($name:ident => $op:ident: $doc:literal),* $(,)?) => {
        $(
            #[doc = $doc]
            pub fn $name(x: &Array) -> Result<Array> {
                unary(UnaryOp::$op, x)
            }
        )*
        impl Array {
            $(
                #[doc = $doc]
                pub fn $name(&self) -> Result<Array> {
                    unary(UnaryOp::$op, self)
                }
            )*
        }
    };
}

unary_fns! {
    neg => Neg: "Elementwise negation (wrapping for integers).",
    abs => Abs: "Elementwise absolute value (wrapping: `abs(i32::MIN) == i32::MIN`).",
    sign => Sign: "Elementwise sign: -1, 0 or 1 (NaN stays NaN, -0.0 stays -0.0).",
    sqrt => Sqrt: "Elementwise square root (floats).",
    rsqrt => Rsqrt: "Elementwise `1 / sqrt(x)` (floats).",
    square => Square: "Elementwise `x * x`.",
    reciprocal => Reciprocal: "Elementwise `1 / x` (floats).",
    exp => Exp: "Elementwise `e^x` (floats).",
    expm1 => Expm1: "Elementwise `e^x - 1`, accurate near 0 (floats).",
    log => Log: "Elementwise natural logarithm (floats).",
    log1p => Log1p: "Elementwise `ln(1 + x)`, accurate near 0 (floats).",
    log2 => Log2: "Elementwise base-2 logarithm (floats).",
    log10 => Log10: "Elementwise base-10 logarithm (floats).",
    sin => Sin: "Elementwise sine (floats).",
    cos => Cos: "Elementwise cosine (floats).",
    tan => Tan: "Elementwise tangent (floats).",
    tanh => Tanh: "Elementwise hyperbolic tangent (floats).",
    sigmoid => Sigmoid: "Elementwise logistic sigmoid `1 / (1 + e^-x)` (floats).",
    erf => Erf: "Elementwise error function (floats).",
    floor => Floor: "Elementwise floor (identity on integers).",
    ceil => Ceil: "Elementwise ceiling (identity on integers).",
    round => Round: "Elementwise rounding, half to even (identity on integers).",
    logical_not => LogicalNot: "Elementwise `x == 0`, as bool.",
    isnan => IsNan: "Elementwise NaN test, as bool.",
    isinf => IsInf: "Elementwise infinity test, as bool.",
    isfinite => IsFinite: "Elementwise finiteness test, as bool.",
}
