//! Reductions and arg-reductions on the GPU: one block per output element
//! (blocks stride over the outputs), its threads fold strided parts of the
//! reduced elements (8 positions per iteration), then combine
//! through warp shuffles and shared memory. Kept and reduced dimensions
//! are addressed through each operand's strides (any layout), each set
//! collapsed where contiguous. Accumulation follows the CPU's rules
//! (`backend::cpu::reduce::acc_dtype`): `f16`/`bf16` in `f32`, statistics
//! of integers in `f64`, integer sums and products wrap; `max`/`min`
//! propagate NaN; `logsumexp`/`sumexp` shift by the maximum and `var`
//! subtracts the mean (two passes over the block's elements).
//!
//! [`fold`] is the general kernel: a producer group evaluated at each
//! position, several reductions of its outputs in one pass, then a
//! [`Consumer`]: per-row steps run by one thread and a step over the row
//! run by all, reading the row's results from shared memory (the row
//! itself, just read, comes from L2).
//!
//! When the reduced positions are one dimension that every operand reads
//! with stride 1 from a 4-element boundary (or with stride 0), each pass
//! reads them as 4-element vectors (128-bit for `f32`), two per thread and
//! iteration, with a scalar loop for the last `n % 4`; such a kernel is
//! compiled to fit two blocks on an SM (`__launch_bounds__`). On an H200 this
//! took softmax over 16384^2 from 0.88 to 0.63 ms and layernorm from 0.73
//! to 0.58 ms (the copy floor: 0.53 ms).
//!
//! A row is read two or three times (a statistic's passes, then the space
//! step), the later reads from L2. The space step's read of an operand that
//! each row reads its own part of is its last, so it is marked evict-first
//! (`ld.global.cs`): L2 keeps what the rows still being folded will read
//! again. Operands shared by every row (layernorm's scale and shift) load
//! plainly; the same mark on them, or on the outputs' stores, was slower.
//! And a `logsumexp`/`sumexp` sum of `f32` rows adds `2^((x - max) *
//! log2(e))` by the special-function unit (`ex2.approx`), not CUDA's
//! `expf`: each term is within 2 ulp of `exp` of the rounded product, whose
//! own rounding moves the term by at most `|x - max| * 2^-24` (relative);
//! measured on rows of 16384 normal values (scales 1 to 30), it moved the
//! sum by under `2^-24`, below the sum's own rounding.

use std::fmt::Write;

use crate::array::Data;
use crate::backend::cuda::cmath;
use crate::backend::cuda::driver::{kernel_of, variant, Arg, Gpu, Memo};
use crate::backend::cuda::source::{
    float_lit, line, lit_of, load, offset_code, ops_code, register_type, storage_type, store, PRELUDE, V4,
};
use crate::backend::cuda::{dev, fresh};
use crate::backend::simd_math::Func;
use crate::dtype::DType;
use crate::error::Result;
use crate::layout::{collapse, contiguous_strides};
use crate::passes::fuse::FusedGroup;
use crate::primitive::{ArgReduceOp, ReduceOp};

/// A helper of the fold kernels: `ex2a`, `2^x` by the special-function
/// unit (the shifted exponentials of a statistic's sum, see the module
/// docs).
const FOLD_PRELUDE: &str = r#"__device__ __forceinline__ float ex2a(float x) { float y; asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x)); return y; }
"#;
/// A helper of the vector kernels: `ldcs`, a 4-element load marked
/// evict-first (`ld.global.cs`) for a vector that no later pass reads, by
/// element type (`u8` and `i64` vectors load plainly).
const LDCS: &str = r#"template <typename T> __device__ __forceinline__ V4<T> ldcs(const V4<T>* p) { return *p; }
__device__ __forceinline__ V4<float> ldcs(const V4<float>* p) { V4<float> v; asm("ld.global.cs.v4.f32 {%0,%1,%2,%3}, [%4];" : "=f"(v.v[0]), "=f"(v.v[1]), "=f"(v.v[2]), "=f"(v.v[3]) : "l"(p)); return v; }
__device__ __forceinline__ V4<int> ldcs(const V4<int>* p) { V4<int> v; asm("ld.global.cs.v4.s32 {%0,%1,%2,%3}, [%4];" : "=r"(v.v[0]), "=r"(v.v[1]), "=r"(v.v[2]), "=r"(v.v[3]) : "l"(p)); return v; }
__device__ __forceinline__ V4<u32> ldcs(const V4<u32>* p) { V4<u32> v; asm("ld.global.cs.v4.u32 {%0,%1,%2,%3}, [%4];" : "=r"(v.v[0]), "=r"(v.v[1]), "=r"(v.v[2]), "=r"(v.v[3]) : "l"(p)); return v; }
__device__ __forceinline__ V4<u16> ldcs(const V4<u16>* p) { V4<u16> v; asm("ld.global.cs.v4.u16 {%0,%1,%2,%3}, [%4];" : "=h"(v.v[0]), "=h"(v.v[1]), "=h"(v.v[2]), "=h"(v.v[3]) : "l"(p)); return v; }
__device__ __forceinline__ V4<double> ldcs(const V4<double>* p) { V4<double> v; asm("ld.global.cs.v2.f64 {%0,%1}, [%2];" : "=d"(v.v[0]), "=d"(v.v[1]) : "l"(p)); asm("ld.global.cs.v2.f64 {%0,%1}, [%2+16];" : "=d"(v.v[2]), "=d"(v.v[3]) : "l"(p)); return v; }
"#;

/// Most threads per block.
const THREADS: usize = 512;
/// Most blocks launched.
const MAX_BLOCKS: usize = 65_535;

/// Kept and reduced dimensions of `x` for reducing `axes`: (kept dims,
/// their strides in `x`), (reduced dims, their strides), each collapsed.
type Split = (Vec<usize>, Vec<isize>, Vec<usize>, Vec<isize>);

fn split(x: &Data, axes: &[usize]) -> Split {
    let l = x.layout();
    let (mut kd, mut ks, mut rd, mut rs) = (vec![], vec![], vec![], vec![]);
    for (i, (&d, &s)) in l.shape.iter().zip(&l.strides).enumerate() {
        if axes.contains(&i) {
            rd.push(d);
            rs.push(s);
        } else {
            kd.push(d);
            ks.push(s);
        }
    }
    let out = contiguous_strides(&kd);
    let (kd, mut kst) = collapse(&kd, &[&ks, &out]);
    let (rd, mut rst) = collapse(&rd, &[&rs]);
    (kd, kst.swap_remove(0), rd, rst.swap_remove(0))
}

