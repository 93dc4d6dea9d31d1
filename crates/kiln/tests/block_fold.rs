//! A reduction of a matrix product's result folds each block of the
//! product on the thread that computed it (`backend::cpu::block_fold`):
//! compiled results equal eager ones for the product alone kept or not,
//! epilogues stored or not, plain and fused reductions (sums, means,
//! maxima, minima, several at once) over all axes, the last axis, or the
//! last two of a batch, with other inputs read, on products of one block
//! and of many, in shapeless mode at each new shape too; reductions it
//! does not take (over a leading axis, `f64`) run as two steps.

mod common;

use common::Rng;
use kiln::backend::cpu::block_fold;
use kiln::{compile_with, Array, Axes, CompileOptions, DType, Result};

fn uniform(shape: &[usize], scale: f64, seed: u64, dtype: DType) -> Result<Array> {
    let n = shape.iter().product();
    let v: Vec<f64> = Rng::new(seed).floats(n, -scale, scale);
    Array::from_vec(v, shape)?.astype(dtype)
}

/// `x` (`m x k`, or a batch of them), `w` (`k x n`) scaled so products
/// are about 1, and `c` (`n`).
fn operands(x: &[usize], n: usize, seed: u64, dtype: DType) -> Result<(Array, Array, Array)> {
    let k = x[x.len() - 1];
    let w = uniform(&[k, n], 1.0 / (k as f64).sqrt(), seed + 1, dtype)?;
    Ok((uniform(x, 1.0, seed, dtype)?, w, uniform(&[n], 1.0, seed + 2, dtype)?))
}

fn read(a: &Array) -> Result<Vec<f64>> {
    a.astype(DType::F64)?.to_vec::<f64>()
}

/// Calls `f` compiled and eagerly on the operands; each output agrees
/// within `1e-5` relative plus `2e-6` per element of the product (a sum of
/// that many values of about 1). Returns whether the call folded.
fn check(
    name: &str,
    f: fn(&Array, &Array, &Array) -> Result<Vec<Array>>,
    (x, w, c): (&Array, &Array, &Array),
    shapeless: bool,
) -> Result<bool> {
    let c_f = compile_with(f, CompileOptions { shapeless, ..Default::default() });
    let before = block_fold::runs();
    let got = c_f.call((x, w, c))?;
    let folded = block_fold::runs() > before;
    let want = f(x, w, c)?;
    let per: f64 = x.shape()[..x.ndim() - 1].iter().product::<usize>() as f64 * w.shape()[1] as f64;
    assert_eq!(got.len(), want.len(), "{name}");
    for (o, (g, e)) in got.iter().zip(&want).enumerate() {
        assert_eq!(g.shape(), e.shape(), "{name}: output {o}");
        for (i, (a, b)) in read(g)?.iter().zip(read(e)?).enumerate() {
            let tol = 1e-5 * b.abs().max(1.0) + 2e-6 * per;
            assert!((a - b).abs() <= tol, "{name} x{:?}: output {o}[{i}]: {a} vs {b}", x.shape());
        }
    }
    Ok(folded)
}

type Program = fn(&Array, &Array, &Array) -> Result<Vec<Array>>;

/// Programs whose reduction step reads what a product step writes, each
/// with whether it reduces the last axis only (then per row) or all.
fn folded() -> Vec<(&'static str, Program)> {
    vec![
        ("y and its norm", |x, w, _| {
            let y = x.matmul(w)?;
            let n = (&y * &y)?.sum(Axes::All, false)?.sqrt()?;
            Ok(vec![y, n])
        }),
        ("mean of squares, y dropped", |x, w, _| {
            let y = x.matmul(w)?;
            Ok(vec![(&y * &y)?.mean(Axes::All, false)?])
        }),
        ("sum of relu(x @ w + c), stored and not", |x, w, c| {
            let h = (x.matmul(w)? + c)?.maximum(0.0f32)?;
            Ok(vec![h.square()?.sum(Axes::All, false)?])
        }),
        ("h kept, its max", |x, w, c| {
            let h = (x.matmul(w)? + c)?.tanh()?;
            let m = h.max(Axes::All, false)?;
            Ok(vec![h, m])
        }),
        ("row sums and maxima of y, kept dims", |x, w, _| {
            let y = x.matmul(w)?;
            Ok(vec![y.sum(-1, true)?, y.max(-1, true)?, y])
        }),
        ("row means of an epilogue, another input read", |x, w, c| {
            let y = x.matmul(w)?;
            Ok(vec![((&y + 1.0f32)? * c)?.mean(-1, false)?, y.min(-1, false)?])
        }),
        ("product alone, summed", |x, w, _| Ok(vec![x.matmul(w)?.sum(Axes::All, false)?])),
    ]
}

