//! Shared helpers for the integration tests: a deterministic RNG, element
//! conversions that do not go through kiln, strided-view builders made with
//! kiln's own shape ops, f64 reference helpers and tolerant comparison.
#![allow(dead_code)]

pub mod ulp;

use std::fmt::Debug;

use half::{bf16, f16};
use kiln::{Array, DType, Element, Result};

// ---------------------------------------------------------------- rng

/// A small deterministic xorshift generator (tests must be reproducible).
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed (any value).
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// Uniform in `[lo, hi)`.
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        let u = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        lo + (hi - lo) * u
    }

    /// Uniform integer in `[lo, hi]`.
    pub fn int(&mut self, lo: i64, hi: i64) -> i64 {
        let span = (hi as i128 - lo as i128 + 1) as u128;
        (lo as i128 + (self.next_u64() as u128 % span) as i128) as i64
    }

    /// One element of `xs`.
    pub fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[(self.next_u64() % xs.len() as u64) as usize]
    }

    /// `n` values in `[lo, hi)`; about half of them are snapped to a
    /// multiple of 0.25 (when that stays in range) so exact and tie cases
    /// (x.5 for rounding) show up.
    pub fn floats(&mut self, n: usize, lo: f64, hi: f64) -> Vec<f64> {
        (0..n)
            .map(|_| {
                let u = self.uniform(lo, hi);
                let q = (u * 4.0).round() / 4.0;
                if self.next_u64().is_multiple_of(2) && q >= lo && q < hi {
                    q
                } else {
                    u
                }
            })
            .collect()
    }

    /// [`floats`](Rng::floats) rounded to `f32`.
    pub fn floats_f32(&mut self, n: usize, lo: f64, hi: f64) -> Vec<f32> {
        self.floats(n, lo, hi).into_iter().map(|v| v as f32).collect()
    }
}

// ---------------------------------------------------------------- element conversions

/// A float element type with conversions written with `as` and `half`,
/// independent of kiln's own conversion code.
pub trait TestFloat: Element + Debug {
    /// The dtype.
    const DT: DType;
    /// Machine epsilon (spacing of values at 1).
    const EPS: f64;
    /// Smallest positive subnormal.
    const TINY: f64;
    /// Nearest value of this type.
    fn of(x: f64) -> Self;
    /// Exact value as f64.
    fn f(self) -> f64;
    /// Nearest value to an integer (for f16/bf16 through f64, exact below 2^53).
    fn from_int(v: i128) -> Self;
}

impl TestFloat for f32 {
    const DT: DType = DType::F32;
    const EPS: f64 = f32::EPSILON as f64;
    const TINY: f64 = 1.401298464324817e-45;
    fn of(x: f64) -> Self {
        x as f32
    }
    fn f(self) -> f64 {
        self as f64
    }
    fn from_int(v: i128) -> Self {
        v as f32
    }
}

impl TestFloat for f64 {
    const DT: DType = DType::F64;
    const EPS: f64 = f64::EPSILON;
    const TINY: f64 = 5e-324;
    fn of(x: f64) -> Self {
        x
    }
    fn f(self) -> f64 {
        self
    }
    fn from_int(v: i128) -> Self {
        v as f64
    }
}

impl TestFloat for f16 {
    const DT: DType = DType::F16;
    const EPS: f64 = 0.0009765625; // 2^-10
    const TINY: f64 = 5.960464477539063e-8; // 2^-24
    fn of(x: f64) -> Self {
        f16::from_f64(x)
    }
    fn f(self) -> f64 {
        self.to_f64()
    }
    fn from_int(v: i128) -> Self {
        f16::from_f64(v as f64)
    }
}

impl TestFloat for bf16 {
    const DT: DType = DType::BF16;
    const EPS: f64 = 0.0078125; // 2^-7
    const TINY: f64 = 9.183549615799121e-41; // 2^-133
    fn of(x: f64) -> Self {
        bf16::from_f64(x)
    }
    fn f(self) -> f64 {
        self.to_f64()
    }
    fn from_int(v: i128) -> Self {
        bf16::from_f64(v as f64)
    }
}

/// An integer element type with wrapping conversions from `i128`.
pub trait TestInt: Element + Debug + Ord {
    /// The dtype.
    const DT: DType;
    /// Smallest value.
    const LO: i128;
    /// Largest value.
    const HI: i128;
    /// The value modulo 2^bits (two's complement), as an `as` cast does.
    fn wrap(v: i128) -> Self;
    /// The exact value.
    fn i(self) -> i128;
    /// Rust's `as` from f64: truncates toward zero, saturates, NaN is 0.
    fn sat(x: f64) -> Self;
}

