//! Reductions of `f16`/`bf16` accumulate in `f32` (issue 14, section 2), in
//! eager and compiled code alike, and compiled reductions equal eager ones
//! bit for bit on special values (section 7).
//!
//! Cases are generated: lengths around 2^16 and odd lengths, rows of several
//! shapes, reductions over the last axis and over all axes, each run eagerly,
//! compiled, compiled shapeless, and compiled through a fused producer (so
//! the fused reduction kernel, its long-row partials and row chains run).

mod common;

use common::Rng;
use half::{bf16, f16};
use kiln::{compile, compile_with, Array, Axes, CompileOptions, DType, Result};

type R = Result<()>;

/// How a reduction is run.
#[derive(Clone, Copy, Debug)]
enum Mode {
    Eager,
    Compiled,
    Shapeless,
    /// Compiled, reducing a value computed in the same kernel (`-(-x)`).
    Fused,
}

const MODES: [Mode; 4] = [Mode::Eager, Mode::Compiled, Mode::Shapeless, Mode::Fused];

/// Runs `f` on `x` in `mode`.
fn run(mode: Mode, x: &Array, f: fn(&Array) -> Result<Array>) -> Result<Array> {
    match mode {
        Mode::Eager => f(x),
        Mode::Compiled => compile(f).call(x),
        Mode::Shapeless => compile_with(f, CompileOptions { shapeless: true, ..Default::default() }).call(x),
        Mode::Fused => compile(move |x: &Array| f(&(-&(-x)?)?)).call(x),
    }
}

fn to_f64(a: &Array) -> Result<Vec<f64>> {
    a.astype(DType::F64)?.to_vec::<f64>()
}

/// Machine epsilon of the output dtype.
fn eps(dt: DType) -> f64 {
    match dt {
        DType::F16 => 2f64.powi(-10),
        DType::BF16 => 2f64.powi(-7),
        _ => unreachable!(),
    }
}

/// `want` rounded to `dt`.
fn round_to(dt: DType, want: f64) -> f64 {
    match dt {
        DType::F16 => f16::from_f64(want).to_f64(),
        DType::BF16 => bf16::from_f64(want).to_f64(),
        _ => unreachable!(),
    }
}

/// The tolerance: the f64 reference rounded to the output dtype, within 4
/// ulp (relative `4 * eps`), and absolutely within a few of the smallest
/// subnormal steps of `f16` (softmax's tiny outputs). Infinities (a sum
/// past the dtype's range) must match exactly.
fn check(dt: DType, got: f64, want: f64, what: &dyn Fn() -> String) {
    let want = round_to(dt, want);
    let ok = if want.is_infinite() {
        got == want
    } else {
        (got - want).abs() <= 4.0 * eps(dt) * want.abs() + 4.0 * 2f64.powi(-24)
    };
    assert!(ok, "{}: got {got}, want {want}", what());
}

/// Inputs near 1 (their `f16` sum passes 65504 from about 2^16 elements)
/// rounded to `dt`, as arrays and as the f64 values they hold.
fn input(dt: DType, shape: &[usize], seed: u64) -> Result<(Array, Vec<f64>)> {
    let n: usize = shape.iter().product();
    let mut rng = Rng::new(seed);
    let vals: Vec<f64> = (0..n).map(|_| rng.uniform(0.5, 1.5)).collect();
    let a = Array::from_slice(&vals, shape)?.astype(dt)?;
    let held = to_f64(&a)?;
    Ok((a, held))
}

fn mean(g: &[f64]) -> f64 {
    g.iter().sum::<f64>() / g.len() as f64
}

fn var(g: &[f64]) -> f64 {
    let m = mean(g);
    g.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / g.len() as f64
}

fn logsumexp(g: &[f64]) -> f64 {
    let m = g.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    m + g.iter().map(|v| (v - m).exp()).sum::<f64>().ln()
}

