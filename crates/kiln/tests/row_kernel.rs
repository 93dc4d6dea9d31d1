//! Row kernels: chains of reductions over the last axis and the
//! elementwise work that reads them (softmax, layernorm, rmsnorm,
//! log-softmax) run row by row, and give the results of the block-by-block
//! run bit for bit (and the eager results within float tolerance), on
//! contiguous, broadcast and strided inputs, with intermediate values
//! leaving the chain, over 2-D and 3-D shapes, in `f32` and `f64`, on one
//! thread and many, in shapeless mode too; chains the row kernel does not
//! take run block by block.

mod common;

use common::*;
use kiln::backend::cpu::row_kernel;
use kiln::{compile, compile_with, random, Array, CompileOptions, DType, Result};

fn normal(shape: &[usize], seed: u64) -> Array {
    normal_of(DType::F32, shape, seed)
}

fn normal_of(dtype: DType, shape: &[usize], seed: u64) -> Array {
    let key = random::key(seed);
    random::normal(shape, dtype, 0.0, 1.0, Some(&key)).expect("normal")
}

fn layernorm(x: &Array, gamma: &Array, beta: &Array) -> Result<Array> {
    let mean = x.mean(-1, true)?;
    let xc = (x - &mean)?;
    let var = xc.square()?.mean(-1, true)?;
    let y = (&xc * (var + 1e-5f32)?.rsqrt()?)?;
    (y * gamma)? + beta
}

fn rmsnorm(x: &Array, w: &Array) -> Result<Array> {
    (x * (x.square()?.mean(-1, true)? + 1e-6f32)?.rsqrt()?)? * w
}

/// Softmax by hand, returning its statistics too: values computed inside
/// the chain that leave it (per-row maximum and sum, and the numerator,
/// which later kernels of the chain also read).
fn softmax_parts(x: &Array) -> Result<Vec<Array>> {
    let m = x.max(-1, true)?;
    let e = (x - &m)?.exp()?;
    let s = e.sum(-1, true)?;
    let y = (&e / &s)?;
    Ok(vec![y, m, s, e])
}

/// The values' bits (`f32` or `f64`), each with its value for messages.
fn bits(a: &Array) -> Vec<(u64, f64)> {
    match a.dtype() {
        DType::F64 => a.to_vec::<f64>().expect("f64").into_iter().map(|v| (v.to_bits(), v)).collect(),
        _ => a.to_vec::<f32>().expect("f32").into_iter().map(|v| (u64::from(v.to_bits()), f64::from(v))).collect(),
    }
}

fn same_bits(got: &Array, want: &Array, what: &str) {
    assert_eq!(got.shape(), want.shape(), "{what}: shape");
    assert_eq!(got.dtype(), want.dtype(), "{what}: dtype");
    let (g, w) = (bits(got), bits(want));
    if let Some(i) = (0..g.len()).find(|&i| g[i].0 != w[i].0) {
        panic!("{what}: element {i}: got {}, want {}", g[i].1, w[i].1);
    }
}

/// Tests switch the row kernel on and off (process-wide): one at a time.
static SWITCH: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Runs `f` compiled (row by row, then block by block) and eagerly on
/// `args`: the two compiled runs agree bit for bit, and with the eager
/// results within float tolerance (`f32`'s; `f64` results much closer);
/// returns how many chains ran row by row.
fn check(f: impl Fn(&[Array]) -> Result<Vec<Array>> + 'static, args: &[Array], what: &str) -> Result<usize> {
    let _one = SWITCH.lock().unwrap_or_else(|e| e.into_inner());
    let want = f(args)?;
    let compiled = compile(move |a: &[Array]| f(a));
    row_kernel::set_enabled(false);
    let blocks = compiled.call(args);
    row_kernel::set_enabled(true);
    let blocks = blocks?;
    let before = row_kernel::runs();
    let got = compiled.call(args)?;
    let ran = row_kernel::runs() - before;
    assert_eq!(got.len(), want.len(), "{what}");
    for (k, ((g, b), w)) in got.iter().zip(&blocks).zip(&want).enumerate() {
        same_bits(g, b, &format!("{what}: output {k}, row by row against block by block"));
        let (rtol, atol) = if w.dtype() == DType::F64 { (1e-12, 1e-14) } else { (1e-5, 1e-6) };
        for (i, (a, b)) in values_f64(g).into_iter().zip(values_f64(w)).enumerate() {
            assert!(close(a, b, rtol, atol), "{what}: output {k}, element {i}: compiled {a}, eager {b}");
        }
    }
    Ok(ran)
}