fn params(kr: usize, rr: usize) -> Vec<String> {
    let mut p = vec![];
    for (pre, r) in [("k", kr), ("r", rr)] {
        for d in 0..r {
            p.push(format!("long long {pre}d{d}"));
        }
        for d in 0..r {
            p.push(format!("long long {pre}s{d}"));
        }
    }
    p
}

fn dims_args(args: &mut Vec<Arg>, d: &[usize], s: &[isize]) {
    args.extend(d.iter().map(|&v| Arg::I64(v as i64)));
    args.extend(s.iter().map(|&v| Arg::I64(v as i64)));
}

/// The C accumulator type of `op` over `dt` and the identity it starts from.
fn acc(op: ReduceOp, dt: DType) -> (&'static str, String) {
    let stat = matches!(op, ReduceOp::Mean | ReduceOp::LogSumExp | ReduceOp::SumExp | ReduceOp::Var { .. });
    let t = match dt {
        _ if matches!(op, ReduceOp::All | ReduceOp::Any) => "bool",
        DType::F64 => "double",
        DType::F32 | DType::F16 | DType::BF16 => "float",
        _ if stat => "double",
        DType::Bool if matches!(op, ReduceOp::Max | ReduceOp::Min) => "bool",
        DType::U8 | DType::U32 if matches!(op, ReduceOp::Max | ReduceOp::Min) => "u32",
        _ if matches!(op, ReduceOp::Max | ReduceOp::Min) => storage_type(dt),
        _ => "u64",
    };
    let float = t == "float" || t == "double";
    let fl = |v: f64| float_lit(if t == "double" { DType::F64 } else { DType::F32 }, v);
    let init = match op {
        ReduceOp::Sum | ReduceOp::Mean | ReduceOp::Var { .. } => "0".into(),
        ReduceOp::Prod => "1".into(),
        ReduceOp::All => "true".into(),
        ReduceOp::Any => "false".into(),
        ReduceOp::Max | ReduceOp::LogSumExp | ReduceOp::SumExp if float => fl(f64::NEG_INFINITY),
        ReduceOp::Min if float => fl(f64::INFINITY),
        ReduceOp::Max => match dt {
            DType::Bool => "false".into(),
            DType::I32 => "(-2147483647 - 1)".into(),
            DType::I64 => "(-9223372036854775807ll - 1)".into(),
            _ => "0".into(),
        },
        ReduceOp::Min => match dt {
            DType::Bool => "true".into(),
            DType::I32 => "2147483647".into(),
            DType::I64 => "9223372036854775807ll".into(),
            DType::U8 => "255".into(),
            _ => "4294967295u".into(),
        },
        ReduceOp::LogSumExp | ReduceOp::SumExp => unreachable!("a statistic accumulates in a float"),
    };
    (t, init)
}

/// `a = fold(a, v)` for the first pass of `op` (`max` for the two-pass
/// statistics' first pass, the sum for `var`'s).
fn fold_step(op: ReduceOp, t: &str) -> &'static str {
    let float = t == "float" || t == "double";
    match op {
        ReduceOp::Sum | ReduceOp::Mean | ReduceOp::Var { .. } => "a = a + v;",
        ReduceOp::Prod => "a = a * v;",
        ReduceOp::All => "a = a && v;",
        ReduceOp::Any => "a = a || v;",
        ReduceOp::Max | ReduceOp::LogSumExp | ReduceOp::SumExp if float => "a = (v > a || v != v) ? v : a;",
        ReduceOp::Min if float => "a = (v < a || v != v) ? v : a;",
        ReduceOp::Max if t == "bool" => "a = a || v;",
        ReduceOp::Min if t == "bool" => "a = a && v;",
        ReduceOp::Max => "a = v > a ? v : a;",
        ReduceOp::Min => "a = v < a ? v : a;",
        ReduceOp::LogSumExp | ReduceOp::SumExp => unreachable!("statistics fold floats"),
    }
}

/// A block-wide combination of each thread's `a` with `fold` (whose
/// identity is `id`), leaving the result in `a` of every thread (through
/// `sh`, `32` slots of `t`).
fn block_combine(s: &mut String, t: &str, fold: &str, id: &str, sh: &str) {
    let shfl_t = if t == "bool" { "int" } else { t };
    line(s, "for (int o = 16; o > 0; o /= 2) {");
    line(s, format!("  {t} v = ({t})__shfl_down_sync(0xffffffffu, ({shfl_t})a, o);"));
    line(s, format!("  if ((int)(threadIdx.x & 31) + o < 32) {{ {fold} }}"));
    line(s, "}");
    line(s, "__syncthreads();");
    line(s, format!("if ((threadIdx.x & 31) == 0) {sh}[threadIdx.x >> 5] = a;"));
    line(s, "__syncthreads();");
    line(s, "if (threadIdx.x < 32) {");
    line(s, format!("  a = threadIdx.x < (blockDim.x + 31) / 32 ? {sh}[threadIdx.x] : ({t})({id});"));
    line(s, "  for (int o = 16; o > 0; o /= 2) {");
    line(s, format!("    {t} v = ({t})__shfl_down_sync(0xffffffffu, ({shfl_t})a, o);"));
    line(s, format!("    {fold}"));
    line(s, "  }");
    line(s, format!("  if (threadIdx.x == 0) {sh}[0] = a;"));
    line(s, "}");
    line(s, "__syncthreads();");
    line(s, format!("a = {sh}[0];"));
    line(s, "__syncthreads();");
}

/// Where an input of a [`Consumer`] step comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Src {
    /// The `j`-th reduction's result for the row (an output kept as
    /// size-1 axes over the reduced ones).
    Reduced(usize),
    /// Output `q` of row step `s` (an earlier one).
    Row(usize, usize),
    /// The `k`-th of the consumer's own inputs, broadcast to the space.
    Input(usize),
}

