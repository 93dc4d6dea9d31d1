//! Reductions over axes and arg-reductions on the CPU.
//!
//! A reduction is planned once from the input layout: the kept axes are
//! collapsed into an output space `K` (row-major, the output order) and the
//! reduced axes into a reduction space `R`. The reduced axes are reordered by
//! decreasing stride and flipped to non-negative strides first, which every
//! reduction here allows (they are commutative), so reducing a transposed or
//! reversed array still walks memory forwards in long runs. Then one of two
//! walks computes each output:
//!
//! - **inner**: each output walks its own `R` sub-block; runs along `R`'s
//!   innermost dimension are folded with 64 independent lanes (a loop the
//!   compiler vectorizes into four chains of vector adds) and split pairwise
//!   above `BLOCK` (1024) elements, which keeps float sums accurate.
//! - **outer**: when `K`'s innermost dimension is contiguous and `R`'s is not
//!   (a sum over axis 0 of a row-major matrix), a tile of neighbouring outputs
//!   is accumulated one reduced row at a time, again split pairwise (rows
//!   of at most 32 outputs that lie back to back fold as one run, over
//!   lanes of whole rows: `short_rows`). The
//!   statistics whose step is costly fold more at once: `logsumexp` leaves
//!   of up to 1024 outputs read row after row (`Reducer::leaves_across`),
//!   and `var`'s moments a run of up to 256 rows for up to 1024 outputs in
//!   two passes, combined once per output (`Reducer::fold_rows`; the mean
//!   the moments carry keeps the `mean` reduction's order: its leaves, each
//!   adding rows one by one, joined in its tree).
//!
//! The kept axes are walked in the output's order only when that is their
//! memory order; otherwise (a sum over the last axis of `x.permute(2, 0,
//! 1)`) the reduction runs over a view with its kept axes sorted by
//! decreasing stride, and its results are copied into the output's order
//! (`MemoryOrder`), so neighbouring outputs still read neighbouring
//! memory. Arg-reductions and fused reductions (over all of the group's
//! axes, in the order of its largest input) are reordered the same way.
//!
//! Work is spread over threads by output chunks, or, when there are few
//! outputs but many elements (a full reduction of a large array), by chunks
//! of the reduced range whose partial results are combined pairwise in
//! chunk order (`combine_pairs`; a task folds an aligned group of chunks,
//! a subtree of that order, as its chunks finish). Chunk sizes depend only
//! on the shape, never on the number of threads, so results are
//! deterministic.
//!
//! # Order
//!
//! Float sums, means, products and extrema, and the one-pass statistics, of
//! a reduced space that is one run (a contiguous or evenly strided row: the
//! last axis, or all axes of a contiguous array) fold the row as a fixed
//! pairwise tree that depends only on its length `n`:
//!
//! - a run longer than the fold's leaf (1024 elements; 256 for
//!   `logsumexp`/`sumexp`) splits into `0..h` and `h..n` with
//!   `h = (n / 2)` rounded down to a multiple of 64 (`pairwise_split`),
//!   each half folded the same way and the two combined left then right;
//! - a leaf is folded in 64 lanes (element `j` into lane `j % 64`, from the
//!   identity: `-0` for sums, 1 for products, `-inf`/`+inf` for max/min),
//!   then the lanes combine pairwise (lane `l` with lane `l + w`, `w` = 32,
//!   16, .., 1); the statistics fold a leaf with their own vectorized block
//!   (`Lse`, `Moments`), in that order too.
//!
//! On AVX-512, `f32` sums, means, extrema and `var`'s moments fold a leaf
//! in explicit vector code (`x86`: four registers of 16 lanes, combined by
//! shuffles in the same pairwise order), bit for bit the generic lanes'
//! result but for which NaN a NaN result carries: the compiled generic
//! combine went through the stack pair of lanes by pair, most of the time
//! of a fold over a row of 64 values.
//!
//! A split of the row across threads cuts it only at nodes of that tree and
//! recombines along it (`fold_tree`), and so does the fused reduction
//! kernel of compiled code (its nodes are `tree_chunks`, each folded into
//! a `Partial` and combined by `combine_partials` with the fold's own
//! merges), so eager and compiled results agree bit
//! for bit, special values included (a product through an overflow, the
//! sign of a zero maximum, which NaN propagates). A multi-dimensional
//! reduced space folds its runs one after another, left to right, and the
//! outer walk folds reduced rows into a tile of outputs, split in halves
//! above a length that depends on the tile; those orders differ from the
//! single-run tree. Integer and logical folds are exact in any order and
//! fold each run whole.
//!
//! Accumulation: `f16` and `bf16` widen every element to `f32` and
//! accumulate there, narrowing only the final result (`acc_dtype`); an
//! integer or bool mean accumulates in `f64`. `max`/`min` return the first
//! (leftmost in fold order) of equal values, so `max(-0, +0)` is the zero
//! met first, and a NaN wins over every number.
//!
//! `argmax`/`argmin` return the first index of the extremum (a NaN counts
//! as one), scanning each output's run; over an axis that is not the
//! innermost, with adjacent outputs adjacent in memory, they scan the rows
//! in order instead, each output keeping its best so far (`arg_rows`).

use crate::host_vec::HostVec;
use std::marker::PhantomData;
use std::ops::Range;

use half::{bf16, f16};

use crate::array::Data;
use crate::backend::cpu::math_f64;
use crate::backend::cpu::simd_math::COLUMNS;
use crate::backend::cpu::strided::PAR_THRESHOLD;
use crate::backend::cpu::team;
use crate::buffer::Buffer;
use crate::dtype::{DType, Element};
use crate::error::{shape_str, Error, Result};
use crate::layout::{collapse, for_each_block, Layout};
use crate::primitive::{ArgReduceOp, ReduceOp};

/// Independent accumulators per run: four AVX-512 registers of `f32`
/// (eight of `f64`). One register (16 lanes) makes a fold of data in cache
/// a chain of dependent adds, at one vector per add latency; four chains
/// fold a sum of squares of 8192 cached floats 1.2x faster end to end, and
/// a row of a layernorm's statistics 1.1x (same-machine A/B).
const LANES: usize = 64;
/// How far ahead of a contiguous fold its input is prefetched, in bytes: a
/// fold does little work per element, and alone it keeps too few loads in
/// flight to read at memory bandwidth (rows of the next blocks are usually
/// adjacent, so the prefetch runs ahead across runs too).
const PREFETCH_AHEAD: usize = 8192;
/// Runs longer than this are split in halves (pairwise reduction). Each
/// lane of a block adds at most `BLOCK / LANES` (16) elements in sequence.
const BLOCK: usize = 1024;
/// Leaf length of the `logsumexp` and `sumexp` folds (a leaf's maximum,
/// then one pass of `exp`; leaves combine with a scalar `exp` each): as
/// long as a sum's leaf. Leaves of 256 made a logsumexp over rows of 1024
/// and 4096 1.2-1.4x slower, most of it in the work per leaf.
const LSE_BLOCK: usize = BLOCK;
/// Reduced elements per leaf of an outer walk that folds leaves
/// ([`Reducer::outer_leaves`]).
const OUTER_LEAF: usize = 256;
/// Outputs per tile of such leaves (a tile of 16 KiB of f32), and of
/// leaves folded across outputs ([`Reducer::leaves_across`]).
const OUTER_COLS: usize = COLUMNS;
/// Most outputs whose leaves fold at once ([`Reducer::leaves_across`]).
const ACROSS: usize = 1024;
/// Most outputs whose rows [`Moments::fold_rows`] folds at once (their
/// accumulators in L1).
const ROW_WIDTH: usize = 1024;
/// Fewest outputs whose rows [`Moments::fold_rows`] folds at once (a
/// cache line of `f32`).
const ROW_MIN: usize = 16;
/// Most rows [`Moments::fold_rows`] folds at once ([`Reducer::row_run`]).
const ROW_RUN: usize = 256;
/// The rows of such leaves kept within this many bytes (half an L2 of 512
/// KiB, the smallest of the x86 cores kiln runs on).
const ACROSS_BYTES: usize = 256 << 10;
/// Outputs accumulated together by the outer walk (the accumulators stay in
/// L1/L2 while whole input rows stream through).
const TILE: usize = 4096;
/// The split-range path keeps at most this many partial results.
const MAX_PARTIALS: usize = 1 << 22;
/// Target number of input elements per parallel task.
const TASK_WORK: usize = 1 << 16;
/// Partial results combined per parallel task of [`combine_tree`].
const COMBINE_WORK: usize = 1 << 15;
/// At most this many tasks split one reduced range.
const MAX_SPLIT: usize = 64;
/// Tasks per thread of a split reduced range (aligned groups of its
/// chunks, [`combine_chunks`]), for balance.
const GROUPS_PER_THREAD: usize = 4;
/// Below this many output tasks, splitting the reduced range is considered.
const FEW_TASKS: usize = 16;

/// One reduction: a fold from `In` elements into an `Acc` accumulator that
/// can be combined with another, finished into `Out` given the count.
trait Reducer: Sync {
    type In: Element;
    type Acc: Copy + Send + Sync;
    type Out: Copy + Send + Sync;
    fn identity(&self) -> Self::Acc;
    fn step(&self, acc: Self::Acc, x: Self::In) -> Self::Acc;
    fn combine(&self, a: Self::Acc, b: Self::Acc) -> Self::Acc;
    fn finish(&self, a: Self::Acc, count: usize) -> Self::Out;
    /// The fold of a contiguous run of at most [`Reducer::leaf`] elements,
    /// when the reducer has a faster (vectorized) way than
    /// element-by-element steps.
    #[inline(always)]
    fn block(&self, _xs: &[Self::In]) -> Option<Self::Acc> {
        None
    }
    /// Whether the outer walk ([`outer_tile`]) folds each output's reduced
    /// elements in leaves through [`Reducer::block`] (a tile of rows copied
    /// column by column) instead of one [`Reducer::step`] per element:
    /// for reducers whose step costs an `exp` and a branch, which do not
    /// vectorize across outputs.
    #[inline(always)]
    fn outer_leaves(&self) -> bool {
        false
    }
    /// The leaves of `out.len()` adjacent outputs of an outer walk at once
    /// (a multiple of [`COLUMNS`], at most [`ACROSS`]), read in place:
    /// `rows` reduced rows of `src`, a `stride` apart, from `at`, into
    /// `out`, `finite[g]` telling whether the group of [`COLUMNS`] outputs
    /// from `g * COLUMNS` was folded (its elements all finite); `false` when
    /// the reducer has no such code (the walk then folds those leaves one
    /// by one, as it does the groups not folded).
    #[inline(always)]
    fn leaves_across(
        &self,
        _src: &[Self::In],
        _at: usize,
        _stride: usize,
        _rows: usize,
        _out: &mut [Self::Acc],
        _finite: &mut [bool],
    ) -> bool {
        false
    }
    /// Folds `rows` reduced rows of `acc.len()` adjacent outputs of an outer
    /// walk into `acc` at once (row `j` from `src[at + j * stride..]`),
    /// read in place; `false` when the reducer has no such code (the walk
    /// then steps element by element). For a reducer whose step costs
    /// divisions (the moments of `var`), and whose accumulators of a run of
    /// rows combine once per output instead. `leaf` is the walk's leaf: a
    /// run longer than it ([`Reducer::row_run`]) is a node of the walk's
    /// pairwise tree, folded into fresh accumulators.
    #[inline(always)]
    fn fold_rows(
        &self,
        _src: &[Self::In],
        _at: usize,
        _stride: usize,
        _rows: usize,
        _leaf: usize,
        _acc: &mut [Self::Acc],
    ) -> bool {
        false
    }
    /// The most rows one [`Reducer::fold_rows`] takes at once where the
    /// outer walk's leaves are shorter (0: a leaf at a time).
    #[inline(always)]
    fn row_run(&self) -> usize {
        0
    }
    /// The longest run folded without splitting when [`Reducer::pairwise`].
    #[inline(always)]
    fn leaf(&self) -> usize {
        BLOCK
    }
    /// Whether long runs are folded pairwise, in halves of at most
    /// [`Reducer::leaf`] (sums: rounding errors grow with the log of the length
    /// instead of the length; float extrema: the tree fixes which of equal
    /// zeros is kept). Exact folds (all, any, integer arithmetic) fold a
    /// whole run at once, leaf by leaf.
    #[inline(always)]
    fn pairwise(&self) -> bool {
        true
    }
}

/// A [`Reducer`] from closures (monomorphized, so the folds inline).
struct Fold<I, A, O, S, C, F> {
    id: A,
    step: S,
    combine: C,
    finish: F,
    /// See [`Reducer::pairwise`].
    pairwise: bool,
    /// Explicit vector code for a contiguous leaf, giving the lanes'
    /// result bit for bit ([`Reducer::block`]; see [`Widen::fast_leaf`]).
    fast: Option<Leaf<I, A>>,
    _types: PhantomData<fn(I) -> O>,
}

impl<I, A, O, S, C, F> Reducer for Fold<I, A, O, S, C, F>
where
    I: Element,
    A: Copy + Send + Sync,
    O: Copy + Send + Sync,
    S: Fn(A, I) -> A + Sync,
    C: Fn(A, A) -> A + Sync,
    F: Fn(A, usize) -> O + Sync,
{
    type In = I;
    type Acc = A;
    type Out = O;
    #[inline(always)]
    fn identity(&self) -> A {
        self.id
    }
    #[inline(always)]
    fn step(&self, acc: A, x: I) -> A {
        (self.step)(acc, x)
    }
    #[inline(always)]
    fn combine(&self, a: A, b: A) -> A {
        (self.combine)(a, b)
    }
    #[inline(always)]
    fn finish(&self, a: A, count: usize) -> O {
        (self.finish)(a, count)
    }
    #[inline(always)]
    fn pairwise(&self) -> bool {
        self.pairwise
    }
    #[inline(always)]
    fn block(&self, xs: &[I]) -> Option<A> {
        self.fast.map(|f| f(xs))
    }
}

/// A [`Reducer`] with a blockwise fold for contiguous runs (the one-pass
/// statistics: their per-element step needs a division or an `exp`, while
/// a block vectorizes).
struct Blocked<R: Reducer, B, F> {
    inner: R,
    block: B,
    /// See [`Reducer::leaf`].
    leaf: usize,
    /// See [`Reducer::outer_leaves`].
    outer_leaves: bool,
    /// See [`Reducer::leaves_across`].
    across: Option<Across<R::In, R::Acc>>,
    /// See [`Reducer::fold_rows`].
    rows: Option<F>,
}

/// A [`Reducer::leaves_across`] of a [`Blocked`] reducer.
type Across<I, A> = fn(&[I], usize, usize, usize, &mut [A], &mut [bool]) -> bool;

