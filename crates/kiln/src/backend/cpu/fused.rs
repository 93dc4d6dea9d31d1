//! Launching a fused elementwise group: where its outputs go.
//!
//! Every run of a group goes through one entry point, `launch`: each output is written
//! into claimed rows of a row-blocked chain's sink, into the buffer of a
//! donated input (one held by no one else, contiguous over the iteration
//! space, of the output's dtype), or into a new buffer from the pool; then
//! the [tile interpreter](crate::backend::cpu::interpreter) runs the group
//! over the whole space. Eager elementwise ops run through here too, as
//! groups of one op ([`run_single`]), each kept per op and dtypes so that
//! its machine code is made once.

use crate::array::Data;
use crate::backend::cpu::blocked::Blocks;
use crate::backend::cpu::interpreter::{exec_range, out_ptr, plan_load, view_as, Exec, Load, Loads, OutPtr, INLINE};
use crate::backend::cpu::rows::Claimed;
use crate::backend::cpu::stream;
use crate::backend::cpu::{Buffer, CpuGroup};
use crate::dtype::DType;
use crate::layout::Layout;
use crate::passes::fuse::FusedGroup;
use crate::primitive::{BinaryOp, Primitive, UnaryOp};

use smallvec::SmallVec;
use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

/// The inputs of a fused launch ([`run_args`]): a few, kept inline so a
/// launch allocates no vector for them.
pub type Args<'a> = SmallVec<[Arg<'a>; INLINE]>;

/// The outputs of a launch ([`run_args`]): usually one or two, kept inline.
pub type Outs = SmallVec<[Data; 2]>;

/// Runs a fused group over `shape`, returning its outputs (contiguous).
pub fn run(g: &CpuGroup, inputs: &[&Data], shape: &[usize]) -> crate::Result<Outs> {
    run_args(g, inputs.iter().map(|d| Arg::Borrowed(d)).collect::<Args>(), shape)
}

/// An input of [`run_args`].
pub enum Arg<'a> {
    /// Read only.
    Borrowed(&'a Data),
    /// Given up by the caller: when its buffer is held by no one else, is
    /// contiguous over the whole iteration space and has an output's dtype,
    /// that output is written into it in place instead of a new allocation.
    Owned(Data),
}

impl Arg<'_> {
    /// The input's value.
    pub fn data(&self) -> &Data {
        match self {
            Arg::Borrowed(d) => d,
            Arg::Owned(d) => d,
        }
    }
}

/// Where a launch writes one output.
enum Dest {
    /// Into the buffer of donated input `j`.
    Donor(usize),
    /// Into a new buffer.
    Fresh(Buffer),
    /// Into claimed rows of a sink.
    Claimed,
}

/// The input (if any) of `args` that can receive output `dtype` over `shape`
/// in place, skipping inputs already taken by an earlier output (`dests`):
/// returns its index and buffer pointer.
fn find_donor(args: &mut [Arg], dtype: DType, shape: &[usize], n: usize, dests: &[Dest]) -> Option<(usize, OutPtr)> {
    args.iter_mut().enumerate().find_map(|(j, a)| match a {
        Arg::Owned(d)
            if !dests.iter().any(|t| matches!(t, Dest::Donor(x) if *x == j))
                && d.buffer().dtype() == dtype
                && d.buffer().len() == n
                && view_as(d, shape).contiguous_range() == Some(0..n) =>
        {
            Some((j, out_ptr(d.unique_buffer_mut()?)))
        }
        _ => None,
    })
}

/// Runs a fused group over `shape` like [`run`], writing outputs into
/// donated inputs' buffers where possible (see [`Arg::Owned`]).
///
/// In place is safe because a donor is read in place at exactly the
/// positions being computed: each tile reads all its inputs and runs every
/// op before it stores the tile's outputs, and tasks own disjoint ranges.
pub fn run_args<'a>(g: &CpuGroup, args: impl Into<Args<'a>>, shape: &[usize]) -> crate::Result<Outs> {
    let mut outs = Outs::new();
    launch(g, &mut args.into(), shape, &[], &mut outs)?;
    Ok(outs)
}

