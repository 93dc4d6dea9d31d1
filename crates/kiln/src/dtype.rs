//! Data types, the [`Element`] trait that ties a Rust type to its [`DType`],
//! and the type promotion rules.
//!
//! # Promotion
//!
//! Binary operations first promote both operands to a common dtype, following
//! MLX (which agrees with NumPy except where NumPy widens to 64 bits):
//!
//! | operands | result |
//! |---|---|
//! | same dtype | that dtype |
//! | `bool` with any `T` | `T` |
//! | two unsigned, or two signed ints | the wider one |
//! | `u8` with `i32`/`i64` | the signed one |
//! | `u32` with `i32` | `i64` (`u32` with `i64` is `i64`) |
//! | any int with a float `F` | `F` (so `i32 + f32 -> f32`, `i32 + f16 -> f16`) |
//! | `f16` with `bf16` | `f32` |
//! | two floats otherwise | the wider one |
//!
//! Rust scalars are *weakly typed*: they never widen an array. An `f16` array
//! times `2.0` stays `f16`; an `i32` array plus `1` stays `i32`. A float
//! scalar with an integer or bool array gives `f32` (as in MLX); an integer
//! scalar with a bool array gives `i32`.

use std::fmt;

use half::{bf16, f16};

/// The element type of an array.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DType {
    /// Boolean (one byte per element).
    Bool,
    /// Unsigned 8-bit integer.
    U8,
    /// Unsigned 32-bit integer.
    U32,
    /// Signed 32-bit integer.
    I32,
    /// Signed 64-bit integer.
    I64,
    /// IEEE half precision float.
    F16,
    /// bfloat16 (8-bit exponent, 7-bit mantissa).
    BF16,
    /// Single precision float.
    F32,
    /// Double precision float.
    F64,
}

/// Every dtype, in promotion order.
pub const ALL_DTYPES: [DType; 9] =
    [DType::Bool, DType::U8, DType::U32, DType::I32, DType::I64, DType::F16, DType::BF16, DType::F32, DType::F64];

impl DType {
    /// This dtype on `device`, for a creation op (see [`Spec`](crate::device::Spec)).
    pub fn on(self, device: crate::Device) -> crate::device::Spec {
        crate::device::Spec { dtype: self, device: Some(device) }
    }

    /// Size of one element in bytes.
    pub fn size(self) -> usize {
        match self {
            DType::Bool | DType::U8 => 1,
            DType::F16 | DType::BF16 => 2,
            DType::U32 | DType::I32 | DType::F32 => 4,
            DType::I64 | DType::F64 => 8,
        }
    }

    /// True for `f16`, `bf16`, `f32` and `f64`.
    pub fn is_float(self) -> bool {
        matches!(self, DType::F16 | DType::BF16 | DType::F32 | DType::F64)
    }

    /// True for the integer dtypes (not bool).
    pub fn is_int(self) -> bool {
        matches!(self, DType::U8 | DType::U32 | DType::I32 | DType::I64)
    }

    /// True for the signed integer dtypes.
    pub fn is_signed_int(self) -> bool {
        matches!(self, DType::I32 | DType::I64)
    }

    /// True for the unsigned integer dtypes.
    pub fn is_unsigned_int(self) -> bool {
        matches!(self, DType::U8 | DType::U32)
    }

