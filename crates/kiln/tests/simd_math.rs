//! Accuracy of the vectorized f32 math (`backend::cpu::simd_math`) at every
//! dispatch level this CPU supports, against f64 references (`libm::erf` for
//! erf): strided sweeps over every finite f32, dense sweeps over the main
//! domains, random bit patterns, and the special values.

mod common;

use common::ulp::{domain, linear, random_bits, reference, strided, ulp_err};
use kiln::backend::cpu::simd_math::{apply, atan2_at, available_levels, pow_at, sum_exp_below_f32, Func, Level};

/// The asserted bound (ulps) for `f`, as documented in the module.
fn bound(f: Func) -> f64 {
    f.bound()
}

/// Max ulp error of `f` at `level` over `xs`, with the worst input.
fn max_err(f: Func, level: Level, xs: &[f32]) -> (f64, f32) {
    let mut out = vec![0.0f32; xs.len()];
    for (xc, oc) in xs.chunks(1024).zip(out.chunks_mut(1024)) {
        apply(f, level, xc, oc);
    }
    let mut worst = (0.0, 0.0f32);
    for (&x, &y) in xs.iter().zip(&out) {
        let e = ulp_err(y, reference(f, x as f64));
        if e > worst.0 || e.is_nan() {
            worst = (e, x);
        }
    }
    worst
}

