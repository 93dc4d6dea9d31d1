//! `kiln-bench cuda`: kiln's rows on GPU 0 (issue 16's workloads), timed
//! with a synchronize before reading the host clock, after warm-up, median
//! of repeats, inputs random normal. Writes `cuda.json` and prints a
//! Markdown table; the peers' side of the table is `bench/peers` on the
//! same machine (scripts/gpu.sh bench runs both).

use std::path::Path;
use std::time::Instant;

use kiln::{compile, synchronize, Array, DType, Device, MatmulPrecision, Result};

const GPU: Device = Device::Cuda(0);

fn normal(shape: &[usize], scale: f32) -> Result<Array> {
    let x = kiln::with_default_device(GPU, || kiln::random::normal(shape, DType::F32, 0.0, scale as f64, None))??;
    x.eval()?;
    Ok(x)
}

/// Median seconds per call of `f` over `reps` repeats of `calls` calls,
/// pipelined (one synchronize of GPU 0 per repeat) and synced (one per call).
fn time(calls: usize, reps: usize, f: impl FnMut() -> Result<()>) -> Result<(f64, f64)> {
    time_on(|| synchronize(GPU), calls, reps, f)
}

/// [`time`], waiting with `sync` (for work queued outside kiln's device).
fn time_on(
    sync: impl Fn() -> Result<()>,
    calls: usize,
    reps: usize,
    mut f: impl FnMut() -> Result<()>,
) -> Result<(f64, f64)> {
    for _ in 0..3 {
        f()?;
    }
    sync()?;
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let mut piped = vec![];
    let mut synced = vec![];
    for _ in 0..reps {
        let t = Instant::now();
        for _ in 0..calls {
            f()?;
        }
        sync()?;
        piped.push(t.elapsed().as_secs_f64() / calls as f64);
        let t = Instant::now();
        for _ in 0..calls {
            f()?;
            sync()?;
        }
        synced.push(t.elapsed().as_secs_f64() / calls as f64);
    }
    Ok((median(piped), median(synced)))
}

/// One row of the report.
struct Row {
    name: &'static str,
    piped_s: f64,
    synced_s: f64,
    /// Bytes read and written per call (memory-bound rows).
    bytes: Option<f64>,
    /// Floating-point operations per call (products).
    flops: Option<f64>,
}

