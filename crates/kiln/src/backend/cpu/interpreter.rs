//! The tile interpreter: runs a fused group as a tiled register program.
//!
//! The iteration space (the group's output shape, row-major) is cut into
//! tiles of [`TILE`] elements. For each tile, every input is loaded into a
//! register (contiguous inputs are read in place, broadcast scalars are
//! read as one repeated value, other strided inputs are read in place or as
//! one value where the tile lies in one run of their innermost dimension,
//! else gathered). Over rows shorter than a tile (from 256 elements),
//! tiles end where rows end, so that per-row and per-column broadcasts
//! are never gathered. Then
//! the tile runs through the group's compiled kernel ([`jit`]) when it has
//! one, else each op runs as a tight loop over the tile, and only the
//! group's outputs are written to memory. Coarse chunks of tiles run on
//! the [`team`] above a size threshold. Where the outputs go is the
//! launch's business ([`fused`](crate::backend::cpu::fused)); the fused
//! reductions ([`fused_reduce`](crate::backend::cpu::fused_reduce)) run
//! tiles into cache-sized scratch. A group that reads an input across its
//! layout (a transpose) runs in 2-D blocks instead of rows
//! ([`crate::backend::cpu::blocked`]).

use crate::array::Data;
use crate::backend::cpu::blocked::{self, Block, BlockedInput, Blocks, Read};
use crate::backend::cpu::strided::{PAR_CHUNK, PAR_THRESHOLD};
use crate::backend::cpu::tile::{Src, TILE};
use crate::backend::cpu::{binary, cast, jit, team, unary, Buffer, CpuGroup};
use crate::dtype::DType;
use crate::layout::{collapse, for_each_block, Layout};
use crate::passes::fuse::{FusedGroup, FusedOp};
use crate::primitive::Primitive;

use std::sync::Arc;

use smallvec::SmallVec;

/// Per-input or per-output vectors of one launch, inline for up to this
/// many entries (a launch then allocates none of them).
pub(super) const INLINE: usize = 4;

/// A group's loads, one per input.
pub(super) type Loads<'a> = SmallVec<[Load<'a>; INLINE]>;

/// A slice an [`Exec`] borrows from its caller (a launch's loads and
/// stream flags, built on the caller's stack) or owns. Unlike `Cow<[T]>`
/// (and `SmallVec`), it is covariant in `T`, so an `Exec` of short-lived
/// loads may be used where one of a shorter lifetime is expected.
pub(super) enum Held<'a, T> {
    Borrowed(&'a [T]),
    Owned(Vec<T>),
}

impl<T> std::ops::Deref for Held<'_, T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        match self {
            Held::Borrowed(s) => s,
            Held::Owned(v) => v,
        }
    }
}

impl<'s, T> IntoIterator for &'s Held<'_, T> {
    type Item = &'s T;
    type IntoIter = std::slice::Iter<'s, T>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl<'a, T> From<&'a [T]> for Held<'a, T> {
    fn from(s: &'a [T]) -> Self {
        Held::Borrowed(s)
    }
}

impl<T> From<Vec<T>> for Held<'_, T> {
    fn from(v: Vec<T>) -> Self {
        Held::Owned(v)
    }
}

/// How one input is read.
#[derive(Clone)]
pub(super) enum Load<'a> {
    /// Contiguous in the group's order from this element on: read in place.
    InPlace(&'a Buffer, usize),
    /// One element broadcast everywhere: read as one repeated value.
    Scalar(&'a Buffer, usize),
    /// Any other layout: gather each tile through the strides.
    Strided { buf: &'a Buffer, shape: Vec<usize>, strides: Vec<isize>, offset: usize },
}

/// A raw output pointer shared by the tasks, each writing disjoint ranges.
pub(super) struct OutPtr(pub(super) *mut u8);
// SAFETY: tasks write disjoint element ranges of the pointed-to buffer, and
// the buffer outlives the parallel section.
unsafe impl Send for OutPtr {}
// SAFETY: as above; no two tasks touch the same element.
unsafe impl Sync for OutPtr {}

/// How to read `buf` through layout `l` (already in the group's iteration order).
#[inline]
pub(super) fn plan_load<'a>(buf: &'a Buffer, l: &Layout) -> Load<'a> {
    // The kernels read through raw pointers at the layout's offsets.
    debug_assert!(l.fits(buf.len()), "fused: an input's layout reaches outside its buffer");
    if let Some(r) = l.contiguous_range() {
        return Load::InPlace(buf, r.start);
    }
    if l.strides.iter().all(|&s| s == 0) {
        return Load::Scalar(buf, l.offset);
    }
    let (cs, st) = collapse(&l.shape, &[&l.strides]);
    Load::Strided { buf, shape: cs, strides: st.into_iter().next().unwrap_or_default(), offset: l.offset }
}

