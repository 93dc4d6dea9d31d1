//! Fused reductions: reductions that absorb their elementwise producers.
//!
//! The producers' values are made chunk by chunk into cache-sized scratch
//! by the [tile interpreter](crate::backend::cpu::interpreter) and folded
//! from there by the reduction kernel ([`reduce`]), so the group's values
//! never reach memory. Long rows are made node by node of the reduction's
//! pairwise tree and the nodes' partial results (`reduce::Partial`) combine with the
//! kernel's own merges, so a fused reduction gives the eager result bit
//! for bit.
//!
//! The group's space is first put in the memory order of its largest
//! input (`reduce::MemoryOrder`): `sum(x.t() * 2, -1)` is `x * 2` summed
//! over its leading axis, which the column fold below takes, where the
//! transposed space would read `x` down its columns.
//!
//! Reductions over leading or middle axes (`sum(exp(x), 0)`) are the
//! exception: the reduced axes innermost, the group would read its inputs
//! across their layout, a cache line per element. There the group runs in
//! its own row-major order instead, each reduced row's run folded into a
//! strip of accumulators in L1 (`fold_columns`), its rows in order and
//! their partials pairwise: an order of its own, within the float
//! tolerance of the eager result rather than its bits. Reductions there
//! that this fold does not take (a product, a variance, a log-sum-exp,
//! integer sums, axes around a kept one) make the group's values whole in
//! their own order, as eager does, and reduce them with the reduction
//! kernel: eager's bits and speed. So do reductions with an input read
//! across its layout in either order (`sum(x + x.t(), -1)`): made whole,
//! the values are computed block by block (`blocked`).

use crate::array::Data;
use crate::backend::cpu::fused::{rows_of, run_single, Outs};
use crate::backend::cpu::interpreter::{
    exec_range, give_registers, no_streams, out_ptr, plan_load, take_register, view_as, Exec, Load, Loads, OutPtr,
    Scratch, INLINE,
};
use crate::backend::cpu::strided::PAR_THRESHOLD;
use crate::backend::cpu::tile::TILE;
use crate::backend::cpu::{reduce, team, Buffer, BufferElement, CpuGroup};
use crate::dtype::DType;
use crate::passes::fuse::FusedGroup;
use crate::primitive::{Primitive, ReduceOp};

use smallvec::SmallVec;

/// Elements of producer values materialized at once by a fused reduction:
/// small enough to stay in L2, so the reduction reads them from cache.
const REDUCE_CHUNK: usize = 1 << 15;