/// A [`Reducer::fold_rows`] of a [`Blocked`] reducer.
type FoldRows<I, A> = fn(&[I], usize, usize, usize, usize, &mut [A]);

impl<R, B, F> Reducer for Blocked<R, B, F>
where
    R: Reducer,
    B: Fn(&[R::In]) -> R::Acc + Sync,
    F: Fn(&[R::In], usize, usize, usize, usize, &mut [R::Acc]) + Sync,
{
    type In = R::In;
    type Acc = R::Acc;
    type Out = R::Out;
    #[inline(always)]
    fn identity(&self) -> R::Acc {
        self.inner.identity()
    }
    #[inline(always)]
    fn step(&self, acc: R::Acc, x: R::In) -> R::Acc {
        self.inner.step(acc, x)
    }
    #[inline(always)]
    fn combine(&self, a: R::Acc, b: R::Acc) -> R::Acc {
        self.inner.combine(a, b)
    }
    #[inline(always)]
    fn finish(&self, a: R::Acc, count: usize) -> R::Out {
        self.inner.finish(a, count)
    }
    #[inline(always)]
    fn block(&self, xs: &[R::In]) -> Option<R::Acc> {
        Some((self.block)(xs))
    }
    #[inline(always)]
    fn leaf(&self) -> usize {
        self.leaf
    }
    #[inline(always)]
    fn outer_leaves(&self) -> bool {
        self.outer_leaves
    }
    #[inline(always)]
    fn leaves_across(
        &self,
        src: &[R::In],
        at: usize,
        stride: usize,
        rows: usize,
        out: &mut [R::Acc],
        finite: &mut [bool],
    ) -> bool {
        self.across.is_some_and(|f| f(src, at, stride, rows, out, finite))
    }
    #[inline(always)]
    fn fold_rows(&self, src: &[R::In], at: usize, stride: usize, rows: usize, leaf: usize, acc: &mut [R::Acc]) -> bool {
        self.rows.as_ref().map(|f| f(src, at, stride, rows, leaf, acc)).is_some()
    }
    #[inline(always)]
    fn row_run(&self) -> usize {
        if self.rows.is_some() {
            ROW_RUN
        } else {
            0
        }
    }
}

/// The iteration spaces of one reduction (see the module docs).
struct Plan {
    kshape: Vec<usize>,
    kstrides: Vec<isize>,
    rshape: Vec<usize>,
    rstrides: Vec<isize>,
    offset: usize,
    n_out: usize,
    n_red: usize,
}

impl Plan {
    fn new(l: &Layout, axes: &[usize]) -> Plan {
        let mut offset = l.offset as isize;
        let (mut ks, mut kst, mut red) = (vec![], vec![], vec![]);
        for (i, (&d, &s)) in l.shape.iter().zip(&l.strides).enumerate() {
            if !axes.contains(&i) {
                ks.push(d);
                kst.push(s);
            } else if s < 0 && d > 0 {
                offset += (d - 1) as isize * s;
                red.push((d, -s));
            } else {
                red.push((d, s));
            }
        }
        red.sort_by_key(|&(_, s)| std::cmp::Reverse(s));
        let (rs, rst): (Vec<usize>, Vec<isize>) = red.into_iter().unzip();
        let n_out = crate::shape::numel(&ks);
        let n_red = crate::shape::numel(&rs);
        let (kshape, mut k) = collapse(&ks, &[&kst]);
        let (rshape, mut r) = collapse(&rs, &[&rst]);
        Plan {
            kshape,
            kstrides: k.pop().unwrap_or_default(),
            rshape,
            rstrides: r.pop().unwrap_or_default(),
            // Only read when there is something to reduce, and then it is a valid index.
            offset: offset.max(0) as usize,
            n_out,
            n_red,
        }
    }

    fn k_inner(&self) -> isize {
        self.kstrides.last().copied().unwrap_or(0)
    }

    fn r_inner(&self) -> usize {
        self.rstrides.last().copied().unwrap_or(0) as usize
    }

    /// The outer walk pays off when outputs are contiguous and reduced rows are not.
    fn outer(&self) -> bool {
        !self.rshape.is_empty() && self.k_inner() == 1 && self.r_inner() != 1
    }
}

/// Folds `n` elements starting at `off`, `stride` apart.
fn run<R: Reducer>(r: &R, src: &[R::In], off: usize, n: usize, stride: usize) -> R::Acc {
    if n > r.leaf() && r.pairwise() {
        let h = pairwise_split(n);
        let a = run(r, src, off, h, stride);
        let b = run(r, src, off + h * stride, n - h, stride);
        return r.combine(a, b);
    }
    if stride == 1 {
        // An order-insensitive fold takes a long run leaf by leaf as well,
        // so that each leaf's prefetches interleave with work: a burst of a
        // whole row's prefetches stalls the loads (a row maximum of 4096
        // x 4096 floats took 1.6x a row sum).
        let leaf = r.leaf().max(1);
        let mut acc = contiguous_run(r, &src[off..off + n.min(leaf)]);
        for c in (leaf..n).step_by(leaf) {
            acc = r.combine(acc, contiguous_run(r, &src[off + c..off + (c + leaf).min(n)]));
        }
        return acc;
    }
    strided_run(r, src, off, n, stride)
}

/// [`run`] over contiguous elements `xs`, prefetching the lines
/// [`PREFETCH_AHEAD`] bytes past them (every fold, the statistics' blocks
/// included).
#[inline(always)]
fn contiguous_run<R: Reducer>(r: &R, xs: &[R::In]) -> R::Acc {
    let base = xs.as_ptr().cast::<u8>();
    for b in (0..std::mem::size_of_val(xs)).step_by(64) {
        crate::backend::cpu::stream::prefetch_ahead(base.wrapping_add(b), PREFETCH_AHEAD);
    }
    fold_run(r, xs)
}

/// [`run`] over a strided run: steps in [`LANES`] interleaved accumulators
/// (out of line: the recursion and the contiguous path stay small).
#[inline(never)]
fn strided_run<R: Reducer>(r: &R, src: &[R::In], off: usize, n: usize, stride: usize) -> R::Acc {
    let mut lanes = [r.identity(); LANES];
    for j in 0..n {
        let l = j % LANES;
        lanes[l] = r.step(lanes[l], src[off + j * stride]);
    }
    combine_lanes(r, lanes)
}

/// The fold of a contiguous run: the reducer's own block fold, or steps in
/// [`LANES`] interleaved accumulators.
#[inline(always)]
fn fold_lanes<R: Reducer>(r: &R, xs: &[R::In]) -> R::Acc {
    if let Some(a) = r.block(xs) {
        return a;
    }
    let mut lanes = [r.identity(); LANES];
    let mut chunks = xs.chunks_exact(LANES);
    for c in &mut chunks {
        // A fixed-size chunk so the lane loop unrolls and vectorizes.
        let c: &[R::In; LANES] = c.try_into().expect("chunks_exact yields LANES elements");
        for (a, &v) in lanes.iter_mut().zip(c) {
            *a = r.step(*a, v);
        }
    }
    for (a, &v) in lanes.iter_mut().zip(chunks.remainder()) {
        *a = r.step(*a, v);
    }
    combine_lanes(r, lanes)
}

crate::backend::cpu::tile::multiversion! {
    /// [`fold_lanes`] vectorized at the best SIMD level.
    fn fold_run<R: Reducer>(r: &R, xs: &[R::In]) -> R::Acc => fold_lanes
}

/// Combines the lane accumulators pairwise.
#[inline(always)]
fn combine_lanes<R: Reducer>(r: &R, mut lanes: [R::Acc; LANES]) -> R::Acc {
    let mut w = LANES / 2;
    while w > 0 {
        for l in 0..w {
            lanes[l] = r.combine(lanes[l], lanes[l + w]);
        }
        w /= 2;
    }
    lanes[0]
}

/// Folds the reduced positions `reds` of the output whose first element is at `base`.
fn walk<R: Reducer>(r: &R, src: &[R::In], p: &Plan, base: usize, reds: Range<usize>) -> R::Acc {
    let s = p.r_inner();
    if p.rshape.len() <= 1 {
        return run(r, src, base + reds.start * s, reds.len(), s);
    }
    let mut acc = r.identity();
    for_each_block(&p.rshape, [&p.rstrides], [base], reds, |_, o, cnt| {
        acc = r.combine(acc, run(r, src, o[0] as usize, cnt, s));
    });
    acc
}

/// Folds the reduced positions `reds` of the `acc.len()` contiguous outputs
/// starting at `base` into `acc` (fresh accumulators), one reduced row at
/// a time, split pairwise.
fn outer_tile<R: Reducer>(r: &R, src: &[R::In], p: &Plan, base: usize, reds: Range<usize>, acc: &mut [R::Acc]) {
    let t = acc.len();
    // (Leaves of a reducer that folds leaves are its own split.)
    let leaf = (TASK_WORK / 16 / t).max(if r.outer_leaves() { OUTER_LEAF } else { 16 });
    // A reducer that folds runs of rows takes a node of the tree at once
    // (its `fold_rows` keeps the tree's order where it matters).
    let node = if p.rshape.len() == 1 { leaf.max(r.row_run()) } else { leaf };
    if reds.len() > node {
        let mid = reds.start + reds.len() / 2;
        outer_tile(r, src, p, base, reds.start..mid, acc);
        let mut high = vec![r.identity(); t];
        outer_tile(r, src, p, base, mid..reds.end, &mut high);
        combine_into(r, acc, &high);
        return;
    }
    let s = p.r_inner();
    // For `outer_leaves`: a tile of up to OUTER_LEAF rows by OUTER_COLS
    // outputs, copied so that each output's elements are contiguous.
    let mut leaves: Vec<R::In> = if r.outer_leaves() { vec![R::In::zero(); OUTER_LEAF * OUTER_COLS] } else { vec![] };
    let mut across = if r.outer_leaves() { vec![r.identity(); ACROSS] } else { vec![] };
    let mut finite = [false; ACROSS / COLUMNS];
    // Cleared when the reducer has no code for leaves across outputs (asked once).
    let mut has_across = true;
    let mut rows = |o: usize, cnt: usize| {
        if !r.outer_leaves() {
            if r.fold_rows(src, o, s, cnt, leaf, acc) {
                return;
            }
            if s == t && 2 * t <= LANES {
                // Rows back to back, each shorter than the lanes: one run.
                short_rows(r, &src[o..o + cnt * t], acc);
                return;
            }
            for j in 0..cnt {
                for (a, &v) in acc.iter_mut().zip(&src[o + j * s..o + j * s + t]) {
                    *a = r.step(*a, v);
                }
            }
            return;
        }
        for j0 in (0..cnt).step_by(OUTER_LEAF) {
            let n = OUTER_LEAF.min(cnt - j0);
            // Groups of adjacent outputs whose leaves fold at once, as wide as
            // keeps their `n` rows within L2 for the leaves' second pass.
            let width = (ACROSS_BYTES / (n * std::mem::size_of::<R::In>())).clamp(COLUMNS, ACROSS);
            let width = width - width % COLUMNS;
            let mut done = 0..0;
            for c0 in (0..t).step_by(OUTER_COLS) {
                let w = OUTER_COLS.min(t - c0);
                if c0 >= done.end && w == COLUMNS && has_across {
                    let wide = (t - c0).min(width);
                    let wide = wide - wide % COLUMNS;
                    let at = o + j0 * s + c0;
                    has_across = r.leaves_across(src, at, s, n, &mut across[..wide], &mut finite[..wide / COLUMNS]);
                    if has_across {
                        done = c0..c0 + wide;
                    }
                }
                if done.contains(&c0) && finite[(c0 - done.start) / COLUMNS] {
                    let from = c0 - done.start;
                    for (a, &l) in acc[c0..c0 + w].iter_mut().zip(&across[from..from + w]) {
                        *a = r.combine(*a, l);
                    }
                    continue;
                }
                for j in 0..n {
                    let at = o + (j0 + j) * s + c0;
                    for (i, &v) in src[at..at + w].iter().enumerate() {
                        leaves[i * n + j] = v;
                    }
                }
                for (i, a) in acc[c0..c0 + w].iter_mut().enumerate() {
                    let xs = &leaves[i * n..(i + 1) * n];
                    let leaf = r.block(xs).unwrap_or_else(|| xs.iter().fold(r.identity(), |a, &v| r.step(a, v)));
                    *a = r.combine(*a, leaf);
                }
            }
        }
    };
    if p.rshape.len() == 1 {
        rows(base + reds.start * s, reds.len());
    } else {
        for_each_block(&p.rshape, [&p.rstrides], [base], reds, |_, o, cnt| rows(o[0] as usize, cnt));
    }
}

/// Folds `run`, rows of `acc.len()` elements back to back (at most half of
/// [`LANES`]), into `acc`, one accumulator per column: over lanes of as
/// many whole rows as fit in [`LANES`] (lane `l` takes column `l % t` of
/// row `l / t` of each group of rows), which are then combined into `acc`
/// in lane order, and the rows left over after the last whole group step
/// in one by one. Row by row, each step took `t` elements and was not
/// vectorized: a mean over (3211264, 3) took 5x its copy's time.
fn short_rows<R: Reducer>(r: &R, run: &[R::In], acc: &mut [R::Acc]) {
    let t = acc.len();
    let w = LANES / t * t;
    let mut lanes = [r.identity(); LANES];
    let lanes = &mut lanes[..w];
    let mut groups = run.chunks_exact(w);
    for g in &mut groups {
        for (a, &v) in lanes.iter_mut().zip(g) {
            *a = r.step(*a, v);
        }
    }
    for (l, &v) in lanes.iter().enumerate() {
        acc[l % t] = r.combine(acc[l % t], v);
    }
    for (i, &v) in groups.remainder().iter().enumerate() {
        acc[i % t] = r.step(acc[i % t], v);
    }
}

/// Folds into `acc[i]` (fresh accumulators) the reduced positions `reds`
/// of output `outs.start + i`.
fn accumulate<R: Reducer>(r: &R, src: &[R::In], p: &Plan, outs: Range<usize>, reds: Range<usize>, acc: &mut [R::Acc]) {
    let start = outs.start;
    let k = p.k_inner();
    let outer = p.outer();
    for_each_block(&p.kshape, [&p.kstrides], [p.offset], outs, |pos, o, cnt| {
        let dst = &mut acc[pos - start..pos - start + cnt];
        if outer {
            for (ti, tile) in dst.chunks_mut(TILE).enumerate() {
                let base = o[0] as usize + ti * TILE;
                outer_tile(r, src, p, base, reds.clone(), tile);
            }
        } else {
            for (i, a) in dst.iter_mut().enumerate() {
                let base = (o[0] + i as isize * k) as usize;
                *a = r.combine(*a, walk(r, src, p, base, reds.clone()));
            }
        }
    });
}