/// Softmax, layernorm and rmsnorm over the last axis of `x` (weights of
/// its row length from `seed`), each checked as [`check`] does; returns
/// the fewest chains any of the three ran row by row.
fn check_norms(x: &Array, seed: u64, what: &str) -> Result<usize> {
    let cols = *x.shape().last().expect("a last axis");
    let g = normal(&[cols], seed);
    let b = normal(&[cols], seed + 1);
    let ran = check(|a| Ok(vec![a[0].softmax(-1)?]), std::slice::from_ref(x), &format!("softmax {what}"))?;
    let ran_ln = check(|a| Ok(vec![layernorm(&a[0], &a[1], &a[2])?]), &[x.clone(), g.clone(), b], what)?;
    let ran_rms = check(|a| Ok(vec![rmsnorm(&a[0], &a[1])?]), &[x.clone(), g], &format!("rmsnorm {what}"))?;
    Ok(ran.min(ran_ln).min(ran_rms))
}

#[test]
fn normalizations_run_row_by_row_with_the_block_runs_bits() -> Result<()> {
    for (rows, cols) in [(300, 1000), (64, 1024), (1025, 129), (2, 16384), (4096, 64)] {
        let x = normal(&[rows, cols], 1);
        let what = format!("({rows}, {cols})");
        let ran = check_norms(&x, 2, &what)?;
        let ran_lse = check(|a| Ok(vec![(&a[0] - a[0].logsumexp(-1, true)?)?]), &[x], &format!("log-softmax {what}"))?;
        if jit_enabled() {
            assert!(ran >= 1 && ran_lse >= 1, "{what}: row kernels ran");
        }
    }
    Ok(())
}

#[test]
fn a_single_row_and_a_vector_run_row_by_row() -> Result<()> {
    // One row (1, n), a row of a 3-D array (1, 1, n) and a vector (n):
    // the inference case of one token, which ran block by block at 1.7x a
    // two-row call's time.
    for shape in [vec![1usize, 1024], vec![1, 1, 300], vec![1024], vec![2]] {
        let x = normal(&shape, 51);
        let what = format!("{shape:?}");
        let ran = check_norms(&x, 52, &what)?;
        let ran_parts = check(|a| softmax_parts(&a[0]), &[x], &format!("softmax parts {what}"))?;
        if jit_enabled() {
            assert!(ran >= 1, "{what}: softmax, layernorm and rmsnorm ran row by row: fewest {ran}");
            // (A vector's softmax whose statistics leave it is no row
            // chain: it runs block by block, with the same bits.)
            assert!(ran_parts >= 1 || shape.len() == 1, "{what}: softmax parts ran row by row");
        }
    }
    Ok(())
}

#[test]
fn f64_rows_run_row_by_row_in_f64() -> Result<()> {
    // The same chains over f64 rows: scratch rows, generated code and
    // folds in f64 (rows of 64 to 16384 values: a scratch row of 16384
    // f64 is 128 KiB, within the row kernel's limit).
    for (rows, cols) in [(300, 1000), (1025, 64), (33, 4096), (3, 16384)] {
        let x = normal_of(DType::F64, &[rows, cols], 41);
        let g = normal_of(DType::F64, &[cols], 42);
        let b = normal_of(DType::F64, &[cols], 43);
        let what = format!("f64 ({rows}, {cols})");
        let ran = check(|a| Ok(vec![a[0].softmax(-1)?]), std::slice::from_ref(&x), &format!("softmax {what}"))?;
        let ran_ln = check(|a| Ok(vec![layernorm(&a[0], &a[1], &a[2])?]), &[x.clone(), g.clone(), b], &what)?;
        let ran_parts = check(|a| softmax_parts(&a[0]), std::slice::from_ref(&x), &format!("softmax parts {what}"))?;
        let ran_lse = check(|a| Ok(vec![(&a[0] - a[0].logsumexp(-1, true)?)?]), &[x], &format!("log-softmax {what}"))?;
        if jit_enabled() {
            assert!(ran >= 1 && ran_ln >= 1 && ran_parts >= 1 && ran_lse >= 1, "{what}: row kernels ran");
        }
    }
    // A chain mixing f32 and f64 values runs block by block, with the same bits.
    let x = normal_of(DType::F64, &[64, 300], 44);
    let f = |a: &[Array]| -> Result<Vec<Array>> {
        let y = a[0].softmax(-1)?;
        Ok(vec![(y.astype(DType::F32)? * 2.0f32)?.sum(-1, true)?])
    };
    check(f, &[x], "f64 softmax, f32 sum")?;
    Ok(())
}

