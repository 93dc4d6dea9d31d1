//! Reductions and arg-reductions on the GPU: one block per output element
//! (blocks stride over the outputs), its threads fold strided parts of the
//! reduced elements, then combine through warp shuffles and shared memory.
//! Kept and reduced dimensions are addressed through the input's strides
//! (any layout), each set collapsed where contiguous. Accumulation follows
//! the CPU's rules (`backend::cpu::reduce::acc_dtype`): `f16`/`bf16` in
//! `f32`, statistics of integers in `f64`, integer sums and products wrap;
//! `max`/`min` propagate NaN; `logsumexp`/`sumexp` shift by the maximum and
//! `var` subtracts the mean (two passes over the block's elements).

use std::fmt::Write;

use crate::array::Data;
use crate::backend::cuda::cmath;
use crate::backend::cuda::driver::{Arg, Gpu};
use crate::backend::cuda::source::{float_lit, line, load, offset_code, storage_type, PRELUDE};
use crate::backend::cuda::{dev, fresh};
use crate::backend::simd_math::Func;
use crate::dtype::DType;
use crate::error::Result;
use crate::layout::{collapse, contiguous_strides};
use crate::primitive::{ArgReduceOp, ReduceOp};

/// Most threads per block.
const THREADS: usize = 256;
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
fn fold(op: ReduceOp, t: &str) -> &'static str {
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
fn block_combine(s: &mut String, t: &str, fold: &str, id: &str) {
    let shfl_t = if t == "bool" { "int" } else { t };
    line(s, "for (int o = 16; o > 0; o /= 2) {");
    line(s, format!("  {t} v = ({t})__shfl_down_sync(0xffffffffu, ({shfl_t})a, o);"));
    line(s, format!("  if ((int)(threadIdx.x & 31) + o < 32) {{ {fold} }}"));
    line(s, "}");
    line(s, "__syncthreads();");
    line(s, "if ((threadIdx.x & 31) == 0) sh[threadIdx.x >> 5] = a;");
    line(s, "__syncthreads();");
    line(s, "if (threadIdx.x < 32) {");
    line(s, format!("  a = threadIdx.x < (blockDim.x + 31) / 32 ? sh[threadIdx.x] : ({t})({id});"));
    line(s, "  for (int o = 16; o > 0; o /= 2) {");
    line(s, format!("    {t} v = ({t})__shfl_down_sync(0xffffffffu, ({shfl_t})a, o);"));
    line(s, format!("    {fold}"));
    line(s, "  }");
    line(s, "  if (threadIdx.x == 0) sh[0] = a;");
    line(s, "}");
    line(s, "__syncthreads();");
    line(s, "a = sh[0];");
    line(s, "__syncthreads();");
}