/// Combines equal-length vectors of partial results pairwise, in order
/// ([`combine_pairs`]), split over the outputs in parallel when there are
/// many: each output's partials meet in the same tree whatever the split,
/// and a one-pass statistic's combine costs a scalar `exp` (a column
/// log-sum-exp of 4096 x 4096 combined 16 partials of 4096 each).
fn combine_tree<R: Reducer>(r: &R, parts: Vec<Vec<R::Acc>>) -> Vec<R::Acc> {
    let n = parts.first().map_or(0, Vec::len);
    let split = team::parts_for(n.saturating_mul(parts.len()), COMBINE_WORK);
    if parts.len() < 2 || split < 2 {
        return combine_pairs(r, parts);
    }
    let mut out = vec![r.identity(); n];
    team::chunks(&mut out, n.div_ceil(split), |start, out| {
        let part = parts.iter().map(|p| p[start..start + out.len()].to_vec()).collect();
        out.copy_from_slice(&combine_pairs(r, part));
    });
    out
}

/// The partial results of `n` chunks, each folded by `fold(c, acc)` into
/// `len` fresh accumulators, combined in [`combine_pairs`]' order as they come
/// (a stack of at most `log2(n) + 1` partials, their vectors reused): the
/// partials of many chunks of the reduced range, all held until the end,
/// made a heap that grew and was given back on every call (a variance
/// over the columns of 4096 x 4096 spent a third of its time in page
/// faults).
fn combine_chunks<R: Reducer>(r: &R, n: usize, len: usize, fold: impl Fn(usize, &mut [R::Acc])) -> Vec<R::Acc> {
    let mut stack: Vec<(u32, Vec<R::Acc>)> = Vec::new();
    let mut spare: Vec<Vec<R::Acc>> = Vec::new();
    for c in 0..n {
        let mut acc = spare.pop().unwrap_or_default();
        acc.clear();
        acc.resize(len, r.identity());
        let mut level = 0;
        fold(c, &mut acc);
        // Two partials of one level are the two halves of a node.
        while stack.last().is_some_and(|(l, _)| *l == level) {
            let (_, mut low) = stack.pop().expect("a partial");
            combine_into(r, &mut low, &acc);
            spare.push(std::mem::replace(&mut acc, low));
            level += 1;
        }
        stack.push((level, acc));
    }
    // An incomplete group: the last partials go up unpaired, then join
    // from the right, as `combine_pairs` joins them.
    let (_, mut acc) = stack.pop().unwrap_or_default();
    while let Some((_, mut low)) = stack.pop() {
        combine_into(r, &mut low, &acc);
        acc = low;
    }
    acc
}

/// `a[i] = combine(a[i], b[i])` for every output.
fn combine_into<R: Reducer>(r: &R, a: &mut [R::Acc], b: &[R::Acc]) {
    for (x, &y) in a.iter_mut().zip(b) {
        *x = r.combine(*x, y);
    }
}

/// [`combine_tree`] on the calling thread.
fn combine_pairs<R: Reducer>(r: &R, mut parts: Vec<Vec<R::Acc>>) -> Vec<R::Acc> {
    while parts.len() > 1 {
        let mut next = Vec::with_capacity(parts.len().div_ceil(2));
        let mut it = parts.into_iter();
        while let Some(mut a) = it.next() {
            if let Some(b) = it.next() {
                combine_into(r, &mut a, &b);
            }
            next.push(a);
        }
        parts = next;
    }
    parts.pop().unwrap_or_default()
}

/// Runs a reducer over a plan, choosing how to split the work.
fn execute<R: Reducer>(r: &R, src: &[R::In], p: &Plan) -> Vec<R::Out> {
    let (n_out, n_red) = (p.n_out, p.n_red);
    if n_out == 0 {
        return vec![];
    }
    if n_red == 0 {
        return vec![r.finish(r.identity(), 0); n_out];
    }
    let total = n_out.saturating_mul(n_red);
    let min_chunk = if p.outer() { TILE } else { 1 };
    let out_chunk = (TASK_WORK / n_red).max(min_chunk);
    let out_tasks = n_out.div_ceil(out_chunk);
    // A walk that folds leaves of rows splits the rows no finer than a
    // leaf: a finer split only adds leaves, each combined with a scalar
    // `exp` (64 splits of 4096 rows made a column log-sum-exp 1.3x slower
    // than 16).
    let min_red = if p.outer() && r.outer_leaves() { OUTER_LEAF } else { 1 };
    let red_chunk = (TASK_WORK / n_out).max(n_red.div_ceil(MAX_SPLIT)).max(1).max(min_red);
    let red_tasks = n_red.div_ceil(red_chunk);
    if total >= PAR_THRESHOLD
        && out_tasks < FEW_TASKS
        && red_tasks > out_tasks
        && red_tasks.saturating_mul(n_out) <= MAX_PARTIALS
    {
        // A single run per output folded pairwise is split at nodes of its
        // pairwise tree and the nodes recombined along it: the very order of
        // the unsplit fold, so the result does not depend on the split (on
        // the number of outputs, or on a row block of a compiled chain).
        let tree = r.pairwise() && !p.outer() && p.rshape.len() <= 1;
        let chunks: Vec<Range<usize>> = if tree {
            tree_chunks(n_red, red_chunk.max(r.leaf()))
        } else {
            (0..red_tasks).map(|t| t * red_chunk..((t + 1) * red_chunk).min(n_red)).collect()
        };
        let acc = if tree {
            let parts: Vec<Vec<R::Acc>> = team::map(chunks.len(), |c| {
                let mut acc = vec![r.identity(); n_out];
                accumulate(r, src, p, 0..n_out, chunks[c].clone(), &mut acc);
                acc
            });
            let mut parts = parts.into_iter();
            let combine = |mut a: Vec<R::Acc>, b: Vec<R::Acc>| {
                combine_into(r, &mut a, &b);
                a
            };
            fold_tree(n_red, red_chunk.max(r.leaf()), &mut |_, _| parts.next().expect("one part per node"), &combine)
        } else {
            // Each task folds an aligned group of chunks, a subtree of
            // `combine_pairs`' tree, so the bits do not depend on the
            // group's size.
            let mut group = 1;
            while chunks.len().div_ceil(group) > team::threads() * GROUPS_PER_THREAD {
                group *= 2;
            }
            let parts = team::map(chunks.len().div_ceil(group), |g| {
                let chunks = &chunks[g * group..chunks.len().min((g + 1) * group)];
                combine_chunks(r, chunks.len(), n_out, |c, acc| accumulate(r, src, p, 0..n_out, chunks[c].clone(), acc))
            });
            combine_tree(r, parts)
        };
        return acc.into_iter().map(|a| r.finish(a, n_red)).collect();
    }
    let chunk_out = |start: usize, out: &mut [R::Out]| {
        let mut acc = vec![r.identity(); out.len()];
        accumulate(r, src, p, start..start + out.len(), 0..n_red, &mut acc);
        for (o, a) in out.iter_mut().zip(acc) {
            *o = r.finish(a, n_red);
        }
    };
    // Placeholders, each overwritten by its chunk.
    let mut out = vec![r.finish(r.identity(), 0); n_out];
    if total < PAR_THRESHOLD || out_tasks < 2 {
        chunk_out(0, &mut out);
    } else {
        team::chunks(&mut out, out_chunk, chunk_out);
    }
    out
}

/// Builds a [`Fold`] from closures and runs it; `pairwise` as
/// [`Reducer::pairwise`] ([`PAIRWISE`] or [`ANY_ORDER`]).
fn exec<I: Element, A: Copy + Send + Sync, O: Element>(
    pairwise: bool,
    src: &[I],
    p: &Plan,
    id: A,
    step: impl Fn(A, I) -> A + Sync,
    combine: impl Fn(A, A) -> A + Sync,
    finish: impl Fn(A, usize) -> O + Sync,
) -> Buffer {
    exec_leaf(pairwise, src, p, id, step, combine, finish, None)
}

/// [`exec`] with explicit vector code for contiguous leaves (see
/// [`Fold::fast`]).
#[allow(clippy::too_many_arguments)]
fn exec_leaf<I: Element, A: Copy + Send + Sync, O: Element>(
    pairwise: bool,
    src: &[I],
    p: &Plan,
    id: A,
    step: impl Fn(A, I) -> A + Sync,
    combine: impl Fn(A, A) -> A + Sync,
    finish: impl Fn(A, usize) -> O + Sync,
    fast: Option<Leaf<I, A>>,
) -> Buffer {
    let r = Fold { id, step, combine, finish, pairwise, fast, _types: PhantomData };
    Buffer::from_vec(execute(&r, src, p))
}

/// The fold of the contiguous `f32` row `xs` by `op` (a sum, max or min;
/// any other op folds as a sum, as a mean's does before its division), the
/// very fold [`reduce`] runs over a contiguous row: lanes, pairwise leaves,
/// NaN propagation, a sum starting from -0.
pub(crate) fn fold_f32(op: ReduceOp, xs: &[f32]) -> f32 {
    fold_row(op, xs)
}

/// [`fold_f32`] of a row of `f32` or `f64`: the fold [`reduce`] runs over
/// a contiguous row of that dtype.
fn fold_row<T: RowFloat>(op: ReduceOp, xs: &[T]) -> T {
    let fast = T::fast_leaf(op);
    match op {
        ReduceOp::Max => fold_by(xs, PAIRWISE, T::NEG_INF, fmax, fast),
        ReduceOp::Min => fold_by(xs, PAIRWISE, T::INF, fmin, fast),
        _ => fold_by(xs, PAIRWISE, T::NEG_ZERO, |a, b| a + b, fast),
    }
}

/// [`fold_f32`] of a row of `n` values made leaf by leaf, for a producer
/// that never materializes the whole row: `leaf(off, len)` returns the
/// fold (by `fold_f32`) of elements `off..off + len` of the row, and the
/// leaves combine with `combine` in the order `fold_f32` splits a
/// contiguous row of `n` (halves at multiples of the lane count, leaves of
/// at most [`BLOCK`] elements). With `+` as `combine`, a sum is the same
/// as `fold_f32` over the materialized row; extrema combine leaves with
/// the same maximum or minimum.
pub(crate) fn fold_f32_leaves<A>(
    n: usize,
    leaf: &mut impl FnMut(usize, usize) -> A,
    combine: &impl Fn(A, A) -> A,
) -> A {
    fold_tree(n, BLOCK, leaf, combine)
}

/// The pairwise tree of a fold of `n` elements (see [`run`]) cut at nodes
/// of at most `max` elements (`max` at least the fold's leaf, so every
/// node is folded by [`run`] in the order of the whole): `leaf(off, len)`
/// gives the fold of node `off..off + len`, called in order, and the nodes
/// combine with `combine` as the tree does.
pub(crate) fn fold_tree<A>(
    n: usize,
    max: usize,
    leaf: &mut impl FnMut(usize, usize) -> A,
    combine: &impl Fn(A, A) -> A,
) -> A {
    fn go<A>(
        off: usize,
        n: usize,
        max: usize,
        leaf: &mut impl FnMut(usize, usize) -> A,
        combine: &impl Fn(A, A) -> A,
    ) -> A {
        if n > max {
            let h = pairwise_split(n);
            let a = go(off, h, max, leaf, combine);
            let b = go(off + h, n - h, max, leaf, combine);
            return combine(a, b);
        }
        leaf(off, n)
    }
    go(0, n, max.max(1), leaf, combine)
}

/// The nodes of [`fold_tree`]`(n, max, ..)`, in order.
pub(crate) fn tree_chunks(n: usize, max: usize) -> Vec<Range<usize>> {
    let mut nodes = vec![];
    fold_tree(n, max, &mut |off, len| nodes.push(off..off + len), &|(), ()| ());
    nodes
}

/// Where a pairwise fold splits a run of `n` elements longer than a leaf:
/// into `0..h` and `h..n`, each folded as a run of its own length (both
/// [`run`] and [`fold_f32_leaves`] split here, so they fold in one order).
fn pairwise_split(n: usize) -> usize {
    (n / 2) & !(LANES - 1)
}

/// The combination of two partial folds of `op` (see [`fold_f32`]).
pub(crate) fn combine_f32(op: ReduceOp, a: f32, b: f32) -> f32 {
    match op {
        ReduceOp::Max => fmax(a, b),
        ReduceOp::Min => fmin(a, b),
        _ => a + b,
    }
}

/// [`fold_f32`] with `f` as both the step and the combination (a closure
/// or function item, not a pointer, so the fold inlines and vectorizes),
/// for `f32` or `f64` rows.
fn fold_by<T: RowFloat, F: Fn(T, T) -> T + Sync + Copy>(
    xs: &[T],
    pairwise: bool,
    id: T,
    f: F,
    fast: Option<Leaf<T, T>>,
) -> T {
    let r = Fold { id, step: f, combine: f, finish: keep::<T>, pairwise, fast, _types: PhantomData::<fn(T) -> T> };
    OneRow(xs).run(&r)
}

/// Long runs fold pairwise (every float fold: sums, products, extrema).
const PAIRWISE: bool = true;
/// Runs fold whole: the result does not depend on the order (logical
/// folds, exact integer arithmetic).
const ANY_ORDER: bool = false;

/// The accumulator is the result (`finish` for sum, max, ...).
#[inline(always)]
fn keep<A>(a: A, _: usize) -> A {
    a
}

/// Element values a statistic folds: plain values whose type can be
/// compared with the accumulator's (see `Lse::block`).
trait Plain: Copy + 'static {}
impl<T: Copy + 'static> Plain for T {}

/// Float arithmetic of the one-pass statistics' accumulators (`f32`, `f64`).
pub(crate) trait AccFloat:
    Copy
    + 'static
    + Send
    + Sync
    + PartialOrd
    + std::ops::Add<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Mul<Output = Self>
    + std::ops::Div<Output = Self>
{
    const ZERO: Self;
    /// The additive identity that keeps a sum of negative zeros negative
    /// (as NumPy's `sum([-0.0])` is `-0.0`): `-0 + x == x` for every `x`.
    const NEG_ZERO: Self;
    const ONE: Self;
    const NEG_INF: Self;
    const INF: Self;
    const NAN: Self;
    fn exp(self) -> Self;
    fn ln(self) -> Self;
    fn count(n: usize) -> Self;
    fn is_finite(self) -> bool;
    /// `sum(e^(x[i] - m))` for a finite `m` at least every `x[i]`, none
    /// NaN (vectorized for `f32`).
    fn sum_exp_below(x: &[Self], m: Self) -> Self;
    /// The maximum of `x` when every element is finite, else `None`
    /// (vectorized for `f32`).
    fn max_if_finite(x: &[Self]) -> Option<Self>;
    /// Log-sum-exp leaves of `m.len()` adjacent columns read in place
    /// ([`simd_math::lse_columns_f32`]): each column's maximum and sum of
    /// `exp(x - max)` over `rows` rows a `stride` apart into `m` and `s`,
    /// `finite` telling which groups of [`COLUMNS`] held only finite
    /// elements; `false` for types without vector code.
    fn lse_columns(
        _x: &[Self],
        _stride: usize,
        _rows: usize,
        _m: &mut [Self],
        _s: &mut [Self],
        _finite: &mut [bool],
    ) -> bool {
        false
    }
}

