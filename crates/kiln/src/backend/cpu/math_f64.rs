//! `f64` `exp`, `expm1`, `log`, `log1p`, `sin`, `cos`, `tan`, `tanh` and
//! `sigmoid` written without branches or calls, so that the tile loops
//! (compiled for AVX-512 or AVX2 by `multiversion!`) vectorize them: eight
//! or four lanes at a time, where the C library computes one element per
//! call (an `f64` `tanh` ran about 30 times slower than the `f32` one,
//! whose kernels are [`simd_math`](crate::backend::simd_math)'s). Each
//! function computes every path of every lane and selects, and each meets
//! a bound tested against the C library over random and special arguments
//! (`tests/math_f64.rs`):
//!
//! | function | method | bound (ulp) |
//! |---|---|---|
//! | `exp` | `x = k ln 2 + r` (`ln 2` in two parts), Taylor series of degree 13 for `e^r`, scaled by `2^k` as two powers of two (so results that are subnormal round once) | 1 |
//! | `expm1` | `x = k ln 2 + r` (`k = 0` below 0.7): `2^k (e^r - 1) + (2^k - 1)` in one FMA, `e^r - 1` by its Taylor series to `r^18` (the leading term exact) | 1 |
//! | `log` | `x = 2^k m`, `m` in `[√½, √2)`; `log(m) = f - f²/2 + s (f²/2 + R)` with `f = m - 1`, `s = f / (2 + f)` and `R` the odd series of `2 atanh(s)` to `s^22` | 1 |
//! | `log1p` | `log(u) + (x - (u - 1)) / u` with `u = 1 + x` rounded and `log` above | 2 |
//! | `sin`, `cos`, `tan` | `x = k π/2 + (h + l)` (`π/2` in 106 bits, the remainder as a sum of two doubles), Taylor series to `h^19`/`h^20` with `l`'s first-order term; beyond [`TRIG_LIMIT`] or within 2^-30 of a nonzero multiple of `π/2`, NaN, which the tile kernel replaces by the C library's value ([`library_if_nan`]) | 1 (`tan` 2) |
//! | `tanh` | `1 - 2 / (e^{2|x|} + 1)` with `exp` above for `|x| >= 0.625`; below, its Taylor series to `x^41` (`x + x³ P(x²)`, the leading term exact) | 2 |
//! | `sigmoid` | `1 / (1 + e^{-x})` for `x >= 0`, `e^x / (1 + e^x)` below, with `exp` above | 2 |
//!
//! Special values follow the C library: NaN in, NaN out; `exp` overflows
//! to infinity above `709.78` and underflows through the subnormals to 0;
//! `log(0) = -inf`, `log` of a negative number is NaN, `log(inf) = inf`;
//! `expm1(-inf) = -1`, `log1p(-1) = -inf`; `sin`, `cos` and `tan` of an
//! infinity are NaN; signed zeros keep their sign (`tanh(-0) = -0`).

/// `ln 2` to 20 significant bits, so that `k * LN2_HI` is exact for the
/// `|k| <= 1076` that `exp` meets.
const LN2_HI: f64 = f64::from_bits(0x3fe6_2e42_0000_0000);
/// `ln 2 - LN2_HI`, rounded.
const LN2_LO: f64 = f64::from_bits(0x3e9f_df47_3de6_af28);
/// `1.5 * 2^52`: adding it rounds a value below 2^51 in magnitude to an
/// integer held in the low bits of the sum.
const ROUNDER: f64 = 6_755_399_441_055_744.0;

/// `2^n` for `n` in `[-1022, 1023]`.
#[inline(always)]
fn pow2(n: i64) -> f64 {
    f64::from_bits(((n + 1023) as u64) << 52)
}

/// `1 / n!` for `n` in `0..=18`.
const INV_FACT: [f64; 19] = {
    let mut t = [1.0f64; 19];
    let mut n = 1;
    while n < 19 {
        t[n] = t[n - 1] / n as f64;
        n += 1;
    }
    t
};

/// `e^x`.
#[inline(always)]
pub fn exp(x: f64) -> f64 {
    // Beyond these every result is infinity or 0 (NaN stays NaN).
    let x = x.clamp(-746.0, 710.0);
    let kr = x.mul_add(std::f64::consts::LOG2_E, ROUNDER);
    let k = kr - ROUNDER;
    let ki = (kr.to_bits() as i64).wrapping_sub(ROUNDER.to_bits() as i64);
    let r = k.mul_add(-LN2_HI, x);
    let r = k.mul_add(-LN2_LO, r);
    // |r| <= 0.35: the terms past r^13 / 13! are below 2^-60 relative.
    let mut p = INV_FACT[13];
    for n in (1..13).rev() {
        p = p.mul_add(r, INV_FACT[n]);
    }
    let p = p.mul_add(r, 1.0);
    // 2^k as 2^a * 2^b, each normal for k in [-1076, 1024]: the first
    // product is exact, the second rounds once (also to a subnormal).
    let a = ki >> 1;
    p * pow2(a) * pow2(ki - a)
}

