//! Row kernels: a [row chain](crate::backend::cpu::row_chain) run one row
//! at a time through every one of its kernels, with its values in L1.
//!
//! Softmax, layernorm, rmsnorm and their kin are chains of a few kernels
//! over the same rows: reductions over the last axis and the elementwise
//! work that reads them. Block by block ([`row_chain`](crate::backend::cpu::row_chain)),
//! every kernel of a block pays a launch (plans, loads, scratch, a reduction
//! plan: a few microseconds) and passes over the block's values in L2. Here
//! a chain is planned for a call's shapes and input layouts (the plan is
//! kept for the next call with the same ones: [`PlanCache`]), and each
//! thread then takes a run of rows and, for each row, calls every step's
//! generated code
//! ([`jit`]) over that row and folds its
//! reductions from the row just written, still in L1. The per-row values of
//! the chain (a row's maximum, its mean and variance) are scalars the next
//! step's code loads once, as a broadcast input. Values that leave the
//! chain are written row by row into full-size outputs (with streaming
//! stores when large, as the tile executor writes them).
//!
//! A row of 64 values took some 90 ns on one thread, much of it outside
//! the arithmetic, so what a row costs besides that is planned per task:
//! each step's pointer lists are built once, its fixed pointers (scratch
//! rows, per-row values) written once, and only those that move from row
//! to row (sink rows, inputs from outside) rewritten per row, as a base
//! plus the row times a stride where the input's rows are evenly spaced;
//! a fold of a row no longer than one leaf calls the leaf's fold directly. (Rows
//! taken two or four at a time, each step over each of them in turn so
//! that one row's folds overlap the next's, ran no faster.)
//!
//! Results are those of the block-by-block run, bit for bit: each step
//! runs the same generated code (whose results are the interpreter's), and
//! each reduction is the fold that the reduction kernel runs over a
//! contiguous row (`reduce::reduce_row`). `KILN_ROW_KERNEL=0` (or
//! [`set_enabled`]) runs every chain block by block instead, to compare.
//!
//! A chain runs here when, at the call's shapes, every step iterates over
//! the same shape `[.., n]` (or over its rows, `[.., 1]`, for per-row
//! arithmetic such as `rsqrt(var + eps)`), every reduction reduces the last
//! axis only, every value is `f32` or every value is `f64` (the chain runs
//! in that dtype: scratch rows, generated code and folds), every group has
//! generated code, every
//! input from outside is read along its rows either in place or as one value
//! per row, and a row's values fit in L1 and L2; otherwise it runs block by
//! block.

use smallvec::SmallVec;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::array::Data;
use crate::backend::cpu::executable::CpuExecutable;
use crate::backend::cpu::fused_reduce::copied_input;
use crate::backend::cpu::jit::{self, InputSet, Variant};
use crate::backend::cpu::reduce::{self, RowFloat};
use crate::backend::cpu::row_chain::{space, Chain};
use crate::backend::cpu::rows::RowSink;
use crate::backend::cpu::{stream, team, CpuGroup};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::passes::fuse::Kernel;
use crate::primitive::{Primitive, ReduceOp};

/// Longest row run here (longer rows run block by block).
const MAX_ROW: usize = 1 << 14;

/// Most bytes of per-row scratch (rows of the chain's own values) a thread
/// keeps: they and the row being read stay in L1 and L2.
const MAX_SCRATCH_BYTES: usize = 256 << 10;

/// Bytes between the 4 KiB offsets of consecutive scratch rows (and of
/// the first from a page boundary): 5 cache lines.
const SKEW_BYTES: usize = 320;

/// Positions per parallel part, at least.
const PART_ELEMS: usize = 1 << 15;

/// Positions per part, at least, of a job too small for a part of
/// [`PART_ELEMS`] per thread.
const SMALL_PART_ELEMS: usize = 1 << 13;

/// Where a step reads a value for the current row.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Src {
    /// A row of the chain's own values: scratch row `k`.
    Row(usize),
    /// A row of the chain's own values that leaves it: the task's row of sink `k`.
    SinkRow(usize),
    /// A per-row value of the chain: scalar `k`.
    Scalar(usize),
    /// An input from outside the chain: `outside[k]`.
    Outside(usize),
}

/// Where a step writes a value for the current row.
#[derive(Clone, Copy, Debug)]
enum Dst {
    /// Scratch row `k`.
    Row(usize),
    /// The task's row of sink `k` (ordinary stores: the chain reads it again).
    SinkRow(usize),
    /// Scratch row `row`, then streamed to sink `sink` (read by no later step).
    Staged { row: usize, sink: usize },
    /// Scalar `k`, and the row's element of sink `sink` when it leaves the chain.
    Scalar(usize, Option<usize>),
}

/// An input from outside the chain, read row by row: value `value` of the
/// program, whose buffer each call binds.
struct Outside {
    value: usize,
    offset: isize,
    /// The leading (row) dimensions, collapsed, with their strides.
    dims: Vec<(usize, isize)>,
    /// 1: the row is read in place; 0: one value per row.
    inner: isize,
    /// Elements read per row: the step's row length in place, else 1.
    len: usize,
    /// Read in place from a buffer too large to stay in cache
    /// ([`stream::from_memory`]): code reading it prefetches the next row.
    from_memory: bool,
}

