//! `kiln-bench`: the kiln side of the CPU benchmark (`scripts/bench.sh`).
//!
//! ```text
//! kiln-bench run [--quick] [--out PART.json] [--sizes SIZES.json]
//!     measure kiln, kiln-eager and the copy-bandwidth floor; write a part
//!     and the sizes (with each workload's bytes and flops) for the peers
//! kiln-bench fresh first_call|shapeless_batches|recompile_batches [--quick]
//!     one fresh-process run (compile included); prints milliseconds
//! kiln-bench report --out DIR PART.json...
//!     merge parts, add the matmul floor, write cpu.json, cpu.md, missing.json
//! kiln-bench cuda-products
//!     compiled `x @ w + b` per call on GPU 0 at sizes around the tiled
//!     kernel's limit (run with KILN_CUDA_SMALL_PRODUCT=0 for cuBLAS alone)
//! kiln-bench cuda-launch
//!     the driver's launch and synchronize floor on GPU 0 beside the
//!     compiled `x + 1` on 16 elements (the tiny row)
//! kiln-bench compile-time [--quick] [--out DIR]
//!     first-call time of a compiled chain of n elementwise ops against n,
//!     and the ratio time(100k) / time(10k) (--quick: 10k / 1k); writes DIR/compile_time.md
//!     and .json (default target/bench)
//! kiln-bench --quick [--out DIR]
//!     smoke mode: tiny sizes, kiln only, run + report into DIR
//!     (default target/bench/quick), in seconds
//! ```

mod cuda;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use kiln::{arange, compile, compile_with, random, Array, Axes, CompileOptions, DType, Result};
use kiln_bench::{summarize, write_outputs, Missing, Part, Record};
use rayon::prelude::*;
use serde::Serialize;

/// Problem sizes; the full ones are the issue's.
#[derive(Serialize, Clone, Debug)]
struct Sizes {
    quick: bool,
    gelu_n: usize,
    rows: usize,
    cols: usize,
    mm: [usize; 3],
    calls: usize,
    mlp_batch: usize,
    mlp_width: usize,
    mlp_layers: usize,
    tiny_n: usize,
    tiny_calls: usize,
    batches: Vec<usize>,
    batch_cols: usize,
    sgemm_n: usize,
    copy_bytes: usize,
    first_call_reps: usize,
    /// Elements of each array of the Adam update.
    adam_n: usize,
    /// Elements of the polynomial's input.
    poly_n: usize,
    /// `[m, k, n]` of the product before the gelu epilogue.
    mm_gelu: [usize; 3],
    /// Columns of the small-batch layernorm rows.
    ln_cols: usize,
    /// Row counts of the small-batch layernorm rows (`layernorm_1024x<rows>`).
    ln_rows: Vec<usize>,
    /// Rows per timed run of those rows: `ln_block / rows` calls, timed per call.
    ln_block: usize,
}

impl Sizes {
    fn new(quick: bool) -> Sizes {
        if quick {
            Sizes {
                quick,
                gelu_n: 1 << 12,
                rows: 64,
                cols: 64,
                mm: [32, 128, 256],
                calls: 20,
                mlp_batch: 16,
                mlp_width: 64,
                mlp_layers: 3,
                tiny_n: 16,
                tiny_calls: 20,
                batches: vec![2, 4, 6, 8],
                batch_cols: 64,
                sgemm_n: 64,
                copy_bytes: 1 << 22,
                first_call_reps: 2,
                adam_n: 1 << 12,
                poly_n: 1 << 12,
                mm_gelu: [16, 64, 64],
                ln_cols: 1024,
                ln_rows: LN_ROWS.to_vec(),
                ln_block: 4096,
            }
        } else {
            Sizes {
                quick,
                gelu_n: 1 << 24,
                rows: 4096,
                cols: 4096,
                mm: [32, 128, 256],
                calls: 1000,
                mlp_batch: 256,
                mlp_width: 1024,
                mlp_layers: 3,
                tiny_n: 16,
                tiny_calls: 1000,
                batches: (1..=20).map(|i| 16 * i).collect(),
                batch_cols: 4096,
                sgemm_n: 1024,
                copy_bytes: 256 << 20,
                first_call_reps: 5,
                adam_n: 1 << 22,
                poly_n: 1 << 24,
                mm_gelu: [512, 1024, 1024],
                ln_cols: 1024,
                ln_rows: LN_ROWS.to_vec(),
                ln_block: 4096,
            }
        }
    }

