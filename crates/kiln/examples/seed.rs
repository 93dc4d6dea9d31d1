//! The seed walkthrough (shared/seed/mlx_compile.txt) in Rust, with timings.
//!
//! Run: `cargo run --release --example seed`

use std::time::{Duration, Instant};

use kiln::ops::random;
use kiln::{compile, compile_with, Array, Axes, CompileOptions, DType, Result};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn time<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let t = Instant::now();
    let r = f();
    (r, t.elapsed())
}

fn us(d: Duration) -> String {
    format!("{:.1} us", d.as_secs_f64() * 1e6)
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

/// Median time of `f` over `runs` runs after `warm` warm-up runs.
fn bench(warm: usize, runs: usize, mut f: impl FnMut() -> Result<()>) -> Result<Duration> {
    for _ in 0..warm {
        f()?;
    }
    let mut t = Vec::with_capacity(runs);
    for _ in 0..runs {
        let s = Instant::now();
        f()?;
        t.push(s.elapsed());
    }
    Ok(median(t))
}

fn matmul_add(x: &Array, w: &Array, b: &Array) -> Result<Array> {
    x.matmul(w)? + b
}

fn forward_and_norm(x: &Array, w: &Array) -> Result<(Array, Array)> {
    let y = x.matmul(w)?;
    let norm = (&y * &y)?.sum(Axes::All, false)?.sqrt()?;
    Ok((y, norm))
}

fn gelu(x: &Array) -> Result<Array> {
    let inner = ((x + &((x.square()? * x)? * 0.044715f32)?)? * 0.797_884_6_f32)?;
    (x * 0.5f32)? * (inner.tanh()? + 1.0f32)?
}

fn layernorm(x: &Array, gamma: &Array, beta: &Array) -> Result<Array> {
    let mean = x.mean(-1, true)?;
    let xc = (x - &mean)?;
    let var = xc.square()?.mean(-1, true)?;
    let y = (&xc * &(var + 1e-5f32)?.rsqrt()?)?;
    (y * gamma)? + beta
}

fn main() -> Result<()> {
    random::seed(0);
    println!("== kiln: the mlx_compile seed, in Rust ==\n");

    // 1. The seed's matmul_add with its literal shapes.
    println!("-- matmul_add with the seed's shapes: x (32, 128), w (256, 128), b (256)");
    let fast_fn = compile(matmul_add); // returns immediately, nothing traced yet
    let x = random::normal(&[32, 128], DType::F32, 0.0, 1.0, None)?;
    let w_seed = random::normal(&[256, 128], DType::F32, 0.0, 1.0, None)?;
    let b = random::normal(&[256], DType::F32, 0.0, 1.0, None)?;
    match fast_fn.call((&x, &w_seed, &b)) {
        Ok(r) => println!("unexpected success: {:?}", r.shape()),
        Err(e) => println!("error (as expected, x @ w does not conform):\n  {e}\n"),
    }

    println!("-- matmul_add with w (128, 256)");
    let w = random::normal(&[128, 256], DType::F32, 0.0, 1.0, None)?;
    let fast_fn = compile(matmul_add);
    let (result, first) = time(|| fast_fn.call((&x, &w, &b)).and_then(|r| r.eval().map(|_| r)));
    let result = result?;
    println!("first call (trace + compile + run): {}  -> result {:?}", ms(first), result.shape());
    let batch_data: Vec<Array> =
        (0..1000).map(|_| random::normal(&[32, 128], DType::F32, 0.0, 1.0, None)).collect::<Result<_>>()?;
    kiln::eval(&batch_data.iter().collect::<Vec<_>>())?;
    let t = Instant::now();
    for xb in &batch_data {
        fast_fn.call((xb, &w, &b))?.eval()?;
    }
    let per_call = t.elapsed() / 1000;
    let t = Instant::now();
    for xb in &batch_data {
        matmul_add(xb, &w, &b)?.eval()?;
    }
    let per_call_eager = t.elapsed() / 1000;
    let want = matmul_add(&x, &w, &b)?;
    let diff = (&result - &want)?.abs()?.max(Axes::All, false)?.item::<f32>()?;
    println!(
        "1000 calls: {} per call compiled, {} eager; traces = {}, cache hits = {}; max |compiled - eager| = {diff}\n",
        us(per_call),
        us(per_call_eager),
        fast_fn.stats().traces,
        fast_fn.stats().hits
    );

    // 2. Multiple returns.
    println!("-- forward_and_norm returns (y, norm)");
    let compiled_fn = compile(forward_and_norm);
    let (y, norm) = compiled_fn.call((&x, &w))?;
    println!(
        "y: {:?}, norm = {:.4} (eager {:.4})\n",
        y.shape(),
        norm.item::<f32>()?,
        forward_and_norm(&x, &w)?.1.item::<f32>()?
    );

    // 3. Shapeless compilation.
    println!("-- shapeless: matmul_fn over (10, 64) then (20, 64)");
    let weights = random::normal(&[64, 32], DType::F32, 0.0, 1.0, None)?;
    let wts = weights.clone();
    let matmul_fn = move |x: &Array| x.matmul(&wts);
    let regular = compile(matmul_fn.clone());
    regular.call(&kiln::zeros(&[10, 64], DType::F32)?)?;
    regular.call(&kiln::zeros(&[20, 64], DType::F32)?)?;
    println!("regular:   traces = {} (recompiled for (20, 64))", regular.stats().traces);
    let shapeless = compile_with(matmul_fn, CompileOptions { shapeless: true, ..Default::default() });
    shapeless.call(&kiln::zeros(&[10, 64], DType::F32)?)?;
    let r = shapeless.call(&kiln::zeros(&[20, 64], DType::F32)?)?;
    println!("shapeless: traces = {} (no recompilation), second result {:?}\n", shapeless.stats().traces, r.shape());

    // 4. Speedups: compiled versus eager.
    println!("-- compiled vs eager (median of 20 runs)");
    let xg = random::normal(&[1 << 22], DType::F32, 0.0, 1.0, None)?;
    xg.eval()?;
    let cg = compile(gelu);
    let t_eager = bench(2, 20, || gelu(&xg)?.eval())?;
    let t_comp = bench(2, 20, || cg.call(&xg)?.eval())?;
    println!(
        "gelu (tanh) on 2^22 f32:        eager {}  compiled {}  speedup {:.1}x",
        ms(t_eager),
        ms(t_comp),
        t_eager.as_secs_f64() / t_comp.as_secs_f64()
    );
    let xl = random::normal(&[2048, 1024], DType::F32, 0.0, 1.0, None)?;
    let gamma = random::normal(&[1024], DType::F32, 1.0, 0.1, None)?;
    let beta = random::normal(&[1024], DType::F32, 0.0, 0.1, None)?;
    kiln::eval(&[&xl, &gamma, &beta])?;
    let cl = compile(layernorm);
    let t_eager = bench(2, 20, || layernorm(&xl, &gamma, &beta)?.eval())?;
    let t_comp = bench(2, 20, || cl.call((&xl, &gamma, &beta))?.eval())?;
    println!(
        "layernorm on (2048, 1024) f32:  eager {}  compiled {}  speedup {:.1}x",
        ms(t_eager),
        ms(t_comp),
        t_eager.as_secs_f64() / t_comp.as_secs_f64()
    );
    println!("\nThe compiled layernorm program:\n{}", cl.explain((&xl, &gamma, &beta))?);
    Ok(())
}
