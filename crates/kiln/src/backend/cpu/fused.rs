//! The fused elementwise executor: a tiled register program.
//!
//! The iteration space (the group's output shape, row-major) is cut into
//! tiles of [`TILE`] elements. For each tile, every input is loaded into a
//! register (contiguous inputs are read in place, broadcast scalars are
//! read as one repeated value, other strided inputs are gathered), each op runs as
//! a tight loop over the tile, and only the group's outputs are written to
//! memory. Coarse chunks of tiles run on rayon's pool above a size threshold.
//! Eager elementwise ops run through here too, as groups of one op.

use crate::array::Data;
use crate::backend::cpu::rows::Claimed;
use crate::backend::cpu::strided::{PAR_CHUNK, PAR_THRESHOLD};
use crate::backend::cpu::tile::{Src, TILE};
use crate::backend::cpu::{binary, cast, jit, reduce, team, unary, Buffer, BufferElement, CpuGroup};
use crate::dtype::{DType, Element};
use crate::layout::{collapse, for_each_block, Layout};
use crate::passes::fuse::{FusedGroup, FusedOp};
use crate::primitive::{BinaryOp, Primitive, ReduceOp};

use std::sync::Arc;

use rayon::prelude::*;
use smallvec::SmallVec;

/// Per-input or per-output vectors of one launch, inline for up to this
/// many entries (a launch then allocates none of them).
const INLINE: usize = 4;

/// The inputs of a fused launch ([`run_args`]): a few, kept inline so a
/// launch allocates no vector for them.
pub type Args<'a> = SmallVec<[Arg<'a>; INLINE]>;

/// The outputs of a launch ([`run_args`]): usually one or two, kept inline.
pub type Outs = SmallVec<[Data; 2]>;

/// A group's loads, one per input.
type Loads<'a> = SmallVec<[Load<'a>; INLINE]>;

/// A slice an [`Exec`] borrows from its caller (a launch's loads and
/// stream flags, built on the caller's stack) or owns. Unlike `Cow<[T]>`
/// (and `SmallVec`), it is covariant in `T`, so an `Exec` of short-lived
/// loads may be used where one of a shorter lifetime is expected.
enum Held<'a, T> {
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
enum Load<'a> {
    /// Contiguous in the group's order from this element on: read in place.
    InPlace(&'a Buffer, usize),
    /// One element broadcast everywhere: read as one repeated value.
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
fn plan_load<'a>(buf: &'a Buffer, l: &Layout) -> Load<'a> {
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
        let dst = crate::buffer::BufferElement::slice_of_mut(reg).expect("register dtype is the input dtype");
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
    // tile.len()` (allocated by `run_args`/`run_reduce` for this register's
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