/// An elementwise group of a [`Consumer`] and where its inputs come from.
pub struct Step<'a> {
    /// The group.
    pub group: &'a FusedGroup,
    /// One source per group input.
    pub inputs: &'a [Src],
}

/// The elementwise steps that [`fold`] runs right after its reductions,
/// in the same kernel: first `rows`, groups over one value per row (the
/// reduced axes kept as size 1: layernorm's `rsqrt(var + eps)`), computed
/// once per row; then `space`, a group over the row's positions that reads
/// the row's values (softmax's `exp(x - max) / sum`, layernorm's scale and
/// shift). The row's values reach the space step through shared memory;
/// the row itself, just read by the reductions, comes from L2.
pub struct Consumer<'a> {
    /// Per-row steps, in order; each may read the earlier ones' outputs.
    pub rows: Vec<Step<'a>>,
    /// The step over the space (outputs of the space's shape), if any.
    pub space: Option<Step<'a>>,
}

impl Consumer<'_> {
    /// The number of the consumer's own inputs (one past the largest
    /// [`Src::Input`]).
    fn input_count(&self) -> usize {
        let steps = self.rows.iter().chain(&self.space);
        let k = steps.flat_map(|st| st.inputs).filter_map(|s| if let Src::Input(k) = s { Some(*k + 1) } else { None });
        k.max().unwrap_or(0)
    }

    /// The dtype of each of the consumer's own inputs.
    fn input_dtypes(&self) -> Vec<DType> {
        let mut d = vec![DType::F32; self.input_count()];
        for st in self.rows.iter().chain(&self.space) {
            for (src, &dt) in st.inputs.iter().zip(&st.group.inputs) {
                if let Src::Input(k) = src {
                    d[*k] = dt;
                }
            }
        }
        d
    }
}

/// Reduced positions a thread folds per loop iteration (8 measured faster
/// than 4 and 16 for fused layernorm rows on an H200: bench/README).
const UNROLL: usize = 8;
/// 4-element vectors a thread reads per operand and loop iteration in a
/// vector kernel (one contiguous, aligned reduced dimension).
const VECTORS: usize = 2;
/// Blocks of [`THREADS`] a vector kernel is compiled to fit on one SM at
/// once (its `__launch_bounds__`: at most 64 registers a thread). Left to
/// itself NVRTC gave layernorm's vector kernel 70 registers, one block per
/// SM, which made it slower than the scalar kernel (bench/README).
const MIN_BLOCKS: usize = 2;
/// A block's loop over the reduced positions `r`, running `body` at
/// [`UNROLL`] positions per iteration, each in its own scope (so a thread
/// has several loads in flight while it folds in order).
fn unrolled(s: &mut String, body: &str) {
    line(s, format!("for (ix r0 = threadIdx.x; r0 < (ix)nred; r0 += {UNROLL} * (ix)blockDim.x) {{"));
    for u in 0..UNROLL {
        line(s, format!("{{ const ix r = r0 + {u} * (ix)blockDim.x; if (r < (ix)nred) {{"));
        s.push_str(body);
        line(s, "}}");
    }
    line(s, "}");
}

