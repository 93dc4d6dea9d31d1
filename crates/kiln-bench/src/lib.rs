//! The side-by-side CPU benchmark's data model and report.
//!
//! `scripts/bench.sh` runs the `kiln-bench` binary (kiln, kiln-eager and the
//! copy-bandwidth floor) and `bench/peers/peers.py` (NumPy, JAX, PyTorch,
//! MLX); each writes a [`Part`] as JSON. [`write_outputs`] merges the parts,
//! adds the matrix-product floor ([`add_matmul_floors`]) and writes
//! `cpu.json` (a list of [`Record`]s), `cpu.md` ([`markdown`]) and
//! `missing.json` (the [`Missing`] entries: peers that could not be installed
//! or failed on a workload, never silently dropped).
//!
//! The peers run twice, with glibc's default allocator settings and with
//! settings that make it reuse freed large blocks (see `bench/README.md`);
//! the second run's impls carry the suffix [`REUSE`], and every target holds
//! against the faster of the two.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// One measurement: a workload run by one implementation.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Record {
    /// Workload name (see [`WORKLOADS`]).
    pub workload: String,
    /// Implementation name (see [`IMPLS`]).
    #[serde(rename = "impl")]
    pub imp: String,
    /// Median time of one run, in milliseconds.
    pub median_ms: f64,
    /// 10th percentile of the run times, in milliseconds.
    pub p10_ms: f64,
    /// 90th percentile of the run times, in milliseconds.
    pub p90_ms: f64,
    /// Bytes that one run must at least read and write.
    pub bytes: u64,
    /// Floating-point operations of one run.
    pub flops: u64,
}

/// An implementation that has no record for a workload, and why.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Missing {
    /// Implementation name.
    #[serde(rename = "impl")]
    pub imp: String,
    /// Workload name, or `*` for every workload.
    pub workload: String,
    /// Why (install failure, exception text, not run in quick mode).
    pub reason: String,
}

/// What one benchmark process writes: records, missing entries and notes
/// (library versions, thread settings, correctness-check results).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct Part {
    /// Measurements.
    pub records: Vec<Record>,
    /// Implementations without a measurement.
    #[serde(default)]
    pub missing: Vec<Missing>,
    /// Free-form lines shown in the report.
    #[serde(default)]
    pub notes: Vec<String>,
    /// Lines about the machine shown under the report's title (CPU model,
    /// SIMD flags).
    #[serde(default)]
    pub header: Vec<String>,
}

impl Part {
    /// Appends another part (another round's header lines, notes and
    /// missing entries only where they differ from those already here).
    pub fn extend(&mut self, other: Part) {
        self.records.extend(other.records);
        push_new(&mut self.missing, other.missing);
        push_new(&mut self.notes, other.notes);
        push_new(&mut self.header, other.header);
    }
}

/// Appends each of `items` not already in `to`.
fn push_new<T: PartialEq>(to: &mut Vec<T>, items: Vec<T>) {
    for x in items {
        if !to.contains(&x) {
            to.push(x);
        }
    }
}

/// The suffix of a peer's impl name in the run with glibc's allocator set to
/// reuse freed large blocks (`torch-eager+reuse`).
pub const REUSE: &str = "+reuse";

/// The peers' impl names, without [`REUSE`].
pub const PEERS: [&str; 6] = ["numpy", "jax-jit", "torch-compile", "torch-eager", "mlx-compile", "mlx-eager"];

/// Every implementation name, in report order (each peer followed by its
/// [`REUSE`] run).
pub const IMPLS: [&str; 15] = [
    "kiln",
    "kiln-eager",
    "numpy",
    "numpy+reuse",
    "jax-jit",
    "jax-jit+reuse",
    "torch-compile",
    "torch-compile+reuse",
    "torch-eager",
    "torch-eager+reuse",
    "mlx-compile",
    "mlx-compile+reuse",
    "mlx-eager",
    "mlx-eager+reuse",
    "floor",
];

/// Every impl but the floor.
const ALL: &[&str] = match IMPLS.split_last() {
    Some((_, all)) => all,
    None => &[],
};
// The fresh-process workloads (compile included) run only with the default
// allocator settings.
const COMPILED: &[&str] = &["kiln", "jax-jit", "torch-compile", "mlx-compile"];

