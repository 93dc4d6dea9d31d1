//! The compile contract (shared/seed/mlx_compile.txt), one test per sentence.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use kiln::{compile, compile_with, Array, CompileOptions, DType, Error, Result};

fn arr(v: &[f32], shape: &[usize]) -> Array {
    Array::from_slice(v, shape).unwrap()
}

fn ramp(shape: &[usize]) -> Array {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
    arr(&v, shape)
}

#[test]
fn compile_returns_without_calling_f() {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let f = compile(move |x: &Array| {
        c.fetch_add(1, Ordering::SeqCst);
        x.exp()
    });
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    let x = ramp(&[4]);
    f.call(&x).unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 1, "first call traces once");
    for _ in 0..5 {
        f.call(&ramp(&[4])).unwrap();
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1, "cache hits do not call f");
    let s = f.stats();
    assert_eq!((s.traces, s.hits, s.misses, s.entries), (1, 5, 1, 1));
}

#[test]
fn compiled_matches_eager() -> Result<()> {
    let gelu = |x: &Array| -> Result<Array> {
        let inner = ((x + &((x.square()? * x)? * 0.044715f32)?)? * 0.797_884_6_f32)?;
        (x * 0.5f32)? * (inner.tanh()? + 1.0f32)?
    };
    let f = compile(gelu);
    let x = ramp(&[64, 33]);
    let got = f.call(&x)?.to_vec::<f32>()?;
    let want = gelu(&x)?.to_vec::<f32>()?;
    assert_eq!(got, want);
    Ok(())
}

#[test]
fn recompiles_on_shape_dtype_and_arg_count() -> Result<()> {
    let f = compile(|x: &Array| x * 2.0f32);
    f.call(&ramp(&[10, 64]))?;
    f.call(&ramp(&[20, 64]))?;
    assert_eq!(f.stats().traces, 2, "shape change recompiles");
    f.call(&ramp(&[20, 64]).astype(DType::F64)?)?;
    assert_eq!(f.stats().traces, 3, "dtype change recompiles");
    let g = compile(|xs: &[Array]| -> Result<Array> {
        let mut acc = xs[0].clone();
        for x in &xs[1..] {
            acc = (acc + x)?;
        }
        Ok(acc)
    });
    let (a, b, c) = (ramp(&[3]), ramp(&[3]), ramp(&[3]));
    g.call(&[a.clone(), b.clone()][..])?;
    let r = g.call(&[a.clone(), b.clone(), c.clone()][..])?;
    assert_eq!(g.stats().traces, 2, "argument count change recompiles");
    let want: Vec<f32> = a.to_vec::<f32>()?.iter().map(|v| v * 3.0).collect();
    assert_eq!(r.to_vec::<f32>()?, want);
    Ok(())
}

#[test]
fn shapeless_reuses_across_shapes() -> Result<()> {
    let w = ramp(&[64, 8]);
    let wc = w.clone();
    let f = compile_with(move |x: &Array| x.matmul(&wc), CompileOptions { shapeless: true, ..Default::default() });
    let a = f.call(&kiln::zeros(&[10, 64], DType::F32)?)?;
    let b = f.call(&ramp(&[20, 64]))?;
    assert_eq!(a.shape(), &[10, 8]);
    assert_eq!(b.shape(), &[20, 8]);
    assert_eq!(f.stats().traces, 1, "no recompilation in shapeless mode");
    assert_eq!(b.to_vec::<f32>()?, ramp(&[20, 64]).matmul(&w)?.to_vec::<f32>()?);
    f.call(&ramp(&[2, 3, 64]))?;
    assert_eq!(f.stats().traces, 2, "ndim change recompiles");
    Ok(())
}