/// Runs reductions over `axes` of `shape` that each fold one output of the
/// group `g` (`reductions` pairs an op with the index of that output).
/// Reductions of the inputs themselves run the reduction kernel in place;
/// reductions over leading or middle axes run in the group's own order
/// where `fold_columns` applies, or else, in a space larger than the
/// caches, the group's values are made whole and reduced as eager reduces
/// them (bit for bit). Otherwise the group's values are produced tile by
/// tile (kept axes outermost, reduced axes innermost) and folded from the
/// tile's register when every reduction is an `f32` sum, mean, max or min
/// (`fold_rows`); otherwise chunk by chunk into cache-sized scratch, every
/// reduction folding its chunk from there. But for the values made whole,
/// the inputs are read once for all reductions and the group's values
/// never reach memory. Returns one array per reduction, in the kept axes'
/// shape.
pub fn run_reduce(
    g: &CpuGroup,
    inputs: &[&Data],
    shape: &[usize],
    reductions: &[(ReduceOp, usize)],
    axes: &[usize],
) -> crate::Result<Outs> {
    // The space in the memory order of its largest input (the first of
    // those with the fewest broadcast axes), when its own order is not.
    let mut dominant: Option<(usize, std::borrow::Cow<crate::layout::Layout>)> = None;
    for d in inputs {
        let l = view_as(d, shape);
        let live = l.strides.iter().zip(&l.shape).filter(|&(&s, &n)| s != 0 || n == 1).count();
        if dominant.as_ref().is_none_or(|(best, _)| live > *best) {
            dominant = Some((live, l));
        }
    }
    if let Some(m) = dominant.and_then(|(_, l)| reduce::MemoryOrder::of(&l, axes, true)) {
        let views: Vec<Data> = inputs.iter().map(|d| m.view(d, &view_as(d, shape))).collect();
        let space: Vec<usize> = m.perm.iter().map(|&a| shape[a]).collect();
        let outs = run_reduce(g, &views.iter().collect::<Vec<_>>(), &space, reductions, &m.axes)?;
        let kept: Vec<usize> = (0..shape.len()).filter(|a| !axes.contains(a)).map(|a| shape[a]).collect();
        return outs.into_iter().map(|d| Ok(Data::contiguous(m.restore(d.buffer())?, &kept))).collect();
    }
    let nd = shape.len();
    let kept = || (0..nd).filter(|a| !axes.contains(a));
    let perm: crate::layout::Dims = kept().chain(axes.iter().copied()).collect();
    let mut loads = Loads::new();
    loads.extend(inputs.iter().map(|d| plan_load(d.buffer(), &view_as(d, shape).permute(&perm))));
    let out_shape: crate::layout::Dims = kept().map(|a| shape[a]).collect();
    let n_out = crate::shape::numel(&out_shape);
    let n_red = crate::shape::numel(&axes.iter().map(|&a| shape[a]).collect::<crate::layout::Dims>());
    // Outputs and partial results are allocated deep inside: check first.
    crate::memory::check_alloc("reduce", n_out.saturating_mul(8 * reductions.len().max(1)))?;
    // Reductions of the inputs themselves (siblings such as max and sumexp
    // of x) read them in place, each with the reduction kernel's own walk.
    if let Some(regs) = g.outputs.iter().map(|&r| copied_input(g, r)).collect::<Option<Vec<usize>>>() {
        let value = |o: usize| {
            let d = inputs[regs[o]];
            d.view(view_as(d, shape).into_owned())
        };
        return reduce_values(reductions, axes, &out_shape, |o| regs[o], value);
    }
    if let Some(bufs) = fold_columns(g, inputs, shape, axes, reductions)? {
        return Ok(bufs.into_iter().map(|b| Data::contiguous(b, &out_shape)).collect());
    }
    // Any other reduction over axes that are not innermost, in a space
    // larger than the caches: the tiles below would read the inputs
    // across their layout. The group's values are made whole in their own
    // order and reduced as eager reduces them (its bits, its speed).
    if reduced_suffix(axes, nd).is_none() && n_out * n_red >= crate::backend::cpu::blocked::MIN_BLOCKED {
        WHOLE_RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let made = crate::backend::cpu::fused::run(g, inputs, shape)?;
        return reduce_values(reductions, axes, &out_shape, |o| o, |o| made[o].clone());
    }
    // An input read across its layout in any order (`x + x.t()` summed
    // over rows): the tiles would read it a line per element, where making
    // the values whole reads it block by block (as eager does, and with
    // its bits).
    let views: Vec<std::borrow::Cow<crate::layout::Layout>> = inputs.iter().map(|d| view_as(d, shape)).collect();
    let sizes: Vec<usize> = inputs.iter().map(|d| d.dtype().size()).collect();
    let refs: Vec<&crate::layout::Layout> = views.iter().map(|v| v.as_ref()).collect();
    if crate::backend::cpu::blocked::Blocks::plan(shape, &refs, &sizes).is_some() {
        WHOLE_RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let made = crate::backend::cpu::fused::run(g, inputs, shape)?;
        return reduce_values(reductions, axes, &out_shape, |o| o, |o| made[o].clone());
    }
    if let Some(bufs) = fold_rows(g, &loads, n_out, n_red, reductions) {
        return Ok(bufs.into_iter().map(|b| Data::contiguous(b, &out_shape)).collect());
    }
    let out_dtypes: Vec<DType> = reductions.iter().map(|&(op, i)| op.out_dtype(g.reg_dtype(g.outputs[i]))).collect();
    // The group's outputs for positions `lo..hi` of the permuted space, as `rows` rows.
    let produce = |lo: usize, hi: usize, rows: usize| -> crate::Result<Vec<Data>> {
        let (mut scratch, ptrs) = alloc_outputs(g, hi - lo)?;
        exec_range(g, &loads, lo, hi, &ptrs);
        finish_outputs(&mut scratch, hi - lo);
        let row = (hi - lo).checked_div(rows).unwrap_or(n_red);
        Ok(scratch.into_iter().map(|b| Data::contiguous(b, &[rows, row])).collect())
    };
    let fold = |op: ReduceOp, d: &Data| reduce::reduce(op, d, &[1], op.out_dtype(d.buffer().dtype()));
    let bufs: Vec<Buffer> = if n_red <= REDUCE_CHUNK || n_out == 0 {
        let rows = (REDUCE_CHUNK / n_red.max(1)).max(1);
        let chunks = n_out.div_ceil(rows).max(1);
        let part = |c: usize| -> crate::Result<Vec<Buffer>> {
            let (o0, o1) = (c * rows, ((c + 1) * rows).min(n_out));
            let vals = produce(o0 * n_red, o1 * n_red, o1 - o0)?;
            reductions.iter().map(|&(op, i)| fold(op, &vals[i])).collect()
        };
        let parts: Vec<Vec<Buffer>> = if n_out * n_red < PAR_THRESHOLD {
            (0..chunks).map(part).collect::<crate::Result<_>>()?
        } else {
            team::map(chunks, part).into_iter().collect::<crate::Result<_>>()?
        };
        (0..reductions.len()).map(|k| reduce::concat(parts.iter().map(|p| &p[k]), out_dtypes[k])).collect()
    } else {
        // Few outputs, long reductions: partial results over the nodes of the
        // row's pairwise tree (of at most `REDUCE_CHUNK` elements, whatever
        // the thread count), combined along that tree: the order of the
        // reduction kernel over the whole row.
        let nodes = reduce::tree_chunks(n_red, REDUCE_CHUNK);
        let mut finals: Vec<Vec<Buffer>> = vec![vec![]; reductions.len()];
        for o in 0..n_out {
            let mut partials: Vec<Vec<reduce::Partial>> = team::map(nodes.len(), |c| {
                let (lo, hi) = (o * n_red + nodes[c].start, o * n_red + nodes[c].end);
                let vals = produce(lo, hi, 1)?;
                reductions.iter().map(|&(op, i)| partial(op, &vals[i])).collect()
            })
            .into_iter()
            .collect::<crate::Result<_>>()?;
            for (k, &(op, _)) in reductions.iter().enumerate().rev() {
                let parts = partials.iter_mut().map(|p| p.pop().expect("one partial per reduction")).collect();
                finals[k].push(reduce::combine_partials(op, parts, n_red, REDUCE_CHUNK, out_dtypes[k])?);
            }
        }
        finals.iter().zip(&out_dtypes).map(|(f, &dt)| reduce::concat(f.iter(), dt)).collect()
    };
    Ok(bufs.into_iter().map(|b| Data::contiguous(b, &out_shape)).collect())
}