/// What bounds a workload from below, i.e. which floor applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// Copy bandwidth: `bytes / (bytes per ms of a large memcpy)`.
    Memory,
    /// Matrix-product rate: `flops / (best sgemm flops per ms among impls)`.
    Matmul,
    /// No floor (dispatch overhead, compile time, the calibrations).
    None,
}

/// A workload: name, floor class, the implementations expected to report
/// it, and a one-line description for the report.
#[derive(Clone, Copy, Debug)]
pub struct Workload {
    /// Name used in records.
    pub name: &'static str,
    /// Which floor applies.
    pub class: Class,
    /// Implementations expected to report it.
    pub impls: &'static [&'static str],
    /// What is measured.
    pub about: &'static str,
}

/// The workloads, in report order (issue 4's list, the shapeless workload
/// split in its two variants, issue 17's untuned rows, then the two floor
/// calibrations).
pub const WORKLOADS: &[Workload] = &[
    Workload {
        name: "gelu_tanh",
        class: Class::Memory,
        impls: ALL,
        about: "0.5*x*(1+tanh(0.7978845608*(x+0.044715*x^3))) on 2^24 f32",
    },
    Workload { name: "gelu_erf", class: Class::Memory, impls: ALL, about: "x*(1+erf(x/sqrt(2)))/2 on 2^24 f32" },
    Workload { name: "softmax", class: Class::Memory, impls: ALL, about: "softmax over the rows of 4096x4096 f32" },
    Workload {
        name: "layernorm",
        class: Class::Memory,
        impls: ALL,
        about: "layernorm over the rows of 4096x4096 f32, then *gamma+beta (eps 1e-5)",
    },
    Workload {
        name: "matmul_add",
        class: Class::Matmul,
        impls: ALL,
        about: "(32x128)@(128x256)+b(256): time per call over blocks of 1000 calls",
    },
    Workload {
        name: "forward_and_norm",
        class: Class::Matmul,
        impls: ALL,
        about: "y = x@w and sqrt(sum(y*y)), both returned; seed shapes, per call",
    },
    Workload {
        name: "mlp",
        class: Class::Matmul,
        impls: ALL,
        about: "3 layers of 1024 on a batch of 256, bias + relu between layers",
    },
    Workload {
        name: "tiny",
        class: Class::None,
        impls: ALL,
        about: "x + 1 on 16 f32: time per call (dispatch overhead)",
    },
    Workload {
        name: "first_call",
        class: Class::None,
        impls: COMPILED,
        about: "trace + compile + first run of layernorm (4096x4096) in a fresh process, persistent caches off",
    },
    Workload {
        name: "shapeless_batches",
        class: Class::Memory,
        impls: ALL,
        about: "gelu_tanh over 20 batch sizes of (b, 4096), compiled shapeless (kiln, mlx; torch dynamic=True; \
                jax has no shapeless mode and recompiles), total time including compiles",
    },
    Workload {
        name: "recompile_batches",
        class: Class::Memory,
        impls: COMPILED,
        about: "the same 20 batches compiled without shapeless (torch: default dynamic=None), \
                total time including compiles",
    },
    Workload {
        name: "adam",
        class: Class::Memory,
        impls: ALL,
        about: "one Adam step on 2^22 f32 (param, grad, m, v in; param, m, v out), lr, beta1, beta2, eps and the \
                two bias corrections passed as 0-d arguments",
    },
    Workload {
        name: "rmsnorm",
        class: Class::Memory,
        impls: ALL,
        about: "x * rsqrt(mean(x^2 over the row) + 1e-6) * weight on 4096x4096 f32",
    },
    Workload { name: "logsumexp", class: Class::Memory, impls: ALL, about: "logsumexp over the rows of 4096x4096 f32" },
    Workload {
        name: "cross_entropy",
        class: Class::Memory,
        impls: ALL,
        about: "mean over rows of logsumexp(row) - row[label], logits 4096x4096 f32 and integer labels",
    },
    Workload {
        name: "polynomial",
        class: Class::Memory,
        impls: ALL,
        about: "a degree-8 polynomial in Horner form (float literal coefficients) on 2^24 f32",
    },
    Workload {
        name: "transpose_add",
        class: Class::Memory,
        impls: ALL,
        about: "x + x.T on 4096x4096 f32 (one operand read across its layout)",
    },
    Workload {
        name: "softmax_cols",
        class: Class::Memory,
        impls: ALL,
        about: "softmax over the columns (axis 0) of 4096x4096 f32",
    },
    Workload {
        name: "col_norms",
        class: Class::Memory,
        impls: ALL,
        about: "sqrt(sum(x*x, 0)): the norms of the columns of 4096x4096 f32",
    },
    Workload {
        name: "matmul_gelu",
        class: Class::Matmul,
        impls: ALL,
        about: "gelu_tanh(x @ w + b), x 512x1024, w 1024x1024, b 1024 f32",
    },
    Workload {
        name: "layernorm_1024x64",
        class: Class::Memory,
        impls: ALL,
        about: "layernorm (as above) over 64 rows of 1024 f32: time per call, over blocks of 64 calls",
    },
    Workload {
        name: "layernorm_1024x256",
        class: Class::Memory,
        impls: ALL,
        about: "layernorm over 256 rows of 1024 f32: time per call, over blocks of 16 calls",
    },
    Workload {
        name: "layernorm_1024x1024",
        class: Class::Memory,
        impls: ALL,
        about: "layernorm over 1024 rows of 1024 f32: time per call, over blocks of 4 calls",
    },
    Workload {
        name: "layernorm_1024x4096",
        class: Class::Memory,
        impls: ALL,
        about: "layernorm over 4096 rows of 1024 f32: time per call",
    },
    Workload {
        name: "sgemm",
        class: Class::Matmul,
        impls: ALL,
        about: "calibration: (1024x1024)@(1024x1024) f32; its best rate is the matmul floor",
    },
    Workload {
        name: "sgemm_bf16",
        class: Class::None,
        impls: ALL,
        about: "(1024x1024)@(1024x1024) bf16 (f32 sums, a bf16 result; AMX or AVX512-BF16 where the CPU has them)",
    },
    Workload {
        name: "copy",
        class: Class::None,
        impls: &["floor"],
        about: "calibration: copy of a large buffer (bytes read + written); best run gives the bandwidth floor",
    },
];