#[test]
fn multiple_returns_keep_order() -> Result<()> {
    let f = compile(|x: &Array, w: &Array| -> Result<(Array, Array)> {
        let y = x.matmul(w)?;
        let norm = (&y * &y)?.sum(kiln::Axes::All, false)?.sqrt()?;
        Ok((y, norm))
    });
    let (x, w) = (ramp(&[4, 3]), ramp(&[3, 5]));
    let (y, n) = f.call((&x, &w))?;
    let ye = x.matmul(&w)?;
    assert_eq!(y.shape(), &[4, 5]);
    assert_eq!(y.to_vec::<f32>()?, ye.to_vec::<f32>()?);
    let ne: f32 = ye.to_vec::<f32>()?.iter().map(|v| v * v).sum::<f32>().sqrt();
    assert!((n.item::<f32>()? - ne).abs() < 1e-4);
    Ok(())
}

#[test]
fn reading_values_while_tracing_is_a_clear_error() {
    let f = compile(|x: &Array, y: &Array| -> Result<Array> {
        let s = (x + y)?;
        let _v = s.to_vec::<f32>()?; // illegal: no values while tracing
        Ok(s)
    });
    let e = f.call((&ramp(&[2]), &ramp(&[2]))).unwrap_err();
    assert!(matches!(e, Error::TracingValue { .. }), "{e:?}");
    let m = e.to_string();
    assert!(m.contains("argument 0") && m.contains("argument 1"), "{m}");
    assert!(m.contains("return") && m.contains("disable"), "{m}");
    assert_eq!(f.stats().entries, 0);
}

#[test]
fn errors_and_panics_leave_no_entry() {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let f = compile(move |x: &Array| -> Result<Array> {
        if c.fetch_add(1, Ordering::SeqCst) == 0 {
            panic!("boom");
        }
        x.matmul(x)
    });
    let e = f.call(&ramp(&[2, 3])).unwrap_err();
    assert!(e.to_string().contains("boom"), "{e}");
    let e = f.call(&ramp(&[2, 3])).unwrap_err();
    assert!(e.to_string().contains("matmul"), "{e}");
    assert_eq!(f.stats().entries, 0);
    assert_eq!(calls.load(Ordering::SeqCst), 2, "each failed call traced again");
}

#[test]
fn captured_arrays_are_frozen_constants() -> Result<()> {
    let evals = Arc::new(AtomicUsize::new(0));
    let base = ramp(&[4]);
    let lazy = base.exp()?; // captured while lazy: computed once at trace time
    let l2 = lazy.clone();
    let e2 = evals.clone();
    let f = compile(move |x: &Array| {
        e2.fetch_add(1, Ordering::SeqCst);
        x + &l2
    });
    let x = ramp(&[4]);
    let r1 = f.call(&x)?;
    assert!(lazy.is_evaluated(), "captured lazy array computed during the trace");
    let r2 = f.call(&x)?;
    assert_eq!(r1.to_vec::<f32>()?, r2.to_vec::<f32>()?);
    assert_eq!(evals.load(Ordering::SeqCst), 1);
    Ok(())
}

#[test]
fn scalar_arguments_do_not_recompile() -> Result<()> {
    let f = compile(|x: &Array, t: &Array| x * t);
    let x = ramp(&[3]);
    for i in 0..5 {
        let t = Array::scalar(i as f32);
        let r = f.call((&x, &t))?;
        let want: Vec<f32> = x.to_vec::<f32>()?.iter().map(|v| v * i as f32).collect();
        assert_eq!(r.to_vec::<f32>()?, want);
    }
    assert_eq!(f.stats().traces, 1);
    Ok(())
}

#[test]
fn races_trace_once() -> Result<()> {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let f = compile(move |x: &Array| {
        c.fetch_add(1, Ordering::SeqCst);
        std::thread::sleep(std::time::Duration::from_millis(20));
        x.sin()
    });
    let x = ramp(&[100]);
    let want = x.sin()?.to_vec::<f32>()?;
    std::thread::scope(|s| {
        let hs: Vec<_> = (0..8).map(|_| s.spawn(|| f.call(&x).unwrap().to_vec::<f32>().unwrap())).collect();
        for h in hs {
            assert_eq!(h.join().unwrap(), want);
        }
    });
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    Ok(())
}