impl Outside {
    /// The element where row `r` starts (`r` below the row count: the
    /// outermost dimension takes what is left without a division, so a
    /// 2-D input's row costs no division at all).
    #[inline]
    fn at(&self, r: usize) -> usize {
        let mut rem = r;
        let mut off = self.offset;
        if let Some((&(_, outer), inner)) = self.dims.split_first() {
            for &(size, stride) in inner.iter().rev() {
                off += (rem % size) as isize * stride;
                rem /= size;
            }
            off += rem as isize * outer;
        }
        off as usize
    }

    /// Row `r` of `data` (this input's buffer): its `len` elements read in
    /// place, or its one value.
    #[inline]
    fn row<'d, T>(&self, data: &'d [T], r: usize) -> &'d [T] {
        let at = self.at(r);
        &data[at..at + self.len]
    }
}

/// One step, planned.
enum RowStep {
    /// Generated code over the row (`len` positions: the row, or one for a
    /// per-row step).
    Map { kernel: Arc<jit::Kernel>, ins: Vec<Src>, outs: Vec<Dst>, len: usize },
    /// Reductions of the row: each folds a row (an input, or a row the
    /// producer wrote first) into a per-row value.
    Fold { producer: Option<(Arc<jit::Kernel>, Vec<Src>, Vec<Dst>)>, folds: Vec<RowFold> },
}

/// One reduction of a row.
struct RowFold {
    op: ReduceOp,
    src: Src,
    dst: Dst,
    /// Where the mean of the same row goes, for a variance that computes
    /// it in the same fold.
    mean: Option<Dst>,
}

/// The folds of one step, the first mean of each row that a variance of
/// the same row folds taken out of the list and into that variance's fold
/// (the variance carries it, bit for bit the mean's own fold). Any other
/// mean of that row (one with other `keepdims`, say) stays a fold of its
/// own: each destination is written.
fn pair_means(folds: Vec<(ReduceOp, Src, Dst)>) -> Vec<RowFold> {
    let is_var = |o: ReduceOp| matches!(o, ReduceOp::Var { .. });
    let is_mean = |o: ReduceOp| o == ReduceOp::Mean;
    // The index of the first fold of `src` by an op that `want` picks.
    let first = |src: Src, want: fn(ReduceOp) -> bool| folds.iter().position(|&(o, s, _)| want(o) && s == src);
    let carried = |i: usize| {
        let (op, src, _) = folds[i];
        is_mean(op) && first(src, is_mean) == Some(i) && first(src, is_var).is_some()
    };
    (0..folds.len())
        .filter(|&i| !carried(i))
        .map(|i| {
            let (op, src, dst) = folds[i];
            let mean = if is_var(op) { first(src, is_mean).map(|j| folds[j].2) } else { None };
            RowFold { op, src, dst, mean }
        })
        .collect()
}

/// How a value of the chain is held per row.
#[derive(Clone, Copy)]
enum Held {
    /// A whole row (scratch or sink row).
    Row(Src),
    /// One value per row.
    Scalar(usize),
}

/// A chain planned for the shapes and input layouts of a call, kept for
/// the next call with the same ones (see [`PlanCache`]).
struct Plan {
    steps: Vec<RowStep>,
    outside: Vec<Outside>,
    rows: usize,
    n: usize,
    scratch_rows: usize,
    scalars: usize,
    /// Per escaping value: its sink's row length (`n` or 1).
    sink_len: Vec<usize>,
    /// Streamed sinks (large outputs written once).
    streamed: bool,
}

static RUNS: AtomicUsize = AtomicUsize::new(0);

/// Whether chains may run here; the environment variable
/// `KILN_ROW_KERNEL=0` turns it off from the start.
static ENABLED: std::sync::LazyLock<AtomicBool> =
    std::sync::LazyLock::new(|| AtomicBool::new(std::env::var("KILN_ROW_KERNEL").map_or(true, |v| v != "0")));

/// Lets chains run row by row (the default) or not (block by block, as
/// before): for measurements and tests, which compare the two.
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// Whether chains run row by row where they can (see [`set_enabled`]).
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Chains run row by row so far in this process: for tests and diagnostics.
pub fn runs() -> usize {
    RUNS.load(Ordering::Relaxed)
}

static PLANS: AtomicUsize = AtomicUsize::new(0);

/// Plans made so far in this process (a call that found its chain's plan
/// kept makes none; see [`PlanCache`]): for tests and diagnostics.
pub fn plans() -> usize {
    PLANS.load(Ordering::Relaxed)
}

/// The plan of a chain's last call, kept for the next call with the same
/// shapes and input layouts. Planning (each step's sources and
/// destinations, the generated code for them, the outside inputs' row
/// layouts, some dozens of small allocations) cost more than a small
/// call's rows: under callgrind, some 14,000 of the 21,000 instructions a
/// compiled layernorm over one row of 1024 ran in the row kernel. A call
/// with other shapes plans anew and keeps its own plan; a call on another
/// thread while the plan is taken plans for itself. The key holds all
/// that the plan's reads rest on (each outside input's layout and buffer
/// length, which planning checked against each other), so a kept plan
/// reads inside a matching call's buffers as a new one would.
#[derive(Default)]
pub struct PlanCache(Mutex<Option<(Plan, Vec<usize>)>>);