macro_rules! test_int {
    ($t:ty, $d:ident) => {
        impl TestInt for $t {
            const DT: DType = DType::$d;
            const LO: i128 = <$t>::MIN as i128;
            const HI: i128 = <$t>::MAX as i128;
            fn wrap(v: i128) -> Self {
                v as $t
            }
            fn i(self) -> i128 {
                self as i128
            }
            fn sat(x: f64) -> Self {
                x as $t
            }
        }
    };
}
test_int!(u8, U8);
test_int!(u32, U32);
test_int!(i32, I32);
test_int!(i64, I64);

/// Relative and absolute tolerance for results of dtype `dt` computed by a
/// single correctly-rounded-ish operation (a few ulps).
pub fn tol(dt: DType) -> (f64, f64) {
    match dt {
        DType::F16 => (2.0 * <f16 as TestFloat>::EPS, 2.0 * <f16 as TestFloat>::TINY),
        DType::BF16 => (2.0 * <bf16 as TestFloat>::EPS, 2.0 * <bf16 as TestFloat>::TINY),
        DType::F32 => (4.0 * <f32 as TestFloat>::EPS, 4.0 * <f32 as TestFloat>::TINY),
        DType::F64 => (1e-14, 1e-300),
        _ => (0.0, 0.0),
    }
}

/// True when `got` matches `want`: both NaN, equal infinities, or within
/// `atol + rtol * |want|`.
pub fn close(got: f64, want: f64, rtol: f64, atol: f64) -> bool {
    if want.is_nan() {
        return got.is_nan();
    }
    if want.is_infinite() || got.is_infinite() {
        return got == want;
    }
    (got - want).abs() <= atol + rtol * want.abs()
}

/// Like [`close`] and, when `want` is a zero, also the same sign of zero.
pub fn close_signed(got: f64, want: f64, rtol: f64, atol: f64) -> bool {
    if want == 0.0 {
        return got == 0.0 && got.is_sign_negative() == want.is_sign_negative();
    }
    close(got, want, rtol, atol)
}

/// Reads a float array as f64 values (checking its dtype first).
pub fn read_f<T: TestFloat>(a: &Array) -> Vec<f64> {
    assert_eq!(a.dtype(), T::DT, "dtype of {a:?}");
    a.to_vec::<T>().expect("to_vec").into_iter().map(|v| v.f()).collect()
}

/// Asserts elementwise closeness of a float result (of type `T`) to f64
/// references (rounded to `T` first), with the inputs in the message.
pub fn assert_close<T: TestFloat>(
    got: &Array,
    want: &[f64],
    signed_zero: bool,
    ctx: &str,
    inputs: &dyn Fn(usize) -> String,
) {
    let g = read_f::<T>(got);
    assert_eq!(g.len(), want.len(), "{ctx}: length");
    let (rtol, atol) = tol(T::DT);
    for (i, (&g, &w)) in g.iter().zip(want).enumerate() {
        let w = T::of(w).f();
        let ok = if signed_zero { close_signed(g, w, rtol, atol) } else { close(g, w, rtol, atol) };
        assert!(ok, "{ctx} [{}]: element {i} with input {}: got {g:e}, want {w:e}", T::DT, inputs(i));
    }
}

// ---------------------------------------------------------------- views

/// How a 2-D test operand is laid out in memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum View {
    /// Row-major, offset 0.
    Contiguous,
    /// The transpose of a row-major (c, r) array.
    Transposed,
    /// Rows reversed and every other column taken backwards (negative
    /// strides, a nonzero offset, non-unit inner stride).
    Reversed,
    /// One row broadcast down (outer stride 0).
    BroadcastRow,
    /// One column broadcast across (inner stride 0).
    BroadcastCol,
}

/// Every view kind.
pub const VIEWS: [View; 5] =
    [View::Contiguous, View::Transposed, View::Reversed, View::BroadcastRow, View::BroadcastCol];