    /// Minimum bytes read + written and flops of one run of `w` (transcendentals count as one flop).
    fn cost(&self, w: &str) -> (u64, u64) {
        let f = 4u64;
        let [m, k, n] = self.mm.map(|v| v as u64);
        let (rc, rows, cols) = ((self.rows * self.cols) as u64, self.rows as u64, self.cols as u64);
        let g = self.gelu_n as u64;
        let batch_elems: u64 = self.batches.iter().map(|&b| (b * self.batch_cols) as u64).sum();
        let (b, wd, l) = (self.mlp_batch as u64, self.mlp_width as u64, self.mlp_layers as u64);
        match w {
            "gelu_tanh" => (2 * f * g, 9 * g),
            "gelu_erf" => (2 * f * g, 5 * g),
            "softmax" => (2 * f * rc, 5 * rc),
            "layernorm" | "first_call" => (f * (2 * rc + 2 * cols), 7 * rc + rows),
            "matmul_add" => (f * (m * k + k * n + n + m * n), 2 * m * k * n + m * n),
            "forward_and_norm" => (f * (m * k + k * n + m * n + 1), 2 * m * k * n + 2 * m * n + 1),
            "mlp" => (f * (2 * b * wd + l * (wd * wd + wd)), l * (2 * b * wd * wd + b * wd) + (l - 1) * b * wd),
            "tiny" => (2 * f * self.tiny_n as u64, self.tiny_n as u64),
            "shapeless_batches" | "recompile_batches" => (2 * f * batch_elems, 9 * batch_elems),
            "sgemm" => {
                let s = self.sgemm_n as u64;
                (3 * f * s * s, 2 * s * s * s)
            }
            "sgemm_bf16" => {
                let s = self.sgemm_n as u64;
                (3 * 2 * s * s, 2 * s * s * s)
            }
            "copy" => (2 * self.copy_bytes as u64, 0),
            // param, grad, m, v in; param, m, v out (the six scalars are noise).
            "adam" => (7 * f * self.adam_n as u64, 14 * self.adam_n as u64),
            "rmsnorm" => (f * (2 * rc + cols), 5 * rc + 2 * rows),
            "logsumexp" => (f * (rc + rows), 4 * rc + rows),
            // logits and the labels (4 bytes each) in, one float out.
            "cross_entropy" => (f * (rc + rows + 1), 4 * rc + 3 * rows),
            "polynomial" => (2 * f * self.poly_n as u64, 16 * self.poly_n as u64),
            // x read in both orders, the sum written.
            "transpose_add" => (3 * f * rc, rc),
            "softmax_cols" => (2 * f * rc, 5 * rc + cols),
            "col_norms" => (f * (rc + cols), 2 * rc + cols),
            "matmul_gelu" => {
                let [m, k, n] = self.mm_gelu.map(|v| v as u64);
                (f * (m * k + k * n + n + m * n), 2 * m * k * n + 10 * m * n)
            }
            w => match ln_rows_of(w) {
                Some(r) => {
                    let (r, c) = (r as u64, self.ln_cols as u64);
                    (f * (2 * r * c + 2 * c), 7 * r * c + r)
                }
                None => (0, 0),
            },
        }
    }
}

/// Row counts of the `layernorm_1024x<rows>` workloads (issue 17: layernorm
/// over (b, 1024) batches ran 2.6-2.8x slower per call than torch eager's).
const LN_ROWS: [usize; 4] = [64, 256, 1024, 4096];

/// The row count of a `layernorm_1024x<rows>` workload name.
fn ln_rows_of(workload: &str) -> Option<usize> {
    workload.strip_prefix("layernorm_1024x")?.parse().ok()
}

/// The Adam update's hyperparameters: lr, beta1, beta2, eps, and the bias
/// corrections `1 - beta1^t`, `1 - beta2^t` at step t = 10 (as peers.py).
fn adam_hyper() -> [f32; 6] {
    let (b1, b2) = (0.9f32, 0.999f32);
    [1e-3, b1, b2, 1e-8, 1.0 - b1.powi(10), 1.0 - b2.powi(10)]
}

/// The polynomial's coefficients, highest degree first (as peers.py).
const POLY: [f32; 9] = [0.003_906_25, -0.007_812_5, 0.015_625, -0.031_25, 0.062_5, -0.125, 0.25, -0.5, 1.0];

/// How many runs: `warm` warm-ups, then at least `min` and at most `max`
/// timed runs, stopping after `budget_s` seconds once `min` are done.
#[derive(Clone, Copy)]
struct Plan {
    warm: usize,
    min: usize,
    max: usize,
    budget_s: f64,
}

impl Plan {
    fn new(quick: bool) -> Plan {
        if quick {
            Plan { warm: 1, min: 3, max: 5, budget_s: 0.05 }
        } else {
            // `KILN_BENCH_BUDGET_S` (as for the peers): the seconds of timed
            // runs per row, which scripts/bench.sh halves for its two rounds.
            let budget_s = std::env::var("KILN_BENCH_BUDGET_S").ok().and_then(|v| v.parse().ok()).unwrap_or(2.5);
            Plan { warm: 3, min: 10, max: 300, budget_s }
        }
    }
}

/// Copies of the floor run after a memory-bound workload's runs, at least.
const FLOOR_COPIES: usize = 10;

/// Times `f` per `plan`; each run's time divided by `per` (calls per run), in ms.
fn measure(plan: Plan, per: usize, mut f: impl FnMut() -> Result<()>) -> Result<Vec<f64>> {
    for _ in 0..plan.warm {
        f()?;
    }
    let start = Instant::now();
    let mut v = Vec::new();
    while v.len() < plan.min || (v.len() < plan.max && start.elapsed().as_secs_f64() < plan.budget_s) {
        let t = Instant::now();
        f()?;
        v.push(t.elapsed().as_secs_f64() * 1e3 / per as f64);
    }
    Ok(v)
}

// ---- the workloads, written as a kiln user would ----

fn gelu_tanh(x: &Array) -> Result<Array> {
    let inner = ((x + ((x * x)? * x)? * 0.044715f32)? * 0.797_884_6_f32)?;
    (x * 0.5f32)? * (inner.tanh()? + 1.0f32)?
}

fn gelu_erf(x: &Array) -> Result<Array> {
    (((x * std::f32::consts::FRAC_1_SQRT_2)?.erf()? + 1.0f32)? * x)? * 0.5f32
}

fn softmax(x: &Array) -> Result<Array> {
    x.softmax(-1)
}

fn layernorm(x: &Array, gamma: &Array, beta: &Array) -> Result<Array> {
    let mean = x.mean(-1, true)?;
    let xc = (x - &mean)?;
    let var = xc.square()?.mean(-1, true)?;
    let y = (&xc * (var + 1e-5f32)?.rsqrt()?)?;
    (y * gamma)? + beta
}

fn matmul_add(x: &Array, w: &Array, b: &Array) -> Result<Array> {
    x.matmul(w)? + b
}

