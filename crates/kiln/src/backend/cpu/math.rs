//! Scalar math shared by the elementwise kernels: one definition of each op
//! for every float type ([`FloatMath`]; `f16`/`bf16` compute in `f32` and
//! round once) and every integer type ([`IntMath`]).
//!
//! Integer semantics (documented in the crate docs and tested):
//! arithmetic wraps on overflow (two's complement); division and remainder
//! by zero give 0 (as NumPy); `i32::MIN / -1` wraps to `i32::MIN`; a negative
//! integer exponent gives `1` for base 1, `±1` for base -1 and 0 otherwise.

use half::{bf16, f16};

use crate::backend::cpu::half_conv::Half;
use crate::dtype::Element;

/// Float operations used by the kernels.
pub trait FloatMath: Element {
    /// Applies an `f64 -> f64`-shaped op through the type's compute precision.
    fn lift(self, f32op: impl Fn(f32) -> f32, f64op: impl Fn(f64) -> f64) -> Self;
    /// Combines two values through the compute precision.
    fn lift2(self, o: Self, f32op: impl Fn(f32, f32) -> f32, f64op: impl Fn(f64, f64) -> f64) -> Self;
    /// NaN test.
    fn is_nan_(self) -> bool;
    /// Infinity test.
    fn is_inf_(self) -> bool;
}

impl FloatMath for f32 {
    #[inline(always)]
    fn lift(self, f32op: impl Fn(f32) -> f32, _: impl Fn(f64) -> f64) -> Self {
        f32op(self)
    }
    #[inline(always)]
    fn lift2(self, o: Self, f32op: impl Fn(f32, f32) -> f32, _: impl Fn(f64, f64) -> f64) -> Self {
        f32op(self, o)
    }
    #[inline(always)]
    fn is_nan_(self) -> bool {
        self.is_nan()
    }
    #[inline(always)]
    fn is_inf_(self) -> bool {
        self.is_infinite()
    }
}

impl FloatMath for f64 {
    #[inline(always)]
    fn lift(self, _: impl Fn(f32) -> f32, f64op: impl Fn(f64) -> f64) -> Self {
        f64op(self)
    }
    #[inline(always)]
    fn lift2(self, o: Self, _: impl Fn(f32, f32) -> f32, f64op: impl Fn(f64, f64) -> f64) -> Self {
        f64op(self, o)
    }
    #[inline(always)]
    fn is_nan_(self) -> bool {
        self.is_nan()
    }
    #[inline(always)]
    fn is_inf_(self) -> bool {
        self.is_infinite()
    }
}

macro_rules! half_math {
    ($t:ty) => {
        // Computed in `f32` and rounded back (through `half_conv`, which
        // the tile loops vectorize).
        impl FloatMath for $t {
            #[inline(always)]
            fn lift(self, f32op: impl Fn(f32) -> f32, _: impl Fn(f64) -> f64) -> Self {
                <$t>::narrow(f32op(self.widen()))
            }
            #[inline(always)]
            fn lift2(self, o: Self, f32op: impl Fn(f32, f32) -> f32, _: impl Fn(f64, f64) -> f64) -> Self {
                <$t>::narrow(f32op(self.widen(), o.widen()))
            }
            #[inline(always)]
            fn is_nan_(self) -> bool {
                self.is_nan()
            }
            #[inline(always)]
            fn is_inf_(self) -> bool {
                self.is_infinite()
            }
        }
    };
}
half_math!(f16);
half_math!(bf16);

/// Sign with NumPy's conventions: -1, 0 (for ±0) or 1; NaN stays NaN.
#[inline(always)]
pub fn sign_f64(x: f64) -> f64 {
    if x > 0.0 {
        1.0
    } else if x < 0.0 {
        -1.0
    } else {
        x
    }
}

/// Sign for f32 (see [`sign_f64`]).
#[inline(always)]
pub fn sign_f32(x: f32) -> f32 {
    if x > 0.0 {
        1.0
    } else if x < 0.0 {
        -1.0
    } else {
        x
    }
}

/// Logistic sigmoid for f32.
#[inline(always)]
pub fn sigmoid_f32(x: f32) -> f32 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

macro_rules! float_divmod {
    ($t:ty, $divmod:ident, $floordiv:ident, $rem:ident) => {
        /// Python's `divmod` for floats (NumPy's `npy_divmod`): the floor
        /// quotient and the remainder with the divisor's sign, such that
        /// `a == b * q + r` as closely as rounding allows. The quotient is
        /// computed from `a - fmod(a, b)` (an exact multiple of `b`), so
        /// `1.0 // 0.1` is 9 as in Python, not `floor(1.0 / 0.1) = 10`.
        /// Division by zero gives `a / b` and NaN; a zero remainder has the
        /// divisor's sign.
        #[inline(always)]
        pub fn $divmod(a: $t, b: $t) -> ($t, $t) {
            let mut m = a % b;
            if b == 0.0 {
                return (a / b, m);
            }
            let mut div = (a - m) / b;
            if m != 0.0 {
                if (b < 0.0) != (m < 0.0) {
                    m += b;
                    div -= 1.0;
                }
            } else {
                m = (0.0 as $t).copysign(b);
            }
            let q = if div != 0.0 {
                let f = div.floor();
                // Snap to the nearest integer: `div` is very nearly one.
                if div - f > 0.5 {
                    f + 1.0
                } else {
                    f
                }
            } else {
                (0.0 as $t).copysign(a / b)
            };
            (q, m)
        }

        /// Python's `//` for floats (see the `divmod` function above).
        #[inline(always)]
        pub fn $floordiv(a: $t, b: $t) -> $t {
            $divmod(a, b).0
        }

        /// Python's `%` for floats: the result has the sign of the divisor.
        #[inline(always)]
        pub fn $rem(a: $t, b: $t) -> $t {
            $divmod(a, b).1
        }
    };
}
float_divmod!(f64, divmod_f64, floordiv_f64, rem_f64);
float_divmod!(f32, divmod_f32, floordiv_f32, rem_f32);