impl PartialEq for PlanSlot {
    /// The plan is derived from the group: slots never make groups differ.
    fn eq(&self, _: &PlanSlot) -> bool {
        true
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
    fn new(g: &FusedGroup) -> RegPlan {
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
struct Exec<'a> {
    g: &'a CpuGroup,
    loads: Held<'a, Load<'a>>,
    plan: &'a RegPlan,
    /// Elements per tile (at most [`TILE`]).
    tile: usize,
    /// Per output: written with streaming stores (a large destination).
    stream: Held<'a, bool>,
    /// Prefetch the next tile of inputs read in place: the iteration space
    /// is larger than the caches, so they come from memory.
    prefetch: bool,
    /// How far ahead compiled code prefetches its inputs, in bytes (0: not).
    ahead: i32,
    /// The group compiled to machine code (see [`jit`]), when it is.
    code: Option<&'a jit::Compiled>,
}

/// One task's tile buffers, allocated once and reused for every tile.
/// Its vectors come from the thread's spares and go back there (with the
/// registers to [`REGISTERS`]): a launch allocates none of them.
struct Scratch {
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
fn give_registers(regs: impl Iterator<Item = Buffer>) {
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
fn take_register(dt: DType) -> Buffer {
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
const NO_BUFFER: Buffer = Buffer::Bool(Vec::new());
/// The argument array's filler past an op's arity.
static EMPTY: Buffer = Buffer::Bool(Vec::new());

impl<'a> Exec<'a> {
    /// A run over `n` positions; `stream` says, per output, whether it is
    /// written with streaming stores.
    fn new(
        g: &'a CpuGroup,
        loads: impl Into<Held<'a, Load<'a>>>,
        n: usize,
        stream: impl Into<Held<'a, bool>>,
        next_block: Option<usize>,
    ) -> Exec<'a> {
        let widest = g.inputs.iter().map(|d| d.size()).max().unwrap_or(0);
        let prefetch = n * widest >= crate::backend::cpu::stream::STREAM_MIN_BYTES;
        jit::warm_up();
        let code = g.code.get(g);
        let ahead =
            if prefetch { PREFETCH_DISTANCE } else { next_block.map_or(0, |b| b.min(i32::MAX as usize) as i32) };
        let (loads, stream) = (loads.into(), stream.into());
        Exec { g, loads, plan: g.plan.get(g), tile: TILE.min(n.max(1)), stream, prefetch, ahead, code }
    }

    fn scratch(&self) -> Scratch {
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
    fn range(&self, sc: &mut Scratch, start: usize, end: usize, outs: &[OutPtr], base: usize) {
        let mut s = start;
        while s < end {
            let len = self.tile.min(end - s);
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
    fn produce(&self, sc: &mut Scratch, s: usize, len: usize, outs: &[OutPtr], base: usize) -> bool {
        let (g, n_in) = (self.g, self.g.inputs.len());
        for (l, (reg, dir)) in self.loads.iter().zip(sc.in_regs.iter_mut().zip(sc.direct.iter_mut())) {
            if let (Load::Strided { buf, shape, strides, offset }, Some(r)) = (l, reg) {
                // A tile in one run of the innermost dimension is read in
                // place; a broadcast row's run is one repeated value.
                *dir = run_at(shape, strides, *offset, s, len, 1)
                    .map(|at| (at, false))
                    .or_else(|| run_at(shape, strides, *offset, s, len, 0).map(|at| (at, true)));
                if dir.is_none() {
                    gather_tile(buf, shape, strides, *offset, s, len, r);
                }
            }
        }
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
    fn output<'s>(&self, sc: &'s Scratch, k: usize) -> &'s Buffer {
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
        let mut ins = [std::ptr::null::<f32>(); jit::MAX_PTRS];
        let mut bcast = 0u64;
        for (k, p) in ins.iter_mut().enumerate().take(self.loads.len()) {
            let x = self.input(sc, k, s, len);
            bcast |= (x.bcast as u64) << k;
            *p = x.slice::<f32>().as_ptr();
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
        let n_in = self.g.inputs.len();
        let mut dst = [std::ptr::null_mut::<f32>(); jit::MAX_PTRS];
        for (j, (&r, p)) in self.g.outputs.iter().zip(outs).enumerate() {
            dst[j] = if self.stream[j] {
                // Streamed from the register tile below.
                f32::slice_of_mut(&mut sc.slots[self.plan.op_slot[r - n_in]]).expect("f32 register").as_mut_ptr()
            } else {
                // SAFETY: as in `store`: `p` holds at least `s - base + len`
                // elements of `f32` and this task owns that range.
                unsafe { (p.0 as *mut f32).add(s - base) }
            };
        }
        // SAFETY: every input pointer addresses `len` elements of this tile
        // (one for broadcast inputs: `bcast` marks them), every output
        // pointer `len` writable elements (a register tile or this task's
        // range of the output), and an output overlaps an input only when it
        // was donated, at the very same positions.
        unsafe { kernel.run(&ins[..n_in], &dst[..self.g.outputs.len()], len) };
        for ((&r, p), &st) in self.g.outputs.iter().zip(outs).zip(&self.stream) {
            if st {
                let reg = &sc.slots[self.plan.op_slot[r - n_in]];
                crate::with_buffer!(reg, v => store(&v[..len], p, s - base, st));
            }
        }
        true
    }

    /// Runs positions `0..n`, in parallel chunks above [`PAR_THRESHOLD`].
    fn all(&self, n: usize, outs: &[OutPtr]) {
        if n < PAR_THRESHOLD {
            self.range(&mut self.scratch(), 0, n, outs, 0);
        } else {
            // Streamed outputs: larger tasks (fewer fences), at least four per thread.
            let chunk = if self.stream.contains(&true) {
                (n / (4 * rayon::current_num_threads())).clamp(PAR_CHUNK, STREAM_CHUNK)
            } else {
                PAR_CHUNK
            };
            team::parallel(|| {
                (0..n.div_ceil(chunk)).into_par_iter().for_each_init(
                    || self.scratch(),
                    |sc, c| self.range(sc, c * chunk, ((c + 1) * chunk).min(n), outs, 0),
                )
            });
        }
    }
}

/// Runs `g` over positions `lo..hi` on the calling thread (for [`run_reduce`]).
fn exec_range(g: &CpuGroup, loads: &[Load], lo: usize, hi: usize, outs: &[OutPtr]) {
    let no_stream = no_streams(g);
    let e = Exec::new(g, loads, hi - lo, &no_stream[..], None);
    e.range(&mut e.scratch(), lo, hi, outs, lo);
}

/// Stream flags for writing none of `g`'s outputs with streaming stores
/// (outputs to cache-sized scratch).
fn no_streams(g: &CpuGroup) -> SmallVec<[bool; INLINE]> {
    SmallVec::from_elem(false, g.outputs.len())
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

/// Where a buffer's elements are written.
fn out_ptr(b: &mut Buffer) -> OutPtr {
    OutPtr(crate::with_buffer!(b, v => v.as_mut_ptr().cast::<u8>()))
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
        let mut loads = Loads::new();
        loads.extend(args.iter().map(|a| plan_load(a.data().buffer(), &view_as(a.data(), shape))));
        // An output is streamed when its destination (the whole sink, for
        // claimed rows) is large.
        let mut stream: SmallVec<[bool; INLINE]> = SmallVec::new();
        stream.extend(g.outputs.iter().enumerate().map(|(k, &r)| {
            let dest = into.get(k).and_then(|c| c.as_ref()).map_or(n, |c| c.sink_len());
            dest * g.reg_dtype(r).size() >= crate::backend::cpu::stream::STREAM_MIN_BYTES
        }));
        // A block of a row-blocked chain (`into` is not empty):
        // compiled code prefetches its inputs one block ahead, so the next
        // block's rows arrive from memory while this one computes.
        let next_block = (!into.is_empty()).then(|| n * g.inputs.iter().map(|d| d.size()).max().unwrap_or(0));
        Exec::new(g, &loads[..], n, &stream[..], next_block).all(n, &ptrs);
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
    g: &CpuGroup,
    inputs: &[&Data],
    shape: &[usize],
    reductions: &[(ReduceOp, usize)],
    axes: &[usize],
) -> crate::Result<Outs> {
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
    let copied_input = |r: usize| -> Option<usize> {
        let op = g.ops.get(r.checked_sub(g.inputs.len())?)?;
        let src = *op.args.first()?;
        (matches!(op.prim, Primitive::AsType(d) if d == g.reg_dtype(src)) && src < g.inputs.len()).then_some(src)
    };
    if let Some(regs) = g.outputs.iter().map(|&r| copied_input(r)).collect::<Option<Vec<usize>>>() {
        // Reductions of one input together: a statistic and the reduction
        // it carries (softmax's max and sumexp, layernorm's mean and var)
        // take one pass.
        let mut out: Vec<Option<Data>> = reductions.iter().map(|_| None).collect();
        for &reg in &regs {
            let mine: Vec<usize> = (0..reductions.len()).filter(|&k| regs[reductions[k].1] == reg).collect();
            if mine.is_empty() || out[mine[0]].is_some() {
                continue;
            }
            let d = inputs[reg];
            let v = d.view(view_as(d, shape).into_owned());
            let ops: Vec<ReduceOp> = mine.iter().map(|&k| reductions[k].0).collect();
            for (k, b) in mine.into_iter().zip(reduce::reduce_many(&ops, &v, axes)?) {
                out[k] = Some(Data::contiguous(b, &out_shape));
            }
        }
        return Ok(out.into_iter().map(|o| o.expect("every reduction reads one of the inputs")).collect());
    }
    if let Some(bufs) = fold_small(g, &loads, n_out, n_red, reductions) {
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
            team::parallel(|| (0..chunks).into_par_iter().map(part).collect::<crate::Result<_>>())?
        };
        (0..reductions.len()).map(|k| concat_buffers(parts.iter().map(|p| &p[k]), out_dtypes[k])).collect()
    } else {
        // Few outputs, long reductions: partial results over the nodes of the
        // row's pairwise tree (of at most `REDUCE_CHUNK` elements, whatever
        // the thread count), combined along that tree: the order of the
        // reduction kernel over the whole row.
        let nodes = reduce::tree_chunks(n_red, REDUCE_CHUNK);
        let mut finals: Vec<Vec<Buffer>> = vec![vec![]; reductions.len()];
        for o in 0..n_out {
            let partials: Vec<Vec<Partial>> = team::parallel(|| {
                nodes
                    .par_iter()
                    .map(|node| {
                        let (lo, hi) = (o * n_red + node.start, o * n_red + node.end);
                        let vals = produce(lo, hi, 1)?;
                        reductions.iter().map(|&(op, i)| Partial::of(op, &vals[i], hi - lo)).collect()
                    })
                    .collect::<crate::Result<_>>()
            })?;
            for (k, &(op, _)) in reductions.iter().enumerate() {
                finals[k].push(Partial::combine(op, partials.iter().map(|p| &p[k]), n_red, out_dtypes[k])?);
            }
        }
        finals.iter().zip(&out_dtypes).map(|(f, &dt)| concat_buffers(f.iter(), dt)).collect()
    };
    Ok(bufs.into_iter().map(|b| Data::contiguous(b, &out_shape)).collect())
}

/// Most reductions [`fold_small`] folds together.
const MAX_FOLDS: usize = 8;

/// [`run_reduce`] of a small space (at most [`REDUCE_CHUNK`] positions:
/// `n_out` rows of `n_red`, reduced positions innermost) when every
/// reduction is a sum, mean, max or min of `f32` values: the group runs
/// over as many whole rows as fill a tile, and each row folds from the
/// tile's register ([`reduce::fold_f32`]: the fold [`reduce::reduce`]
/// runs over a contiguous row). Rows longer than a tile are made leaf by
/// leaf, each leaf folded from its register while it is in L1, and the
/// leaves combined in that fold's order ([`reduce::fold_f32_leaves`]).
/// No values are stored: no scratch for the space, no general reduction
/// plan, which cost more than the work at these sizes. `None` when it
/// does not apply.
fn fold_small(
    g: &CpuGroup,
    loads: &[Load],
    n_out: usize,
    n_red: usize,
    reductions: &[(ReduceOp, usize)],
) -> Option<Vec<Buffer>> {
    let total = n_out.checked_mul(n_red)?;
    let folds = reductions.iter().all(|&(op, i)| {
        matches!(op, ReduceOp::Sum | ReduceOp::Mean | ReduceOp::Max | ReduceOp::Min)
            && g.reg_dtype(g.outputs[i]) == DType::F32
    });
    let n_in = g.inputs.len();
    if n_red == 0
        || total > REDUCE_CHUNK
        || !folds
        || reductions.len() > MAX_FOLDS
        || g.outputs.iter().any(|&r| r < n_in)
    {
        return None;
    }
    let no_stream = no_streams(g);
    let e = Exec::new(g, loads, total, &no_stream[..], None);
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
        for r0 in (0..n_out).step_by(rows_per) {
            let len = rows_per.min(n_out - r0) * n_red;
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
        for r in 0..n_out {
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
    Some(out.into_iter().map(Buffer::from_vec).collect())
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
    /// The `logsumexp` accumulator of the chunk ([`reduce::lse_state`]),
    /// and the dtype it accumulates in.
    Lse(f64, f64, DType),
}

impl Partial {
    /// The partial result of `op` over the single row `vals` of `count`
    /// elements, in the dtype the reduction accumulates in
    /// ([`reduce::acc_dtype`]: `f32` for `f16`/`bf16`, `f64` for an integer
    /// mean), so that partials neither round nor overflow where the
    /// reduction of the whole row would not.
    fn of(op: ReduceOp, vals: &Data, count: usize) -> crate::Result<Partial> {
        let dt = vals.buffer().dtype();
        let acc = reduce::acc_dtype(op, dt);
        let widened;
        let vals = if acc == dt {
            vals
        } else {
            widened = run_single(&Primitive::AsType(acc), &[vals], &vals.layout().shape, acc)?;
            &widened
        };
        let one = |op: ReduceOp| reduce::reduce(op, vals, &[1], op.out_dtype(vals.buffer().dtype()));
        let first = |b: Buffer| crate::with_buffer!(&b, v => v[0].to_f64());
        Ok(match op {
            ReduceOp::Mean => Partial::Value(one(ReduceOp::Sum)?),
            ReduceOp::Var { .. } => {
                Partial::Moments(count as f64, first(one(ReduceOp::Mean)?), first(one(ReduceOp::Var { ddof: 0 })?))
            }
            ReduceOp::SumExp => Partial::MaxSum(first(one(ReduceOp::Max)?), first(one(ReduceOp::SumExp)?)),
            ReduceOp::LogSumExp => match reduce::lse_state(vals) {
                Some((m, s)) => Partial::Lse(m, s, vals.buffer().dtype()),
                None => Partial::Value(one(ReduceOp::LogSumExp)?),
            },
            o => Partial::Value(one(o)?),
        })
    }

    /// Combines the partials of the nodes of [`reduce::tree_chunks`]`(n,
    /// REDUCE_CHUNK)` (in order) into the one-element result of `op` over
    /// `n` elements, of dtype `out`. Values combine along the tree, two at a
    /// time by the reduction kernel itself, in the accumulator's dtype.
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
            ReduceOp::LogSumExp if matches!(parts.first(), Some(Partial::Lse(..))) => {
                let mut dt = DType::F64;
                let states: Vec<(f64, f64)> = parts
                    .iter()
                    .map(|p| match p {
                        Partial::Lse(m, s, d) => {
                            dt = *d;
                            (*m, *s)
                        }
                        _ => unreachable!("logsumexp partials are states"),
                    })
                    .collect();
                Ok(scalar(reduce::lse_from_states(dt, n, REDUCE_CHUNK, &states)))
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
                let again = if op == ReduceOp::Mean { ReduceOp::Sum } else { op };
                let mut next = bufs.into_iter();
                let mut leaf =
                    |_, _| -> crate::Result<Buffer> { Ok(next.next().expect("one partial per node").clone()) };
                let combine = |a: crate::Result<Buffer>, b: crate::Result<Buffer>| -> crate::Result<Buffer> {
                    let two = Data::contiguous(concat_buffers([a?, b?].iter(), pdt), &[1, 2]);
                    reduce::reduce(again, &two, &[1], again.out_dtype(pdt))
                };
                let r = Data::contiguous(reduce::fold_tree(n, REDUCE_CHUNK, &mut leaf, &combine)?, &[1]);
                let r = if op == ReduceOp::Mean {
                    // The division in the accumulator's dtype, as the kernel's.
                    let count = Data::contiguous(crate::ops::Scalar::Int(n as i64).to_buffer(pdt), &[]);
                    run_single(&Primitive::Binary(BinaryOp::Div), &[&r, &count], &[1], pdt)?
                } else {
                    r
                };
                if r.buffer().dtype() == out {
                    return Ok((*r.buffer()).clone());
                }
                Ok((*run_single(&Primitive::AsType(out), &[&r], &[1], out)?.buffer()).clone())
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

/// `d` viewed over the iteration space `shape`: its own layout (borrowed,
/// no clone) when the shapes match, else broadcast to `shape`.
fn view_as<'a>(d: &'a Data, shape: &[usize]) -> std::borrow::Cow<'a, Layout> {
    if crate::shape::same(&d.layout().shape, shape) {
        std::borrow::Cow::Borrowed(d.layout())
    } else {
        std::borrow::Cow::Owned(d.layout().broadcast_to(shape))
    }
}

/// Runs one elementwise primitive eagerly, as a group of one op.
pub fn run_single(prim: &Primitive, inputs: &[&Data], shape: &[usize], dtype: DType) -> crate::Result<Data> {
    let g = CpuGroup::new(FusedGroup::single(prim.clone(), inputs.iter().map(|d| d.dtype()).collect(), dtype));
    Ok(run(&g, inputs, shape)?.pop().expect("one output"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::primitive::UnaryOp;

    fn f32_data(vals: Vec<f32>, layout: Layout) -> Data {
        Data::from_parts(Arc::new(Buffer::from_vec(vals)), layout)
    }

    fn vec_ptr(d: &Data) -> *const f32 {
        d.buffer().as_slice::<f32>().expect("f32").as_ptr()
    }

    /// `tanh(a * b) + a` with `a` at argument 0 and `b` at argument 1.
    fn group() -> CpuGroup {
        let f = DType::F32;
        let op = |prim, args: Vec<usize>| FusedOp { prim, args, dtype: f };
        CpuGroup::new(FusedGroup {
            inputs: vec![f, f],
            ops: vec![
                op(Primitive::Binary(BinaryOp::Mul), vec![0, 1]),
                op(Primitive::Unary(UnaryOp::Tanh), vec![2]),
                op(Primitive::Binary(BinaryOp::Add), vec![3, 0]),
            ],
            outputs: vec![4],
        })
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

    #[test]
    fn registers_are_shared_once_their_last_reader_has_run() {
        let g = group();
        let plan = RegPlan::new(&g);
        // mul -> tanh -> add: tanh reads mul's slot, add reads tanh's, so two slots suffice.
        assert_eq!(plan.slot_dtype.len(), 2);
        assert_ne!(plan.op_slot[0], plan.op_slot[1]);
        assert_ne!(plan.op_slot[1], plan.op_slot[2]);
        assert_eq!(plan.op_slot[0], plan.op_slot[2]);
    }
}