/// The workload named `name`.
pub fn workload(name: &str) -> Option<&'static Workload> {
    WORKLOADS.iter().find(|w| w.name == name)
}

/// Linear-interpolation percentile (`q` in 0..=1) of sorted samples, as
/// NumPy's default.
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    assert!(!sorted.is_empty(), "percentile of no samples");
    let pos = q * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

/// A record from run times in milliseconds (median, p10, p90).
pub fn summarize(workload: &str, imp: &str, samples_ms: &[f64], bytes: u64, flops: u64) -> Record {
    let mut s = samples_ms.to_vec();
    s.sort_by(f64::total_cmp);
    Record {
        workload: workload.into(),
        imp: imp.into(),
        median_ms: percentile(&s, 0.5),
        p10_ms: percentile(&s, 0.1),
        p90_ms: percentile(&s, 0.9),
        bytes,
        flops,
    }
}

/// The record of `imp` on `workload`.
pub fn find<'a>(records: &'a [Record], workload: &str, imp: &str) -> Option<&'a Record> {
    records.iter().find(|r| r.workload == workload && r.imp == imp)
}

/// `imp`'s median time divided by kiln's on `workload` (above 1: kiln is faster).
pub fn ratio_to_kiln(records: &[Record], workload: &str, imp: &str) -> Option<f64> {
    let k = find(records, workload, "kiln")?;
    let r = find(records, workload, imp)?;
    Some(r.median_ms / k.median_ms)
}

/// Kiln's fraction of the floor on `workload`: floor time / kiln time (1 = at the floor).
pub fn floor_fraction(records: &[Record], workload: &str) -> Option<f64> {
    let k = find(records, workload, "kiln")?;
    let f = find(records, workload, "floor")?;
    Some(f.median_ms / k.median_ms)
}