/// Reductions of values made block by block, each folded by the thread
/// that made the block while the block is in its core's cache: a matrix
/// product's output, say, reduced as the product computes it
/// ([`crate::backend::cpu::matmul::f32_row_blocks`]), instead of in a pass
/// of its own that reads the blocks back from the other cores' caches.
///
/// `inputs` are the group's inputs, `None` for the one `produce` makes;
/// `produce(then)` runs `then(start, len, block, at)` for blocks of whole
/// rows of `shape` (the row-major iteration space, at least 2-D) that tile
/// it, the values at positions `start..start + len` being `block[at..at +
/// len]`, and returns `false` if it computed nothing. The reduced axes are a suffix of the
/// space: either the last axis alone (each block's rows are folded whole,
/// `fold_rows`' fold per row) or at least the last two (a block lies in
/// one output position; each block's fold is a partial, and the partials
/// of one position combine in the order of the blocks, as
/// `reduce::combine_f32`). The same conditions as `fold_rows` apply
/// (`f32` sums, means, maxima and minima). `None`, with `produce` not
/// called, where they do not hold.
pub fn reduce_blocks(
    g: &CpuGroup,
    inputs: &[Option<&Data>],
    shape: &[usize],
    reductions: &[(ReduceOp, usize)],
    axes: &[usize],
    produce: impl FnOnce(&crate::backend::cpu::matmul::Then<'_>) -> crate::Result<bool>,
) -> crate::Result<Option<Outs>> {
    let nd = shape.len();
    let total: usize = shape.iter().product();
    let made = inputs.iter().filter(|d| d.is_none()).count();
    let Some(first) = reduced_suffix(axes, nd) else { return Ok(None) };
    if nd < 2 || total == 0 || !folds(g, reductions) || made != 1 || inputs.len() != g.inputs.len() {
        return Ok(None);
    }
    let n_red: usize = shape[first..].iter().product();
    let n_out = total / n_red;
    let cols = shape[nd - 1];
    // A block lies in one output position when the last two axes are reduced;
    // its fold is a partial there (a mean's a sum, divided at the end).
    let whole = first + 2 <= nd;
    let ops: SmallVec<[(ReduceOp, usize); MAX_FOLDS]> =
        reductions.iter().map(|&(op, i)| (if whole && op == ReduceOp::Mean { ReduceOp::Sum } else { op }, i)).collect();
    let views: SmallVec<[Option<crate::layout::Layout>; INLINE]> =
        inputs.iter().map(|d| d.map(|d| view_as(d, shape).into_owned())).collect();
    let found: std::sync::Mutex<Vec<(usize, Vec<Vec<f32>>)>> = std::sync::Mutex::new(Vec::new());
    let then = |start: usize, len: usize, block: &Buffer, at: usize| {
        let mut loads = Loads::new();
        for (d, l) in inputs.iter().zip(&views) {
            loads.push(match (d, l) {
                (Some(d), Some(l)) => plan_load(d.buffer(), &rows_of(l, shape, start, len)),
                _ => Load::InPlace(block, at),
            });
        }
        let vals = if whole {
            fold_row_range(g, &loads, 0, 1, len, &ops)
        } else {
            fold_row_range(g, &loads, 0, len / cols, cols, &ops)
        };
        found.lock().unwrap_or_else(|e| e.into_inner()).push((start, vals));
    };
    if !produce(&then)? {
        return Ok(None);
    }
    let mut found = found.into_inner().unwrap_or_else(|e| e.into_inner());
    found.sort_unstable_by_key(|f| f.0);
    let mut out: Vec<Vec<f32>> = reductions.iter().map(|_| Vec::with_capacity(n_out)).collect();
    for (start, vals) in found {
        for ((o, &(op, _)), v) in out.iter_mut().zip(&ops).zip(vals) {
            if !whole {
                o.extend(v);
            } else if o.len() > start / n_red {
                let last = o.last_mut().expect("a partial is there");
                *last = reduce::combine_f32(op, *last, v[0]);
            } else {
                o.push(v[0]);
            }
        }
    }
    let mut outs = Outs::new();
    for (mut o, &(op, _)) in out.into_iter().zip(reductions) {
        if o.len() != n_out {
            return Err(crate::Error::Invalid { op: "reduce", msg: "the blocks did not cover the values".into() });
        }
        if whole && op == ReduceOp::Mean {
            o.iter_mut().for_each(|v| *v /= n_red as f32);
        }
        outs.push(Data::contiguous(Buffer::from_vec(o), &[n_out]));
    }
    Ok(Some(outs))
}

/// The group input that register `r` copies (a cast to the input's own
/// dtype: how a reduction of an input itself is planned), if it does.
pub(super) fn copied_input(g: &CpuGroup, r: usize) -> Option<usize> {
    let op = g.ops.get(r.checked_sub(g.inputs.len())?)?;
    let src = *op.args.first()?;
    (matches!(op.prim, Primitive::AsType(d) if d == g.reg_dtype(src)) && src < g.inputs.len()).then_some(src)
}

/// Most reductions [`fold_rows`] folds together.
const MAX_FOLDS: usize = 8;

/// Whether [`fold_rows`]' fold takes these reductions of `g`'s outputs:
/// at most [`MAX_FOLDS`], each an `f32` sum, mean, maximum or minimum of
/// a value the group computes (not one of its inputs).
pub(super) fn folds(g: &FusedGroup, reductions: &[(ReduceOp, usize)]) -> bool {
    let n_in = g.inputs.len();
    reductions.len() <= MAX_FOLDS
        && reductions.iter().all(|&(op, i)| {
            matches!(op, ReduceOp::Sum | ReduceOp::Mean | ReduceOp::Max | ReduceOp::Min)
                && g.outputs[i] >= n_in
                && g.reg_dtype(g.outputs[i]) == DType::F32
        })
}

/// The first reduced axis when `axes` are the last axes of an `nd`-axis
/// space (at least one): what [`reduce_blocks`] folds.
pub(super) fn reduced_suffix(axes: &[usize], nd: usize) -> Option<usize> {
    let first = nd.checked_sub(axes.len())?;
    (!axes.is_empty() && axes.iter().copied().eq(first..nd)).then_some(first)
}

/// [`run_reduce`] when every reduction is a sum, mean, max or min of `f32`
/// values (`n_out` rows of `n_red`, reduced positions innermost): the group
/// runs over as many whole rows as fill a tile, and each row folds from the
/// tile's register ([`reduce::fold_f32`]: the fold [`reduce::reduce`] runs
/// over a contiguous row). Rows longer than a tile are made leaf by leaf,
/// each leaf folded from its register while it is in L1, and the leaves
/// combined in that fold's order ([`reduce::fold_f32_leaves`]). No values
/// are stored: no scratch, no general reduction plan, which cost more than
/// the work (a sum of squares over rows of 4096 took 2.4-5.7x a plain row
/// sum through scratch). Runs of rows go to the [`team`] above
/// [`PAR_THRESHOLD`] positions; each row's fold is the same on any thread.
/// `None` when it does not apply.
fn fold_rows(
    g: &CpuGroup,
    loads: &[Load],
    n_out: usize,
    n_red: usize,
    reductions: &[(ReduceOp, usize)],
) -> Option<Vec<Buffer>> {
    let total = n_out.checked_mul(n_red)?;
    let n_in = g.inputs.len();
    if n_red == 0 || !folds(g, reductions) || g.outputs.iter().any(|&r| r < n_in) {
        return None;
    }
    let fold = |o0: usize, o1: usize| fold_row_range(g, loads, o0, o1, n_red, reductions);
    let cols: Vec<Vec<f32>> = if total < PAR_THRESHOLD {
        fold(0, n_out)
    } else {
        // Parts of whole rows, about `REDUCE_CHUNK` positions each.
        let rows = (REDUCE_CHUNK / n_red).clamp(1, n_out);
        let parts = team::map(n_out.div_ceil(rows), |c| fold(c * rows, ((c + 1) * rows).min(n_out)));
        (0..reductions.len()).map(|k| parts.iter().flat_map(|p| p[k].iter().copied()).collect()).collect()
    };
    Some(cols.into_iter().map(Buffer::from_vec).collect())
}

/// Each reduction `(op, o)` of `reductions` over `axes` of `value(o)`
/// (the value of group output `o`, over the group's space), in the
/// kept axes' shape `out_shape`. Reductions of one value (one `key(o)`)
/// run together: a statistic and the reduction it carries (softmax's max
/// and sumexp, layernorm's mean and var) take one pass.
fn reduce_values(
    reductions: &[(ReduceOp, usize)],
    axes: &[usize],
    out_shape: &[usize],
    key: impl Fn(usize) -> usize,
    value: impl Fn(usize) -> Data,
) -> crate::Result<Outs> {
    let mut out: Vec<Option<Data>> = reductions.iter().map(|_| None).collect();
    for &(_, o) in reductions {
        let mine: Vec<usize> = (0..reductions.len()).filter(|&k| key(reductions[k].1) == key(o)).collect();
        if out[mine[0]].is_some() {
            continue;
        }
        let ops: Vec<ReduceOp> = mine.iter().map(|&k| reductions[k].0).collect();
        for (k, b) in mine.into_iter().zip(reduce::reduce_many(&ops, &value(o), axes)?) {
            out[k] = Some(Data::contiguous(b, out_shape));
        }
    }
    Ok(out.into_iter().map(|o| o.expect("every reduction reads a value")).collect())
}

static WHOLE_RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Fused reductions over axes that are not innermost, of ops
/// `fold_columns` does not take, whose group's values were made whole
/// and reduced by the reduction kernel, so far in this process: for tests
/// and diagnostics.
pub fn whole_runs() -> usize {
    WHOLE_RUNS.load(std::sync::atomic::Ordering::Relaxed)
}

static COLUMN_RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Fused reductions run by `fold_columns` (over leading or middle axes,
/// in the group's own order) so far in this process: for tests and
/// diagnostics.
pub fn column_runs() -> usize {
    COLUMN_RUNS.load(std::sync::atomic::Ordering::Relaxed)
}

/// Most columns of one task of [`fold_columns`]: their accumulators stay
/// in L1 (32 KiB of them for one reduction), and a task whose strip is a
/// whole row reads its inputs in one run.
const STRIP: usize = 4 * TILE;

/// Rows of [`fold_columns`] folded into one partial, the partials of a
/// task then combined pairwise.
const CHUNK_ROWS: usize = 16;

/// Most tasks of [`fold_columns`] that split one strip's rows (fixed by
/// the shape, never by the thread count, so the result is too).
const ROW_GROUPS: usize = 8;

/// [`run_reduce`] when the reduced axes are a block followed by kept axes,
/// every reduction an `f32` sum, mean, maximum or minimum of a value the
/// group computes (`sum(exp(x), 0)`, a mean over the middle axis of
/// `(b, s, h)`): the space is viewed as `(b, r, k)`, `r` reduced, and the
/// group runs in its own row-major order, each run of up to [`STRIP`]
/// columns of a reduced row made tile by tile and folded into that
/// strip's accumulators, which stay in L1. Rows fold in order into a
/// partial per [`CHUNK_ROWS`] rows; the partials combine pairwise, in
/// order, within a task and then across the strip's tasks.
///
/// The other walk would put the reduced axes innermost, and so read every
/// input across its layout, a cache line per element: compiled
/// `sum(exp(x), 0)` ran ten times slower than eager, which makes `exp(x)`
/// whole and folds its rows in place. `None` where it does not apply.
fn fold_columns(
    g: &CpuGroup,
    inputs: &[&Data],
    shape: &[usize],
    axes: &[usize],
    reductions: &[(ReduceOp, usize)],
) -> crate::Result<Option<Vec<Buffer>>> {
    let (Some(&first), Some(&last)) = (axes.iter().min(), axes.iter().max()) else { return Ok(None) };
    let n_in = g.inputs.len();
    if last + 1 >= shape.len()
        || last + 1 - first != axes.len()
        || !folds(g, reductions)
        || g.outputs.iter().any(|&r| r < n_in)
    {
        return Ok(None);
    }
    let nb: usize = shape[..first].iter().product();
    let n_red: usize = shape[first..=last].iter().product();
    let n_k: usize = shape[last + 1..].iter().product();
    let total = nb.checked_mul(n_red).and_then(|t| t.checked_mul(n_k)).unwrap_or(0);
    if n_red < 2 || n_k < 2 || total == 0 {
        return Ok(None);
    }
    let (strips, chunks) = (n_k.div_ceil(STRIP), n_red.div_ceil(CHUNK_ROWS));
    let groups = chunks.min(ROW_GROUPS);
    // Each task's partials live until its strip combines them.
    let n_out = nb * n_k;
    let bytes = n_out.saturating_mul(groups * reductions.len() * std::mem::size_of::<f32>());
    crate::memory::check_alloc("reduce", bytes)?;
    COLUMN_RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let loads: Loads = inputs.iter().map(|d| plan_load(d.buffer(), &view_as(d, shape))).collect();
    let ops: SmallVec<[(ReduceOp, usize); MAX_FOLDS]> = reductions.iter().copied().collect();
    // Task `t`: batch `b`, strip `c`, rows of group `q`; its partials, per
    // reduction, for the strip's columns.
    let task = |t: usize| -> Vec<f32> {
        let (b, c, q) = (t / (strips * groups), t / groups % strips, t % groups);
        let (c0, w) = (c * STRIP, STRIP.min(n_k - c * STRIP));
        let rows = (q * chunks / groups * CHUNK_ROWS)..((q + 1) * chunks / groups * CHUNK_ROWS).min(n_red);
        fold_strip(g, &loads, total, &ops, rows, w, |r| (b * n_red + r) * n_k + c0)
    };
    let parts: Vec<Vec<f32>> = if total < PAR_THRESHOLD {
        (0..nb * strips * groups).map(task).collect()
    } else {
        team::map(nb * strips * groups, task)
    };
    let mut out: Vec<Vec<f32>> = ops.iter().map(|_| Vec::with_capacity(n_out)).collect();
    let mut parts = parts.into_iter();
    for j in 0..nb * strips {
        let w = STRIP.min(n_k - j % strips * STRIP);
        let acc = combine_partials(&ops, w, parts.by_ref().take(groups).collect());
        for (k, (o, &(op, _))) in out.iter_mut().zip(&ops).enumerate() {
            let vals = acc[k * w..(k + 1) * w].iter();
            o.extend(vals.map(|&v| if op == ReduceOp::Mean { v / n_red as f32 } else { v }));
        }
    }
    Ok(Some(out.into_iter().map(Buffer::from_vec).collect()))
}

/// The fold of one task of [`fold_columns`] on the calling thread: reduced
/// rows `rows`, `w` columns from position `at(r)` of row `r`; per
/// reduction, `w` accumulators (reduction `k` at `k * w`).
fn fold_strip(
    g: &CpuGroup,
    loads: &[Load],
    n: usize,
    ops: &[(ReduceOp, usize)],
    rows: std::ops::Range<usize>,
    w: usize,
    at: impl Fn(usize) -> usize,
) -> Vec<f32> {
    let no_stream = no_streams(g);
    let e = Exec::new(g, loads, n, &no_stream[..], None);
    let mut sc = e.scratch();
    // Compiled code writes its outputs through pointers: to these registers.
    let mut spill: Vec<Buffer> =
        if e.code.is_some() { g.outputs.iter().map(|&r| take_register(g.reg_dtype(r))).collect() } else { vec![] };
    let ptrs: Vec<OutPtr> = spill.iter_mut().map(out_ptr).collect();
    // Partials wait on a stack until their neighbour is done, as the two
    // halves of a node of the pairwise tree (at most `log2(chunks) + 1`
    // of them, their vectors reused).
    let mut stack: Vec<(u32, Vec<f32>)> = Vec::new();
    let mut spare: Vec<Vec<f32>> = Vec::new();
    for r0 in rows.clone().step_by(CHUNK_ROWS) {
        let mut acc = spare.pop().unwrap_or_default();
        acc.clear();
        for &(op, _) in ops {
            acc.resize(acc.len() + w, identity_f32(op));
        }
        for r in r0..(r0 + CHUNK_ROWS).min(rows.end) {
            for j in (0..w).step_by(TILE) {
                let (s, len) = (at(r) + j, TILE.min(w - j));
                let spilled = e.produce(&mut sc, s, len, &ptrs, s);
                for (k, &(op, i)) in ops.iter().enumerate() {
                    let reg = if spilled { &spill[i] } else { e.output(&sc, i) };
                    let vals = &f32::slice_of(reg).expect("f32 outputs (checked)")[..len];
                    fold_into(op, &mut acc[k * w + j..k * w + j + len], vals);
                }
            }
        }
        let mut level = 0;
        while stack.last().is_some_and(|(l, _)| *l == level) {
            let (_, mut low) = stack.pop().expect("a partial");
            combine_into(ops, w, &mut low, &acc);
            spare.push(std::mem::replace(&mut acc, low));
            level += 1;
        }
        stack.push((level, acc));
    }
    drop(sc);
    give_registers(spill.into_iter());
    // An incomplete tree: the last partials join from the right.
    let (_, mut acc) = stack.pop().unwrap_or_default();
    while let Some((_, mut low)) = stack.pop() {
        combine_into(ops, w, &mut low, &acc);
        acc = low;
    }
    acc
}

/// `a = combine(a, b)` for every reduction's `w` accumulators.
fn combine_into(ops: &[(ReduceOp, usize)], w: usize, a: &mut [f32], b: &[f32]) {
    for (k, &(op, _)) in ops.iter().enumerate() {
        fold_into(op, &mut a[k * w..(k + 1) * w], &b[k * w..(k + 1) * w]);
    }
}

/// The identity of an `f32` fold of `op` (a sum's is `-0`, so that a sum
/// of negative zeros stays negative, as the reduction kernel's does).
fn identity_f32(op: ReduceOp) -> f32 {
    match op {
        ReduceOp::Max => f32::NEG_INFINITY,
        ReduceOp::Min => f32::INFINITY,
        _ => -0.0,
    }
}

/// `acc[j] = combine(acc[j], vals[j])` for `op` ([`reduce::combine_f32`]),
/// in the vector code of the level `simd_math` detects (the crate's own
/// code is built for any x86-64, whose 4 lanes made this loop a third of
/// the time of `sum(x * x, 0)`).
fn fold_into(op: ReduceOp, acc: &mut [f32], vals: &[f32]) {
    assert_eq!(acc.len(), vals.len());
    #[cfg(target_arch = "x86_64")]
    {
        use crate::backend::cpu::simd_math::{detected_level, Level};
        match detected_level() {
            // SAFETY: the detected level says the CPU has AVX-512F.
            Level::Avx512 => return unsafe { x86::fold_into_avx512(op, acc, vals) },
            // SAFETY: the detected level says the CPU has AVX2.
            Level::Avx2 => return unsafe { x86::fold_into_avx2(op, acc, vals) },
            Level::Scalar => {}
        }
    }
    fold_into_generic(op, acc, vals)
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use crate::primitive::ReduceOp;

    /// [`super::fold_into`] compiled for AVX-512F.
    ///
    /// # Safety
    /// The CPU has AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn fold_into_avx512(op: ReduceOp, acc: &mut [f32], vals: &[f32]) {
        super::fold_into_generic(op, acc, vals)
    }

    /// [`super::fold_into`] compiled for AVX2.
    ///
    /// # Safety
    /// The CPU has AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn fold_into_avx2(op: ReduceOp, acc: &mut [f32], vals: &[f32]) {
        super::fold_into_generic(op, acc, vals)
    }
}

