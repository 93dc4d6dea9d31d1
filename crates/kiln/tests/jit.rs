//! Compiled kernels (`backend::cpu::jit`) against the tile interpreter.
//!
//! Eager evaluation runs every op as a group of one, on the interpreter; a
//! compiled function runs its fused groups as generated machine code when
//! the CPU has AVX-512 or AVX2 and FMA (each with its own generator). Both
//! compute the same operations (the transcendental functions are recorded
//! from `simd_math`'s own code, for the level the interpreter runs), so
//! results must be equal bit for bit, on every length (the last partial
//! vector is masked), on special values and on broadcast inputs.

mod common;

use common::{int_model, Rng};
use kiln::backend::cpu::{jit, simd_math};
use kiln::{compile, Array, DType, Result};

/// Bit-equal, or both NaN.
fn assert_same(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let same = g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan());
        assert!(same, "{what}: element {i}: compiled {g:e} ({:#x}), eager {w:e} ({:#x})", g.to_bits(), w.to_bits());
    }
}

/// Random values in `[-lo, hi]` with special values sprinkled in.
fn values(rng: &mut Rng, n: usize, scale: f64) -> Vec<f32> {
    let specials = [
        0.0,
        -0.0,
        f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        1e-40,
        -1e-40,
        f32::MAX,
        f32::MIN_POSITIVE,
        88.0,
        -104.0,
        0.55,
        3.92,
    ];
    let mut v = rng.floats_f32(n, -scale, scale);
    for x in v.iter_mut() {
        if rng.int(0, 9) == 0 {
            *x = rng.pick(&specials);
        }
    }
    v
}

type F2 = fn(&Array, &Array) -> Result<Array>;

fn gelu_tanh(x: &Array, _: &Array) -> Result<Array> {
    let inner = ((x + ((x * x)? * x)? * 0.044715f32)? * 0.797_884_6_f32)?;
    (x * 0.5f32)? * (inner.tanh()? + 1.0f32)?
}
fn gelu_erf(x: &Array, _: &Array) -> Result<Array> {
    (((x * std::f32::consts::FRAC_1_SQRT_2)?.erf()? + 1.0f32)? * x)? * 0.5f32
}
fn softplus_ish(x: &Array, y: &Array) -> Result<Array> {
    (x.exp()?.log1p()? - y.sigmoid()?)? / (y.abs()? + 1.0f32)?
}
fn max_min(x: &Array, y: &Array) -> Result<Array> {
    (x.maximum(y)? - x.minimum(y)?)?.maximum(0.0f32)?.minimum(&y.neg()?)
}
fn roots_and_rounding(x: &Array, y: &Array) -> Result<Array> {
    let r = (x.abs()? + 1e-3f32)?.rsqrt()?;
    ((r * y.floor()?)? + (y.ceil()? - x.round()?)?)? * x.square()?.sqrt()?
}
fn logs(x: &Array, y: &Array) -> Result<Array> {
    ((x.abs()?.log()? * y)?.expm1()? + x.reciprocal()?)?.neg()
}

const FUNCTIONS: [(&str, F2); 6] = [
    ("gelu_tanh", gelu_tanh),
    ("gelu_erf", gelu_erf),
    ("softplus_ish", softplus_ish),
    ("max_min", max_min),
    ("roots_and_rounding", roots_and_rounding),
    ("logs", logs),
];

#[test]
fn compiled_kernels_match_the_interpreter_bit_for_bit_at_every_length() -> Result<()> {
    let before = jit::counts().0;
    let mut rng = Rng::new(41);
    for (name, f) in FUNCTIONS {
        let c = compile(f);
        for n in (1..=40).chain([2047, 2048, 2049, 4096 + 13, 70_001]) {
            let x = Array::from_vec(values(&mut rng, n, 6.0), &[n])?;
            let y = Array::from_vec(values(&mut rng, n, 6.0), &[n])?;
            let got = c.call((&x, &y))?.to_vec::<f32>()?;
            let want = jit::interpreted(|| f(&x, &y)?.to_vec::<f32>())?;
            assert_same(&got, &want, &format!("{name} on {n} elements"));
        }
    }
    if jit::enabled() {
        assert!(jit::counts().0 > before, "the compiled functions ran generated code");
    }
    Ok(())
}

#[test]
fn broadcast_inputs_are_loaded_once_and_match() -> Result<()> {
    let mut rng = Rng::new(7);
    let f = |x: &Array, row: &Array, col: &Array, s: &Array| -> Result<Array> {
        ((((x * row)? + col)?.tanh()? * s)? - (row * col)?.sigmoid()?)? + s.exp()?
    };
    let c = compile(f);
    for (r, k) in [(7, 33), (3, 2048), (5, 3000), (1, 1), (64, 16)] {
        let x = Array::from_vec(values(&mut rng, r * k, 3.0), &[r, k])?;
        let row = Array::from_vec(values(&mut rng, k, 3.0), &[k])?;
        let col = Array::from_vec(values(&mut rng, r, 3.0), &[r, 1])?;
        let s = Array::from_vec(vec![0.75f32], &[])?;
        let got = c.call((&x, &row, &col, &s))?.to_vec::<f32>()?;
        let want = jit::interpreted(|| f(&x, &row, &col, &s)?.to_vec::<f32>())?;
        assert_same(&got, &want, &format!("broadcast ({r}, {k})"));
    }
    Ok(())
}

#[test]
fn groups_with_several_outputs_write_each() -> Result<()> {
    let mut rng = Rng::new(3);
    let f = |x: &Array, y: &Array| -> Result<(Array, Array, Array)> {
        let t = (x * y)?.tanh()?;
        Ok(((&t * 2.0f32)?, (&t + x)?.erf()?, (y - &t)?))
    };
    let c = compile(f);
    for n in [5, 16, 2049, 100_003] {
        let x = Array::from_vec(values(&mut rng, n, 4.0), &[n])?;
        let y = Array::from_vec(values(&mut rng, n, 4.0), &[n])?;
        let (a, b, d) = c.call((&x, &y))?;
        let (wa, wb, wd) = f(&x, &y)?;
        assert_same(&a.to_vec::<f32>()?, &wa.to_vec::<f32>()?, "first output");
        assert_same(&b.to_vec::<f32>()?, &wb.to_vec::<f32>()?, "second output");
        assert_same(&d.to_vec::<f32>()?, &wd.to_vec::<f32>()?, "third output");
    }
    Ok(())
}

/// `k` values (`tanh`, then `sigmoid`s) each read by two outputs that
/// consume them in opposite orders: whatever the order of evaluation, all
/// `k` are live at once.
fn live_at_once(x: &Array, k: usize) -> Result<(Array, Array)> {
    let mut vs = vec![x.tanh()?];
    for _ in 1..k {
        let next = vs.last().expect("one value").sigmoid()?;
        vs.push(next);
    }
    let mut up = vs[0].clone();
    for v in &vs[1..] {
        up = (&up + v)?;
    }
    let mut down = vs[k - 1].clone();
    for v in vs[..k - 1].iter().rev() {
        down = (&down * v)?;
    }
    Ok((up, down))
}

#[test]
fn programs_needing_more_registers_spill_or_run_on_the_interpreter() -> Result<()> {
    // Forty values, each read by two outputs that consume them in opposite
    // orders: whatever the order of evaluation, all forty are live at once,
    // more than the 32 vector registers of AVX-512 and the 16 of AVX2. The
    // AVX-512 generator declines and the interpreter runs the group; the
    // AVX2 one spills values to the stack. Either way, the eager result.
    let f = |x: &Array| live_at_once(x, 40);
    let (generated, declined) = jit::counts();
    let c = compile(f);
    let mut rng = Rng::new(11);
    for n in [0, 7, 9, 16, 17, 4099] {
        let x = Array::from_vec(values(&mut rng, n, 2.0), &[n])?;
        let ((a, b), (wa, wb)) = (c.call(&x)?, f(&x)?);
        assert_same(&a.to_vec::<f32>()?, &wa.to_vec::<f32>()?, "forty live values, first output");
        assert_same(&b.to_vec::<f32>()?, &wb.to_vec::<f32>()?, "forty live values, second output");
    }
    match jit::target() {
        Some(simd_math::Level::Avx512) => assert!(jit::counts().1 > declined, "code generation declined"),
        Some(_) => {
            assert!(jit::counts().0 > generated, "the AVX2 generator spills instead");
            let x = Array::from_vec(vec![0.5f32; 64], &[64])?;
            assert!(c.explain(&x)?.contains("code:    machine code ("));
        }
        None => {}
    }
    Ok(())
}

#[test]
fn programs_too_wide_for_two_vectors_per_iteration_compile_for_one() -> Result<()> {
    // As above with twenty values: live at once, they fit the 32 vector
    // registers once but not twice, so the loop computes one vector per
    // iteration instead of two, and is still generated.
    let f = |x: &Array| live_at_once(x, 20);
    let c = compile(f);
    let mut rng = Rng::new(12);
    for n in [9, 31, 32, 33, 4099] {
        let x = Array::from_vec(values(&mut rng, n, 2.0), &[n])?;
        if jit::enabled() {
            let text = c.explain(&x)?;
            assert!(text.contains("code:    machine code ("), "{text}");
        }
        let ((a, b), (wa, wb)) = (c.call(&x)?, f(&x)?);
        assert_same(&a.to_vec::<f32>()?, &wa.to_vec::<f32>()?, "twenty live values, first output");
        assert_same(&b.to_vec::<f32>()?, &wb.to_vec::<f32>()?, "twenty live values, second output");
    }
    Ok(())
}