/// Adds a `floor` record to every matmul-class workload that lacks one:
/// `flops / rate`, where `rate` is the best flops per millisecond among the
/// implementations on the `sgemm` calibration. Returns that rate, if any.
pub fn add_matmul_floors(records: &mut Vec<Record>) -> Option<f64> {
    let rate = records
        .iter()
        .filter(|r| r.workload == "sgemm" && r.imp != "floor" && r.median_ms > 0.0)
        .map(|r| r.flops as f64 / r.median_ms)
        .fold(None, |a: Option<f64>, x| Some(a.map_or(x, |a| a.max(x))))?;
    let mut add = Vec::new();
    for w in WORKLOADS.iter().filter(|w| w.class == Class::Matmul) {
        if find(records, w.name, "floor").is_some() {
            continue;
        }
        if let Some(r) = records.iter().find(|r| r.workload == w.name && r.flops > 0) {
            let t = r.flops as f64 / rate;
            add.push(Record {
                workload: w.name.into(),
                imp: "floor".into(),
                median_ms: t,
                p10_ms: t,
                p90_ms: t,
                bytes: r.bytes,
                flops: r.flops,
            });
        }
    }
    records.extend(add);
    Some(rate)
}

/// A time for humans: microseconds below 1 ms, seconds from 10 s.
pub fn fmt_ms(ms: f64) -> String {
    if ms < 1.0 {
        format!("{:.2} us", ms * 1e3)
    } else if ms < 10_000.0 {
        format!("{ms:.2} ms")
    } else {
        format!("{:.2} s", ms / 1e3)
    }
}

fn fmt_ratio(x: Option<f64>) -> String {
    x.map_or("n/a".into(), |x| format!("{x:.2}x"))
}

fn fmt_pct(x: Option<f64>) -> String {
    x.map_or("n/a".into(), |x| format!("{:.0}%", x * 100.0))
}

fn rate(w: &Workload, r: &Record) -> String {
    if r.median_ms <= 0.0 {
        return String::new();
    }
    match w.class {
        Class::Matmul => format!("{:.1} GFLOP/s", r.flops as f64 / r.median_ms / 1e6),
        Class::Memory | Class::None if r.bytes > 0 => format!("{:.1} GB/s", r.bytes as f64 / r.median_ms / 1e6),
        _ => String::new(),
    }
}

fn missing_reason(part: &Part, workload: &str, imp: &str) -> String {
    part.missing
        .iter()
        .find(|m| m.imp == imp && (m.workload == workload || m.workload == "*"))
        .map_or("no record".into(), |m| m.reason.clone())
}

/// One target of the issue: description, measured value, and whether it holds
/// (`None` when a needed record is missing).
pub struct Target {
    /// The target, in words.
    pub what: String,
    /// What was measured.
    pub measured: String,
    /// Whether it holds.
    pub met: Option<bool>,
}

fn min_of(records: &[Record], workload: &str, imps: &[&str]) -> Option<(String, f64)> {
    imps.iter()
        .filter_map(|i| find(records, workload, i).map(|r| (i.to_string(), r.median_ms)))
        .min_by(|a, b| a.1.total_cmp(&b.1))
}

/// The fused memory-bound rows that issue 17's floor and 0.5x targets cover.
pub const FUSED_MEMORY: [&str; 16] = [
    "gelu_tanh",
    "gelu_erf",
    "softmax",
    "layernorm",
    "adam",
    "rmsnorm",
    "logsumexp",
    "cross_entropy",
    "polynomial",
    "transpose_add",
    "softmax_cols",
    "col_norms",
    "layernorm_1024x64",
    "layernorm_1024x256",
    "layernorm_1024x1024",
    "layernorm_1024x4096",
];

/// `imps` and their [`REUSE`] runs.
fn both_settings(imps: &[&str]) -> Vec<String> {
    imps.iter().flat_map(|i| [i.to_string(), format!("{i}{REUSE}")]).collect()
}