/// [`fold_into`]'s loops, one per op so that each vectorizes.
#[inline(always)]
fn fold_into_generic(op: ReduceOp, acc: &mut [f32], vals: &[f32]) {
    let pairs = acc.iter_mut().zip(vals);
    match op {
        ReduceOp::Max => pairs.for_each(|(a, &v)| *a = reduce::combine_f32(ReduceOp::Max, *a, v)),
        ReduceOp::Min => pairs.for_each(|(a, &v)| *a = reduce::combine_f32(ReduceOp::Min, *a, v)),
        _ => pairs.for_each(|(a, &v)| *a += v),
    }
}

/// The partials of a strip's tasks (`w` accumulators per reduction each)
/// combined pairwise, in order: neighbours first, then their results.
fn combine_partials(ops: &[(ReduceOp, usize)], w: usize, mut parts: Vec<Vec<f32>>) -> Vec<f32> {
    while parts.len() > 1 {
        let mut it = parts.into_iter();
        let mut next = Vec::new();
        while let Some(mut a) = it.next() {
            if let Some(b) = it.next() {
                combine_into(ops, w, &mut a, &b);
            }
            next.push(a);
        }
        parts = next;
    }
    parts.pop().unwrap_or_default()
}

/// [`fold_rows`] of rows `o0..o1` on the calling thread: per reduction, its
/// value for each row.
fn fold_row_range(
    g: &CpuGroup,
    loads: &[Load],
    o0: usize,
    o1: usize,
    n_red: usize,
    reductions: &[(ReduceOp, usize)],
) -> Vec<Vec<f32>> {
    let n_out = o1 - o0;
    let no_stream = no_streams(g);
    let e = Exec::new(g, loads, n_out * n_red, &no_stream[..], None);
    let mut sc = e.scratch();
    // Compiled code writes its outputs through pointers: to these registers.
    let mut spill: Vec<Buffer> =
        if e.code.is_some() { g.outputs.iter().map(|&r| take_register(g.reg_dtype(r))).collect() } else { vec![] };
    let spill_ptrs: Vec<OutPtr> = spill.iter_mut().map(out_ptr).collect();
    // Runs positions `s..s + len`; returns where output `k`'s values are.
    fn values<'s>(
        e: &'s Exec,
        sc: &'s mut Scratch,
        spill: &'s [Buffer],
        ptrs: &[OutPtr],
        s: usize,
        len: usize,
    ) -> impl Fn(usize) -> &'s [f32] {
        let spilled = e.produce(sc, s, len, ptrs, s);
        let sc: &'s Scratch = sc;
        move |k| {
            let reg = if spilled { &spill[k] } else { e.output(sc, k) };
            &f32::slice_of(reg).expect("f32 outputs (checked)")[..len]
        }
    }
    let finish = |op: ReduceOp, v: f32| if op == ReduceOp::Mean { v / n_red as f32 } else { v };
    let mut out: Vec<Vec<f32>> = reductions.iter().map(|_| Vec::with_capacity(n_out)).collect();
    if n_red <= TILE {
        // Whole rows per tile, each folded from the tile's register.
        let rows_per = TILE / n_red;
        for r0 in (o0..o1).step_by(rows_per) {
            let len = rows_per.min(o1 - r0) * n_red;
            let vals = values(&e, &mut sc, &spill, &spill_ptrs, r0 * n_red, len);
            for (&(op, i), o) in reductions.iter().zip(&mut out) {
                for row in vals(i).chunks_exact(n_red) {
                    o.push(finish(op, reduce::fold_f32(op, row)));
                }
            }
        }
    } else {
        // Longer rows: made leaf by leaf (a leaf fits a tile and L1) and
        // folded in the order of a contiguous row's fold.
        let combine = |a: [f32; MAX_FOLDS], b: [f32; MAX_FOLDS]| {
            std::array::from_fn(|k| reductions.get(k).map_or(0.0, |&(op, _)| reduce::combine_f32(op, a[k], b[k])))
        };
        for r in o0..o1 {
            let mut leaf = |off: usize, len: usize| {
                let vals = values(&e, &mut sc, &spill, &spill_ptrs, r * n_red + off, len);
                std::array::from_fn(|k| reductions.get(k).map_or(0.0, |&(op, i)| reduce::fold_f32(op, vals(i))))
            };
            let acc: [f32; MAX_FOLDS] = reduce::fold_f32_leaves(n_red, &mut leaf, &combine);
            for ((o, &(op, _)), v) in out.iter_mut().zip(reductions).zip(acc) {
                o.push(finish(op, v));
            }
        }
    }
    give_registers(spill.into_iter());
    out
}