impl Clone for PlanCache {
    /// An empty cache: a copy of a chain plans on its first call.
    fn clone(&self) -> Self {
        PlanCache::default()
    }
}

impl std::fmt::Debug for PlanCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PlanCache")
    }
}

impl PlanCache {
    /// Takes the kept plan and its key if `matches` the key.
    fn take(&self, matches: impl FnOnce(&[usize]) -> bool) -> Option<(Plan, Vec<usize>)> {
        let mut kept = self.0.try_lock().ok()?;
        if kept.as_ref().is_some_and(|(_, key)| matches(key)) {
            kept.take()
        } else {
            None
        }
    }

    /// Keeps `plan`, made for a call whose [`visit_key`] gave `key`.
    fn keep(&self, plan: Plan, key: Vec<usize>) {
        if let Ok(mut kept) = self.0.try_lock() {
            *kept = Some((plan, key));
        }
    }
}

/// Everything of a call that [`plan`] reads, in a fixed order: the
/// streaming threshold, and for each step its iteration space and, for
/// each of its inputs and outputs, the shape and, where the value comes
/// from outside the chain, its layout and buffer length (`T` elements).
fn visit_key<'a, T: RowFloat, S: AsRef<[usize]> + ?Sized + 'a>(
    exe: &CpuExecutable,
    chain: &Chain,
    values: &[Option<Data>],
    shape_of: &impl Fn(usize) -> &'a S,
    f: &mut impl FnMut(usize),
) {
    let list = |f: &mut dyn FnMut(usize), xs: &mut dyn Iterator<Item = usize>| {
        let at = xs.size_hint().0;
        f(at);
        xs.for_each(f);
    };
    f(stream::stream_min_working_set());
    for st in &exe.steps[chain.steps.clone()] {
        list(f, &mut space(st, shape_of).iter().copied());
        for &v in st.inputs.iter().chain(&st.outputs) {
            list(f, &mut shape_of(v).as_ref().iter().copied());
            match &values[v] {
                None => f(0),
                Some(d) => {
                    let l = d.layout();
                    f(1);
                    f(l.offset);
                    list(f, &mut l.shape.iter().copied());
                    list(f, &mut l.strides.iter().map(|&s| s as usize));
                    f(T::slice_of(d.buffer()).map_or(usize::MAX, <[T]>::len));
                }
            }
        }
    }
}

/// Whether this call's [`visit_key`] is `key`.
fn same_key<'a, T: RowFloat, S: AsRef<[usize]> + ?Sized + 'a>(
    exe: &CpuExecutable,
    chain: &Chain,
    values: &[Option<Data>],
    shape_of: &impl Fn(usize) -> &'a S,
    key: &[usize],
) -> bool {
    let (mut at, mut same) = (0, true);
    visit_key::<T, S>(exe, chain, values, shape_of, &mut |x| {
        same &= key.get(at) == Some(&x);
        at += 1;
    });
    same && at == key.len()
}