fn forward_and_norm(x: &Array, w: &Array) -> Result<(Array, Array)> {
    let y = x.matmul(w)?;
    let norm = (&y * &y)?.sum(Axes::All, false)?.sqrt()?;
    Ok((y, norm))
}

fn mlp(args: &[Array]) -> Result<Array> {
    // args: x, then (w, b) per layer.
    let mut h = args[0].clone();
    let layers = (args.len() - 1) / 2;
    for i in 0..layers {
        h = (h.matmul(&args[1 + 2 * i])? + &args[2 + 2 * i])?;
        if i + 1 < layers {
            h = h.maximum(0.0f32)?;
        }
    }
    Ok(h)
}

fn tiny(x: &Array) -> Result<Array> {
    x + 1.0f32
}

/// One Adam step, written out: `args` are param, grad, m, v, then the 0-d
/// lr, beta1, beta2, eps, bias corrections 1 and 2. Returns the new param,
/// m and v.
fn adam(args: &[Array]) -> Result<(Array, Array, Array)> {
    let [p, g, m, v, lr, b1, b2, eps, bc1, bc2] = args else {
        return Err(kiln::Error::Invalid { op: "adam", msg: format!("10 arguments, got {}", args.len()) });
    };
    let m = ((b1 * m)? + ((1.0f32 - b1)? * g)?)?;
    let v = ((b2 * v)? + ((1.0f32 - b2)? * (g * g)?)?)?;
    let step = ((lr * (&m / bc1)?)? / ((&v / bc2)?.sqrt()? + eps)?)?;
    Ok(((p - step)?, m, v))
}

fn transpose_add(x: &Array) -> Result<Array> {
    x + &x.t()?
}

fn softmax_cols(x: &Array) -> Result<Array> {
    x.softmax(0)
}

fn col_norms(x: &Array) -> Result<Array> {
    (x * x)?.sum(0, false)?.sqrt()
}

fn rmsnorm(x: &Array, weight: &Array) -> Result<Array> {
    let ms = x.square()?.mean(-1, true)?;
    (x * (ms + 1e-6f32)?.rsqrt()?)? * weight
}

fn logsumexp(x: &Array) -> Result<Array> {
    x.logsumexp(-1, false)
}

/// Mean over rows of `logsumexp(row) - row[label]`; the label's logit is
/// taken from the flattened logits at `row * cols + label`.
fn cross_entropy(logits: &Array, labels: &Array) -> Result<Array> {
    let (rows, cols) = (logits.shape()[0], logits.shape()[1]);
    let at = ((arange(0.0, rows as f64, 1.0, DType::I32)? * cols as i32)? + labels)?;
    let picked = kiln::take(&logits.reshape(&[-1])?, &at, 0)?;
    (logits.logsumexp(-1, false)? - picked)?.mean(Axes::All, false)
}

/// [`POLY`] at `x`, in Horner form.
fn polynomial(x: &Array) -> Result<Array> {
    let mut y = ((x * POLY[0])? + POLY[1])?;
    for c in &POLY[2..] {
        y = ((y * x)? + *c)?;
    }
    Ok(y)
}

fn matmul_gelu(x: &Array, w: &Array, b: &Array) -> Result<Array> {
    gelu_tanh(&(x.matmul(w)? + b)?)
}

fn normal(shape: &[usize], scale: f64) -> Result<Array> {
    let a = random::normal(shape, DType::F32, 0.0, scale, None)?;
    a.eval()?;
    Ok(a)
}

/// Max |a - b| relative to max |b|, for the compiled-vs-eager check.
fn rel_diff(a: &Array, b: &Array) -> Result<f64> {
    let (a, b) = (&a.astype(DType::F32)?, &b.astype(DType::F32)?);
    let d = (a - b)?.abs()?.max(Axes::All, false)?.item::<f32>()? as f64;
    let m = b.abs()?.max(Axes::All, false)?.item::<f32>()? as f64;
    Ok(d / m.max(f64::MIN_POSITIVE))
}

/// The copy behind the bandwidth floor: a large buffer copied by the
/// faster of one thread and one chunk per rayon thread (chosen by
/// [`Runner::copy_floor`]).
struct Copier {
    src: Vec<f32>,
    dst: Vec<f32>,
    parallel: bool,
}

impl Copier {
    fn new(bytes: usize) -> Copier {
        let len = bytes / 4;
        Copier { src: (0..len).map(|i| (i % 251) as f32 + 0.5).collect(), dst: vec![1.0; len], parallel: true }
    }

    /// One copy; its time in ms.
    fn time(&mut self) -> f64 {
        let t = Instant::now();
        if self.parallel {
            let chunk = self.src.len().div_ceil(rayon::current_num_threads());
            self.dst.par_chunks_mut(chunk).zip(self.src.par_chunks(chunk)).for_each(|(d, s)| d.copy_from_slice(s));
        } else {
            self.dst.copy_from_slice(&self.src);
        }
        std::hint::black_box(&self.dst);
        t.elapsed().as_secs_f64() * 1e3
    }
}

struct Runner {
    sizes: Sizes,
    plan: Plan,
    part: Part,
    copier: Option<Copier>,
}

impl Runner {
    fn push(&mut self, workload: &str, imp: &str, r: Result<Vec<f64>>) {
        let (bytes, flops) = self.sizes.cost(workload);
        match r {
            Ok(v) => {
                let rec = summarize(workload, imp, &v, bytes, flops);
                eprintln!("  {workload:<18} {imp:<12} {}", kiln_bench::fmt_ms(rec.median_ms));
                self.part.records.push(rec);
            }
            Err(e) => {
                eprintln!("  {workload:<18} {imp:<12} FAILED: {e}");
                self.part.missing.push(Missing {
                    imp: imp.into(),
                    workload: workload.into(),
                    reason: format!("error: {e}"),
                });
            }
        }
    }