macro_rules! acc_float {
    ($($t:ty => $exp:expr, $ln:expr, $sum_exp:expr, $max:expr $(, $cols:expr)?);*) => {$(
        impl AccFloat for $t {
            const ZERO: $t = 0.0;
            const NEG_ZERO: $t = -0.0;
            const ONE: $t = 1.0;
            const NEG_INF: $t = <$t>::NEG_INFINITY;
            const INF: $t = <$t>::INFINITY;
            const NAN: $t = <$t>::NAN;
            #[inline(always)]
            fn exp(self) -> $t {
                $exp(self)
            }
            #[inline(always)]
            fn ln(self) -> $t {
                $ln(self)
            }
            #[inline(always)]
            fn count(n: usize) -> $t {
                n as $t
            }
            #[inline(always)]
            fn is_finite(self) -> bool {
                <$t>::is_finite(self)
            }
            #[inline(always)]
            fn sum_exp_below(x: &[$t], m: $t) -> $t {
                $sum_exp(x, m)
            }
            #[inline(always)]
            fn max_if_finite(x: &[$t]) -> Option<$t> {
                $max(x)
            }
            $(
            #[inline(always)]
            fn lse_columns(
                x: &[$t],
                stride: usize,
                rows: usize,
                m: &mut [$t],
                s: &mut [$t],
                finite: &mut [bool],
            ) -> bool {
                $cols(x, stride, rows, m, s, finite);
                true
            }
            )?
        }
    )*};
}
// `f64` statistics use `math_f64`'s `exp` and `log` (the `exp` and `log`
// ops' own), whose branch-free code vectorizes in the blocks' sums: the C
// library's `exp`, one call per element, made an `f64` softmax over rows
// of 64 values 3.4x slower than the `f32` one.
acc_float!(
    f32 => f32::exp, f32::ln, crate::backend::cpu::simd_math::sum_exp_below_f32,
        crate::backend::cpu::simd_math::max_if_finite_f32,
        crate::backend::cpu::simd_math::lse_columns_f32;
    f64 => math_f64::exp, math_f64::log, |x: &[f64], m: f64| lane_sum(x, |v: f64| math_f64::exp(v - m)),
        |x: &[f64]| x.iter().all(|v| v.is_finite()).then(|| x.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v)))
            .filter(|m| m.is_finite())
);

/// Sum of a short slice with independent lanes (vectorizes).
#[inline(always)]
fn lane_sum<I: Copy, A: AccFloat>(xs: &[I], f: impl Fn(I) -> A) -> A {
    lane_sum_from(A::ZERO, xs, f)
}

/// [`lane_sum`] with every lane starting at `zero` (`-0.0` to fold as the
/// `sum` reduction does).
#[inline(always)]
fn lane_sum_from<I: Copy, A: AccFloat>(zero: A, xs: &[I], f: impl Fn(I) -> A) -> A {
    let mut lanes = [zero; LANES];
    let mut chunks = xs.chunks_exact(LANES);
    for c in &mut chunks {
        for (a, &v) in lanes.iter_mut().zip(c) {
            *a = *a + f(v);
        }
    }
    for (a, &v) in lanes.iter_mut().zip(chunks.remainder()) {
        *a = *a + f(v);
    }
    let mut w = LANES / 2;
    while w > 0 {
        for l in 0..w {
            lanes[l] = lanes[l] + lanes[l + w];
        }
        w /= 2;
    }
    lanes[0]
}

/// The running state of `logsumexp` and `sumexp`: the maximum so far and
/// the sum of `exp(x - m)` (0 for an empty or all `-inf` run).
#[derive(Clone, Copy)]
struct Lse<A> {
    m: A,
    s: A,
}

impl<A: AccFloat> Lse<A> {
    const EMPTY: Lse<A> = Lse { m: A::NEG_INF, s: A::ZERO };

    #[inline(always)]
    fn one(x: A) -> Lse<A> {
        if x == A::NEG_INF {
            Lse::EMPTY
        } else {
            Lse { m: x, s: A::ONE }
        }
    }

    #[inline(always)]
    fn combine(a: Lse<A>, b: Lse<A>) -> Lse<A> {
        if is_nan(a.m) || is_nan(b.m) {
            return Lse { m: A::NAN, s: A::ONE };
        }
        let (hi, lo) = if a.m >= b.m { (a, b) } else { (b, a) };
        if lo.s == A::ZERO {
            hi
        } else if !hi.m.is_finite() {
            // +inf dominates (and inf - inf must not appear).
            Lse { m: hi.m, s: A::ONE }
        } else {
            Lse { m: hi.m, s: hi.s + lo.s * (lo.m - hi.m).exp() }
        }
    }

    /// A block of at most [`LSE_BLOCK`] elements ([`Lse::of`]). Elements
    /// of the accumulator's own type are read in place (the callers widen
    /// only other types: f16, bf16, integers, bools, so `widen` is the
    /// identity here); others are widened into a copy first.
    #[inline(always)]
    fn block<I: Plain>(xs: &[I], widen: impl Fn(I) -> A) -> Lse<A> {
        let n = xs.len();
        if let Some(xs) = same_type::<I, A>(xs) {
            return Lse::of(xs);
        }
        let mut v = [A::ZERO; LSE_BLOCK];
        for (d, &x) in v.iter_mut().zip(xs) {
            *d = widen(x);
        }
        Lse::of(&v[..n])
    }

    /// The accumulator of `xs`: its maximum `m`, then one vectorized pass
    /// summing `exp(x - m)`. When every element is finite the maximum is
    /// the vector code's ([`AccFloat::max_if_finite`]: lane maxima, one
    /// check for the whole leaf); a NaN or an infinity takes the scalar
    /// path below, which gives NaN, an infinite maximum or the empty
    /// accumulator as [`Lse::combine`] expects them.
    #[inline(always)]
    fn of(xs: &[A]) -> Lse<A> {
        if let Some(m) = A::max_if_finite(xs) {
            return Lse { m, s: A::sum_exp_below(xs, m) };
        }
        let mut m = A::NEG_INF;
        for &x in xs {
            if is_nan(x) {
                return Lse { m: A::NAN, s: A::ONE };
            }
            m = if x > m { x } else { m };
        }
        if !m.is_finite() {
            return if m == A::NEG_INF { Lse::EMPTY } else { Lse { m, s: A::ONE } };
        }
        Lse { m, s: A::sum_exp_below(xs, m) }
    }

    /// [`Reducer::leaves_across`] for elements of the accumulator's own
    /// type with vector code ([`AccFloat::lse_columns`]).
    fn across<I: Element>(
        src: &[I],
        at: usize,
        stride: usize,
        rows: usize,
        out: &mut [Lse<A>],
        finite: &mut [bool],
    ) -> bool {
        let Some(xs) = same_type::<I, A>(src) else {
            return false;
        };
        let w = out.len();
        let (mut m, mut s) = ([A::ZERO; ACROSS], [A::ZERO; ACROSS]);
        if !A::lse_columns(&xs[at..], stride, rows, &mut m[..w], &mut s[..w], finite) {
            return false;
        }
        for ((o, &m), &s) in out.iter_mut().zip(&m[..w]).zip(&s[..w]) {
            *o = Lse { m, s };
        }
        true
    }

    fn log_sum_exp(self) -> A {
        // -inf + ln(0) = -inf for an empty or all -inf run.
        self.m + self.s.ln()
    }

    fn sum_exp(self) -> A {
        // exp(x - max) with a non-finite max is NaN in the two-pass form.
        if self.m.is_finite() {
            self.s
        } else {
            A::NAN
        }
    }
}

/// The running moments of `var`: count, mean and the sum of squared
/// deviations from it, merged with Chan's formula.
#[derive(Clone, Copy)]
pub(crate) struct Moments<A> {
    n: A,
    mean: A,
    m2: A,
    /// The plain sum, folded exactly as the `mean` reduction folds it (same
    /// blocks, lanes and pairwise combining), so a mean carried by the
    /// moments equals the `mean` reduction bit for bit.
    sum: A,
}

impl<A: AccFloat> Moments<A> {
    const EMPTY: Moments<A> = Moments { n: A::ZERO, mean: A::ZERO, m2: A::ZERO, sum: A::NEG_ZERO };

    /// One element: `(x - x)^2` is 0, or NaN for NaN and infinities (as the
    /// two-pass form gives).
    #[inline(always)]
    #[allow(clippy::eq_op)]
    fn one(x: A) -> Moments<A> {
        let d = x - x;
        Moments { n: A::ONE, mean: x, m2: d * d, sum: A::NEG_ZERO + x }
    }

    #[inline(always)]
    fn combine(a: Moments<A>, b: Moments<A>) -> Moments<A> {
        if a.n == A::ZERO {
            return b;
        }
        if b.n == A::ZERO {
            return a;
        }
        let n = a.n + b.n;
        let d = b.mean - a.mean;
        Moments { n, mean: a.mean + d * (b.n / n), m2: a.m2 + b.m2 + d * d * (a.n * b.n / n), sum: a.sum + b.sum }
    }

    /// A block in two vectorized passes (it is in L1): mean, then squared deviations.
    #[inline(always)]
    fn block<I: Copy>(xs: &[I], widen: impl Fn(I) -> A) -> Moments<A> {
        let count = A::count(xs.len());
        let sum = lane_sum_from(A::NEG_ZERO, xs, &widen);
        let mean = sum / count;
        let m2 = lane_sum(xs, |x| {
            let d = widen(x) - mean;
            d * d
        });
        Moments { n: count, mean, m2, sum }
    }

    /// [`Reducer::fold_rows`]: per output, the run's sum, then its squared
    /// deviations from the run's mean, combined with the accumulator once
    /// ([`moments_rows`]). The plain sum each accumulator carries is the
    /// `mean` reduction's, bit for bit: within a leaf the rows added in
    /// order from the accumulator's own sum, as the steps did; a longer run
    /// (fresh accumulators) in the walk's pairwise tree of leaves. Stepping
    /// each element through [`Moments::combine`] cost two divisions: a
    /// variance over the columns of 4096 x 4096 took 8x the time of one
    /// over its rows.
    #[inline(always)]
    fn fold_rows<I: Copy>(
        src: &[I],
        at: usize,
        stride: usize,
        rows: usize,
        leaf: usize,
        acc: &mut [Moments<A>],
        widen: impl Fn(I) -> A + Copy,
    ) {
        if rows == 0 || acc.is_empty() {
            return;
        }
        let mut order = Vec::new();
        tree_order(0..rows, leaf, &mut order);
        moments_rows(src, at, stride, &order, acc, widen);
    }

    /// `m2 / max(n - ddof, 0)`: 0 / 0 = NaN for an empty run (as for the
    /// mean), inf when `ddof >= n` (as in NumPy).
    fn var(self, ddof: usize) -> A {
        let d = A::count(ddof);
        self.m2 / if self.n > d { self.n - d } else { A::ZERO }
    }
}

/// The accumulator of a one-pass statistic: [`Lse`] for `sumexp` and
/// `logsumexp`, [`Moments`] for `var`.
#[derive(Clone, Copy)]
enum Stat<A> {
    Lse(Lse<A>),
    Moments(Moments<A>),
}

impl<A: AccFloat> Stat<A> {
    /// The merge of two accumulators of one statistic (the fold's own).
    fn combine(a: Stat<A>, b: Stat<A>) -> Stat<A> {
        match (a, b) {
            (Stat::Lse(a), Stat::Lse(b)) => Stat::Lse(Lse::combine(a, b)),
            (Stat::Moments(a), Stat::Moments(b)) => Stat::Moments(Moments::combine(a, b)),
            _ => unreachable!("accumulators of one statistic"),
        }
    }

    /// The statistic `op` finished from the accumulator.
    fn value(self, op: ReduceOp) -> A {
        match (self, op) {
            (Stat::Lse(a), ReduceOp::LogSumExp) => a.log_sum_exp(),
            (Stat::Lse(a), _) => a.sum_exp(),
            (Stat::Moments(a), ReduceOp::Var { ddof }) => a.var(ddof),
            _ => unreachable!("var is finished from moments"),
        }
    }

    /// The reduction the accumulator carries (see [`reduce_many`]) over
    /// `n` elements: the running maximum, or the mean.
    fn carried(self, n: usize) -> A {
        match self {
            Stat::Lse(a) => a.m,
            Stat::Moments(a) => a.sum / A::count(n),
        }
    }
}

/// Runs one of the one-pass statistics, accumulating in `A`.
fn exec_stat<I: Element, A: AccFloat, O: Element>(
    op: ReduceOp,
    src: &[I],
    p: &Plan,
    widen: impl Fn(I) -> A + Sync + Copy,
    narrow: impl Fn(A) -> O + Sync + Copy,
    fast: Option<MomentsLeaf<I, A>>,
) -> Buffer {
    Buffer::from_vec(fold_stat(op, OverPlan(src, p), widen, |stat, _| narrow(stat.value(op)), fast))
}

/// A one-pass statistic and the reduction its accumulator carries, from
/// one fold: `max` (the running maximum) with `sumexp`/`logsumexp`, `mean`
/// (the plain sum over the count, folded as `mean` folds it) with `var`.
fn exec_stat_pair<I: Element, A: AccFloat, O: Element>(
    op: ReduceOp,
    src: &[I],
    p: &Plan,
    widen: impl Fn(I) -> A + Sync + Copy,
    narrow: impl Fn(A) -> O + Sync + Copy,
    fast: Option<MomentsLeaf<I, A>>,
) -> (Buffer, Buffer) {
    let value = |stat: Stat<A>, n| (narrow(stat.value(op)), narrow(stat.carried(n)));
    let pairs = fold_stat(op, OverPlan(src, p), widen, value, fast);
    let (a, b): (Vec<O>, Vec<O>) = pairs.into_iter().unzip();
    (Buffer::from_vec(a), Buffer::from_vec(b))
}

/// Where a reducer runs: over the outputs of a [`Plan`] ([`execute`]), or
/// over one contiguous row ([`OneRow`]).
trait Runner<I> {
    /// What the run gives for outputs of type `O`: every output of a plan,
    /// or the one output of a row (no allocation per row).
    type Outs<O>;
    /// The reducer's outputs.
    fn run<R: Reducer<In = I>>(self, r: &R) -> Self::Outs<R::Out>;
}