/// Runs `chain` row by row if it can (see the module docs), storing the
/// escaping values in `values`; `Ok(false)` means it did not apply.
pub fn run<'a, S: AsRef<[usize]> + ?Sized + 'a>(
    exe: &CpuExecutable,
    chain: &Chain,
    values: &mut [Option<Data>],
    shape_of: &(impl Fn(usize) -> &'a S + Sync),
) -> Result<bool> {
    let p = &exe.program;
    let first = exe.steps[chain.steps.start].outputs.first().map(|&v| p.instrs[v].dtype);
    match first {
        Some(DType::F32) => run_in::<f32, S>(exe, chain, values, shape_of),
        Some(DType::F64) => run_in::<f64, S>(exe, chain, values, shape_of),
        _ => Ok(false),
    }
}

/// [`run`] for a chain whose values are all `T`.
fn run_in<'a, T: RowFloat, S: AsRef<[usize]> + ?Sized + 'a>(
    exe: &CpuExecutable,
    chain: &Chain,
    values: &mut [Option<Data>],
    shape_of: &(impl Fn(usize) -> &'a S + Sync),
) -> Result<bool> {
    if !jit::enabled() || !enabled() {
        return Ok(false);
    }
    let cached = chain.plans.take(|key| same_key::<T, S>(exe, chain, values, shape_of, key));
    let (plan, key) = match cached {
        Some(c) => c,
        None => {
            let Some(plan) = plan::<T, S>(exe, chain, values, shape_of) else { return Ok(false) };
            PLANS.fetch_add(1, Ordering::Relaxed);
            let mut key = Vec::new();
            visit_key::<T, S>(exe, chain, values, shape_of, &mut |x| key.push(x));
            (plan, key)
        }
    };
    let (rows, n) = (plan.rows, plan.n);
    let sinks: Vec<RowSink> =
        plan.sink_len.iter().map(|&len| RowSink::new(T::DTYPE, rows, len)).collect::<Result<_>>()?;
    {
        // This call's buffers of the outside inputs (of the dtype and
        // extent the plan was made for: the key compares them).
        let data: Option<SmallVec<[&[T]; 8]>> =
            plan.outside.iter().map(|o| values[o.value].as_ref().and_then(|d| T::slice_of(d.buffer()))).collect();
        let Some(data) = data else { return Ok(false) };
        RUNS.fetch_add(1, Ordering::Relaxed);
        let per_part = rows_per_part(rows, n, team::threads());
        let parts = rows.div_ceil(per_part);
        let run_part = |c: usize| run_rows(&plan, &data, &sinks, c * per_part, ((c + 1) * per_part).min(rows));
        if parts <= 1 {
            run_part(0);
        } else {
            team::map(parts, run_part);
        }
    }
    chain.plans.keep(plan, key);
    for (&v, sink) in chain.escapes.iter().zip(sinks) {
        let buf = sink.finish().ok_or(Error::Invalid { op: "compile", msg: "a row was not computed".into() })?;
        values[v] = Some(Data::contiguous(buf, shape_of(v).as_ref()));
    }
    Ok(true)
}

/// Rows per parallel part of a run over `rows` rows of `n` positions on
/// `threads` threads. A run with a part of [`PART_ELEMS`] for every thread
/// splits into parts of at least that many positions, up to eight per
/// thread (so that threads that finish early take more); a smaller one
/// into at most one part per thread of at least [`SMALL_PART_ELEMS`]. On
/// two threads a layernorm over 64 rows of 1024 is two parts either way;
/// on a 16-core host it was two parts of 32 rows, and eight parts of 8
/// rows ran it faster (and sixteen over 256 rows; bench/README.md). More
/// parts than threads only add each part's fixed cost (smaller parts for
/// every run were slower on two threads). One part per thread where the
/// shares fit the L2s, as elementwise kernels split
/// ([`team::cached_parts`]), was no gain here on the 16-core host: over
/// 1024 rows of 1024 on 16 threads 60.9 and 39.6 us against 53.2 and
/// 47.7, over 4096 rows and on 8 threads 2-3% slower.
fn rows_per_part(rows: usize, n: usize, threads: usize) -> usize {
    let work = rows.saturating_mul(n);
    if work < PART_ELEMS.saturating_mul(threads) {
        let parts = (work / SMALL_PART_ELEMS).clamp(1, threads.max(1));
        rows.div_ceil(parts).max(1)
    } else {
        PART_ELEMS.div_ceil(n.max(1)).max(rows.div_ceil(8 * threads.max(1)))
    }
}

/// True when `shape`, padded with leading ones to `want`'s length, is `want`.
fn padded_is(shape: &[usize], want: &[usize]) -> bool {
    want.len().checked_sub(shape.len()).is_some_and(|pad| want[..pad].iter().all(|&d| d == 1) && want[pad..] == *shape)
}

/// The state of [`plan`]: where each value of the chain is held, and the
/// inputs from outside read so far.
struct Planner<'c> {
    chain: &'c Chain,
    /// Each value held so far, and where (a chain has a few dozen values
    /// at most: a list searched in order beats hashing them on every call).
    held: SmallVec<[(usize, Held); 16]>,
    /// Each outside value read so far (and whether by a per-row step): its
    /// index in `out.outside`.
    outside_at: SmallVec<[((usize, bool), usize); 8]>,
    full: Vec<usize>,
    per_row: Vec<usize>,
    /// Bytes per element.
    size: usize,
    /// The plan being made (its steps are added last).
    out: Plan,
}

impl Planner<'_> {
    /// Where a step over `sp` reads value `v` of shape `shape` (`data` when
    /// it comes from outside the chain), or `None` when it cannot.
    fn read<T: RowFloat>(&mut self, v: usize, shape: &[usize], data: Option<&Data>, sp: &[usize]) -> Option<Src> {
        let nd = self.full.len();
        if let Some(&(_, h)) = self.held.iter().find(|(u, _)| *u == v) {
            return match h {
                Held::Row(src) if padded_is(shape, &self.full) && sp == self.full.as_slice() => Some(src),
                Held::Scalar(k) if padded_is(shape, &self.per_row) => Some(Src::Scalar(k)),
                _ => None,
            };
        }
        let per_row_step = sp != self.full.as_slice();
        if let Some(&(_, k)) = self.outside_at.iter().find(|(key, _)| *key == (v, per_row_step)) {
            return Some(Src::Outside(k));
        }
        let d = data?;
        let values = T::slice_of(d.buffer())?;
        let l = d.layout();
        if l.shape.len() > nd || !l.fits(values.len()) {
            return None;
        }
        let l = l.broadcast_to(sp);
        let inner = if sp[nd - 1] == 1 { 1 } else { l.strides[nd - 1] };
        if inner != 0 && inner != 1 {
            return None;
        }
        let (dims, strides) = crate::layout::collapse(&l.shape[..nd - 1], &[&l.strides[..nd - 1]]);
        let dims = dims.into_iter().zip(strides.into_iter().next().unwrap_or_default()).collect();
        let len = if inner == 1 { sp[nd - 1] } else { 1 };
        let from_memory = inner == 1 && stream::from_memory(size_of_val(values));
        self.out.outside.push(Outside { value: v, offset: l.offset as isize, dims, inner, len, from_memory });
        self.outside_at.push(((v, per_row_step), self.out.outside.len() - 1));
        Some(Src::Outside(self.out.outside.len() - 1))
    }

    /// The sink of value `v` when it leaves the chain.
    fn escape_at(&self, v: usize) -> Option<usize> {
        self.chain.escapes.iter().position(|&e| e == v)
    }

    /// A new scratch row.
    fn scratch_row(&mut self) -> usize {
        self.out.scratch_rows += 1;
        self.out.scratch_rows - 1
    }

    /// Where a step writes the row value `v`: a sink row when it escapes
    /// (staged in scratch and streamed when no later step reads it and it
    /// is large), else scratch.
    fn write_row(&mut self, v: usize) -> Dst {
        let dst = match self.escape_at(v) {
            Some(k) => {
                self.out.sink_len[k] = self.out.n;
                let big = stream::rows_stream((self.out.rows * self.out.n).saturating_mul(self.size));
                if self.chain.write_through[k] && big {
                    self.out.streamed = true;
                    Dst::Staged { row: self.scratch_row(), sink: k }
                } else {
                    Dst::SinkRow(k)
                }
            }
            None => Dst::Row(self.scratch_row()),
        };
        let src = match dst {
            Dst::SinkRow(k) => Src::SinkRow(k),
            Dst::Row(k) | Dst::Staged { row: k, .. } => Src::Row(k),
            Dst::Scalar(..) => unreachable!("a row value"),
        };
        self.held.push((v, Held::Row(src)));
        dst
    }

    /// Where a step writes the per-row value `v`.
    fn write_scalar(&mut self, v: usize) -> Dst {
        let sink = self.escape_at(v);
        if let Some(k) = sink {
            self.out.sink_len[k] = 1;
        }
        self.out.scalars += 1;
        self.held.push((v, Held::Scalar(self.out.scalars - 1)));
        Dst::Scalar(self.out.scalars - 1, sink)
    }
}