/// Shortest innermost run worth a tile of its own (see [`run_of`]).
const MIN_RUN: usize = 256;

/// Where tiles should end so that no strided input is gathered: the
/// shortest innermost extent of the strided loads (each a product of the
/// iteration space's trailing dimensions, so every other one is a multiple
/// of it). A tile inside one such run is read in place (or is one repeated
/// value) for every input, where a tile across runs copies each strided
/// input (a layernorm's per-row statistics and per-column scale over rows
/// of 1024, say). Runs shorter than [`MIN_RUN`] are gathered instead: the
/// work per tile would be too small. `usize::MAX` when nothing is strided.
fn run_of(loads: &[Load]) -> usize {
    let run = loads
        .iter()
        .filter_map(|l| match l {
            Load::Strided { shape, .. } => Some(shape.last().copied().unwrap_or(1)),
            _ => None,
        })
        .min()
        .unwrap_or(usize::MAX);
    if (MIN_RUN..TILE).contains(&run) {
        run
    } else {
        usize::MAX
    }
}

thread_local! {
    static GATHERED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Tiles of strided inputs gathered (copied through their strides) on this
/// thread so far: for tests and diagnostics.
pub fn gathered_tiles() -> usize {
    GATHERED.get()
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
    // A short row broadcast along every outer dimension (a bias of 3
    // channels over NHWC images): one period, repeated.
    let nd = shape.len();
    let period = (nd >= 2 && inner == 1 && strides[..nd - 1].iter().all(|&s| s == 0)).then(|| shape[nd - 1]);
    crate::with_buffer!(buf, src => {
        let dst = crate::buffer::BufferElement::slice_of_mut(reg).expect("register dtype is the input dtype");
        if let Some(p) = period.filter(|&p| p < len) {
            repeat_period(&src[offset..offset + p], start % p, &mut dst[..len]);
            return;
        }
        for_each_block(shape, [strides], [offset], start..start + len, |pos, o, cnt| {
            let d = &mut dst[pos - start..pos - start + cnt];
            // (A broadcast row is one value repeated.)
            crate::backend::cpu::strided::copy_strided(src, o[0] as usize, inner, d);
        });
    })
}

/// Fills `d` with `period` repeated, starting at element `phase` of it:
/// the first whole period is copied, then the filled periods doubled (a
/// row of 3 broadcast over rows had been gathered 3 elements at a time,
/// a call per run, and `x - row` ran at a quarter of the copy's speed).
fn repeat_period<T: Copy>(period: &[T], phase: usize, d: &mut [T]) {
    let (p, len) = (period.len(), d.len());
    let first = (p - phase).min(len);
    d[..first].copy_from_slice(&period[phase..phase + first]);
    let mut filled = first;
    if filled < len {
        let k = (len - filled).min(p);
        d[filled..filled + k].copy_from_slice(&period[..k]);
        filled += k;
    }
    while filled < len {
        let k = (filled - first).min(len - filled);
        d.copy_within(first..first + k, filled);
        filled += k;
    }
}

/// The buffer offset of positions `start..start + len` when they lie in
/// one run along the innermost dimension and its stride is `step`: with
/// step 1 the tile can be read in place, with step 0 it is one value.
fn run_at(shape: &[usize], strides: &[isize], offset: usize, start: usize, len: usize, step: isize) -> Option<usize> {
    let nd = shape.len();
    if nd == 0 || strides[nd - 1] != step {
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

/// Writes a tile into an output at element `at`, with streaming stores
/// when `stream` (see [`stream`](crate::backend::cpu::stream)).
fn store<T: Copy>(tile: &[T], out: &OutPtr, at: usize, stream: bool) {
    // SAFETY: `out` points to a buffer of `T` with capacity `n >= at +
    // tile.len()` (allocated by the launch or a fused reduction for this register's
    // dtype, or a donated input of that dtype and size); tasks write disjoint
    // ranges, and a register tile never overlaps an output buffer. A donated
    // buffer is also read in place, but only at this tile's positions and
    // before this store (no reference into those elements is live here).
    unsafe {
        let dst = (out.0 as *mut T).add(at);
        if stream {
            crate::backend::cpu::stream::copy(dst.cast(), tile.as_ptr().cast(), std::mem::size_of_val(tile))
        } else {
            std::ptr::copy_nonoverlapping(tile.as_ptr(), dst, tile.len())
        }
    }
}

/// Runs `op` on a tile. An op of broadcast values only is computed once
/// and its value repeated.
fn apply(op: &FusedOp, args: &[Src], out: &mut Buffer) {
    if args.iter().all(|a| a.bcast) {
        let len = args.first().map_or(0, |a| a.len);
        let mut one = [Src::run(&EMPTY, 0, 0); 3];
        for (o, a) in one.iter_mut().zip(args) {
            *o = Src::run(a.buf, a.start, 1);
        }
        apply_tile(op, &one[..args.len()], out);
        crate::with_buffer!(out, v => {
            let x = v[0];
            v[..len].fill(x);
        });
        return;
    }
    apply_tile(op, args, out)
}

fn apply_tile(op: &FusedOp, args: &[Src], out: &mut Buffer) {
    match &op.prim {
        Primitive::Unary(u) => unary::unary(*u, args[0], out),
        Primitive::Binary(b) => binary::binary(*b, args[0], args[1], out),
        Primitive::Where => binary::select(args[0], args[1], args[2], out),
        Primitive::AsType(_) => cast::cast(args[0], out),
        p => unreachable!("{} is not elementwise", p.name()),
    }
}

/// A group's plan of tile registers (which op writes which register),
/// made on its first run and shared by clones made after it (a compiled
/// function plans each group once, not on every call).
#[derive(Default, Clone)]
pub struct PlanSlot(std::sync::OnceLock<RegPlan>);

impl PlanSlot {
    fn get(&self, g: &FusedGroup) -> &RegPlan {
        self.0.get_or_init(|| RegPlan::new(g))
    }
}

impl std::fmt::Debug for PlanSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PlanSlot")
    }
}

/// Where each op of a group writes: op registers share tile buffers
/// ("slots") once their last reader has run, so a group's live registers
/// stay few and in L1 however many ops it has.
#[derive(Clone)]
struct RegPlan {
    /// The slot op `k` writes.
    op_slot: Vec<usize>,
    /// The dtype of each slot.
    slot_dtype: Vec<DType>,
}

impl RegPlan {
    pub(super) fn new(g: &FusedGroup) -> RegPlan {
        let n_in = g.inputs.len();
        // Last op reading each op register; outputs live to the end of the tile.
        let mut last: Vec<Option<usize>> = vec![None; g.ops.len()];
        for (k, op) in g.ops.iter().enumerate() {
            for &r in op.args.iter().filter(|&&r| r >= n_in) {
                last[r - n_in] = Some(k);
            }
        }
        for &r in g.outputs.iter().filter(|&&r| r >= n_in) {
            last[r - n_in] = Some(usize::MAX);
        }
        let (mut op_slot, mut slot_dtype, mut free) = (Vec::with_capacity(g.ops.len()), Vec::new(), Vec::new());
        for (k, op) in g.ops.iter().enumerate() {
            // The result's slot is taken before the arguments' are released,
            // so an op never writes a slot it reads.
            let slot = match free.iter().position(|&f| slot_dtype[f] == op.dtype) {
                Some(i) => free.swap_remove(i),
                None => {
                    slot_dtype.push(op.dtype);
                    slot_dtype.len() - 1
                }
            };
            op_slot.push(slot);
            for &r in op.args.iter().filter(|&&r| r >= n_in) {
                let sl = op_slot[r - n_in];
                if last[r - n_in] == Some(k) && !free.contains(&sl) {
                    free.push(sl);
                }
            }
            if last[k].is_none() {
                free.push(slot);
            }
        }
        RegPlan { op_slot, slot_dtype }
    }
}

/// A group ready to run: its loads and register plan, shared by the tasks.
pub(super) struct Exec<'a> {
    g: &'a CpuGroup,
    loads: Held<'a, Load<'a>>,
    plan: &'a RegPlan,
    /// Elements per tile (at most [`TILE`]).
    tile: usize,
    /// Tiles end at multiples of this many positions (`usize::MAX`: any),
    /// so that each lies in one run of every strided input (see [`run_of`]).
    run: usize,
    /// Per output: written with streaming stores (a large destination).
    stream: Held<'a, bool>,
    /// Prefetch the next tile of inputs read in place: the iteration space
    /// is larger than the caches, so they come from memory.
    prefetch: bool,
    /// How far ahead compiled code prefetches its inputs, in bytes (0: not).
    ahead: i32,
    /// The group compiled to machine code (see [`jit`]), when it is.
    pub(super) code: Option<&'a jit::Compiled>,
}