/// An array of logical shape `(r, c)` laid out as `view`, built from the
/// row-major `vals` (length `r * c`) with kiln's own shape ops, and the
/// row-major values it logically holds (broadcast views repeat the first
/// row or column of `vals`). `filler` fills the unused buffer slots.
pub fn make_view<T: Element>(view: View, vals: &[T], r: usize, c: usize, filler: T) -> Result<(Array, Vec<T>)> {
    assert_eq!(vals.len(), r * c);
    match view {
        View::Contiguous => Ok((Array::from_slice(vals, &[r, c])?, vals.to_vec())),
        View::Transposed => {
            let mut base = vec![filler; r * c];
            for i in 0..r {
                for j in 0..c {
                    base[j * r + i] = vals[i * c + j];
                }
            }
            let a = Array::from_vec(base, &[c, r])?.t()?;
            Ok((a, vals.to_vec()))
        }
        View::Reversed => {
            let w = 2 * c;
            let mut base = vec![filler; r * w];
            for i in 0..r {
                for j in 0..c {
                    base[(r - 1 - i) * w + (w - 1 - 2 * j)] = vals[i * c + j];
                }
            }
            let b = Array::from_vec(base, &[r, w])?;
            let b = kiln::slice_axis(&b, 0, None, None, -1)?;
            let a = kiln::slice_axis(&b, 1, Some(-1), None, -2)?;
            Ok((a, vals.to_vec()))
        }
        View::BroadcastRow => {
            let row: Vec<T> = if r == 0 { vec![filler; c] } else { vals[..c].to_vec() };
            let a = Array::from_slice(&row, &[1, c])?.broadcast_to(&[r, c])?;
            let logical = (0..r).flat_map(|_| row.iter().copied()).collect();
            Ok((a, logical))
        }
        View::BroadcastCol => {
            let col: Vec<T> = if c == 0 { vec![filler; r] } else { (0..r).map(|i| vals[i * c]).collect() };
            let a = Array::from_slice(&col, &[r, 1])?.broadcast_to(&[r, c])?;
            let logical = (0..r).flat_map(|i| std::iter::repeat_n(col[i], c)).collect();
            Ok((a, logical))
        }
    }
}

// ---------------------------------------------------------------- f64 references

/// Round half to even, written out (not via the standard library's
/// `round_ties_even`); a zero result keeps the sign of `x`.
pub fn round_half_even(x: f64) -> f64 {
    if !x.is_finite() {
        return x;
    }
    let f = x.floor();
    let d = x - f;
    let r = if d < 0.5 {
        f
    } else if d > 0.5 {
        f + 1.0
    } else if f % 2.0 == 0.0 {
        f
    } else {
        f + 1.0
    };
    if r == 0.0 {
        0.0f64.copysign(x)
    } else {
        r
    }
}

/// The error function to about 1e-15: a positive-term series for
/// |x| < 2.5 and `1 - erfc` from a continued fraction beyond.
pub fn erf_ref(x: f64) -> f64 {
    if x.is_nan() {
        return x;
    }
    let a = x.abs();
    if a == 0.0 {
        return x;
    }
    let two_over_sqrt_pi = std::f64::consts::FRAC_2_SQRT_PI;
    let v = if a < 2.5 {
        // erf(a) = 2/sqrt(pi) * exp(-a^2) * sum_n (2a^2)^n a / (1*3*...*(2n+1))
        let mut term = a;
        let mut sum = a;
        let mut n = 0.0;
        while term > sum * 1e-18 {
            n += 1.0;
            term *= 2.0 * a * a / (2.0 * n + 1.0);
            sum += term;
        }
        two_over_sqrt_pi * (-a * a).exp() * sum
    } else if a > 6.0 {
        1.0
    } else {
        // erfc(a) = exp(-a^2)/sqrt(pi) * 1/(a + 1/2/(a + 1/(a + 3/2/(a + ...)))), by Lentz.
        let tiny = 1e-300;
        let mut f = a;
        let mut c = a;
        let mut d = 0.0;
        for k in 1..400 {
            let an = k as f64 / 2.0;
            d = a + an * d;
            d = if d == 0.0 { tiny } else { 1.0 / d };
            c = a + an / c;
            let delta = c * d;
            f *= delta;
            if (delta - 1.0).abs() < 1e-17 {
                break;
            }
        }
        1.0 - (-a * a).exp() / f * (two_over_sqrt_pi / 2.0)
    };
    v.copysign(x)
}