/// True for the reductions a row fold computes (`reduce::reduce_row`).
fn foldable(op: ReduceOp) -> bool {
    !matches!(op, ReduceOp::Prod | ReduceOp::All | ReduceOp::Any)
}

/// Plans `chain` for the call's shapes, or `None` when it does not run here.
fn plan<'a, T: RowFloat, S: AsRef<[usize]> + ?Sized + 'a>(
    exe: &CpuExecutable,
    chain: &Chain,
    values: &[Option<Data>],
    shape_of: &impl Fn(usize) -> &'a S,
) -> Option<Plan> {
    let p = &exe.program;
    let steps = &exe.steps[chain.steps.clone()];
    let full = steps.iter().map(|st| space(st, shape_of)).max_by_key(|s| s.iter().product::<usize>())?.to_vec();
    let nd = full.len();
    let n = *full.last()?;
    let rows: usize = full[..nd - 1].iter().product();
    if !(2..=MAX_ROW).contains(&n) || rows == 0 {
        return None;
    }
    let typed = |v: usize| p.instrs[v].dtype == T::DTYPE;
    let mut pl = Planner {
        chain,
        held: SmallVec::new(),
        outside_at: SmallVec::new(),
        per_row: full[..nd - 1].iter().copied().chain([1]).collect(),
        full,
        size: size_of::<T>(),
        out: Plan {
            steps: vec![],
            outside: vec![],
            rows,
            n,
            scratch_rows: 0,
            scalars: 0,
            sink_len: vec![0; chain.escapes.len()],
            streamed: false,
        },
    };
    let mut planned = vec![];
    for st in steps {
        let sp = space(st, shape_of);
        if sp.len() != nd || sp[..nd - 1] != pl.full[..nd - 1] || (sp[nd - 1] != n && sp[nd - 1] != 1) {
            return None;
        }
        let len = sp[nd - 1];
        if !st.inputs.iter().chain(&st.outputs).all(|&v| typed(v)) {
            return None;
        }
        let ins: Vec<Src> = st
            .inputs
            .iter()
            .map(|&v| pl.read::<T>(v, shape_of(v).as_ref(), values[v].as_ref(), sp))
            .collect::<Option<_>>()?;
        match &st.kernel {
            Kernel::Fused(g) => {
                let kernel = kernel_for::<T>(g, &ins, &pl.out.outside, len)?;
                let outs =
                    st.outputs.iter().map(|&v| if len == n { pl.write_row(v) } else { pl.write_scalar(v) }).collect();
                planned.push(RowStep::Map { kernel, ins, outs, len });
            }
            Kernel::ReduceFused { group, reductions, axes, .. } => {
                if len != n || axes.as_slice() != [nd - 1] || !reductions.iter().all(|&(op, _)| foldable(op)) {
                    return None;
                }
                // Reduced values that are inputs (or copies of them) fold
                // from the input's row; the others from the producer's rows.
                let direct: Vec<Option<Src>> = group
                    .outputs
                    .iter()
                    .map(|&r| copied_input(group, r).map(|k| ins[k]).filter(|&s| reads_row(s, &pl.out.outside)))
                    .collect();
                let (producer, rows_of) = if direct.iter().all(Option::is_some) {
                    (None, direct)
                } else {
                    let kernel = kernel_for::<T>(group, &ins, &pl.out.outside, n)?;
                    let at: Vec<usize> = (0..group.outputs.len()).map(|_| pl.scratch_row()).collect();
                    let outs = at.iter().map(|&k| Dst::Row(k)).collect();
                    (Some((kernel, ins, outs)), at.into_iter().map(|k| Some(Src::Row(k))).collect())
                };
                let folds = reductions
                    .iter()
                    .zip(&st.outputs)
                    .map(|(&(op, i), &v)| Some((op, rows_of[i]?, pl.write_scalar(v))))
                    .collect::<Option<_>>()?;
                planned.push(RowStep::Fold { producer, folds: pair_means(folds) });
            }
            Kernel::Single(Primitive::Reduce { op, axes, .. }) => {
                if len != n || axes.as_slice() != [nd - 1] || !foldable(*op) || !reads_row(ins[0], &pl.out.outside) {
                    return None;
                }
                let dst = pl.write_scalar(st.outputs[0]);
                planned.push(RowStep::Fold {
                    producer: None,
                    folds: vec![RowFold { op: *op, src: ins[0], dst, mean: None }],
                });
            }
            _ => return None,
        }
    }
    if pl.out.scratch_rows.saturating_mul(n * size_of::<T>()) > MAX_SCRATCH_BYTES || pl.out.sink_len.contains(&0) {
        return None;
    }
    pl.out.steps = planned;
    Some(pl.out)
}