/// The kernel of reductions of a producer: group `g`'s outputs computed
/// at each position of the space and folded, `reductions[j] = (op, output
/// index)` into output `j` of dtype `outs[j]`, then the `consumer`'s
/// steps. Kept dimensions (rank `kr`) and reduced ones (rank `rr`) are
/// addressed per operand through its own strides; operands with a C
/// literal in `lits` (producer inputs, then the consumer's) are inlined.
/// A plain reduction is the group that passes its input through. With
/// `vec` the passes read 4-element vectors (see the module docs; bit `k`
/// of the mask set: operand `k` has stride 0 along the row, read once).
#[allow(clippy::too_many_arguments)]
fn fold_source(
    g: &FusedGroup,
    reductions: &[(ReduceOp, usize)],
    outs: &[DType],
    consumer: Option<&Consumer>,
    lits: &[Option<&str>],
    kr: usize,
    rr: usize,
    wide: bool,
    vec: Option<u64>,
    once: u64,
) -> String {
    let nin = g.inputs.len();
    // Operands addressed through strides: the producer's inputs, then the
    // consumer's inputs, then the space step's outputs.
    let cin: Vec<DType> = consumer.map(|c| c.input_dtypes()).unwrap_or_default();
    let cout: Vec<DType> = match consumer.and_then(|c| c.space.as_ref()) {
        Some(st) => st.group.outputs.iter().map(|&r| st.group.reg_dtype(r)).collect(),
        None => vec![],
    };
    let rows: &[Step] = consumer.map_or(&[], |c| &c.rows);
    let nops = nin + cin.len() + cout.len();
    let mut s = String::from(PRELUDE);
    s.push_str(FOLD_PRELUDE);
    if vec.is_some() {
        s.push_str(V4);
        s.push_str(LDCS);
    }
    let _ = writeln!(s, "typedef {} ix;", if wide { "long long" } else { "int" });
    // Operand `k` is read once per row in a vector kernel (stride 0 along it).
    let bcast = |k: usize| vec.is_some_and(|m| m >> k & 1 == 1);
    let mut p = vec![];
    for (k, dt) in g.inputs.iter().enumerate().filter(|(k, _)| lit_of(lits, *k).is_none()) {
        p.push(format!("const {}* __restrict__ p{k}", storage_type(*dt)));
    }
    for (j, dt) in outs.iter().enumerate() {
        p.push(format!("{}* __restrict__ y{j}", storage_type(*dt)));
    }
    for (m, dt) in cin.iter().enumerate().filter(|(m, _)| lit_of(lits, nin + *m).is_none()) {
        p.push(format!("const {}* __restrict__ p{}", storage_type(*dt), nin + m));
    }
    for (st, step) in rows.iter().enumerate() {
        for (q, &r) in step.group.outputs.iter().enumerate() {
            p.push(format!("{}* __restrict__ w{st}_{q}", storage_type(step.group.reg_dtype(r))));
        }
    }
    for (q, dt) in cout.iter().enumerate() {
        p.push(format!("{}* __restrict__ p{}", storage_type(*dt), nin + cin.len() + q));
    }
    p.extend(["long long nout".to_string(), "long long nred".to_string()]);
    for (pre, r) in [("k", kr), ("r", rr)] {
        for d in 0..r {
            p.push(format!("long long {pre}d{d}"));
        }
        for k in 0..nops {
            for d in 0..r {
                p.push(format!("long long {pre}s{k}_{d}"));
            }
        }
    }
    let bounds = match vec {
        Some(_) => format!("__launch_bounds__({THREADS}, {MIN_BLOCKS}) "),
        None => String::new(),
    };
    let _ = writeln!(s, "extern \"C\" __global__ void {bounds}k({}) {{", p.join(", "));
    let accs: Vec<(&str, String)> = reductions.iter().map(|&(op, o)| acc(op, g.reg_dtype(g.outputs[o]))).collect();
    for (j, (t, init)) in accs.iter().enumerate() {
        line(&mut s, format!("__shared__ {t} sh{j}[32];"));
        line(&mut s, format!("__shared__ {} rv{j};", storage_type(outs[j])));
        line(&mut s, format!("const {t} a0_{j} = {init};"));
    }
    for (st, step) in rows.iter().enumerate() {
        for (q, &r) in step.group.outputs.iter().enumerate() {
            line(&mut s, format!("__shared__ {} rw{st}_{q};", storage_type(step.group.reg_dtype(r))));
        }
    }
    line(&mut s, "for (ix o = blockIdx.x; o < (ix)nout; o += gridDim.x) {");
    // Each operand's offset of the kept position.
    let decompose = |s: &mut String, v: &str, i: &str, pre: &str, rank: usize| {
        for k in 0..nops {
            line(s, format!("ix {v}{k} = 0;"));
        }
        if rank == 0 {
            return;
        }
        line(s, format!("{{ ix rest = {i};"));
        for d in (0..rank).rev() {
            let c = if d == 0 { "rest".to_string() } else { format!("(rest % (ix){pre}d{d})") };
            for k in 0..nops {
                line(s, format!("{v}{k} += {c} * (ix){pre}s{k}_{d};"));
            }
            if d > 0 {
                line(s, format!("rest /= (ix){pre}d{d};"));
            }
        }
        line(s, "}");
    };
    decompose(&mut s, "base", "o", "k", kr);
    let mut next = 0usize;
    // The producer's values at reduced position `r`, or (`Some(lane)`) at
    // that lane of the vectors `x{k}` just read.
    let produce = |s: &mut String, next: &mut usize, lane: Option<usize>| {
        if lane.is_none() {
            decompose(s, "off", "r", "r", rr);
        }
        for (k, dt) in g.inputs.iter().enumerate() {
            let v = match (lit_of(lits, k), lane) {
                (Some(l), _) => l.to_string(),
                (None, None) => load(*dt, &format!("p{k}[base{k} + off{k}]")),
                (None, Some(_)) if bcast(k) => load(*dt, &format!("p{k}[base{k}]")),
                (None, Some(u)) => load(*dt, &format!("x{k}.v[{u}]")),
            };
            line(s, format!("{} r{k} = {v};", register_type(*dt)));
        }
        ops_code(s, g, "r", next);
    };
    // A pass over the row's positions: the producer's values, then `folds`.
    let pass = |s: &mut String, next: &mut usize, folds: &str| {
        if vec.is_none() {
            let mut b = String::new();
            produce(&mut b, next, None);
            b.push_str(folds);
            unrolled(s, &b);
            return;
        }
        line(s, "{ const ix nv = (ix)nred / 4;");
        line(s, format!("for (ix v0 = threadIdx.x; v0 < nv; v0 += {VECTORS} * (ix)blockDim.x) {{"));
        for u in 0..VECTORS {
            line(s, format!("{{ const ix v = v0 + {u} * (ix)blockDim.x; if (v < nv) {{"));
            for (k, dt) in g.inputs.iter().enumerate().filter(|&(k, _)| lit_of(lits, k).is_none() && !bcast(k)) {
                let t = storage_type(*dt);
                line(s, format!("const V4<{t}> x{k} = ((const V4<{t}>*)(p{k} + base{k}))[v];"));
            }
            for lane in 0..4 {
                line(s, "{");
                produce(s, next, Some(lane));
                s.push_str(folds);
                line(s, "}");
            }
            line(s, "}}");
        }
        line(s, "}");
        // The last nred % 4 positions.
        line(s, "for (ix r = nv * 4 + threadIdx.x; r < (ix)nred; r += (ix)blockDim.x) {");
        produce(s, next, None);
        s.push_str(folds);
        line(s, "}");
        line(s, "}");
    };
    // First pass: every reduction (the maximum for logsumexp/sumexp, the
    // sum for var).
    for (j, (t, _)) in accs.iter().enumerate() {
        line(&mut s, format!("{t} a{j} = a0_{j};"));
    }
    // A first pass equal to an earlier one's (softmax's maximum and its
    // sum's shift) is folded once.
    let key = |j: usize| {
        let (op, o) = reductions[j];
        (fold_step(op, accs[j].0), &accs[j], o)
    };
    let same: Vec<usize> = (0..reductions.len()).map(|j| (0..j).find(|&i| key(i) == key(j)).unwrap_or(j)).collect();
    let mut b = String::new();
    for (j, &(op, o)) in reductions.iter().enumerate().filter(|&(j, _)| same[j] == j) {
        let t = accs[j].0;
        line(&mut b, format!("{{ {t} a = a{j}; {t} v = ({t})r{}; {} a{j} = a; }}", g.outputs[o], fold_step(op, t)));
    }
    pass(&mut s, &mut next, &b);
    for (j, &(op, _)) in reductions.iter().enumerate() {
        if same[j] != j {
            line(&mut s, format!("a{j} = a{};", same[j]));
            continue;
        }
        let t = accs[j].0;
        line(&mut s, format!("{{ {t} a = a{j};"));
        block_combine(&mut s, t, fold_step(op, t), &format!("a0_{j}"), &format!("sh{j}"));
        line(&mut s, format!("a{j} = a; }}"));
    }
    let two_pass = |op: ReduceOp| matches!(op, ReduceOp::LogSumExp | ReduceOp::SumExp | ReduceOp::Var { .. });
    if reductions.iter().any(|&(op, _)| two_pass(op)) {
        // Second pass: the sum of exp(x - max), or of squared deviations.
        for (j, &(op, _)) in reductions.iter().enumerate() {
            if two_pass(op) {
                let t = accs[j].0;
                line(&mut s, format!("const {t} first{j} = a{j};"));
                line(&mut s, format!("const {t} mean{j} = first{j} / (({t})nred);"));
                line(&mut s, format!("a{j} = 0;"));
            }
        }
        let mut b = String::new();
        for (j, &(op, o)) in reductions.iter().enumerate() {
            if !two_pass(op) {
                continue;
            }
            let t = accs[j].0;
            line(&mut b, format!("{{ {t} v = ({t})r{};", g.outputs[o]));
            match op {
                ReduceOp::Var { .. } => line(&mut b, format!("a{j} = a{j} + (v - mean{j}) * (v - mean{j});")),
                _ if t == "double" => line(&mut b, format!("a{j} = a{j} + exp(v - first{j});")),
                _ => line(
                    &mut b,
                    format!(
                        "a{j} = a{j} + ex2a((v - first{j}) * {});",
                        float_lit(DType::F32, std::f64::consts::LOG2_E)
                    ),
                ),
            }
            line(&mut b, "}");
        }
        pass(&mut s, &mut next, &b);
        for (j, &(op, _)) in reductions.iter().enumerate() {
            if two_pass(op) {
                let t = accs[j].0;
                line(&mut s, format!("{{ {t} a = a{j};"));
                block_combine(&mut s, t, "a = a + v;", "0", &format!("sh{j}"));
                line(&mut s, format!("a{j} = a; }}"));
            }
        }
    }
    // One thread stores the row's results, then runs the row steps.
    line(&mut s, "if (threadIdx.x == 0) {");
    for (j, &(op, _)) in reductions.iter().enumerate() {
        let t = accs[j].0;
        let lit = |v: f64| float_lit(if t == "double" { DType::F64 } else { DType::F32 }, v);
        let (inf, nan) = (lit(f64::INFINITY), lit(f64::NAN));
        let a = format!("a{j}");
        let first = format!("first{j}");
        let result = match op {
            ReduceOp::Mean => format!("{a} / (({t})nred)"),
            ReduceOp::Var { ddof } => format!("{a} / ({t})(nred > {ddof}ll ? nred - {ddof}ll : 0ll)"),
            ReduceOp::SumExp => format!("({first} - {first} == 0) ? {a} : {nan}"),
            ReduceOp::LogSumExp => {
                let log = if t == "double" {
                    format!("log({a})")
                } else {
                    let (stmts, e) = cmath::call(Func::Log, &a, &mut next);
                    s.push_str(&stmts);
                    e
                };
                format!("{first} != {first} ? {first} : {first} == {inf} ? {first} : {first} == -{inf} ? {first} : {first} + {log}")
            }
            _ => a.clone(),
        };
        let st = storage_type(outs[j]);
        line(&mut s, format!("{{ {t} res = {result}; {st} v = {}; y{j}[o] = v; rv{j} = v; }}", narrow(t, outs[j])));
    }
    // A consumer input: a row value, or an operand at `at`.
    let source_of = |src: &Src, dt: DType, at: &str| -> String {
        match *src {
            Src::Reduced(j) => load(dt, &format!("rv{j}")),
            Src::Row(st, q) => load(dt, &format!("rw{st}_{q}")),
            Src::Input(m) => match lit_of(lits, nin + m) {
                Some(l) => l.to_string(),
                None => load(dt, &format!("p{op}[base{op}{at}]", op = nin + m)),
            },
        }
    };
    for (st, step) in rows.iter().enumerate() {
        line(&mut s, "{");
        for (k, src) in step.inputs.iter().enumerate() {
            let dt = step.group.inputs[k];
            line(&mut s, format!("{} c{k} = {};", register_type(dt), source_of(src, dt, "")));
        }
        ops_code(&mut s, step.group, "c", &mut next);
        for (q, &r) in step.group.outputs.iter().enumerate() {
            let v = store(step.group.reg_dtype(r), &format!("c{r}"));
            line(
                &mut s,
                format!("{{ {} v = {v}; w{st}_{q}[o] = v; rw{st}_{q} = v; }}", storage_type(step.group.reg_dtype(r))),
            );
        }
        line(&mut s, "}");
    }
    line(&mut s, "}");
    if let Some(step) = consumer.and_then(|c| c.space.as_ref()).filter(|_| vec.is_some()) {
        // The space step in a vector kernel: VECTORS vectors of 4
        // positions per thread and iteration, all their loads first.
        line(&mut s, "__syncthreads();");
        line(&mut s, "{ const ix nv = (ix)nred / 4;");
        line(&mut s, format!("for (ix v0 = threadIdx.x; v0 < nv; v0 += {VECTORS} * (ix)blockDim.x) {{"));
        // The space step's inputs read as vectors: (input, operand).
        let read: Vec<(usize, usize)> = step
            .inputs
            .iter()
            .enumerate()
            .filter_map(|(k, src)| match *src {
                Src::Input(m) if lit_of(lits, nin + m).is_none() && !bcast(nin + m) => Some((k, nin + m)),
                _ => None,
            })
            .collect();
        for u in 0..VECTORS {
            for &(k, _) in &read {
                line(&mut s, format!("V4<{}> u{u}x{k};", storage_type(step.group.inputs[k])));
            }
        }
        for u in 0..VECTORS {
            line(&mut s, format!("if (v0 + {u} * (ix)blockDim.x < nv) {{"));
            for &(k, op) in &read {
                let t = storage_type(step.group.inputs[k]);
                let at = format!("((const V4<{t}>*)(p{op} + base{op})) + v0 + {u} * (ix)blockDim.x");
                if once >> op & 1 == 1 {
                    line(&mut s, format!("u{u}x{k} = ldcs({at});"));
                } else {
                    line(&mut s, format!("u{u}x{k} = *({at});"));
                }
            }
            line(&mut s, "}");
        }
        for u in 0..VECTORS {
            line(&mut s, format!("{{ const ix v = v0 + {u} * (ix)blockDim.x; if (v < nv) {{"));
            for (q, &r) in step.group.outputs.iter().enumerate() {
                line(&mut s, format!("V4<{}> w{q};", storage_type(step.group.reg_dtype(r))));
            }
            for lane in 0..4 {
                line(&mut s, "{");
                for (k, src) in step.inputs.iter().enumerate() {
                    let dt = step.group.inputs[k];
                    let v = match *src {
                        Src::Input(m) if lit_of(lits, nin + m).is_none() && !bcast(nin + m) => {
                            load(dt, &format!("u{u}x{k}.v[{lane}]"))
                        }
                        _ => source_of(src, dt, ""),
                    };
                    line(&mut s, format!("{} c{k} = {v};", register_type(dt)));
                }
                ops_code(&mut s, step.group, "c", &mut next);
                for (q, &r) in step.group.outputs.iter().enumerate() {
                    line(&mut s, format!("w{q}.v[{lane}] = {};", store(step.group.reg_dtype(r), &format!("c{r}"))));
                }
                line(&mut s, "}");
            }
            for (q, &r) in step.group.outputs.iter().enumerate() {
                let op = nin + cin.len() + q;
                let t = storage_type(step.group.reg_dtype(r));
                line(&mut s, format!("((V4<{t}>*)(p{op} + base{op}))[v] = w{q};"));
            }
            line(&mut s, "}}");
        }
        line(&mut s, "}");
        // The last nred % 4 positions.
        line(&mut s, "for (ix r = nv * 4 + threadIdx.x; r < (ix)nred; r += (ix)blockDim.x) {");
        decompose(&mut s, "off", "r", "r", rr);
        for (k, src) in step.inputs.iter().enumerate() {
            let dt = step.group.inputs[k];
            let at = match src {
                Src::Input(m) => format!(" + off{}", nin + m),
                _ => String::new(),
            };
            line(&mut s, format!("{} c{k} = {};", register_type(dt), source_of(src, dt, &at)));
        }
        ops_code(&mut s, step.group, "c", &mut next);
        for (q, &r) in step.group.outputs.iter().enumerate() {
            let op = nin + cin.len() + q;
            line(&mut s, format!("p{op}[base{op} + off{op}] = {};", store(step.group.reg_dtype(r), &format!("c{r}"))));
        }
        line(&mut s, "}");
        line(&mut s, "}");
    } else if let Some(step) = consumer.and_then(|c| c.space.as_ref()) {
        // Every thread reads the row's values, then runs the space step
        // over its positions of the row, UNROLL at a time: first all their
        // loads, then their arithmetic and stores (a division's slow path
        // is a call, which would otherwise keep each load behind the last
        // position's store).
        line(&mut s, "__syncthreads();");
        line(&mut s, format!("for (ix r0 = threadIdx.x; r0 < (ix)nred; r0 += {UNROLL} * (ix)blockDim.x) {{"));
        for u in 0..UNROLL {
            for (k, &dt) in step.group.inputs.iter().enumerate() {
                line(&mut s, format!("{} u{u}c{k}{{}};", register_type(dt)));
            }
        }
        let at = |s: &mut String, u: usize| {
            line(s, format!("{{ const ix r = r0 + {u} * (ix)blockDim.x; if (r < (ix)nred) {{"));
            decompose(s, "off", "r", "r", rr);
        };
        for u in 0..UNROLL {
            at(&mut s, u);
            for (k, src) in step.inputs.iter().enumerate() {
                let dt = step.group.inputs[k];
                let at = match src {
                    Src::Input(m) => format!(" + off{}", nin + m),
                    _ => String::new(),
                };
                line(&mut s, format!("u{u}c{k} = {};", source_of(src, dt, &at)));
            }
            line(&mut s, "}}");
        }
        for u in 0..UNROLL {
            at(&mut s, u);
            let pre = format!("u{u}c");
            ops_code(&mut s, step.group, &pre, &mut next);
            for (q, &r) in step.group.outputs.iter().enumerate() {
                let op = nin + cin.len() + q;
                let v = store(step.group.reg_dtype(r), &format!("{pre}{r}"));
                line(&mut s, format!("p{op}[base{op} + off{op}] = {v};"));
            }
            line(&mut s, "}}");
        }
        line(&mut s, "}");
    }
    line(&mut s, "__syncthreads();");
    line(&mut s, "}");
    s.push_str("}\n");
    s
}