/// Issue 17's targets, checked on `records`; a peer counts at the faster of
/// its two allocator settings.
pub fn targets(records: &[Record]) -> Vec<Target> {
    let mut out = Vec::new();
    let kiln = |w: &str| find(records, w, "kiln").map(|r| r.median_ms);
    let min_both = |w: &str, imps: &[&str]| {
        let names = both_settings(imps);
        min_of(records, w, &names.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let mut cmp = |what: String, k: Option<f64>, other: Option<(String, f64)>, factor: f64| {
        let (measured, met) = match (k, other) {
            (Some(k), Some((name, o))) => (format!("{:.2}x {name}", k / o), Some(k <= factor * o)),
            _ => ("n/a (missing record)".into(), None),
        };
        out.push(Target { what, measured, met });
    };
    for w in FUSED_MEMORY {
        cmp(
            format!("{w}: kiln <= 0.5x the faster of jax-jit, torch-compile"),
            kiln(w),
            min_both(w, &["jax-jit", "torch-compile"]),
            0.5,
        );
    }
    for w in ["mlp", "sgemm", "sgemm_bf16", "matmul_gelu"] {
        cmp(format!("{w}: kiln <= 1.0x the fastest peer"), kiln(w), min_both(w, &PEERS), 1.0);
    }
    for w in ["matmul_add", "forward_and_norm"] {
        cmp(format!("{w}: kiln <= 0.5x the fastest peer"), kiln(w), min_both(w, &PEERS), 0.5);
    }
    cmp("first_call: kiln <= 0.1x jax-jit".into(), kiln("first_call"), min_both("first_call", &["jax-jit"]), 0.1);
    for w in FUSED_MEMORY {
        let f = floor_fraction(records, w);
        out.push(Target {
            what: format!("{w}: kiln at >= 60% of the copy-bandwidth floor"),
            measured: fmt_pct(f),
            met: f.map(|f| f >= 0.6),
        });
    }
    let t = kiln("tiny");
    out.push(Target {
        what: "tiny: kiln <= 2 us per call".into(),
        measured: t.map_or("n/a (missing record)".into(), fmt_ms),
        met: t.map(|t| t <= 0.002),
    });
    out
}

/// The copy bandwidth measured in the run, in GB/s: the calibration copy's
/// (the `copy` record), and the lowest and highest of the copies run between
/// kiln's runs (each memory-bound floor record's bytes over its time).
pub fn copy_bandwidth(records: &[Record]) -> (Option<f64>, Option<(f64, f64)>) {
    let gbs = |r: &Record| r.bytes as f64 / r.median_ms / 1e6;
    let calib = find(records, "copy", "floor").filter(|r| r.median_ms > 0.0).map(gbs);
    let floors: Vec<f64> = records
        .iter()
        .filter(|r| {
            r.imp == "floor" && r.median_ms > 0.0 && workload(&r.workload).is_some_and(|w| w.class == Class::Memory)
        })
        .map(gbs)
        .collect();
    let range = floors
        .iter()
        .copied()
        .fold(None, |a: Option<(f64, f64)>, x| Some(a.map_or((x, x), |(lo, hi)| (lo.min(x), hi.max(x)))));
    (calib, range)
}

/// The faster of `peer`'s two allocator settings on `workload`: its time
/// over kiln's, and whether the [`REUSE`] run was the faster.
fn best_ratio(records: &[Record], workload: &str, peer: &str) -> Option<(f64, bool)> {
    let plain = find(records, workload, peer).map(|r| r.median_ms);
    let reuse = find(records, workload, &format!("{peer}{REUSE}")).map(|r| r.median_ms);
    let (t, r) = match (plain, reuse) {
        (Some(a), Some(b)) if b < a => (b, true),
        (Some(a), _) => (a, false),
        (None, Some(b)) => (b, true),
        (None, None) => return None,
    };
    let k = find(records, workload, "kiln")?.median_ms;
    Some((t / k, r))
}

/// The report: a summary table of ratios to kiln, one table per workload
/// (each impl's median, p10, p90, rate, ratio to kiln; kiln's fraction of the
/// floor), the targets, missing implementations and notes.
pub fn markdown(part: &Part) -> String {
    let recs = &part.records;
    let mut s = String::new();
    let _ = writeln!(s, "# kiln CPU benchmark\n");
    for h in &part.header {
        let _ = writeln!(s, "- {h}");
    }
    let (calib, range) = copy_bandwidth(recs);
    let mut bw =
        format!("- copy bandwidth: {}", calib.map_or("n/a".into(), |b| format!("{b:.1} GB/s (calibration copy)")));
    if let Some((lo, hi)) = range {
        let _ = write!(bw, ", {lo:.1}-{hi:.1} GB/s in the copies run right after kiln's runs");
    }
    let _ = writeln!(s, "{bw}\n");
    let _ = writeln!(
        s,
        "Produced by `bash scripts/bench.sh`. Times are the median of timed runs after warm-up \
         (p10 and p90 beside it). \"time / kiln\" is the impl's median over kiln's: above 1.00x kiln is faster. \
         \"kiln / floor\" is the floor's time over kiln's (100% = at the floor). \
         Peers named `...{REUSE}` ran with glibc set to reuse freed large blocks (bench/README.md); \
         the summary shows each peer at the faster of its two settings, marked `r` where that was `{REUSE}`.\n"
    );
    // Summary.
    let present: Vec<&str> = IMPLS
        .iter()
        .copied()
        .filter(|i| *i != "floor" && *i != "kiln" && !i.ends_with(REUSE))
        .filter(|i| recs.iter().any(|r| r.imp == *i || r.imp == format!("{i}{REUSE}")))
        .collect();
    let _ = write!(s, "## Summary (time / kiln)\n\n| workload | kiln |");
    for i in &present {
        let _ = write!(s, " {i} |");
    }
    let _ = write!(s, " kiln / floor |\n|---|---|");
    for _ in &present {
        s.push_str("---|");
    }
    s.push_str("---|\n");
    for w in WORKLOADS.iter().filter(|w| w.name != "copy" && recs.iter().any(|r| r.workload == w.name)) {
        let k = find(recs, w.name, "kiln").map_or("n/a".into(), |r| fmt_ms(r.median_ms));
        let _ = write!(s, "| {} | {k} |", w.name);
        for i in &present {
            let has = find(recs, w.name, i).is_some() || find(recs, w.name, &format!("{i}{REUSE}")).is_some();
            let cell = match best_ratio(recs, w.name, i) {
                Some((x, true)) => format!("{x:.2}x r"),
                Some((x, false)) => format!("{x:.2}x"),
                None if has => "n/a".into(),
                None => "-".into(),
            };
            let _ = write!(s, " {cell} |");
        }
        let _ = writeln!(s, " {} |", fmt_pct(floor_fraction(recs, w.name)));
    }
    // One table per workload.
    s.push_str("\n## Workloads\n");
    for w in WORKLOADS.iter().filter(|w| recs.iter().any(|r| r.workload == w.name)) {
        let _ = writeln!(s, "\n### {}\n\n{}.", w.name, w.about);
        if let Some(r) = recs.iter().find(|r| r.workload == w.name) {
            let _ = writeln!(s, "Bytes moved at least: {} MB; flops: {}.", r.bytes as f64 / 1e6, r.flops);
        }
        s.push_str("\n| impl | median | p10 | p90 | rate | time / kiln |\n|---|---|---|---|---|---|\n");
        let mut rows: Vec<&Record> = recs.iter().filter(|r| r.workload == w.name).collect();
        rows.sort_by_key(|r| IMPLS.iter().position(|i| *i == r.imp).unwrap_or(IMPLS.len()));
        for r in rows {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} |",
                r.imp,
                fmt_ms(r.median_ms),
                fmt_ms(r.p10_ms),
                fmt_ms(r.p90_ms),
                rate(w, r),
                fmt_ratio(ratio_to_kiln(recs, w.name, &r.imp))
            );
        }
        for i in w.impls.iter().filter(|i| find(recs, w.name, i).is_none()) {
            let _ = writeln!(s, "| {i} | missing: {} | | | | |", missing_reason(part, w.name, i));
        }
        match (w.class, floor_fraction(recs, w.name)) {
            (Class::None, _) => {}
            (_, Some(f)) => {
                let what = if w.class == Class::Memory { "copy-bandwidth" } else { "matrix-product" };
                let _ = writeln!(s, "\nkiln runs at {} of the {what} floor.", fmt_pct(Some(f)));
            }
            (_, None) => s.push_str("\nkiln's fraction of the floor: n/a (missing kiln or floor record).\n"),
        }
    }
    // Targets.
    s.push_str("\n## Targets (issue 17)\n\n| target | measured | met |\n|---|---|---|\n");
    for t in targets(recs) {
        let met = match t.met {
            Some(true) => "yes",
            Some(false) => "no",
            None => "n/a",
        };
        let _ = writeln!(s, "| {} | {} | {met} |", t.what, t.measured);
    }
    // Missing.
    s.push_str("\n## Missing\n\n");
    if part.missing.is_empty() {
        s.push_str("Every implementation ran every workload it was expected to.\n");
    } else {
        let mut by: BTreeMap<(String, String), String> = BTreeMap::new();
        for m in &part.missing {
            by.insert((m.imp.clone(), m.workload.clone()), m.reason.clone());
        }
        for ((imp, w), reason) in by {
            let w = if w == "*" { "all workloads".to_string() } else { w };
            let _ = writeln!(s, "- {imp} ({w}): {reason}");
        }
    }
    if !part.notes.is_empty() {
        s.push_str("\n## Notes\n\n");
        for n in &part.notes {
            let _ = writeln!(s, "- {n}");
        }
    }
    s
}