/// Every output of a plan over `src`.
struct OverPlan<'a, I>(&'a [I], &'a Plan);

impl<I: Element> Runner<I> for OverPlan<'_, I> {
    type Outs<O> = Vec<O>;
    fn run<R: Reducer<In = I>>(self, r: &R) -> Vec<R::Out> {
        execute(r, self.0, self.1)
    }
}

/// The one output of a contiguous row, folded as [`execute`] folds each
/// contiguous row it reduces ([`run`], then `finish`).
struct OneRow<'a, I>(&'a [I]);

impl<I: Element> Runner<I> for OneRow<'_, I> {
    type Outs<O> = O;
    fn run<R: Reducer<In = I>>(self, r: &R) -> R::Out {
        let xs = self.0;
        let acc = match xs.len() {
            0 => r.identity(),
            // What `run` does with a contiguous run of one leaf, inline (a
            // short row's fold is mostly calls).
            n if n <= r.leaf() => contiguous_run(r, xs),
            n => run(r, xs, 0, n, 1),
        };
        r.finish(acc, xs.len())
    }
}

/// Float types whose rows fold in their own precision, as [`reduce`] folds
/// them: `f32` and `f64` (the dtypes of the row kernels).
pub(crate) trait RowFloat: Widen<Acc = Self> + AccFloat {}
impl RowFloat for f32 {}
impl RowFloat for f64 {}

/// [`Widen::fast_leaf`] of `f32`: the AVX-512 or AVX2 leaf of a sum (or
/// mean), maximum or minimum at the detected level.
fn fast_leaf_f32(op: ReduceOp) -> Option<Leaf<f32, f32>> {
    #[cfg(target_arch = "x86_64")]
    {
        use crate::backend::simd_math::{detected_level, Level};
        let leaves: [Leaf<f32, f32>; 3] = match detected_level() {
            Level::Avx512 => [avx512_leaf::<0>, avx512_leaf::<1>, avx512_leaf::<2>],
            Level::Avx2 => [avx2_leaf::<0>, avx2_leaf::<1>, avx2_leaf::<2>],
            Level::Scalar => return None,
        };
        match op {
            ReduceOp::Sum | ReduceOp::Mean => Some(leaves[0]),
            ReduceOp::Max => Some(leaves[1]),
            ReduceOp::Min => Some(leaves[2]),
            _ => None,
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = op;
        None
    }
}

/// The AVX-512 leaf of a sum (`OP` 0), maximum (1) or minimum (2), handed
/// out by [`fast_leaf_f32`] only.
#[cfg(target_arch = "x86_64")]
fn avx512_leaf<const OP: u8>(xs: &[f32]) -> f32 {
    let op = [ReduceOp::Sum, ReduceOp::Max, ReduceOp::Min][OP as usize];
    // SAFETY: `fast_leaf_f32` hands this out only when the detected level
    // has AVX-512F.
    unsafe { x86::fold_leaf_avx512(op, xs) }
}

/// [`avx512_leaf`] in AVX2 code.
#[cfg(target_arch = "x86_64")]
fn avx2_leaf<const OP: u8>(xs: &[f32]) -> f32 {
    let op = [ReduceOp::Sum, ReduceOp::Max, ReduceOp::Min][OP as usize];
    // SAFETY: `fast_leaf_f32` hands this out only when the detected level
    // has AVX2.
    unsafe { x86::fold_leaf_avx2(op, xs) }
}

/// [`Widen::moments_leaf`] of `f32`: [`Moments::block`]'s two passes in
/// AVX-512 or AVX2 code at the detected level.
fn moments_leaf_f32() -> Option<MomentsLeaf<f32, f32>> {
    #[cfg(target_arch = "x86_64")]
    {
        use crate::backend::simd_math::{detected_level, Level};
        match detected_level() {
            Level::Avx512 => Some(|xs| {
                // SAFETY: the detected level has AVX-512F.
                let (sum, m2, mean) = unsafe { x86::moments_avx512(xs) };
                Moments { n: xs.len() as f32, mean, m2, sum }
            }),
            Level::Avx2 => Some(|xs| {
                // SAFETY: the detected level has AVX2.
                let (sum, m2, mean) = unsafe { x86::moments_avx2(xs) };
                Moments { n: xs.len() as f32, mean, m2, sum }
            }),
            Level::Scalar => None,
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    None
}

/// Explicit AVX-512 and AVX2 folds.
#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{ReduceOp, LANES};
    use crate::dtype::Element;

    /// [`super::arg_step`] compiled for AVX-512F.
    ///
    /// # Safety
    /// The CPU has AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn arg_step_avx512<T: Element, const MAX: bool>(
        best: &mut [T],
        out: &mut [u32],
        row: &[T],
        i: u32,
    ) {
        super::arg_step_generic::<T, MAX>(best, out, row, i)
    }

    /// [`super::arg_step`] compiled for AVX2.
    ///
    /// # Safety
    /// The CPU has AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn arg_step_avx2<T: Element, const MAX: bool>(
        best: &mut [T],
        out: &mut [u32],
        row: &[T],
        i: u32,
    ) {
        super::arg_step_generic::<T, MAX>(best, out, row, i)
    }

    /// The fold of the contiguous `f32` leaf `xs` by `op` (a sum, max or
    /// min; any other op as a sum), bit for bit what [`super::fold_lanes`]
    /// and [`super::combine_lanes`] compute with the same step: [`LANES`]
    /// lanes, lane `l` folding elements `l`, `l + LANES`, ... (four
    /// registers of 16), then combined pairwise, lane `l` with lane `l + w`
    /// for `w` from 32 down to 1. The generic fold's compiled combine went
    /// through the stack and back, pair of lanes by pair: most of a fold
    /// over a row of 64 values.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn fold_leaf_avx512(op: ReduceOp, xs: &[f32]) -> f32 {
        match op {
            ReduceOp::Max => fold(xs, f32::NEG_INFINITY, |a, x| {
                let take = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(x, a) | _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(x, x);
                _mm512_mask_mov_ps(a, take, x)
            }),
            ReduceOp::Min => fold(xs, f32::INFINITY, |a, x| {
                let take = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(x, a) | _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(x, x);
                _mm512_mask_mov_ps(a, take, x)
            }),
            _ => fold(xs, -0.0, |a, x| _mm512_add_ps(a, x)),
        }
    }

    /// `Moments::block` of `xs` (sum, sum of squared deviations from the
    /// mean, mean), bit for bit: the sum as the sum leaf folds it (from
    /// -0), then `(x - mean)^2` folded in the same lanes from +0 (a
    /// product and a sum, no fused multiply-add, as the generic code).
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn moments_avx512(xs: &[f32]) -> (f32, f32, f32) {
        let add = |a, x| _mm512_add_ps(a, x);
        let sum = fold(xs, -0.0, add);
        let mean = sum / xs.len() as f32;
        let m = _mm512_set1_ps(mean);
        let m2 = fold_map(xs, 0.0, add, |x| {
            let d = _mm512_sub_ps(x, m);
            _mm512_mul_ps(d, d)
        });
        (sum, m2, mean)
    }

    /// [`fold_leaf_avx512`] with the step (and combination) `f`, lane-wise:
    /// `f(acc, x)` (the reduce module's `fmax(acc, x)`, `acc + x`, ...).
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn fold(xs: &[f32], id: f32, f: impl Fn(__m512, __m512) -> __m512) -> f32 {
        fold_map(xs, id, f, |x| x)
    }

    /// [`fold`] of `map(x)` for each element `x`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn fold_map(xs: &[f32], id: f32, f: impl Fn(__m512, __m512) -> __m512, map: impl Fn(__m512) -> __m512) -> f32 {
        const { assert!(LANES == 64, "four registers of 16 lanes") };
        let mut acc = [_mm512_set1_ps(id); 4];
        let mut chunks = xs.chunks_exact(LANES);
        for c in &mut chunks {
            for (j, a) in acc.iter_mut().enumerate() {
                // SAFETY: the chunk holds LANES = 64 elements, so 16 from 16 j.
                *a = f(*a, map(unsafe { _mm512_loadu_ps(c.as_ptr().add(16 * j)) }));
            }
        }
        let rest = chunks.remainder();
        for (j, a) in acc.iter_mut().enumerate() {
            let start = 16 * j;
            if start < rest.len() {
                let m: __mmask16 = (((1u32 << (rest.len() - start).min(16)) - 1) & 0xffff) as u16;
                // SAFETY: the masked load reads only lanes below `m`'s
                // count, elements `start..` of `rest` that exist.
                let x = unsafe { _mm512_maskz_loadu_ps(m, rest.as_ptr().add(start)) };
                *a = _mm512_mask_mov_ps(*a, m, f(*a, map(x)));
            }
        }
        // Lanes 0..32 with 32..64, then 0..16 with 16..32, then within a
        // register: 8, 4, 2 and 1 lanes apart.
        let v = f(f(acc[0], acc[2]), f(acc[1], acc[3]));
        let v = f(v, _mm512_shuffle_f32x4::<0b11_10_11_10>(v, v));
        let v = f(v, _mm512_shuffle_f32x4::<0b01_01_01_01>(v, v));
        let v = f(v, _mm512_permute_ps::<0b11_10_11_10>(v));
        let v = f(v, _mm512_permute_ps::<0b01_01_01_01>(v));
        _mm512_cvtss_f32(v)
    }

    /// [`fold_leaf_avx512`] in AVX2 code: the same [`LANES`] lanes in eight
    /// registers of 8, combined in the same pairs, so the two give the same
    /// bits.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn fold_leaf_avx2(op: ReduceOp, xs: &[f32]) -> f32 {
        match op {
            ReduceOp::Max => fold8(xs, f32::NEG_INFINITY, |a, x| {
                let take = _mm256_or_ps(_mm256_cmp_ps::<_CMP_GT_OQ>(x, a), _mm256_cmp_ps::<_CMP_UNORD_Q>(x, x));
                _mm256_blendv_ps(a, x, take)
            }),
            ReduceOp::Min => fold8(xs, f32::INFINITY, |a, x| {
                let take = _mm256_or_ps(_mm256_cmp_ps::<_CMP_LT_OQ>(x, a), _mm256_cmp_ps::<_CMP_UNORD_Q>(x, x));
                _mm256_blendv_ps(a, x, take)
            }),
            _ => fold8(xs, -0.0, |a, x| _mm256_add_ps(a, x)),
        }
    }

    /// [`moments_avx512`] in AVX2 code (the same bits).
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn moments_avx2(xs: &[f32]) -> (f32, f32, f32) {
        let add = |a, x| _mm256_add_ps(a, x);
        let sum = fold8(xs, -0.0, add);
        let mean = sum / xs.len() as f32;
        let m = _mm256_set1_ps(mean);
        let m2 = fold_map8(xs, 0.0, add, |x| {
            let d = _mm256_sub_ps(x, m);
            _mm256_mul_ps(d, d)
        });
        (sum, m2, mean)
    }

    /// [`fold`] in AVX2 code.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn fold8(xs: &[f32], id: f32, f: impl Fn(__m256, __m256) -> __m256) -> f32 {
        fold_map8(xs, id, f, |x| x)
    }

    /// [`fold_map`] in AVX2 code: lane `l` in register `l / 8`.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn fold_map8(xs: &[f32], id: f32, f: impl Fn(__m256, __m256) -> __m256, map: impl Fn(__m256) -> __m256) -> f32 {
        const { assert!(LANES == 64, "eight registers of 8 lanes") };
        let mut acc = [_mm256_set1_ps(id); 8];
        let mut chunks = xs.chunks_exact(LANES);
        for c in &mut chunks {
            for (j, a) in acc.iter_mut().enumerate() {
                // SAFETY: the chunk holds LANES = 64 elements, so 8 from 8 j.
                *a = f(*a, map(unsafe { _mm256_loadu_ps(c.as_ptr().add(8 * j)) }));
            }
        }
        let rest = chunks.remainder();
        let index = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        for (j, a) in acc.iter_mut().enumerate() {
            let start = 8 * j;
            if start < rest.len() {
                let m = _mm256_cmpgt_epi32(_mm256_set1_epi32((rest.len() - start).min(8) as i32), index);
                // SAFETY: the masked load reads only the lanes of `m`,
                // elements `start..` of `rest` that exist.
                let x = unsafe { _mm256_maskload_ps(rest.as_ptr().add(start), m) };
                *a = _mm256_blendv_ps(*a, f(*a, map(x)), _mm256_castsi256_ps(m));
            }
        }
        // Lanes l with l + 32 (registers j and j + 4), then l + 16
        // (j and j + 2), l + 8 (0 and 1), then within a register: 4, 2
        // and 1 lanes apart.
        let v = f(f(f(acc[0], acc[4]), f(acc[2], acc[6])), f(f(acc[1], acc[5]), f(acc[3], acc[7])));
        let v = f(v, _mm256_permute2f128_ps::<0x01>(v, v));
        let v = f(v, _mm256_permute_ps::<0b11_10_11_10>(v));
        let v = f(v, _mm256_permute_ps::<0b01_01_01_01>(v));
        _mm256_cvtss_f32(v)
    }
}

/// The reduction `op` of the contiguous `f32` or `f64` row `xs`, as
/// [`reduce`] gives it for such a row (the same folds, bit for bit): sums,
/// means, extrema and the one-pass statistics; `None` for a product or a
/// logical reduction.
pub(crate) fn reduce_row<T: RowFloat>(op: ReduceOp, xs: &[T]) -> Option<T> {
    Some(match op {
        ReduceOp::Sum if xs.is_empty() => T::ZERO,
        ReduceOp::Sum | ReduceOp::Max | ReduceOp::Min => fold_row(op, xs),
        ReduceOp::Mean => fold_row(op, xs) / T::count(xs.len()),
        ReduceOp::Var { .. } | ReduceOp::SumExp | ReduceOp::LogSumExp => {
            fold_stat(op, OneRow(xs), |x: T| x, |stat, _| stat.value(op), T::moments_leaf())
        }
        ReduceOp::Prod | ReduceOp::All | ReduceOp::Any => return None,
    })
}

/// The variance (`op`, a [`ReduceOp::Var`]) of the contiguous `f32` or
/// `f64` row `xs` and its mean, from one fold, as [`reduce_many`] gives
/// them: each bit for bit what [`reduce_row`] gives alone.
pub(crate) fn var_mean_row<T: RowFloat>(op: ReduceOp, xs: &[T]) -> (T, T) {
    debug_assert!(matches!(op, ReduceOp::Var { .. }), "the variance carries the mean");
    fold_stat(op, OneRow(xs), |x: T| x, |stat, n| (stat.value(op), stat.carried(n)), T::moments_leaf())
}