/// `e^x - 1`.
#[inline(always)]
pub fn expm1(x: f64) -> f64 {
    // x = k ln 2 + r: e^x - 1 = 2^k (e^r - 1) + (2^k - 1), one FMA from
    // e^r - 1 (its Taylor series to r^18, the leading term exact) and
    // 2^k - 1 (exact for the k in [-58, 53] that x in [-40, 37] gives).
    // k is 0 below 0.7 in magnitude (2 (e^r - 1) + 1 would cancel there),
    // else the nearest integer to x / ln 2 (|r| <= 0.35). Past 37,
    // e^x - 1 rounds to e^x; below -40, to -1.
    let xc = x.clamp(-40.0, 37.0);
    let k = xc.mul_add(std::f64::consts::LOG2_E, ROUNDER) - ROUNDER;
    let k = if xc.abs() < 0.7 { 0.0 } else { k };
    let ki = ((k + ROUNDER).to_bits() as i64).wrapping_sub(ROUNDER.to_bits() as i64);
    let r = k.mul_add(-LN2_HI, xc);
    let r = k.mul_add(-LN2_LO, r);
    let mut p = INV_FACT[18];
    for n in (2..18).rev() {
        p = p.mul_add(r, INV_FACT[n]);
    }
    let er = (r * p).mul_add(r, r);
    let s = pow2(ki);
    let y = s.mul_add(er, s - 1.0);
    let y = if x > 37.0 { exp(x) } else { y };
    // -0 keeps its sign.
    let y = if x == 0.0 { x } else { y };
    // NaN stays NaN (the clamp keeps it; every comparison above is false).
    if x < -40.0 {
        -1.0
    } else {
        y
    }
}

/// `ln(1 + x)`.
#[inline(always)]
pub fn log1p(x: f64) -> f64 {
    // u = 1 + x rounded; ln(1 + x) = ln(u) + (x - (u - 1)) / u, the
    // second term the rounding's correction (0 when u is exact).
    let u = 1.0 + x;
    let c = (x - (u - 1.0)) / u;
    let y = log(u) + c;
    // ln(u) of u = 1 is 0: a tiny x is its own logarithm (and keeps the
    // sign of -0); past 2^53 the correction is nothing (and inf - inf).
    let y = if u == 1.0 { x } else { y };
    // x = -1: ln 0 (the correction would be 0 / 0).
    let y = if u == 0.0 { f64::NEG_INFINITY } else { y };
    if x == f64::INFINITY {
        x
    } else {
        y
    }
}

/// `π/2` as a sum of two doubles (106 bits).
const PIO2_HI: f64 = f64::from_bits(0x3ff9_21fb_5444_2d18);
/// The rest of `π/2` after [`PIO2_HI`], rounded.
const PIO2_LO: f64 = f64::from_bits(0x3c91_a626_3314_5c07);

/// The largest `|x|` whose sine, cosine and tangent are computed by the
/// vector code (a multiple `k` of `π/2` below 2^19); beyond it, and for an
/// argument within 2^-30 of a nonzero multiple of `π/2`, the C library
/// computes the lane.
pub const TRIG_LIMIT: f64 = 823_549.0;

/// Taylor coefficients of `sin` past `x`: of `x^3`, `x^5`, ..., `x^19`.
const SIN_SERIES: [f64; 9] = [
    -0.16666666666666666,
    0.008333333333333333,
    -0.0001984126984126984,
    2.7557319223985893e-06,
    -2.505210838544172e-08,
    1.6059043836821613e-10,
    -7.647163731819816e-13,
    2.8114572543455206e-15,
    -8.22063524662433e-18,
];

/// Taylor coefficients of `cos` past `1 - x^2/2`: of `x^4`, ..., `x^20`.
const COS_SERIES: [f64; 9] = [
    0.041666666666666664,
    -0.001388888888888889,
    2.48015873015873e-05,
    -2.755731922398589e-07,
    2.08767569878681e-09,
    -1.1470745597729725e-11,
    4.779477332387385e-14,
    -1.5619206968586225e-16,
    4.110317623312165e-19,
];