    fn check(&mut self, workload: &str, compiled: Result<f64>) {
        match compiled {
            Ok(d) if d <= 1e-4 => {}
            Ok(d) => self.part.notes.push(format!("CHECK {workload}: kiln vs kiln-eager relative max diff {d:.2e}")),
            Err(e) => self.part.notes.push(format!("CHECK {workload}: could not compare kiln with kiln-eager: {e}")),
        }
    }

    /// Times kiln on a memory-bound workload, then the floor's copy as
    /// many times right after (at least [`FLOOR_COPIES`]), and sets the
    /// workload's floor from those copies: the two meet the same minutes of
    /// the host. On these shared machines the copy bandwidth moves by up to
    /// 1.9x between minutes of one run (41 and 80 GB/s in the eighth
    /// session), so a floor measured once, at the start, says little about
    /// a workload timed minutes later. The copies run after kiln's runs,
    /// not between them: on the Xeon with a 480 MiB L3, a logsumexp over
    /// 4096x4096 ran 5.1 ms after a copy of 256 MiB and 3.6 ms after its
    /// own run, however many untimed runs came between (one to four) and
    /// with the copy's lines flushed, so copies between runs timed kiln in
    /// a state the peers, timed run after run, never met.
    fn floored(&mut self, workload: &str, f: impl FnMut() -> Result<()>) {
        self.floored_per(workload, 1, f)
    }

    /// [`Runner::floored`] for a run of `per` calls, timed per call.
    fn floored_per(&mut self, workload: &str, per: usize, f: impl FnMut() -> Result<()>) {
        let Some(mut copier) = self.copier.take() else {
            let r = measure(self.plan, per, f);
            self.push(workload, "kiln", r);
            return;
        };
        let r = measure(self.plan, per, f);
        let runs = r.as_ref().map_or(0, Vec::len).max(FLOOR_COPIES);
        let copies: Vec<f64> = (0..runs).map(|_| copier.time()).collect();
        self.push(workload, "kiln", r);
        if !copies.is_empty() {
            let gbs = self.set_floors(&[workload], &copies);
            self.part.notes.push(format!(
                "{workload}: copy-bandwidth floor {gbs:.1} GB/s, from the {} copies run right after kiln's runs",
                copies.len()
            ));
        }
        self.copier = Some(copier);
    }

    /// Sets the floor record of each of `workloads` from the copy times
    /// `copies` (ms): its bytes at the copies' median bandwidth, with p10
    /// and p90 in the copies' proportions. Returns that bandwidth in GB/s.
    fn set_floors(&mut self, workloads: &[&str], copies: &[f64]) -> f64 {
        let c = summarize("copy", "floor", copies, 0, 0);
        let bw = 2.0 * self.sizes.copy_bytes as f64 / c.median_ms; // bytes per ms
        for &w in workloads {
            let (bytes, flops) = self.sizes.cost(w);
            let t = bytes as f64 / bw;
            self.part.records.retain(|r| !(r.workload == w && r.imp == "floor"));
            self.part.records.push(Record {
                workload: w.into(),
                imp: "floor".into(),
                median_ms: t,
                p10_ms: t * c.p10_ms / c.median_ms,
                p90_ms: t * c.p90_ms / c.median_ms,
                bytes,
                flops,
            });
        }
        bw / 1e6
    }

    fn elementwise(&mut self, name: &str, f: fn(&Array) -> Result<Array>) -> Result<()> {
        let x = normal(&[self.sizes.gelu_n], 1.0)?;
        let c = compile(f);
        self.memory_row(name, || c.call(&x), || f(&x));
        Ok(())
    }

    /// A memory-bound row of one output: `compiled` timed against the floor
    /// ([`Runner::floored`]), `eager` as kiln-eager, and the two compared.
    fn memory_row(&mut self, name: &str, compiled: impl Fn() -> Result<Array>, eager: impl Fn() -> Result<Array>) {
        self.floored(name, || compiled()?.eval());
        self.push(name, "kiln-eager", measure(self.plan, 1, || eager()?.eval()));
        let d = compiled().and_then(|a| rel_diff(&a, &eager()?));
        self.check(name, d);
    }