/// The folded programs, at shapes of one block and of several (split
/// over the team), rows not a multiple of the product's tile, a batch,
/// and rows long enough for leaf-by-leaf folds.
#[test]
fn reductions_of_products_fold_each_block_and_equal_eager() -> Result<()> {
    let shapes: [(&[usize], usize); 6] =
        [(&[5, 3], 7), (&[32, 128], 256), (&[37, 20], 48), (&[128, 64], 512), (&[3, 24, 16], 40), (&[9, 2], 40000)];
    for (p, (name, f)) in folded().into_iter().enumerate() {
        for (s, &(x, n)) in shapes.iter().enumerate() {
            let (x, w, c) = operands(x, n, 10 * p as u64 + s as u64, DType::F32)?;
            let folded = check(name, f, (&x, &w, &c), false)?;
            assert!(folded, "{name}, x {:?} @ w {:?}: not folded", x.shape(), w.shape());
        }
    }
    Ok(())
}

/// Over the last two axes of a batch of products (one value per matrix)
/// the blocks of each matrix fold into its own value; over the leading
/// axis alone the reduction is not a suffix of the axes and runs as a step
/// of its own; `f64` products run as two steps.
#[test]
fn batched_and_untaken_reductions_equal_eager() -> Result<()> {
    let per_matrix: Program = |x, w, _| {
        let y = x.matmul(w)?;
        Ok(vec![(&y * &y)?.sum(Axes::from(vec![-2, -1]), false)?, y.max(Axes::from(vec![1, 2]), true)?])
    };
    let leading: Program = |x, w, _| Ok(vec![x.matmul(w)?.sum(0, false)?]);
    // The plan says which kernels fold (the explanation's notes).
    let ops = operands(&[4, 24, 16], 72, 99, DType::F32)?;
    let note = "block folds: kernel 1 reduces each block of kernel 0's product";
    let plan = |f: Program| compile_with(f, CompileOptions::default()).explain((&ops.0, &ops.1, &ops.2));
    assert!(plan(per_matrix)?.contains(note), "{}", plan(per_matrix)?);
    assert!(!plan(leading)?.contains("block folds"), "{}", plan(leading)?);
    for (s, x) in [&[4usize, 24, 16][..], &[2, 64, 96]].into_iter().enumerate() {
        let ops = operands(x, 72, 100 + s as u64, DType::F32)?;
        assert!(check("per matrix", per_matrix, (&ops.0, &ops.1, &ops.2), false)?);
        assert!(!check("leading axis", leading, (&ops.0, &ops.1, &ops.2), false)?);
        let ops = operands(x, 72, 110 + s as u64, DType::F64)?;
        assert!(!check("f64", per_matrix, (&ops.0, &ops.1, &ops.2), false)?);
    }
    Ok(())
}

/// One shapeless function called at several shapes: each call folds
/// where its shapes allow and equals eager.
#[test]
fn shapeless_calls_fold_at_each_shape() -> Result<()> {
    for (name, f) in folded() {
        for (s, &m) in [8usize, 33, 1, 64].iter().enumerate() {
            let ops = operands(&[m, 24], 40, 200 + s as u64, DType::F32)?;
            assert!(check(name, f, (&ops.0, &ops.1, &ops.2), true)?, "{name}, {m} rows: not folded");
        }
    }
    Ok(())
}