    /// The short name used in messages and in `Display` (`f32`, `i64`, ...).
    pub fn name(self) -> &'static str {
        match self {
            DType::Bool => "bool",
            DType::U8 => "u8",
            DType::U32 => "u32",
            DType::I32 => "i32",
            DType::I64 => "i64",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::F32 => "f32",
            DType::F64 => "f64",
        }
    }

    /// The NumPy-style name used by `Display` (`float32`, `int64`, ...).
    pub fn numpy_name(self) -> &'static str {
        match self {
            DType::Bool => "bool",
            DType::U8 => "uint8",
            DType::U32 => "uint32",
            DType::I32 => "int32",
            DType::I64 => "int64",
            DType::F16 => "float16",
            DType::BF16 => "bfloat16",
            DType::F32 => "float32",
            DType::F64 => "float64",
        }
    }

    /// The float dtype used when an integer or bool array must become float
    /// (true division, mean): `f32`. Floats map to themselves.
    pub fn to_float(self) -> DType {
        if self.is_float() {
            self
        } else {
            DType::F32
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The common dtype of two operands (see the module docs for the table).
pub fn promote(a: DType, b: DType) -> DType {
    use DType::*;
    if a == b {
        return a;
    }
    match (a, b) {
        (Bool, x) | (x, Bool) => x,
        (F16, BF16) | (BF16, F16) => F32,
        (x, y) if x.is_float() && y.is_float() => {
            if x.size() >= y.size() {
                x
            } else {
                y
            }
        }
        (x, _) if x.is_float() => x,
        (_, y) if y.is_float() => y,
        (U32, I32) | (I32, U32) => I64,
        (x, y) => {
            // Both integers, not the u32/i32 pair: the signed one wins when it
            // is wider than the unsigned one, else the wider one.
            if x.is_signed_int() != y.is_signed_int() {
                let (s, u) = if x.is_signed_int() { (x, y) } else { (y, x) };
                if s.size() > u.size() {
                    s
                } else {
                    I64
                }
            } else if x.size() >= y.size() {
                x
            } else {
                y
            }
        }
    }
}

/// The kind of a weakly typed Rust scalar operand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScalarKind {
    /// `bool`.
    Bool,
    /// Any Rust integer.
    Int,
    /// `f32` or `f64`.
    Float,
}

/// The dtype of `array op scalar`: a weak scalar never widens the array.
pub fn promote_scalar(array: DType, scalar: ScalarKind) -> DType {
    match scalar {
        ScalarKind::Bool => array,
        ScalarKind::Int => {
            if array == DType::Bool {
                DType::I32
            } else {
                array
            }
        }
        ScalarKind::Float => array.to_float(),
    }
}

/// A Rust type that can be an array element.
///
/// Conversions go through `i64` for integer sources and `f64` for float
/// sources, which matches `as` casts: float to int truncates toward zero and
/// saturates (NaN becomes 0); int to narrower int wraps.
pub trait Element:
    Copy + Send + Sync + PartialEq + PartialOrd + fmt::Debug + 'static + crate::buffer::BufferElement
{
    /// The dtype of this type.
    const DTYPE: DType;
    /// Converts to `f64` (exact for every type but `i64` beyond 2^53).
    fn to_f64(self) -> f64;
    /// Converts to `i64` (floats truncate and saturate, NaN becomes 0).
    fn to_i64(self) -> i64;
    /// Converts from `f64` with `as` semantics.
    fn from_f64(v: f64) -> Self;
    /// Converts from `i64` with `as` semantics (wrapping for narrower ints).
    fn from_i64(v: i64) -> Self;
    /// Zero.
    fn zero() -> Self;
    /// One.
    fn one() -> Self;
}

macro_rules! int_element {
    ($t:ty, $d:ident) => {
        impl Element for $t {
            const DTYPE: DType = DType::$d;
            #[inline(always)]
            fn to_f64(self) -> f64 {
                self as f64
            }
            #[inline(always)]
            fn to_i64(self) -> i64 {
                self as i64
            }
            #[inline(always)]
            fn from_f64(v: f64) -> Self {
                v as $t
            }
            #[inline(always)]
            fn from_i64(v: i64) -> Self {
                v as $t
            }
            #[inline(always)]
            fn zero() -> Self {
                0
            }
            #[inline(always)]
            fn one() -> Self {
                1
            }
        }
    };
}
int_element!(u8, U8);
int_element!(u32, U32);
int_element!(i32, I32);
int_element!(i64, I64);

impl Element for bool {
    const DTYPE: DType = DType::Bool;
    #[inline(always)]
    fn to_f64(self) -> f64 {
        self as u8 as f64
    }
    #[inline(always)]
    fn to_i64(self) -> i64 {
        self as i64
    }
    #[inline(always)]
    fn from_f64(v: f64) -> Self {
        v != 0.0
    }
    #[inline(always)]
    fn from_i64(v: i64) -> Self {
        v != 0
    }
    fn zero() -> Self {
        false
    }
    fn one() -> Self {
        true
    }
}

macro_rules! float_element {
    ($t:ty, $d:ident) => {
        impl Element for $t {
            const DTYPE: DType = DType::$d;
            #[inline(always)]
            fn to_f64(self) -> f64 {
                self as f64
            }
            #[inline(always)]
            fn to_i64(self) -> i64 {
                self as i64
            }
            #[inline(always)]
            fn from_f64(v: f64) -> Self {
                v as $t
            }
            #[inline(always)]
            fn from_i64(v: i64) -> Self {
                v as $t
            }
            fn zero() -> Self {
                0.0
            }
            fn one() -> Self {
                1.0
            }
        }
    };
}
float_element!(f32, F32);
float_element!(f64, F64);

/// `v` rounded to odd at `f32`'s precision: `v` where an `f32` holds it,
/// else the `f32` next to `v` toward zero with its last bit set (NaN and
/// values beyond `f32`'s range as `as` converts them). Rounding the result
/// to a format of at least two bits fewer (the 16-bit floats), ties to
/// even, rounds `v` once: the extra bits keep whether `v` was above, below
/// or at a tie, and the odd last bit that an inexact `v` is no tie.
/// Stepping an `f32`'s bits down by one steps its magnitude down to the
/// next `f32`.
pub(crate) fn f32_odd(v: f64) -> f32 {
    let f = v as f32;
    if !f.is_finite() || f64::from(f) == v {
        return f;
    }
    let bits = f.to_bits();
    let toward_zero = if f64::from(f).abs() > v.abs() { bits - 1 } else { bits };
    f32::from_bits(toward_zero | 1)
}

/// `v` rounded to odd at `f64`'s precision (see [`f32_odd`]), so that
/// [`f32_odd`] after it still rounds to odd.
pub(crate) fn f64_odd(v: i64) -> f64 {
    let f = v as f64;
    // Exact below 2^53 in magnitude (every i32, say): no check needed.
    if v.unsigned_abs() < 1 << 53 || f as i128 == i128::from(v) {
        return f;
    }
    let bits = f.to_bits();
    let toward_zero = if (f as i128).abs() > i128::from(v).abs() { bits - 1 } else { bits };
    f64::from_bits(toward_zero | 1)
}

macro_rules! half_element {
    ($t:ty, $d:ident) => {
        impl Element for $t {
            const DTYPE: DType = DType::$d;
            #[inline(always)]
            fn to_f64(self) -> f64 {
                self.to_f64()
            }
            #[inline(always)]
            fn to_i64(self) -> i64 {
                self.to_f32() as i64
            }
            /// Rounded once, ties to even: through an `f32` rounded to odd
            /// (`f32_odd`; `half`'s own `from_f64` drops the low 32 bits
            /// of the mantissa first, so a value just above a tie rounds
            /// down).
            #[inline(always)]
            fn from_f64(v: f64) -> Self {
                <$t>::from_f32(f32_odd(v))
            }
            /// Rounded once, ties to even (through an `f64` rounded to odd,
            /// `f64_odd`, then as [`Element::from_f64`]).
            #[inline(always)]
            fn from_i64(v: i64) -> Self {
                <$t>::from_f32(f32_odd(f64_odd(v)))
            }
            fn zero() -> Self {
                <$t>::ZERO
            }
            fn one() -> Self {
                <$t>::ONE
            }
        }
    };
}
half_element!(f16, F16);
half_element!(bf16, BF16);

#[cfg(test)]
mod tests {
    use super::*;
    use DType::*;

    #[test]
    fn promotion_table() {
        assert_eq!(promote(I32, F32), F32);
        assert_eq!(promote(I32, F16), F16);
        assert_eq!(promote(F16, BF16), F32);
        assert_eq!(promote(U32, I32), I64);
        assert_eq!(promote(U8, I32), I32);
        assert_eq!(promote(U8, U32), U32);
        assert_eq!(promote(Bool, U8), U8);
        assert_eq!(promote(F32, F64), F64);
        assert_eq!(promote(I64, F32), F32);
        for a in ALL_DTYPES {
            for b in ALL_DTYPES {
                assert_eq!(promote(a, b), promote(b, a), "{a} {b}");
            }
        }
    }

    #[test]
    fn weak_scalars_do_not_widen() {
        assert_eq!(promote_scalar(F16, ScalarKind::Float), F16);
        assert_eq!(promote_scalar(I32, ScalarKind::Float), F32);
        assert_eq!(promote_scalar(U8, ScalarKind::Int), U8);
        assert_eq!(promote_scalar(Bool, ScalarKind::Int), I32);
    }
}