/// Runs a fused group over `shape` like [`run_args`], writing output `k`
/// into the claimed sink rows `into[k]` when given (it then returns `None`
/// for that output): a row-blocked chain writes its results in place. A
/// call with a non-empty `into` (claimed rows or not) is a block of such a
/// chain, so its compiled code also prefetches each input one block ahead
/// (the next block's rows follow this one's), and the next block's reads
/// overlap this one's work.
pub fn run_into<'a>(
    g: &CpuGroup,
    args: impl Into<Args<'a>>,
    shape: &[usize],
    into: &[Option<Claimed>],
) -> crate::Result<SmallVec<[Option<Data>; 2]>> {
    let mut outs = Outs::new();
    launch(g, &mut args.into(), shape, into, &mut outs)?;
    let mut outs = outs.into_iter();
    Ok((0..g.outputs.len())
        .map(|k| if into.get(k).is_some_and(|c| c.is_some()) { None } else { outs.next() })
        .collect())
}

/// [`run_into`] on vectors the caller holds: drains `args`, and pushes
/// onto `outs` each output not written into claimed rows, in order. The
/// per-call path of a compiled function launches through here: passing
/// these vectors by reference copies none of them.
pub(crate) fn launch(
    g: &CpuGroup,
    args: &mut Args,
    shape: &[usize],
    into: &[Option<Claimed>],
    outs: &mut Outs,
) -> crate::Result<()> {
    let n: usize = shape.iter().product();
    // Per output: where it goes, and the pointer the kernels write through.
    // (Vectors of a launch are filled in place: moving a `SmallVec` copies it.)
    let mut dests: SmallVec<[Dest; INLINE]> = SmallVec::new();
    let mut ptrs: SmallVec<[OutPtr; INLINE]> = SmallVec::new();
    for (k, &r) in g.outputs.iter().enumerate() {
        let dtype = g.reg_dtype(r);
        if let Some(Some(c)) = into.get(k) {
            assert!(c.dtype() == dtype && c.len() == n, "claimed rows match the output");
            dests.push(Dest::Claimed);
            ptrs.push(OutPtr(c.ptr()));
        } else if let Some((j, p)) = find_donor(args, dtype, shape, n, &dests) {
            dests.push(Dest::Donor(j));
            ptrs.push(p);
        } else {
            let op = if g.ops.len() == 1 { g.ops[0].prim.name() } else { "fused" };
            let mut b = crate::memory::take(op, dtype, n)?;
            ptrs.push(out_ptr(&mut b));
            dests.push(Dest::Fresh(b));
        }
    }
    {
        let views: SmallVec<[std::borrow::Cow<Layout>; INLINE]> =
            args.iter().map(|a| view_as(a.data(), shape)).collect();
        let mut loads = Loads::new();
        loads.extend(args.iter().zip(&views).map(|(a, v)| plan_load(a.data().buffer(), v)));
        // An elementwise kernel streams its outputs when what it reads and
        // writes would not stay in the last-level cache; a block of a row
        // chain streams an output whose destination (the whole sink, for
        // claimed rows) would not, with an input of its size (see `stream`).
        // (An elementwise launch's way is learned from its times: `StoreChoice`.)
        let mut stream: SmallVec<[bool; INLINE]> = SmallVec::new();
        let mut stores = None;
        if into.is_empty() {
            let read: usize = args.iter().map(|a| a.data().buffer().len().min(n) * a.data().dtype().size()).sum();
            let written: usize = g.outputs.iter().map(|&r| n * g.reg_dtype(r).size()).sum();
            // On the interpreter, a group's ops stand in for its vector operations.
            let ops = g.code.get(g).map_or(g.ops.len(), |c| c.vector_ops());
            let s = g.stores.choose(read + written, stream::streams(read + written, ops));
            stream.extend(std::iter::repeat_n(s.stream, g.outputs.len()));
            stores = Some(s);
        } else {
            stream.extend(g.outputs.iter().enumerate().map(|(k, &r)| {
                let dest = into.get(k).and_then(|c| c.as_ref()).map_or(n, |c| c.sink_len());
                stream::rows_stream(dest * g.reg_dtype(r).size())
            }));
        }
        // A block of a row-blocked chain (`into` is not empty):
        // compiled code prefetches its inputs one block ahead, so the next
        // block's rows arrive from memory while this one computes.
        let next_block = (!into.is_empty()).then(|| n * g.inputs.iter().map(|d| d.size()).max().unwrap_or(0));
        // An input read across its layout: blocks instead of rows.
        let blocks = (into.is_empty() && loads.iter().any(|l| matches!(l, Load::Strided { .. })))
            .then(|| {
                let ls: SmallVec<[&Layout; INLINE]> = views.iter().map(|v| v.as_ref()).collect();
                let sizes: SmallVec<[usize; INLINE]> = g.inputs.iter().map(|d| d.size()).collect();
                Blocks::plan(shape, &ls, &sizes)
            })
            .flatten();
        let start = stores.filter(|s| s.timed()).map(|_| std::time::Instant::now());
        if let Some(b) = blocks {
            let bufs: SmallVec<[&Buffer; INLINE]> = args.iter().map(|a| a.data().buffer()).collect();
            Exec::blocked(g, &bufs, &b).all_blocked(&b, &stream, &ptrs);
        } else {
            Exec::new(g, &loads[..], n, &stream[..], next_block).all(n, &ptrs);
        }
        if let (Some(s), Some(t)) = (stores, start) {
            g.stores.report(s, t.elapsed());
        }
    }
    let mut owned: SmallVec<[Option<Data>; INLINE]> = SmallVec::new();
    owned.extend(args.drain(..).map(|a| match a {
        Arg::Owned(d) => Some(d),
        Arg::Borrowed(_) => None,
    }));
    for d in dests.drain(..) {
        match d {
            Dest::Donor(j) => {
                outs.push(owned[j].take().expect("each donor receives one output").relayout(Layout::contiguous(shape)))
            }
            Dest::Claimed => {}
            Dest::Fresh(mut b) => {
                // SAFETY: `all` ran over `0..n`, writing every element of
                // each output buffer exactly once.
                crate::with_buffer!(&mut b, v => unsafe { v.set_len(n) });
                outs.push(Data::contiguous(b, shape));
            }
        }
    }
    Ok(())
}