/// Reads parts written by the benchmark processes and merges them.
pub fn read_parts(paths: &[impl AsRef<Path>]) -> Result<Part, String> {
    let mut all = Part::default();
    for p in paths {
        let p = p.as_ref();
        let text = std::fs::read_to_string(p).map_err(|e| format!("reading {}: {e}", p.display()))?;
        let part: Part = serde_json::from_str(&text).map_err(|e| format!("parsing {}: {e}", p.display()))?;
        all.extend(part);
    }
    Ok(all)
}

/// Keeps one record per workload and implementation: where several rounds
/// of the benchmark measured the same pair (`scripts/bench.sh` runs kiln
/// and every peer in turn, twice, so that a slow phase of a shared machine
/// does not fall on one of them alone), the round with the lower median.
/// Returns the most rounds any pair was measured in.
pub fn best_of_rounds(records: &mut Vec<Record>) -> usize {
    let mut kept: Vec<Record> = Vec::with_capacity(records.len());
    let mut rounds: Vec<usize> = Vec::with_capacity(records.len());
    for r in records.drain(..) {
        match kept.iter().position(|k| k.workload == r.workload && k.imp == r.imp) {
            Some(i) => {
                rounds[i] += 1;
                if r.median_ms < kept[i].median_ms {
                    kept[i] = r;
                }
            }
            None => {
                kept.push(r);
                rounds.push(1);
            }
        }
    }
    *records = kept;
    rounds.into_iter().max().unwrap_or(0)
}