#[test]
fn explain_and_dot_describe_kernels_and_misses() -> Result<()> {
    let f = compile(|x: &Array| -> Result<Array> { (x.exp()? * 2.0f32)? + 1.0f32 });
    f.call(&ramp(&[10, 64]))?;
    let text = f.explain(&ramp(&[20, 64]))?;
    assert!(text.contains("fused") && text.contains("exp -> mul -> add"), "{text}");
    assert!(text.contains("arg 0: now f32[20, 64], before f32[10, 64]"), "{text}");
    let dot = f.to_dot(&ramp(&[20, 64]))?;
    assert!(dot.starts_with("digraph") && dot.contains("subgraph cluster_"), "{dot}");
    Ok(())
}

#[test]
fn cache_is_bounded() -> Result<()> {
    let f = compile_with(|x: &Array| x + 1.0f32, CompileOptions { max_cache_entries: 2, ..Default::default() });
    for n in 1..6 {
        f.call(&ramp(&[n]))?;
    }
    assert_eq!(f.stats().entries, 2);
    f.clear_cache();
    assert_eq!(f.stats().entries, 0);
    Ok(())
}

#[test]
fn random_ops_give_fresh_numbers_and_reproduce_after_seed() -> Result<()> {
    use kiln::ops::random;
    let f = compile(|x: &Array| -> Result<Array> { x + &random::normal(&[1000], DType::F32, 0.0, 1.0, None)? });
    let x = kiln::zeros(&[1000], DType::F32)?;
    random::seed(7);
    let a = f.call(&x)?.to_vec::<f32>()?;
    let b = f.call(&x)?.to_vec::<f32>()?;
    assert_ne!(a, b, "each call draws new numbers");
    assert_eq!(f.stats().traces, 1, "random draws never recompile");
    random::seed(7);
    let a2 = f.call(&x)?.to_vec::<f32>()?;
    assert_eq!(a, a2, "reproducible after seeding");
    let mean = a.iter().sum::<f32>() / 1000.0;
    assert!(mean.abs() < 0.2, "standard normal numbers, mean {mean}");
    Ok(())
}

fn shapeless() -> CompileOptions {
    CompileOptions { shapeless: true, ..Default::default() }
}

#[test]
fn shapeless_reshape_with_minus_one_follows_new_shapes() -> Result<()> {
    let f = compile_with(|x: &Array| x.reshape(&[-1, 8])?.sum(1, false), shapeless());
    let a = f.call(&ramp(&[4, 16]))?;
    let b = f.call(&ramp(&[6, 16]))?;
    assert_eq!((a.shape(), b.shape()), (&[8][..], &[12][..]));
    assert_eq!(b.to_vec::<f32>()?, ramp(&[6, 16]).reshape(&[-1, 8])?.sum(1, false)?.to_vec::<f32>()?);
    assert_eq!(f.stats().traces, 1);
    Ok(())
}

#[test]
fn shapeless_fixed_reshape_and_broadcast_fail_clearly() -> Result<()> {
    let f = compile_with(|x: &Array| x.reshape(&[640]), shapeless());
    f.call(&ramp(&[10, 64]))?;
    let e = f.call(&ramp(&[20, 64])).unwrap_err().to_string();
    assert!(
        e.starts_with("reshape") && e.contains("(20, 64)") && e.contains("(640)") && e.contains("shapeless"),
        "{e}"
    );

    let g = compile_with(|x: &Array| x.broadcast_to(&[10, 64]), shapeless());
    g.call(&ramp(&[10, 1]))?;
    let e = g.call(&ramp(&[20, 1])).unwrap_err().to_string();
    assert!(e.starts_with("broadcast_to") && e.contains("(20, 1)") && e.contains("(10, 64)"), "{e}");
    Ok(())
}

#[test]
fn shapeless_reductions_follow_runtime_sizes() -> Result<()> {
    // Traced with a size-1 reduced axis, called with a larger one.
    let f =
        compile_with(|x: &Array| -> Result<(Array, Array)> { Ok((x.sum(1, true)?, x.mean(1, false)?)) }, shapeless());
    f.call(&ramp(&[4, 1]))?;
    let x = ramp(&[4, 3]);
    let (s, m) = f.call(&x)?;
    assert_eq!(s.shape(), &[4, 1]);
    assert_eq!(s.to_vec::<f32>()?, x.sum(1, true)?.to_vec::<f32>()?);
    let v = x.to_vec::<f32>()?;
    let want: Vec<f32> = v.chunks(3).map(|r| r.iter().sum::<f32>() / 3.0).collect();
    for (a, b) in m.to_vec::<f32>()?.iter().zip(&want) {
        assert!((a - b).abs() < 1e-6, "mean divides by the runtime size: {a} vs {b}");
    }
    assert_eq!(f.stats().traces, 1);
    Ok(())
}

