//! Per-call times of compiled functions called from Rust, the baselines for
//! the R binding's overhead: the seed's `matmul_add` and a tiny call.
//!
//! Builds x (32, 128), w (128, 256) and b (256) f32, compiles
//! `x.matmul(w)? + b` with [`kiln::compile`], warms up, then times rounds of
//! 1000 calls and prints the median per-call time over the rounds as one
//! line: `rust_us_per_call <microseconds>`; then the same for `a + 1` on a
//! 0-d f32 array: `rust_tiny_us_per_call <microseconds>`; then `matmul_add`
//! again with each output kept alive as R keeps it: outputs pile up until
//! `held_bytes` of them are live, then all are dropped at once, as R's
//! collector frees them (timed after two such cycles of warm-up):
//! `rust_held_us_per_call <microseconds>`.
//!
//! Why the third figure: R frees an output only when its garbage collector
//! runs, which the kiln package asks for once 256 MiB of array data were
//! handed to R. Until then every output is fresh memory, while the plain
//! Rust loop drops each output at once and writes the next one into the same
//! cache-hot buffer. Holding outputs the same way from Rust separates the
//! cost of R's call path from the cost of R's output lifetime.
//!
//! `bench/r/bench.R` runs this example (built by `bench/r/bench.sh`) and
//! subtracts its figure from the same call made from R.
//!
//! Run: `cargo run --release --example r_overhead [rounds [threads
//! [held_bytes]]]` (default 20 rounds, every thread, 256 MiB; `threads` caps
//! them as `kiln::set_threads` does, to compare with `mlx_set_threads` in R;
//! 0 means every thread).

use std::time::Instant;

use kiln::ops::random;
use kiln::{compile, Array, DType};

const CALLS: usize = 1000;

fn main() -> kiln::Result<()> {
    let rounds: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(20).max(1);
    if let Some(threads) = std::env::args().nth(2).and_then(|s| s.parse().ok()).filter(|&t| t > 0) {
        kiln::set_threads(threads)?;
    }
    let held_bytes: usize = std::env::args().nth(3).and_then(|s| s.parse().ok()).unwrap_or(256 << 20);
    random::seed(0);
    let x = random::normal(&[32, 128], DType::F32, 0.0, 1.0, None)?;
    let w = random::normal(&[128, 256], DType::F32, 0.0, 1.0, None)?;
    let b = random::normal(&[256], DType::F32, 0.0, 1.0, None)?;
    kiln::eval(&[&x, &w, &b])?;

    let matmul_add = compile(|x: &Array, w: &Array, b: &Array| -> kiln::Result<Array> { x.matmul(w)? + b });

    let median = median_us(rounds, || matmul_add.call((&x, &w, &b)).map(drop))?;
    println!("rust_us_per_call {median:.3}");

    let a = Array::scalar(2.0f32);
    let tiny = compile(|a: &Array| a + 1.0f32);
    let median = median_us(rounds, || tiny.call(&a).map(drop))?;
    println!("rust_tiny_us_per_call {median:.3}");

    let keep = (held_bytes / (32 * 256 * 4)).max(1);
    let mut held = Vec::with_capacity(keep);
    let mut call_and_hold = || {
        held.push(matmul_add.call((&x, &w, &b))?);
        if held.len() == keep {
            held.clear();
        }
        Ok(())
    };
    for _ in 0..2 * keep {
        call_and_hold()?;
    }
    let median = median_us(rounds, call_and_hold)?;
    println!("rust_held_us_per_call {median:.3}");
    Ok(())
}

/// Median over `rounds` of the time per call of `call`, in rounds of
/// [`CALLS`] calls, after one round of warm-up.
fn median_us(rounds: usize, mut call: impl FnMut() -> kiln::Result<()>) -> kiln::Result<f64> {
    for _ in 0..CALLS {
        call()?;
    }
    let mut per_call_us = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let t = Instant::now();
        for _ in 0..CALLS {
            call()?;
        }
        per_call_us.push(t.elapsed().as_secs_f64() * 1e6 / CALLS as f64);
    }
    per_call_us.sort_by(f64::total_cmp);
    let n = per_call_us.len();
    Ok(if n % 2 == 1 { per_call_us[n / 2] } else { (per_call_us[n / 2 - 1] + per_call_us[n / 2]) / 2.0 })
}
