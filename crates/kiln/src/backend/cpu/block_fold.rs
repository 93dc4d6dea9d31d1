//! A reduction of a matrix product's result, folded block by block as the
//! product computes it.
//!
//! A product splits its output into blocks of rows over the team
//! ([`matmul::f32_row_blocks`]); a reduction that runs as a step of its own
//! after it reads each block back from the cache of the core that wrote it
//! (on a machine of several cores, mostly another core's). When the step
//! after a product reduces a value the product step writes (the product
//! itself, `sum(y * y)` with `y` kept, or its epilogue's result,
//! `sum(relu(x @ w + b))`), [`find`] composes one group that makes the
//! reduced values from the product's block: the product step's epilogue
//! ops, then the reduction's producers (`compose`). [`run`] folds that
//! group over each block on the thread that computed it, right after, while
//! the block is in that core's cache ([`fused_reduce::reduce_blocks`]), and
//! stores the product step's own outputs only when a later step or the
//! caller reads them. Where the run-time shapes or dtypes do not allow it,
//! the two steps run as they are.

use smallvec::SmallVec;

use crate::array::Data;
use crate::backend::cpu::fused::{launch_blocks, Outs};
use crate::backend::cpu::{fused_reduce, matmul, CpuGroup};
use crate::error::Result;
use crate::layout::Layout;
use crate::passes::fuse::{FusedGroup, FusedOp, Kernel};
use crate::primitive::{Primitive, ReduceOp};
use crate::program::Program;

use super::executable::Step;

