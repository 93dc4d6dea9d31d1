//! A soak test: several threads call compiled functions (fixed-shape and
//! shapeless) and eager ops for a while, checking every result against
//! eager evaluation, while the main thread samples the process's resident
//! memory. Memory that keeps growing after the warm-up is a leak.
//!
//! Run: `cargo run --release --example soak [seconds [threads]]` (default
//! 60 s, 4 threads). Prints one line:
//! `soak: <s> s, <threads> threads, <calls> calls, <bad> mismatches, rss after
//! warm-up <MiB>, at end <MiB>, peak <MiB>` and exits with status 1 on a
//! mismatch. RELIABILITY.md records its figures.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kiln::ops::random;
use kiln::{compile, compile_with, Array, CompileOptions, DType};

/// Resident memory of this process in MiB (0 where /proc is missing).
fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:")).map(str::to_string))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse::<f64>().ok()))
        .map_or(0.0, |kb| kb / 1024.0)
}

fn close(a: &Array, b: &Array) -> kiln::Result<bool> {
    let (a, b) = (a.astype(DType::F64)?.to_vec::<f64>()?, b.astype(DType::F64)?.to_vec::<f64>()?);
    Ok(a.len() == b.len() && a.iter().zip(&b).all(|(x, y)| (x - y).abs() <= 1e-4 * (1.0 + y.abs())))
}

fn gelu(x: &Array) -> kiln::Result<Array> {
    let inner = ((x * x)? * x)? * 0.044715f32;
    let t = ((x + inner)? * 0.797_884_6f32)?.tanh()?;
    (x * 0.5f32)? * (t + 1.0f32)?
}

fn layernorm(x: &Array) -> kiln::Result<Array> {
    let mean = x.mean(-1, true)?;
    let d = (x - &mean)?;
    let var = d.square()?.mean(-1, true)?;
    &d * (var + 1e-5f32)?.rsqrt()?
}

fn worker(seed: u64, stop: &AtomicBool, calls: &AtomicU64, bad: &AtomicU64) -> kiln::Result<()> {
    let key = random::key(seed);
    let x = random::normal(&[32, 128], DType::F32, 0.0, 1.0, Some(&key))?;
    let w = random::normal(&[128, 256], DType::F32, 0.0, 1.0, Some(&random::key(seed + 1)))?;
    let b = random::normal(&[256], DType::F32, 0.0, 1.0, Some(&random::key(seed + 2)))?;
    let matmul_add = compile(|x: &Array, w: &Array, b: &Array| -> kiln::Result<Array> { x.matmul(w)? + b });
    let gelu_c = compile(gelu);
    let norm_shapeless = compile_with(layernorm, CompileOptions { shapeless: true, ..Default::default() });
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let rows = 1 + (i % 64) as usize;
        let v = random::normal(&[rows, 96], DType::F32, 0.0, 1.0, Some(&random::key(seed * 1000 + i)))?;
        let g = random::normal(&[1 << 14], DType::F32, 0.0, 1.0, Some(&random::key(seed * 7 + i)))?;
        let got = [matmul_add.call((&x, &w, &b))?, gelu_c.call(&g)?, norm_shapeless.call(&v)?];
        // Every 16th round, each result against eager evaluation.
        if i.is_multiple_of(16) {
            let want = [(x.matmul(&w)? + &b)?, gelu(&g)?, layernorm(&v)?];
            for (a, e) in got.iter().zip(&want) {
                if !close(a, e)? {
                    bad.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        calls.fetch_add(3, Ordering::Relaxed);
        i += 1;
    }
    Ok(())
}

fn main() -> kiln::Result<()> {
    let seconds: u64 = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(60);
    let threads: u64 = std::env::args().nth(2).and_then(|s| s.parse().ok()).unwrap_or(4).max(1);
    let (stop, calls, bad) =
        (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (stop, calls, bad) = (stop.clone(), calls.clone(), bad.clone());
            std::thread::spawn(move || worker(t + 1, &stop, &calls, &bad))
        })
        .collect();
    let start = Instant::now();
    let warm = Duration::from_secs((seconds / 6).clamp(1, 10));
    std::thread::sleep(warm);
    let after_warmup = rss_mib();
    let mut peak = after_warmup;
    while start.elapsed() < Duration::from_secs(seconds) {
        std::thread::sleep(Duration::from_millis(500));
        peak = peak.max(rss_mib());
    }
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.join().expect("a soak thread panicked")?;
    }
    let end = rss_mib();
    let bad = bad.load(Ordering::Relaxed);
    println!(
        "soak: {seconds} s, {threads} threads, {} calls, {bad} mismatches, rss after warm-up {after_warmup:.1} MiB, \
         at end {end:.1} MiB, peak {peak:.1} MiB",
        calls.load(Ordering::Relaxed)
    );
    if bad > 0 {
        std::process::exit(1);
    }
    Ok(())
}