/// Runs `g` over `shape` block by block as `produce` makes its input 0 (a
/// matrix product's output: [`crate::backend::cpu::matmul::f32_row_blocks`]),
/// pushing its outputs onto `outs`. `produce(then)` calls `then(start, len,
/// block, at)`, from any thread of the team, once for each block of whole
/// rows of `shape`'s last dimension within one matrix of its last two:
/// input 0 at positions `start..start + len` is `block[at..at + len]`, and
/// the group runs over those positions right then, on that thread.
/// `others` are the group's inputs from 1 on.
///
/// Returns `false`, pushing nothing, when `produce` does (it took no
/// blocks) or when an output of `g` is one of its inputs.
pub(crate) fn launch_blocks(
    g: &CpuGroup,
    others: &[&Data],
    shape: &[usize],
    outs: &mut Outs,
    produce: impl FnOnce(&crate::backend::cpu::matmul::Then<'_>) -> crate::Result<bool>,
) -> crate::Result<bool> {
    let (n_in, nd) = (g.inputs.len(), shape.len());
    if nd < 2 || others.len() + 1 != n_in || g.outputs.iter().any(|&r| r < n_in) {
        return Ok(false);
    }
    let total: usize = shape.iter().product();
    let mut fresh: SmallVec<[Buffer; INLINE]> = SmallVec::new();
    let mut ptrs: SmallVec<[OutPtr; INLINE]> = SmallVec::new();
    for &r in &g.outputs {
        let op = if g.ops.len() == 1 { g.ops[0].prim.name() } else { "fused" };
        let mut b = crate::memory::take(op, g.reg_dtype(r), total)?;
        ptrs.push(out_ptr(&mut b));
        fresh.push(b);
    }
    let views: SmallVec<[Layout; INLINE]> = others.iter().map(|d| view_as(d, shape).into_owned()).collect();
    let sizes: SmallVec<[usize; INLINE]> = g.outputs.iter().map(|&r| g.reg_dtype(r).size()).collect();
    let then = |start: usize, len: usize, block: &Buffer, at: usize| {
        let mut loads = Loads::new();
        loads.push(Load::InPlace(block, at));
        loads.extend(others.iter().zip(&views).map(|(d, l)| plan_load(d.buffer(), &rows_of(l, shape, start, len))));
        // The outputs at the block's positions (in bounds: start + len <= total).
        let at: SmallVec<[OutPtr; INLINE]> =
            ptrs.iter().zip(&sizes).map(|(p, &size)| OutPtr(p.0.wrapping_add(start * size))).collect();
        exec_range(g, &loads, 0, len, &at);
    };
    if !produce(&then)? {
        return Ok(false);
    }
    for mut b in fresh {
        // SAFETY: the blocks cover every position of `shape` once, and the
        // group's run over each wrote every output element there.
        crate::with_buffer!(&mut b, v => unsafe { v.set_len(total) });
        outs.push(Data::contiguous(b, shape));
    }
    Ok(true)
}

/// Positions `start..start + len` of `l` over the row-major space `shape`:
/// whole rows of its last dimension within one matrix of its last two, as
/// a `rows x cols` layout.
pub(super) fn rows_of(l: &Layout, shape: &[usize], start: usize, len: usize) -> Layout {
    let nd = shape.len();
    let cols = shape[nd - 1];
    let (mut row, mut offset) = (start / cols, l.offset as isize);
    for d in (0..nd - 1).rev() {
        offset += (row % shape[d]) as isize * l.strides[d];
        row /= shape[d];
    }
    Layout {
        shape: [len / cols, cols].into_iter().collect(),
        strides: [l.strides[nd - 2], l.strides[nd - 1]].into_iter().collect(),
        offset: offset as usize,
    }
}

/// Runs one elementwise primitive eagerly, as a group of one op.
pub fn run_single(prim: &Primitive, inputs: &[&Data], shape: &[usize], dtype: DType) -> crate::Result<Data> {
    let ins: SmallVec<[DType; 3]> = inputs.iter().map(|d| d.dtype()).collect();
    let g = single_group(prim, ins, dtype);
    Ok(run(&g, inputs, shape)?.pop().expect("one output"))
}

/// An elementwise primitive as a key of [`single_group`]'s cache.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum SingleOp {
    Unary(UnaryOp),
    Binary(BinaryOp),
    Where,
    AsType(DType),
}