/// True when `src` is a whole row (not one value per row).
fn reads_row(src: Src, outside: &[Outside]) -> bool {
    match src {
        Src::Row(_) | Src::SinkRow(_) => true,
        Src::Scalar(_) => false,
        Src::Outside(k) => outside[k].inner == 1,
    }
}

/// The generated code of `g` for rows of `len` positions whose inputs are
/// `ins`: per-row values broadcast, inputs whose rows come from memory
/// (`stream::from_memory`) prefetched one row ahead.
fn kernel_for<T: RowFloat>(g: &CpuGroup, ins: &[Src], outside: &[Outside], len: usize) -> Option<Arc<jit::Kernel>> {
    // Rows are of `T`: a group reading or writing bool arrays (bytes), such
    // as a comparison a reduction folds, runs block by block.
    let typed = |d: DType| d == T::DTYPE;
    if !g.inputs.iter().all(|&d| typed(d)) || !g.outputs.iter().all(|&r| typed(g.reg_dtype(r))) {
        return None;
    }
    let code = g.code.get(g)?;
    let mut bcast = InputSet::EMPTY;
    let mut streams = false;
    for (k, s) in ins.iter().enumerate() {
        let one = match *s {
            Src::Scalar(_) => true,
            Src::Outside(j) => {
                streams |= outside[j].from_memory;
                outside[j].inner == 0
            }
            _ => false,
        };
        if one && len > 1 {
            bcast.insert(k);
        }
    }
    // The same position of the next row: read while this row computes.
    let ahead = if streams { i32::try_from(len * size_of::<T>()).unwrap_or(i32::MAX) } else { 0 };
    code.kernel(Variant { bcast, prefetch: ahead })
}

thread_local! {
    /// Each thread's scratch rows and per-row values, kept between runs
    /// (`f64` words, viewed as the chain's element type).
    static SCRATCH: std::cell::Cell<Vec<f64>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Where a pointer of a step points for row `local` of a task: fixed for
/// a task's scratch rows and per-row values, evenly spaced for sink rows
/// and most outside inputs, so each row costs a multiply-add per pointer.
enum At<T> {
    /// `base + local * step` elements.
    Linear(*mut T, isize),
    /// The row's start in outside input `k`, found row by row (an input
    /// whose rows are not evenly spaced: a broadcast over several leading
    /// dimensions, say).
    Outside(usize),
}

impl<T> Clone for At<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for At<T> {}

/// A call of a step's code for a task: its kernel and pointers.
struct Call<'p, T> {
    kernel: &'p jit::Kernel,
    /// The pointers for the current row (`f32` by name; the code was
    /// generated for `T`, `kernel_for`): fixed ones written once, the
    /// others row by row.
    ins: SmallVec<[*const f32; 8]>,
    outs: SmallVec<[*mut f32; 4]>,
    /// The pointers that move from row to row: whether an output, the
    /// index, and where it points.
    moving: SmallVec<[(bool, usize, At<T>); 4]>,
}

impl<T> Call<'_, T> {
    /// Points the moving pointers at their places for the row `at` finds.
    #[inline]
    fn point_at_row(&mut self, at: &impl Fn(At<T>) -> *mut T) {
        for &(out, i, a) in &self.moving {
            let p = at(a).cast::<f32>();
            if out {
                self.outs[i] = p;
            } else {
                self.ins[i] = p.cast_const();
            }
        }
    }
}

/// A step's pointers for a task, planned once (see [`At`]).
enum TaskStep<'p, T> {
    /// Code over rows of `len` positions.
    Map(Call<'p, T>, usize),
    /// A producer's code over the row, then folds.
    Fold(Option<Call<'p, T>>, Vec<TaskFold<T>>),
}

/// A step planned for a task, and the copies into sinks after it.
struct TaskPlan<'p, T> {
    step: TaskStep<'p, T>,
    copies: SmallVec<[SinkCopy<T>; 2]>,
}