/// One task's tile buffers, allocated once and reused for every tile.
/// Its vectors come from the thread's spares and go back there (with the
/// registers to [`REGISTERS`]): a launch allocates none of them.
pub(super) struct Scratch {
    /// Per input: a register for gathered tiles (strided inputs only).
    in_regs: Vec<Option<Buffer>>,
    /// Per strided input: this tile read in place, when it is one
    /// contiguous run (`Src::run`) or one repeated value (`Src::repeat`).
    direct: Vec<Option<(usize, bool)>>,
    /// The op registers' slots.
    slots: Vec<Buffer>,
    /// Compiled kernels this task has used, by broadcast pattern.
    kernels: Vec<(jit::Variant, Option<Arc<jit::Kernel>>)>,
}

/// The (empty) vectors of a released [`Scratch`], kept for the next one.
type SpareVecs =
    (Vec<Option<Buffer>>, Vec<Option<(usize, bool)>>, Vec<Buffer>, Vec<(jit::Variant, Option<Arc<jit::Kernel>>)>);

/// Most [`SpareVecs`] a thread keeps (one per scratch alive at once: a
/// launch's, and those of tasks run while it waits).
const MAX_SPARE: usize = 8;

thread_local! {
    static SPARE: std::cell::RefCell<Vec<SpareVecs>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl Drop for Scratch {
    fn drop(&mut self) {
        give_registers(self.in_regs.drain(..).flatten().chain(self.slots.drain(..)));
        self.direct.clear();
        self.kernels.clear();
        let vecs = (
            std::mem::take(&mut self.in_regs),
            std::mem::take(&mut self.direct),
            std::mem::take(&mut self.slots),
            std::mem::take(&mut self.kernels),
        );
        // (Not during the thread's exit, when the spares may be gone.)
        let _ = SPARE.try_with(|s| {
            let mut s = s.borrow_mut();
            if s.len() < MAX_SPARE {
                s.push(vecs);
            }
        });
    }
}

/// Keeps released tile registers for the thread's next group.
#[inline]
pub(super) fn give_registers(regs: impl Iterator<Item = Buffer>) {
    REGISTERS.with_borrow_mut(|pool| {
        for r in regs {
            if pool.len() < MAX_POOLED && r.len() == TILE {
                pool.push(r);
            }
        }
    })
}

/// Tile registers most recently released on each thread, kept for the next
/// group (most groups and eager ops need a few; this bounds the cache).
const MAX_POOLED: usize = 32;

thread_local! {
    static REGISTERS: std::cell::RefCell<Vec<Buffer>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A register of [`TILE`] elements of `dt`: a pooled one, or a new one.
#[inline]
pub(super) fn take_register(dt: DType) -> Buffer {
    REGISTERS
        .with_borrow_mut(|pool| pool.iter().rposition(|b| b.dtype() == dt).map(|i| pool.swap_remove(i)))
        .unwrap_or_else(|| Buffer::zeros(dt, TILE))
}

/// How far ahead compiled code prefetches inputs that stream from memory,
/// in bytes (2 to 16 KiB measured within noise of each other on gelu over
/// 2^24 elements; 1 KiB is too short).
const PREFETCH_DISTANCE: i32 = 8192;

/// Most positions per parallel task of a kernel writing with streaming
/// stores: each task ends with a store fence, which waits for its streamed
/// lines to reach memory, so tasks of [`PAR_CHUNK`] fenced every 64 KiB
/// too often; this size fences rarely enough to keep streaming at
/// nearly the copy's bandwidth.
const STREAM_CHUNK: usize = 1 << 18;

/// Stands in for a slot while its op writes it (no allocation).
const NO_BUFFER: Buffer = Buffer::Bool(crate::host_vec::HostVec::new());
/// The argument array's filler past an op's arity.
static EMPTY: Buffer = Buffer::Bool(crate::host_vec::HostVec::new());

impl<'a> Exec<'a> {
    /// A run over `n` positions; `stream` says, per output, whether it is
    /// written with streaming stores.
    #[inline]
    pub(super) fn new(
        g: &'a CpuGroup,
        loads: impl Into<Held<'a, Load<'a>>>,
        n: usize,
        stream: impl Into<Held<'a, bool>>,
        next_block: Option<usize>,
    ) -> Exec<'a> {
        let widest = g.inputs.iter().map(|d| d.size()).max().unwrap_or(0);
        let (loads, stream) = (loads.into(), stream.into());
        // Inputs stream from memory when this run reads more than the
        // caches hold, or reads part of a buffer that does not fit them (a
        // chunk of a reduction, a block of rows): the hardware prefetchers
        // alone keep too few lines in flight for a kernel that also computes.
        let min = crate::backend::cpu::stream::STREAM_MIN_BYTES;
        let prefetch = n * widest >= min
            || loads.iter().any(|l| matches!(l, Load::InPlace(buf, _) if buf.len() * buf.dtype().size() >= min));
        jit::warm_up();
        let code = g.code.get(g);
        // A block of a row chain prefetches the next block's rows.
        let ahead = match next_block {
            Some(b) => b.min(i32::MAX as usize) as i32,
            None if prefetch => PREFETCH_DISTANCE,
            None => 0,
        };
        let run = run_of(&loads);
        Exec { g, loads, plan: g.plan.get(g), tile: TILE.min(n.max(1)), run, stream, prefetch, ahead, code }
    }

    #[inline]
    pub(super) fn scratch(&self) -> Scratch {
        let (mut in_regs, mut direct, mut slots, kernels) =
            SPARE.try_with(|s| s.borrow_mut().pop()).ok().flatten().unwrap_or_default();
        in_regs.extend(self.loads.iter().zip(&self.g.inputs).map(|(l, &dt)| match l {
            Load::InPlace(..) | Load::Scalar(..) => None,
            Load::Strided { .. } => Some(take_register(dt)),
        }));
        direct.resize(self.loads.len(), None);
        slots.extend(self.plan.slot_dtype.iter().map(|&dt| take_register(dt)));
        Scratch { in_regs, direct, slots, kernels }
    }

    /// Runs the group over row-major positions `start..end` of its iteration
    /// space, writing output `k` at `outs[k]` offset by `-base` elements.
    ///
    /// Every op of a tile runs before the tile's outputs are stored, so an
    /// output may be written over an input that is read in place at the same
    /// positions (a donated buffer).
    pub(super) fn range(&self, sc: &mut Scratch, start: usize, end: usize, outs: &[OutPtr], base: usize) {
        let mut s = start;
        while s < end {
            let len = self.tile.min(end - s).min(self.run - s % self.run);
            // (Compiled kernels prefetch as they go.)
            if self.prefetch && self.code.is_none() {
                for l in &self.loads {
                    if let Load::InPlace(buf, at) = l {
                        crate::backend::cpu::stream::prefetch(buf, at + s + len..at + (s + 2 * len).min(end));
                    }
                }
            }
            if !self.produce(sc, s, len, outs, base) {
                let n_in = self.g.inputs.len();
                for ((&r, p), &st) in self.g.outputs.iter().zip(outs).zip(&self.stream) {
                    let reg = &sc.slots[self.plan.op_slot[r - n_in]];
                    crate::with_buffer!(reg, v => store(&v[..len], p, s - base, st));
                }
            }
            s += len;
        }
        if self.stream.contains(&true) {
            crate::backend::cpu::stream::fence();
        }
    }

    /// Runs the tile at `s..s + len` (at most [`TILE`] positions): compiled
    /// code stores the outputs at `outs` itself (offset by `-base`
    /// elements) and this returns `true`; the interpreter leaves each
    /// output in its op's slot (see [`Exec::output`]) and returns `false`.
    pub(super) fn produce(&self, sc: &mut Scratch, s: usize, len: usize, outs: &[OutPtr], base: usize) -> bool {
        for (l, (reg, dir)) in self.loads.iter().zip(sc.in_regs.iter_mut().zip(sc.direct.iter_mut())) {
            if let (Load::Strided { buf, shape, strides, offset }, Some(r)) = (l, reg) {
                // A tile in one run of the innermost dimension is read in
                // place; a broadcast row's run is one repeated value.
                *dir = run_at(shape, strides, *offset, s, len, 1)
                    .map(|at| (at, false))
                    .or_else(|| run_at(shape, strides, *offset, s, len, 0).map(|at| (at, true)));
                if dir.is_none() {
                    GATHERED.set(GATHERED.get() + 1);
                    gather_tile(buf, shape, strides, *offset, s, len, r);
                }
            }
        }
        self.compute(sc, s, len, outs, base)
    }

    /// [`Exec::produce`] once the tile's strided inputs are loaded (in
    /// their registers, or found in place: `Scratch::direct`).
    fn compute(&self, sc: &mut Scratch, s: usize, len: usize, outs: &[OutPtr], base: usize) -> bool {
        let (g, n_in) = (self.g, self.g.inputs.len());
        if self.compiled_tile(sc, s, len, outs, base) {
            return true;
        }
        for (k, op) in g.ops.iter().enumerate() {
            let slot = self.plan.op_slot[k];
            let mut out = std::mem::replace(&mut sc.slots[slot], NO_BUFFER);
            let src = |r: usize| -> Src {
                if r >= n_in {
                    return Src::run(&sc.slots[self.plan.op_slot[r - n_in]], 0, len);
                }
                self.input(sc, r, s, len)
            };
            let mut args = [Src::run(&EMPTY, 0, 0); 3];
            for (a, &r) in args.iter_mut().zip(&op.args) {
                *a = src(r);
            }
            apply(op, &args[..op.args.len()], &mut out);
            sc.slots[slot] = out;
        }
        false
    }

    /// The register holding group output `k` after an interpreted
    /// [`Exec::produce`] (outputs are op registers).
    pub(super) fn output<'s>(&self, sc: &'s Scratch, k: usize) -> &'s Buffer {
        &sc.slots[self.plan.op_slot[self.g.outputs[k] - self.g.inputs.len()]]
    }

    /// Input `k` over the tile at `s..s + len` (strided inputs already
    /// gathered or found in place by `range`).
    fn input<'s>(&'s self, sc: &'s Scratch, k: usize, s: usize, len: usize) -> Src<'s> {
        match (&self.loads[k], &sc.in_regs[k], sc.direct[k]) {
            (Load::InPlace(buf, at), ..) => Src::run(buf, at + s, len),
            (Load::Scalar(buf, at), ..) => Src::repeat(buf, *at, len),
            (Load::Strided { buf, .. }, _, Some((at, rep))) => Src { buf, start: at, len, bcast: rep },
            (_, Some(reg), _) => Src::run(reg, 0, len),
            _ => unreachable!("gathered inputs have registers"),
        }
    }

    /// Runs the tile at `s..s + len` through the group's compiled kernel
    /// (inputs already gathered), storing its outputs; `false` when the group
    /// has no kernel for this tile's pattern of broadcast inputs.
    fn compiled_tile(&self, sc: &mut Scratch, s: usize, len: usize, outs: &[OutPtr], base: usize) -> bool {
        let Some(code) = &self.code else { return false };
        let n_in = self.g.inputs.len();
        let n_out = self.g.outputs.len();
        // Pointer tables on the stack for the usual few, else on the heap.
        let (mut ins_at, mut ins_heap) = ([std::ptr::null::<f32>(); PTR_TABLE], Vec::new());
        let (mut dst_at, mut dst_heap) = ([std::ptr::null_mut::<f32>(); PTR_TABLE], Vec::new());
        let ins = table(&mut ins_at, &mut ins_heap, n_in);
        let dst = table(&mut dst_at, &mut dst_heap, n_out);
        let mut bcast = jit::InputSet::EMPTY;
        for (k, p) in ins.iter_mut().enumerate() {
            let x = self.input(sc, k, s, len);
            if x.bcast {
                bcast.insert(k);
            }
            // A bool input is read as bytes (see `jit::Node::InputMask`),
            // a 16-bit float one as such (`jit::Node::InputHalf`).
            let n = if x.bcast { 1 } else { len };
            *p = crate::with_buffer!(x.buf, v => v[x.start..x.start + n].as_ptr().cast());
        }
        // Borrowed from the task's cache, not cloned: an `Arc` count touched
        // by every tile of both threads is a contended cache line.
        let v = jit::Variant { bcast, prefetch: self.ahead };
        let at = match sc.kernels.iter().position(|(m, _)| *m == v) {
            Some(i) => i,
            None => {
                sc.kernels.push((v, code.kernel(v)));
                sc.kernels.len() - 1
            }
        };
        let Some(kernel) = &sc.kernels[at].1 else { return false };
        for (j, (&r, p)) in self.g.outputs.iter().zip(outs).enumerate() {
            // f32 outputs, or bool ones written as bytes.
            let bytes = self.g.reg_dtype(r).size();
            dst[j] = if self.stream[j] {
                // Streamed from the register tile below.
                crate::with_buffer!(&mut sc.slots[self.plan.op_slot[r - n_in]], v => v.as_mut_ptr().cast())
            } else {
                // SAFETY: as in `store`: `p` holds at least `s - base + len`
                // elements of the output's dtype and this task owns that range.
                unsafe { p.0.add((s - base) * bytes).cast() }
            };
        }
        // SAFETY: every input pointer addresses `len` elements of this tile
        // (one for broadcast inputs: `bcast` marks them), every output
        // pointer `len` writable elements (a register tile or this task's
        // range of the output), and an output overlaps an input only when it
        // was donated, at the very same positions.
        unsafe { kernel.run(ins, dst, len) };
        for ((&r, p), &st) in self.g.outputs.iter().zip(outs).zip(&self.stream) {
            if st {
                let reg = &sc.slots[self.plan.op_slot[r - n_in]];
                crate::with_buffer!(reg, v => store(&v[..len], p, s - base, st));
            }
        }
        true
    }

    /// Bytes read and written per position: the outputs' and the inputs'
    /// elements, but for broadcast inputs (a scalar, a row repeated over
    /// rows), which stay in L1.
    fn bytes_per_position(&self) -> usize {
        let read: usize = (self.loads.iter().zip(&self.g.inputs))
            .map(|(l, d)| match l {
                Load::InPlace(..) => d.size(),
                Load::Strided { strides, .. } if !strides.contains(&0) => d.size(),
                _ => 0,
            })
            .sum();
        let written: usize = self.g.outputs.iter().map(|&r| self.g.reg_dtype(r).size()).sum();
        (read + written).max(1)
    }

    /// Runs positions `0..n`, in parallel chunks above [`PAR_THRESHOLD`].
    #[inline]
    pub(super) fn all(&self, n: usize, outs: &[OutPtr]) {
        if n < PAR_THRESHOLD {
            self.range(&mut self.scratch(), 0, n, outs, 0);
        } else {
            // Streamed outputs: larger tasks (fewer fences), at least four per thread.
            let chunk = if self.stream.contains(&true) {
                (n / (4 * team::threads())).clamp(PAR_CHUNK, STREAM_CHUNK)
            } else {
                // One part per thread where each thread's share fits its
                // core's L2 (`team::cached_parts`: the same positions on the
                // same thread call after call), else parts of PAR_CHUNK
                // that threads take as they finish.
                let per = self.bytes_per_position();
                team::cached_parts(n * per, PAR_CHUNK * per).map_or(PAR_CHUNK, |parts| n.div_ceil(parts))
            };
            team::run_with(
                n.div_ceil(chunk),
                || self.scratch(),
                |sc, c| self.range(sc, c * chunk, ((c + 1) * chunk).min(n), outs, 0),
            );
        }
    }
}