#[test]
fn shapeless_zeros_like_follows_the_input() -> Result<()> {
    let f = compile_with(|x: &Array| x + &kiln::ones_like(x)?, shapeless());
    f.call(&ramp(&[2, 3]))?;
    let r = f.call(&ramp(&[5, 3]))?;
    assert_eq!(r.to_vec::<f32>()?, (ramp(&[5, 3]) + 1.0f32)?.to_vec::<f32>()?);
    Ok(())
}

#[test]
fn printing_and_control_flow_while_tracing_are_clear_errors() {
    let f = compile(|x: &Array| -> Result<Array> {
        let s = x.exp()?;
        let _text = s.to_string_checked()?; // printing values
        Ok(s)
    });
    let e = f.call(&ramp(&[3])).unwrap_err();
    assert!(matches!(e, Error::TracingValue { .. }) && e.to_string().contains("argument 0"), "{e}");

    let g = compile(|x: &Array| -> Result<Array> {
        // Control flow on an array value needs the value.
        if x.sum(kiln::Axes::All, false)?.item::<f32>()? > 0.0 {
            x.exp()
        } else {
            x.sin()
        }
    });
    let e = g.call(&ramp(&[3])).unwrap_err();
    assert!(matches!(e, Error::TracingValue { .. }), "{e}");
    assert!(e.to_string().contains("disable"), "{e}");
}

#[test]
fn compiled_functions_are_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>(_: &T) {}
    let f = compile(|x: &Array| x.exp());
    assert_send_sync(&f);
    let f2 = f.clone();
    let h = std::thread::spawn(move || f2.call(&ramp(&[2])).map(|a| a.shape().to_vec()));
    assert_eq!(h.join().unwrap().unwrap(), vec![2]);
}

#[test]
fn eight_arguments_and_vec_outputs() -> Result<()> {
    let f = compile(|a: &Array, b: &Array, c: &Array, d: &Array, e: &Array, g: &Array, h: &Array, i: &Array| {
        let s = ((((((a + b)? + c)? + d)? + e)? + g)? + h)?;
        Ok::<_, Error>(vec![(&s + i)?, s])
    });
    let x = ramp(&[3]);
    let out = f.call((&x, &x, &x, &x, &x, &x, &x, &x))?;
    assert_eq!(out.len(), 2);
    let v = x.to_vec::<f32>()?;
    let want8: Vec<f32> = v.iter().map(|a| a + a + a + a + a + a + a + a).collect();
    assert_eq!(out[0].to_vec::<f32>()?, want8);
    assert!(f.call(&[x.clone()][..]).is_err(), "wrong number of arguments is an error");
    Ok(())
}

#[test]
fn fused_reduction_matches_eager_on_large_inputs() -> Result<()> {
    // Large enough for the parallel and the long-reduction paths.
    let x = ramp(&[300_000]);
    let f = compile(|x: &Array| (x * x)?.sum(kiln::Axes::All, false));
    let got = f.call(&x)?.item::<f32>()?;
    let want: f64 = x.to_vec::<f32>()?.iter().map(|&v| v as f64 * v as f64).sum();
    assert!(((got as f64) - want).abs() / want < 1e-5, "{got} vs {want}");
    let text = f.explain(&x)?;
    assert!(text.contains("mul -> sum"), "{text}");
    let m = ramp(&[512, 300]);
    let g = compile(|x: &Array| (x.exp()? * 2.0f32)?.mean(0, false));
    let got = g.call(&m)?.to_vec::<f32>()?;
    let want = (m.exp()? * 2.0f32)?.mean(0, false)?.to_vec::<f32>()?;
    for (a, b) in got.iter().zip(&want) {
        assert!((a - b).abs() <= 1e-5 * b.abs(), "{a} vs {b}");
    }
    Ok(())
}