#[test]
fn strided_inputs_are_gathered_before_the_kernel() -> Result<()> {
    let mut rng = Rng::new(5);
    let f = |x: &Array, y: &Array| -> Result<Array> { ((x * y)? + 1.0f32)?.sigmoid()? * x };
    let c = compile(f);
    for (r, k) in [(9, 31), (40, 70)] {
        let base = Array::from_vec(values(&mut rng, r * k, 3.0), &[r, k])?;
        let xt = base.t()?;
        let y = Array::from_vec(values(&mut rng, r * k, 3.0), &[k, r])?;
        assert_same(&c.call((&xt, &y))?.to_vec::<f32>()?, &f(&xt, &y)?.to_vec::<f32>()?, "transposed input");
    }
    Ok(())
}

#[test]
fn explain_says_how_each_elementwise_kernel_runs() -> Result<()> {
    let x = Array::from_vec(vec![0.5f32; 64], &[64])?;
    let compiled = compile(gelu_erf).explain((&x, &x))?;
    let x64 = x.astype(kiln::DType::I64)?;
    let wide = compile(|x: &Array| (x * 2)?.remainder(x)).explain(&x64)?;
    let trig = compile(|x: &Array| (x.sin()? * 2.0f32)?.exp()).explain(&x)?;
    let single = compile(|x: &Array| x.exp()).explain(&x)?;
    if jit::enabled() {
        assert!(compiled.contains("code:    machine code ("), "{compiled}");
        assert!(wide.contains("tile interpreter (a value is not f32, i32, u8, bool or a 16-bit float"), "{wide}");
        assert!(trig.contains("code:    machine code ("), "{trig}");
    } else {
        assert!(compiled.contains("code:    tile interpreter (the code generator needs AVX2 and FMA"), "{compiled}");
    }
    if jit::enabled() {
        assert!(single.contains("code:    machine code ("), "a single op is compiled: {single}");
    }
    Ok(())
}

#[test]
fn kernels_with_every_pointer_register_in_use() -> Result<()> {
    // Nine inputs and two outputs: the nine general registers that hold
    // pointers are all taken (including rbp and rdx), and one more pointer
    // is read from its table.
    let f = |a: &[Array]| -> Result<Vec<Array>> {
        let mut acc = (&a[0] * &a[1])?;
        for (i, x) in a.iter().enumerate().skip(2) {
            acc = if i % 2 == 0 { (&acc + x)?.tanh()? } else { (&acc - x)? };
        }
        Ok(vec![acc.clone(), (&acc * &a[8])?.exp()?])
    };
    let c = compile(f);
    let mut rng = Rng::new(19);
    for n in [3, 2048 + 5] {
        let xs: Vec<Array> = (0..9).map(|_| Array::from_vec(values(&mut rng, n, 2.0), &[n])).collect::<Result<_>>()?;
        let got = c.call(&xs[..])?;
        let want = f(&xs)?;
        for (g, w) in got.iter().zip(&want) {
            assert_same(&g.to_vec::<f32>()?, &w.to_vec::<f32>()?, "nine inputs, two outputs");
        }
        let plan = c.explain(&xs[..])?;
        assert!(!jit::enabled() || plan.contains("code:    machine code"), "{plan}");
    }
    Ok(())
}

/// An Adam step: four arrays and eight scalar hyperparameters in, the new
/// parameters and both moments out.
fn adam(a: &[Array]) -> Result<Vec<Array>> {
    let [p, g, m, v, b1, omb1, b2, omb2, lr, c1, c2, eps] = a else { unreachable!("twelve arguments") };
    let m2 = ((b1 * m)? + (omb1 * g)?)?;
    let v2 = ((b2 * v)? + ((omb2 * g)? * g)?)?;
    let step = ((lr * (&m2 / c1)?)? / ((&v2 / c2)?.sqrt()? + eps)?)?;
    Ok(vec![(p - step)?, m2, v2])
}

#[test]
fn scalars_take_no_pointer_register_and_many_streams_compile() -> Result<()> {
    // Adam: 12 inputs and 3 outputs, more pointers than the kernel has
    // general registers for; the 8 scalars are read once, before the loop.
    let c = compile(adam);
    let mut rng = Rng::new(23);
    for n in [1, 37, 4096 + 9, 100_003] {
        let mut args: Vec<Array> =
            (0..4).map(|_| Array::from_vec(values(&mut rng, n, 2.0), &[n])).collect::<Result<_>>()?;
        for h in [0.9f32, 0.1, 0.999, 0.001, 1e-3, 0.19, 0.002, 1e-8] {
            args.push(Array::scalar(h));
        }
        let got = c.call(&args[..])?;
        let want = adam(&args)?;
        for (k, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_same(&g.to_vec::<f32>()?, &w.to_vec::<f32>()?, &format!("adam output {k}, {n} positions"));
        }
        let plan = c.explain(&args[..])?;
        assert!(!jit::enabled() || plan.contains("code:    machine code"), "{plan}");
    }
    // Twenty streamed inputs and six outputs: pointers past the registers'
    // are read from the kernel's tables.
    let wide = |a: &[Array]| -> Result<Vec<Array>> {
        let mut acc = a[0].clone();
        let mut outs = Vec::new();
        for (k, x) in a.iter().enumerate().skip(1) {
            acc = ((&acc * x)? + x)?.tanh()?;
            if k % 4 == 0 {
                outs.push(acc.clone());
            }
        }
        outs.push((&acc * 2.0f32)?);
        Ok(outs)
    };
    let c = compile(wide);
    for n in [3, 2048 + 5] {
        let xs: Vec<Array> = (0..20).map(|_| Array::from_vec(values(&mut rng, n, 2.0), &[n])).collect::<Result<_>>()?;
        let got = c.call(&xs[..])?;
        let want = wide(&xs)?;
        assert_eq!(got.len(), 5);
        for (k, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_same(&g.to_vec::<f32>()?, &w.to_vec::<f32>()?, &format!("wide output {k}, {n} positions"));
        }
        let plan = c.explain(&xs[..])?;
        assert!(!jit::enabled() || plan.contains("code:    machine code"), "{plan}");
    }
    Ok(())
}

#[test]
fn threads_share_a_compiled_function_and_its_kernels() -> Result<()> {
    // Four threads call one compiled function at once, with broadcast
    // patterns that need different kernel variants, all generated on demand.
    let f = |x: &Array, s: &Array| -> Result<Array> { (gelu_tanh(x, x)? * s)?.sigmoid() };
    let c = compile(f);
    std::thread::scope(|scope| -> Result<()> {
        let handles: Vec<_> = (0..4u64)
            .map(|t| {
                let c = &c;
                scope.spawn(move || -> Result<()> {
                    let mut rng = Rng::new(100 + t);
                    for n in [17, 3000, 70_000] {
                        let x = Array::from_vec(values(&mut rng, n, 3.0), &[n])?;
                        let s = if t % 2 == 0 {
                            Array::from_vec(vec![0.5f32], &[1])?
                        } else {
                            Array::from_vec(values(&mut rng, n, 1.0), &[n])?
                        };
                        assert_same(&c.call((&x, &s))?.to_vec::<f32>()?, &f(&x, &s)?.to_vec::<f32>()?, "threads");
                    }
                    Ok(())
                })
            })
            .collect();
        for h in handles {
            h.join().expect("no thread panics")?;
        }
        Ok(())
    })
}

#[test]
fn code_is_generated_wherever_the_cpu_has_avx2_and_fma() -> Result<()> {
    // On x86-64, every CPU with AVX2 and FMA compiles (unless KILN_JIT=0),
    // with the generator of its best level.
    let off = std::env::var("KILN_JIT").is_ok_and(|v| v == "0");
    let level = simd_math::detected_level();
    if cfg!(target_arch = "x86_64") && level >= simd_math::Level::Avx2 && !off {
        assert_eq!(jit::target(), Some(level));
        let x = Array::from_vec(vec![0.5f32; 64], &[64])?;
        for (name, f) in FUNCTIONS {
            let text = compile(f).explain((&x, &x))?;
            assert!(text.contains("code:    machine code ("), "{name}: {text}");
        }
    }
    Ok(())
}

