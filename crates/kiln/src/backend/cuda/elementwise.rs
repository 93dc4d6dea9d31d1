//! Elementwise kernels: a fused group (or one op, or a plain copy) as one
//! CUDA kernel over a strided iteration space. Every operand, inputs and
//! outputs, is addressed through its own strides, so broadcast inputs,
//! views of any layout and outputs written into part of a larger array
//! (`concatenate`) all run through the same kernel. Dimensions that are
//! contiguous in every operand are merged first ([`collapse`]), so
//! contiguous work indexes one flat dimension; the index arithmetic is
//! 32-bit when every offset fits. Sizes and strides are kernel arguments:
//! one compiled kernel serves every shape of the same rank. A compiled
//! program's one-element constants are literals in the source rather than
//! operands (no load, no address arithmetic for them). One contiguous,
//! aligned dimension runs 4 positions per thread through 4-element vector
//! loads and stores (128-bit for `f32`), which brought `x + 1` over 2^28
//! floats on an H200 from 575 to 550 us, near the copy floor.
//!
//! A compiled step keeps the plan of its last launch (kernel, grid, sizes
//! and strides as arguments; [`Memo`]) keyed by the space, every operand's
//! strides and its address modulo 64: a call like the one before only
//! writes its pointers into the arguments and launches, without merging
//! dimensions or choosing the kernel again.

use std::fmt::Write;

use crate::array::Data;
use smallvec::SmallVec;

use crate::backend::cuda::driver::{kernel_of, variant, Arg, Gpu, Launch, Memo};
use crate::backend::cuda::source::{line, lit_of, load, ops_code, register_type, storage_type, store, PRELUDE, V4};
use crate::backend::cuda::{dev, fresh};
use crate::error::Result;
use crate::layout::{collapse, contiguous_strides, Layout, Strides};
use crate::passes::fuse::FusedGroup;

/// Threads per block of the elementwise kernels.
const THREADS: u32 = 256;
/// Most blocks launched (each thread then strides over the rest).
const MAX_BLOCKS: u64 = 8192;

/// The kernel source for group `g` over a space of `rank` dimensions,
/// with 64-bit index arithmetic when `wide`; input `k` is the C literal
/// `lits[k]` when there is one (a constant, not read from memory).
///
/// With `vec` (a contiguous space of rank 1 whose operands are aligned) each
/// thread takes 4 consecutive positions per iteration, every operand of
/// stride 1 read and written as one aligned 4-element vector (16 bytes for
/// `f32`: a 128-bit access), those of stride 0 (bit `k` of the mask set)
/// read once; a scalar loop does the last `n % 4` positions.
pub fn kernel_source(g: &FusedGroup, rank: usize, wide: bool, lits: &[Option<&str>], vec: Option<u64>) -> String {
    let nin = g.inputs.len();
    let nout = g.outputs.len();
    let mut s = String::from(PRELUDE);
    let _ = writeln!(s, "typedef {} ix;", if wide { "long long" } else { "int" });
    if vec.is_some() {
        s.push_str(V4);
    }
    let mut params = vec!["long long n".to_string()];
    let lit = |k: usize| lit_of(lits, k);
    for (k, dt) in g.inputs.iter().enumerate().filter(|(k, _)| lit(*k).is_none()) {
        params.push(format!("const {}* __restrict__ p{k}", storage_type(*dt)));
    }
    for (o, &r) in g.outputs.iter().enumerate() {
        params.push(format!("{}* __restrict__ q{o}", storage_type(g.reg_dtype(r))));
    }
    for d in 0..rank {
        params.push(format!("long long d{d}"));
    }
    for k in 0..nin + nout {
        for d in 0..rank {
            params.push(format!("long long s{k}_{d}"));
        }
    }
    let _ = writeln!(s, "extern \"C\" __global__ void k({}) {{", params.join(", "));
    line(&mut s, "const ix step = (ix)gridDim.x * (ix)blockDim.x;");
    if let Some(mask) = vec {
        vector_body(&mut s, g, lits, mask);
        s.push_str("}\n");
        return s;
    }
    // One position per thread and iteration (four scalar positions, for
    // more loads in flight, made the gelus 8-16% slower on an H200 when
    // they were bound by instructions: bench/README).
    line(&mut s, "for (ix i = (ix)blockIdx.x * (ix)blockDim.x + (ix)threadIdx.x; i < (ix)n; i += step) {");
    let offset = |k: usize| -> String {
        if rank == 0 {
            return "0".into();
        }
        (0..rank).map(|d| format!("c{d} * (ix)s{k}_{d}")).collect::<Vec<_>>().join(" + ")
    };
    let mut next = 0usize;
    // The position along each dimension, innermost first.
    line(&mut s, "ix rest = i;");
    for d in (0..rank).rev() {
        if d == 0 {
            line(&mut s, "ix c0 = rest;");
        } else {
            line(&mut s, format!("ix c{d} = rest % (ix)d{d}; rest /= (ix)d{d};"));
        }
    }
    for (k, dt) in g.inputs.iter().enumerate() {
        let v = match lit(k) {
            Some(l) => l.to_string(),
            None => load(*dt, &format!("p{k}[{}]", offset(k))),
        };
        line(&mut s, format!("{} r{k} = {v};", register_type(*dt)));
    }
    ops_code(&mut s, g, "r", &mut next);
    for (o, &r) in g.outputs.iter().enumerate() {
        let dt = g.reg_dtype(r);
        line(&mut s, format!("q{o}[{}] = {};", offset(nin + o), store(dt, &format!("r{r}"))));
    }
    line(&mut s, "}");
    s.push_str("}\n");
    s
}

