//! Compile time grows about linearly with the program (issue 14 §5), and
//! deep graphs neither overflow the stack when dropped nor when compiled.
//! The bounds are generous (CI has 2 shared cores); the measured figures
//! are in the commit messages and `examples/compile_time.rs` prints them.

use std::time::{Duration, Instant};

use kiln::{compile, Array, DType, Result};

/// A traced function, as the cases below hold it.
type Program = dyn Fn(&Array) -> Result<Array>;

fn input(shape: &[usize]) -> Result<Array> {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
    Array::from_vec(v, shape)
}

/// `y * 0.999` and `y + 0.001`, alternately, `n` ops (every op reads a
/// fresh scalar constant, which CSE merges).
fn chain(x: &Array, n: usize) -> Result<Array> {
    let mut y = x.clone();
    for i in 0..n {
        y = if i % 2 == 0 { (&y * 0.999f32)? } else { (&y + 0.001f32)? };
    }
    Ok(y)
}

/// The first call of `f` (trace, optimize, fuse, lower, run) and its result.
fn first_call(f: impl Fn(&Array) -> Result<Array>, x: &Array) -> Result<(Duration, Vec<f32>)> {
    let c = compile(f);
    let t = Instant::now();
    let r = c.call(x)?;
    let took = t.elapsed();
    Ok((took, r.to_vec::<f32>()?))
}

fn eager(f: impl Fn(&Array) -> Result<Array>, x: &Array) -> Result<Vec<f32>> {
    f(x)?.to_vec::<f32>()
}

#[test]
fn a_100k_op_chain_compiles_in_seconds_and_matches_eager() -> Result<()> {
    let x = input(&[1024])?;
    let (took, got) = first_call(|x| chain(x, 100_000), &x)?;
    assert!(took < Duration::from_secs(10), "the first call took {took:?}");
    assert_eq!(got, eager(|x| chain(x, 100_000), &x)?);
    Ok(())
}

#[test]
fn wide_repeated_and_reducing_programs_compile_in_seconds() -> Result<()> {
    let n = 30_000;
    // Many independent branches summed: `x` has n / 3 readers.
    let wide = move |x: &Array| -> Result<Array> {
        let mut acc = x.clone();
        for k in 0..n / 3 {
            acc = (&acc + &(x * (1.0f32 + k as f32 * 1e-4))?.sin()?)?;
        }
        Ok(acc)
    };
    // Every second `sin` repeats the one before it (CSE work).
    let repeat = move |x: &Array| -> Result<Array> {
        let mut y = x.clone();
        for _ in 0..n / 4 {
            y = ((y.sin()? + y.sin()?)? * 0.5f32)?;
        }
        Ok(y)
    };
    // Row reductions every eight ops: many kernels and row chains.
    let reduce = move |x: &Array| -> Result<Array> {
        let mut y = x.clone();
        for i in 0..n {
            y = match i % 8 {
                7 if i % 16 == 7 => (&y - &y.mean(-1, true)?)?,
                7 => (&y - &y.max(-1, true)?)?,
                k if k % 2 == 0 => (&y * 0.999f32)?,
                _ => (&y + 0.001f32)?,
            };
        }
        Ok(y)
    };
    let x = input(&[1024])?;
    let rows = input(&[64, 256])?;
    let cases: [(&str, &Program, &Array); 3] =
        [("wide", &wide, &x), ("repeat", &repeat, &x), ("reduce", &reduce, &rows)];
    for (name, f, x) in cases {
        let (took, got) = first_call(f, x)?;
        assert!(took < Duration::from_secs(10), "{name}: the first call took {took:?}");
        let want = eager(f, x)?;
        assert_eq!(got.len(), want.len());
        for (k, (a, b)) in got.iter().zip(&want).enumerate() {
            assert!((a - b).abs() <= 1e-4 * b.abs().max(1.0), "{name}[{k}]: {a} vs {b}");
        }
    }
    Ok(())
}

#[test]
fn dropping_a_deep_graph_does_not_overflow_the_stack() {
    // A 256 KiB stack: a recursive drop of a million nested nodes needs
    // tens of megabytes.
    let t = std::thread::Builder::new()
        .stack_size(256 << 10)
        .spawn(|| -> Result<usize> {
            let x = Array::scalar(1.0f32);
            let mut y = x.clone();
            for _ in 0..1_000_000 {
                y = (&y + 1.0f32)?;
            }
            let depth = 1_000_000;
            drop(y);
            // A graph whose nodes are shared (each read twice) drops too.
            let mut z = x.clone();
            for _ in 0..100_000 {
                z = (&z * &z)?;
            }
            drop(z);
            Ok(depth)
        })
        .expect("spawn");
    assert_eq!(t.join().expect("no stack overflow").expect("graph built"), 1_000_000);
}

#[test]
fn a_deep_chain_compiles_and_runs_on_a_small_stack() {
    // Tracing, the passes, fusion and the drop of the traced graph are
    // iterative: 1 MiB of stack is plenty for a 100k-deep chain.
    let t = std::thread::Builder::new()
        .stack_size(1 << 20)
        .spawn(|| -> Result<Vec<f32>> {
            let x = Array::from_slice(&[1.0f32, 2.0], &[2])?;
            let f = compile(|x: &Array| chain(x, 100_000));
            f.call(&x)?.to_vec::<f32>()
        })
        .expect("spawn");
    let got = t.join().expect("no stack overflow").expect("compiled");
    let x = Array::from_slice(&[1.0f32, 2.0], &[2]).expect("array");
    assert_eq!(got, chain(&x, 100_000).and_then(|y| y.to_vec::<f32>()).expect("eager"));
}

#[test]
fn a_product_reading_its_own_epilogue_input_runs() -> Result<()> {
    // `y @ w + y`: the product's epilogue reads `y`, and so does the
    // product; `y`'s group must not merge into the epilogue (the product
    // would read a value its own kernel computes after it).
    let f = |x: &Array, w: &Array| -> Result<Array> {
        let y = (x + 1.0f32)?;
        y.matmul(w)? + &y
    };
    let x = input(&[8, 8])?;
    let w = input(&[8, 8])?.astype(DType::F32)?;
    let got = compile(f).call((&x, &w))?.to_vec::<f32>()?;
    let want = f(&x, &w)?.to_vec::<f32>()?;
    assert_eq!(got.len(), 64);
    for (a, b) in got.iter().zip(&want) {
        assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0), "{a} vs {b}");
    }
    Ok(())
}