#[test]
fn every_tail_length_from_0_to_17_and_around_the_unrolled_loop() -> Result<()> {
    // AVX2 moves 8 lanes per vector (16 per unrolled iteration), AVX-512 16
    // (32): lengths 0..=17 cover an empty run, every partial last vector
    // alone and after one full vector; 31..=49 the unrolled loop's edges.
    let mut rng = Rng::new(23);
    for (name, f) in FUNCTIONS {
        let c = compile(f);
        for n in (0..=17).chain(31..=49) {
            let x = Array::from_vec(values(&mut rng, n, 5.0), &[n])?;
            let y = Array::from_vec(values(&mut rng, n, 5.0), &[n])?;
            let got = c.call((&x, &y))?.to_vec::<f32>()?;
            let want = jit::interpreted(|| f(&x, &y)?.to_vec::<f32>())?;
            assert_same(&got, &want, &format!("{name} on {n} elements"));
        }
    }
    Ok(())
}

#[test]
fn broadcast_inputs_at_every_tail_length() -> Result<()> {
    // A row broadcast down the columns and a scalar: loaded once, before
    // the loop (kept in stack slots by the AVX2 generator), at every length.
    let f = |x: &Array, row: &Array, s: &Array| -> Result<Array> {
        (gelu_tanh(&(x * row)?, x)? + (row * s)?.tanh()?)?.maximum(&(s - x)?)
    };
    let c = compile(f);
    let mut rng = Rng::new(29);
    for k in 0..=17 {
        for r in [1, 3] {
            let x = Array::from_vec(values(&mut rng, r * k, 3.0), &[r, k])?;
            let row = Array::from_vec(values(&mut rng, k, 3.0), &[k])?;
            let s = Array::from_vec(vec![rng.pick(&[0.25f32, -0.0, f32::NAN, f32::INFINITY])], &[])?;
            let got = c.call((&x, &row, &s))?.to_vec::<f32>()?;
            assert_same(
                &got,
                &jit::interpreted(|| f(&x, &row, &s)?.to_vec::<f32>())?,
                &format!("broadcast row of {k}, {r} rows"),
            );
        }
    }
    Ok(())
}

/// Special values: signed zeros, infinities, NaN, subnormals, the extremes.
const SPECIALS: [f32; 12] = [
    0.0,
    -0.0,
    f32::NAN,
    f32::INFINITY,
    f32::NEG_INFINITY,
    1.0,
    -1.0,
    1e-40,
    -1e-40,
    f32::MAX,
    f32::MIN,
    f32::MIN_POSITIVE,
];

#[test]
fn special_values_through_maximum_minimum_and_selections() -> Result<()> {
    // Every pair of special values through maximum and minimum (NaN
    // propagates, -0 and 0 keep their order) and the functions whose
    // kernels compare and select (log's domain, tanh's branches, NaN kept).
    let pairs: Vec<(f32, f32)> = SPECIALS.iter().flat_map(|&a| SPECIALS.iter().map(move |&b| (a, b))).collect();
    let (xs, ys): (Vec<f32>, Vec<f32>) = pairs.into_iter().unzip();
    let n = xs.len();
    let x = Array::from_vec(xs, &[n])?;
    let y = Array::from_vec(ys, &[n])?;
    let fs: [(&str, F2); 5] = [
        ("max_min", max_min),
        ("maximum then minimum", |x, y| x.maximum(y)?.minimum(&(y - 1.0f32)?)),
        ("minimum of negations", |x, y| x.neg()?.minimum(&y.neg()?)?.neg()),
        ("logs", logs),
        ("selections", |x, y| ((x.log()? + y.tanh()?)? - x.sigmoid()?.erf()?)?.maximum(&y.expm1()?)),
    ];
    for (name, f) in fs {
        let c = compile(f);
        assert_same(&c.call((&x, &y))?.to_vec::<f32>()?, &jit::interpreted(|| f(&x, &y)?.to_vec::<f32>())?, name);
        assert_same(&c.call((&y, &x))?.to_vec::<f32>()?, &jit::interpreted(|| f(&y, &x)?.to_vec::<f32>())?, name);
    }
    Ok(())
}

#[test]
fn transcendental_chains_match_the_interpreter_on_random_and_special_values() -> Result<()> {
    // One function and a negation: the compiled kernel runs the recorded
    // simd_math code, the interpreter its own; over wide random ranges with
    // special values mixed in.
    let fs: [(&str, F2, f64); 19] = [
        ("atan2", |x, y| x.atan2(y)?.neg(), 1e3),
        ("remainder", |x, y| x.remainder(y)?.neg(), 40.0),
        ("floor_divide", |x, y| x.floor_divide(y)?.neg(), 40.0),
        ("pow", |x, y| x.pow(y)?.neg(), 40.0),
        ("pow_scalar", |x, _| x.pow(0.37f32)?.neg(), 1e3),
        ("pow_abs", |x, y| x.abs()?.pow(&(y * 0.1f32)?)?.neg(), 1e3),
        ("sin", |x, _| x.sin()?.neg(), 1e5),
        ("cos", |x, _| x.cos()?.neg(), 1e5),
        ("tan", |x, _| x.tan()?.neg(), 1e5),
        ("log2", |x, _| x.log2()?.neg(), 1e6),
        ("log10", |x, _| x.log10()?.neg(), 1e6),
        ("gelu_tanh", gelu_tanh, 12.0),
        ("gelu_erf", gelu_erf, 12.0),
        ("sigmoid", |x, _| x.sigmoid()?.neg(), 120.0),
        ("exp", |x, _| x.exp()?.neg(), 120.0),
        ("expm1", |x, _| x.expm1()?.neg(), 120.0),
        ("log", |x, _| x.log()?.neg(), 1e6),
        ("log1p", |x, _| x.log1p()?.neg(), 1e3),
        ("tanh", |x, _| x.tanh()?.neg(), 12.0),
    ];
    let mut rng = Rng::new(31);
    for (name, f, scale) in fs {
        let c = compile(f);
        for n in [1, 8, 13, 1000, 4096 + 5] {
            let mut v = values(&mut rng, n, scale);
            for x in v.iter_mut().take(SPECIALS.len()) {
                *x = rng.pick(&SPECIALS);
            }
            let x = Array::from_vec(v, &[n])?;
            // The second operand: x reversed, so binary ops see other pairs.
            let y = kiln::slice_axis(&x, 0, None, None, -1)?;
            assert_same(&c.call((&x, &y))?.to_vec::<f32>()?, &jit::interpreted(|| f(&x, &y)?.to_vec::<f32>())?, name);
        }
        if jit::enabled() {
            let x = Array::from_vec(vec![0.5f32; 64], &[64])?;
            let text = c.explain((&x, &x))?;
            assert!(text.contains("code:    machine code ("), "{name}: {text}");
        }
    }
    Ok(())
}

/// Two `f32` results of `f` on the interpreter, read inside
/// [`jit::interpreted`] (arrays are lazy until read: read outside, they
/// would run generated code).
fn interpreted_pair(f: impl FnOnce() -> Result<(Array, Array)>) -> Result<(Vec<f32>, Vec<f32>)> {
    jit::interpreted(|| {
        let (a, b) = f()?;
        Ok((a.to_vec::<f32>()?, b.to_vec::<f32>()?))
    })
}

/// Sine, cosine and tangent around other live values: vectors with a lane
/// beyond the vector reduction's range call out of the kernel, which must
/// keep every register (other values, both unrolled copies, the tail's
/// mask) and fix only those lanes, as the interpreter does.
fn trig_mix(x: &Array, y: &Array) -> Result<(Array, Array)> {
    let a = (x.sin()? * y.exp()?)?;
    let b = ((x * 3.0f32)?.cos()? * y.tanh()?)?;
    let t = (y * 4e4f32)?.tan()?;
    Ok((((&a + &b)? + &t)?, (a - (b * t)?)?))
}