/// The stored `out` value of accumulator `res` of C type `t`.
fn narrow(t: &str, out: DType) -> String {
    match out {
        DType::Bool => "(u8)(res != 0)".into(),
        DType::F16 => "f2h((float)res)".into(),
        DType::BF16 => "f2b((float)res)".into(),
        DType::F32 if t == "double" => "(float)res".into(),
        d => format!("({})res", storage_type(d)),
    }
}

/// Blocks and threads of a reduction over rows of `nred` positions.
fn launch_size(nout: usize, nred: usize) -> (u32, u32) {
    let threads = nred.div_ceil(UNROLL).next_power_of_two().clamp(32, THREADS);
    (nout.min(MAX_BLOCKS) as u32, threads as u32)
}

fn is_wide(nout: usize, nred: usize, x: &Data) -> bool {
    let l = x.layout();
    let reach: u128 =
        l.shape.iter().zip(&l.strides).map(|(&d, &s)| (d.max(1) as u128 - 1) * s.unsigned_abs() as u128).sum();
    let lim = i32::MAX as u128 / 2;
    nout as u128 + MAX_BLOCKS as u128 > lim || nred as u128 + (UNROLL * THREADS) as u128 > lim || reach > lim
}

/// `op` over `axes` of `x`, as an array of `shape` and dtype `out`.
pub fn reduce(gpu: &'static Gpu, op: ReduceOp, x: &Data, axes: &[usize], shape: &[usize], out: DType) -> Result<Data> {
    let g = FusedGroup { inputs: vec![x.dtype()], ops: vec![], outputs: vec![0] };
    let space = x.layout().shape.to_vec();
    Ok(fold(gpu, &g, None, &[(op, 0)], &[x], &[], &space, axes, &[(shape.to_vec(), out)], None)?.0.remove(0))
}