/// The reductions checked: name, kiln op (last axis), kiln op (all axes),
/// f64 reference of one group.
type Stat = (&'static str, fn(&Array) -> Result<Array>, fn(&Array) -> Result<Array>, fn(&[f64]) -> f64);

const STATS: [Stat; 5] = [
    ("sum", |x| x.sum(-1, false), |x| x.sum(Axes::All, false), |g| g.iter().sum()),
    ("mean", |x| x.mean(-1, false), |x| x.mean(Axes::All, false), mean),
    ("var", |x| x.var(-1, false, 0), |x| x.var(Axes::All, false, 0), var),
    ("std", |x| x.std(-1, false, 0), |x| x.std(Axes::All, false, 0), |g| var(g).sqrt()),
    ("logsumexp", |x| x.logsumexp(-1, false), |x| x.logsumexp(Axes::All, false), logsumexp),
];

/// Shapes: lengths around 2^16 (and past the fused kernel's 2^15 chunks),
/// odd lengths, several rows.
const SHAPES: [&[usize]; 9] =
    [&[65535], &[65536], &[65537], &[70001], &[3], &[1001], &[3, 40001], &[7, 1025], &[2, 65536]];

#[test]
fn half_reductions_accumulate_in_f32_eager_and_compiled() -> R {
    for dt in [DType::F16, DType::BF16] {
        for (si, shape) in SHAPES.iter().enumerate() {
            let (x, held) = input(dt, shape, 100 + si as u64)?;
            let row = *shape.last().unwrap();
            for (name, last, all, reference) in STATS {
                for mode in MODES {
                    for (over, f) in [("last axis", last), ("all axes", all)] {
                        let got = run(mode, &x, f)?;
                        assert_eq!(got.dtype(), dt, "{name} keeps {dt}");
                        let got = to_f64(&got)?;
                        let groups: Vec<&[f64]> =
                            if over == "all axes" { vec![&held[..]] } else { held.chunks(row).collect() };
                        assert_eq!(got.len(), groups.len());
                        for (k, (&g, grp)) in got.iter().zip(groups).enumerate() {
                            check(dt, g, reference(grp), &|| format!("{name} {dt} {shape:?} {over} {mode:?} [{k}]"));
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

#[test]
fn half_softmax_sums_in_f32_eager_and_compiled() -> R {
    for dt in [DType::F16, DType::BF16] {
        for (si, shape) in SHAPES.iter().enumerate() {
            let (x, held) = input(dt, shape, 200 + si as u64)?;
            let row = *shape.last().unwrap();
            for mode in MODES {
                let got = run(mode, &x, |x| x.softmax(-1))?;
                assert_eq!(got.dtype(), dt);
                let got = to_f64(&got)?;
                for (r, (gr, hr)) in got.chunks(row).zip(held.chunks(row)).enumerate() {
                    let m = hr.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let s: f64 = hr.iter().map(|v| (v - m).exp()).sum();
                    for (j, (&g, &h)) in gr.iter().zip(hr).enumerate() {
                        check(dt, g, (h - m).exp() / s, &|| format!("softmax {dt} {shape:?} {mode:?} [{r}, {j}]"));
                    }
                }
            }
        }
    }
    Ok(())
}

/// The reported case: the compiled mean of 65,536 `f16` values near 1 was
/// NaN (the sum of its partial results overflowed `f16`, and so did the
/// count 65,536 it divided by).
#[test]
fn compiled_mean_of_65536_f16_near_one_is_not_nan() -> R {
    let n = 65536;
    let vals: Vec<f16> = (0..n).map(|i| f16::from_f64(1.0 - (i % 2) as f64 / 2048.0)).collect();
    let want = vals.iter().map(|v| v.to_f64()).sum::<f64>() / n as f64;
    let x = Array::from_slice(&vals, &[n])?;
    assert!(vals.iter().map(|v| v.to_f64()).sum::<f64>() > 65504.0, "the f16 sum overflows");
    for mode in MODES {
        for f in [|x: &Array| x.mean(Axes::All, false), |x: &Array| x.mean(-1, false)] {
            let got = to_f64(&run(mode, &x, f)?)?[0];
            check(DType::F16, got, want, &|| format!("mean of {n} f16, {mode:?}"));
        }
    }
    Ok(())
}

// ------------------------------------------------ compiled equals eager

/// Special values of `f32`/`f64` (as f64): signed zeros, infinities, NaN,
/// values whose products overflow, subnormals, ordinary values.
fn special(rng: &mut Rng, dt: DType) -> f64 {
    let (big, sub) = if dt == DType::F32 { (1e30, f32::from_bits(3) as f64) } else { (1e300, f64::from_bits(3)) };
    let pool = [0.0, -0.0, f64::INFINITY, f64::NEG_INFINITY, f64::NAN, big, -big, 1.0 / big, sub, -sub, 1.0, -1.0];
    if rng.next_u64().is_multiple_of(3) {
        rng.pick(&pool)
    } else {
        rng.uniform(-2.0, 2.0)
    }
}

/// Bit equality, NaN matching any NaN.
fn same_bits(a: &[f64], b: &[f64]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan()))
}

type Op = (&'static str, fn(&Array) -> Result<Array>);

const EDGE_OPS: [Op; 12] = [
    ("prod last", |x| x.prod(-1, false)),
    ("prod all", |x| x.prod(Axes::All, false)),
    ("sum last", |x| x.sum(-1, false)),
    ("sum all", |x| x.sum(Axes::All, false)),
    ("max last", |x| x.max(-1, false)),
    ("max all", |x| x.max(Axes::All, false)),
    ("min last", |x| x.min(-1, false)),
    ("min all", |x| x.min(Axes::All, false)),
    ("logsumexp last", |x| x.logsumexp(-1, false)),
    ("logsumexp all", |x| x.logsumexp(Axes::All, false)),
    ("logsumexp no axes", |x| x.logsumexp(Axes::Some(vec![]), false)),
    ("logsumexp size-1 axis", |x| x.reshape(&[-1, 1])?.logsumexp(-1, false)),
];

#[test]
fn compiled_equals_eager_bit_for_bit_on_special_values() -> R {
    let shapes: [&[usize]; 9] = [&[1], &[2], &[7], &[64], &[1025], &[5000], &[3, 40001], &[70001], &[2, 65537]];
    let mut rng = Rng::new(7);
    for dt in [DType::F32, DType::F64] {
        for shape in shapes {
            let n: usize = shape.iter().product();
            // Mostly special values; a second input of ordinary values with
            // a few specials makes overflowing products land in different
            // leaves.
            for dense in [true, false] {
                let vals: Vec<f64> = (0..n)
                    .map(|_| {
                        if dense || rng.next_u64().is_multiple_of(64) {
                            special(&mut rng, dt)
                        } else {
                            rng.uniform(0.5, 2.0)
                        }
                    })
                    .collect();
                let x = Array::from_slice(&vals, shape)?.astype(dt)?;
                for (name, f) in EDGE_OPS {
                    let want = to_f64(&f(&x)?)?;
                    for mode in [Mode::Compiled, Mode::Shapeless, Mode::Fused] {
                        let got = to_f64(&run(mode, &x, f)?)?;
                        assert!(
                            same_bits(&got, &want),
                            "{name} {dt} {shape:?} dense={dense} {mode:?}: compiled {:?} eager {:?}",
                            &got[..got.len().min(4)],
                            &want[..want.len().min(4)]
                        );
                    }
                }
            }
        }
    }
    Ok(())
}

/// The two reported cases: a product through an overflow (NaN compiled,
/// -0.0 eager) and `logsumexp` over no axes of -0.0 (+0.0 eager, -0.0
/// compiled).
#[test]
fn reported_edge_cases() -> R {
    let x = Array::from_slice(&[-0.0f32], &[1])?;
    for mode in MODES {
        let got = run(mode, &x, |x| x.logsumexp(Axes::Some(vec![]), false))?.to_vec::<f32>()?;
        assert_eq!(got[0].to_bits(), 0.0f32.to_bits(), "logsumexp(-0) over no axes is +0 ({mode:?})");
    }
    // A long row whose product overflows in one order and underflows to
    // -0 in another: every mode multiplies in the kernel's pairwise order.
    let n = 70001;
    let mut vals = vec![1.0f32; n];
    vals[0] = 1e30;
    vals[40000] = 1e30;
    vals[n - 1] = -1e-30;
    vals[n - 2] = 1e-30;
    vals[n - 3] = 1e-30;
    let x = Array::from_slice(&vals, &[n])?;
    let want = x.prod(Axes::All, false)?.to_vec::<f32>()?[0];
    for mode in MODES {
        let got = run(mode, &x, |x| x.prod(Axes::All, false))?.to_vec::<f32>()?[0];
        assert!(got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()), "{mode:?}: {got} vs {want}");
    }
    Ok(())
}

/// Long rows of ordinary values through the fused kernel's partial results
/// (rows over 2^15) and the eager kernel's split of a long row across
/// threads: compiled equals eager bit for bit, in every dtype.
#[test]
fn long_rows_fold_in_one_order_compiled_and_eager() -> R {
    const OPS: [Op; 10] = [
        ("sum last", |x| x.sum(-1, false)),
        ("sum all", |x| x.sum(Axes::All, false)),
        ("mean last", |x| x.mean(-1, false)),
        ("mean all", |x| x.mean(Axes::All, false)),
        ("prod last", |x| x.prod(-1, false)),
        ("max last", |x| x.max(-1, false)),
        ("min all", |x| x.min(Axes::All, false)),
        ("logsumexp last", |x| x.logsumexp(-1, false)),
        ("var last", |x| x.var(-1, false, 0)),
        ("var all ddof 1", |x| x.var(Axes::All, false, 1)),
    ];
    let shapes: [&[usize]; 4] = [&[70001], &[2, 65537], &[1, 200003], &[3, 100001]];
    let mut rng = Rng::new(11);
    for dt in [DType::F32, DType::F64, DType::F16, DType::BF16] {
        for shape in shapes {
            let n: usize = shape.iter().product();
            let vals: Vec<f64> = (0..n).map(|_| rng.uniform(0.99, 1.01)).collect();
            let x = Array::from_slice(&vals, shape)?.astype(dt)?;
            for (name, f) in OPS {
                let want = to_f64(&f(&x)?)?;
                for mode in [Mode::Compiled, Mode::Shapeless, Mode::Fused] {
                    let got = to_f64(&run(mode, &x, f)?)?;
                    assert!(same_bits(&got, &want), "{name} {dt} {shape:?} {mode:?}: compiled {got:?} eager {want:?}");
                }
            }
        }
    }
    Ok(())
}

/// Values apart, counting along the line of ordered 16-bit patterns.
fn ulps16(a: u16, b: u16) -> u32 {
    let key = |b: u16| {
        let b = b as i32;
        if b & 0x8000 != 0 {
            -(b & 0x7fff)
        } else {
            b
        }
    };
    (key(a) - key(b)).unsigned_abs()
}

macro_rules! every_half_value {
    ($name:ident, $t:ty, $dt:expr) => {
        #[test]
        fn $name() -> R {
            // All 65536 bit patterns, through each op, eager and compiled:
            // the arithmetic is the exact f64 result rounded once (f32 is
            // wide enough for +, *, / and sqrt of 16-bit floats), the
            // transcendentals (computed in f32 by simd_math, then rounded)
            // within one ulp of the rounded f64 value.
            let all: Vec<$t> = (0..=u16::MAX).map(<$t>::from_bits).collect();
            let x = Array::from_slice(&all, &[all.len()])?;
            let rev: Vec<$t> = all.iter().rev().copied().collect();
            let y = Array::from_slice(&rev, &[rev.len()])?;
            type Op = (&'static str, fn(&Array, &Array) -> Result<Array>, fn(f64, f64) -> f64, u32);
            let ops: [Op; 9] = [
                ("add", |x, y| x + y, |a, b| a + b, 0),
                ("mul", |x, y| x * y, |a, b| a * b, 0),
                ("div", |x, y| x / y, |a, b| a / b, 0),
                ("sqrt", |x, _| kiln::sqrt(x), |a, _| a.sqrt(), 0),
                ("exp", |x, _| kiln::exp(x), |a, _| a.exp(), 1),
                ("tanh", |x, _| kiln::tanh(x), |a, _| a.tanh(), 1),
                ("log", |x, _| kiln::log(x), |a, _| a.ln(), 1),
                ("erf", |x, _| kiln::erf(x), |a, _| libm::erf(a), 1),
                ("sigmoid", |x, _| kiln::sigmoid(x), |a, _| 1.0 / (1.0 + (-a).exp()), 1),
            ];
            for (name, f, reference, ulps) in ops {
                let compiled = compile(f);
                for (mode, got) in [("eager", f(&x, &y)?), ("compiled", compiled.call((&x, &y))?)] {
                    assert_eq!(got.dtype(), $dt, "{name}");
                    let got = got.to_vec::<$t>()?;
                    for (i, g) in got.iter().enumerate() {
                        let want = <$t>::from_f64(reference(all[i].to_f64(), rev[i].to_f64()));
                        let ok = (g.is_nan() && want.is_nan()) || ulps16(g.to_bits(), want.to_bits()) <= ulps;
                        assert!(ok, "{name} ({mode}) of {} and {}: {g}, want {want}", all[i], rev[i]);
                    }
                }
            }
            Ok(())
        }
    };
}

every_half_value!(every_f16_through_elementwise_ops_is_rounded_from_the_f64_result, f16, DType::F16);
every_half_value!(every_bf16_through_elementwise_ops_is_rounded_from_the_f64_result, bf16, DType::BF16);
