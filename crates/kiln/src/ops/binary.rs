//! Elementwise functions of two operands with NumPy broadcasting, `where`,
//! `clip`, and the operators `+ - * /` and unary `-`.
//!
//! Operators work on `Array`, `&Array` and Rust scalars (on either side),
//! and accept a `Result<Array>` on either side of an array, so a chain of
//! array operands needs a single `?`. A scalar after a `Result` needs a `?`
//! first (Rust's orphan rule forbids `impl Add<f32> for Result<Array>`), and
//! a scalar on the left needs a typed literal (`2.0f32 * &x`, `1i32 - &x`):
//!
//! ```
//! use kiln::Array;
//! let x = Array::from_slice(&[1.0f32, 2.0, 3.0], &[3])?;
//! let y = (((&x * 2.0)? + &x)? - 1.0f32)?;
//! assert_eq!(y.to_vec::<f32>()?, vec![2.0, 5.0, 8.0]);
//! let z = ((&x + &y) * &x - &y)?; // arrays only: one `?`
//! assert_eq!(z.to_vec::<f32>()?, vec![1.0, 9.0, 25.0]);
//! # Ok::<(), kiln::Error>(())
//! ```
//!
//! Integer semantics: `+ - *` wrap on overflow; `div` is true division and
//! gives a float (`f32` for integer operands); `floor_divide` and `remainder`
//! by zero give 0; `i32::MIN // -1` wraps to `i32::MIN`. Float
//! `floor_divide` and `remainder` follow Python (`1.0 // 0.1 == 9.0`, the
//! remainder has the divisor's sign).

use std::ops;

use crate::array::Array;
use crate::error::{Error, Result};
use crate::ops::{operand_as, operand_device, result_dtype, Operand, Scalar};
use crate::primitive::{BinaryOp, Primitive};

/// Records a binary op after promoting both operands.
pub fn binary(op: BinaryOp, a: impl Into<Operand>, b: impl Into<Operand>) -> Result<Array> {
    let (a, b) = (a.into(), b.into());
    if op == BinaryOp::Pow {
        if let Some(p) = small_integer_power(&a, &b) {
            return p;
        }
    }
    let dt = op.operand_dtype(result_dtype(&[&a, &b]))?;
    let dev = operand_device(&[&a, &b]);
    let a = operand_as(a, dt, dev)?;
    let b = operand_as(b, dt, dev)?;
    Array::from_op(Primitive::Binary(op), vec![a, b])
}

macro_rules! binary_fns {
    ($($name:ident => $op:ident: $doc:literal),* $(,)?) => {
        $(
            #[doc = $doc]
            pub fn $name(a: impl Into<Operand>, b: impl Into<Operand>) -> Result<Array> {
                binary(BinaryOp::$op, a, b)
            }
        )*
        impl Array {
            $(
                #[doc = $doc]
                pub fn $name(&self, other: impl Into<Operand>) -> Result<Array> {
                    binary(BinaryOp::$op, self, other)
                }
            )*
        }
    };
}

binary_fns! {
    add => Add: "Elementwise sum, broadcasting.",
    sub => Sub: "Elementwise difference, broadcasting.",
    mul => Mul: "Elementwise product, broadcasting.",
    div => Div: "Elementwise true division, broadcasting (integers give a float).",
    floor_divide => FloorDivide: "Elementwise floor division, broadcasting (integer division by zero gives 0).",
    remainder => Remainder: "Elementwise remainder with the divisor's sign, broadcasting (by zero gives 0 for integers).",
    pow => Pow: "Elementwise power, broadcasting.",
    maximum => Maximum: "Elementwise maximum, broadcasting; NaN propagates.",
    minimum => Minimum: "Elementwise minimum, broadcasting; NaN propagates.",
    atan2 => Atan2: "Elementwise `atan2(a, b)`, broadcasting (floats).",
    equal => Equal: "Elementwise `a == b`, as bool.",
    not_equal => NotEqual: "Elementwise `a != b`, as bool.",
    less => Less: "Elementwise `a < b`, as bool.",
    less_equal => LessEqual: "Elementwise `a <= b`, as bool.",
    greater => Greater: "Elementwise `a > b`, as bool.",
    greater_equal => GreaterEqual: "Elementwise `a >= b`, as bool.",
    logical_and => LogicalAnd: "Elementwise logical and of truth values, as bool.",
    logical_or => LogicalOr: "Elementwise logical or of truth values, as bool.",
}