#[test]
fn values_leaving_the_chain_are_written_row_by_row() -> Result<()> {
    // The maximum and sum leave as per-row outputs, the numerator leaves
    // and is read again by the division.
    let x = normal(&[513, 300], 4);
    let ran = check(|a| softmax_parts(&a[0]), &[x], "softmax parts")?;
    if jit_enabled() {
        assert!(ran >= 1, "the chain ran row by row");
    }
    Ok(())
}

#[test]
fn every_mean_of_a_row_a_variance_folds_is_written() -> Result<()> {
    // Means of the rows a variance folds, with and without keepdims, the
    // variance and a layernorm of them: the variance's fold carries one
    // mean; every other one is folded and written too (the mean without
    // keepdims was once left unwritten, so a sum of it read garbage).
    let x = normal(&[64, 48], 5);
    let f = |a: &[Array]| -> Result<Vec<Array>> {
        let x = &a[0];
        let kept = x.mean(-1, true)?;
        let flat = x.mean(-1, false)?;
        let d = (x - &kept)?;
        let var = d.square()?.mean(-1, true)?;
        let y = (&d * (&var + 1e-5f32)?.rsqrt()?)?;
        Ok(vec![y, flat.sum(0, false)?, flat, var, x.var(-1, false, 1)?])
    };
    let ran = check(f, &[x], "two means and two variances of the same rows")?;
    if jit_enabled() {
        assert!(ran >= 1, "the chain ran row by row");
    }
    Ok(())
}

#[test]
fn reductions_of_comparisons_fold_their_values() -> Result<()> {
    // A comparison's bool values (bytes, from generated code) folded over
    // rows: the row kernel reads only f32 rows, so that fold runs block by
    // block, never over bytes taken for floats. A layernorm runs first, so
    // scratch rows hold old values that a wrong read would show.
    let x = normal(&[7, 45], 6);
    let g = normal(&[45], 7);
    check(|a| Ok(vec![layernorm(&a[0], &a[1], &a[1])?]), &[x.clone(), g], "a layernorm first")?;
    for keep in [false, true] {
        let f = move |a: &[Array]| -> Result<Vec<Array>> {
            let x = &a[0];
            let any = kiln::logical_or(&kiln::greater(x, 0.5f32)?, &kiln::isnan(x)?)?;
            Ok(vec![any.mean(-1, keep)?, (x + x)?])
        };
        check(f, std::slice::from_ref(&x), &format!("mean of a comparison, keepdims {keep}"))?;
    }
    Ok(())
}

#[test]
fn three_dimensional_and_broadcast_inputs_read_their_rows() -> Result<()> {
    // Rows over two leading axes; a per-row shift (b, t, 1) from outside
    // the chain; a weight broadcast over the middle axis (b, 1, c).
    let x = normal(&[5, 37, 200], 5);
    let shift = normal(&[5, 37, 1], 6);
    let w = normal(&[5, 1, 200], 7);
    let f = |a: &[Array]| -> Result<Vec<Array>> {
        let z = (&a[0] + &a[1])?;
        let y = z.softmax(-1)?;
        Ok(vec![(y * &a[2])?])
    };
    let ran = check(f, &[x.clone(), shift, w.clone()], "3-d softmax")?;
    if jit_enabled() {
        assert!(ran >= 1, "the chain ran row by row");
    }
    // A transposed input is not read along its rows: block by block, same values.
    let xt = normal(&[200, 185], 8).t()?;
    check(|a| Ok(vec![a[0].softmax(-1)?]), &[xt], "transposed softmax")?;
    check(|a| Ok(vec![rmsnorm(&a[0], &a[1])?]), &[x, w], "3-d rmsnorm, weight over the middle axis")?;
    Ok(())
}

#[test]
fn rows_of_non_finite_values_give_the_eager_results() -> Result<()> {
    let cols = 257;
    let mut v: Vec<f32> = (0..64 * cols).map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.1).collect();
    v[3 * cols + 5] = f32::NAN;
    v[7 * cols..8 * cols].fill(f32::NEG_INFINITY);
    v[9 * cols + 1] = f32::INFINITY;
    v[11 * cols..12 * cols].fill(-0.0);
    let x = Array::from_vec(v, &[64, cols])?;
    check(|a| softmax_parts(&a[0]), std::slice::from_ref(&x), "softmax, non-finite rows")?;
    let g = Array::from_vec(vec![1.0f32; cols], &[cols])?;
    let b = Array::from_vec(vec![0.0f32; cols], &[cols])?;
    check(|a| Ok(vec![layernorm(&a[0], &a[1], &a[2])?]), &[x, g, b], "layernorm, non-finite rows")?;
    Ok(())
}