/// NaN-propagating maximum.
#[inline(always)]
pub fn max_nan<T: PartialOrd + Copy>(a: T, b: T, a_nan: bool) -> T {
    if a_nan || a > b {
        a
    } else if b > a {
        b
    } else if a == b {
        a
    } else {
        b // b is NaN
    }
}

/// NaN-propagating minimum.
#[inline(always)]
pub fn min_nan<T: PartialOrd + Copy>(a: T, b: T, a_nan: bool) -> T {
    if a_nan || a < b {
        a
    } else if b < a {
        b
    } else if a == b {
        a
    } else {
        b
    }
}

/// Integer operations used by the kernels (wrapping, division by zero is 0).
pub trait IntMath: Element + Ord {
    /// Wrapping addition.
    fn add_(self, o: Self) -> Self;
    /// Wrapping subtraction.
    fn sub_(self, o: Self) -> Self;
    /// Wrapping multiplication.
    fn mul_(self, o: Self) -> Self;
    /// Floor division; 0 when dividing by zero.
    fn floordiv_(self, o: Self) -> Self;
    /// Remainder with the divisor's sign; 0 when dividing by zero.
    fn rem_(self, o: Self) -> Self;
    /// Wrapping negation.
    fn neg_(self) -> Self;
    /// Wrapping absolute value.
    fn abs_(self) -> Self;
    /// -1, 0 or 1.
    fn sign_(self) -> Self;
    /// Wrapping power; see the module docs for negative exponents.
    fn pow_(self, e: Self) -> Self;
}

macro_rules! signed_int_math {
    ($t:ty) => {
        impl IntMath for $t {
            #[inline(always)]
            fn add_(self, o: Self) -> Self {
                self.wrapping_add(o)
            }
            #[inline(always)]
            fn sub_(self, o: Self) -> Self {
                self.wrapping_sub(o)
            }
            #[inline(always)]
            fn mul_(self, o: Self) -> Self {
                self.wrapping_mul(o)
            }
            #[inline(always)]
            fn floordiv_(self, o: Self) -> Self {
                if o == 0 {
                    return 0;
                }
                let q = self.wrapping_div(o);
                if (self.wrapping_rem(o) != 0) && ((self < 0) != (o < 0)) {
                    q - 1
                } else {
                    q
                }
            }
            #[inline(always)]
            fn rem_(self, o: Self) -> Self {
                if o == 0 {
                    return 0;
                }
                let r = self.wrapping_rem(o);
                if r != 0 && ((r < 0) != (o < 0)) {
                    r + o
                } else {
                    r
                }
            }
            #[inline(always)]
            fn neg_(self) -> Self {
                self.wrapping_neg()
            }
            #[inline(always)]
            fn abs_(self) -> Self {
                self.wrapping_abs()
            }
            #[inline(always)]
            fn sign_(self) -> Self {
                self.signum()
            }
            #[inline(always)]
            fn pow_(self, e: Self) -> Self {
                if e < 0 {
                    return match self {
                        1 => 1,
                        -1 => {
                            if e % 2 == 0 {
                                1
                            } else {
                                -1
                            }
                        }
                        _ => 0,
                    };
                }
                let mut base = self;
                let mut e = e;
                let mut acc: $t = 1;
                while e > 0 {
                    if e & 1 == 1 {
                        acc = acc.wrapping_mul(base);
                    }
                    base = base.wrapping_mul(base);
                    e >>= 1;
                }
                acc
            }
        }
    };
}
signed_int_math!(i32);
signed_int_math!(i64);

macro_rules! unsigned_int_math {
    ($t:ty) => {
        impl IntMath for $t {
            #[inline(always)]
            fn add_(self, o: Self) -> Self {
                self.wrapping_add(o)
            }
            #[inline(always)]
            fn sub_(self, o: Self) -> Self {
                self.wrapping_sub(o)
            }
            #[inline(always)]
            fn mul_(self, o: Self) -> Self {
                self.wrapping_mul(o)
            }
            #[inline(always)]
            fn floordiv_(self, o: Self) -> Self {
                self.checked_div(o).unwrap_or(0)
            }
            #[inline(always)]
            fn rem_(self, o: Self) -> Self {
                self.checked_rem(o).unwrap_or(0)
            }
            #[inline(always)]
            fn neg_(self) -> Self {
                self.wrapping_neg()
            }
            #[inline(always)]
            fn abs_(self) -> Self {
                self
            }
            #[inline(always)]
            fn sign_(self) -> Self {
                (self > 0) as $t
            }
            #[inline(always)]
            fn pow_(self, e: Self) -> Self {
                self.wrapping_pow(e.min(u32::MAX as $t) as u32)
            }
        }
    };
}
unsigned_int_math!(u8);
unsigned_int_math!(u32);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integer_edge_cases() {
        assert_eq!(7i32.floordiv_(-2), -4);
        assert_eq!((-7i32).rem_(2), 1);
        assert_eq!(5i32.floordiv_(0), 0);
        assert_eq!(5u8.rem_(0), 0);
        assert_eq!(i32::MIN.floordiv_(-1), i32::MIN);
        assert_eq!(i32::MAX.add_(1), i32::MIN);
        assert_eq!(2i32.pow_(-1), 0);
        assert_eq!((-1i64).pow_(-3), -1);
        assert_eq!(3i64.pow_(4), 81);
        assert_eq!(2u8.pow_(9), 0);
    }
}