/// Horner's rule over `c` in `z` (the first coefficient is the constant term).
#[inline(always)]
fn series(c: &[f64; 9], z: f64) -> f64 {
    let mut p = c[8];
    for &k in c[..8].iter().rev() {
        p = p.mul_add(z, k);
    }
    p
}

/// `x = k π/2 + (hi + lo)`: `(hi, lo, k)`, `|hi + lo| <= π/4` (a little
/// more where `k` rounds), to about 2^-86 absolute for `|x| <=`
/// [`TRIG_LIMIT`].
#[inline(always)]
fn reduce(x: f64) -> (f64, f64, i64) {
    let kr = x.mul_add(std::f64::consts::FRAC_2_PI, ROUNDER);
    let k = kr - ROUNDER;
    let q = (kr.to_bits() as i64).wrapping_sub(ROUNDER.to_bits() as i64);
    // k PIO2_HI = p + pe exactly; x - p is exact (x and p within a
    // factor of two, or p = 0).
    let p = k * PIO2_HI;
    let pe = k.mul_add(PIO2_HI, -p);
    let t = x - p;
    let c = -k.mul_add(PIO2_LO, pe);
    // t + c as hi + lo (two-sum: t may be the smaller).
    let hi = t + c;
    let bb = hi - t;
    let lo = (t - (hi - bb)) + (c - bb);
    (hi, lo, q)
}

/// `sin(h + l)` and `cos(h + l)` for `|h| <= π/4` and `l` below an ulp of `h`.
#[inline(always)]
fn sin_cos_kernel(h: f64, l: f64) -> (f64, f64) {
    let z = h * h;
    // sin(h + l) = h + h^3 S(z) + l cos(h), cos(h) ~ 1 - z/2 for the l term.
    let s = h + (z * h).mul_add(series(&SIN_SERIES, z), l * (1.0 - 0.5 * z));
    // cos(h + l) = (1 - z/2) + z^2 C(z) - l sin(h): 1 - z/2 as w plus its
    // rounding error.
    let hz = 0.5 * z;
    let w = 1.0 - hz;
    let c = w + (((1.0 - w) - hz) + (z * z).mul_add(series(&COS_SERIES, z), -h * l));
    (s, c)
}

/// Which function of the quadrant's sine and cosine.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Trig {
    Sin,
    Cos,
    Tan,
}

/// `f(x)` by the vector reduction, or NaN for an argument the C library
/// must compute (see [`TRIG_LIMIT`]; a NaN argument gives NaN too).
#[inline(always)]
fn trig_reduced(f: Trig, x: f64) -> f64 {
    let (h, l, q) = reduce(x);
    let (s, c) = sin_cos_kernel(h, l);
    let swap = q & 1 != 0;
    let y = match f {
        Trig::Sin => {
            let v = if swap { c } else { s };
            if q & 2 != 0 {
                -v
            } else {
                v
            }
        }
        Trig::Cos => {
            let v = if swap { s } else { c };
            if (q + 1) & 2 != 0 {
                -v
            } else {
                v
            }
        }
        Trig::Tan => {
            if swap {
                -c / s
            } else {
                s / c
            }
        }
    };
    // sin(-0) and tan(-0) are -0.
    let y = if x == 0.0 && f != Trig::Cos { x } else { y };
    let library = x.abs() > TRIG_LIMIT || (q != 0 && h.abs() < 1.0 / 1_073_741_824.0);
    if library {
        f64::NAN
    } else {
        y
    }
}

/// `sin(x)` by the vector code, NaN where the C library must compute it
/// (the tile kernels fix those lanes after the vector pass).
#[inline(always)]
pub fn sin_reduced(x: f64) -> f64 {
    trig_reduced(Trig::Sin, x)
}

/// `cos(x)`, as [`sin_reduced`].
#[inline(always)]
pub fn cos_reduced(x: f64) -> f64 {
    trig_reduced(Trig::Cos, x)
}

/// `tan(x)`, as [`sin_reduced`].
#[inline(always)]
pub fn tan_reduced(x: f64) -> f64 {
    trig_reduced(Trig::Tan, x)
}

/// The sine (the vector code, or the C library beyond its range).
pub fn sin(x: f64) -> f64 {
    library_if_nan(sin_reduced(x), x, f64::sin)
}

/// The cosine (as [`sin`]).
pub fn cos(x: f64) -> f64 {
    library_if_nan(cos_reduced(x), x, f64::cos)
}