/// The body of a vector kernel (see [`kernel_source`]): operand `k` (the
/// inputs, then the outputs) is broadcast when bit `k` of `mask` is set.
fn vector_body(s: &mut String, g: &FusedGroup, lits: &[Option<&str>], mask: u64) {
    let lit = |k: usize| lit_of(lits, k);
    let bcast = |k: usize| mask >> k & 1 == 1;
    let mut next = 0usize;
    // Broadcast inputs: read once.
    for (k, dt) in g.inputs.iter().enumerate().filter(|&(k, _)| lit(k).is_none() && bcast(k)) {
        line(s, format!("const {} b{k} = p{k}[0];", storage_type(*dt)));
    }
    // One position's work, its inputs at `at(k)`, its outputs to `put(o, v)`.
    let body =
        |s: &mut String, next: &mut usize, at: &dyn Fn(usize) -> String, put: &dyn Fn(usize, String) -> String| {
            line(s, "{");
            for (k, dt) in g.inputs.iter().enumerate() {
                let v = match lit(k) {
                    Some(l) => l.to_string(),
                    None if bcast(k) => load(*dt, &format!("b{k}")),
                    None => load(*dt, &at(k)),
                };
                line(s, format!("{} r{k} = {v};", register_type(*dt)));
            }
            ops_code(s, g, "r", next);
            for (o, &r) in g.outputs.iter().enumerate() {
                line(s, put(o, store(g.reg_dtype(r), &format!("r{r}"))));
            }
            line(s, "}");
        };
    line(s, "const ix nv = (ix)(n / 4);");
    line(s, "for (ix i = (ix)blockIdx.x * (ix)blockDim.x + (ix)threadIdx.x; i < nv; i += step) {");
    for (k, dt) in g.inputs.iter().enumerate().filter(|&(k, _)| lit(k).is_none() && !bcast(k)) {
        let t = storage_type(*dt);
        line(s, format!("const V4<{t}> v{k} = ((const V4<{t}>*)p{k})[i];"));
    }
    for (o, &r) in g.outputs.iter().enumerate() {
        line(s, format!("V4<{}> w{o};", storage_type(g.reg_dtype(r))));
    }
    for u in 0..4 {
        body(s, &mut next, &|k| format!("v{k}.v[{u}]"), &|o, v| format!("w{o}.v[{u}] = {v};"));
    }
    for (o, &r) in g.outputs.iter().enumerate() {
        line(s, format!("((V4<{}>*)q{o})[i] = w{o};", storage_type(g.reg_dtype(r))));
    }
    line(s, "}");
    // The last n % 4 positions.
    line(s, "for (ix i = nv * 4 + (ix)blockIdx.x * (ix)blockDim.x + (ix)threadIdx.x; i < (ix)n; i += step) {");
    body(s, &mut next, &|k| format!("p{k}[i]"), &|o, v| format!("q{o}[i] = {v};"));
    line(s, "}");
}

