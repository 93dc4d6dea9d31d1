//! The vectorizable `f64` functions (`backend::cpu::math_f64`) against
//! the C library: each within its stated ulp bound on random arguments
//! over their whole ranges and on special values, and fast paths as the
//! eager ops use them (an `f64` tile of `exp` runs these, eight lanes at a
//! time).

mod common;

use common::Rng;
use kiln::backend::cpu::math_f64;
use kiln::{Array, DType, Result};

/// Distance in ulps between `got` and the reference `want` (0 when both
/// are NaN or equal; infinite when only one is NaN).
fn ulps(got: f64, want: f64) -> f64 {
    if got.is_nan() || want.is_nan() {
        return if got.is_nan() && want.is_nan() { 0.0 } else { f64::INFINITY };
    }
    if got == want {
        return 0.0;
    }
    if got.is_infinite() || want.is_infinite() {
        return f64::INFINITY;
    }
    // The ulp of the reference (the smallest subnormal's below it).
    let e = want.abs().max(f64::MIN_POSITIVE).log2().floor();
    (got - want).abs() / 2f64.powf(e - 52.0)
}

/// Arguments: uniform over several ranges (log-uniform magnitudes of both
/// signs) plus the special values and the ranges' edges.
fn arguments(rng: &mut Rng, n: usize) -> Vec<f64> {
    let specials = [
        0.0,
        -0.0,
        f64::NAN,
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::MIN_POSITIVE,
        f64::MIN_POSITIVE / 3.0,
        math_f64::TRIG_LIMIT,
        -math_f64::TRIG_LIMIT,
        math_f64::TRIG_LIMIT + 1.0,
        1e22,
        std::f64::consts::FRAC_PI_2,
        std::f64::consts::PI,
        355.0,
        5e-324,
        -5e-324,
        f64::MAX,
        -f64::MAX,
        709.782712893384,
        709.79,
        -708.3964185322641,
        -745.1332191019411,
        -745.14,
        0.625,
        -0.625,
        0.6249999999999999,
        19.99,
        20.01,
        1.0,
        -1.0,
        std::f64::consts::LN_2,
        2.0 * std::f64::consts::LN_2,
        std::f64::consts::FRAC_1_SQRT_2,
        std::f64::consts::SQRT_2,
        // erf's pieces' ends.
        0.9999999999999999,
        2.0,
        2.9999999999999996,
        3.0,
        4.0,
        -4.000000000000001,
        5.93,
        6.0,
        1e-300,
    ];
    let mut v: Vec<f64> = specials.to_vec();
    while v.len() < n {
        let u = rng.uniform(0.0, 1.0);
        let x = match rng.int(0, 6) {
            0 => rng.uniform(-2.0, 2.0),
            // Near multiples of π/2, and around the vector trigonometry's limit.
            5 => (rng.int(-500_000, 500_000) as f64) * std::f64::consts::FRAC_PI_2 * (1.0 + rng.uniform(-1e-12, 1e-12)),
            6 => rng.uniform(-1e6, 1e6),
            1 => rng.uniform(-750.0, 750.0),
            2 => 10f64.powf(rng.uniform(-320.0, 308.0)) * if u < 0.5 { -1.0 } else { 1.0 },
            3 => 1.0 + rng.uniform(-1e-3, 1e-3),
            _ => rng.uniform(-25.0, 25.0),
        };
        v.push(x);
    }
    v
}