impl<'a> Exec<'a> {
    /// A run of `g` over inputs `bufs` in the blocked order `b` (see
    /// [`blocked`]): inputs are read as the plan says, through tile
    /// registers, and outputs go through registers too (so that
    /// [`Exec::all_blocked`] stores them in runs), with no streaming of
    /// this run's own.
    pub(super) fn blocked(g: &'a CpuGroup, bufs: &[&'a Buffer], b: &Blocks) -> Exec<'a> {
        let loads: Vec<Load<'a>> = (bufs.iter().zip(&b.inputs))
            .map(|(&buf, i)| match i {
                BlockedInput::Scalar(at) => Load::Scalar(buf, *at),
                // (Read block by block through the plan, not these strides.)
                BlockedInput::Strided(..) => Load::Strided { buf, shape: vec![], strides: vec![], offset: 0 },
            })
            .collect();
        jit::warm_up();
        let stream = vec![false; g.outputs.len()];
        let code = g.code.get(g);
        Exec {
            g,
            loads: loads.into(),
            plan: g.plan.get(g),
            tile: TILE,
            run: usize::MAX,
            stream: stream.into(),
            prefetch: false,
            ahead: 0,
            code,
        }
    }

    /// Runs every block of `b` (an `Exec::blocked` of this plan), writing
    /// output `k` at `outs[k]`, with streaming stores where `stream[k]`.
    /// Parallel tasks take whole bands.
    pub(super) fn all_blocked(&self, b: &Blocks, stream: &[bool], outs: &[OutPtr]) {
        blocked::count_run();
        let (bands, band) = (b.bands(), b.band_len());
        let streams = stream.contains(&true);
        let chunk =
            if streams { (bands * band / (4 * team::threads())).clamp(PAR_CHUNK, STREAM_CHUNK) } else { PAR_CHUNK };
        let per = chunk.div_ceil(band).max(1);
        let init = || {
            // Compiled code writes a block's outputs to these registers.
            let spill = match self.code {
                Some(_) => self.g.outputs.iter().map(|&r| take_register(self.g.reg_dtype(r))).collect(),
                None => Vec::new(),
            };
            (self.scratch(), Spill(spill))
        };
        team::run_with(bands.div_ceil(per), init, |(sc, spill), c| {
            let at: SmallVec<[OutPtr; INLINE]> = spill.0.iter_mut().map(out_ptr).collect();
            for band in c * per..((c + 1) * per).min(bands) {
                b.for_each_block(band, |blk| self.block(sc, &spill.0, &at, b, blk, stream, outs));
            }
            if streams {
                crate::backend::cpu::stream::fence();
            }
        });
    }

    /// Runs one block: gathers its inputs, computes it (compiled code
    /// writes to `spill` through `spill_at`; the interpreter leaves its
    /// outputs in their slots) and stores each output's rows.
    #[allow(clippy::too_many_arguments)]
    fn block(
        &self,
        sc: &mut Scratch,
        spill: &[Buffer],
        spill_at: &[OutPtr],
        b: &Blocks,
        blk: Block,
        stream: &[bool],
        outs: &[OutPtr],
    ) {
        let loads = self.loads.iter().zip(sc.in_regs.iter_mut().zip(sc.direct.iter_mut()));
        for (i, (l, (reg, dir))) in loads.enumerate() {
            if let (Load::Strided { buf, .. }, Some(r), Some(o)) = (l, reg, b.origin(i, blk.at)) {
                *dir = match blocked::gather(buf, o, &blk, r) {
                    Read::Run(at) => Some((at, false)),
                    Read::Repeat(at) => Some((at, true)),
                    Read::Gathered => None,
                };
            }
        }
        let compiled = self.compute(sc, 0, blk.rows * blk.cols, spill_at, 0);
        for (k, (p, &st)) in outs.iter().zip(stream).enumerate() {
            let reg = if compiled { &spill[k] } else { self.output(sc, k) };
            crate::with_buffer!(reg, v => {
                for (r, row) in v[..blk.rows * blk.cols].chunks_exact(blk.cols).enumerate() {
                    store(row, p, blk.at + r * blk.pitch, st);
                }
            });
        }
    }
}