/// Reductions of group `g`'s outputs over `axes` of a space of shape
/// `space`, computed in one kernel from `inputs` (each broadcast to the
/// space): `reductions[j] = (op, output index of g)` is written to a fresh
/// array of `outs[j]` (shape, dtype). The fused form of
/// `Kernel::ReduceFused`; a plain reduction is the pass-through group.
/// Operands with a C literal in `lits` (the producer's inputs, then the
/// consumer's) are inlined rather than read. A compiled step passes its
/// memo and a number standing for its consumer plan.
/// With a `consumer` (and its own inputs), the same kernel then runs its
/// steps over each row; their outputs are returned second, the row steps'
/// (of the space's shape with the reduced axes 1) and then the space
/// step's, in order.
#[allow(clippy::too_many_arguments)]
pub fn fold(
    gpu: &'static Gpu,
    g: &FusedGroup,
    memo: Option<(&Memo, u64)>,
    reductions: &[(ReduceOp, usize)],
    inputs: &[&Data],
    lits: &[Option<&str>],
    space: &[usize],
    axes: &[usize],
    outs: &[(Vec<usize>, DType)],
    consumer: Option<(&Consumer, &[&Data])>,
) -> Result<(Vec<Data>, Vec<Data>)> {
    let ys: Vec<Data> = reductions
        .iter()
        .zip(outs)
        .map(|(&(op, _), (sh, dt))| fresh(gpu, op.name(), *dt, sh))
        .collect::<Result<_>>()?;
    let row: Vec<usize> = space.iter().enumerate().map(|(i, &d)| if axes.contains(&i) { 1 } else { d }).collect();
    let mut ws: Vec<Data> = vec![];
    let mut zs: Vec<Data> = vec![];
    if let Some((c, _)) = consumer {
        for st in &c.rows {
            for &r in &st.group.outputs {
                ws.push(fresh(gpu, "elementwise", st.group.reg_dtype(r), &row)?);
            }
        }
        if let Some(st) = &c.space {
            for &r in &st.group.outputs {
                zs.push(fresh(gpu, "elementwise", st.group.reg_dtype(r), space)?);
            }
        }
    }
    // Every operand addressed through strides, and its layout over the space.
    let mut operands: Vec<&Data> = inputs.to_vec();
    if let Some((_, cin)) = consumer {
        operands.extend(cin.iter().copied());
    }
    operands.extend(zs.iter());
    let layouts: Vec<crate::layout::Layout> = operands
        .iter()
        .map(|d| if d.layout().shape[..] == *space { d.layout().clone() } else { d.layout().broadcast_to(space) })
        .collect();
    let (mut kd, mut rd) = (vec![], vec![]);
    let mut ks: Vec<Vec<isize>> = vec![vec![]; operands.len()];
    let mut rs: Vec<Vec<isize>> = vec![vec![]; operands.len()];
    for (i, &d) in space.iter().enumerate() {
        let red = axes.contains(&i);
        if red {
            rd.push(d)
        } else {
            kd.push(d)
        }
        for (k, l) in layouts.iter().enumerate() {
            if red {
                rs[k].push(l.strides[i])
            } else {
                ks[k].push(l.strides[i])
            }
        }
    }
    let out_strides = contiguous_strides(&kd);
    let mut kall: Vec<&[isize]> = ks.iter().map(|v| &v[..]).collect();
    kall.push(&out_strides);
    let (kd, kst) = collapse(&kd, &kall);
    let rall: Vec<&[isize]> = rs.iter().map(|v| &v[..]).collect();
    let (rd, rst) = collapse(&rd, &rall);
    let nout: usize = kd.iter().product();
    let nred: usize = rd.iter().product();
    if nout == 0 {
        ws.extend(zs);
        return Ok((ys, ws));
    }
    let lim = i32::MAX as u128 / 2;
    let reach = layouts
        .iter()
        .map(|l| {
            l.shape
                .iter()
                .zip(&l.strides)
                .map(|(&d, &s)| (d.max(1) as u128 - 1) * s.unsigned_abs() as u128)
                .sum::<u128>()
        })
        .max()
        .unwrap_or(0);
    let wide =
        nout as u128 + MAX_BLOCKS as u128 > lim || nred as u128 + (UNROLL * THREADS) as u128 > lim || reach > lim;
    let out_dts: Vec<DType> = outs.iter().map(|o| o.1).collect();
    let (blocks, threads) = launch_size(nout, nred);
    let lit = |k: usize| lit_of(lits, k).is_some();
    let ptr_of = |k: usize| -> Result<u64> { Ok(dev(operands[k])?.ptr_at(layouts[k].offset)) };
    let vec = row_vectors(&rd, &kst[..operands.len()], &rst, |k| {
        Ok(if lit(k) { None } else { Some((ptr_of(k)?, operands[k].dtype().size() as u64)) })
    })?;
    // Operands each row reads its own part of (a kept stride not 0): the
    // space step's read is their last, so it is marked evict-first, which
    // leaves L2 to the rows still being folded; an operand every row reads
    // (layernorm's scale and shift) stays cached.
    let once = (0..operands.len().min(64)).filter(|&k| kst[k].iter().any(|&s| s != 0)).fold(0u64, |m, k| m | 1 << k);
    let key = [
        memo.map_or(0, |(_, plan)| plan),
        kd.len() as u64,
        rd.len() as u64,
        wide as u64,
        vec.unwrap_or(u64::MAX),
        once,
    ];
    let memo = memo.map(|(m, _)| (m, variant(&key)));
    let k = kernel_of(gpu, memo, || {
        fold_source(g, reductions, &out_dts, consumer.map(|c| c.0), lits, kd.len(), rd.len(), wide, vec, once)
    })?;
    let mut args = vec![];
    for k in (0..inputs.len()).filter(|&k| !lit(k)) {
        args.push(Arg::Ptr(ptr_of(k)?));
    }
    for y in &ys {
        args.push(Arg::Ptr(dev(y)?.ptr_at(0)));
    }
    let ncin = consumer.map_or(0, |c| c.1.len());
    for k in (inputs.len()..inputs.len() + ncin).filter(|&k| !lit(k)) {
        args.push(Arg::Ptr(ptr_of(k)?));
    }
    for w in &ws {
        args.push(Arg::Ptr(dev(w)?.ptr_at(0)));
    }
    for k in inputs.len() + ncin..operands.len() {
        args.push(Arg::Ptr(ptr_of(k)?));
    }
    args.extend([Arg::I64(nout as i64), Arg::I64(nred as i64)]);
    for (dims, strides) in [(&kd, &kst[..operands.len()]), (&rd, &rst[..])] {
        args.extend(dims.iter().map(|&v| Arg::I64(v as i64)));
        for st in strides {
            args.extend(st.iter().map(|&v| Arg::I64(v as i64)));
        }
    }
    gpu.launch(k, blocks, threads, 0, &args)?;
    ws.extend(zs);
    Ok((ys, ws))
}