/// Runs the rows (those whose name contains one of `only`, when given)
/// and writes `out` (JSON); returns the Markdown table.
pub fn run(quick: bool, only: Option<&str>, out: &Path) -> std::result::Result<String, String> {
    rows(quick, only).map_err(|e| e.to_string()).and_then(|rows| {
        let md = table(&rows);
        let json: Vec<serde_json::Value> = rows
            .iter()
            .map(|r| {
                serde_json::json!({
                    "row": r.name, "pipelined_s": r.piped_s, "synced_s": r.synced_s,
                    "bytes": r.bytes, "flops": r.flops,
                })
            })
            .collect();
        if let Some(d) = out.parent() {
            std::fs::create_dir_all(d).map_err(|e| e.to_string())?;
        }
        std::fs::write(out, serde_json::to_string_pretty(&json).map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
        Ok(md)
    })
}

fn rows(quick: bool, only: Option<&str>) -> Result<Vec<Row>> {
    let want = |name: &str| only.is_none_or(|o| o.split(',').any(|w| name.contains(w)));
    let big = if quick { 1 << 22 } else { 1 << 28 };
    let side = if quick { 2048 } else { 16384 };
    let reps = if quick { 3 } else { 9 };
    let mut rows = vec![];
    let memory = |name, bytes: f64, f: &mut dyn FnMut() -> Result<()>| -> Result<Row> {
        let (p, s) = time(1, reps, f)?;
        Ok(Row { name, piped_s: p, synced_s: s, bytes: Some(bytes), flops: None })
    };
    let x = normal(&[big], 1.0)?;
    let n = big as f64;
    if want("x + 1 (floor probe)") {
        let add1 = compile(|x: &Array| x + 1.0f32);
        rows.push(memory("x + 1 (floor probe)", 8.0 * n, &mut || add1.call(&x)?.eval())?);
    }
    if want("gelu_tanh") {
        let g = compile(super::gelu_tanh);
        rows.push(memory("gelu_tanh", 8.0 * n, &mut || g.call(&x)?.eval())?);
    }
    if want("gelu_erf") {
        let g = compile(super::gelu_erf);
        rows.push(memory("gelu_erf", 8.0 * n, &mut || g.call(&x)?.eval())?);
    }
    drop(x);
    let x = normal(&[side, side], 1.0)?;
    let m = (side * side) as f64;
    if want("softmax") {
        let s = compile(super::softmax);
        rows.push(memory("softmax", 8.0 * m, &mut || s.call(&x)?.eval())?);
    }
    if want("layernorm") {
        let gamma = (normal(&[side], 0.1)? + 1.0f32)?;
        let beta = normal(&[side], 0.1)?;
        let l = compile(super::layernorm);
        rows.push(memory("layernorm", 8.0 * m, &mut || l.call((&x, &gamma, &beta))?.eval())?);
    }
    drop(x);
    // The seed's shapes, a different x per call.
    let (mm, k, nn) = (32, 128, 256);
    let xs: Vec<Array> = (0..64).map(|_| normal(&[mm, k], 1.0)).collect::<Result<_>>()?;
    let w = normal(&[k, nn], 1.0)?;
    let b = normal(&[nn], 1.0)?;
    let mut i = 0;
    if want("matmul_add per call") {
        let c = compile(super::matmul_add);
        let (p, sy) = time(200, reps, || {
            i += 1;
            c.call((&xs[i % xs.len()], &w, &b))?.eval()
        })?;
        rows.push(Row {
            name: "matmul_add per call",
            piped_s: p,
            synced_s: sy,
            bytes: None,
            flops: Some((2 * mm * k * nn) as f64),
        });
    }
    if want("forward_and_norm per call") {
        let c = compile(|x: &Array, w: &Array| -> Result<Vec<Array>> {
            let (y, norm) = super::forward_and_norm(x, w)?;
            Ok(vec![y, norm])
        });
        let (p, sy) = time(200, reps, || {
            i += 1;
            for a in c.call((&xs[i % xs.len()], &w))? {
                a.eval()?;
            }
            Ok(())
        })?;
        rows.push(Row { name: "forward_and_norm per call", piped_s: p, synced_s: sy, bytes: None, flops: None });
    }
    if want("tiny x + 1 per call") {
        let t = normal(&[16], 1.0)?;
        let tiny = compile(|x: &Array| x + 1.0f32);
        let (p, sy) = time(1000, reps, || tiny.call(&t)?.eval())?;
        rows.push(Row { name: "tiny x + 1 per call", piped_s: p, synced_s: sy, bytes: None, flops: None });
    }
    if !want("mlp (fp32)") {
        return Ok(rows);
    }
    let (batch, width) = if quick { (512, 512) } else { (4096, 4096) };
    let mut args = vec![normal(&[batch, width], 1.0)?];
    for _ in 0..3 {
        args.push(normal(&[width, width], 1.0 / (width as f32).sqrt())?);
        args.push(normal(&[width], 0.1)?);
    }
    let mlp = compile(|a: &[Array]| super::mlp(a));
    // True f32 products, then TF32 (asked for, as the peers are asked).
    for (name, precision) in [("mlp (fp32)", MatmulPrecision::Highest), ("mlp (tf32)", MatmulPrecision::Tf32)] {
        let old = kiln::set_matmul_precision(precision);
        let timed = time(1, reps, || mlp.call(&args[..])?.eval());
        kiln::set_matmul_precision(old);
        let (p, sy) = timed?;
        let flops = Some(3.0 * 2.0 * (batch * width * width) as f64);
        rows.push(Row { name, piped_s: p, synced_s: sy, bytes: None, flops });
    }
    Ok(rows)
}

fn table(rows: &[Row]) -> String {
    let mut s = String::from("| row | kiln pipelined | kiln synced | rate |\n|---|---|---|---|\n");
    for r in rows {
        let t = |v: f64| if v < 1e-3 { format!("{:.1} us", v * 1e6) } else { format!("{:.3} ms", v * 1e3) };
        let rate = match (r.bytes, r.flops) {
            (Some(b), _) => format!("{:.2} TB/s", b / r.piped_s / 1e12),
            (_, Some(f)) => format!("{:.1} TFLOP/s", f / r.piped_s / 1e12),
            _ => String::new(),
        };
        s.push_str(&format!("| {} | {} | {} | {} |\n", r.name, t(r.piped_s), t(r.synced_s), rate));
    }
    s
}

/// Per-call times (pipelined / synced) of a compiled `x @ w + b` on GPU 0
/// at products of 2^15 to 2^29 multiply-adds, as a Markdown table: where
/// kiln's tiled kernel (one launch with the bias) stops beating cuBLAS
/// and a second kernel. Which runs is set by `KILN_CUDA_SMALL_PRODUCT`.
pub fn products() -> Result<String> {
    let mut s = String::from("| m x k x n | multiply-adds | pipelined | synced |\n|---|---|---|---|\n");
    let f = compile(super::matmul_add);
    for (m, k, n) in [(8, 64, 64), (32, 128, 256), (64, 256, 256), (128, 256, 512), (256, 512, 512), (512, 1024, 1024)]
    {
        let xs: Vec<Array> = (0..8).map(|_| normal(&[m, k], 1.0)).collect::<Result<_>>()?;
        let w = normal(&[k, n], 1.0)?;
        let b = normal(&[n], 1.0)?;
        let mut i = 0;
        let (p, sy) = time(100, 7, || {
            i += 1;
            f.call((&xs[i % xs.len()], &w, &b))?.eval()
        })?;
        s.push_str(&format!("| {m} x {k} x {n} | {} | {:.1} us | {:.1} us |\n", m * k * n, p * 1e6, sy * 1e6));
    }
    Ok(s)
}

/// Milliseconds of the first call of a compiled gelu_tanh or layernorm in
/// this process (its kernels compiled by NVRTC or read from the disk
/// cache), on inputs already on the GPU.
pub fn first_call(which: &str) -> Result<f64> {
    let x = normal(&[4096, 4096], 1.0)?;
    let gamma = normal(&[4096], 1.0)?;
    let beta = normal(&[4096], 1.0)?;
    synchronize(GPU)?;
    let t = Instant::now();
    let y = if which == "layernorm" {
        compile(super::layernorm).call((&x, &gamma, &beta))?
    } else {
        compile(super::gelu_tanh).call(&x)?
    };
    y.eval()?;
    let queued = t.elapsed();
    synchronize(GPU)?;
    if std::env::var_os("KILN_CUDA_TRACE").is_some() {
        eprintln!("first call: queued in {:.1} ms", queued.as_secs_f64() * 1e3);
    }
    Ok(t.elapsed().as_secs_f64() * 1e3)
}

/// What a tiny compiled call costs beside the driver's own launch, on GPU
/// 0, as a Markdown table of per-call times (pipelined / synced, median of
/// 7 repeats of 2000 calls): an empty kernel launched by `cuLaunchKernel`
/// with 3 and with 12 arguments (the launch floor of any kernel), an idle
/// synchronize, and the compiled `x + 1` on 16 elements (the bench's
/// tiny row).
#[cfg(not(feature = "cuda"))]
pub fn launch_floor() -> Result<String> {
    Err(kiln::Error::Device { op: "cuda-launch", msg: "kiln-bench was built without the cuda feature".into() })
}

/// See the other `launch_floor` (this one is built with the `cuda` feature).
#[cfg(feature = "cuda")]
pub fn launch_floor() -> Result<String> {
    use kiln::backend::cuda::driver::Arg;
    use kiln::backend::cuda::Gpu;
    let gpu: &'static Gpu = Box::leak(Box::new(Gpu::open(0)?));
    let three = gpu.kernel("extern \"C\" __global__ void k(const float* a, float* b, long long n) {}\n")?;
    let twelve = gpu.kernel(
        "extern \"C\" __global__ void k(const float* a, float* b, long long n, long long s0, long long s1, \
         long long s2, long long s3, long long s4, long long s5, long long s6, long long s7, long long s8) {}\n",
    )?;
    let buf = gpu.alloc("launch_floor", 256)?;
    let sync = || gpu.sync("launch_floor");
    let args3 = [Arg::Ptr(buf), Arg::Ptr(buf), Arg::I64(16)];
    let mut args12 = args3.to_vec();
    args12.extend((0..9).map(Arg::I64));
    let mut s = String::from("| what | pipelined | synced |\n|---|---|---|\n");
    let mut row =
        |name: &str, (p, sy): (f64, f64)| s.push_str(&format!("| {name} | {:.2} us | {:.2} us |\n", p * 1e6, sy * 1e6));
    row("empty kernel, 3 arguments", time_on(sync, 2000, 7, || gpu.launch(three, 1, 32, 0, &args3))?);
    row("empty kernel, 12 arguments", time_on(sync, 2000, 7, || gpu.launch(twelve, 1, 32, 0, &args12))?);
    row("idle synchronize", time_on(sync, 2000, 7, || Ok(()))?);
    let t = normal(&[16], 1.0)?;
    let tiny = compile(|x: &Array| x + 1.0f32);
    let (p, sy) = time(2000, 7, || tiny.call(&t)?.eval())?;
    row("compiled x + 1 (16 elements)", (p, sy));
    gpu.free(buf, 256);
    Ok(s)
}