/// The broadcast mask of a vector kernel for `g` over a collapsed space of
/// `dims` (see [`kernel_source`]), or `None` when the space is not one
/// contiguous dimension, or an operand has a stride other than 0 or 1
/// (outputs: 1) or is not aligned to its 4-element vector.
fn vector_mask<'a>(
    g: &FusedGroup,
    lits: &[Option<&str>],
    dims: &[usize],
    ops: impl Iterator<Item = &'a Operand>,
    strides: &[Vec<isize>],
) -> Option<u64> {
    if dims.len() != 1 || strides.len() > 64 {
        return None;
    }
    let nin = g.inputs.len();
    let mut mask = 0u64;
    for (k, (op, st)) in ops.zip(strides).enumerate() {
        let size = if k < nin { g.inputs[k].size() } else { g.reg_dtype(g.outputs[k - nin]).size() };
        match st[0] {
            _ if k < nin && lit_of(lits, k).is_some() => {}
            0 if k < nin => mask |= 1 << k,
            1 if op.ptr % (4 * size as u64) == 0 => {}
            _ => return None,
        }
    }
    Some(mask)
}

/// An operand of a launch: its device address (of the element at the
/// space's origin) and its strides over the space.
pub struct Operand {
    /// Device address of the first element.
    pub ptr: u64,
    /// Strides in elements, one per dimension of the space.
    pub strides: Strides,
}

impl Operand {
    /// `d` viewed over a space of `shape` (its layout broadcast to it).
    pub fn of(d: &Data, shape: &[usize]) -> Result<Operand> {
        let s = dev(d)?;
        let l: Layout =
            if d.layout().shape[..] == *shape { d.layout().clone() } else { d.layout().broadcast_to(shape) };
        Ok(Operand { ptr: s.ptr_at(l.offset), strides: l.strides })
    }
}