/// The tangent (as [`sin`]).
pub fn tan(x: f64) -> f64 {
    library_if_nan(tan_reduced(x), x, f64::tan)
}

/// `y`, or `f(x)` where `y` is NaN and `x` is not (a lane of a `*_reduced`
/// function left to the C library).
#[inline(always)]
pub fn library_if_nan(y: f64, x: f64, f: fn(f64) -> f64) -> f64 {
    if y.is_nan() && !x.is_nan() {
        f(x)
    } else {
        y
    }
}

/// `2^54`: the scale that makes a subnormal argument normal.
const TWO54: f64 = 18_014_398_509_481_984.0;

/// The natural logarithm.
#[inline(always)]
pub fn log(x: f64) -> f64 {
    // A subnormal argument is scaled by 2^54 first.
    let sub = x < f64::MIN_POSITIVE;
    let xs = if sub { x * TWO54 } else { x };
    let bits = xs.to_bits();
    // The exponent relative to √½: the significand m lands in [√½, √2).
    let t = bits.wrapping_sub(0x3fe6_a09e_667f_3bcd) as i64;
    let k = (t >> 52) - if sub { 54 } else { 0 };
    let m = f64::from_bits(bits.wrapping_sub(t as u64 & 0xfff0_0000_0000_0000));
    let f = m - 1.0;
    let s = f / (2.0 + f);
    let z = s * s;
    // R = 2 s^2/3 + 2 s^4/5 + ... + 2 s^22/23 (|s| <= 0.172: the rest is
    // below 2^-60 relative to log).
    let mut r = 2.0f64 / 23.0;
    for n in (1..11).rev() {
        r = r.mul_add(z, 2.0 / (2 * n + 1) as f64);
    }
    let r = r * z;
    let hfsq = 0.5 * f * f;
    // k as f64 through the rounder (a conversion of 64-bit integers is
    // not in AVX-512F or AVX2).
    let kf = f64::from_bits(ROUNDER.to_bits().wrapping_add(k as u64)) - ROUNDER;
    let lo = s.mul_add(hfsq + r, kf * LN2_LO);
    let y = kf.mul_add(LN2_HI, f - (hfsq - lo));
    let y = if x == f64::INFINITY { x } else { y };
    let y = if x == 0.0 { f64::NEG_INFINITY } else { y };
    // Negative arguments and NaN.
    if x >= 0.0 {
        y
    } else {
        f64::NAN
    }
}

/// The Taylor coefficients of `tanh` past `x`: of `x^3`, `x^5`, ...,
/// `x^41` (`2^2n (2^2n - 1) B_2n / (2n)!`); below 0.625 the rest is under
/// 2^-56 relative.
const TANH_SERIES: [f64; 20] = [
    -0.3333333333333333,
    0.13333333333333333,
    -0.05396825396825397,
    0.021869488536155203,
    -0.008863235529902197,
    0.003592128036572481,
    -0.0014558343870513183,
    0.000590027440945586,
    -0.00023912911424355248,
    9.691537956929451e-05,
    -3.927832388331683e-05,
    1.5918905069328964e-05,
    -6.451689215655431e-06,
    2.6147711512907546e-06,
    -1.0597268320104654e-06,
    4.294911078273806e-07,
    -1.7406618963571648e-07,
    7.054636946400968e-08,
    -2.859136662305254e-08,
    1.1587644432798853e-08,
];

/// The hyperbolic tangent.
#[inline(always)]
pub fn tanh(x: f64) -> f64 {
    let a = x.abs().min(20.0);
    // From 0.625: 1 - 2 / (e^(2a) + 1), the subtracted part at most 0.45
    // (past 20 it is below 2^-56). Below: a + a^3 P(a^2), the leading
    // term exact.
    let big = 1.0 - 2.0 / (exp(2.0 * a) + 1.0);
    let z = a * a;
    let mut p = TANH_SERIES[19];
    for &c in TANH_SERIES[..19].iter().rev() {
        p = p.mul_add(z, c);
    }
    let small = (a * z).mul_add(p, a);
    let y = (if a >= 0.625 { big } else { small }).copysign(x);
    if x.is_nan() {
        x
    } else {
        y
    }
}

/// `1 / (1 + e^-x)` for `x >= 0`, `e^x / (1 + e^x)` below (no overflow on
/// either side).
#[inline(always)]
pub fn sigmoid(x: f64) -> f64 {
    let e = exp(-x.abs());
    let pos = 1.0 / (1.0 + e);
    let neg = e / (1.0 + e);
    if x >= 0.0 {
        pos
    } else {
        neg
    }
}