fn check(f: Func) {
    let (lo, hi) = domain(f);
    let mut sets = vec![
        ("all f32, stride 4093", strided(f32::MIN, f32::MAX, 4093)),
        ("domain, stride 1021", strided(lo, hi, 1021)),
        ("domain, linear", linear(lo, hi, 200_001)),
        ("random bits", random_bits(200_000, 0x9e37_79b9_7f4a_7c15 ^ f as u64)),
    ];
    if f.reduces_by_pi() {
        sets.push(("[-8, 8], stride 31", strided(-8.0, 8.0, 31)));
    }
    if matches!(f, Func::Log2 | Func::Log10) {
        sets.push(("[0.5, 2], stride 7", strided(0.5, 2.0, 7)));
    }
    let mut failures = Vec::new();
    for level in available_levels() {
        for (name, xs) in &sets {
            let (e, x) = max_err(f, level, xs);
            println!("{f:?} {level:?} {name}: max {e:.3} ulp at {x:e}");
            if e > bound(f) {
                failures.push(format!("{f:?} at {level:?} on {name}: {e} ulp at x = {x:e} (bound {})", bound(f)));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn exp_accuracy() {
    check(Func::Exp);
}

#[test]
fn expm1_accuracy() {
    check(Func::Expm1);
}

#[test]
fn log_accuracy() {
    check(Func::Log);
}

#[test]
fn log1p_accuracy() {
    check(Func::Log1p);
}

#[test]
fn tanh_accuracy() {
    check(Func::Tanh);
}

#[test]
fn sigmoid_accuracy() {
    check(Func::Sigmoid);
}

#[test]
fn erf_accuracy() {
    check(Func::Erf);
}

#[test]
fn sin_accuracy() {
    check(Func::Sin);
}

#[test]
fn cos_accuracy() {
    check(Func::Cos);
}

#[test]
fn tan_accuracy() {
    check(Func::Tan);
}

#[test]
fn log2_accuracy() {
    check(Func::Log2);
}

#[test]
fn log10_accuracy() {
    check(Func::Log10);
}

/// Runs `f` on one value at `level`.
fn one(f: Func, level: Level, x: f32) -> f32 {
    let mut o = [0.0f32];
    apply(f, level, &[x], &mut o);
    o[0]
}

/// Bitwise equality, NaN equal to NaN.
fn same(a: f32, b: f32) -> bool {
    (a.is_nan() && b.is_nan()) || a.to_bits() == b.to_bits()
}

#[test]
fn special_values() {
    let inf = f32::INFINITY;
    let nan = f32::NAN;
    let sub = f32::from_bits(1); // smallest subnormal
    let cases: &[(Func, f32, f32)] = &[
        (Func::Exp, inf, inf),
        (Func::Exp, -inf, 0.0),
        (Func::Exp, 0.0, 1.0),
        (Func::Exp, -0.0, 1.0),
        (Func::Exp, 88.8, inf),
        (Func::Exp, 1000.0, inf),
        (Func::Exp, -104.0, 0.0),
        (Func::Exp, -1000.0, 0.0),
        (Func::Exp, sub, 1.0),
        (Func::Expm1, 0.0, 0.0),
        (Func::Expm1, -0.0, -0.0),
        (Func::Expm1, sub, sub),
        (Func::Expm1, -sub, -sub),
        (Func::Expm1, inf, inf),
        (Func::Expm1, -inf, -1.0),
        (Func::Expm1, -50.0, -1.0),
        (Func::Expm1, 100.0, inf),
        (Func::Log, 0.0, -inf),
        (Func::Log, -0.0, -inf),
        (Func::Log, -1.0, nan),
        (Func::Log, -inf, nan),
        (Func::Log, -sub, nan),
        (Func::Log, inf, inf),
        (Func::Log, 1.0, 0.0),
        (Func::Log1p, 0.0, 0.0),
        (Func::Log1p, -0.0, -0.0),
        (Func::Log1p, sub, sub),
        (Func::Log1p, -sub, -sub),
        (Func::Log1p, -1.0, -inf),
        (Func::Log1p, -1.5, nan),
        (Func::Log1p, -inf, nan),
        (Func::Log1p, inf, inf),
        (Func::Tanh, 0.0, 0.0),
        (Func::Tanh, -0.0, -0.0),
        (Func::Tanh, sub, sub),
        (Func::Tanh, -sub, -sub),
        (Func::Tanh, inf, 1.0),
        (Func::Tanh, -inf, -1.0),
        (Func::Tanh, 20.0, 1.0),
        (Func::Tanh, -1e30, -1.0),
        (Func::Sigmoid, 0.0, 0.5),
        (Func::Sigmoid, -0.0, 0.5),
        (Func::Sigmoid, inf, 1.0),
        (Func::Sigmoid, -inf, 0.0),
        (Func::Sigmoid, 100.0, 1.0),
        (Func::Sigmoid, -200.0, 0.0),
        (Func::Erf, 0.0, 0.0),
        (Func::Erf, -0.0, -0.0),
        (Func::Erf, inf, 1.0),
        (Func::Erf, -inf, -1.0),
        (Func::Erf, 5.0, 1.0),
        (Func::Erf, -1e20, -1.0),
        (Func::Sin, 0.0, 0.0),
        (Func::Sin, -0.0, -0.0),
        (Func::Sin, sub, sub),
        (Func::Sin, -sub, -sub),
        (Func::Sin, inf, nan),
        (Func::Sin, -inf, nan),
        (Func::Cos, 0.0, 1.0),
        (Func::Cos, -0.0, 1.0),
        (Func::Cos, inf, nan),
        (Func::Cos, -inf, nan),
        (Func::Tan, 0.0, 0.0),
        (Func::Tan, -0.0, -0.0),
        (Func::Tan, sub, sub),
        (Func::Tan, -sub, -sub),
        (Func::Tan, inf, nan),
        (Func::Tan, -inf, nan),
        (Func::Log2, 0.0, -inf),
        (Func::Log2, -0.0, -inf),
        (Func::Log2, -1.0, nan),
        (Func::Log2, -inf, nan),
        (Func::Log2, inf, inf),
        (Func::Log2, 1.0, 0.0),
        (Func::Log2, sub, -149.0),
        (Func::Log10, 0.0, -inf),
        (Func::Log10, -2.0, nan),
        (Func::Log10, inf, inf),
        (Func::Log10, 1.0, 0.0),
        (Func::Log10, 1000.0, 3.0),
    ];
    for level in available_levels() {
        for f in Func::ALL {
            let y = one(f, level, nan);
            assert!(y.is_nan(), "{f:?}({level:?}) of NaN gave {y}");
        }
        for &(f, x, want) in cases {
            let y = one(f, level, x);
            assert!(same(y, want), "{f:?}({x:e}) at {level:?} = {y:e}, want {want:e}");
        }
        // exp: subnormal outputs, checked against f64.
        for x in [-87.5f32, -90.0, -95.0, -100.0, -103.0, -103.9] {
            let y = one(Func::Exp, level, x);
            assert!(y > 0.0 && y < f32::MIN_POSITIVE, "exp({x}) = {y:e} is not subnormal");
            assert!(ulp_err(y, (x as f64).exp()) <= 1.0, "exp({x}) at {level:?} = {y:e}");
        }
        // log2 is exact at every power of two.
        for e in -149..128 {
            let x = 2f64.powi(e) as f32;
            assert_eq!(one(Func::Log2, level, x), e as f32, "log2(2^{e}) at {level:?}");
        }
        // log: subnormal inputs.
        for b in [1u32, 2, 3, 1000, 0x7f_ffff] {
            let x = f32::from_bits(b);
            let y = one(Func::Log, level, x);
            assert!(ulp_err(y, (x as f64).ln()) <= 1.0, "log({x:e}) at {level:?} = {y}");
        }
    }
}

/// Every length (full vectors plus tails) gives the same values at every level,
/// and the levels agree with each other to within one ulp.
#[test]
fn lengths_and_levels_agree() {
    let xs: Vec<f32> = (0..67).map(|i| (i as f32 - 33.0) * 0.37).collect();
    for f in Func::ALL {
        let mut base = vec![0.0f32; xs.len()];
        apply(f, Level::Scalar, &xs, &mut base);
        for level in available_levels() {
            for n in 0..xs.len() {
                let mut out = vec![f32::NAN; n];
                apply(f, level, &xs[..n], &mut out);
                for (i, (&y, &b)) in out.iter().zip(&base).enumerate() {
                    let d = (y.to_bits() as i64 - b.to_bits() as i64).abs();
                    assert!(d <= 1, "{f:?} {level:?} len {n} at {}: {y} vs scalar {b}", xs[i]);
                }
            }
        }
    }
}

#[test]
fn levels_detected() {
    // What the CPU has, capped by KILN_SIMD (`avx2` or `scalar`).
    let levels = available_levels();
    assert_eq!(levels[0], Level::Scalar);
    let cap = std::env::var("KILN_SIMD").unwrap_or_default();
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        assert_eq!(levels.contains(&Level::Avx2), cap != "scalar", "KILN_SIMD={cap}: {levels:?}");
    }
    if cap == "avx2" || cap == "scalar" {
        assert!(!levels.contains(&Level::Avx512), "KILN_SIMD={cap} leaves AVX-512 out: {levels:?}");
    }
}

/// Elements per ns of the vector functions against std's scalar f32 ones.
/// Run with `cargo test --release --test simd_math -- --ignored --nocapture`.
#[test]
#[ignore]
fn throughput() {
    use std::time::Instant;
    let xs: Vec<f32> = (0..1024).map(|i| (i as f32 - 512.0) * 0.01).collect();
    let pos: Vec<f32> = xs.iter().map(|v| v.abs() + 0.5).collect();
    let mut out = vec![0.0f32; 1024];
    let reps = 20_000;
    let rate = |t: std::time::Duration| (reps * 1024) as f64 / t.as_nanos() as f64;
    type Scalar = fn(f32) -> f32;
    let std_fns: [(Func, Scalar); 12] = [
        (Func::Exp, f32::exp),
        (Func::Expm1, f32::exp_m1),
        (Func::Log, f32::ln),
        (Func::Log1p, f32::ln_1p),
        (Func::Tanh, f32::tanh),
        (Func::Sigmoid, |v| 1.0 / (1.0 + (-v).exp())),
        (Func::Erf, libm::erff),
        (Func::Sin, f32::sin),
        (Func::Cos, f32::cos),
        (Func::Log2, f32::log2),
        (Func::Log10, f32::log10),
        (Func::Tan, f32::tan),
    ];
    for (f, g) in std_fns {
        let xs = if matches!(f, Func::Log | Func::Log1p | Func::Log2 | Func::Log10) { &pos } else { &xs };
        let t = Instant::now();
        for _ in 0..reps {
            for (o, &x) in out.iter_mut().zip(xs.iter()) {
                *o = g(std::hint::black_box(x));
            }
            std::hint::black_box(&mut out);
        }
        print!("{f:?}: std {:.3}/ns", rate(t.elapsed()));
        for level in available_levels() {
            let t = Instant::now();
            for _ in 0..reps {
                apply(f, level, std::hint::black_box(xs), &mut out);
                std::hint::black_box(&mut out);
            }
            print!(", {level:?} {:.3}/ns", rate(t.elapsed()));
        }
        println!();
    }
}

#[test]
fn sums_of_exponentials_are_accurate_at_every_length() {
    // Every length up to a few vectors (the tail is computed apart), plus a
    // full reduction block; the sum of n terms may round n times, so the
    // bound is relative: n ulps of the sum plus the exp error.
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for n in (0..=40).chain([255, 256]) {
        let xs: Vec<f32> = (0..n)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                (seed >> 40) as f32 / (1u64 << 24) as f32 * 25.0 - 20.0
            })
            .collect();
        // Shifted by the maximum, as a log-sum-exp block is.
        let m = xs.iter().fold(-30.0f32, |a, &b| a.max(b));
        let shifted: Vec<f32> = xs.iter().map(|&x| x - m).collect();
        let want: f64 = shifted.iter().map(|&x| (x as f64).exp()).sum();
        let got = sum_exp_below_f32(&xs, m) as f64;
        let tol = (n as f64 + 1.0) * f32::EPSILON as f64 * want;
        assert!((got - want).abs() <= tol, "n = {n}: {got} vs {want}");
    }
    assert_eq!(sum_exp_below_f32(&[], 0.0), 0.0);
    // Beside the maximum's own term, 1, terms of `-inf` and below the clamp
    // add nothing visible (each 0, or e^-87 where one multiply scales).
    for far in [f32::NEG_INFINITY, -200.0, -87.5] {
        for at in [0, 7, 18] {
            let mut xs = [far; 19];
            xs[at] = 0.0;
            assert_eq!(sum_exp_below_f32(&xs, 0.0), 1.0, "{far} beside the maximum at {at}");
        }
    }
    assert_eq!(sum_exp_below_f32(&[2.5; 17], 2.5), 17.0);
    // Each term is within about two ulps (2 epsilon relative) of e^(x - m)
    // over [-87, 0], at 20,001 points (every interval of n many times):
    // single terms, as summed with the maximum's 1 they would hide their
    // error (the sum is then the term itself).
    for i in 0..=20_000 {
        let d = -87.0 * i as f32 / 20_000.0;
        let got = sum_exp_below_f32(&[d], 0.0) as f64;
        let want = (d as f64).exp();
        let tol = 2.0 * f32::EPSILON as f64 * want;
        assert!((got - want).abs() <= tol, "e^{d}: {got} vs {want}");
    }
}

/// A xorshift stream of uniform `f64` in `[0, 1)`.
struct Uniform(u64);

impl Uniform {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Max ulp error of two-operand `f` at `level` over `pairs` against the
/// `f64` function `reference`, with the worst pair.
fn max_err2(
    f: fn(Level, &[f32], &[f32], &mut [f32]),
    reference: fn(f64, f64) -> f64,
    level: Level,
    pairs: &[(f32, f32)],
) -> (f64, (f32, f32)) {
    let a: Vec<f32> = pairs.iter().map(|p| p.0).collect();
    let b: Vec<f32> = pairs.iter().map(|p| p.1).collect();
    let mut out = vec![0.0f32; a.len()];
    f(level, &a, &b, &mut out);
    let mut worst = (0.0f64, (0.0, 0.0));
    for (&(x, y), &r) in pairs.iter().zip(&out) {
        let e = ulp_err(r, reference(x as f64, y as f64));
        if e > worst.0 || e.is_nan() {
            worst = (e, (x, y));
        }
    }
    worst
}

/// The asserted bound of `pow_f32`, as documented in the module.
const POW_BOUND: f64 = 1.0;

#[test]
fn pow_accuracy() {
    let mut u = Uniform(0x853c_49e6_748f_ea9b);
    let mut sets: Vec<(&str, Vec<(f32, f32)>)> = Vec::new();
    let mut gen = |name, n: usize, f: &mut dyn FnMut(&mut Uniform) -> (f32, f32)| {
        sets.push((name, (0..n).map(|_| f(&mut u)).collect()));
    };
    gen("x in (0, 4], y in [-40, 40]", 200_000, &mut |u| ((4.0 * u.next()) as f32, (80.0 * u.next() - 40.0) as f32));
    gen("x any positive, y in [-3, 3]", 200_000, &mut |u| {
        (f32::from_bits((u.next() * 0x7f80_0000 as f64) as u32), (6.0 * u.next() - 3.0) as f32)
    });
    gen("x near 1, y large", 200_000, &mut |u| {
        let x = 1.0 + (u.next() - 0.5) * 2f64.powi(-(u.next() * 23.0) as i32);
        (x as f32, ((u.next() - 0.5) * 2e7) as f32)
    });
    gen("x negative, y integer", 100_000, &mut |u| (-(8.0 * u.next()) as f32, (60.0 * u.next() - 30.0).round() as f32));
    gen("results near overflow and underflow", 200_000, &mut |u| {
        let x = 0.01 + 50.0 * u.next();
        let t = if u.next() < 0.5 { 80.0 + 8.8 * u.next() } else { -87.0 - 17.0 * u.next() };
        (x as f32, (t / (x as f32 as f64).ln()) as f32)
    });
    let mut failures = Vec::new();
    for level in available_levels() {
        for (name, pairs) in &sets {
            let (worst, at) = max_err2(pow_at, f64::powf, level, pairs);
            println!("pow {level:?} {name}: max {worst:.3} ulp at {at:?}");
            if worst.is_nan() || worst > POW_BOUND {
                failures.push(format!("pow at {level:?} on {name}: {worst} ulp at {at:?}"));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn pow_special_values_follow_c99() {
    let inf = f32::INFINITY;
    let vals = [
        0.0,
        -0.0,
        1.0,
        -1.0,
        0.5,
        -0.5,
        2.0,
        -2.0,
        3.0,
        -3.0,
        2.5,
        -2.5,
        inf,
        -inf,
        f32::NAN,
        1e-45,
        -1e-45,
        1e30,
        -1e30,
        16_777_216.0,
        -16_777_217.0,
    ];
    for level in available_levels() {
        for &x in &vals {
            for &y in &vals {
                let mut o = [0.0f32];
                pow_at(level, &[x], &[y], &mut o);
                let want = x.powf(y);
                assert!(same(o[0], want), "pow({x:e}, {y:e}) at {level:?} = {:e}, want {want:e}", o[0]);
            }
        }
        // Exact powers of two, and broadcast operands of every tail length.
        for e in -149..128 {
            let mut o = [0.0f32];
            pow_at(level, &[2.0], &[e as f32], &mut o);
            assert_eq!(o[0], 2f64.powi(e) as f32, "2^{e} at {level:?}");
        }
        for n in 0..40 {
            let ys: Vec<f32> = (0..n).map(|i| i as f32 * 0.25 - 3.0).collect();
            let mut o = vec![f32::NAN; n];
            pow_at(level, &[1.5], &ys, &mut o);
            for (&y, &r) in ys.iter().zip(&o) {
                assert!(ulp_err(r, 1.5f64.powf(y as f64)) <= POW_BOUND, "1.5^{y} at {level:?}, {n} lanes: {r}");
            }
        }
    }
}

/// The asserted bound of `atan2_f32`, as documented in the module.
const ATAN2_BOUND: f64 = 2.0;

#[test]
fn atan2_accuracy_and_special_values() {
    let mut u = Uniform(0x2545_f491_4f6c_dd1d);
    let mut pairs: Vec<(f32, f32)> = (0..300_000)
        .map(|_| {
            let y = (u.next() - 0.5) * 10f64.powf(u.next() * 8.0 - 4.0);
            let x = (u.next() - 0.5) * 10f64.powf(u.next() * 8.0 - 4.0);
            (y as f32, x as f32)
        })
        .collect();
    pairs.extend((0..200_000).map(|_| {
        (f32::from_bits((u.next() * u32::MAX as f64) as u32), f32::from_bits((u.next() * u32::MAX as f64) as u32))
    }));
    // Near the octant and reduction boundaries: |y| ~ |x|, |y| ~ tan(π/8) |x|.
    pairs.extend((0..100_000).map(|i| {
        let x = (u.next() + 0.1) as f32 * if i % 2 == 0 { 1.0 } else { -1.0 };
        let k = [1.0, 0.414_213_56, 2.414_213_6][i % 3];
        (x * k * (1.0 + (u.next() as f32 - 0.5) * 1e-5), x)
    }));
    for level in available_levels() {
        let (worst, at) = max_err2(atan2_at, f64::atan2, level, &pairs);
        println!("atan2 {level:?}: max {worst:.3} ulp at {at:?}");
        assert!(worst <= ATAN2_BOUND, "atan2 at {level:?}: {worst} ulp at {at:?}");
        let inf = f32::INFINITY;
        let vals = [0.0f32, -0.0, 1.0, -1.0, 2.5, -3.0, inf, -inf, f32::NAN, 1e-45, -1e38];
        for &y in &vals {
            for &x in &vals {
                let mut o = [0.0f32];
                atan2_at(level, &[y], &[x], &mut o);
                let want = y.atan2(x);
                let ok = same(o[0], want)
                    || (ulp_err(o[0], (y as f64).atan2(x as f64)) <= ATAN2_BOUND && o[0].signum() == want.signum());
                assert!(ok, "atan2({y:e}, {x:e}) at {level:?} = {:e}, want {want:e}", o[0]);
            }
        }
    }
}