/// Output registers of a blocked task, given back when it ends.
struct Spill(Vec<Buffer>);

impl Drop for Spill {
    fn drop(&mut self) {
        give_registers(self.0.drain(..));
    }
}

/// Entries of the pointer tables a compiled kernel is called with that
/// live on the stack (more go to the heap).
const PTR_TABLE: usize = 16;

/// The first `n` entries of `at`, or `heap` grown to `n` when they do not fit.
fn table<'t, T: Copy + Default>(at: &'t mut [T; PTR_TABLE], heap: &'t mut Vec<T>, n: usize) -> &'t mut [T] {
    if n <= PTR_TABLE {
        &mut at[..n]
    } else {
        heap.resize(n, T::default());
        heap
    }
}

/// Runs `g` over positions `lo..hi` on the calling thread (for the fused
/// reductions, into cache-sized scratch).
#[inline]
pub(super) fn exec_range(g: &CpuGroup, loads: &[Load], lo: usize, hi: usize, outs: &[OutPtr]) {
    let no_stream = no_streams(g);
    let e = Exec::new(g, loads, hi - lo, &no_stream[..], None);
    e.range(&mut e.scratch(), lo, hi, outs, lo);
}

/// Stream flags for writing none of `g`'s outputs with streaming stores
/// (outputs to cache-sized scratch).
#[inline]
pub(super) fn no_streams(g: &CpuGroup) -> SmallVec<[bool; INLINE]> {
    SmallVec::from_elem(false, g.outputs.len())
}