#[test]
fn trigonometry_calls_out_for_large_lanes_and_matches_the_interpreter() -> Result<()> {
    let c = compile(|x: &Array, y: &Array| trig_mix(x, y));
    let mut rng = Rng::new(77);
    let big =
        [65_536.0f32, 65_536.01, -70_000.0, 1e6, -3e9, 1e30, f32::MAX, f32::INFINITY, f32::NEG_INFINITY, f32::NAN];
    for n in [1, 7, 16, 17, 31, 32, 33, 100, 1000, 4096 + 3] {
        for density in [0usize, 1, 50] {
            // `density` lanes in a hundred are beyond the limit (0: none).
            let mut xs = rng.floats_f32(n, -30_000.0, 30_000.0);
            let ys = rng.floats_f32(n, -2.0, 2.0);
            for v in xs.iter_mut() {
                if (rng.int(0, 99) as usize) < density {
                    *v = rng.pick(&big);
                }
            }
            let x = Array::from_vec(xs, &[n])?;
            let y = Array::from_vec(ys, &[n])?;
            let (g0, g1) = c.call((&x, &y))?;
            let (w0, w1) = interpreted_pair(|| trig_mix(&x, &y))?;
            let what = format!("{n} positions, {density}% large");
            assert_same(&g0.to_vec::<f32>()?, &w0, &what);
            assert_same(&g1.to_vec::<f32>()?, &w1, &what);
        }
    }
    if jit::enabled() {
        let x = Array::from_vec(vec![0.5f32; 64], &[64])?;
        let text = c.explain((&x, &x))?;
        assert!(text.contains("code:    machine code ("), "{text}");
        assert!(!text.contains("tile interpreter"), "{text}");
    }
    // f64: the lanes the vector code leaves to the C library (beyond its
    // limit, and within 2^-30 of a nonzero multiple of π/2) call out too.
    use std::f64::consts::FRAC_PI_2;
    let big = [
        823_549.5,
        1e6,
        -3e9,
        1e300,
        f64::MAX,
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::NAN,
        FRAC_PI_2,
        -7.0 * FRAC_PI_2,
        1e5 * FRAC_PI_2,
    ];
    for n in [1, 3, 4, 5, 8, 9, 15, 16, 17, 100, 1000 + 3] {
        for density in [0usize, 1, 50] {
            let mut xs: Vec<f64> = rng.floats(n, -30_000.0, 30_000.0);
            let ys: Vec<f64> = rng.floats(n, -2.0, 2.0);
            for v in xs.iter_mut() {
                if (rng.int(0, 99) as usize) < density {
                    *v = rng.pick(&big);
                }
            }
            let x = Array::from_vec(xs, &[n])?;
            let y = Array::from_vec(ys, &[n])?;
            let (g0, g1) = c.call((&x, &y))?;
            let (w0, w1) = jit::interpreted(|| -> Result<(Vec<f64>, Vec<f64>)> {
                let (a, b) = trig_mix(&x, &y)?;
                Ok((a.to_vec::<f64>()?, b.to_vec::<f64>()?))
            })?;
            let what = format!("{n} f64 positions, {density}% large");
            assert_same64(&g0.to_vec::<f64>()?, &w0, &what);
            assert_same64(&g1.to_vec::<f64>()?, &w1, &what);
        }
    }
    if jit::enabled() {
        let x = Array::from_vec(vec![0.5f64; 64], &[64])?;
        let text = c.explain((&x, &x))?;
        assert!(text.contains("code:    machine code (") && !text.contains("tile interpreter"), "{text}");
    }
    Ok(())
}

/// Python's `divmod` pair as users write it (`x %% y` and `x %/% y` in R).
fn divmod_pair(x: &Array, y: &Array) -> Result<(Array, Array)> {
    Ok(((x.floor_divide(y)? * 2.0f32)?, (x.remainder(y)? + 1.0f32)?))
}

#[test]
fn floor_division_and_remainder_match_the_interpreter_at_any_magnitude() -> Result<()> {
    // Quotients near integers (a = k b, one ulp either side), huge ones
    // (the scalar code's lanes), tiny and subnormal operands, zeros of
    // both signs, infinities and NaN, each at random lanes.
    let c = compile(|x: &Array, y: &Array| divmod_pair(x, y));
    let mut rng = Rng::new(1234);
    let specials = [0.0f32, -0.0, f32::INFINITY, f32::NEG_INFINITY, f32::NAN, 1e-40, -3e-39, f32::MAX, 1e30];
    // Without special lanes no vector calls the scalar code: the vector
    // path alone must match.
    for (n, mixed) in [1, 15, 16, 17, 33, 1000, 4099].into_iter().flat_map(|n| [(n, false), (n, true)]) {
        let mut xs = Vec::with_capacity(n);
        let mut ys = Vec::with_capacity(n);
        for _ in 0..n {
            let y = (10f64.powf(rng.floats_f32(1, -3.0, 3.0)[0] as f64) as f32)
                * if rng.int(0, 1) == 0 { 1.0 } else { -1.0 };
            // Cases 1 and 2 (huge quotients, special values) call out.
            let case = if mixed { rng.int(0, 5) } else { [0, 3, 4, 5][rng.int(0, 3) as usize] };
            let x = match case {
                0 => {
                    let k = rng.int(-100_000, 100_000) as f32;
                    let v = k * y;
                    f32::from_bits((v.to_bits() as i64 + rng.int(-1, 1)) as u32)
                }
                1 => y * rng.floats_f32(1, -1e9, 1e9)[0],
                2 => rng.pick(&specials),
                _ => y * rng.floats_f32(1, -50.0, 50.0)[0],
            };
            xs.push(x);
            ys.push(if mixed && rng.int(0, 30) == 0 { rng.pick(&specials) } else { y });
        }
        let x = Array::from_vec(xs, &[n])?;
        let y = Array::from_vec(ys, &[n])?;
        let (g0, g1) = c.call((&x, &y))?;
        let (w0, w1) = interpreted_pair(|| divmod_pair(&x, &y))?;
        assert_same(&g0.to_vec::<f32>()?, &w0, &format!("floor_divide, {n}, mixed {mixed}"));
        assert_same(&g1.to_vec::<f32>()?, &w1, &format!("remainder, {n}, mixed {mixed}"));
    }
    if jit::enabled() {
        let x = Array::from_vec(vec![0.5f32; 64], &[64])?;
        let text = c.explain((&x, &x))?;
        assert!(text.contains("code:    machine code (") && !text.contains("tile interpreter"), "{text}");
    }
    Ok(())
}

/// [`divmod_pair`] of `f64` arrays.
fn divmod_pair64(x: &Array, y: &Array) -> Result<(Array, Array)> {
    Ok(((x.floor_divide(y)? * 2.0f64)?, (x.remainder(y)? + 1.0f64)?))
}

#[test]
fn f64_floor_division_and_remainder_match_the_interpreter_at_any_magnitude() -> Result<()> {
    // As the f32 test above, in f64: quotients near integers, huge ones
    // (beyond 2^51: the scalar code's lanes), subnormals, zeros, infinities
    // and NaN at random lanes, bit for bit.
    let c = compile(|x: &Array, y: &Array| divmod_pair64(x, y));
    let mut rng = Rng::new(4321);
    let specials = [0.0f64, -0.0, f64::INFINITY, f64::NEG_INFINITY, f64::NAN, 1e-310, -3e-308, f64::MAX, 1e300];
    for (n, mixed) in [1, 7, 8, 9, 17, 1000, 4099].into_iter().flat_map(|n| [(n, false), (n, true)]) {
        let mut xs = Vec::with_capacity(n);
        let mut ys = Vec::with_capacity(n);
        for _ in 0..n {
            let y = 10f64.powf(rng.uniform(-3.0, 3.0)) * if rng.int(0, 1) == 0 { 1.0 } else { -1.0 };
            let case = if mixed { rng.int(0, 5) } else { [0, 3, 4, 5][rng.int(0, 3) as usize] };
            let x = match case {
                0 => {
                    let v = rng.int(-100_000_000, 100_000_000) as f64 * y;
                    f64::from_bits((v.to_bits() as i64 + rng.int(-1, 1)) as u64)
                }
                1 => y * rng.uniform(-1e18, 1e18),
                2 => rng.pick(&specials),
                _ => y * rng.uniform(-50.0, 50.0),
            };
            xs.push(x);
            ys.push(if mixed && rng.int(0, 30) == 0 { rng.pick(&specials) } else { y });
        }
        let x = Array::from_vec(xs, &[n])?;
        let y = Array::from_vec(ys, &[n])?;
        let (g0, g1) = c.call((&x, &y))?;
        let (w0, w1) = jit::interpreted(|| -> Result<(Vec<f64>, Vec<f64>)> {
            let (a, b) = divmod_pair64(&x, &y)?;
            Ok((a.to_vec::<f64>()?, b.to_vec::<f64>()?))
        })?;
        assert_same64(&g0.to_vec::<f64>()?, &w0, &format!("floor_divide, {n}, mixed {mixed}"));
        assert_same64(&g1.to_vec::<f64>()?, &w1, &format!("remainder, {n}, mixed {mixed}"));
    }
    if jit::enabled() {
        let x = Array::from_vec(vec![0.5f64; 64], &[64])?;
        let text = c.explain((&x, &x))?;
        assert!(text.contains("code:    machine code (") && !text.contains("tile interpreter"), "{text}");
    }
    Ok(())
}

type F1 = fn(&Array) -> Result<Array>;