/// A fold's pointers for a task.
struct TaskFold<T> {
    op: ReduceOp,
    src: At<T>,
    dst: At<T>,
    /// The mean a variance carries.
    mean: Option<At<T>>,
}

/// A copy into a sink after a step (see [`finish_output`]).
struct SinkCopy<T> {
    from: At<T>,
    to: At<T>,
    len: usize,
    streamed: bool,
}

/// Runs rows `r0..r1` of the plan on the calling thread.
fn run_rows<'p, T: RowFloat>(plan: &'p Plan, data: &[&[T]], sinks: &[RowSink], r0: usize, r1: usize) {
    let n = plan.n;
    let size = size_of::<T>();
    let claims: SmallVec<[_; 4]> = sinks.iter().map(|s| s.claim(r0, r1 - r0)).collect();
    let sink_base: SmallVec<[*mut T; 4]> = claims.iter().map(|c| c.ptr().cast::<T>()).collect();
    // Scratch rows `stride` apart from a start off 4 KiB alignment, so
    // that the same position of two rows (and of a page-aligned input row)
    // never shares its address's low 12 bits: a load after a store to such
    // an address waits for the store (4K aliasing).
    let stride = n.next_multiple_of(64 / size) + SKEW_BYTES / size;
    // The thread's scratch from its last run (taken, so a nested run would
    // make its own), grown when short: no allocation or zeroing per call.
    // Its rows start at most a page (plus the skew) in, its per-row
    // values follow them.
    let mut scratch = SCRATCH.take();
    let rows_len = plan.scratch_rows * stride + (4096 + SKEW_BYTES) / size;
    let need = (rows_len + plan.scalars) * size;
    if scratch.len() * 8 < need {
        scratch = vec![0.0f64; need.div_ceil(8)];
    }
    let base = scratch.as_mut_ptr().cast::<T>();
    let skip = (SKEW_BYTES + 4096 - base as usize % 4096) % 4096 / size;
    let row_ptr = base.wrapping_add(skip);
    let scalar_ptr = base.wrapping_add(rows_len);
    // Outside inputs of one leading dimension (or none) advance by their
    // row stride; the others are found row by row.
    let outside_at: SmallVec<[At<T>; 8]> = plan
        .outside
        .iter()
        .enumerate()
        .map(|(k, o)| match o.dims.as_slice() {
            [] | [_] => {
                let step = o.dims.first().map_or(0, |&(_, s)| s);
                At::Linear(data[k].as_ptr().wrapping_add(o.at(r0)).cast_mut(), step)
            }
            _ => At::Outside(k),
        })
        .collect();
    let sink_row = |k: usize| At::Linear(sink_base[k], plan.sink_len[k] as isize);
    let src_at = |s: Src| match s {
        Src::Row(k) => At::Linear(row_ptr.wrapping_add(k * stride), 0),
        Src::SinkRow(k) => sink_row(k),
        Src::Scalar(k) => At::Linear(scalar_ptr.wrapping_add(k), 0),
        Src::Outside(k) => outside_at[k],
    };
    let dst_at = |d: Dst| match d {
        Dst::Row(k) | Dst::Staged { row: k, .. } => At::Linear(row_ptr.wrapping_add(k * stride), 0),
        Dst::SinkRow(k) => sink_row(k),
        Dst::Scalar(k, _) => At::Linear(scalar_ptr.wrapping_add(k), 0),
    };
    // What a step's outputs copy into sinks: staged rows, escaping
    // per-row values.
    let copies = |dsts: &[Dst], len: usize| -> SmallVec<[SinkCopy<T>; 2]> {
        dsts.iter()
            .filter_map(|&d| match d {
                Dst::Staged { sink, .. } => Some(SinkCopy { from: dst_at(d), to: sink_row(sink), len, streamed: true }),
                Dst::Scalar(_, Some(sink)) => {
                    Some(SinkCopy { from: dst_at(d), to: sink_row(sink), len: 1, streamed: false })
                }
                _ => None,
            })
            .collect()
    };
    // A step's call: fixed pointers written now, the others listed as
    // moving and written row by row.
    let call = |kernel: &'p jit::Kernel, ins: &[Src], outs: &[Dst]| {
        let mut moving = SmallVec::new();
        let mut place = |out: bool, i: usize, a: At<T>| match a {
            At::Linear(p, 0) => p.cast::<f32>(),
            _ => {
                moving.push((out, i, a));
                std::ptr::null_mut()
            }
        };
        let ins = ins.iter().enumerate().map(|(i, &s)| place(false, i, src_at(s)).cast_const()).collect();
        let outs = outs.iter().enumerate().map(|(i, &d)| place(true, i, dst_at(d))).collect();
        Call { kernel, ins, outs, moving }
    };
    let mut steps: SmallVec<[TaskPlan<T>; 8]> = plan
        .steps
        .iter()
        .map(|step| match step {
            RowStep::Map { kernel, ins, outs, len } => {
                TaskPlan { step: TaskStep::Map(call(kernel, ins, outs), *len), copies: copies(outs, *len) }
            }
            RowStep::Fold { producer, folds } => {
                let dsts: SmallVec<[Dst; 4]> = folds.iter().flat_map(|f| [Some(f.dst), f.mean]).flatten().collect();
                let folds = folds
                    .iter()
                    .map(|f| TaskFold { op: f.op, src: src_at(f.src), dst: dst_at(f.dst), mean: f.mean.map(dst_at) })
                    .collect();
                let producer = producer.as_ref().map(|(kernel, ins, outs)| call(kernel, ins, outs));
                TaskPlan { step: TaskStep::Fold(producer, folds), copies: copies(&dsts, 1) }
            }
        })
        .collect();
    let mut outside_rows: SmallVec<[*const T; 8]> = SmallVec::new();
    let general = outside_at.iter().any(|a| matches!(a, At::Outside(_)));
    for r in r0..r1 {
        let local = (r - r0) as isize;
        if general {
            // Where each outside input's row starts (sliced inside its buffer).
            outside_rows.clear();
            outside_rows.extend(plan.outside.iter().zip(data).map(|(o, d)| o.row(d, r).as_ptr()));
        }
        let at = |a: At<T>| -> *mut T {
            match a {
                At::Linear(base, step) => base.wrapping_offset(local * step),
                At::Outside(k) => outside_rows[k].cast_mut(),
            }
        };
        for TaskPlan { step, copies } in &mut steps {
            match step {
                TaskStep::Map(c, len) => run_code(c, *len, &at),
                TaskStep::Fold(producer, folds) => {
                    if let Some(c) = producer {
                        run_code(c, n, &at);
                    }
                    for f in folds {
                        // SAFETY: `src` is a whole row of `n` elements (the
                        // plan folds only rows, `reads_row`): a scratch row
                        // or this task's claimed sink row, written by an
                        // earlier step of this row, or an outside row inside
                        // its buffer (the plan checked that its layout fits
                        // it); nothing writes it while it is read.
                        let row = unsafe { std::slice::from_raw_parts(at(f.src), n) };
                        // SAFETY (both stores): scalar slots of this task,
                        // read by no live reference.
                        match f.mean {
                            Some(m) => {
                                let (var, mean) = reduce::var_mean_row(f.op, row);
                                unsafe { (*at(f.dst), *at(m)) = (var, mean) };
                            }
                            None => {
                                let v = reduce::reduce_row(f.op, row).expect("planned reductions fold rows");
                                unsafe { *at(f.dst) = v };
                            }
                        }
                    }
                }
            }
            for c in copies {
                finish_output(c, &at);
            }
        }
    }
    if plan.streamed {
        stream::fence();
    }
    SCRATCH.set(scratch);
    for c in claims {
        c.written();
    }
}