/// Folds the accumulators of a one-pass statistic (`Lse` for `sumexp` and
/// `logsumexp`, `Moments` for `var`), blockwise, and finishes each output
/// as `finish(accumulator, count)`.
fn fold_stat<I: Element, A: AccFloat, T: Copy + Send + Sync, Over: Runner<I>>(
    op: ReduceOp,
    over: Over,
    widen: impl Fn(I) -> A + Sync + Copy,
    finish: impl Fn(Stat<A>, usize) -> T + Sync,
    fast_moments: Option<MomentsLeaf<I, A>>,
) -> Over::Outs<T> {
    match op {
        ReduceOp::LogSumExp | ReduceOp::SumExp => {
            let inner = Fold {
                id: Lse::EMPTY,
                step: move |a, x: I| Lse::combine(a, Lse::one(widen(x))),
                combine: Lse::combine,
                finish: move |a: Lse<A>, n| finish(Stat::Lse(a), n),
                pairwise: true,
                fast: None,
                _types: PhantomData,
            };
            let block = move |xs: &[I]| lse_block(xs, widen);
            over.run(&Blocked {
                inner,
                block,
                leaf: LSE_BLOCK,
                outer_leaves: true,
                across: Some(Lse::<A>::across::<I>),
                rows: None::<FoldRows<I, Lse<A>>>,
            })
        }
        ReduceOp::Var { .. } => {
            let inner = Fold {
                id: Moments::EMPTY,
                step: move |a, x: I| Moments::combine(a, Moments::one(widen(x))),
                combine: Moments::combine,
                finish: move |a: Moments<A>, n| finish(Stat::Moments(a), n),
                pairwise: true,
                fast: None,
                _types: PhantomData,
            };
            let block = move |xs: &[I]| match fast_moments {
                Some(f) => f(xs),
                None => moments_block(xs, widen),
            };
            // (The mean it carries must be the plain sum of each output,
            // folded as the `mean` reduction folds it: leaves of `BLOCK`,
            // and in the outer walk leaves of rows added one by one and
            // joined in its tree, which `Moments::fold_rows` keeps.)
            over.run(&Blocked {
                inner,
                block,
                leaf: BLOCK,
                outer_leaves: false,
                across: None,
                rows: Some(move |src: &[I], at, stride, rows, leaf, acc: &mut [Moments<A>]| {
                    Moments::fold_rows(src, at, stride, rows, leaf, acc, widen)
                }),
            })
        }
        other => unreachable!("{} is not a one-pass statistic", other.name()),
    }
}

crate::backend::cpu::tile::multiversion! {
    /// [`Lse::block`] vectorized at the best SIMD level.
    fn lse_block<A: AccFloat, I: Plain, W: Fn(I) -> A>(xs: &[I], widen: W) -> Lse<A> => lse_block_at
}

/// The order in which the outer walk folds the rows `rows` with leaves of
/// at most `leaf` rows, split in halves (post-order): `Some(range)` a leaf,
/// its rows added in order, `None` the sum of the last two results.
fn tree_order(rows: Range<usize>, leaf: usize, out: &mut Vec<Option<Range<usize>>>) {
    if rows.len() > leaf {
        let mid = rows.start + rows.len() / 2;
        tree_order(rows.start..mid, leaf, out);
        tree_order(mid..rows.end, leaf, out);
        out.push(None);
    } else {
        out.push(Some(rows));
    }
}

crate::backend::cpu::tile::multiversion! {
    /// [`Moments::fold_rows`] vectorized at the best SIMD level.
    fn moments_rows<I: Copy, A: AccFloat, W: Fn(I) -> A>(xs: &[I], at: usize, stride: usize, order: &[Option<Range<usize>>], acc: &mut [Moments<A>], widen: W) => moments_rows_at
}

/// [`moments_rows`] over the rows that `order` ([`tree_order`]) folds, for
/// groups of adjacent outputs whose rows stay within [`ACROSS_BYTES`] (at
/// most [`ROW_WIDTH`] outputs): the run's sums as each row streams
/// through, the leaves' sums joined on a stack; the means; the squared
/// deviations over the same rows (in L2); then one [`Moments::combine`]
/// per output. (Groups of 16 outputs read a line from each of 16 rows, a
/// row's length apart: the loads waited on memory, and the second pass
/// found its lines evicted from L1, all in one set.)
#[inline(always)]
fn moments_rows_at<I: Copy, A: AccFloat, W: Fn(I) -> A>(
    xs: &[I],
    at: usize,
    stride: usize,
    order: &[Option<Range<usize>>],
    acc: &mut [Moments<A>],
    widen: W,
) {
    let rows = order.iter().flatten().map(Range::len).sum::<usize>();
    let count = A::count(rows);
    let depth = order.iter().scan(0usize, |top, e| {
        *top = if e.is_some() { *top + 1 } else { *top - 1 };
        Some(*top)
    });
    let depth = depth.max().unwrap_or(1);
    let width = (ACROSS_BYTES / (rows * std::mem::size_of::<I>())).clamp(ROW_MIN, ROW_WIDTH).min(acc.len());
    // The stack of partial sums, then the carried sums and the squared
    // deviations.
    let mut buf = vec![A::ZERO; (depth + 2) * width];
    let (stack, rest) = buf.split_at_mut(depth * width);
    let (sum, m2) = rest.split_at_mut(width);
    for (g, accs) in acc.chunks_mut(width).enumerate() {
        let w = accs.len();
        let row = |j: usize| &xs[at + j * stride + g * width..][..w];
        let (sum, m2) = (&mut sum[..w], &mut m2[..w]);
        // Fresh accumulators carry -0, and `-0 + s` is `s`: the run's sums
        // are the carried sums. Otherwise the run is one leaf, and the
        // carried sums go on from the accumulators' own.
        let fresh = accs.iter().all(|a| a.n == A::ZERO);
        debug_assert!(fresh || order.len() == 1, "a run of leaves folds into fresh accumulators");
        if !fresh {
            for (s, a) in sum.iter_mut().zip(&*accs) {
                *s = a.sum;
            }
        }
        let mut top = 0;
        for e in order {
            match e {
                Some(leaf) => {
                    let part = &mut stack[top * width..][..w];
                    part.fill(A::NEG_ZERO);
                    for j in leaf.clone() {
                        if fresh {
                            // The next row's line at each line of this one:
                            // the hardware's prefetch stops at the page's end.
                            let ahead = stride * std::mem::size_of::<I>();
                            let mut sums = part.chunks_exact_mut(ROW_MIN);
                            let mut segment = row(j).chunks_exact(ROW_MIN);
                            for (p, x) in (&mut sums).zip(&mut segment) {
                                for b in (0..std::mem::size_of_val(x)).step_by(64) {
                                    let line = x.as_ptr().cast::<u8>().wrapping_add(b);
                                    crate::backend::cpu::stream::prefetch_ahead(line, ahead);
                                }
                                for (p, &x) in p.iter_mut().zip(x) {
                                    *p = *p + widen(x);
                                }
                            }
                            for (p, &x) in sums.into_remainder().iter_mut().zip(segment.remainder()) {
                                *p = *p + widen(x);
                            }
                        } else {
                            for ((p, s), &x) in part.iter_mut().zip(sum.iter_mut()).zip(row(j)) {
                                let x = widen(x);
                                *p = *p + x;
                                *s = *s + x;
                            }
                        }
                    }
                    top += 1;
                }
                None => {
                    let (low, high) = stack.split_at_mut((top - 1) * width);
                    for (a, &b) in low[(top - 2) * width..][..w].iter_mut().zip(&high[..w]) {
                        *a = *a + b;
                    }
                    top -= 1;
                }
            }
        }
        let run = &mut stack[..w];
        if fresh {
            sum.copy_from_slice(run);
        }
        // The run's means, in place of its sums.
        for r in run.iter_mut() {
            *r = *r / count;
        }
        m2.fill(A::ZERO);
        for j in order.iter().flatten().flat_map(Range::clone) {
            for ((m, &mean), &x) in m2.iter_mut().zip(&*run).zip(row(j)) {
                let d = widen(x) - mean;
                *m = *m + d * d;
            }
        }
        for (c, a) in accs.iter_mut().enumerate() {
            let part = Moments { n: count, mean: run[c], m2: m2[c], sum: A::NEG_ZERO };
            *a = Moments { sum: sum[c], ..Moments::combine(*a, part) };
        }
    }
}

crate::backend::cpu::tile::multiversion! {
    /// [`Moments::block`] vectorized at the best SIMD level.
    fn moments_block<A: AccFloat, I: Copy, W: Fn(I) -> A>(xs: &[I], widen: W) -> Moments<A> => moments_block_at
}

#[inline(always)]
fn lse_block_at<A: AccFloat, I: Plain, W: Fn(I) -> A>(xs: &[I], widen: W) -> Lse<A> {
    Lse::block(xs, widen)
}

#[inline(always)]
fn moments_block_at<A: AccFloat, I: Copy, W: Fn(I) -> A>(xs: &[I], widen: W) -> Moments<A> {
    Moments::block(xs, widen)
}

/// `xs` as a slice of `A` when `I` is `A` (the statistics' vector code reads
/// elements of the accumulator's own type in place; others are widened).
fn same_type<I: 'static, A: 'static>(xs: &[I]) -> Option<&[A]> {
    (std::any::TypeId::of::<I>() == std::any::TypeId::of::<A>())
        // SAFETY: `I` and `A` are the same type, so the slice is
        // reinterpreted as itself (same length, layout and lifetime).
        .then(|| unsafe { std::slice::from_raw_parts(xs.as_ptr().cast::<A>(), xs.len()) })
}

/// Element types that know how to run every [`ReduceOp`] on themselves.
trait Reducible: Element {
    fn reduce_slice(op: ReduceOp, src: &[Self], p: &Plan) -> Buffer;
    /// The one-pass statistic `stat` and the reduction its accumulator
    /// carries (see [`reduce_many`]), when this type has them.
    fn reduce_pair(_stat: ReduceOp, _src: &[Self], _p: &Plan) -> Option<(Buffer, Buffer)> {
        None
    }
}

macro_rules! int_reducible {
    ($($t:ty),*) => {$(
        impl Reducible for $t {
            fn reduce_slice(op: ReduceOp, src: &[$t], p: &Plan) -> Buffer {
                match op {
                    ReduceOp::Sum => exec(ANY_ORDER, src, p, 0, <$t>::wrapping_add, <$t>::wrapping_add, keep),
                    ReduceOp::Prod => exec(ANY_ORDER, src, p, 1, <$t>::wrapping_mul, <$t>::wrapping_mul, keep),
                    ReduceOp::Max => exec(ANY_ORDER, src, p, <$t>::MIN, <$t as Ord>::max, <$t as Ord>::max, keep),
                    ReduceOp::Min => exec(ANY_ORDER, src, p, <$t>::MAX, <$t as Ord>::min, <$t as Ord>::min, keep),
                    ReduceOp::Mean => exec(
                        PAIRWISE,
                        src,
                        p,
                        0.0f64,
                        |a, x: $t| a + x as f64,
                        |a, b| a + b,
                        |a, n| (a / n as f64) as f32,
                    ),
                    ReduceOp::All => exec(ANY_ORDER, src, p, true, |a, x: $t| a & (x != 0), |a, b| a & b, |a, _| a),
                    ReduceOp::Any => exec(ANY_ORDER, src, p, false, |a, x: $t| a | (x != 0), |a, b| a | b, |a, _| a),
                    ReduceOp::LogSumExp | ReduceOp::SumExp | ReduceOp::Var { .. } => {
                        exec_stat(op, src, p, |x: $t| x as f64, |a: f64| a as f32, None)
                    }
                }
            }
        }
    )*};
}
int_reducible!(u8, u32, i32, i64);

/// True for NaN (a value unequal to itself); false for every non-float.
#[inline(always)]
#[allow(clippy::eq_op)]
fn is_nan<T: PartialEq>(v: T) -> bool {
    v != v
}

/// NaN-propagating maximum for the fold (`acc` first).
#[inline(always)]
fn fmax<F: PartialOrd + Copy>(a: F, x: F) -> F {
    if x > a || is_nan(x) {
        x
    } else {
        a
    }
}

/// NaN-propagating minimum for the fold (`acc` first).
#[inline(always)]
fn fmin<F: PartialOrd + Copy>(a: F, x: F) -> F {
    if x < a || is_nan(x) {
        x
    } else {
        a
    }
}

/// Float types and the precision they accumulate in (`f16`/`bf16` in `f32`).
pub(crate) trait Widen: Element {
    type Acc: AccFloat;
    fn widen(self) -> Self::Acc;
    fn narrow(a: Self::Acc) -> Self;
    /// Explicit vector code for a contiguous leaf of the fold of `op` (a
    /// sum or mean, max or min), giving the generic lanes' result bit for
    /// bit, where there is one: `f32` on AVX-512.
    fn fast_leaf(_op: ReduceOp) -> Option<Leaf<Self, Self::Acc>> {
        None
    }
    /// Explicit vector code for [`Moments::block`] over a contiguous leaf,
    /// bit for bit, where there is one: `f32` on AVX-512.
    fn moments_leaf() -> Option<MomentsLeaf<Self, Self::Acc>> {
        None
    }
}

/// Explicit vector code folding a contiguous leaf of `I` into an `A`.
type Leaf<I, A> = fn(&[I]) -> A;

/// Explicit vector code for [`Moments::block`] of a contiguous leaf.
pub(crate) type MomentsLeaf<I, A> = fn(&[I]) -> Moments<A>;

macro_rules! widen {
    ($($t:ty => $acc:ty, $widen:expr, $narrow:expr, $fast:expr, $moments:expr);* $(;)?) => {$(
        impl Widen for $t {
            type Acc = $acc;
            #[inline(always)]
            fn widen(self) -> $acc {
                $widen(self)
            }
            #[inline(always)]
            fn narrow(a: $acc) -> $t {
                $narrow(a)
            }
            #[inline(always)]
            fn fast_leaf(op: ReduceOp) -> Option<Leaf<$t, $acc>> {
                $fast(op)
            }
            #[inline(always)]
            fn moments_leaf() -> Option<MomentsLeaf<$t, $acc>> {
                $moments()
            }
        }
    )*};
}
widen! {
    f32 => f32, |x| x, |a| a, fast_leaf_f32, moments_leaf_f32;
    f64 => f64, |x| x, |a| a, |_| None, || None;
    f16 => f32, crate::backend::cpu::half_conv::f16_to_f32, crate::backend::cpu::half_conv::f32_to_f16, |_| None, || None;
    bf16 => f32, bf16::to_f32, bf16::from_f32, |_| None, || None;
}