/// The group of one op that `prim` runs as eagerly over inputs of dtypes
/// `ins`: made once per op and dtypes in a process and kept, so that its
/// machine code and interpreter plan are made once, not on every call.
fn single_group(prim: &Primitive, ins: SmallVec<[DType; 3]>, out: DType) -> Arc<CpuGroup> {
    type Key = (SingleOp, SmallVec<[DType; 3]>, DType);
    static GROUPS: LazyLock<Mutex<HashMap<Key, Arc<CpuGroup>>>> = LazyLock::new(Default::default);
    let op = match *prim {
        Primitive::Unary(op) => SingleOp::Unary(op),
        Primitive::Binary(op) => SingleOp::Binary(op),
        Primitive::Where => SingleOp::Where,
        Primitive::AsType(d) => SingleOp::AsType(d),
        _ => return Arc::new(CpuGroup::new(FusedGroup::single(prim.clone(), ins.to_vec(), out))),
    };
    let mut groups = GROUPS.lock().unwrap_or_else(|e| e.into_inner());
    let g = groups
        .entry((op, ins, out))
        .or_insert_with_key(|(_, ins, _)| Arc::new(CpuGroup::new(FusedGroup::single(prim.clone(), ins.to_vec(), out))));
    g.clone()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::strided::{PAR_CHUNK, PAR_THRESHOLD};
    use crate::backend::cpu::tile::TILE;
    use std::sync::Arc;

    fn f32_data(vals: Vec<f32>, layout: Layout) -> Data {
        Data::from_parts(Arc::new(Buffer::from_vec(vals)), layout)
    }

    fn vec_ptr(d: &Data) -> *const f32 {
        d.buffer().as_slice::<f32>().expect("f32").as_ptr()
    }

    /// `tanh(a * b) + a` with `a` at argument 0 and `b` at argument 1.
    fn group() -> CpuGroup {
        CpuGroup::new(crate::backend::cpu::interpreter::tests::tanh_mul_add())
    }

    fn reference(a: &[f64], b: &[f64]) -> Vec<f64> {
        a.iter().zip(b).map(|(&x, &y)| (x * y).tanh() + x).collect()
    }

    fn assert_close(got: &[f32], want: &[f64]) {
        assert_eq!(got.len(), want.len());
        for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
            assert!((g as f64 - w).abs() <= 1e-5 * (1.0 + w.abs()), "element {i}: got {g}, want {w}");
        }
    }

    /// Sizes around the tile and the parallel threshold.
    fn sizes() -> Vec<usize> {
        vec![1, TILE - 1, TILE, TILE + 1, 3 * TILE + 5, PAR_THRESHOLD + 3, PAR_CHUNK * 3 + TILE / 2]
    }

    #[test]
    fn a_uniquely_owned_contiguous_input_receives_the_output_in_place() -> crate::Result<()> {
        for n in sizes() {
            let a: Vec<f32> = (0..n).map(|i| ((i * 37 % 101) as f32 - 50.0) / 17.0).collect();
            // `b` read backwards (negative stride) from a longer buffer.
            let b_buf: Vec<f32> = (0..n + 3).map(|i| ((i * 13 % 29) as f32 - 14.0) / 9.0).collect();
            let b_ref: Vec<f64> = (0..n).map(|i| b_buf[n + 2 - i] as f64).collect();
            let b = f32_data(b_buf, Layout { shape: vec![n].into(), strides: vec![-1].into(), offset: n + 2 });
            let want = reference(&a.iter().map(|&v| v as f64).collect::<Vec<_>>(), &b_ref);
            let a = f32_data(a, Layout::contiguous(&[n]));
            let before = vec_ptr(&a);
            let out = run_args(&group(), vec![Arg::Owned(a), Arg::Borrowed(&b)], &[n])?.pop().expect("one output");
            assert_eq!(vec_ptr(&out), before, "n = {n}: the output should reuse the donated buffer");
            assert_close(&out.to_vec::<f32>().expect("f32"), &want);
        }
        Ok(())
    }

    #[test]
    fn shared_or_strided_owned_inputs_are_not_overwritten() -> crate::Result<()> {
        let n = TILE + 1;
        let vals: Vec<f32> = (0..n).map(|i| i as f32 / n as f32 - 0.5).collect();
        let a = f32_data(vals.clone(), Layout::contiguous(&[n]));
        let keep = a.clone(); // a second holder: not donatable
        let b = f32_data(vec![2.5], Layout { shape: vec![n].into(), strides: vec![0].into(), offset: 0 });
        let want = reference(&vals.iter().map(|&v| v as f64).collect::<Vec<_>>(), &vec![2.5; n]);
        let out = run_args(&group(), vec![Arg::Owned(a), Arg::Borrowed(&b)], &[n])?.pop().expect("one output");
        assert_ne!(vec_ptr(&out), vec_ptr(&keep));
        assert_eq!(keep.to_vec::<f32>().expect("f32"), vals, "a shared input must be left intact");
        assert_close(&out.to_vec::<f32>().expect("f32"), &want);

        // A uniquely owned but transposed input: read through its strides, not overwritten.
        let (r, c) = (33, 40);
        let t_vals: Vec<f32> = (0..r * c).map(|i| (i % 23) as f32 / 7.0 - 1.5).collect();
        let t = f32_data(
            t_vals.clone(),
            Layout { shape: vec![c, r].into(), strides: vec![1, c as isize].into(), offset: 0 },
        );
        let t_ref: Vec<f64> = (0..c * r).map(|p| t_vals[(p % r) * c + p / r] as f64).collect();
        let b = f32_data(vec![-0.75], Layout { shape: vec![c, r].into(), strides: vec![0, 0].into(), offset: 0 });
        let want = reference(&t_ref, &vec![-0.75; r * c]);
        let before = vec_ptr(&t);
        let out = run_args(&group(), vec![Arg::Owned(t), Arg::Borrowed(&b)], &[c, r])?.pop().expect("one output");
        assert_ne!(vec_ptr(&out), before);
        assert_close(&out.to_vec::<f32>().expect("f32"), &want);
        Ok(())
    }
}