/// Calls a step's code over one row of `len` positions (the row `at` finds).
#[inline]
fn run_code<T>(c: &mut Call<T>, len: usize, at: &impl Fn(At<T>) -> *mut T) {
    c.point_at_row(at);
    // SAFETY: every input pointer addresses `len` readable `T` (one for a
    // broadcast input: a scalar slot, or an outside row's value, which the
    // kernel was generated to load once): scratch rows of `n` elements,
    // this task's claimed sink rows, outside rows inside their buffers
    // (the plan checked that each input's layout fits its buffer). Every
    // output pointer addresses `len` writable `T` that no input of this
    // call overlaps: each value of the chain has its own scratch row,
    // scalar slot or sink row.
    unsafe { c.kernel.run(&c.ins, &c.outs, len) };
}

/// Copies what a step wrote into a sink: a staged row streamed to its
/// sink, or an escaping per-row value stored in its own.
fn finish_output<T: Copy>(c: &SinkCopy<T>, at: &impl Fn(At<T>) -> *mut T) {
    let (from, to) = (at(c.from), at(c.to));
    if c.streamed {
        // SAFETY: the staged scratch row holds `len` values just written;
        // the task's sink row has room for them and does not overlap
        // scratch.
        unsafe { stream::copy(to.cast(), from.cast(), c.len * size_of::<T>()) };
    } else {
        // SAFETY: a scalar slot just written, and this task's element of a
        // per-row sink.
        unsafe { *to = *from };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_runs_split_into_at_most_one_part_per_thread() {
        let parts = |rows: usize, n: usize, threads: usize| rows.div_ceil(rows_per_part(rows, n, threads));
        // 64 rows of 1024: two parts on two threads, eight of 8 rows on 16.
        assert_eq!(parts(64, 1024, 2), 2);
        assert_eq!(parts(64, 1024, 16), 8);
        assert_eq!(rows_per_part(64, 1024, 16), 8);
        // 256 rows on 16 threads: one part per thread.
        assert_eq!(parts(256, 1024, 16), 16);
        // Enough work for a part of PART_ELEMS per thread: parts of at
        // least PART_ELEMS positions, up to eight per thread.
        assert_eq!(rows_per_part(1024, 1024, 16), 32);
        assert_eq!(parts(4096, 1024, 2), 16);
        assert_eq!(rows_per_part(1 << 20, 64, 2), (1 << 20) / 16);
        // Tiny runs, one thread, degenerate sizes: one part, never zero rows.
        assert_eq!(parts(3, 100, 16), 1);
        assert_eq!(parts(16, 1024, 1), 1);
        assert!(rows_per_part(0, 1024, 4) >= 1);
        assert!(rows_per_part(5, 0, 4) >= 1);
    }
}