#[test]
fn eager_single_ops_are_compiled_once_and_match_the_interpreter() -> Result<()> {
    // Each eager elementwise op is a group of one op, compiled like any
    // other (tests/eager_code.rs: once per op and dtypes).
    let unary: [(&str, F1); 15] = [
        ("neg", |x| x.neg()),
        ("abs", |x| x.abs()),
        ("sqrt", |x| x.abs()?.sqrt()),
        ("rsqrt", |x| x.rsqrt()),
        ("square", |x| x.square()),
        ("exp", |x| x.exp()),
        ("expm1", |x| x.expm1()),
        ("log", |x| x.log()),
        ("log1p", |x| x.log1p()),
        ("tanh", |x| x.tanh()),
        ("sigmoid", |x| x.sigmoid()),
        ("erf", |x| x.erf()),
        ("floor", |x| x.floor()),
        ("round", |x| x.round()),
        ("times two", |x| x * 2.0f32),
    ];
    let binary: [(&str, F2); 5] = [
        ("add", |x, y| x + y),
        ("sub", |x, y| x - y),
        ("div", |x, y| x / y),
        ("maximum", |x, y| x.maximum(y)),
        ("minimum", |x, y| x.minimum(y)),
    ];
    let mut rng = Rng::new(61);
    let mut arrays = |n: usize| -> Result<(Array, Array)> {
        let mut v = values(&mut rng, n, 40.0);
        for x in v.iter_mut().take(SPECIALS.len()) {
            *x = rng.pick(&SPECIALS);
        }
        Ok((Array::from_vec(v, &[n])?, Array::from_vec(values(&mut rng, n, 40.0), &[n])?))
    };
    let lengths = [1, 15, 16, 17, 33, 4096 + 7, 70_001];
    for (name, f) in unary {
        for n in lengths {
            let (x, _) = arrays(n)?;
            let want = jit::interpreted(|| f(&x)?.to_vec::<f32>())?;
            assert_same(&f(&x)?.to_vec::<f32>()?, &want, &format!("{name} on {n} elements"));
            // Strided (a reversed view) and broadcast inputs too.
            let r = kiln::slice_axis(&x, 0, None, None, -1)?;
            assert_same(&f(&r)?.to_vec::<f32>()?, &jit::interpreted(|| f(&r)?.to_vec::<f32>())?, name);
        }
    }
    for (name, f) in binary {
        for n in lengths {
            let (x, y) = arrays(n)?;
            let want = jit::interpreted(|| f(&x, &y)?.to_vec::<f32>())?;
            assert_same(&f(&x, &y)?.to_vec::<f32>()?, &want, &format!("{name} on {n} elements"));
            let s = Array::from_vec(vec![0.375f32], &[1])?;
            assert_same(&f(&x, &s)?.to_vec::<f32>()?, &jit::interpreted(|| f(&x, &s)?.to_vec::<f32>())?, name);
        }
    }
    Ok(())
}

type F2Named = (&'static str, F2);

/// Functions whose groups hold `bool` values (comparisons, logical ops,
/// the NaN and infinity tests) inside, with `f32` inputs and outputs.
/// `x` plus each bool of `bs` as bit `k` of a sum (in `x`'s dtype).
fn bits_sum(x: &Array, bs: &[Array]) -> Result<Array> {
    let mut acc = x.clone();
    for (k, b) in bs.iter().enumerate() {
        acc = (acc + (b.astype(x.dtype())? * (1u32 << k) as f32)?)?;
    }
    Ok(acc)
}

const MASKED: [F2Named; 10] = [
    ("sign", |x, y| (x.sign()? * y.abs()?.sqrt()?)? + y.sign()?),
    ("leaky relu", |x, _| kiln::where_(&kiln::greater(x, 0.0f32)?, x, &(x * 0.01f32)?)),
    ("huber", |x, _| {
        let a = x.abs()?;
        kiln::where_(&kiln::less(&a, 1.0f32)?, &((x * x)? * 0.5f32)?, &(a - 0.5f32)?)
    }),
    ("every comparison as f32", |x, y| {
        let fs = [
            kiln::equal(x, y)?,
            kiln::not_equal(x, y)?,
            kiln::less(x, y)?,
            kiln::less_equal(x, y)?,
            kiln::greater(x, y)?,
            kiln::greater_equal(x, y)?,
        ];
        let mut acc = x.sigmoid()?;
        for (k, b) in fs.iter().enumerate() {
            acc = (acc + (b.astype(kiln::DType::F32)? * (1u32 << k) as f32)?)?;
        }
        Ok(acc)
    }),
    ("logical ops and tests", |x, y| {
        let keep = kiln::logical_and(&kiln::greater_equal(x, y)?, &kiln::logical_not(&kiln::isnan(x)?)?)?;
        let either = kiln::logical_or(&kiln::isinf(y)?, &kiln::less(x, -1.0f32)?)?;
        let z = kiln::where_(&keep, &x.exp()?, y)?;
        kiln::where_(&either, &z, &(kiln::isfinite(x)?.astype(kiln::DType::F32)? - y)?)
    }),
    ("truth of floats", |x, y| {
        // `where` and the logical ops read an f32 as nonzero (NaN is true).
        let t = kiln::where_(x, y, 2.0f32)?;
        (t + kiln::logical_not(y)?.astype(kiln::DType::F32)?)? + kiln::logical_or(x, y)?.astype(kiln::DType::F32)?
    }),
    // Ops of two bool values: + and maximum are or, * and minimum and,
    // comparisons order false before true; a bool is finite.
    ("bools compared", |x, y| {
        let (p, q) = (kiln::greater(x, 0.5f32)?, kiln::less(y, 0.25f32)?);
        bits_sum(x, &[kiln::equal(&p, &q)?, kiln::not_equal(&p, &q)?, kiln::less(&p, &q)?, kiln::less_equal(&p, &q)?])
    }),
    ("bools ordered", |x, y| {
        let (p, q) = (kiln::greater(x, 0.5f32)?, kiln::less(y, 0.25f32)?);
        bits_sum(x, &[kiln::greater(&p, &q)?, kiln::greater_equal(&p, &q)?, kiln::isnan(&p)?, kiln::isfinite(&q)?])
    }),
    ("bools added", |x, y| {
        let (p, q) = (kiln::greater(x, 0.5f32)?, kiln::less(y, 0.25f32)?);
        bits_sum(x, &[(&p + &q)?, (&p * &q)?, p.maximum(&q)?, p.minimum(&q)?])
    }),
    ("clamped erf with a masked rate", |x, y| {
        let r =
            kiln::where_(&kiln::logical_and(&kiln::greater(y, 0.0f32)?, &kiln::less_equal(y, 3.0f32)?)?, y, 1.0f32)?;
        (x * &r)?.erf()?.maximum(&(y - 2.0f32)?)
    }),
];

#[test]
fn groups_with_bool_values_inside_compile_and_match_the_interpreter() -> Result<()> {
    // Comparisons make lane masks that `where`, the logical ops and
    // `astype` consume in registers: the group is one generated kernel,
    // equal bit for bit to the interpreter's ops (bool tiles), on every
    // pair of special values and on random values at every tail length.
    let pairs: Vec<(f32, f32)> = SPECIALS.iter().flat_map(|&a| SPECIALS.iter().map(move |&b| (a, b))).collect();
    let (xs, ys): (Vec<f32>, Vec<f32>) = pairs.into_iter().unzip();
    let n = xs.len();
    let (sx, sy) = (Array::from_vec(xs, &[n])?, Array::from_vec(ys, &[n])?);
    let mut rng = Rng::new(71);
    let generated = jit::target().is_some() && jit::enabled();
    for (name, f) in MASKED {
        let c = compile(f);
        if generated {
            let text = c.explain((&sx, &sy))?;
            assert!(text.contains("code:    machine code (") && !text.contains("interpreter"), "{name}: {text}");
        }
        assert_same(&c.call((&sx, &sy))?.to_vec::<f32>()?, &jit::interpreted(|| f(&sx, &sy)?.to_vec::<f32>())?, name);
        assert_same(&c.call((&sy, &sx))?.to_vec::<f32>()?, &jit::interpreted(|| f(&sy, &sx)?.to_vec::<f32>())?, name);
        for k in [0, 1, 7, 15, 16, 17, 31, 33, 100] {
            let x = Array::from_vec(values(&mut rng, k, 3.0), &[k])?;
            let y = Array::from_vec(values(&mut rng, k, 3.0), &[k])?;
            let got = c.call((&x, &y))?.to_vec::<f32>()?;
            assert_same(&got, &jit::interpreted(|| f(&x, &y)?.to_vec::<f32>())?, &format!("{name}, {k} values"));
        }
        // A broadcast second operand: its masks are computed once, before the loop.
        let x = Array::from_vec(values(&mut rng, 40, 3.0), &[4, 10])?;
        let y = Array::from_vec(values(&mut rng, 10, 3.0), &[10])?;
        let got = c.call((&x, &y))?.to_vec::<f32>()?;
        assert_same(&got, &jit::interpreted(|| f(&x, &y)?.to_vec::<f32>())?, &format!("{name}, broadcast row"));
    }
    Ok(())
}

/// Bool arrays (bytes) in and out of compiled groups, against the
/// interpreter, bit for bit: the f32 output, then the bool one.
fn bool_io(x: &Array, m: &Array) -> Result<(Array, Array)> {
    let filled = kiln::where_(m, x, f32::NEG_INFINITY)?;
    let dropped = ((x * &m.astype(kiln::DType::F32)?)? * 2.0f32)?;
    let keep = kiln::logical_and(&kiln::logical_not(m)?, &kiln::greater(x, 0.5f32)?)?;
    Ok((filled.maximum(&dropped)?, keep))
}

#[test]
fn bool_inputs_and_outputs_are_read_and_written_as_bytes() -> Result<()> {
    // Generated code loads a bool input's bytes as a lane mask and stores
    // a bool output's mask as bytes 0 or 1 (AVX2 through a stack slot in
    // the last, partial vector): at every tail length, with a broadcast
    // mask row and a broadcast scalar mask, and through streamed outputs.
    let c = compile(|x: &Array, m: &Array| -> Result<Vec<Array>> {
        let (a, b) = bool_io(x, m)?;
        Ok(vec![a, b])
    });
    let check = |x: &Array, m: &Array, what: &str| -> Result<()> {
        let got = c.call((x, m))?;
        let (wa, wb) = jit::interpreted(|| -> Result<(Vec<f32>, Vec<bool>)> {
            let (a, b) = bool_io(x, m)?;
            Ok((a.to_vec::<f32>()?, b.to_vec::<bool>()?))
        })?;
        assert_same(&got[0].to_vec::<f32>()?, &wa, what);
        assert_eq!(got[1].to_vec::<bool>()?, wb, "{what}: bool output");
        Ok(())
    };
    let mut rng = Rng::new(83);
    let mask = |rng: &mut Rng, n: usize| -> Result<Array> {
        let v = values(rng, n, 3.0);
        kiln::greater(&Array::from_vec(v, &[n])?, 0.0f32)
    };
    for k in 0..=40 {
        let x = Array::from_vec(values(&mut rng, k, 3.0), &[k])?;
        check(&x, &mask(&mut rng, k)?, &format!("{k} positions"))?;
    }
    let x = Array::from_vec(values(&mut rng, 70, 3.0), &[7, 10])?;
    check(&x, &mask(&mut rng, 10)?, "broadcast mask row")?;
    check(&x, &kiln::greater(Array::scalar(1.0f32), 0.0f32)?, "broadcast true")?;
    check(&x, &kiln::greater(Array::scalar(-1.0f32), 0.0f32)?, "broadcast false")?;
    if jit::enabled() {
        let x = Array::from_vec(values(&mut rng, 64, 3.0), &[64])?;
        let text = c.explain((&x, &mask(&mut rng, 64)?))?;
        assert!(text.contains("code:    machine code (") && !text.contains("interpreter"), "{text}");
    }
    // Outputs streamed to memory (the limit lowered for this call only).
    let n = 200_003;
    let x = Array::from_vec(values(&mut rng, n, 3.0), &[n])?;
    let m = mask(&mut rng, n)?;
    let limit = kiln::backend::cpu::stream::stream_min_working_set();
    kiln::backend::cpu::stream::set_stream_min_working_set(1 << 16);
    let streamed = check(&x, &m, "streamed outputs");
    kiln::backend::cpu::stream::set_stream_min_working_set(limit);
    streamed
}

/// Each element of `a` as an `f64` (exact from every float dtype), read
/// on the interpreter.
fn widened(a: &Array) -> Result<Vec<f64>> {
    jit::interpreted(|| a.astype(DType::F64)?.to_vec::<f64>())
}

/// Bit-equal `f64`s, or both NaN (a signaling NaN may come out quiet).
fn assert_same64(got: &[f64], want: &[f64], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let same = g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan());
        assert!(same, "{what}: element {i}: compiled {g:e}, eager {w:e}");
    }
}