    fn run(&mut self) -> Result<()> {
        let s = self.sizes.clone();
        let p = self.plan;
        eprintln!("kiln-bench: measuring kiln ({} threads)", rayon::current_num_threads());

        self.copy_floor();
        self.elementwise("gelu_tanh", gelu_tanh)?;
        self.elementwise("gelu_erf", gelu_erf)?;

        let x = normal(&[s.rows, s.cols], 1.0)?;
        let c = compile(softmax);
        self.memory_row("softmax", || c.call(&x), || softmax(&x));

        let gamma = (normal(&[s.cols], 0.1)? + 1.0f32)?;
        gamma.eval()?;
        let beta = normal(&[s.cols], 0.1)?;
        let c = compile(layernorm);
        self.memory_row("layernorm", || c.call((&x, &gamma, &beta)), || layernorm(&x, &gamma, &beta));
        drop(x);

        // The seed's shapes, 1000 different x per block as in the seed.
        let [m, k, n] = s.mm;
        let xs: Vec<Array> = (0..s.calls).map(|_| normal(&[m, k], 1.0)).collect::<Result<_>>()?;
        let w = normal(&[k, n], 1.0)?;
        let b = normal(&[n], 1.0)?;
        let c = compile(matmul_add);
        self.push(
            "matmul_add",
            "kiln",
            measure(p, s.calls, || xs.iter().try_for_each(|x| c.call((x, &w, &b))?.eval())),
        );
        self.push(
            "matmul_add",
            "kiln-eager",
            measure(p, s.calls, || xs.iter().try_for_each(|x| matmul_add(x, &w, &b)?.eval())),
        );
        let d = c.call((&xs[0], &w, &b)).and_then(|a| rel_diff(&a, &matmul_add(&xs[0], &w, &b)?));
        self.check("matmul_add", d);
        let c = compile(forward_and_norm);
        self.push(
            "forward_and_norm",
            "kiln",
            measure(p, s.calls, || {
                xs.iter().try_for_each(|x| {
                    let (y, nrm) = c.call((x, &w))?;
                    kiln::eval(&[&y, &nrm])
                })
            }),
        );
        self.push(
            "forward_and_norm",
            "kiln-eager",
            measure(p, s.calls, || {
                xs.iter().try_for_each(|x| {
                    let (y, nrm) = forward_and_norm(x, &w)?;
                    kiln::eval(&[&y, &nrm])
                })
            }),
        );
        let d = c.call((&xs[0], &w)).and_then(|(_, a)| rel_diff(&a, &forward_and_norm(&xs[0], &w)?.1));
        self.check("forward_and_norm", d);
        drop(xs);

        let mut args = vec![normal(&[s.mlp_batch, s.mlp_width], 1.0)?];
        let scale = 1.0 / (s.mlp_width as f64).sqrt();
        for _ in 0..s.mlp_layers {
            args.push(normal(&[s.mlp_width, s.mlp_width], scale)?);
            args.push(normal(&[s.mlp_width], 0.1)?);
        }
        let c = compile(mlp);
        self.push("mlp", "kiln", measure(p, 1, || c.call(&args)?.eval()));
        self.push("mlp", "kiln-eager", measure(p, 1, || mlp(&args)?.eval()));
        let d = c.call(&args).and_then(|a| rel_diff(&a, &mlp(&args)?));
        self.check("mlp", d);

        let x = normal(&[s.tiny_n], 1.0)?;
        let c = compile(tiny);
        self.push("tiny", "kiln", measure(p, s.tiny_calls, || (0..s.tiny_calls).try_for_each(|_| c.call(&x)?.eval())));
        self.push(
            "tiny",
            "kiln-eager",
            measure(p, s.tiny_calls, || (0..s.tiny_calls).try_for_each(|_| tiny(&x)?.eval())),
        );

        let r = self.fresh("first_call");
        self.push("first_call", "kiln", r);
        self.batches()?;

        let n = s.sgemm_n;
        let a = normal(&[n, n], 1.0)?;
        let bm = normal(&[n, n], 1.0)?;
        let mm = |a: &Array, b: &Array| a.matmul(b);
        let c = compile(mm);
        self.push("sgemm", "kiln", measure(p, 1, || c.call((&a, &bm))?.eval()));
        self.push("sgemm", "kiln-eager", measure(p, 1, || mm(&a, &bm)?.eval()));
        let (a, bm) = (a.astype(DType::BF16)?, bm.astype(DType::BF16)?);
        kiln::eval(&[&a, &bm])?;
        self.push("sgemm_bf16", "kiln", measure(p, 1, || c.call((&a, &bm))?.eval()));
        self.push("sgemm_bf16", "kiln-eager", measure(p, 1, || mm(&a, &bm)?.eval()));
        let d = c.call((&a, &bm)).and_then(|x| rel_diff(&x, &mm(&a, &bm)?));
        self.check("sgemm_bf16", d);
        drop((a, bm));
        self.untuned()
    }

    /// The rows no one tuned for (issue 17): Adam, rmsnorm, logsumexp,
    /// cross-entropy, a polynomial, a product with a gelu epilogue and
    /// layernorm over small batches of 1024 columns.
    fn untuned(&mut self) -> Result<()> {
        let s = self.sizes.clone();
        let p = self.plan;

        let n = s.adam_n;
        let mut args = vec![normal(&[n], 1.0)?, normal(&[n], 1.0)?, normal(&[n], 0.1)?, normal(&[n], 0.1)?.square()?];
        args.extend(adam_hyper().map(Array::scalar));
        kiln::eval(&args.iter().collect::<Vec<_>>())?;
        let c = compile(adam);
        let eval3 = |(a, b, c): (Array, Array, Array)| kiln::eval(&[&a, &b, &c]);
        self.floored("adam", || eval3(c.call(&args)?));
        self.push("adam", "kiln-eager", measure(p, 1, || eval3(adam(&args)?)));
        let d = c.call(&args).and_then(|(p1, m1, v1)| {
            let (p2, m2, v2) = adam(&args)?;
            Ok(rel_diff(&p1, &p2)?.max(rel_diff(&m1, &m2)?).max(rel_diff(&v1, &v2)?))
        });
        self.check("adam", d);
        drop(args);

        let x = normal(&[s.rows, s.cols], 1.0)?;
        let weight = (normal(&[s.cols], 0.1)? + 1.0f32)?;
        weight.eval()?;
        let c = compile(rmsnorm);
        self.memory_row("rmsnorm", || c.call((&x, &weight)), || rmsnorm(&x, &weight));

        let c = compile(logsumexp);
        self.memory_row("logsumexp", || c.call(&x), || logsumexp(&x));

        let labels = random::randint(0, s.cols as i64, &[s.rows], DType::I32, None)?;
        labels.eval()?;
        let c = compile(cross_entropy);
        self.memory_row("cross_entropy", || c.call((&x, &labels)), || cross_entropy(&x, &labels));

        let c = compile(transpose_add);
        self.memory_row("transpose_add", || c.call(&x), || transpose_add(&x));
        let c = compile(softmax_cols);
        self.memory_row("softmax_cols", || c.call(&x), || softmax_cols(&x));
        let c = compile(col_norms);
        self.memory_row("col_norms", || c.call(&x), || col_norms(&x));
        drop(x);

        let x = normal(&[s.poly_n], 1.0)?;
        let c = compile(polynomial);
        self.memory_row("polynomial", || c.call(&x), || polynomial(&x));
        drop(x);

        let [m, k, n] = s.mm_gelu;
        let x = normal(&[m, k], 1.0)?;
        let w = normal(&[k, n], 1.0 / (k as f64).sqrt())?;
        let b = normal(&[n], 0.1)?;
        let c = compile(matmul_gelu);
        self.push("matmul_gelu", "kiln", measure(p, 1, || c.call((&x, &w, &b))?.eval()));
        self.push("matmul_gelu", "kiln-eager", measure(p, 1, || matmul_gelu(&x, &w, &b)?.eval()));
        let d = c.call((&x, &w, &b)).and_then(|a| rel_diff(&a, &matmul_gelu(&x, &w, &b)?));
        self.check("matmul_gelu", d);

        let gamma = (normal(&[s.ln_cols], 0.1)? + 1.0f32)?;
        gamma.eval()?;
        let beta = normal(&[s.ln_cols], 0.1)?;
        let c = compile(layernorm);
        for &rows in &s.ln_rows {
            let name = format!("layernorm_1024x{rows}");
            let x = normal(&[rows, s.ln_cols], 1.0)?;
            let calls = (s.ln_block / rows).max(1);
            self.floored_per(&name, calls, || (0..calls).try_for_each(|_| c.call((&x, &gamma, &beta))?.eval()));
            self.push(
                &name,
                "kiln-eager",
                measure(p, calls, || (0..calls).try_for_each(|_| layernorm(&x, &gamma, &beta)?.eval())),
            );
            let d = c.call((&x, &gamma, &beta)).and_then(|a| rel_diff(&a, &layernorm(&x, &gamma, &beta)?));
            self.check(&name, d);
        }
        Ok(())
    }