/// `x ^ n` for a float array `x` and a whole scalar `n` with `1 <= |n| <= 4`,
/// as products (`x * x * x`; `1 / (x * x)` for `n = -2`), as R's `^` and
/// NumPy's `power` do for small whole exponents: as exact as `pow` or more,
/// and elementwise work that fuses into vector code, where `pow` runs each
/// element through the C library (`x^3` in an R gelu took 13x longer).
fn small_integer_power(a: &Operand, b: &Operand) -> Option<Result<Array>> {
    let (Operand::Array(x), Operand::Scalar(s)) = (a, b) else { return None };
    let n = match *s {
        Scalar::Float(f) if f.fract() == 0.0 && (1.0..=4.0).contains(&f.abs()) => f as i64,
        Scalar::Int(i) if (1..=4).contains(&i.abs()) => i,
        _ => return None,
    };
    if !x.dtype().is_float() {
        return None;
    }
    let product = || -> Result<Array> {
        match n.abs() {
            1 => Ok(x.clone()),
            2 => x * x,
            3 => (x * x)? * x,
            _ => {
                let sq = (x * x)?;
                &sq * &sq
            }
        }
    };
    Some(product().and_then(|p| if n < 0 { p.reciprocal() } else { Ok(p) }))
}

/// `cond ? a : b` elementwise, broadcasting all three; `cond` is converted
/// to bool (nonzero is true), `a` and `b` are promoted.
pub fn where_(cond: impl Into<Operand>, a: impl Into<Operand>, b: impl Into<Operand>) -> Result<Array> {
    let (c, a, b) = (cond.into(), a.into(), b.into());
    let dt = result_dtype(&[&a, &b]);
    let dev = operand_device(&[&c, &a, &b]);
    let c = operand_as(c, crate::DType::Bool, dev)?;
    Array::from_op(Primitive::Where, vec![c, operand_as(a, dt, dev)?, operand_as(b, dt, dev)?])
}

/// Limits values to `[lo, hi]` (either bound may be `None`); keeps `x`'s
/// dtype for scalar bounds.
pub fn clip(x: &Array, lo: Option<impl Into<Operand>>, hi: Option<impl Into<Operand>>) -> Result<Array> {
    if lo.is_none() && hi.is_none() {
        return Err(Error::Invalid { op: "clip", msg: "at least one of lo and hi must be given".into() });
    }
    let mut y = x.clone();
    if let Some(lo) = lo {
        y = maximum(&y, lo)?;
    }
    if let Some(hi) = hi {
        y = minimum(&y, hi)?;
    }
    Ok(y)
}

// ---- operators ----

macro_rules! bin_operator {
    ($trait:ident, $method:ident, $op:ident) => {
        impl<R: Into<Operand>> ops::$trait<R> for Array {
            type Output = Result<Array>;
            fn $method(self, rhs: R) -> Result<Array> {
                binary(BinaryOp::$op, self, rhs)
            }
        }
        impl<R: Into<Operand>> ops::$trait<R> for &Array {
            type Output = Result<Array>;
            fn $method(self, rhs: R) -> Result<Array> {
                binary(BinaryOp::$op, self, rhs)
            }
        }
        impl ops::$trait<Array> for Result<Array> {
            type Output = Result<Array>;
            fn $method(self, rhs: Array) -> Result<Array> {
                binary(BinaryOp::$op, self?, rhs)
            }
        }
        impl ops::$trait<&Array> for Result<Array> {
            type Output = Result<Array>;
            fn $method(self, rhs: &Array) -> Result<Array> {
                binary(BinaryOp::$op, self?, rhs)
            }
        }
        impl ops::$trait<Result<Array>> for Array {
            type Output = Result<Array>;
            fn $method(self, rhs: Result<Array>) -> Result<Array> {
                binary(BinaryOp::$op, self, rhs?)
            }
        }
        impl ops::$trait<Result<Array>> for &Array {
            type Output = Result<Array>;
            fn $method(self, rhs: Result<Array>) -> Result<Array> {
                binary(BinaryOp::$op, self, rhs?)
            }
        }
        bin_operator!(@scalars $trait, $method, $op, f32, f64, i32, i64, u8, u32);
    };
    (@scalars $trait:ident, $method:ident, $op:ident, $($s:ty),*) => {$(
        impl ops::$trait<Array> for $s {
            type Output = Result<Array>;
            fn $method(self, rhs: Array) -> Result<Array> {
                binary(BinaryOp::$op, self, rhs)
            }
        }
        impl ops::$trait<&Array> for $s {
            type Output = Result<Array>;
            fn $method(self, rhs: &Array) -> Result<Array> {
                binary(BinaryOp::$op, self, rhs)
            }
        }
    )*};
}

bin_operator!(Add, add, Add);
bin_operator!(Sub, sub, Sub);
bin_operator!(Mul, mul, Mul);
bin_operator!(Div, div, Div);

impl ops::Neg for Array {
    type Output = Result<Array>;
    fn neg(self) -> Result<Array> {
        crate::ops::unary::neg(&self)
    }
}

impl ops::Neg for &Array {
    type Output = Result<Array>;
    fn neg(self) -> Result<Array> {
        crate::ops::unary::neg(self)
    }
}