/// Kernels of `f`'s program that read argument 0 (parsed from `explain`).
fn kernels_reading_arg0(text: &str) -> usize {
    text.lines().filter(|l| l.trim_start().starts_with("inputs:") && l.contains("(arg 0)")).count()
}

/// Number of `exp` ops in the kernels of an `explain` text.
fn exp_ops(text: &str) -> usize {
    text.lines()
        .filter(|l| l.starts_with("kernel "))
        .flat_map(|l| l.split(' ').filter(|w| *w == "exp").collect::<Vec<_>>())
        .count()
}

#[test]
fn softmax_and_layernorm_take_two_passes_over_their_input() -> Result<()> {
    fn user_softmax(x: &Array) -> Result<Array> {
        let e = (x - &x.max(-1, true)?)?.exp()?;
        let s = e.sum(-1, true)?;
        e / s
    }
    fn layernorm(x: &Array, g: &Array, b: &Array) -> Result<Array> {
        let xc = (x - &x.mean(-1, true)?)?;
        let var = xc.square()?.mean(-1, true)?;
        ((&xc * (var + 1e-5f32)?.rsqrt()?)? * g)? + b
    }
    // Rows short and long: 40000 exceeds one reduction chunk, so the
    // partial results of sumexp and var are combined across chunks.
    for (rows, cols) in [(64usize, 1000usize), (3, 40_000)] {
        let n = rows * cols;
        let v: Vec<f32> =
            (0..n).map(|i| ((i * 7919 % 1000) as f32 / 100.0 - 5.0) + (i / cols) as f32 * 100.0).collect();
        let x = Array::from_vec(v, &[rows, cols])?;
        let g = Array::from_vec((0..cols).map(|i| 1.0 + (i % 7) as f32 / 10.0).collect(), &[cols])?;
        let b = Array::from_vec((0..cols).map(|i| (i % 5) as f32 / 10.0).collect(), &[cols])?;
        // Relative 1e-5, with a floor at the output's scale (probabilities
        // of about 1/cols; normalized values of about 1).
        let close = |got: &Array, want: &Array, what: &str| -> Result<()> {
            let floor = if what == "layernorm" { 1.0 } else { 1.0 / cols as f32 };
            for (a, w) in got.to_vec::<f32>()?.iter().zip(want.to_vec::<f32>()?) {
                assert!((a - w).abs() <= 1e-5 * w.abs().max(floor), "{what} {rows}x{cols}: {a} vs {w}");
            }
            Ok(())
        };
        fn kiln_softmax(x: &Array) -> Result<Array> {
            x.softmax(-1)
        }
        type Unary = fn(&Array) -> Result<Array>;
        let softmaxes: [(&str, Unary); 2] = [("softmax", kiln_softmax), ("user softmax", user_softmax)];
        for (name, sm) in softmaxes {
            let f = compile(sm);
            let text = f.explain(&x)?;
            assert_eq!(kernels_reading_arg0(&text), 2, "{name}:\n{text}");
            assert!(text.contains("row blocks: kernels 0..="), "{name}:\n{text}");
            // 64 x 1000 is too small to run in blocks of rows: the
            // denominator takes one pass with a running maximum. 3 rows of
            // 40000 run row by row: exp(x - max) is computed once, summed
            // and divided from cache.
            if rows == 64 {
                assert!(text.contains("max + sumexp"), "{name}:\n{text}");
            } else {
                assert!(!text.contains("sumexp"), "{name}:\n{text}");
            }
            assert_eq!(exp_ops(&text), 1, "{name}:\n{text}");
            close(&f.call(&x)?, &user_softmax(&x)?, name)?;
        }
        let f = compile(layernorm);
        let text = f.explain((&x, &g, &b))?;
        assert_eq!(kernels_reading_arg0(&text), 2, "layernorm:\n{text}");
        assert!(text.contains("mean + var"), "layernorm:\n{text}");
        close(&f.call((&x, &g, &b))?, &layernorm(&x, &g, &b)?, "layernorm")?;
        // No intermediate the size of the input is written: only the output.
        let big_writes = text
            .lines()
            .filter(|l| l.starts_with("  outputs:"))
            .filter(|l| l.contains(&format!("f32[{rows}, {cols}]")))
            .count();
        assert_eq!(big_writes, 1, "{text}");
    }
    Ok(())
}