/// Values for 16-bit floats: [`values`] (whose extremes overflow or
/// underflow them) with their own edges mixed in: the largest `float16`,
/// values that round to its infinity, its subnormals, ties.
fn half_values(rng: &mut Rng, n: usize, scale: f64) -> Vec<f32> {
    let edges = [65504.0f32, 65520.0, -65519.0, 6.0e-8, 3.0e-8, 1.0e-5, 1.0 + 1.0 / 2048.0, 2049.0, 3.0e38, 1e-39];
    let mut v = values(rng, n, scale);
    for x in v.iter_mut() {
        if rng.int(0, 12) == 0 {
            *x = rng.pick(&edges);
        }
    }
    v
}

/// Functions of two-operand groups with the transcendental and divmod
/// paths, for 16-bit floats (each op computes in `f32` and rounds).
const HALF_EXTRA: [F2Named; 6] = [
    ("pow and atan2", |x, y| x.abs()?.pow(&(y * 0.25f32)?)? + x.atan2(y)?),
    ("floor_divide and remainder", |x, y| x.floor_divide(y)? - x.remainder(y)?),
    ("sin, cos and tan with large lanes", |x, y| (x * 300.0f32)?.sin()? * ((y.cos()? + (x * 0.01f32)?.tan()?)?)),
    ("log2 and log10", |x, y| x.abs()?.log2()? - y.abs()?.log10()?),
    ("casts between float types", |x, y| {
        let other = if x.dtype() == DType::F16 { DType::BF16 } else { DType::F16 };
        let wide = (x.astype(DType::F32)? * 1.001f32)?;
        (wide.astype(x.dtype())? + y.astype(other)?.astype(x.dtype())?)?.square()
    }),
    ("moves and sign changes", |x, y| {
        let m = kiln::where_(&kiln::greater(x, y)?, &x.neg()?, &y.abs()?)?;
        m.maximum(&x.floor()?)?.minimum(&y.ceil()?)?.sign()? + x.round()?
    }),
];

#[test]
fn groups_of_16_bit_floats_compile_and_match_the_interpreter() -> Result<()> {
    // Both generated code and the interpreter compute each op of a
    // `float16` or `bfloat16` group in f32 and round its result to the
    // type: bit for bit the same, at every tail length, on special values.
    let mut rng = Rng::new(97);
    let generated = jit::enabled();
    for dt in [DType::F16, DType::BF16] {
        for &(name, f) in FUNCTIONS.iter().chain(&MASKED).chain(&HALF_EXTRA) {
            let c = compile(f);
            for n in [1, 7, 16, 17, 31, 32, 33, 100, 4096 + 3, 70_001] {
                let x = Array::from_vec(half_values(&mut rng, n, 6.0), &[n])?.astype(dt)?;
                let y = kiln::slice_axis(&x, 0, None, None, -1)?;
                let got = widened(&c.call((&x, &y))?)?;
                let want = widened(&jit::interpreted(|| -> Result<Array> {
                    let a = f(&x, &y)?;
                    a.eval()?;
                    Ok(a)
                })?)?;
                assert_same64(&got, &want, &format!("{name} in {dt} on {n} elements"));
            }
            if generated {
                let x = Array::from_vec(vec![0.5f32; 64], &[64])?.astype(dt)?;
                let text = c.explain((&x, &x))?;
                assert!(text.contains("code:    machine code ("), "{name} in {dt}: {text}");
            }
        }
    }
    Ok(())
}

/// Values of `f64` programs: [`values`] widened, with `f64`'s own edges
/// mixed in (beyond `f32`'s range, its subnormals, halves for rounding).
fn f64_values(rng: &mut Rng, n: usize, scale: f64) -> Vec<f64> {
    let edges =
        [1e300, -1e-310, 5e-324, 2.5, -3.5, 0.5 + f64::EPSILON, 4503599627370497.0, f64::MAX, -f64::MIN_POSITIVE];
    let mut v: Vec<f64> = values(rng, n, scale).into_iter().map(f64::from).collect();
    for (i, x) in v.iter_mut().enumerate() {
        if rng.int(0, 12) == 0 {
            *x = rng.pick(&edges);
        } else if i % 3 == 0 {
            // Bits below f32's precision.
            *x *= 1.0 + 1e-12;
        }
    }
    v
}

/// `f64` functions of arithmetic, comparisons and selections (generated
/// code on AVX-512, 8 lanes a vector, as are [`FUNCTIONS`] and [`MASKED`]
/// but those in [`F64_INTERPRETED`]).
const F64_ARITHMETIC: [F2Named; 9] = [
    ("max_min", max_min),
    ("atan2 in every quadrant", |x, y| (x.atan2(y)? * 0.5f32)? + y.atan2(&x.neg()?)?),
    ("pow of any base", |x, y| x.pow(&(y * 0.5f32)?.round()?)? + x.abs()?.pow(y)?),
    ("log2 and log10", |x, y| (x.abs()?.log2()? - y.abs()?.log10()?)? * 0.5f32),
    ("roots_and_rounding", roots_and_rounding),
    ("sign", MASKED[0].1),
    ("huber", MASKED[2].1),
    ("leaky relu", MASKED[1].1),
    ("polynomial and division", |x, y| {
        let mut acc = (x * 0.1f32)?;
        for c in [0.2f32, -0.3, 0.4] {
            acc = ((acc + c)? * x)?;
        }
        ((acc / (y.abs()? + 0.5f32)?)? + x.reciprocal()?)?.neg()
    }),
];

/// The functions of [`FUNCTIONS`] and [`MASKED`] whose `f64` groups run on
/// the interpreter: an `f32` product between casts mixes lane widths. (A
/// `bool -> f32 -> f64` cast is one `bool -> f64` cast: `passes::simplify`.)
const F64_INTERPRETED: [&str; 1] = ["every comparison as f32"];