/// Keeps the best round of each record ([`best_of_rounds`]), adds the
/// matmul floors, then writes `cpu.json`, `cpu.md` and `missing.json` into
/// `dir`. Returns the markdown.
pub fn write_outputs(dir: &Path, mut part: Part) -> Result<String, String> {
    let rounds = best_of_rounds(&mut part.records);
    // A pair one round skipped (the fresh-process rows run in the first
    // round only) is not missing when another round measured it.
    let records = &part.records;
    part.missing.retain(|m| !records.iter().any(|r| r.workload == m.workload && r.imp == m.imp));
    if rounds > 1 {
        part.notes.push(format!(
            "kiln and every peer were measured in {rounds} rounds, taken in turn; each row keeps its faster round's median"
        ));
    }
    if let Some(rate) = add_matmul_floors(&mut part.records) {
        part.notes.push(format!("matrix-product floor: best sgemm rate {:.1} GFLOP/s", rate / 1e6));
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let json = serde_json::to_string_pretty(&part.records).map_err(|e| e.to_string())?;
    std::fs::write(dir.join("cpu.json"), json + "\n").map_err(|e| format!("writing cpu.json: {e}"))?;
    let missing = serde_json::to_string_pretty(&part.missing).map_err(|e| e.to_string())?;
    std::fs::write(dir.join("missing.json"), missing + "\n").map_err(|e| format!("writing missing.json: {e}"))?;
    let md = markdown(&part);
    std::fs::write(dir.join("cpu.md"), &md).map_err(|e| format!("writing cpu.md: {e}"))?;
    Ok(md)
}