#[test]
fn row_blocked_chains_match_eager() -> Result<()> {
    // Chains of fused kernels that run block of rows by block of rows:
    // per-row inputs ([R, 1]), whole inputs ([C], [1, C], scalars), a
    // transposed input, values escaping the chain (the row max is also an
    // output) and a program whose shapes change (shapeless).
    fn f(x: &Array, r: &Array, c: &Array, c2: &Array) -> Result<(Array, Array, Array)> {
        let m = x.max(-1, true)?;
        let e = ((x - &m)?.exp()? * c)?;
        let s = e.sum(-1, true)?;
        let y = ((&e / &s)? + r)?;
        let z = ((x * c2)?.tanh()? - &m)?.mean(-1, true)?;
        Ok((y, m, z))
    }
    let close = |got: &Array, want: &Array| -> Result<()> {
        for (a, w) in got.to_vec::<f32>()?.iter().zip(want.to_vec::<f32>()?) {
            assert!((a - w).abs() <= 1e-5 * w.abs().max(1e-3), "{a} vs {w}");
        }
        Ok(())
    };
    for shapeless in [false, true] {
        let cf = compile_with(
            |a: &Array, b: &Array, c: &Array, d: &Array| f(a, b, c, d),
            CompileOptions { shapeless, ..Default::default() },
        );
        // Four, five and two blocks of rows (a block is about 2^16 elements), and too small to chain.
        for (rows, cols) in [(300usize, 700usize), (3000, 97), (2, 70_000), (7, 30)] {
            let x = ramp(&[cols, rows]).t()?; // a transposed view
            let x = (x * 0.01f32)?;
            let r = (ramp(&[rows, 1]) * 0.5f32)?;
            let c = (ramp(&[cols]) * 0.001f32)?;
            let c2 = (ramp(&[1, cols]) * 0.002f32)?;
            let got = cf.call((&x, &r, &c, &c2))?;
            let want = f(&x, &r, &c, &c2)?;
            close(&got.0, &want.0)?;
            close(&got.1, &want.1)?;
            close(&got.2, &want.2)?;
        }
    }
    Ok(())
}

#[test]
fn a_costly_value_read_by_a_row_reduction_is_computed_once_and_matches_eager() -> Result<()> {
    // exp(x - max) is summed, divided and also returned; tanh(x) * 2 is
    // summed and used again; x * 3 is cheap and recomputed per reader.
    fn f(x: &Array) -> Result<(Array, Array, Array)> {
        let e = (x - &x.max(-1, true)?)?.exp()?;
        let p = (&e / &e.sum(-1, true)?)?;
        let t = x.tanh()?;
        let u = ((&t * 2.0f32)? - &t.sum(-1, true)?)?;
        let c = (x * 3.0f32)?;
        let v = (&c - &c.mean(-1, true)?)?;
        Ok((p, (e + u)?, v))
    }
    let close = |got: &Array, want: &Array| -> Result<()> {
        for (a, w) in got.to_vec::<f32>()?.iter().zip(want.to_vec::<f32>()?) {
            assert!((a - w).abs() <= 1e-5 * w.abs().max(1e-3), "{a} vs {w}");
        }
        Ok(())
    };
    for shapeless in [false, true] {
        let cf = compile_with(f, CompileOptions { shapeless, ..Default::default() });
        // Traced where rows run block by block, then (shapeless) called on
        // shapes that do not: the kept values then go through memory.
        for (rows, cols) in [(256usize, 1024usize), (1, 90_000), (5, 33), (3000, 97)] {
            let x = (ramp(&[rows, cols]) * 0.001f32)?;
            if rows == 256 {
                let text = cf.explain(&x)?;
                assert_eq!(exp_ops(&text), 1, "{text}");
                let tanh_ops =
                    text.lines().filter(|l| l.starts_with("kernel ")).map(|l| l.matches("tanh").count()).sum::<usize>();
                assert_eq!(tanh_ops, 1, "{text}");
                assert!(!text.contains("sumexp"), "{text}");
            }
            let got = cf.call(&x)?;
            let want = f(&x)?;
            close(&got.0, &want.0)?;
            close(&got.1, &want.1)?;
            close(&got.2, &want.2)?;
        }
    }
    Ok(())
}