/// Where a buffer's elements are written.
#[inline]
pub(super) fn out_ptr(b: &mut Buffer) -> OutPtr {
    OutPtr(crate::with_buffer!(b, v => v.as_mut_ptr().cast::<u8>()))
}

/// `d` viewed over the iteration space `shape`: its own layout (borrowed,
/// no clone) when the shapes match, else broadcast to `shape`.
#[inline]
pub(super) fn view_as<'a>(d: &'a Data, shape: &[usize]) -> std::borrow::Cow<'a, Layout> {
    if crate::shape::same(&d.layout().shape, shape) {
        std::borrow::Cow::Borrowed(d.layout())
    } else {
        std::borrow::Cow::Owned(d.layout().broadcast_to(shape))
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    #[test]
    fn repeat_period_fills_any_phase_and_length() {
        for p in [1usize, 2, 3, 5, 16, 17] {
            let period: Vec<u32> = (0..p as u32).map(|v| v * 10 + 1).collect();
            for phase in 0..p {
                for len in [1usize, 2, p, p + 1, 3 * p + 2, 100, 2048] {
                    let mut d = vec![0u32; len];
                    repeat_period(&period, phase, &mut d);
                    let want: Vec<u32> = (0..len).map(|i| period[(phase + i) % p]).collect();
                    assert_eq!(d, want, "period {p} phase {phase} len {len}");
                }
            }
        }
    }
    use crate::primitive::{BinaryOp, UnaryOp};

    /// `tanh(a * b) + a` with `a` at argument 0 and `b` at argument 1.
    pub(in crate::backend::cpu) fn tanh_mul_add() -> FusedGroup {
        let f = DType::F32;
        let op = |prim, args: Vec<usize>| FusedOp { prim, args, dtype: f };
        FusedGroup {
            inputs: vec![f, f],
            ops: vec![
                op(Primitive::Binary(BinaryOp::Mul), vec![0, 1]),
                op(Primitive::Unary(UnaryOp::Tanh), vec![2]),
                op(Primitive::Binary(BinaryOp::Add), vec![3, 0]),
            ],
            outputs: vec![4],
        }
    }

    #[test]
    fn registers_are_shared_once_their_last_reader_has_run() {
        let plan = RegPlan::new(&tanh_mul_add());
        // mul -> tanh -> add: tanh reads mul's slot, add reads tanh's, so two slots suffice.
        assert_eq!(plan.slot_dtype.len(), 2);
        assert_ne!(plan.op_slot[0], plan.op_slot[1]);
        assert_ne!(plan.op_slot[1], plan.op_slot[2]);
        assert_eq!(plan.op_slot[0], plan.op_slot[2]);
    }
}