#[test]
fn f64_groups_compile_and_match_the_interpreter() -> Result<()> {
    // An f64 group of arithmetic, comparisons, selections and math_f64's
    // exp, expm1, log, log1p, log2, log10, tanh, sigmoid and erf is one generated loop of
    // 8-lane vectors (AVX-512; 4 on AVX2). Bit for bit the interpreter's
    // results, at every tail length, with broadcast operands, bool inputs
    // and outputs, and streamed outputs.
    let mut rng = Rng::new(101);
    // f64 lanes per vector of the code generator here (AVX2: 4).
    let lanes = match jit::target() {
        Some(simd_math::Level::Avx512) => "per 8 lanes",
        _ => "per 4 lanes",
    };
    let arr = |v: Vec<f64>, shape: &[usize]| Array::from_vec(v, shape);
    for &(name, f) in F64_ARITHMETIC.iter().chain(&FUNCTIONS).chain(&MASKED) {
        let c = compile(f);
        for n in (0..=20).chain([31, 32, 33, 100, 2047, 2049, 70_001]) {
            let x = arr(f64_values(&mut rng, n, 6.0), &[n])?;
            let y = kiln::slice_axis(&x, 0, None, None, -1)?;
            let got = c.call((&x, &y))?.to_vec::<f64>()?;
            assert_same64(&got, &jit::interpreted(|| f(&x, &y)?.to_vec::<f64>())?, &format!("{name} on {n} f64"));
        }
        // A broadcast row and a broadcast scalar.
        let x = arr(f64_values(&mut rng, 70, 6.0), &[7, 10])?;
        for y in [arr(f64_values(&mut rng, 10, 6.0), &[10])?, Array::scalar(0.375f64)] {
            let got = c.call((&x, &y))?.to_vec::<f64>()?;
            assert_same64(&got, &jit::interpreted(|| f(&x, &y)?.to_vec::<f64>())?, &format!("{name}, broadcast"));
        }
        if jit::enabled() {
            let text = c.explain((&x, &x))?;
            let generated = text.contains("code:    machine code (") && text.contains(lanes);
            assert_eq!(generated, !F64_INTERPRETED.contains(&name), "{name}: {text}");
        }
    }
    // Bool inputs and outputs of an f64 group, streamed outputs too.
    let c = compile(|x: &Array, m: &Array| -> Result<Vec<Array>> {
        let (a, b) = bool_io(x, m)?;
        Ok(vec![a, b])
    });
    for n in [0, 1, 7, 8, 9, 15, 16, 17, 100, 200_003] {
        let x = arr(f64_values(&mut rng, n, 3.0), &[n])?;
        let m = kiln::greater(&arr(f64_values(&mut rng, n, 3.0), &[n])?, 0.0f32)?;
        let limit = kiln::backend::cpu::stream::stream_min_working_set();
        kiln::backend::cpu::stream::set_stream_min_working_set(1 << 16);
        let got = c.call((&x, &m));
        kiln::backend::cpu::stream::set_stream_min_working_set(limit);
        let got = got?;
        let (wa, wb) = jit::interpreted(|| -> Result<(Vec<f64>, Vec<bool>)> {
            let (a, b) = bool_io(&x, &m)?;
            Ok((a.to_vec::<f64>()?, b.to_vec::<bool>()?))
        })?;
        assert_same64(&got[0].to_vec::<f64>()?, &wa, &format!("bool io, {n} f64"));
        assert_eq!(got[1].to_vec::<bool>()?, wb, "bool output, {n} positions");
        if jit::enabled() && n == 100 {
            let text = c.explain((&x, &m))?;
            assert!(text.contains(lanes) && !text.contains("interpreter"), "{text}");
        }
    }
    // A broadcast mask: one byte, read once.
    let x = arr(f64_values(&mut rng, 37, 3.0), &[37])?;
    for m in [Array::scalar(true), Array::scalar(false)] {
        let got = c.call((&x, &m))?;
        let (wa, wb) = jit::interpreted(|| -> Result<(Vec<f64>, Vec<bool>)> {
            let (a, b) = bool_io(&x, &m)?;
            Ok((a.to_vec::<f64>()?, b.to_vec::<bool>()?))
        })?;
        assert_same64(&got[0].to_vec::<f64>()?, &wa, "bool io, broadcast mask");
        assert_eq!(got[1].to_vec::<bool>()?, wb, "bool output, broadcast mask");
    }
    Ok(())
}

/// Random `i32`s with the edges mixed in (overflow on `+`, `*`, `abs`).
fn int_values(rng: &mut Rng, n: usize) -> Vec<i32> {
    let edges = [
        i32::MIN,
        i32::MAX,
        0,
        -1,
        1,
        i32::MIN + 1,
        46341,
        -46341,
        16_777_215,
        16_777_216,
        -16_777_216,
        16_777_217,
        -16_777_219,
        65_520,
        -65_519,
    ];
    (0..n).map(|_| if rng.int(0, 5) == 0 { rng.pick(&edges) } else { rng.int(0, 2001) as i32 - 1000 }).collect()
}

type I2 = fn(&Array, &Array, &Array) -> Result<Array>;

/// `f(x, y, z)` on the interpreter, widened to `f64`.
fn interpreted3(f: I2, x: &Array, y: &Array, z: &Array) -> Result<Vec<f64>> {
    widened(&jit::interpreted(|| -> Result<Array> {
        let a = f(x, y, z)?;
        a.eval()?;
        Ok(a)
    })?)
}

/// Functions of two `i32` arrays and an `f32` one (groups mixing `i32`
/// and `f32` lanes).
const INT_FUNCTIONS: [(&str, I2); 9] = [
    ("wrapping arithmetic", |x, y, _| ((x * y)? + x)? - (y.square()? - x.neg()?)?),
    ("abs, sign, maximum and minimum", |x, y, _| (x.abs()?.maximum(y)? + y.sign()?)?.minimum(&(x - 3i32)?)),
    ("comparisons and where", |x, y, _| {
        let m = kiln::logical_or(&kiln::less(x, y)?, &kiln::equal(x, 7i32)?)?;
        kiln::where_(&m, &(x + 1i32)?, &kiln::where_(&kiln::greater_equal(y, x)?, y, &x.neg()?)?)
    }),
    ("to f32 and back", |x, _, f| {
        let g = ((x.astype(DType::F32)? * 0.5f32)? + f)?;
        (g.astype(DType::I32)? + kiln::logical_not(x)?.astype(DType::I32)?)?.astype(DType::F32)
    }),
    ("float to int saturates", |_, _, f| (f * 3.0e9f32)?.astype(DType::I32)),
    ("floor division and remainder", |x, y, _| x.floor_divide(y)? + (x.remainder(y)? * 3i32)?),
    // Exponents from -3 to 33: negative ones, the vector path's and beyond.
    ("pow", |x, y, _| x.pow(&(y.remainder(37i32)? - 3i32)?)),
    ("to and from float16", |x, _, f| {
        let h = (f * 3000.0f32)?.astype(DType::F16)?;
        x.astype(DType::F16)? + h.astype(DType::I32)?.astype(DType::F16)?
    }),
    ("truth of ints", |x, y, f| {
        let t = kiln::where_(x, f, 2.0f32)?;
        (t + kiln::logical_and(x, y)?.astype(DType::F32)?)? + kiln::isfinite(y)?.astype(DType::F32)?
    }),
];

/// Checks each of `functions` of two integer arrays (`make`'s values,
/// the second the first reversed) and an `f32` one (random values and
/// `float_edges`), compiled against the interpreter, bit for bit, at
/// every tail length and with broadcast operands (`scalar` and an `f32`
/// row), and that each compiled to machine code.
fn check_int_functions<T: kiln::Element>(
    functions: &[(&str, I2)],
    rng: &mut Rng,
    make: fn(&mut Rng, usize) -> Vec<T>,
    scalar: Array,
    float_edges: &[f32],
) -> Result<()> {
    for &(name, f) in functions {
        let c = compile(f);
        for n in (0..=20).chain([31, 32, 33, 100, 2049, 70_001]) {
            let x = Array::from_vec(make(rng, n), &[n])?;
            let y = kiln::slice_axis(&x, 0, None, None, -1)?;
            let mut fv = values(rng, n, 2.0);
            for v in fv.iter_mut() {
                if rng.int(0, 6) == 0 {
                    *v = rng.pick(float_edges);
                }
            }
            let fa = Array::from_vec(fv, &[n])?;
            let got = widened(&c.call((&x, &y, &fa))?)?;
            assert_same64(&got, &interpreted3(f, &x, &y, &fa)?, &format!("{name} on {n} elements"));
        }
        let x = Array::from_vec(make(rng, 40), &[4, 10])?;
        let fa = Array::from_vec(values(rng, 10, 2.0), &[10])?;
        let got = widened(&c.call((&x, &scalar, &fa))?)?;
        assert_same64(&got, &interpreted3(f, &x, &scalar, &fa)?, &format!("{name}, broadcast"));
        if jit::enabled() {
            let text = c.explain((&x, &x, &fa))?;
            assert!(text.contains("code:    machine code (") && !text.contains("interpreter"), "{name}: {text}");
        }
    }
    Ok(())
}

#[test]
fn int32_groups_compile_and_match_the_interpreter() -> Result<()> {
    // i32 values are 32-bit lanes beside f32 ones: wrapping
    // arithmetic, signed comparisons, casts both ways (float to int
    // truncates and saturates, NaN to 0), bit for bit as the interpreter.
    let float_edges = [f32::NAN, f32::INFINITY, -f32::INFINITY, 2_147_483_648.0, -2_147_483_648.0, -0.5, 0.99, 1e-40];
    check_int_functions(&INT_FUNCTIONS, &mut Rng::new(113), int_values, Array::scalar(-7i32), &float_edges)
}