/// The broadcast mask of a vector reduction kernel (see [`fold_source`])
/// over reduced dimensions `rd` (collapsed), with each operand's kept
/// strides `kst` and reduced strides `rst`; `at(k)` is operand `k`'s
/// address and element size, `None` for a literal. `None` when the reduced
/// dimensions are not one, or an operand's stride along them is not 0 or
/// 1, or a row of stride 1 does not start on a 4-element boundary.
fn row_vectors(
    rd: &[usize],
    kst: &[Vec<isize>],
    rst: &[Vec<isize>],
    at: impl Fn(usize) -> Result<Option<(u64, u64)>>,
) -> Result<Option<u64>> {
    if rd.len() != 1 || rd[0] < 8 || rst.len() > 64 {
        return Ok(None);
    }
    let mut mask = 0u64;
    for (k, (ks, rs)) in kst.iter().zip(rst).enumerate() {
        let Some((ptr, size)) = at(k)? else { continue };
        match rs[0] {
            0 => mask |= 1 << k,
            1 if ptr % (4 * size) == 0 && ks.iter().all(|s| s % 4 == 0) => {}
            _ => return Ok(None),
        }
    }
    Ok(Some(mask))
}

fn arg_source(op: ArgReduceOp, dt: DType, kr: usize, wide: bool) -> String {
    let mut s = String::from(PRELUDE);
    let _ = writeln!(s, "typedef {} ix;", if wide { "long long" } else { "int" });
    let t = match dt {
        DType::F64 => "double",
        DType::F16 | DType::BF16 | DType::F32 => "float",
        _ => "i64",
    };
    let mut p = vec![
        format!("const {}* __restrict__ x", storage_type(dt)),
        "u32* __restrict__ y".into(),
        "long long nout".into(),
        "long long nred".into(),
    ];
    p.extend(params(kr, 1));
    let better = if op == ArgReduceOp::ArgMax { ">" } else { "<" };
    // (v, i) replaces (a, ai): a NaN first (the earliest), else a strictly
    // better value, else an equal one of smaller index.
    let take = format!(
        "(ai < 0) || (vi >= 0 && ((v != v) ? (!(a != a) || vi < ai) : (!(a != a) && (v {better} a || (v == a && vi < ai)))))"
    );
    let _ = writeln!(s, "extern \"C\" __global__ void k({}) {{", p.join(", "));
    line(&mut s, format!("__shared__ {t} sv[32]; __shared__ i64 si[32];"));
    line(&mut s, "for (ix o = blockIdx.x; o < (ix)nout; o += gridDim.x) {");
    offset_code(&mut s, "base", "o", "k", kr);
    line(&mut s, format!("{t} a = 0; i64 ai = -1;"));
    line(&mut s, "for (ix r = threadIdx.x; r < (ix)nred; r += blockDim.x) {");
    line(&mut s, format!("{t} v = ({t}){}; i64 vi = r;", load(dt, "x[base + r * (ix)rs0]")));
    line(&mut s, format!("if ({take}) {{ a = v; ai = vi; }}"));
    line(&mut s, "}");
    let shfl_t = t;
    let combine = |s: &mut String| {
        line(s, "for (int o2 = 16; o2 > 0; o2 /= 2) {");
        line(s, format!("  {t} v = __shfl_down_sync(0xffffffffu, ({shfl_t})a, o2); i64 vi = __shfl_down_sync(0xffffffffu, ai, o2);"));
        line(s, format!("  if ((int)(threadIdx.x & 31) + o2 < 32 && ({take})) {{ a = v; ai = vi; }}"));
        line(s, "}");
    };
    combine(&mut s);
    line(&mut s, "__syncthreads();");
    line(&mut s, "if ((threadIdx.x & 31) == 0) { sv[threadIdx.x >> 5] = a; si[threadIdx.x >> 5] = ai; }");
    line(&mut s, "__syncthreads();");
    line(&mut s, "if (threadIdx.x < 32) {");
    line(
        &mut s,
        "  if (threadIdx.x < (blockDim.x + 31) / 32) { a = sv[threadIdx.x]; ai = si[threadIdx.x]; } else { ai = -1; }",
    );
    combine(&mut s);
    line(&mut s, "  if (threadIdx.x == 0) y[o] = (u32)(ai < 0 ? 0 : ai);");
    line(&mut s, "}");
    line(&mut s, "__syncthreads();");
    line(&mut s, "}");
    s.push_str("}\n");
    s
}

/// The index of the maximum or minimum of `x` along `axis` (first NaN,
/// else first extreme), as `u32` of `shape`.
pub fn arg_reduce(gpu: &'static Gpu, op: ArgReduceOp, x: &Data, axis: usize, shape: &[usize]) -> Result<Data> {
    let y = fresh(gpu, "argmax", DType::U32, shape)?;
    let (kd, ks, _, _) = split(x, &[axis]);
    let l = x.layout();
    let nred = l.shape[axis];
    let nout: usize = kd.iter().product();
    if nout == 0 {
        return Ok(y);
    }
    let wide = is_wide(nout, nred, x);
    let k = gpu.kernel(&arg_source(op, x.dtype(), kd.len(), wide))?;
    let mut args = vec![
        Arg::Ptr(dev(x)?.ptr_at(l.offset)),
        Arg::Ptr(dev(&y)?.ptr_at(0)),
        Arg::I64(nout as i64),
        Arg::I64(nred as i64),
    ];
    dims_args(&mut args, &kd, &ks);
    dims_args(&mut args, &[nred], &[l.strides[axis]]);
    let (blocks, threads) = launch_size(nout, nred);
    gpu.launch(k, blocks, threads, 0, &args)?;
    Ok(y)
}
