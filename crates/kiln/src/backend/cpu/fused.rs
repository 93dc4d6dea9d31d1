//! The fused elementwise executor: a tiled register program.
//!
//! The iteration space (the group's output shape, row-major) is cut into
//! tiles of [`TILE`] elements. For each tile, every input is loaded into a
//! register (contiguous inputs are read in place, broadcast scalars are
//! filled once per task, other strided inputs are gathered), each op runs as
//! a tight loop over the tile, and only the group's outputs are written to
//! memory. Coarse chunks of tiles run on rayon's pool above a size threshold.
//! Eager elementwise ops run through here too, as groups of one op.

use crate::array::Data;
use crate::backend::cpu::strided::{PAR_CHUNK, PAR_THRESHOLD};
use crate::backend::cpu::tile::{Src, TILE};
use crate::backend::cpu::{binary, cast, reduce, unary, Buffer};
use crate::dtype::{DType, Element};
use crate::layout::{collapse, for_each_block, Layout};
use crate::passes::fuse::{FusedGroup, FusedOp};
use crate::primitive::{BinaryOp, Primitive, ReduceOp};

use rayon::prelude::*;

/// How one input is read.
enum Load<'a> {
    /// Contiguous in the group's order from this element on: read in place.
    InPlace(&'a Buffer, usize),
    /// One element broadcast everywhere: fill the register once.
    Scalar(&'a Buffer, usize),
    /// Any other layout: gather each tile through the strides.
    Strided { buf: &'a Buffer, shape: Vec<usize>, strides: Vec<isize>, offset: usize },
}

/// A raw output pointer shared by the tasks, each writing disjoint ranges.
struct OutPtr(*mut u8);
// SAFETY: tasks write disjoint element ranges of the pointed-to buffer, and
// the buffer outlives the parallel section.
unsafe impl Send for OutPtr {}
// SAFETY: as above; no two tasks touch the same element.
unsafe impl Sync for OutPtr {}

/// How to read `buf` through layout `l` (already in the group's iteration order).
fn plan_load(buf: &Buffer, l: Layout) -> Load<'_> {
    if let Some(r) = l.contiguous_range() {
        return Load::InPlace(buf, r.start);
    }
    if l.strides.iter().all(|&s| s == 0) {
        return Load::Scalar(buf, l.offset);
    }
    let (cs, st) = collapse(&l.shape, &[&l.strides]);
    Load::Strided { buf, shape: cs, strides: st.into_iter().next().unwrap_or_default(), offset: l.offset }
}

/// Copies `len` elements of a strided input, starting at row-major position `start`, into `reg`.
fn gather_tile(
    buf: &Buffer,
    shape: &[usize],
    strides: &[isize],
    offset: usize,
    start: usize,
    len: usize,
    reg: &mut Buffer,
) {
    let inner = strides.last().copied().unwrap_or(0);
    crate::with_buffer!(buf, src => {
        let dst = crate::backend::cpu::BufferElement::slice_of_mut(reg).expect("register dtype is the input dtype");
        for_each_block(shape, [strides], [offset], start..start + len, |pos, o, cnt| {
            let d = &mut dst[pos - start..pos - start + cnt];
            let o = o[0] as usize;
            match inner {
                // A broadcast row: one value repeated.
                0 => d.fill(src[o]),
                1 => d.copy_from_slice(&src[o..o + cnt]),
                _ => {
                    for (i, v) in d.iter_mut().enumerate() {
                        *v = src[(o as isize + i as isize * inner) as usize];
                    }
                }
            }
        });
    })
}

/// The buffer offset of positions `start..start + len` when they form one
/// unit-stride run of a strided input (so the tile can be read in place).
fn direct_run(shape: &[usize], strides: &[isize], offset: usize, start: usize, len: usize) -> Option<usize> {
    let nd = shape.len();
    if nd == 0 || strides[nd - 1] != 1 {
        return None;
    }
    let mut rem = start;
    let mut off = offset as isize;
    for d in (0..nd).rev() {
        let i = rem % shape[d];
        if d == nd - 1 && shape[d] - i < len {
            return None;
        }
        off += i as isize * strides[d];
        rem /= shape[d];
    }
    Some(off as usize)
}

fn fill_scalar(buf: &Buffer, at: usize, reg: &mut Buffer) {
    crate::with_buffer!(buf, src => {
        let v = src[at];
        for d in crate::backend::cpu::BufferElement::slice_of_mut(reg).expect("register dtype is the input dtype") {
            *d = v;
        }
    })
}

/// Writes a tile into an output at element `at`.
fn store<T: Copy>(tile: &[T], out: &OutPtr, at: usize) {
    // SAFETY: `out` points to a buffer of `T` with capacity `n >= at +
    // tile.len()` (allocated by `run` for this register's dtype); tasks write
    // disjoint ranges, and a register tile never overlaps an output buffer.
    unsafe { std::ptr::copy_nonoverlapping(tile.as_ptr(), (out.0 as *mut T).add(at), tile.len()) }
}

fn apply(op: &FusedOp, args: &[Src], out: &mut Buffer) {
    match &op.prim {
        Primitive::Unary(u) => unary::unary(*u, args[0], out),
        Primitive::Binary(b) => binary::binary(*b, args[0], args[1], out),
        Primitive::Where => binary::select(args[0], args[1], args[2], out),
        Primitive::AsType(_) => cast::cast(args[0], out),
        p => unreachable!("{} is not elementwise", p.name()),
    }
}

/// Runs the group over row-major positions `start..end` of its iteration
/// space, writing output `k` at `outs[k]` offset by `-base` elements.
fn exec_range(g: &FusedGroup, loads: &[Load], tile: usize, start: usize, end: usize, outs: &[OutPtr], base: usize) {
    let n_in = g.inputs.len();
    let mut in_regs: Vec<Option<Buffer>> = loads
        .iter()
        .zip(&g.inputs)
        .map(|(l, &dt)| match l {
            Load::InPlace(..) => None,
            Load::Scalar(buf, at) => {
                let mut r = Buffer::zeros(dt, tile);
                fill_scalar(buf, *at, &mut r);
                Some(r)
            }
            Load::Strided { .. } => Some(Buffer::zeros(dt, tile)),
        })
        .collect();
    let mut op_regs: Vec<Buffer> = g.ops.iter().map(|o| Buffer::zeros(o.dtype, tile)).collect();
    // Per strided input: this tile's in-place offset when it is one contiguous run.
    let mut direct: Vec<Option<usize>> = vec![None; loads.len()];
    let mut s = start;
    while s < end {
        let len = TILE.min(end - s);
        for ((l, reg), dir) in loads.iter().zip(in_regs.iter_mut()).zip(direct.iter_mut()) {
            if let (Load::Strided { buf, shape, strides, offset }, Some(r)) = (l, reg) {
                *dir = direct_run(shape, strides, *offset, s, len);
                if dir.is_none() {
                    gather_tile(buf, shape, strides, *offset, s, len, r);
                }
            }
        }
        for k in 0..g.ops.len() {
            let (before, rest) = op_regs.split_at_mut(k);
            let src = |r: usize| -> Src {
                if r < n_in {
                    match (&loads[r], &in_regs[r]) {
                        (Load::InPlace(buf, at), _) => Src { buf, start: at + s, len },
                        (Load::Strided { buf, .. }, _) if direct[r].is_some() => {
                            Src { buf, start: direct[r].unwrap_or_default(), len }
                        }
                        (_, Some(reg)) => Src { buf: reg, start: 0, len },
                        _ => unreachable!("non-in-place inputs have registers"),
                    }
                } else {
                    Src { buf: &before[r - n_in], start: 0, len }
                }
            };
            let args: Vec<Src> = g.ops[k].args.iter().map(|&r| src(r)).collect();
            apply(&g.ops[k], &args, &mut rest[0]);
        }
        for (&r, p) in g.outputs.iter().zip(outs) {
            let reg = &op_regs[r - n_in];
            crate::with_buffer!(reg, v => store(&v[..len], p, s - base));
        }
        s += len;
    }
}

/// Output buffers of `n` elements for each group output, and their pointers.
fn alloc_outputs(g: &FusedGroup, n: usize) -> (Vec<Buffer>, Vec<OutPtr>) {
    let mut outs: Vec<Buffer> = g
        .outputs
        .iter()
        .map(|&r| crate::with_dtype!(g.reg_dtype(r), T => Buffer::from_vec(Vec::<T>::with_capacity(n))))
        .collect();
    let ptrs = outs.iter_mut().map(|b| OutPtr(crate::with_buffer!(b, v => v.as_mut_ptr().cast::<u8>()))).collect();
    (outs, ptrs)
}

/// Marks `n` elements of each output as written.
fn finish_outputs(outs: &mut [Buffer], n: usize) {
    for b in outs {
        // SAFETY: the caller ran `exec_range` over `0..n` of this buffer's
        // range, which wrote every element exactly once.
        crate::with_buffer!(b, v => unsafe { v.set_len(n) });
    }
}

/// Runs a fused group over `shape`, returning its outputs (contiguous).
pub fn run(g: &FusedGroup, inputs: &[&Data], shape: &[usize]) -> crate::Result<Vec<Data>> {
    let n: usize = shape.iter().product();
    let loads: Vec<Load> = inputs.iter().map(|d| plan_load(&d.buffer, view_as(d, shape))).collect();
    let (mut outs, ptrs) = alloc_outputs(g, n);
    let tile = TILE.min(n.max(1));
    if n < PAR_THRESHOLD {
        exec_range(g, &loads, tile, 0, n, &ptrs, 0);
    } else {
        let chunks = n.div_ceil(PAR_CHUNK);
        (0..chunks)
            .into_par_iter()
            .for_each(|c| exec_range(g, &loads, tile, c * PAR_CHUNK, ((c + 1) * PAR_CHUNK).min(n), &ptrs, 0));
    }
    finish_outputs(&mut outs, n);
    Ok(outs.into_iter().map(|b| Data::contiguous(b, shape)).collect())
}

/// Elements of producer values materialized at once by a fused reduction:
/// small enough to stay in L2, so the reduction reads them from cache.
const REDUCE_CHUNK: usize = 1 << 15;

/// Runs reductions over `axes` of `shape` that each fold one output of the
/// group `g` (`reductions` pairs an op with the index of that output). The
/// group's values are produced chunk by chunk (kept axes outermost, reduced
/// axes innermost) into cache-sized scratch and every reduction folds its
/// chunk from there, so the inputs are read once for all reductions and the
/// group's values never reach memory. Returns one array per reduction, in
/// the kept axes' shape.
pub fn run_reduce(
    g: &FusedGroup,
    inputs: &[&Data],
    shape: &[usize],
    reductions: &[(ReduceOp, usize)],
    axes: &[usize],
) -> crate::Result<Vec<Data>> {
    let nd = shape.len();
    let perm: Vec<usize> = (0..nd).filter(|a| !axes.contains(a)).chain(axes.iter().copied()).collect();
    let loads: Vec<Load> = inputs.iter().map(|d| plan_load(&d.buffer, view_as(d, shape).permute(&perm))).collect();
    let n_out: usize = (0..nd).filter(|a| !axes.contains(a)).map(|a| shape[a]).product();
    let n_red: usize = axes.iter().map(|&a| shape[a]).product();
    let out_shape = crate::primitive::reduced_shape(shape, axes, false);
    let out_dtypes: Vec<DType> = reductions.iter().map(|&(op, i)| op.out_dtype(g.reg_dtype(g.outputs[i]))).collect();
    // The group's outputs for positions `lo..hi` of the permuted space, as `rows` rows.
    let produce = |lo: usize, hi: usize, rows: usize| -> Vec<Data> {
        let (mut scratch, ptrs) = alloc_outputs(g, hi - lo);
        exec_range(g, &loads, TILE.min((hi - lo).max(1)), lo, hi, &ptrs, lo);
        finish_outputs(&mut scratch, hi - lo);
        let row = (hi - lo).checked_div(rows).unwrap_or(n_red);
        scratch.into_iter().map(|b| Data::contiguous(b, &[rows, row])).collect()
    };
    let fold = |op: ReduceOp, d: &Data| reduce::reduce(op, d, &[1], op.out_dtype(d.buffer.dtype()));
    let bufs: Vec<Buffer> = if n_red <= REDUCE_CHUNK || n_out == 0 {
        let rows = (REDUCE_CHUNK / n_red.max(1)).max(1);
        let chunks = n_out.div_ceil(rows).max(1);
        let part = |c: usize| -> crate::Result<Vec<Buffer>> {
            let (o0, o1) = (c * rows, ((c + 1) * rows).min(n_out));
            let vals = produce(o0 * n_red, o1 * n_red, o1 - o0);
            reductions.iter().map(|&(op, i)| fold(op, &vals[i])).collect()
        };
        let parts: Vec<Vec<Buffer>> = if n_out * n_red < PAR_THRESHOLD {
            (0..chunks).map(part).collect::<crate::Result<_>>()?
        } else {
            (0..chunks).into_par_iter().map(part).collect::<crate::Result<_>>()?
        };
        (0..reductions.len()).map(|k| concat_buffers(parts.iter().map(|p| &p[k]), out_dtypes[k])).collect()
    } else {
        // Few outputs, long reductions: partial results over fixed chunks of
        // the reduced range (independent of the thread count), then combined.
        let per_out = n_red.div_ceil(REDUCE_CHUNK);
        let mut finals: Vec<Vec<Buffer>> = vec![vec![]; reductions.len()];
        for o in 0..n_out {
            let partials: Vec<Vec<Partial>> = (0..per_out)
                .into_par_iter()
                .map(|c| {
                    let lo = o * n_red + c * REDUCE_CHUNK;
                    let hi = (lo + REDUCE_CHUNK).min((o + 1) * n_red);
                    let vals = produce(lo, hi, 1);
                    reductions.iter().map(|&(op, i)| Partial::of(op, &vals[i], hi - lo)).collect()
                })
                .collect::<crate::Result<_>>()?;
            for (k, &(op, _)) in reductions.iter().enumerate() {
                finals[k].push(Partial::combine(op, partials.iter().map(|p| &p[k]), n_red, out_dtypes[k])?);
            }
        }
        finals.iter().zip(&out_dtypes).map(|(f, &dt)| concat_buffers(f.iter(), dt)).collect()
    };
    Ok(bufs.into_iter().map(|b| Data::contiguous(b, &out_shape)).collect())
}

/// A reduction's result over one chunk of a long reduced range, in a form
/// that combines across chunks.
enum Partial {
    /// The reduction itself (the sum, for a mean) of the chunk, combined by
    /// reducing the partials again.
    Value(Buffer),
    /// Count, mean and population variance (for `var`).
    Moments(f64, f64, f64),
    /// Maximum and the sum of `exp(x - max)` (for `sumexp`).
    MaxSum(f64, f64),
}

impl Partial {
    /// The partial result of `op` over the single row `vals` of `count` elements.
    fn of(op: ReduceOp, vals: &Data, count: usize) -> crate::Result<Partial> {
        let one = |op: ReduceOp| reduce::reduce(op, vals, &[1], op.out_dtype(vals.buffer.dtype()));
        let first = |b: Buffer| crate::with_buffer!(&b, v => v[0].to_f64());
        Ok(match op {
            ReduceOp::Mean => Partial::Value(one(ReduceOp::Sum)?),
            ReduceOp::Var { .. } => {
                Partial::Moments(count as f64, first(one(ReduceOp::Mean)?), first(one(ReduceOp::Var { ddof: 0 })?))
            }
            ReduceOp::SumExp => Partial::MaxSum(first(one(ReduceOp::Max)?), first(one(ReduceOp::SumExp)?)),
            o => Partial::Value(one(o)?),
        })
    }

    /// Combines the chunks' partials (in chunk order) into the one-element
    /// result of `op` over `n` elements, of dtype `out`.
    fn combine<'a>(
        op: ReduceOp,
        parts: impl Iterator<Item = &'a Partial>,
        n: usize,
        out: DType,
    ) -> crate::Result<Buffer> {
        let scalar = |v: f64| crate::ops::Scalar::Float(v).to_buffer(out);
        let parts: Vec<&Partial> = parts.collect();
        match op {
            ReduceOp::Var { ddof } => {
                // Chan's formula, in f64.
                let (mut cn, mut cm, mut m2) = (0.0f64, 0.0f64, 0.0f64);
                for p in parts {
                    let Partial::Moments(bn, bm, bv) = *p else { unreachable!("var partials are moments") };
                    let t = cn + bn;
                    let d = bm - cm;
                    m2 += bv * bn + d * d * cn * bn / t;
                    cm += d * bn / t;
                    cn = t;
                }
                let dof = cn - ddof as f64;
                Ok(scalar(m2 / if dof > 0.0 { dof } else { 0.0 }))
            }
            ReduceOp::SumExp => {
                let ms: Vec<(f64, f64)> = parts
                    .iter()
                    .map(|p| match p {
                        Partial::MaxSum(m, s) => (*m, *s),
                        _ => unreachable!("sumexp partials are max and sum"),
                    })
                    .collect();
                let m = ms
                    .iter()
                    .fold(f64::NEG_INFINITY, |a, &(m, _)| if a.is_nan() || m.is_nan() { f64::NAN } else { a.max(m) });
                if !m.is_finite() {
                    return Ok(scalar(f64::NAN));
                }
                // A chunk of only -inf adds nothing.
                Ok(scalar(ms.iter().filter(|(cm, _)| *cm > f64::NEG_INFINITY).map(|(cm, s)| s * (cm - m).exp()).sum()))
            }
            _ => {
                let bufs: Vec<&Buffer> = parts
                    .iter()
                    .map(|p| match p {
                        Partial::Value(b) => b,
                        _ => unreachable!("other partials are values"),
                    })
                    .collect();
                let pdt = bufs[0].dtype();
                let all = Data::contiguous(concat_buffers(bufs.into_iter(), pdt), &[1, parts.len()]);
                let again = if op == ReduceOp::Mean { ReduceOp::Sum } else { op };
                let r = Data::contiguous(reduce::reduce(again, &all, &[1], again.out_dtype(pdt))?, &[1]);
                if op != ReduceOp::Mean {
                    return Ok((*r.buffer).clone());
                }
                let count = Data::contiguous(crate::ops::Scalar::Int(n as i64).to_buffer(pdt), &[]);
                Ok((*run_single(&Primitive::Binary(BinaryOp::Div), &[&r, &count], &[1], pdt)?.buffer).clone())
            }
        }
    }
}

/// Joins buffers of one dtype end to end.
fn concat_buffers<'a>(parts: impl Iterator<Item = &'a Buffer>, dtype: DType) -> Buffer {
    crate::with_dtype!(dtype, T => {
        let mut all: Vec<T> = Vec::new();
        for p in parts {
            all.extend_from_slice(p.as_slice::<T>().expect("parts share the dtype"));
        }
        Buffer::from_vec(all)
    })
}

fn view_as(d: &Data, shape: &[usize]) -> Layout {
    if d.layout.shape == shape {
        d.layout.clone()
    } else {
        d.layout.broadcast_to(shape)
    }
}

/// Runs one elementwise primitive eagerly, as a group of one op.
pub fn run_single(prim: &Primitive, inputs: &[&Data], shape: &[usize], dtype: DType) -> crate::Result<Data> {
    let g = FusedGroup::single(prim.clone(), inputs.iter().map(|d| d.buffer.dtype()).collect(), dtype);
    Ok(run(&g, inputs, shape)?.pop().expect("one output"))
}