type Pair = (&'static str, fn(f64) -> f64, fn(f64) -> f64, f64);

fn sigmoid_ref(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

const FUNCTIONS: [Pair; 12] = [
    ("sin", math_f64::sin, f64::sin, 1.0),
    ("cos", math_f64::cos, f64::cos, 1.0),
    ("tan", math_f64::tan, f64::tan, 2.0),
    ("exp", math_f64::exp, f64::exp, 1.0),
    ("expm1", math_f64::expm1, f64::exp_m1, 1.0),
    ("log1p", math_f64::log1p, f64::ln_1p, 2.0),
    ("log", math_f64::log, f64::ln, 1.0),
    ("log2", math_f64::log2, f64::log2, 1.0),
    // The C library's log10 is itself up to 1.5 ulp from the exact value
    // (at 0.99944..., where this one is 0.48 ulp from it).
    ("log10", math_f64::log10, f64::log10, 2.0),
    ("tanh", math_f64::tanh, f64::tanh, 2.0),
    ("sigmoid", math_f64::sigmoid, sigmoid_ref, 2.0),
    ("erf", math_f64::erf, libm::erf, 2.0),
];

#[test]
fn each_function_meets_its_bound_against_the_c_library() {
    let mut rng = Rng::new(2026);
    let xs = arguments(&mut rng, 400_000);
    for (name, f, reference, bound) in FUNCTIONS {
        let (mut worst, mut at) = (0.0f64, 0.0f64);
        for &x in &xs {
            let e = ulps(f(x), reference(x));
            if e > worst {
                (worst, at) = (e, x);
            }
        }
        assert!(worst <= bound, "{name}: {worst} ulp at {x:e} (bound {bound})", x = at);
        println!("{name}: worst {worst:.3} ulp at {at:e}");
    }
}

#[test]
fn atan2_meets_its_bound_and_the_c_librarys_special_values() {
    // Random points of every magnitude and both signs (near the axes and
    // the diagonals too), and every pair of the special arguments: within
    // 2 ulp of the C library, exactly its value at zeros, infinities and
    // NaN (signs of zero included).
    let mut rng = Rng::new(77);
    let xs = arguments(&mut rng, 300_000);
    let ys = arguments(&mut rng, 300_000);
    let (mut worst, mut at) = (0.0f64, (0.0, 0.0));
    let mut check = |y: f64, x: f64| {
        let (got, want) = (math_f64::atan2(y, x), y.atan2(x));
        let e = ulps(got, want);
        if e > worst {
            (worst, at) = (e, (y, x));
        }
        if !(want.is_finite() && x.is_finite() && y.is_finite() && x != 0.0 && y != 0.0) {
            assert!(
                got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
                "atan2({y:e}, {x:e}) = {got:e}, want {want:e}"
            );
        }
    };
    for (&y, &x) in ys.iter().zip(&xs) {
        check(y, x);
        check(y, y * (1.0 + rng.uniform(-1e-9, 1e-9)));
        check(y, -y);
    }
    for &y in &xs[..60] {
        for &x in &xs[..60] {
            check(y, x);
        }
    }
    assert!(worst <= 2.0, "atan2: {worst} ulp at {at:?}");
    println!("atan2: worst {worst:.3} ulp at {at:?}");
}

#[test]
fn pow_meets_its_bound_and_the_c_librarys_special_values() {
    // Random bases and exponents of every magnitude, products y ln x up to
    // the overflow and underflow thresholds (where ln x must be known to
    // far more than a double's precision), bases near 1 with huge
    // exponents, negative bases with integer exponents, and every pair of
    // the special arguments: within 2 ulp of the C library, exactly its
    // value at zeros, infinities, NaN, 1 and -1 and for negative bases.
    let mut rng = Rng::new(78);
    let (mut worst, mut at) = (0.0f64, (0.0, 0.0));
    let mut check = |x: f64, y: f64| {
        let (got, want) = (math_f64::pow(x, y), x.powf(y));
        let e = ulps(got, want);
        if e > worst {
            (worst, at) = (e, (x, y));
        }
        if !(want.is_normal() && x.is_finite() && y.is_finite() && x != 0.0) {
            let same = got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()) || e <= 2.0;
            assert!(same, "pow({x:e}, {y:e}) = {got:e}, want {want:e}");
        }
    };
    for _ in 0..150_000 {
        let x = 10f64.powf(rng.uniform(-300.0, 300.0));
        check(x, rng.uniform(-3.0, 3.0));
        let x = rng.uniform(0.0, 10.0);
        check(x, rng.uniform(-40.0, 40.0));
        check(-x, rng.int(-40, 40) as f64);
        check(1.0 + rng.uniform(-1e-3, 1e-3), rng.uniform(-1e6, 1e6));
        let x = rng.uniform(0.5, 2.5);
        check(x, 745.0 / x.ln() * rng.uniform(-1.0, 1.0));
    }
    let specials = [
        0.0,
        -0.0,
        1.0,
        -1.0,
        2.0,
        -2.0,
        0.5,
        -0.5,
        3.0,
        -3.0,
        2.5,
        -2.5,
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::NAN,
        5e-324,
        -5e-324,
        f64::MAX,
        -f64::MAX,
        9007199254740991.0,
        -9007199254740991.0,
        4503599627370497.0,
        2251799813685249.5,
        1e20,
    ];
    for &x in &specials {
        for &y in &specials {
            check(x, y);
        }
    }
    assert!(worst <= 2.0, "pow: {worst} ulp at {at:?}");
    println!("pow: worst {worst:.3} ulp at {at:?}");
}

#[test]
fn special_values_follow_the_c_library() {
    type Case = (fn(f64) -> f64, f64, f64);
    let cases: [Case; 16] = [
        (math_f64::exp, f64::INFINITY, f64::INFINITY),
        (math_f64::exp, f64::NEG_INFINITY, 0.0),
        (math_f64::exp, 710.0, f64::INFINITY),
        (math_f64::exp, -746.0, 0.0),
        (math_f64::exp, 0.0, 1.0),
        (math_f64::exp, -745.0, 5e-324),
        (math_f64::log, 0.0, f64::NEG_INFINITY),
        (math_f64::log, -0.0, f64::NEG_INFINITY),
        (math_f64::log, f64::INFINITY, f64::INFINITY),
        (math_f64::log, 1.0, 0.0),
        (math_f64::log, 5e-324, -744.4400719213812),
        (math_f64::tanh, f64::INFINITY, 1.0),
        (math_f64::tanh, f64::NEG_INFINITY, -1.0),
        (math_f64::tanh, 1e-300, 1e-300),
        (math_f64::sigmoid, f64::INFINITY, 1.0),
        (math_f64::sigmoid, f64::NEG_INFINITY, 0.0),
    ];
    for (k, (f, x, want)) in cases.into_iter().enumerate() {
        let got = f(x);
        assert!(got == want, "case {k}: f({x:e}) = {got:e}, want {want:e}");
    }
    // Signs of zeros, and NaN and negative arguments.
    assert!(math_f64::tanh(-0.0).is_sign_negative() && math_f64::tanh(-0.0) == 0.0);
    assert!(math_f64::tanh(0.0).is_sign_positive());
    for f in [
        math_f64::exp,
        math_f64::expm1,
        math_f64::log,
        math_f64::log1p,
        math_f64::tanh,
        math_f64::sigmoid,
        math_f64::sin,
        math_f64::cos,
        math_f64::tan,
    ] {
        assert!(f(f64::NAN).is_nan());
    }
    assert_eq!(math_f64::expm1(f64::INFINITY), f64::INFINITY);
    assert_eq!(math_f64::expm1(f64::NEG_INFINITY), -1.0);
    assert!(math_f64::expm1(-0.0) == 0.0 && math_f64::expm1(-0.0).is_sign_negative());
    assert_eq!(math_f64::log1p(-1.0), f64::NEG_INFINITY);
    assert_eq!(math_f64::log1p(f64::INFINITY), f64::INFINITY);
    assert!(math_f64::log1p(-0.0) == 0.0 && math_f64::log1p(-0.0).is_sign_negative());
    assert!(math_f64::log1p(-1.5).is_nan() && math_f64::log1p(f64::NEG_INFINITY).is_nan());
    for f in [math_f64::sin, math_f64::cos, math_f64::tan] {
        assert!(f(f64::INFINITY).is_nan() && f(f64::NEG_INFINITY).is_nan());
    }
    assert!(math_f64::sin(-0.0) == 0.0 && math_f64::sin(-0.0).is_sign_negative());
    assert!(math_f64::tan(-0.0).is_sign_negative() && math_f64::cos(0.0) == 1.0);
    assert!(math_f64::log(-1.0).is_nan() && math_f64::log(-f64::INFINITY).is_nan() && math_f64::log(-5e-324).is_nan());
    // log2 and log10 share log's edges; log2 is exact at every power of
    // two (subnormal ones too), log10 equals the C library's at the powers
    // of ten (exact integers up to 10^22).
    for f in [math_f64::log2, math_f64::log10] {
        assert_eq!(f(0.0), f64::NEG_INFINITY);
        assert_eq!(f(-0.0), f64::NEG_INFINITY);
        assert_eq!(f(f64::INFINITY), f64::INFINITY);
        assert!(f(-1.0).is_nan() && f(f64::NAN).is_nan() && f(-5e-324).is_nan() && f(f64::NEG_INFINITY).is_nan());
        assert_eq!(f(1.0), 0.0);
    }
    for n in -1074i32..=1023 {
        let x = if n >= -1022 { f64::from_bits(((n + 1023) as u64) << 52) } else { f64::from_bits(1 << (n + 1074)) };
        assert_eq!(math_f64::log2(x), n as f64, "log2(2^{n})");
    }
    for n in -300i32..=300 {
        let x: f64 = format!("1e{n}").parse().unwrap();
        assert_eq!(math_f64::log10(x), x.log10(), "log10(1e{n})");
    }
    assert_eq!(math_f64::log10(1e22), 22.0);
}

#[test]
fn eager_f64_ops_compute_these_functions() -> Result<()> {
    // The tile kernels of exp, log, tanh and sigmoid on f64 arrays run
    // math_f64 (bit for bit), at lengths around the vector width.
    let mut rng = Rng::new(5);
    type Op = (fn(&Array) -> Result<Array>, fn(f64) -> f64);
    let ops: [Op; 14] = [
        (|x| x.sin(), math_f64::sin),
        (|x| x.cos(), math_f64::cos),
        (|x| x.tan(), math_f64::tan),
        (|x| x.exp(), math_f64::exp),
        (|x| x.expm1(), math_f64::expm1),
        (|x| x.log1p(), math_f64::log1p),
        (|x| x.abs()?.log(), |x| math_f64::log(x.abs())),
        (|x| x.abs()?.log2(), |x| math_f64::log2(x.abs())),
        (|x| x.abs()?.log10(), |x| math_f64::log10(x.abs())),
        (|x| x.tanh(), math_f64::tanh),
        (|x| x.sigmoid(), math_f64::sigmoid),
        (|x| x.erf(), math_f64::erf),
        (|x| x.atan2(&kiln::slice_axis(x, 0, None, None, -1)?), |_| f64::NAN),
        (|x| x.abs()?.pow(&kiln::slice_axis(x, 0, None, None, -1)?), |_| f64::NAN),
    ];
    for n in [1, 3, 8, 9, 17, 1000, 70_001] {
        let xs = arguments(&mut rng, n.max(30))[..n].to_vec();
        let x = Array::from_slice(&xs, &[n])?.astype(DType::F64)?;
        for (k, (op, f)) in ops.iter().enumerate() {
            let got = op(&x)?.to_vec::<f64>()?;
            for (i, (&g, &a)) in got.iter().zip(&xs).enumerate() {
                // atan2 and pow of x and x reversed.
                let w = match k {
                    12 => math_f64::atan2(a, xs[n - 1 - i]),
                    13 => math_f64::pow(a.abs(), xs[n - 1 - i]),
                    _ => f(a),
                };
                assert!(
                    g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()),
                    "op {k}, {n} elements, {i}: {g:e} vs {w:e}"
                );
            }
        }
    }
    Ok(())
}