/// Random `u8`s, a fifth of them the edges of the type and of its
/// wrapping arithmetic.
fn byte_values(rng: &mut Rng, n: usize) -> Vec<u8> {
    let edges = [0u8, 1, 2, 15, 16, 127, 128, 129, 254, 255];
    (0..n).map(|_| if rng.int(0, 4) == 0 { rng.pick(&edges) } else { rng.int(0, 255) as u8 }).collect()
}

/// Functions of two `u8` arrays and an `f32` one (groups mixing `u8`
/// lanes with `f32`, `i32`, 16-bit float and `bool` ones).
const BYTE_FUNCTIONS: [(&str, I2); 12] = [
    ("wrapping arithmetic", |x, y, _| ((x * y)? + x)? - (y.square()? - x.neg()?)?),
    ("abs, sign, maximum and minimum", |x, y, _| (x.abs()?.maximum(y)? + y.sign()?)?.minimum(&(x - 3u8)?)),
    ("comparisons and where", |x, y, _| {
        let m = kiln::logical_or(&kiln::less(x, y)?, &kiln::equal(x, 7u8)?)?;
        kiln::where_(&m, &(x + 1u8)?, &kiln::where_(&kiln::greater_equal(y, x)?, y, &x.neg()?)?)
    }),
    ("to f32 and back", |x, _, f| {
        let g = ((x.astype(DType::F32)? * 0.5f32)? + f)?;
        g.astype(DType::U8)? + kiln::logical_not(x)?.astype(DType::U8)?
    }),
    ("float to u8 saturates", |_, _, f| (f * 300.0f32)?.astype(DType::U8)),
    // Divisors include 0 (whose quotient and remainder are 0).
    ("floor division and remainder", |x, y, _| x.floor_divide(y)? + (x.remainder(y)? * 3u8)?),
    // Exponents from 0 to 39: the vector path's and beyond.
    ("pow", |x, y, _| x.pow(&y.remainder(40u8)?)),
    ("to and from bfloat16 and float16", |x, _, f| {
        let h = (f * 100.0f32)?.astype(DType::BF16)?.astype(DType::U8)?;
        x.astype(DType::BF16)? + h.astype(DType::F16)?.astype(DType::BF16)?
    }),
    ("to and from i32", |x, y, _| ((x.astype(DType::I32)? * 1000i32)? - y.astype(DType::I32)?)?.astype(DType::U8)),
    ("truth of bytes", |x, y, f| {
        let t = kiln::where_(x, f, 2.0f32)?;
        (t + kiln::logical_and(x, y)?.astype(DType::F32)?)? + kiln::isfinite(y)?.astype(DType::F32)?
    }),
    ("bool to u8", |x, _, f| kiln::less(f, 0.5f32)?.astype(DType::U8)? + x),
    // Wrapped values read by ops that see more than their low byte (a
    // store alone would truncate a missing wrap away).
    ("wrapped values read again", |x, y, _| {
        let f = |a: Array| a.astype(DType::F32);
        let sum = (f(x.neg()?)? + f((x * y)?)?)? + f(y.square()?.maximum(x)?)?;
        let more = f((x - y)?.floor_divide(&(y + 1u8)?)?)? + f(x.pow(&y.remainder(9u8)?)?.minimum(&(x + y)?)?)?;
        sum? + more?
    }),
];

#[test]
fn u8_groups_compile_and_match_the_interpreter() -> Result<()> {
    // u8 values are 32-bit integer lanes holding 0 to 255, loaded from
    // bytes and stored as bytes: wrapping arithmetic (the low byte after
    // each op that can leave the range), unsigned division, casts both
    // ways (float to u8 truncates and saturates, NaN to 0; i32 to u8
    // wraps), bit for bit as the interpreter.
    let float_edges = [f32::NAN, f32::INFINITY, -f32::INFINITY, 2_147_483_648.0, 0.8533, -0.5, 0.99, 1e-40];
    check_int_functions(&BYTE_FUNCTIONS, &mut Rng::new(127), byte_values, Array::scalar(200u8), &float_edges)
}

/// Random `i32`s of every magnitude: `±2^k` scaled by a random fraction,
/// `k` uniform in 0..=31.
fn log_uniform_ints(rng: &mut Rng, n: usize) -> Vec<i32> {
    (0..n)
        .map(|_| {
            let k = rng.int(0, 32) as i32;
            let m = (rng.uniform(0.0, 1.0) * 2f64.powi(k)) as i64;
            let v = if rng.int(0, 2) == 0 { -m } else { m };
            v.clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32
        })
        .collect()
}

#[test]
fn integer_floor_division_remainder_and_pow_are_exact_at_every_magnitude() -> Result<()> {
    // The vector path divides in f32 (exact below 2^24, see jit::int_divmod)
    // and calls the scalar code for larger dividends; pow squares and
    // multiplies for exponents below 32. Checked against i64 arithmetic.
    let mut rng = Rng::new(2024);
    let n = 200_000;
    let (a, b) = (log_uniform_ints(&mut rng, n), log_uniform_ints(&mut rng, n));
    let e: Vec<i32> = (0..n).map(|_| rng.int(-4, 40) as i32).collect();
    let c = compile(|x: &Array, y: &Array, e: &Array| -> Result<(Array, Array, Array)> {
        Ok((x.floor_divide(y)?, x.remainder(y)?, y.pow(e)?))
    });
    let (x, y, ea) =
        (Array::from_vec(a.clone(), &[n])?, Array::from_vec(b.clone(), &[n])?, Array::from_vec(e.clone(), &[n])?);
    let (q, r, p) = c.call((&x, &y, &ea))?;
    let (q, r, p) = (q.to_vec::<i32>()?, r.to_vec::<i32>()?, p.to_vec::<i32>()?);
    for i in 0..n {
        let (ai, bi) = (i64::from(a[i]), i64::from(b[i]));
        let (wq, wr) = if bi == 0 { (0, 0) } else { (ai.div_euclid(bi), ai.rem_euclid(bi)) };
        // Euclid's remainder is nonnegative; the floor one takes b's sign.
        let (wq, wr) = if bi < 0 && wr != 0 { (wq - 1, wr + bi) } else { (wq, wr) };
        assert_eq!(q[i], wq as i32, "{} // {}", a[i], b[i]);
        assert_eq!(r[i], wr as i32, "{} % {}", a[i], b[i]);
        let want = match e[i] {
            k if k >= 0 => (0..k).fold(1i32, |acc, _| acc.wrapping_mul(b[i])),
            k => match b[i] {
                1 => 1,
                -1 if k % 2 == 0 => 1,
                -1 => -1,
                _ => 0,
            },
        };
        assert_eq!(p[i], want, "{} ^ {}", b[i], e[i]);
    }
    if jit::enabled() {
        let text = c.explain((&x, &y, &ea))?;
        assert!(text.contains("machine code (") && !text.contains("interpreter"), "{text}");
    }
    Ok(())
}

#[test]
fn int32_to_bfloat16_rounds_once_at_every_magnitude() -> Result<()> {
    // Through an f32 rounded to odd (see jit's int_to_float_odd), so each
    // value is rounded once, as from its exact value. Rounding to the
    // nearest f32 first would go wrong where that makes a tie of bfloat16:
    // 2^25 + 2^17 + 1 rounds to the f32 2^25 + 2^17, halfway between two
    // bfloat16 values, and then to even, down, where it should go up.
    let mut rng = Rng::new(4096);
    let mut v = log_uniform_ints(&mut rng, 50_000);
    for e in 8..31 {
        let ulp = 1i64 << (e - 7);
        for m in [0i64, 1, 2, 126, 127] {
            let tie = (1i64 << e) + m * ulp + ulp / 2;
            for d in [-2i64, -1, 0, 1, 2, ulp / 2] {
                for s in [1i64, -1] {
                    let x = s * (tie + d);
                    if let Ok(x) = i32::try_from(x) {
                        v.push(x);
                    }
                }
            }
        }
    }
    v.extend([i32::MIN, i32::MAX, i32::MIN + 1, i32::MAX - 64, 0, 1, -1, (1 << 25) + (1 << 17) + 1]);
    let n = v.len();
    let x = Array::from_vec(v.clone(), &[n])?;
    let c = compile(|x: &Array| x.astype(DType::BF16));
    let got = widened(&c.call(&x)?)?;
    let interpreted = widened(&jit::interpreted(|| -> Result<Array> {
        let a = x.astype(DType::BF16)?;
        a.eval()?;
        Ok(a)
    })?)?;
    for i in 0..n {
        let want = int_model(i64::from(v[i]), DType::BF16);
        assert_eq!(got[i], want, "{} to bfloat16 compiled", v[i]);
        assert_eq!(interpreted[i], want, "{} to bfloat16 interpreted", v[i]);
    }
    if jit::enabled() {
        let text = c.explain(&x)?;
        assert!(text.contains("machine code (") && !text.contains("interpreter"), "{text}");
    }
    Ok(())
}