impl<F: Widen> Reducible for F {
    fn reduce_slice(op: ReduceOp, src: &[F], p: &Plan) -> Buffer {
        let zero = F::zero();
        let (fast, narrow) = (F::fast_leaf(op), |a, _| F::narrow(a));
        match op {
            ReduceOp::Sum | ReduceOp::Mean => {
                // An empty sum is +0; a sum of negative zeros stays -0.
                let finish = move |a, n| match op {
                    ReduceOp::Mean => F::narrow(a / F::Acc::count(n)),
                    _ => F::narrow(if n == 0 { F::Acc::ZERO } else { a }),
                };
                exec_leaf(PAIRWISE, src, p, F::Acc::NEG_ZERO, |a, x: F| a + x.widen(), |a, b| a + b, finish, fast)
            }
            ReduceOp::Prod => {
                exec(PAIRWISE, src, p, F::Acc::ONE, |a, x: F| a * x.widen(), |a, b| a * b, |a, _| F::narrow(a))
            }
            ReduceOp::Max => {
                exec_leaf(PAIRWISE, src, p, F::Acc::NEG_INF, |a, x: F| fmax(a, x.widen()), fmax, narrow, fast)
            }
            ReduceOp::Min => exec_leaf(PAIRWISE, src, p, F::Acc::INF, |a, x: F| fmin(a, x.widen()), fmin, narrow, fast),
            ReduceOp::All => exec(ANY_ORDER, src, p, true, |a, x: F| a & (x != zero), |a, b| a & b, keep),
            ReduceOp::Any => exec(ANY_ORDER, src, p, false, |a, x: F| a | (x != zero), |a, b| a | b, keep),
            ReduceOp::LogSumExp | ReduceOp::SumExp | ReduceOp::Var { .. } => {
                exec_stat(op, src, p, F::widen, F::narrow, F::moments_leaf())
            }
        }
    }
    fn reduce_pair(stat: ReduceOp, src: &[F], p: &Plan) -> Option<(Buffer, Buffer)> {
        matches!(stat, ReduceOp::SumExp | ReduceOp::LogSumExp | ReduceOp::Var { .. })
            .then(|| exec_stat_pair(stat, src, p, F::widen, F::narrow, F::moments_leaf()))
    }
}

impl Reducible for bool {
    fn reduce_slice(op: ReduceOp, src: &[bool], p: &Plan) -> Buffer {
        match op {
            ReduceOp::Sum => exec(ANY_ORDER, src, p, 0i32, |a, x| a.wrapping_add(x as i32), i32::wrapping_add, keep),
            ReduceOp::Prod => exec(ANY_ORDER, src, p, 1i32, |a, x| a & x as i32, i32::wrapping_mul, keep),
            ReduceOp::Mean => {
                exec(ANY_ORDER, src, p, 0u64, |a, x| a + x as u64, |a, b| a + b, |a, n| (a as f64 / n as f64) as f32)
            }
            ReduceOp::Max | ReduceOp::Any => exec(ANY_ORDER, src, p, false, |a, x| a | x, |a, b| a | b, keep),
            ReduceOp::Min | ReduceOp::All => exec(ANY_ORDER, src, p, true, |a, x| a & x, |a, b| a & b, keep),
            ReduceOp::LogSumExp | ReduceOp::SumExp | ReduceOp::Var { .. } => {
                exec_stat(op, src, p, |x: bool| x as u8 as f64, |a: f64| a as f32, None)
            }
        }
    }
}

/// The dtype `op` accumulates `dt` values in: `f32` for `f16` and `bf16`
/// (every reduction of them widens each element first), `f64` for the mean
/// of integers and bools, else `dt` itself. A reduction split into partial
/// results keeps them in this dtype, and narrows only the final result.
pub(crate) fn acc_dtype(op: ReduceOp, dt: DType) -> DType {
    let stat = matches!(op, ReduceOp::Mean | ReduceOp::LogSumExp | ReduceOp::SumExp | ReduceOp::Var { .. });
    match dt {
        DType::F16 | DType::BF16 if !matches!(op, ReduceOp::All | ReduceOp::Any) => DType::F32,
        _ if stat && !dt.is_float() => DType::F64,
        _ => dt,
    }
}

/// A reduction's accumulator over one node of a row's pairwise tree
/// ([`tree_chunks`]), for a producer that makes the row node by node and
/// never holds it whole (a fused reduction of compiled code): the nodes'
/// partials combine along the tree with the fold's own merges
/// ([`combine_partials`]), so the result is the one [`reduce`] gives for
/// the materialized row, bit for bit.
pub(crate) struct Partial(Part);

enum Part {
    /// The reduction itself over the node (the sum, for a mean), in the
    /// accumulator's dtype ([`acc_dtype`]).
    Value(Buffer),
    /// A one-pass statistic's accumulator in `f32`.
    F32(Stat<f32>),
    /// A one-pass statistic's accumulator in `f64`.
    F64(Stat<f64>),
}

/// The [`Partial`] of `op` over `row` (shape `[1, len]`, of the dtype `op`
/// accumulates in: [`acc_dtype`] of the values' dtype).
pub(crate) fn partial(op: ReduceOp, row: &Data) -> Result<Partial> {
    let p = Plan::new(row.layout(), &[1]);
    Ok(Partial(match (op, row.buffer()) {
        (ReduceOp::LogSumExp | ReduceOp::SumExp | ReduceOp::Var { .. }, Buffer::F32(v)) => {
            Part::F32(fold_stat(op, OverPlan(v, &p), |x: f32| x, |s, _| s, f32::moments_leaf())[0])
        }
        (ReduceOp::LogSumExp | ReduceOp::SumExp | ReduceOp::Var { .. }, Buffer::F64(v)) => {
            Part::F64(fold_stat(op, OverPlan(v, &p), |x: f64| x, |s, _| s, f64::moments_leaf())[0])
        }
        (ReduceOp::Mean, b) => Part::Value(reduce(ReduceOp::Sum, row, &[1], ReduceOp::Sum.out_dtype(b.dtype()))?),
        (op, b) => Part::Value(reduce(op, row, &[1], op.out_dtype(b.dtype()))?),
    }))
}

/// Combines the [`Partial`]s of `op` over the nodes of [`tree_chunks`]`(n,
/// max)` (in order) into the one-element result of `op` over the `n`
/// elements, of dtype `out`: along the tree, with the statistics' own
/// merges, values two at a time by this kernel, in the accumulator's dtype,
/// narrowing only the result.
pub(crate) fn combine_partials(op: ReduceOp, parts: Vec<Partial>, n: usize, max: usize, out: DType) -> Result<Buffer> {
    fn stats<A: AccFloat + Into<f64>>(op: ReduceOp, n: usize, max: usize, parts: Vec<Stat<A>>) -> f64 {
        let mut it = parts.into_iter();
        let mut leaf = |_, _| it.next().expect("one partial per node");
        fold_tree(n, max, &mut leaf, &Stat::combine).value(op).into()
    }
    let mut f32s = vec![];
    let mut f64s = vec![];
    let mut values = vec![];
    for Partial(p) in parts {
        match p {
            Part::F32(s) => f32s.push(s),
            Part::F64(s) => f64s.push(s),
            Part::Value(b) => values.push(b),
        }
    }
    // An `f32` or `f64` statistic is exact in `f64`, so it narrows once.
    let narrow = |v: f64| crate::ops::Scalar::Float(v).to_buffer(out);
    if !f32s.is_empty() {
        return Ok(narrow(stats(op, n, max, f32s)));
    }
    if !f64s.is_empty() {
        return Ok(narrow(stats(op, n, max, f64s)));
    }
    let Some(pdt) = values.first().map(Buffer::dtype) else {
        return Err(Error::Invalid { op: op.name(), msg: "no partial results to combine".into() });
    };
    let again = if op == ReduceOp::Mean { ReduceOp::Sum } else { op };
    let mut next = values.into_iter();
    let mut leaf = |_, _| -> Result<Buffer> { Ok(next.next().expect("one partial per node")) };
    let combine = |a: Result<Buffer>, b: Result<Buffer>| -> Result<Buffer> {
        let two = Data::contiguous(concat([a?, b?].iter(), pdt), &[1, 2]);
        reduce(again, &two, &[1], again.out_dtype(pdt))
    };
    let r = fold_tree(n, max, &mut leaf, &combine)?;
    // The mean's division in the accumulator's dtype, as the kernel's.
    let r = match (op, &r) {
        (ReduceOp::Mean, Buffer::F32(v)) => Buffer::from_vec(vec![v[0] / n as f32]),
        (ReduceOp::Mean, Buffer::F64(v)) => Buffer::from_vec(vec![v[0] / n as f64]),
        _ => r,
    };
    if r.dtype() == out {
        return Ok(r);
    }
    // Only float accumulators narrow (f16/bf16 in f32, an integer mean in
    // f64): exact in f64, rounded once.
    Ok(narrow(crate::with_buffer!(&r, v => v[0].to_f64())))
}

/// Joins buffers of one dtype end to end.
pub(crate) fn concat<'a>(parts: impl Iterator<Item = &'a Buffer>, dtype: DType) -> Buffer {
    crate::with_dtype!(dtype, T => {
        let mut all: Vec<T> = Vec::new();
        for p in parts {
            all.extend_from_slice(p.as_slice::<T>().expect("parts share the dtype"));
        }
        Buffer::from_vec(all)
    })
}

/// Reduces `x` over the sorted `axes`, producing `out` dtype elements in
/// row-major order of the kept axes.
pub fn reduce(op: ReduceOp, x: &Data, axes: &[usize], out: DType) -> Result<Buffer> {
    validate(op, x, axes, out)?;
    if let Some(m) = MemoryOrder::of(x.layout(), axes, false) {
        return m.restore(&reduce(op, &m.view(x, x.layout()), &m.axes, out)?);
    }
    let p = Plan::new(x.layout(), axes);
    // The kernel allocates its output and accumulators (at most 8 bytes an
    // element) deep inside: check that they can be had before it starts.
    crate::memory::check_alloc(op.name(), p.n_out.saturating_mul(8))?;
    Ok(crate::with_buffer!(x.buffer(), v => Reducible::reduce_slice(op, v.as_slice(), &p)))
}

/// A reduction rewritten over its space's axes in memory order: a view
/// with the axes sorted by decreasing stride (of `x`, or of the input that
/// dominates a fused group), so that neighbouring outputs, and for a fused
/// group neighbouring values, come from neighbouring memory. In the
/// output's order a sum over the last axis of `x.permute(2, 0, 1)` read
/// each output's elements a line apart from the next output's: a 256^3
/// cube took 60 ms against 1.6 ms in memory order. The results come back
/// in the reordered kept axes' order and are copied into the output's
/// ([`restore`]).
///
/// [`restore`]: MemoryOrder::restore
pub(crate) struct MemoryOrder {
    /// The new order of the axes (`perm[i]` is the old axis at `i`).
    pub perm: Vec<usize>,
    /// The reduced axes in the new order, sorted.
    pub axes: Vec<usize>,
    /// The reordered result read in output order: the kept axes' extents,
    /// each with its stride in the reordered result.
    back: Layout,
}

impl MemoryOrder {
    /// The reordering of `l`'s axes, reducing `axes`; `None` when the axes
    /// that matter (more than one element, not broadcast) are already in
    /// decreasing stride order: among the kept axes only (a reduction's
    /// plan orders its reduced axes itself), or among all with `all`.
    pub fn of(l: &Layout, axes: &[usize], all: bool) -> Option<MemoryOrder> {
        let key = |a: usize| match l.strides[a].unsigned_abs() {
            s if l.shape[a] > 1 && s > 0 => s,
            _ => usize::MAX,
        };
        let checked = (0..l.ndim()).filter(|a| all || !axes.contains(a));
        let live: Vec<usize> = checked.map(key).filter(|&k| k != usize::MAX).collect();
        if live.windows(2).all(|w| w[0] >= w[1]) {
            return None;
        }
        let mut perm: Vec<usize> = (0..l.ndim()).collect();
        perm.sort_by_key(|&a| std::cmp::Reverse(key(a)));
        let kept: Vec<usize> = (0..l.ndim()).filter(|a| !axes.contains(a)).collect();
        let new_kept: Vec<usize> = perm.iter().copied().filter(|a| !axes.contains(a)).collect();
        let cstrides = crate::layout::contiguous_strides(&new_kept.iter().map(|&a| l.shape[a]).collect::<Vec<_>>());
        let back = Layout {
            shape: kept.iter().map(|&a| l.shape[a]).collect(),
            strides: kept
                .iter()
                .map(|a| cstrides[new_kept.iter().position(|o| o == a).expect("a kept axis")])
                .collect(),
            offset: 0,
        };
        let axes = (0..perm.len()).filter(|&i| axes.contains(&perm[i])).collect();
        REORDERED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Some(MemoryOrder { perm, axes, back })
    }

    /// The reordered view of `x`, whose layout (broadcast) is over the space.
    pub fn view(&self, x: &Data, l: &Layout) -> Data {
        x.view(l.permute(&self.perm))
    }

    /// The reordered reduction's results in the output's row-major order.
    pub fn restore(&self, b: &Buffer) -> Result<Buffer> {
        let op = "reduce";
        Ok(
            crate::with_buffer!(b, v => Buffer::from_vec(crate::backend::cpu::strided::gather(op, v.as_slice(), &self.back)?)),
        )
    }
}

static REORDERED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Reductions (plain, arg- or fused) rewritten over a view with their axes
/// in memory order so far in this process: for tests and diagnostics.
pub fn reordered_runs() -> usize {
    REORDERED.load(std::sync::atomic::Ordering::Relaxed)
}

/// Checks that `op` can reduce `axes` of `x` into dtype `out`.
fn validate(op: ReduceOp, x: &Data, axes: &[usize], out: DType) -> Result<()> {
    let dt = x.buffer().dtype();
    if op.out_dtype(dt) != out {
        return Err(Error::Invalid {
            op: op.name(),
            msg: format!("{} of {dt} gives {}, not {out}", op.name(), op.out_dtype(dt)),
        });
    }
    let nd = x.layout().ndim();
    if let Some(&a) = axes.iter().find(|&&a| a >= nd) {
        return Err(Error::Axis { op: op.name(), axis: a as isize, ndim: nd });
    }
    if matches!(op, ReduceOp::Max | ReduceOp::Min) && axes.iter().any(|&a| x.layout().shape[a] == 0) {
        return Err(Error::Shape {
            op: op.name(),
            msg: format!(
                "cannot reduce an empty axis of shape {}: {} has no identity",
                shape_str(&x.layout().shape),
                op.name()
            ),
        });
    }
    Ok(())
}