    /// gelu_tanh over the batch sizes: the compiled variants in fresh
    /// processes (each run compiles afresh, so compile time is included),
    /// kiln-eager in this process.
    fn batches(&mut self) -> Result<()> {
        let s = self.sizes.clone();
        for w in ["shapeless_batches", "recompile_batches"] {
            let r = self.fresh(w);
            self.push(w, "kiln", r);
        }
        let xs: Vec<Array> = s.batches.iter().map(|&b| normal(&[b, s.batch_cols], 1.0)).collect::<Result<_>>()?;
        let p = self.plan;
        self.push(
            "shapeless_batches",
            "kiln-eager",
            measure(p, 1, || xs.iter().try_for_each(|x| gelu_tanh(x)?.eval())),
        );
        let c = compile_with(gelu_tanh, CompileOptions { shapeless: true, ..Default::default() });
        let last = xs.last().expect("batches");
        let d = c.call(&xs[0]).and_then(|_| c.call(last)).and_then(|a| rel_diff(&a, &gelu_tanh(last)?));
        self.check("shapeless_batches", d);
        Ok(())
    }

    /// Runs `kiln-bench fresh WORKLOAD` in fresh processes; their times in ms.
    fn fresh(&mut self, workload: &str) -> Result<Vec<f64>> {
        let exe = std::env::current_exe()
            .map_err(|e| kiln::Error::Invalid { op: "fresh", msg: format!("cannot find own executable: {e}") })?;
        let mut v = Vec::new();
        for _ in 0..self.sizes.first_call_reps {
            let mut cmd = Command::new(&exe);
            cmd.args(["fresh", workload]);
            if self.sizes.quick {
                cmd.arg("--quick");
            }
            let out = cmd.output();
            let parsed = out
                .as_ref()
                .ok()
                .filter(|o| o.status.success())
                .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse::<f64>().ok());
            match parsed {
                Some(ms) => v.push(ms),
                None => {
                    let why = match out {
                        Ok(o) => String::from_utf8_lossy(&o.stderr).into_owned(),
                        Err(e) => e.to_string(),
                    };
                    return Err(kiln::Error::Invalid { op: "fresh", msg: why });
                }
            }
        }
        Ok(v)
    }

    /// Copy bandwidth of a large buffer: single-threaded memcpy and one chunk
    /// per rayon thread; the faster variant's median run sets the floor of
    /// the workloads not timed with copies in between ([`Runner::floored`]),
    /// and that variant is the copy run between those workloads' runs.
    /// The median, as for every impl's time: the best of the runs would let
    /// one copy that met an idle host (79 GB/s against 43 GB/s in one run of
    /// the sixth session) set the floor for the whole run. The floor's p10
    /// and p90 are the copy's.
    fn copy_floor(&mut self) {
        let mut copier = Copier::new(self.sizes.copy_bytes);
        let reps = if self.sizes.quick { 3 } else { 12 };
        let mut time = |parallel: bool| -> Vec<f64> {
            copier.parallel = parallel;
            (0..reps + 2).map(|_| copier.time()).skip(2).collect()
        };
        let single = time(false);
        let par = time(true);
        let median = |v: &[f64]| summarize("copy", "floor", v, 0, 0).median_ms;
        let faster = median(&par) < median(&single);
        let (name, v) = if faster { ("parallel", par) } else { ("single-thread", single) };
        copier.parallel = faster;
        self.copier = Some(copier);
        let memory: Vec<&str> =
            kiln_bench::WORKLOADS.iter().filter(|w| w.class == kiln_bench::Class::Memory).map(|w| w.name).collect();
        let gbs = self.set_floors(&memory, &v);
        self.part.notes.push(format!(
            "copy-bandwidth floor: {gbs:.1} GB/s ({name} copy of {} MiB, median of {reps}; bytes read + written)",
            self.sizes.copy_bytes >> 20
        ));
        self.push("copy", "floor", Ok(v));
    }
}