/// Runs group `g` over a space of `shape`, reading `inputs` and writing
/// `outputs` (each with strides over the space); inputs with a literal in
/// `lits` are that constant instead. A compiled step passes its `memo`
/// (its `g` and `lits` the same at every call).
pub fn launch(
    gpu: &Gpu,
    g: &FusedGroup,
    memo: Option<&Memo>,
    lits: &[Option<&str>],
    inputs: &[Operand],
    outputs: &[Operand],
    shape: &[usize],
) -> Result<()> {
    let n: usize = shape.iter().product();
    if n == 0 {
        return Ok(());
    }
    // A compiled step's launch like its last one (the same space, strides
    // and alignments) reuses that one's plan.
    let read = || inputs.iter().enumerate().filter(|(k, _)| lit_of(lits, *k).is_none()).map(|(_, o)| o);
    let plan_key: SmallVec<[i64; 32]> = match memo {
        Some(_) => {
            let mut key: SmallVec<[i64; 32]> = SmallVec::new();
            key.push(shape.len() as i64);
            key.extend(shape.iter().map(|&d| d as i64));
            for o in inputs.iter().chain(outputs) {
                key.extend(o.strides.iter().map(|&s| s as i64));
                key.push((o.ptr % 64) as i64);
            }
            key
        }
        None => SmallVec::new(),
    };
    let args_with = |tail: &[Arg]| -> SmallVec<[Arg; 48]> {
        let mut args: SmallVec<[Arg; 48]> = SmallVec::new();
        args.push(Arg::I64(n as i64));
        args.extend(read().chain(outputs).map(|o| Arg::Ptr(o.ptr)));
        args.extend(tail.iter().copied());
        args
    };
    if let Some((k, blocks, args)) =
        memo.and_then(|m| m.with_last_launch(&plan_key, |l| (l.kernel, l.blocks, args_with(&l.tail))))
    {
        return gpu.launch(k, blocks, THREADS, 0, &args);
    }
    let all: Vec<&[isize]> = inputs.iter().chain(outputs).map(|o| &o.strides[..]).collect();
    let (dims, strides) = collapse(shape, &all);
    let rank = dims.len();
    let blocks = (n as u64).div_ceil(THREADS as u64).min(MAX_BLOCKS);
    // 32-bit indexing when the position, its step and every offset fit.
    let reach = strides
        .iter()
        .map(|st| dims.iter().zip(st).map(|(&d, &s)| (d as u128 - 1) * s.unsigned_abs() as u128).sum::<u128>())
        .max()
        .unwrap_or(0);
    let limit = i32::MAX as u128;
    let wide = n as u128 + blocks as u128 * THREADS as u128 > limit || reach > limit;
    let vec = vector_mask(g, lits, &dims, inputs.iter().chain(outputs), &strides);
    let blocks = if vec.is_some() { (n as u64).div_ceil(4 * THREADS as u64).min(MAX_BLOCKS) } else { blocks };
    let key = variant(&[rank as u64, wide as u64, vec.unwrap_or(u64::MAX)]);
    let k = kernel_of(gpu, memo.map(|m| (m, key)), || kernel_source(g, rank, wide, lits, vec))?;
    let mut tail: SmallVec<[Arg; 24]> = dims.iter().map(|&d| Arg::I64(d as i64)).collect();
    for st in &strides {
        tail.extend(st.iter().map(|&s| Arg::I64(s as i64)));
    }
    gpu.launch(k, blocks as u32, THREADS, 0, &args_with(&tail))?;
    if let Some(m) = memo {
        m.set_last_launch(Launch { key: plan_key, kernel: k, blocks: blocks as u32, tail });
    }
    Ok(())
}

/// Runs group `g` on evaluated `inputs` (broadcast to `shape`; those with
/// a literal in `lits` inlined instead) into fresh contiguous outputs.
pub fn run(
    gpu: &'static Gpu,
    g: &FusedGroup,
    memo: Option<&Memo>,
    lits: &[Option<&str>],
    inputs: &[&Data],
    shape: &[usize],
) -> Result<Vec<Data>> {
    let ins = inputs.iter().map(|d| Operand::of(d, shape)).collect::<Result<SmallVec<[Operand; 4]>>>()?;
    let outs: Vec<Data> =
        g.outputs.iter().map(|&r| fresh(gpu, "elementwise", g.reg_dtype(r), shape)).collect::<Result<_>>()?;
    let strides = contiguous_strides(shape);
    let out_ops: SmallVec<[Operand; 4]> =
        outs.iter().map(|d| Ok(Operand { ptr: dev(d)?.ptr_at(0), strides: strides.clone() })).collect::<Result<_>>()?;
    launch(gpu, g, memo, lits, &ins, &out_ops, shape)?;
    Ok(outs)
}

/// A contiguous copy of `d` (of its dtype), or `d` itself when it already
/// is one from the storage's start.
pub fn contiguous(gpu: &'static Gpu, d: &Data) -> Result<Data> {
    let l = d.layout();
    if l.is_contiguous() && l.offset == 0 {
        return Ok(d.clone());
    }
    copy(gpu, d)
}

/// A fresh contiguous copy of `d`.
pub fn copy(gpu: &'static Gpu, d: &Data) -> Result<Data> {
    let g = FusedGroup { inputs: vec![d.dtype()], ops: vec![], outputs: vec![0] };
    let shape = d.layout().shape.to_vec();
    Ok(run(gpu, &g, None, &[], &[d], &shape)?.remove(0))
}