/// Several reductions of `x` over the same `axes` (each into its natural
/// dtype, [`ReduceOp::out_dtype`]), with one pass for a one-pass statistic
/// and the reduction its accumulator already carries: `sumexp` or
/// `logsumexp` with `max` (softmax's two statistics), `var` with `mean`
/// (layernorm's). The carried result is the one its own reduction gives:
/// the maximum exactly (up to the sign of a zero maximum), the mean bit
/// for bit. Any other reduction runs alone, as [`reduce`].
pub fn reduce_many(ops: &[ReduceOp], x: &Data, axes: &[usize]) -> Result<Vec<Buffer>> {
    if let Some(m) = MemoryOrder::of(x.layout(), axes, false) {
        return reduce_many(ops, &m.view(x, x.layout()), &m.axes)?.iter().map(|b| m.restore(b)).collect();
    }
    let dt = x.buffer().dtype();
    let mut out: Vec<Option<Buffer>> = ops.iter().map(|_| None).collect();
    for (i, &op) in ops.iter().enumerate() {
        let carried = match op {
            ReduceOp::SumExp | ReduceOp::LogSumExp => ReduceOp::Max,
            ReduceOp::Var { .. } => ReduceOp::Mean,
            _ => continue,
        };
        let Some(j) = (0..ops.len()).find(|&j| ops[j] == carried && out[j].is_none()) else { continue };
        if out[i].is_some() {
            continue;
        }
        validate(op, x, axes, op.out_dtype(dt))?;
        validate(carried, x, axes, carried.out_dtype(dt))?;
        let p = Plan::new(x.layout(), axes);
        crate::memory::check_alloc(op.name(), p.n_out.saturating_mul(16))?;
        if let Some((a, b)) = crate::with_buffer!(x.buffer(), v => Reducible::reduce_pair(op, v.as_slice(), &p)) {
            out[i] = Some(a);
            out[j] = Some(b);
        }
    }
    ops.iter()
        .zip(out)
        .map(|(&op, o)| match o {
            Some(b) => Ok(b),
            None => reduce(op, x, axes, op.out_dtype(dt)),
        })
        .collect()
}

/// Index and value of the first extremum of a non-empty slice, in two fast
/// passes: the NaN-propagating extremum with vector lanes, then the first
/// position holding it (the first NaN if it is NaN).
fn arg_slice<T: Element, const MAX: bool>(xs: &[T]) -> (usize, T) {
    let pick = |a: T, x: T| if is_nan(x) || (MAX && x > a) || (!MAX && x < a) { x } else { a };
    let mut lanes = [xs[0]; LANES];
    let mut chunks = xs.chunks_exact(LANES);
    for c in &mut chunks {
        let c: &[T; LANES] = c.try_into().expect("chunks_exact yields LANES elements");
        for (a, &v) in lanes.iter_mut().zip(c) {
            *a = pick(*a, v);
        }
    }
    let best = chunks.remainder().iter().chain(&lanes[1..]).fold(lanes[0], |a, &v| pick(a, v));
    let i = if is_nan(best) { xs.iter().position(|&v| is_nan(v)) } else { xs.iter().position(|&v| v == best) };
    (i.expect("the extremum is an element"), best)
}

/// Index of the first extremum of `n` elements `s` apart from `base`, over
/// positions `range`, with its value. NaN counts as the extremum.
#[inline]
fn arg_scan<T: Element, const MAX: bool>(src: &[T], base: isize, s: isize, range: Range<usize>) -> (usize, T) {
    if s == 1 {
        let b = base as usize;
        let (i, v) = arg_slice::<T, MAX>(&src[b + range.start..b + range.end]);
        return (range.start + i, v);
    }
    let at = |i: usize| src[(base + i as isize * s) as usize];
    let mut bi = range.start;
    let mut bv = at(bi);
    if is_nan(bv) {
        return (bi, bv);
    }
    for i in range.start + 1..range.end {
        let v = at(i);
        let nan = is_nan(v);
        if nan || (MAX && v > bv) || (!MAX && v < bv) {
            bi = i;
            bv = v;
            if nan {
                break;
            }
        }
    }
    (bi, bv)
}

/// [`arg_scan`] of `out.len()` adjacent outputs at once, output `j`'s
/// elements at `base + j + i * s` for `i < n`: the rows are read in
/// order, each a contiguous run, and each output keeps its best so far
/// (the first extremum; a NaN, once met, stays). For a reduced axis that
/// is not the innermost, which [`arg_scan`] would walk a cache line per
/// element.
fn arg_rows<T: Element, const MAX: bool>(src: &[T], base: isize, s: isize, n: usize, out: &mut [u32]) {
    let w = out.len();
    let row = |i: usize| {
        let at = (base + i as isize * s) as usize;
        &src[at..at + w]
    };
    let mut best: Vec<T> = row(0).to_vec();
    out.fill(0);
    for i in 1..n {
        arg_step::<T, MAX>(&mut best, out, row(i), i as u32);
    }
}

/// One row of [`arg_rows`], branch-free so that it vectorizes, in the
/// vector code of the level `simd_math` detects.
fn arg_step<T: Element, const MAX: bool>(best: &mut [T], out: &mut [u32], row: &[T], i: u32) {
    #[cfg(target_arch = "x86_64")]
    {
        use crate::backend::cpu::simd_math::{detected_level, Level};
        match detected_level() {
            // SAFETY: the detected level says the CPU has AVX-512F.
            Level::Avx512 => return unsafe { x86::arg_step_avx512::<T, MAX>(best, out, row, i) },
            // SAFETY: the detected level says the CPU has AVX2.
            Level::Avx2 => return unsafe { x86::arg_step_avx2::<T, MAX>(best, out, row, i) },
            Level::Scalar => {}
        }
    }
    arg_step_generic::<T, MAX>(best, out, row, i)
}

/// [`arg_step`]'s loop.
#[inline(always)]
fn arg_step_generic<T: Element, const MAX: bool>(best: &mut [T], out: &mut [u32], row: &[T], i: u32) {
    for ((b, d), &v) in best.iter_mut().zip(out.iter_mut()).zip(row) {
        let take = !is_nan(*b) && (is_nan(v) || (MAX && v > *b) || (!MAX && v < *b));
        *b = if take { v } else { *b };
        *d = if take { i } else { *d };
    }
}

/// Fewest adjacent outputs an arg-reduction over a leading axis scans at
/// once ([`arg_rows`]): each row's run is then at least a few cache lines.
const ARG_ROWS: usize = 1024;

fn arg_typed<T: Element, const MAX: bool>(
    src: &[T],
    kshape: &[usize],
    kst: &[isize],
    off: usize,
    n: usize,
    s: isize,
) -> Result<HostVec<u32>> {
    let n_out: usize = crate::shape::numel(kshape);
    let k = kst.last().copied().unwrap_or(0);
    let total = n_out.saturating_mul(n);
    // Outputs adjacent in memory, the reduced axis not: scan rows.
    let rows = k == 1 && s != 1 && n > 1;
    let chunk = (TASK_WORK / n).max(if rows { ARG_ROWS } else { 1 });
    let fill = |start: usize, out: &mut [u32]| {
        for_each_block(kshape, [kst], [off], start..start + out.len(), |pos, o, cnt| {
            let out = &mut out[pos - start..pos - start + cnt];
            if rows {
                arg_rows::<T, MAX>(src, o[0], s, n, out);
                return;
            }
            for (i, d) in out.iter_mut().enumerate() {
                *d = arg_scan::<T, MAX>(src, o[0] + i as isize * k, s, 0..n).0 as u32;
            }
        })
    };
    let mut out = crate::memory::try_vec(if MAX { "argmax" } else { "argmin" }, n_out)?;
    out.resize(n_out, 0u32);
    if total < PAR_THRESHOLD {
        fill(0, &mut out);
    } else if n_out.div_ceil(chunk) >= FEW_TASKS || n < 2 * TASK_WORK {
        team::chunks(&mut out, chunk, fill);
    } else {
        // Few long rows: scan fixed chunks of each row in parallel, then keep
        // the first best chunk result in order.
        let tasks = n.div_ceil(TASK_WORK);
        let mut bases = vec![0isize; n_out];
        for_each_block(kshape, [kst], [off], 0..n_out, |pos, o, cnt| {
            for (i, b) in bases[pos..pos + cnt].iter_mut().enumerate() {
                *b = o[0] + i as isize * k;
            }
        });
        let parts: Vec<(usize, T)> = team::map(n_out * tasks, |t| {
            let (row, c) = (t / tasks, t % tasks);
            arg_scan::<T, MAX>(src, bases[row], s, c * TASK_WORK..((c + 1) * TASK_WORK).min(n))
        });
        for (d, row) in out.iter_mut().zip(parts.chunks(tasks)) {
            let (mut bi, mut bv) = row[0];
            for &(i, v) in &row[1..] {
                let (best_nan, nan) = (is_nan(bv), is_nan(v));
                if !best_nan && (nan || (MAX && v > bv) || (!MAX && v < bv)) {
                    (bi, bv) = (i, v);
                }
            }
            *d = bi as u32;
        }
    }
    Ok(out)
}

/// Index of the extremum along `axis`, as `u32` (first index on ties; NaN
/// counts as the extremum, as in NumPy).
pub fn arg_reduce(op: ArgReduceOp, x: &Data, axis: usize) -> Result<Buffer> {
    let name = if op == ArgReduceOp::ArgMax { "argmax" } else { "argmin" };
    let l = &x.layout();
    if axis >= l.ndim() {
        return Err(Error::Axis { op: name, axis: axis as isize, ndim: l.ndim() });
    }
    if let Some(m) = MemoryOrder::of(l, &[axis], false) {
        return m.restore(&arg_reduce(op, &m.view(x, l), m.axes[0])?);
    }
    let n = l.shape[axis];
    let (ks, kst): (Vec<usize>, Vec<isize>) =
        (0..l.ndim()).filter(|&i| i != axis).map(|i| (l.shape[i], l.strides[i])).unzip();
    let n_out = crate::shape::numel(&ks);
    if n_out == 0 {
        return Ok(Buffer::U32(HostVec::new()));
    }
    if n == 0 {
        return Err(Error::Shape {
            op: name,
            msg: format!("cannot take {name} of an empty axis of shape {}", shape_str(&l.shape)),
        });
    }
    let (kshape, mut k) = collapse(&ks, &[&kst]);
    let kst = k.pop().unwrap_or_default();
    let s = l.strides[axis];
    let out = crate::with_buffer!(x.buffer(), v => match op {
        ArgReduceOp::ArgMax => arg_typed::<_, true>(v.as_slice(), &kshape, &kst, l.offset, n, s)?,
        ArgReduceOp::ArgMin => arg_typed::<_, false>(v.as_slice(), &kshape, &kst, l.offset, n, s)?,
    });
    Ok(Buffer::U32(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows of every length to past two leaves, of values with ties,
    /// signed zeros, infinities and NaNs (some with payloads).
    fn rows() -> Vec<Vec<f32>> {
        let special = [0.0, -0.0, 1.5, -1.5, f32::INFINITY, f32::NEG_INFINITY, f32::NAN, f32::from_bits(0x7fc0_1234)];
        let mut out = vec![];
        let mut state = 12345u32;
        let mut next = || {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            state
        };
        for n in (0..=200).chain([255, 256, 257, 1000, 1023, 1024, 1025, 2047, 2049, 5000]) {
            for kind in 0..4 {
                let row = (0..n)
                    .map(|_| {
                        let r = next();
                        match kind {
                            // Plain values.
                            0 => (r % 20001) as f32 / 100.0 - 100.0,
                            // Ties and signed zeros only.
                            1 => [0.0, -0.0, 2.0, -2.0][(r % 4) as usize],
                            // Now and then a special value.
                            _ if r % 29 == 0 => special[(r / 29 % 8) as usize],
                            _ => (r % 2001) as f32 - 1000.0,
                        }
                    })
                    .collect();
                out.push(row);
            }
        }
        out
    }

    /// A value's bits, every NaN as one (which NaN an operation on two
    /// NaNs returns depends on the order the compiler gives its operands).
    fn bits_of(v: f32) -> u32 {
        if v.is_nan() {
            u32::MAX
        } else {
            v.to_bits()
        }
    }

    #[test]
    fn vector_folds_and_moments_give_the_generic_bits() {
        for row in rows() {
            for op in [ReduceOp::Sum, ReduceOp::Max, ReduceOp::Min] {
                let generic = match op {
                    ReduceOp::Max => fold_by(&row, PAIRWISE, f32::NEG_INFINITY, fmax, None),
                    ReduceOp::Min => fold_by(&row, PAIRWISE, f32::INFINITY, fmin, None),
                    _ => fold_by(&row, PAIRWISE, -0.0, |a, b| a + b, None),
                };
                let got = fold_f32(op, &row);
                if op == ReduceOp::Sum && !row.is_empty() {
                    if let Some(fast) = f32::moments_leaf() {
                        let (want, got) = (Moments::block(&row, |x: f32| x), fast(&row));
                        let bits = |m: Moments<f32>| [m.n, m.mean, m.m2, m.sum].map(bits_of);
                        assert_eq!(bits(got), bits(want), "moments of {} values", row.len());
                    }
                }
                assert_eq!(
                    bits_of(got),
                    bits_of(generic),
                    "{} of {} values: {got} against the generic {generic}",
                    op.name(),
                    row.len()
                );
            }
        }
    }

    /// Chunks folded in aligned groups ([`combine_chunks`]), the groups'
    /// results then combined pairwise, meet in [`combine_pairs`]' tree
    /// whatever the group's size: a combine that is not associative (`3a +
    /// b`) gives every tree its own value.
    #[test]
    fn grouped_chunks_combine_in_the_pairwise_order() {
        let r = Fold {
            id: 0.0f64,
            step: |a: f64, x: f64| a + x,
            combine: |a: f64, b: f64| 3.0 * a + b,
            finish: |a: f64, _| a,
            pairwise: false,
            fast: None,
            _types: PhantomData,
        };
        for n in 1..=70usize {
            // Chunk `c` of two outputs: values 1 + c and 100 + c.
            let value = |c: usize, acc: &mut [f64]| {
                acc[0] = 1.0 + c as f64;
                acc[1] = 100.0 + c as f64;
            };
            let want = combine_pairs(
                &r,
                (0..n)
                    .map(|c| {
                        let mut a = vec![0.0; 2];
                        value(c, &mut a);
                        a
                    })
                    .collect(),
            );
            for group in [1, 2, 4, 8, 16, 64, 128] {
                let parts = (0..n.div_ceil(group))
                    .map(|g| {
                        let first = g * group;
                        combine_chunks(&r, n.min(first + group) - first, 2, |c, acc| value(first + c, acc))
                    })
                    .collect();
                assert_eq!(combine_tree(&r, parts), want, "{n} chunks in groups of {group}");
            }
        }
    }
}