#[test]
fn a_reduction_over_the_leading_axis_is_not_chained_in_row_blocks() -> Result<()> {
    // sum over all axes (the leading one included) then sqrt: the two
    // kernels cannot run block of rows by block of rows, so no chain is
    // planned (a chain would be tried, and given up, on every call).
    let f = compile(|x: &Array| (x * x)?.sum(kiln::Axes::All, false)?.sqrt());
    let x = (ramp(&[300, 700]) * 0.001f32)?;
    let text = f.explain(&x)?;
    assert!(!text.contains("row blocks"), "{text}");
    let want = (&x * &x)?.sum(kiln::Axes::All, false)?.sqrt()?.item::<f32>()?;
    let got = f.call(&x)?.item::<f32>()?;
    assert!((got - want).abs() <= 1e-5 * want, "{got} vs {want}");
    // Reductions over the last axis still chain.
    let g = compile(|x: &Array| (x * x)?.sum(-1, true)?.sqrt());
    assert!(g.explain(&x)?.contains("row blocks: kernels 0..=1"), "{}", g.explain(&x)?);
    Ok(())
}

#[test]
fn closures_that_are_not_send_compile_and_the_error_of_f_is_kept() -> Result<()> {
    // Rc is neither Send nor Sync (like an R closure); the compiled
    // function then holds it and is itself not Send.
    let calls = std::rc::Rc::new(std::cell::Cell::new(0));
    let c = std::rc::Rc::clone(&calls);
    let f = compile(move |x: &Array| -> Result<Array> {
        c.set(c.get() + 1);
        if c.get() == 1 {
            return Err(Error::Function { msg: "boom from the traced function".into() });
        }
        x * 2.0f32
    });
    let x = ramp(&[3]);
    let e = f.call(&x).unwrap_err();
    assert_eq!(e, Error::Function { msg: "boom from the traced function".into() });
    assert_eq!(e.to_string(), "boom from the traced function");
    assert_eq!(f.stats().entries, 0, "a failed trace leaves no entry");
    let y = f.call(&x)?;
    let y = f.call(&y)?;
    assert_eq!(y.to_vec::<f32>()?, x.to_vec::<f32>()?.iter().map(|v| v * 4.0).collect::<Vec<_>>());
    assert_eq!(calls.get(), 2, "traced once after the failure, then cached");
    Ok(())
}

/// Outputs with a structure besides their arrays: a tag chosen while
/// tracing (from the input's shape) comes back with every cached call.
struct Tagged(Vec<Array>, String);

impl kiln::Outputs for Tagged {
    type Value = (Vec<Array>, String);
    type Tree = String;
    fn into_arrays(self) -> Result<(Vec<Array>, String)> {
        Ok((self.0, self.1))
    }
    fn from_arrays(v: Vec<Array>, tree: &String) -> (Vec<Array>, String) {
        (v, tree.clone())
    }
}

#[test]
fn an_outputs_tree_is_kept_per_cache_entry() -> Result<()> {
    let f = compile(|x: &Array| Tagged(vec![(x + 1.0f32).unwrap()], format!("rank {}", x.ndim())));
    let (v, tag) = f.call(&ramp(&[4]))?;
    assert_eq!((v.len(), tag.as_str()), (1, "rank 1"));
    let (_, tag) = f.call(&ramp(&[2, 2]))?;
    assert_eq!(tag, "rank 2");
    let (v, tag) = f.call(&ramp(&[5]))?;
    assert_eq!(tag, "rank 1", "a hit rebuilds with its own entry's tree");
    assert_eq!(v[0].shape(), &[5]);
    assert_eq!(f.stats().traces, 3);
    Ok(())
}