fn reduce_source(op: ReduceOp, dt: DType, out: DType, kr: usize, rr: usize, wide: bool) -> String {
    let (t, init) = acc(op, dt);
    let mut s = String::from(PRELUDE);
    let _ = writeln!(s, "typedef {} ix;", if wide { "long long" } else { "int" });
    let mut p = vec![
        format!("const {}* __restrict__ x", storage_type(dt)),
        format!("{}* __restrict__ y", storage_type(out)),
        "long long nout".into(),
        "long long nred".into(),
    ];
    p.extend(params(kr, rr));
    let _ = writeln!(s, "extern \"C\" __global__ void k({}) {{", p.join(", "));
    line(&mut s, format!("__shared__ {t} sh[32];"));
    line(&mut s, format!("const {t} a0 = {init};"));
    line(&mut s, "for (ix o = blockIdx.x; o < (ix)nout; o += gridDim.x) {");
    offset_code(&mut s, "base", "o", "k", kr);
    let read = |s: &mut String| {
        offset_code(s, "off", "r", "r", rr);
        line(s, format!("{t} v = ({t}){};", load(dt, "x[base + off]")));
    };
    // First pass.
    line(&mut s, format!("{t} a = a0;"));
    line(&mut s, "for (ix r = threadIdx.x; r < (ix)nred; r += blockDim.x) {");
    read(&mut s);
    line(&mut s, fold(op, t));
    line(&mut s, "}");
    block_combine(&mut s, t, fold(op, t), "a0");
    let float = t == "float" || t == "double";
    let lit = |v: f64| float_lit(if t == "double" { DType::F64 } else { DType::F32 }, v);
    let n = format!("(({t})nred)");
    let result = match op {
        ReduceOp::Mean => format!("a / {n}"),
        ReduceOp::LogSumExp | ReduceOp::SumExp | ReduceOp::Var { .. } => {
            // Second pass: the sum of exp(x - max), or of squared deviations.
            line(&mut s, format!("const {t} first = a;"));
            if let ReduceOp::Var { .. } = op {
                line(&mut s, format!("const {t} mean = first / {n};"));
            }
            line(&mut s, "a = 0;");
            line(&mut s, "for (ix r = threadIdx.x; r < (ix)nred; r += blockDim.x) {");
            read(&mut s);
            match op {
                ReduceOp::Var { .. } => line(&mut s, "a = a + (v - mean) * (v - mean);"),
                _ if t == "double" => line(&mut s, "a = a + exp(v - first);"),
                _ => {
                    let mut next = 0;
                    let (stmts, e) = cmath::print(Func::Exp, "(v - first)", &mut next);
                    s.push_str(&stmts);
                    line(&mut s, format!("a = a + {e};"));
                }
            }
            line(&mut s, "}");
            block_combine(&mut s, t, "a = a + v;", "0");
            let (inf, nan) = (lit(f64::INFINITY), lit(f64::NAN));
            let log = if t == "double" { "log(a)".to_string() } else { "logf(a)".to_string() };
            match op {
                ReduceOp::Var { ddof } => {
                    format!("a / ({t})(nred > {ddof}ll ? nred - {ddof}ll : 0ll)")
                }
                ReduceOp::SumExp => format!("(first - first == 0) ? a : {nan}"),
                _ => {
                    format!("first != first ? first : first == {inf} ? first : first == -{inf} ? first : first + {log}")
                }
            }
        }
        _ => "a".into(),
    };
    let _ = float;
    line(&mut s, format!("if (threadIdx.x == 0) {{ {t} res = {result}; y[o] = {}; }}", narrow(t, out)));
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

fn launch_size(nout: usize, nred: usize) -> (u32, u32) {
    let threads = nred.next_power_of_two().clamp(32, THREADS);
    (nout.min(MAX_BLOCKS) as u32, threads as u32)
}

fn is_wide(nout: usize, nred: usize, x: &Data) -> bool {
    let l = x.layout();
    let reach: u128 =
        l.shape.iter().zip(&l.strides).map(|(&d, &s)| (d.max(1) as u128 - 1) * s.unsigned_abs() as u128).sum();
    let lim = i32::MAX as u128 / 2;
    nout as u128 + MAX_BLOCKS as u128 > lim || nred as u128 + THREADS as u128 > lim || reach > lim
}

/// `op` over `axes` of `x`, as an array of `shape` and dtype `out`.
pub fn reduce(gpu: &'static Gpu, op: ReduceOp, x: &Data, axes: &[usize], shape: &[usize], out: DType) -> Result<Data> {
    let y = fresh(gpu, op.name(), out, shape)?;
    let (kd, ks, rd, rs) = split(x, axes);
    let nout: usize = kd.iter().product();
    let nred: usize = rd.iter().product();
    if nout == 0 {
        return Ok(y);
    }
    let wide = is_wide(nout, nred, x);
    let k = gpu.kernel(&reduce_source(op, x.dtype(), out, kd.len(), rd.len(), wide))?;
    let xs = dev(x)?;
    let mut args = vec![
        Arg::Ptr(xs.ptr_at(x.layout().offset)),
        Arg::Ptr(dev(&y)?.ptr_at(0)),
        Arg::I64(nout as i64),
        Arg::I64(nred as i64),
    ];
    dims_args(&mut args, &kd, &ks);
    dims_args(&mut args, &rd, &rs);
    let (blocks, threads) = launch_size(nout, nred);
    gpu.launch(k, blocks, threads, 0, &args)?;
    Ok(y)
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