#[test]
fn shapeless_chains_run_row_by_row_at_every_shape() -> Result<()> {
    let f = |x: &Array, w: &Array| -> Result<Array> { (x.softmax(-1)? * w)? + rmsnorm(x, w)? };
    let compiled = compile_with(f, CompileOptions { shapeless: true, ..Default::default() });
    for (k, (rows, cols)) in [(64, 512), (300, 512), (7, 512), (100, 33)].into_iter().enumerate() {
        let x = normal(&[rows, cols], 10 + k as u64);
        let w = normal(&[cols], 20 + k as u64);
        let _one = SWITCH.lock().unwrap_or_else(|e| e.into_inner());
        let want = f(&x, &w)?;
        row_kernel::set_enabled(false);
        let blocks = compiled.call((&x, &w));
        row_kernel::set_enabled(true);
        let before = row_kernel::runs();
        let got = compiled.call((&x, &w))?;
        if jit_enabled() {
            assert_eq!(row_kernel::runs() - before, 1, "({rows}, {cols}): one chain, row by row");
        }
        same_bits(&got, &blocks?, &format!("shapeless ({rows}, {cols})"));
        for (i, (a, b)) in values_f64(&got).into_iter().zip(values_f64(&want)).enumerate() {
            assert!(close(a, b, 1e-5, 1e-6), "shapeless ({rows}, {cols}): element {i}: compiled {a}, eager {b}");
        }
    }
    Ok(())
}

#[test]
fn plans_are_kept_for_calls_of_the_same_shapes_and_layouts() -> Result<()> {
    let _one = SWITCH.lock().unwrap_or_else(|e| e.into_inner());
    let (rows, cols) = (64, 256);
    let compiled = compile(|a: &[Array]| layernorm(&a[0], &a[1], &a[2]));
    let x = normal(&[rows, cols], 60);
    let other = normal(&[rows, cols], 61);
    // The same shape at two offsets into one larger buffer, and a gamma
    // whose rows are one broadcast value.
    let base = normal(&[rows + 16, cols], 62);
    let first = kiln::slice_axis(&base, 0, None, Some(rows as isize), 1)?;
    let view = kiln::slice_axis(&base, 0, Some(16), None, 1)?;
    kiln::eval(&[&first, &view])?;
    let g = normal(&[cols], 63);
    let g_one = normal(&[1], 64).broadcast_to(&[cols])?;
    let b = normal(&[cols], 65);
    // Each call: its arguments, and whether it plans (else it finds the
    // plan of the call before).
    let calls = [
        (&x, &g, true),
        (&x, &g, false),
        (&other, &g, false),
        (&first, &g, true),
        (&view, &g, true),
        (&x, &g, true),
        (&x, &g_one, true),
        (&other, &g_one, false),
    ];
    for (k, (x, g, plans)) in calls.into_iter().enumerate() {
        let args = [x.clone(), g.clone(), b.clone()];
        let want = layernorm(&args[0], &args[1], &args[2])?;
        let (runs, made) = (row_kernel::runs(), row_kernel::plans());
        let got = compiled.call(&args[..])?;
        for (i, (a, w)) in values_f64(&got).into_iter().zip(values_f64(&want)).enumerate() {
            assert!(close(a, w, 1e-5, 1e-6), "call {k}: element {i}: compiled {a}, eager {w}");
        }
        if jit_enabled() {
            assert_eq!(row_kernel::runs() - runs, 1, "call {k}: the chain ran row by row");
            assert_eq!(row_kernel::plans() - made, usize::from(plans), "call {k}: plans made");
        }
    }
    Ok(())
}

#[test]
fn rows_of_many_threads_and_one_give_the_same_bits() -> Result<()> {
    // Its chains count in `row_kernel::runs()`, which other tests read
    // under this lock.
    let _one = SWITCH.lock().unwrap_or_else(|e| e.into_inner());
    let x = normal(&[2049, 384], 30);
    let compiled = compile(|x: &Array| x.softmax(-1));
    let many = compiled.call(&x)?;
    // (Process-wide; every other test of this file gives the same bits on
    // any thread count.)
    let all = kiln::threads();
    kiln::set_threads(1)?;
    let one = compiled.call(&x);
    kiln::set_threads(all)?;
    let one = one?;
    same_bits(&one, &many, "one thread against many");
    assert!(values_f64(&many).iter().all(|v| v.is_finite() && *v >= 0.0));
    Ok(())
}

/// True when this CPU compiles kernels (rows run row by row only then).
fn jit_enabled() -> bool {
    kiln::backend::cpu::jit::enabled()
}