thread_local! {
    static RUNS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Products whose next step this thread has folded block by block so far
/// (compiled calls on this thread): for tests and diagnostics.
pub fn runs() -> usize {
    RUNS.get()
}

/// How the reduction step after a product folds the product's blocks.
#[derive(Clone, Debug)]
pub struct BlockFold {
    /// Makes the reduced values from the product's block (input register
    /// 0) and [`BlockFold::inputs`] (registers 1 on).
    pub group: CpuGroup,
    /// The values the group reads besides the block.
    pub inputs: Vec<usize>,
    /// Each reduction and the group output it folds.
    pub reductions: Vec<(ReduceOp, usize)>,
    /// The reduced axes of the iteration space.
    pub axes: Vec<usize>,
    /// A value whose shape is the reduction's iteration space.
    pub source: usize,
}

/// The fold of step `s + 1` into step `s`, for each `s` where step `s` is a
/// matrix product (alone or with an epilogue) and step `s + 1` a
/// reduction (fused or not) of a value step `s` writes, over the
/// product's shape; `None` elsewhere. `in_chain` tells the steps that run
/// in a row chain (left to it).
pub fn find(p: &Program, steps: &[Step], in_chain: impl Fn(usize) -> bool) -> Vec<Option<BlockFold>> {
    let mut out: Vec<Option<BlockFold>> = steps.iter().map(|_| None).collect();
    for s in 1..steps.len() {
        if in_chain(s - 1) || in_chain(s) {
            continue;
        }
        out[s - 1] = fold_of(p, &steps[s - 1], &steps[s]);
    }
    out
}

/// [`find`] for one pair of steps.
fn fold_of(p: &Program, prod: &Step, red: &Step) -> Option<BlockFold> {
    let v = *prod.outputs.first()?;
    let dt = p.instrs[v].dtype;
    // The product step as a group over the product (register 0), reading
    // `e_ins` besides; its outputs are the step's outputs, in order.
    let (e, e_ins): (FusedGroup, &[usize]) = match &prod.kernel {
        Kernel::Single(Primitive::Matmul) => (FusedGroup { inputs: vec![dt], ops: vec![], outputs: vec![0] }, &[]),
        Kernel::MatmulEpilogue(g) => (g.group.clone(), prod.inputs.get(2..)?),
        _ => return None,
    };
    // The reduction as a group over its inputs.
    let (r, reductions, axes, source) = match &red.kernel {
        Kernel::ReduceFused { group, reductions, axes, source } => {
            (group.group.clone(), reductions.clone(), axes.clone(), *source)
        }
        Kernel::Single(Primitive::Reduce { op, axes, .. }) => {
            // A reduction of a value itself, as the fuser plans one (a copy).
            let x = *red.inputs.first()?;
            let dx = p.instrs[x].dtype;
            (FusedGroup::single(Primitive::AsType(dx), vec![dx], dx), vec![(*op, 0)], axes.clone(), x)
        }
        _ => return None,
    };
    let shape = &p.instrs[v].shape;
    let reads: Vec<Option<usize>> =
        red.inputs.iter().map(|i| prod.outputs.iter().position(|o| o == i).map(|k| e.outputs[k])).collect();
    if p.instrs[source].shape != *shape
        || dt != crate::dtype::DType::F32
        || fused_reduce::reduced_suffix(&axes, shape.len()).is_none()
        || reads.iter().all(Option::is_none)
    {
        return None;
    }
    let group = compose(&e, &r, &reads);
    // Only what `fused_reduce::reduce_blocks` folds (checked again at run
    // time, with the run-time shapes).
    if !fused_reduce::folds(&group, &reductions) {
        return None;
    }
    let inputs =
        e_ins.iter().chain(red.inputs.iter().zip(&reads).filter(|(_, r)| r.is_none()).map(|(i, _)| i)).copied();
    Some(BlockFold { group: CpuGroup::new(group), inputs: inputs.collect(), reductions, axes, source })
}

/// The group that runs `e`'s ops, then `r`'s, where `r`'s input `k` reads
/// `e`'s register `reads[k]` when that is given and else a new input
/// (after `e`'s inputs, in order). Its outputs are `r`'s.
fn compose(e: &FusedGroup, r: &FusedGroup, reads: &[Option<usize>]) -> FusedGroup {
    let (e_in, r_in) = (e.inputs.len(), r.inputs.len());
    let extra: Vec<usize> = (0..r_in).filter(|&k| reads[k].is_none()).collect();
    // `e`'s op registers move up past the new inputs.
    let from_e = |x: usize| if x < e_in { x } else { x + extra.len() };
    let r_base = e_in + extra.len() + e.ops.len();
    let from_r = |x: usize| match (x < r_in).then(|| reads[x]) {
        Some(Some(er)) => from_e(er),
        Some(None) => e_in + extra.iter().position(|&k| k == x).expect("an input of its own"),
        None => r_base + x - r_in,
    };
    let inputs = e.inputs.iter().copied().chain(extra.iter().map(|&k| r.inputs[k])).collect();
    let ops = e
        .ops
        .iter()
        .map(|o| FusedOp { prim: o.prim.clone(), args: o.args.iter().map(|&x| from_e(x)).collect(), dtype: o.dtype })
        .chain(r.ops.iter().map(|o| FusedOp {
            prim: o.prim.clone(),
            args: o.args.iter().map(|&x| from_r(x)).collect(),
            dtype: o.dtype,
        }))
        .collect();
    FusedGroup { inputs, ops, outputs: r.outputs.iter().map(|&x| from_r(x)).collect() }
}

/// Runs steps `prod` and `red` (whose [`BlockFold`] is `fold`) together:
/// the product by blocks of rows, each block folded by `fold.group` on the
/// thread that computed it, and the product step's outputs stored where a
/// later step or the caller reads them. Their values go into `values`.
/// `false`, having run nothing, where the run-time shapes or dtypes do not
/// allow it (see [`fused_reduce::reduce_blocks`] and
/// [`matmul::row_blocks_take`]).
pub fn run<S: AsRef<[usize]>>(
    prod: &Step,
    red: &Step,
    fold: &BlockFold,
    values: &mut [Option<Data>],
    shape_of: impl Fn(usize) -> S,
) -> Result<bool> {
    let shape = shape_of(prod.outputs[0]);
    let shape = shape.as_ref();
    if shape_of(fold.source).as_ref() != shape {
        return Ok(false);
    }
    // Stored when read after the reduction (or returned).
    let store = prod.outputs.iter().any(|o| !red.frees.contains(o));
    let mut stored = Outs::new();
    let reduced = {
        let computed = |i: usize| values[i].as_ref().expect("inputs are computed first");
        let (a, b) = (computed(prod.inputs[0]), computed(prod.inputs[1]));
        let inputs: SmallVec<[Option<&Data>; 4]> =
            std::iter::once(None).chain(fold.inputs.iter().map(|&i| Some(computed(i)))).collect();
        let produce = |then: &matmul::Then<'_>| -> Result<bool> {
            match (&prod.kernel, store) {
                (_, false) => matmul::f32_row_blocks(a, b, shape, then),
                (Kernel::MatmulEpilogue(g), true) => {
                    let others: SmallVec<[&Data; 4]> = prod.inputs[2..].iter().map(|&i| computed(i)).collect();
                    launch_blocks(g, &others, shape, &mut stored, |epilogue| {
                        matmul::f32_row_blocks(a, b, shape, &|start, len, block, at| {
                            epilogue(start, len, block, at);
                            then(start, len, block, at);
                        })
                    })
                }
                _ => {
                    let kept = matmul::f32_row_blocks_kept(a, b, shape, then)?;
                    stored.extend(kept.map(|buf| Data::contiguous(buf, shape)));
                    Ok(!stored.is_empty())
                }
            }
        };
        fused_reduce::reduce_blocks(&fold.group, &inputs, shape, &fold.reductions, &fold.axes, produce)?
    };
    let Some(reduced) = reduced else { return Ok(false) };
    RUNS.set(RUNS.get() + 1);
    for (d, &o) in stored.into_iter().zip(&prod.outputs) {
        values[o] = Some(d);
    }
    for (d, &o) in reduced.into_iter().zip(&red.outputs) {
        values[o] = Some(d.relayout(Layout::contiguous(shape_of(o).as_ref())));
    }
    Ok(true)
}
