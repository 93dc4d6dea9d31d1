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
use crate::backend::cpu::{binary, cast, unary, Buffer};
use crate::dtype::DType;
use crate::layout::{collapse, for_each_block};
use crate::passes::fuse::{FusedGroup, FusedOp};
use crate::primitive::Primitive;

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

fn plan_load<'a>(d: &'a Data, shape: &[usize]) -> Load<'a> {
    let l = if d.layout.shape == shape { d.layout.clone() } else { d.layout.broadcast_to(shape) };
    if let Some(r) = l.contiguous_range() {
        return Load::InPlace(&d.buffer, r.start);
    }
    if l.strides.iter().all(|&s| s == 0) {
        return Load::Scalar(&d.buffer, l.offset);
    }
    let (cs, st) = collapse(&l.shape, &[&l.strides]);
    Load::Strided { buf: &d.buffer, shape: cs, strides: st.into_iter().next().unwrap_or_default(), offset: l.offset }
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
            for (i, v) in d.iter_mut().enumerate() {
                *v = src[(o[0] + i as isize * inner) as usize];
            }
        });
    })
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

/// Runs a fused group over `shape`, returning its outputs (contiguous).
pub fn run(g: &FusedGroup, inputs: &[&Data], shape: &[usize]) -> crate::Result<Vec<Data>> {
    let n: usize = shape.iter().product();
    let loads: Vec<Load> = inputs.iter().map(|d| plan_load(d, shape)).collect();
    let out_dtypes: Vec<DType> = g.outputs.iter().map(|&r| g.reg_dtype(r)).collect();
    let mut outs: Vec<Buffer> = out_dtypes
        .iter()
        .map(|&dt| crate::with_dtype!(dt, T => Buffer::from_vec(Vec::<T>::with_capacity(n))))
        .collect();
    let ptrs: Vec<OutPtr> =
        outs.iter_mut().map(|b| OutPtr(crate::with_buffer!(b, v => v.as_mut_ptr().cast::<u8>()))).collect();
    let n_in = g.inputs.len();
    let tile = TILE.min(n.max(1));

    let run_range = |start: usize, end: usize| {
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
        let mut s = start;
        while s < end {
            let len = TILE.min(end - s);
            for (l, reg) in loads.iter().zip(in_regs.iter_mut()) {
                if let (Load::Strided { buf, shape, strides, offset }, Some(r)) = (l, reg) {
                    gather_tile(buf, shape, strides, *offset, s, len, r);
                }
            }
            for k in 0..g.ops.len() {
                let (before, rest) = op_regs.split_at_mut(k);
                let src = |r: usize| -> Src {
                    if r < n_in {
                        match (&loads[r], &in_regs[r]) {
                            (Load::InPlace(buf, base), _) => Src { buf, start: base + s, len },
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
            for (&r, p) in g.outputs.iter().zip(&ptrs) {
                let reg = &op_regs[r - n_in];
                crate::with_buffer!(reg, v => store(&v[..len], p, s));
            }
            s += len;
        }
    };
    if n < PAR_THRESHOLD {
        run_range(0, n);
    } else {
        let chunks = n.div_ceil(PAR_CHUNK);
        (0..chunks).into_par_iter().for_each(|c| run_range(c * PAR_CHUNK, ((c + 1) * PAR_CHUNK).min(n)));
    }
    for b in &mut outs {
        // SAFETY: every element in `0..n` was written by exactly one task above.
        crate::with_buffer!(b, v => unsafe { v.set_len(n) });
    }
    Ok(outs.into_iter().map(|b| Data::contiguous(b, shape)).collect())
}

/// Runs one elementwise primitive eagerly, as a group of one op.
pub fn run_single(prim: &Primitive, inputs: &[&Data], shape: &[usize], dtype: DType) -> crate::Result<Data> {
    let g = FusedGroup::single(prim.clone(), inputs.iter().map(|d| d.buffer.dtype()).collect(), dtype);
    Ok(run(&g, inputs, shape)?.pop().expect("one output"))
}