/// The body of `kiln-bench fresh WORKLOAD`, run in a fresh process: inputs
/// are made and evaluated first, then the clock runs over compile + trace +
/// run (first_call: layernorm once; the batch workloads: gelu_tanh over
/// every batch size, compiled with or without shapeless).
fn fresh_once(workload: &str, quick: bool) -> Result<f64> {
    let s = Sizes::new(quick);
    match workload {
        "first_call" => {
            let x = normal(&[s.rows, s.cols], 1.0)?;
            let gamma = (normal(&[s.cols], 0.1)? + 1.0f32)?;
            let beta = normal(&[s.cols], 0.1)?;
            kiln::eval(&[&x, &gamma, &beta])?;
            let t = Instant::now();
            let c = compile(layernorm);
            c.call((&x, &gamma, &beta))?.eval()?;
            Ok(t.elapsed().as_secs_f64() * 1e3)
        }
        "shapeless_batches" | "recompile_batches" => {
            let xs: Vec<Array> = s.batches.iter().map(|&b| normal(&[b, s.batch_cols], 1.0)).collect::<Result<_>>()?;
            let t = Instant::now();
            let shapeless = workload == "shapeless_batches";
            let c = compile_with(gelu_tanh, CompileOptions { shapeless, ..Default::default() });
            xs.iter().try_for_each(|x| c.call(x)?.eval())?;
            Ok(t.elapsed().as_secs_f64() * 1e3)
        }
        _ => Err(kiln::Error::Invalid { op: "fresh", msg: format!("unknown workload {workload}") }),
    }
}

fn run(quick: bool, out: &Path, sizes_out: Option<&Path>) -> std::result::Result<(), String> {
    random::seed(0);
    let sizes = Sizes::new(quick);
    if let Some(p) = sizes_out {
        let mut v = serde_json::to_value(&sizes).map_err(|e| e.to_string())?;
        let cost: serde_json::Map<String, serde_json::Value> =
            kiln_bench::WORKLOADS.iter().map(|w| (w.name.to_string(), serde_json::json!(sizes.cost(w.name)))).collect();
        v["cost"] = serde_json::Value::Object(cost);
        write_file(p, &serde_json::to_string_pretty(&v).map_err(|e| e.to_string())?)?;
    }
    let mut r = Runner { sizes, plan: Plan::new(quick), part: Part::default(), copier: None };
    r.part.header = machine_lines();
    r.part.notes.push(format!(
        "kiln {}: {} rayon threads, {} build{}",
        env!("CARGO_PKG_VERSION"),
        rayon::current_num_threads(),
        if cfg!(debug_assertions) { "debug" } else { "release" },
        if quick { ", --quick sizes" } else { "" }
    ));
    if let Err(e) = r.run() {
        r.part.notes.push(format!("kiln run stopped early: {e}"));
        eprintln!("kiln-bench: stopped early: {e}");
    }
    if quick {
        for imp in kiln_bench::IMPLS.iter().filter(|i| !matches!(**i, "kiln" | "kiln-eager" | "floor")) {
            r.part.missing.push(Missing {
                imp: imp.to_string(),
                workload: "*".into(),
                reason: "not run (--quick)".into(),
            });
        }
    }
    write_file(out, &serde_json::to_string_pretty(&r.part).map_err(|e| e.to_string())?)
}

/// The report's header lines about this machine: its CPU model and core
/// count, and which of the SIMD extensions that the kernels can use
/// `/proc/cpuinfo` lists.
fn machine_lines() -> Vec<String> {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |name: &str| {
        info.lines()
            .find(|l| l.split(':').next().is_some_and(|k| k.trim() == name))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
    };
    let model = field("model name").unwrap_or_else(|| "unknown (no /proc/cpuinfo)".into());
    let flags = field("flags").unwrap_or_default();
    let has = |f: &str| flags.split_whitespace().any(|x| x == f);
    let simd: Vec<String> = ["avx2", "fma", "avx512f", "avx512_bf16", "amx_tile"]
        .iter()
        .map(|f| format!("{f} {}", if has(f) { "yes" } else { "no" }))
        .collect();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    vec![format!("CPU: {model}, {cores} cores available"), format!("SIMD flags in /proc/cpuinfo: {}", simd.join(", "))]
}

/// One row of the compile-time benchmark.
#[derive(Serialize)]
struct CompileTimeRow {
    n: usize,
    median_ms: f64,
    runs_ms: Vec<f64>,
}

/// `y * 0.999` and `y + 0.001` alternately, `n` ops (issue 14 §5's chain).
fn op_chain(x: &Array, n: usize) -> Result<Array> {
    let mut y = x.clone();
    for i in 0..n {
        y = if i % 2 == 0 { (&y * 0.999f32)? } else { (&y + 0.001f32)? };
    }
    Ok(y)
}

