//! Ulp measurement of the `f32` transcendental functions against `f64`
//! references (`libm::erf` for erf), and the input sweeps the accuracy
//! tests run: every finite `f32` at a stride, dense linear sweeps of each
//! function's interesting domain, random bit patterns.

use kiln::backend::cpu::simd_math::{Func, TRIG_LIMIT};

/// The f64 reference for `f`.
pub fn reference(f: Func, x: f64) -> f64 {
    match f {
        Func::Exp => x.exp(),
        Func::Expm1 => x.exp_m1(),
        Func::Log => x.ln(),
        Func::Log1p => x.ln_1p(),
        Func::Tanh => x.tanh(),
        Func::Sigmoid => 1.0 / (1.0 + (-x).exp()),
        Func::Erf => libm::erf(x),
        Func::Sin => x.sin(),
        Func::Cos => x.cos(),
        Func::Log2 => x.log2(),
        Func::Log10 => x.log10(),
        Func::Tan => x.tan(),
    }
}

/// Error of `got` in ulps of the f32 rounding of `want` (0 when both are the
/// same non-finite value, infinite when only one is).
pub fn ulp_err(got: f32, want: f64) -> f64 {
    let w32 = want as f32;
    if got.is_nan() || w32.is_nan() {
        return if got.is_nan() && w32.is_nan() { 0.0 } else { f64::INFINITY };
    }
    if got.is_infinite() || w32.is_infinite() {
        return if got == w32 { 0.0 } else { f64::INFINITY };
    }
    let a = w32.abs() as f64;
    let ulp = if a < f32::MIN_POSITIVE as f64 {
        2f64.powi(-149)
    } else {
        let e = ((a.to_bits() >> 52) & 0x7ff) as i32 - 1023;
        2f64.powi(e - 23)
    };
    (got as f64 - want).abs() / ulp
}

/// Every f32 (both signs) whose bit pattern is a multiple of `stride`, within `[lo, hi]`.
pub fn strided(lo: f32, hi: f32, stride: u32) -> Vec<f32> {
    let mut v = Vec::new();
    for sign in [0u32, 0x8000_0000] {
        let mut b = 0u32;
        while b < 0x7f80_0000 {
            let x = f32::from_bits(b | sign);
            if x >= lo && x <= hi {
                v.push(x);
            }
            b += stride;
        }
    }
    v
}

/// `n` f32s spread over `[lo, hi]` uniformly (dense sweep of a domain).
pub fn linear(lo: f32, hi: f32, n: usize) -> Vec<f32> {
    (0..n).map(|i| lo + (hi - lo) * (i as f32 / (n - 1) as f32)).collect()
}

/// Random finite bit patterns (xorshift, fixed seed).
pub fn random_bits(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    let mut v = Vec::with_capacity(n);
    while v.len() < n {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        let x = f32::from_bits((s >> 32) as u32);
        if x.is_finite() {
            v.push(x);
        }
    }
    v
}

/// The domain where `f` is interesting (outside it results saturate or are trivial).
pub fn domain(f: Func) -> (f32, f32) {
    match f {
        Func::Exp | Func::Expm1 => (-105.0, 90.0),
        Func::Log => (0.0, 4.0),
        Func::Log1p => (-1.0, 4.0),
        Func::Tanh => (-10.0, 10.0),
        Func::Sigmoid => (-105.0, 90.0),
        Func::Erf => (-4.5, 4.5),
        Func::Sin | Func::Cos | Func::Tan => (-TRIG_LIMIT, TRIG_LIMIT),
        Func::Log2 | Func::Log10 => (0.0, 4.0),
    }
}