/// Buffers of a group's outputs, and where each is written.
type Allocated = (SmallVec<[Buffer; INLINE]>, SmallVec<[OutPtr; INLINE]>);

/// Output buffers of `n` elements for each group output, and their pointers.
fn alloc_outputs(g: &CpuGroup, n: usize) -> crate::Result<Allocated> {
    let mut outs: SmallVec<[Buffer; INLINE]> =
        g.outputs.iter().map(|&r| crate::memory::take("fused", g.reg_dtype(r), n)).collect::<crate::Result<_>>()?;
    let ptrs = outs.iter_mut().map(out_ptr).collect();
    Ok((outs, ptrs))
}

/// Marks `n` elements of each output as written.
fn finish_outputs(outs: &mut [Buffer], n: usize) {
    for b in outs {
        // SAFETY: the caller ran `exec_range` over `0..n` of this buffer's
        // range, which wrote every element exactly once.
        crate::with_buffer!(b, v => unsafe { v.set_len(n) });
    }
}

/// The [`reduce::Partial`] of `op` over the single row `vals`, widened
/// first to the dtype the reduction accumulates in ([`reduce::acc_dtype`]:
/// `f32` for `f16`/`bf16`, `f64` for an integer mean), so that partials
/// neither round nor overflow where the reduction of the whole row would not.
fn partial(op: ReduceOp, vals: &Data) -> crate::Result<reduce::Partial> {
    let dt = vals.dtype();
    let acc = reduce::acc_dtype(op, dt);
    if acc == dt {
        return reduce::partial(op, vals);
    }
    reduce::partial(op, &run_single(&Primitive::AsType(acc), &[vals], &vals.layout().shape, acc)?)
}