/// The first call (trace, optimize, fuse, lower, run) of a compiled chain of
/// `n` elementwise ops on 1024 floats, for each `n`; the median of a few
/// runs, each a fresh `compile`. Checks the result against eager.
fn compile_time(quick: bool, dir: &Path) -> std::result::Result<(), String> {
    let ns: &[usize] = if quick { &[1_000, 10_000] } else { &[1_000, 4_000, 10_000, 16_000, 32_000, 100_000] };
    let reps = if quick { 1 } else { 3 };
    let x = normal(&[1024], 1.0).map_err(|e| e.to_string())?;
    // Once-per-process costs (the thread pools, the assembler's tables)
    // are paid before the clock runs.
    compile(|x: &Array| op_chain(x, 1_000)).call(&x).and_then(|r| r.eval()).map_err(|e| e.to_string())?;
    let mut rows = vec![];
    for &n in ns {
        let mut runs = vec![];
        for _ in 0..reps {
            let c = compile(move |x: &Array| op_chain(x, n));
            let t = Instant::now();
            let got = c.call(&x).and_then(|r| r.to_vec::<f32>()).map_err(|e| e.to_string())?;
            runs.push(t.elapsed().as_secs_f64() * 1e3);
            let want = op_chain(&x, n).and_then(|r| r.to_vec::<f32>()).map_err(|e| e.to_string())?;
            if got != want {
                return Err(format!("compiled chain of {n} ops differs from eager"));
            }
        }
        let median_ms = summarize("compile_time", "kiln", &runs, 0, 0).median_ms;
        rows.push(CompileTimeRow { n, median_ms, runs_ms: runs });
    }
    let at = |n: usize| rows.iter().find(|r| r.n == n).map(|r| r.median_ms);
    let mut md = String::from(
        "# Compile time against program size\n\nFirst call of `compile(f)`, f a chain of n elementwise ops \
         (`y * 0.999`, `y + 0.001`) on 1024 f32: trace, optimize, fuse, lower and run; median of fresh compiles.\n\n\
         | n | first call | per 1000 ops |\n|---|---|---|\n",
    );
    for r in &rows {
        md += &format!("| {} | {:.1} ms | {:.2} ms |\n", r.n, r.median_ms, r.median_ms * 1e3 / r.n as f64);
    }
    // Ten times the ops: the ratio of first-call times is 10 when compile
    // time is linear (the quick run compares 10k with 1k).
    let (big, small, name) = if quick { (10_000, 1_000, "10k_1k") } else { (100_000, 10_000, "100k_10k") };
    let ratio = at(big).zip(at(small)).map(|(a, b)| a / b);
    if let Some(q) = ratio {
        md += &format!("\ntime({}k) / time({}k) = {q:.1} (linear: 10)\n", big / 1000, small / 1000);
    }
    let mut json = serde_json::json!({ "rows": rows });
    json[format!("ratio_{name}")] = serde_json::json!(ratio);
    write_file(&dir.join("compile_time.json"), &serde_json::to_string_pretty(&json).map_err(|e| e.to_string())?)?;
    write_file(&dir.join("compile_time.md"), &md)?;
    println!("{md}");
    Ok(())
}

fn write_file(p: &Path, text: &str) -> std::result::Result<(), String> {
    if let Some(d) = p.parent() {
        std::fs::create_dir_all(d).map_err(|e| format!("creating {}: {e}", d.display()))?;
    }
    std::fs::write(p, text).map_err(|e| format!("writing {}: {e}", p.display()))
}

fn usage() -> String {
    "usage: kiln-bench run [--quick] [--out PART.json] [--sizes SIZES.json]\n       \
     kiln-bench fresh first_call|shapeless_batches|recompile_batches [--quick]\n       kiln-bench report --out DIR PART.json...\n       \
     kiln-bench compile-time [--quick] [--out DIR]\n       kiln-bench --quick [--out DIR]\n       \
     kiln-bench cuda [--quick] [--only ROW,...] [--out cuda.json]\n       kiln-bench cuda-first gelu|layernorm"
        .into()
}

fn main_inner() -> std::result::Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    let opt = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).map(PathBuf::from);
    match args.first().map(String::as_str) {
        Some("run") => {
            let out = opt("--out").unwrap_or_else(|| "target/bench/kiln.json".into());
            run(quick, &out, opt("--sizes").as_deref())
        }
        Some("fresh") => {
            let w = args.get(1).ok_or_else(usage)?;
            let ms = fresh_once(w, quick).map_err(|e| e.to_string())?;
            println!("{ms}");
            Ok(())
        }
        Some("report") => {
            let out = opt("--out").ok_or_else(usage)?;
            let mut parts = Vec::new();
            let mut i = 1;
            while i < args.len() {
                if args[i] == "--out" {
                    i += 2;
                    continue;
                }
                parts.push(PathBuf::from(&args[i]));
                i += 1;
            }
            let part = kiln_bench::read_parts(&parts)?;
            let md = write_outputs(&out, part)?;
            println!("{md}");
            Ok(())
        }
        Some("cuda") => {
            let out = opt("--out").unwrap_or_else(|| "target/bench/cuda.json".into());
            let only = args.iter().position(|a| a == "--only").and_then(|i| args.get(i + 1)).cloned();
            println!("{}", cuda::run(quick, only.as_deref(), &out)?);
            Ok(())
        }
        Some("cuda-products") => {
            println!("{}", cuda::products().map_err(|e| e.to_string())?);
            Ok(())
        }
        Some("cuda-launch") => {
            println!("{}", cuda::launch_floor().map_err(|e| e.to_string())?);
            Ok(())
        }
        Some("cuda-first") => {
            let w = args.get(1).ok_or_else(usage)?;
            println!("{:.1}", cuda::first_call(w).map_err(|e| e.to_string())?);
            Ok(())
        }
        Some("compile-time") => {
            let dir = opt("--out").unwrap_or_else(|| "target/bench".into());
            compile_time(quick, &dir)
        }
        Some("--quick") => {
            let dir = opt("--out").unwrap_or_else(|| "target/bench/quick".into());
            let part_path = dir.join("kiln.json");
            run(true, &part_path, Some(&dir.join("sizes.json")))?;
            let part = kiln_bench::read_parts(&[part_path])?;
            let md = write_outputs(&dir, part)?;
            println!("{md}");
            Ok(())
        }
        _ => Err(usage()),
    }
}

fn main() {
    if let Err(e) = main_inner() {
        eprintln!("kiln-bench: {e}");
        std::process::exit(2);
    }
}