/// Logistic sigmoid `1 / (1 + e^-x)`.
pub fn sigmoid_ref(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// Sign: -1, 1, or x itself for zeros and NaN.
pub fn sign_ref(x: f64) -> f64 {
    if x > 0.0 {
        1.0
    } else if x < 0.0 {
        -1.0
    } else {
        x
    }
}

/// Exact `floor(a / b)` for finite values of moderate size (the f64
/// quotient is corrected with an exactly-signed fused remainder). Special
/// values follow NumPy: `x // 0` is `x / 0`, `inf // y` is NaN (y != 0),
/// `1 // inf` is 0 and `-1 // inf` is -1.
pub fn floor_div_ref(a: f64, b: f64) -> f64 {
    if b == 0.0 {
        return a / b;
    }
    if a.is_nan() || b.is_nan() || a.is_infinite() {
        return f64::NAN;
    }
    if b.is_infinite() {
        return if a == 0.0 || (a > 0.0) == (b > 0.0) { 0.0f64.copysign(a / b) } else { -1.0 };
    }
    let mut q = (a / b).floor();
    // r = a - q*b with one rounding: its sign is exact.
    let r = (-q).mul_add(b, a);
    if (b > 0.0 && r < 0.0) || (b < 0.0 && r > 0.0) {
        q -= 1.0;
    } else {
        let r1 = (-(q + 1.0)).mul_add(b, a);
        if r1 == 0.0 || (b > 0.0 && r1 > 0.0) || (b < 0.0 && r1 < 0.0) {
            q += 1.0;
        }
    }
    if q == 0.0 {
        0.0f64.copysign(a / b)
    } else {
        q
    }
}

/// Python's `%` for floats: the remainder has the divisor's sign (a zero
/// remainder is a zero with the divisor's sign); NaN for a zero divisor.
pub fn rem_ref(a: f64, b: f64) -> f64 {
    let r = a % b; // fmod is exact
    if r.is_nan() {
        return r;
    }
    if r == 0.0 {
        return 0.0f64.copysign(b);
    }
    if (r < 0.0) != (b < 0.0) {
        r + b
    } else {
        r
    }
}

/// Python's `//` for integers (exact in i128); 0 for a zero divisor.
pub fn int_floor_div_ref(a: i128, b: i128) -> i128 {
    if b == 0 {
        return 0;
    }
    let (a, b) = if b < 0 { (-a, -b) } else { (a, b) };
    a.div_euclid(b)
}

/// Python's `%` for integers (exact in i128); 0 for a zero divisor.
pub fn int_rem_ref(a: i128, b: i128) -> i128 {
    if b == 0 {
        return 0;
    }
    a - b * int_floor_div_ref(a, b)
}

/// NumPy's broadcast of two shapes, or `None` when they are incompatible.
pub fn broadcast_shape_ref(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let n = a.len().max(b.len());
    let get = |s: &[usize], i: usize| if i + s.len() >= n { s[i + s.len() - n] } else { 1 };
    (0..n)
        .map(|i| match (get(a, i), get(b, i)) {
            (x, y) if x == y => Some(x),
            (1, y) => Some(y),
            (x, 1) => Some(x),
            _ => None,
        })
        .collect()
}

/// Row-major values of `vals` (shape `from`) broadcast to `to`.
pub fn broadcast_ref<T: Copy>(vals: &[T], from: &[usize], to: &[usize]) -> Vec<T> {
    let n: usize = to.iter().product();
    let off = to.len() - from.len();
    let mut out = Vec::with_capacity(n);
    let mut idx = vec![0usize; to.len()];
    for _ in 0..n {
        let mut lin = 0;
        for (k, &d) in from.iter().enumerate() {
            let i = if d == 1 { 0 } else { idx[off + k] };
            lin = lin * d + i;
        }
        out.push(vals[lin]);
        for k in (0..to.len()).rev() {
            idx[k] += 1;
            if idx[k] < to[k] {
                break;
            }
            idx[k] = 0;
        }
    }
    out
}

/// Asserts that `r` is an error whose message contains every one of `needles`.
pub fn assert_err_contains<T: Debug>(r: Result<T>, needles: &[&str]) -> kiln::Error {
    let e = match r {
        Ok(v) => panic!("expected an error containing {needles:?}, got Ok({v:?})"),
        Err(e) => e,
    };
    let m = e.to_string();
    for n in needles {
        assert!(m.contains(n), "error message {m:?} should contain {n:?}");
    }
    e
}

/// The values of an array of any dtype as f64 (bool as 0/1; integers
/// beyond 2^53 are rounded, use [`values_i128`] for exact integers).
pub fn values_f64(a: &Array) -> Vec<f64> {
    match a.dtype() {
        DType::Bool => a.to_vec::<bool>().unwrap().into_iter().map(|v| v as u8 as f64).collect(),
        DType::U8 => a.to_vec::<u8>().unwrap().into_iter().map(|v| v as f64).collect(),
        DType::U32 => a.to_vec::<u32>().unwrap().into_iter().map(|v| v as f64).collect(),
        DType::I32 => a.to_vec::<i32>().unwrap().into_iter().map(|v| v as f64).collect(),
        DType::I64 => a.to_vec::<i64>().unwrap().into_iter().map(|v| v as f64).collect(),
        DType::F16 => read_f::<f16>(a),
        DType::BF16 => read_f::<bf16>(a),
        DType::F32 => read_f::<f32>(a),
        DType::F64 => read_f::<f64>(a),
    }
}

/// The values of a bool or integer array, exactly.
pub fn values_i128(a: &Array) -> Vec<i128> {
    match a.dtype() {
        DType::Bool => a.to_vec::<bool>().unwrap().into_iter().map(|v| v as i128).collect(),
        DType::U8 => a.to_vec::<u8>().unwrap().into_iter().map(|v| v as i128).collect(),
        DType::U32 => a.to_vec::<u32>().unwrap().into_iter().map(|v| v as i128).collect(),
        DType::I32 => a.to_vec::<i32>().unwrap().into_iter().map(|v| v as i128).collect(),
        DType::I64 => a.to_vec::<i64>().unwrap().into_iter().map(|v| v as i128).collect(),
        d => panic!("values_i128 of a {d} array"),
    }
}

/// An array of dtype `dt` holding small integer values (bool: nonzero),
/// built directly from typed Rust values (no kiln conversion).
pub fn small_array(dt: DType, vals: &[i64], shape: &[usize]) -> Array {
    let r = match dt {
        DType::Bool => Array::from_vec(vals.iter().map(|&v| v != 0).collect(), shape),
        DType::U8 => Array::from_vec(vals.iter().map(|&v| v as u8).collect(), shape),
        DType::U32 => Array::from_vec(vals.iter().map(|&v| v as u32).collect(), shape),
        DType::I32 => Array::from_vec(vals.iter().map(|&v| v as i32).collect(), shape),
        DType::I64 => Array::from_vec(vals.to_vec(), shape),
        DType::F16 => Array::from_vec(vals.iter().map(|&v| f16::from_f64(v as f64)).collect(), shape),
        DType::BF16 => Array::from_vec(vals.iter().map(|&v| bf16::from_f64(v as f64)).collect(), shape),
        DType::F32 => Array::from_vec(vals.iter().map(|&v| v as f32).collect(), shape),
        DType::F64 => Array::from_vec(vals.iter().map(|&v| v as f64).collect(), shape),
    };
    r.expect("valid test array")
}

// ---------------------------------------------------------------- rounding model

/// `m * 2^e` (`m` nonzero, below 2^64) rounded once, ties to even, to a
/// float format of `p` significant bits whose smallest subnormal is
/// `2^min_exp` and whose values stop below `2^max_exp` (beyond: infinity),
/// in integer arithmetic: an independent model of a correct cast.
pub fn round_model(negative: bool, m: u64, e: i32, p: u32, min_exp: i32, max_exp: i32) -> f64 {
    let top = 63 - m.leading_zeros() as i32 + e;
    // The step of the format's values at this magnitude.
    let q = (top - (p as i32 - 1)).max(min_exp);
    let rounded: u128 = if e >= q {
        u128::from(m) << (e - q)
    } else {
        let s = (q - e) as u32;
        if s > 64 {
            0
        } else {
            let m = u128::from(m);
            let (kept, rest, half) = (m >> s, m & ((1u128 << s) - 1), 1u128 << (s - 1));
            if rest > half || (rest == half && kept & 1 == 1) {
                kept + 1
            } else {
                kept
            }
        }
    };
    let v = rounded as f64 * 2f64.powi(q);
    let v = if v >= 2f64.powi(max_exp) { f64::INFINITY } else { v };
    if negative {
        -v
    } else {
        v
    }
}

/// Significant bits, smallest subnormal's exponent, and the exponent
/// from which values overflow, of a 16-bit float dtype.
pub fn format_of(dtype: DType) -> (u32, i32, i32) {
    if dtype == DType::F16 {
        (11, -24, 16)
    } else {
        (8, -133, 128)
    }
}

/// [`round_model`] of a finite nonzero `f64` for `dtype` (F16 or BF16).
pub fn float_model(v: f64, dtype: DType) -> f64 {
    let (p, min_exp, max_exp) = format_of(dtype);
    let bits = v.to_bits();
    let (exp, frac) = (((bits >> 52) & 0x7ff) as i32, bits & ((1 << 52) - 1));
    let (m, e) = if exp == 0 { (frac, -1074) } else { (frac | 1 << 52, exp - 1075) };
    round_model(v < 0.0, m, e, p, min_exp, max_exp)
}

/// [`round_model`] of an integer for `dtype` (F16 or BF16).
pub fn int_model(v: i64, dtype: DType) -> f64 {
    let (p, min_exp, max_exp) = format_of(dtype);
    if v == 0 {
        return 0.0;
    }
    round_model(v < 0, v.unsigned_abs(), 0, p, min_exp, max_exp)
}
