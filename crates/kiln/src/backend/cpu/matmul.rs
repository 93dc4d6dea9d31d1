//! Matrix products: `a @ b` over broadcast batch dimensions.
//!
//! `f32` runs on kiln's own AVX-512 or AVX2 kernel where the CPU has it ([`sgemm`]),
//! else on the `gemm` crate. `f64` runs on `gemm`, which takes raw
//! pointers with row and column strides, so transposed, sliced (negative
//! steps too) and broadcast (stride 0) operands are read in place, with no
//! copy. `bf16` runs on `bf16` instructions where the CPU and the operating
//! system allow them ([`bf16_gemm`]: AMX tiles on Intel from Sapphire
//! Rapids on, else AVX512-BF16 dot products where they beat `f32` FMAs);
//! `f16`, and `bf16` elsewhere, are widened to `f32` for the `f32`
//! kernels. Either way the sums are `f32` and the result is rounded back
//! once (`gemm`'s own `f16` path did not: its results missed the exactly
//! rounded product).
//! [`matmul_bias`] starts the `f32` output from a broadcast bias, so
//! `a @ b + bias` costs one pass over the output. Any other epilogue of a
//! product up to [`EPILOGUE_WORK`] multiply-adds runs on each block of
//! rows right after the block is computed, on the same thread
//! ([`f32_row_blocks`]), rather than in a pass after the product that
//! reads most of the output from other cores' caches; so does a reduction
//! of the product or of its epilogue ([`crate::backend::cpu::block_fold`]),
//! the product kept only when it is read later
//! ([`f32_row_blocks_kept`]). Integers use an
//! exact loop in i-k-j order with wrapping arithmetic (as `+` and `*` on
//! integer arrays).
//!
//! Threads: a product of at least [`PAR_WORK`] multiply-adds splits its
//! output into one block per thread of the team (`split_blocks`), each a
//! single-threaded `gemm` call; a batch of smaller products runs its
//! matrices in parallel on the team once the batch as a whole is that
//! large. A single `f32` product from
//! [`sgemm::TEAM_WORK`] multiply-adds up splits over the team of spinning
//! threads ([`crate::backend::cpu::team`]), which hands work over in well
//! under a microsecond; the output is left uninitialized so that each block
//! is written only by the core that computes it. Outputs of 4 MiB and more
//! come from the pool of freed buffers ([`crate::memory::take_vec`]), so a
//! product called again does not fault in fresh pages.

#[path = "sgemm.rs"]
pub mod sgemm;

#[path = "bf16_gemm.rs"]
pub mod bf16_gemm;

use crate::host_vec::HostVec;
use std::mem::MaybeUninit;
use std::ops::Range;

use gemm::Parallelism;
use half::{bf16, f16};
use smallvec::SmallVec;

use crate::array::Data;
use crate::backend::cpu::half_conv::Half;
use crate::backend::cpu::interpreter::OutPtr;
use crate::backend::cpu::math::IntMath;
use crate::backend::cpu::team;
use crate::buffer::Buffer;
use crate::dtype::Element;
use crate::error::{shape_str, Error, Result};
use crate::layout::{Dims, Layout};
use crate::memory::take_vec;

/// Per-batch-matrix offsets, inline for batches of up to 4 matrices (a
/// single product's geometry allocates nothing).
type Offsets<T> = SmallVec<[T; 4]>;

/// Multiply-adds (`m * n * k`, times the batch size for batches of small
/// products) from which a matrix product uses more than one thread.
pub const PAR_WORK: usize = 1 << 22;

/// True when a product of `batch` matrices of `m x k` by `k x n` runs on
/// more than one thread (see the module docs).
pub fn uses_threads(batch: usize, m: usize, n: usize, k: usize) -> bool {
    let work = m.saturating_mul(n).saturating_mul(k);
    work >= PAR_WORK || (batch > 1 && work.saturating_mul(batch) >= PAR_WORK)
}

/// Runs `block(rows, cols)` over `parts` disjoint blocks that tile an `m x
/// n` output, in parallel on the team when `parts > 1`, and returns when
/// all have run: by columns (whole vectors of 16) when `b` is the larger
/// operand (`n >= m`, so each thread reads all of `a` and its own columns
/// of `b`), else by rows (whole tiles of 8).
///
/// Large products run so, each block a single-threaded `gemm` call,
/// rather than on `gemm`'s own rayon split: on an Intel Xeon (2 cores),
/// where one `gemm` thread ran a 1024^3 product at the rate of torch's
/// oneDNN, 128x256x256 and 256x512x512 products ran 1.2-1.6x faster so
/// (a rayon job costs tens of microseconds to start), 1024^3 within noise.
pub(crate) fn split_blocks(m: usize, n: usize, parts: usize, block: impl Fn(Range<usize>, Range<usize>) + Sync) {
    let by_cols = n >= m;
    let (len, unit) = if by_cols { (n, 16) } else { (m, 8) };
    let units = len.div_ceil(unit);
    let parts = parts.min(units).max(1);
    let range = |i: usize| (i * units / parts * unit).min(len)..((i + 1) * units / parts * unit).min(len);
    let run = |i: usize| if by_cols { block(0..m, range(i)) } else { block(range(i), 0..n) };
    if parts == 1 {
        run(0);
    } else {
        team::run(parts, &run);
    }
}

/// `a @ b` with broadcast batch dims; `shape` is the output shape
/// (`batch.. , m, n`). Both operands have at least 2 dims and one dtype.
pub fn matmul(a: &Data, b: &Data, shape: &[usize]) -> Result<Buffer> {
    let contiguous_b;
    let mut b = b;
    let inner_stride = b.layout().strides.last().copied().unwrap_or(1);
    if a.buffer().dtype().is_int() && inner_stride != 1 && b.layout().shape.last().is_some_and(|&n| n > 1) {
        // The integer loop streams rows of `b`: give it unit-stride rows.
        contiguous_b = Data::contiguous(super::copy("matmul", b)?, &b.layout().shape);
        b = &contiguous_b;
    }
    let g = Geometry::new(a, b, shape)?;
    Ok(match a.buffer() {
        Buffer::F32(_) => Buffer::from_vec(f32_batched(a, b, &g, None)?),
        Buffer::F64(_) => Buffer::from_vec(gemm_batched::<f64>(a, b, &g)?),
        Buffer::F16(_) => Buffer::from_vec(widened::<f16>(a, b, shape)?),
        Buffer::BF16(_) => match bf16_gemm::kernel_for(g.m, g.n, g.k) {
            Some(kernel) => Buffer::from_vec(bf16_kernel_batched(a, b, &g, kernel)?),
            None => Buffer::from_vec(widened::<bf16>(a, b, shape)?),
        },
        Buffer::U8(_) => Buffer::from_vec(int_batched::<u8>(a, b, &g)?),
        Buffer::U32(_) => Buffer::from_vec(int_batched::<u32>(a, b, &g)?),
        Buffer::I32(_) => Buffer::from_vec(int_batched::<i32>(a, b, &g)?),
        Buffer::I64(_) => Buffer::from_vec(int_batched::<i64>(a, b, &g)?),
        Buffer::Bool(_) => {
            return Err(Error::DType {
                op: "matmul",
                dtype: crate::DType::Bool,
                msg: "convert bool operands to a numeric dtype".into(),
            })
        }
    })
}

/// `a @ b + bias` for `f32` operands, with `bias` broadcastable to the
/// output `shape` without changing it: the output starts as the broadcast
/// bias and the product accumulates into it. `None` when the operands are
/// not all `f32`, the bias does not broadcast so, or the product's kernel
/// would not read the bias itself ([`sgemm::seeds_in_kernel`]): the caller
/// then adds it separately, in one pass with the rest of the epilogue.
pub fn matmul_bias(a: &Data, b: &Data, bias: &Data, shape: &[usize]) -> Result<Option<Buffer>> {
    let f32s = [a, b, bias].iter().all(|d| matches!(d.buffer(), Buffer::F32(_)));
    let bs = &bias.layout().shape;
    let fits = bs.len() <= shape.len() && bs.iter().rev().zip(shape.iter().rev()).all(|(&x, &y)| x == y || x == 1);
    if !f32s || !fits {
        return Ok(None);
    }
    let g = Geometry::new(a, b, shape)?;
    if !sgemm::seeds_in_kernel(g.m, g.n, g.k) {
        return Ok(None);
    }
    if !bias.layout().fits(bias.buffer().len()) {
        return Err(Error::Invalid { op: "matmul", msg: "the bias's layout reaches outside its buffer".into() });
    }
    Ok(Some(Buffer::from_vec(f32_batched(a, b, &g, Some(bias))?)))
}

/// What [`f32_row_blocks`] runs on each block: `then(start, len, block,
/// at)` gets the block's first position in the row-major output (`start`)
/// and its length, and finds its values at `block[at..at + len]`.
pub type Then<'a> = dyn Fn(usize, usize, &Buffer, usize) + Sync + 'a;

/// Most output elements of a block of [`f32_row_blocks`] (1 MiB of `f32`):
/// a block stays in the cache of the core that computed it while its
/// epilogue reads it (the x86 cores kiln runs on have 1-2 MiB of L2).
pub const EPILOGUE_BLOCK: usize = 1 << 18;

/// Most multiply-adds of a product (its batch included) that
/// [`f32_row_blocks`] takes. Blocks of whole rows cost a larger product
/// more than they save: where `b` is the larger operand the product splits
/// by columns (`split_blocks`), which ran a 512x1024x1024 product 4-9%
/// faster than by rows on an Intel Xeon, and there the epilogue's separate
/// pass is a few percent of the product's time.
pub const EPILOGUE_WORK: usize = 8 * PAR_WORK;

thread_local! {
    /// The block of rows this thread last computed for [`f32_row_blocks`]
    /// (kept between products, at most [`EPILOGUE_BLOCK`] elements).
    static BLOCK: std::cell::RefCell<Buffer> = const { std::cell::RefCell::new(Buffer::F32(crate::host_vec::HostVec::new())) };
}

/// Whether [`f32_row_blocks`] takes the product `a @ b` with output `shape`:
/// `f32` operands and at most [`EPILOGUE_WORK`] multiply-adds.
pub fn row_blocks_take(a: &Data, b: &Data, shape: &[usize]) -> bool {
    let f32s = matches!((a.buffer(), b.buffer()), (Buffer::F32(_), Buffer::F32(_)));
    let nd = shape.len();
    let k = a.layout().shape.last().copied().unwrap_or(0);
    f32s && nd >= 2
        && shape[nd - 1] <= EPILOGUE_BLOCK
        && shape.iter().fold(k, |w, &d| w.saturating_mul(d)) <= EPILOGUE_WORK
}

/// `a @ b` for `f32` operands, computed in blocks of whole rows of one
/// output matrix, each handed to `then` ([`Then`]) on the thread that
/// computed it, right after, while it is in that core's cache. Every
/// output position is in exactly one block; blocks may run in parallel on
/// the team. Returns `false`, computing nothing, where
/// [`row_blocks_take`] does not hold.
///
/// A product's epilogue (bias, activation) run so reads the product from
/// the computing core's cache instead of from memory, or from another
/// core's cache, in a pass of its own over the whole output.
pub fn f32_row_blocks(a: &Data, b: &Data, shape: &[usize], then: &Then<'_>) -> Result<bool> {
    row_blocks(a, b, shape, None, then)
}

/// [`f32_row_blocks`] that also keeps the product: each block is copied
/// into the returned buffer (the row-major output of `shape`) by the
/// thread that computed it, after `then` ran on it. For a product that is
/// needed whole and also folded block by block (a reduction of it, say).
/// A product that runs on one thread is computed whole, straight into
/// that buffer, and handed to `then` matrix by matrix from there (no copy;
/// it is still in this core's cache). `None`, computing nothing, where
/// [`row_blocks_take`] does not hold.
pub fn f32_row_blocks_kept(a: &Data, b: &Data, shape: &[usize], then: &Then<'_>) -> Result<Option<Buffer>> {
    if !row_blocks_take(a, b, shape) {
        return Ok(None);
    }
    let total = shape.iter().try_fold(1usize, |t, &d| t.checked_mul(d));
    let total = total.ok_or(Error::OutOfMemory { op: "matmul", bytes: usize::MAX })?;
    let g = Geometry::new(a, b, shape)?;
    let (mn, nb) = (g.m * g.n, g.offsets.len());
    if team::parts_for(nb * mn * g.k, sgemm::TEAM_WORK) == 1 {
        let whole = Buffer::from_vec(f32_batched(a, b, &g, None)?);
        if whole.len() == total {
            (0..nb).for_each(|i| then(i * mn, mn, &whole, i * mn));
        }
        return Ok(Some(whole));
    }
    let mut out: HostVec<f32> = take_vec("matmul", total)?;
    let kept = OutPtr(out.as_mut_ptr().cast());
    row_blocks(a, b, shape, Some(&kept), then)?;
    // SAFETY: `take_vec` gave room for `total` elements, and the blocks
    // cover every position of the output once, each copied in whole.
    unsafe { out.set_len(total) };
    Ok(Some(Buffer::from_vec(out)))
}

/// [`f32_row_blocks`], copying each block to `keep` (room for the whole
/// output) when given.
fn row_blocks(a: &Data, b: &Data, shape: &[usize], keep: Option<&OutPtr>, then: &Then<'_>) -> Result<bool> {
    if !row_blocks_take(a, b, shape) {
        return Ok(false);
    }
    let g = Geometry::new(a, b, shape)?;
    let (m, n, k, nb) = (g.m, g.n, g.k, g.offsets.len());
    if m == 0 || n == 0 || nb == 0 {
        return Ok(true);
    }
    let sa = a.buffer().as_slice::<f32>().expect("row_blocks_take checked the dtype");
    let sb = b.buffer().as_slice::<f32>().expect("row_blocks_take checked the dtype");
    // Blocks of whole tiles of rows, at most EPILOGUE_BLOCK elements, and
    // one per thread at least once the product is worth splitting (as
    // `sgemm` splits it).
    let threads = team::parts_for(nb * m * n * k, sgemm::TEAM_WORK);
    let most = (EPILOGUE_BLOCK / n).max(1);
    let level = sgemm::level();
    let mr = sgemm::tile_rows(level);
    let most = if most >= mr { most / mr * mr } else { most };
    let rows = m.div_ceil(threads.div_ceil(nb)).next_multiple_of(mr).min(most);
    let per = m.div_ceil(rows);
    let failed = std::sync::Mutex::new(None);
    let part = |i: usize| {
        let (batch, r0) = (i / per, i % per * rows);
        let r1 = (r0 + rows).min(m);
        let len = (r1 - r0) * n;
        let (oa, ob) = g.offsets[batch];
        // Rows r0..r1 of the batch's `a`, all of its `b`: in bounds by the
        // operands' layouts broadcast to the batch (Mat's contract).
        let am = sgemm::Mat { data: sa, off: oa + r0 as isize * g.a_rs, rs: g.a_rs, cs: g.a_cs };
        let bm = sgemm::Mat { data: sb, off: ob, rs: g.b_rs, cs: g.b_cs };
        BLOCK.with(|cell| {
            let mut buf = cell.borrow_mut();
            let Buffer::F32(v) = &mut *buf else { unreachable!("the block buffer holds f32") };
            if v.len() < len {
                if v.try_reserve_exact(len - v.len(), "matmul").is_err() {
                    let e = Error::OutOfMemory { op: "matmul", bytes: len * std::mem::size_of::<f32>() };
                    failed.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert(e);
                    return;
                }
                v.resize(len, 0.0);
            }
            // SAFETY: `[f32]` and `[MaybeUninit<f32>]` have one layout, and
            // `sgemm` writes every one of the `len` elements with an `f32`,
            // so the slice stays initialized.
            let dst = unsafe { &mut *(&mut v[..len] as *mut [f32] as *mut [MaybeUninit<f32>]) };
            sgemm::sgemm(level, r1 - r0, n, k, am, bm, dst, sgemm::Init::Zero, false);
            let start = (batch * m + r0) * n;
            then(start, len, &buf, 0);
            if let (Some(to), Buffer::F32(v)) = (keep, &*buf) {
                // SAFETY: `keep` has room for the whole output, and positions
                // `start..start + len` are this block's alone.
                unsafe { std::ptr::copy_nonoverlapping(v.as_ptr(), to.0.cast::<f32>().add(start), len) };
            }
        })
    };
    let parts = nb * per;
    if threads == 1 {
        (0..parts).for_each(part);
    } else {
        team::run(parts, &part);
    }
    match failed.into_inner().unwrap_or_else(|e| e.into_inner()) {
        Some(e) => Err(e),
        None => Ok(true),
    }
}

/// Sizes and strides of a batched product, with both operands broadcast to
/// the output's batch dims.
struct Geometry {
    /// The output shape.
    shape: Dims,
    m: usize,
    n: usize,
    k: usize,
    /// Buffer offset of each batch matrix of `a` and of `b` (row-major over
    /// the batch dims).
    offsets: Offsets<(isize, isize)>,
    /// Row and column strides of `a` (`m x k`) and `b` (`k x n`).
    a_rs: isize,
    a_cs: isize,
    b_rs: isize,
    b_cs: isize,
}

impl Geometry {
    fn new(a: &Data, b: &Data, shape: &[usize]) -> Result<Geometry> {
        let (sa, sb) = (&a.layout().shape, &b.layout().shape);
        let nd = shape.len();
        let bad = sa.len() < 2 || sb.len() < 2 || nd < 2 || sa[sa.len() - 1] != sb[sb.len() - 2];
        if bad || sa[sa.len() - 2] != shape[nd - 2] || sb[sb.len() - 1] != shape[nd - 1] {
            return Err(Error::Shape {
                op: "matmul",
                msg: format!(
                    "operands {} and {} do not give output shape {}",
                    shape_str(sa),
                    shape_str(sb),
                    shape_str(shape)
                ),
            });
        }
        // The kernels read through raw pointers at the layouts' offsets: a
        // hand-built `Data` that reaches outside its buffer is refused here
        // (one pass over the dims, next to a whole product).
        if !a.layout().fits(a.buffer().len()) || !b.layout().fits(b.buffer().len()) {
            return Err(Error::Invalid { op: "matmul", msg: "an operand's layout reaches outside its buffer".into() });
        }
        let (m, n, k) = (shape[nd - 2], shape[nd - 1], sa[sa.len() - 1]);
        let batch = &shape[..nd - 2];
        let full = |r: usize, c: usize| -> Dims { batch.iter().copied().chain([r, c]).collect() };
        let (la, lb) = (a.layout().broadcast_to(&full(m, k)), b.layout().broadcast_to(&full(k, n)));
        // An empty output has no batch matrix to locate (and its batch
        // dims may multiply to any number).
        let offsets = if m == 0 || n == 0 {
            Offsets::new()
        } else {
            batch_offsets(&la, batch)?.into_iter().zip(batch_offsets(&lb, batch)?).collect()
        };
        Ok(Geometry {
            shape: Dims::from_slice(shape),
            m,
            n,
            k,
            offsets,
            a_rs: la.strides[nd - 2],
            a_cs: la.strides[nd - 1],
            b_rs: lb.strides[nd - 2],
            b_cs: lb.strides[nd - 1],
        })
    }
}

/// Offsets of the first element of each batch matrix of `l` (whose
/// leading dims are `batch`), batch dims in row-major order. Empty when a
/// batch dim is 0.
fn batch_offsets(l: &Layout, batch: &[usize]) -> Result<Offsets<isize>> {
    let nb: usize = batch.iter().product();
    let mut out = Offsets::new();
    out.try_reserve_exact(nb)
        .map_err(|_| Error::OutOfMemory { op: "matmul", bytes: nb.saturating_mul(std::mem::size_of::<isize>()) })?;
    let mut idx: Dims = Dims::from_elem(0, batch.len());
    for _ in 0..nb {
        out.push(l.offset as isize + idx.iter().zip(&l.strides).map(|(&i, &s)| i as isize * s).sum::<isize>());
        for d in (0..batch.len()).rev() {
            idx[d] += 1;
            if idx[d] < batch[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    Ok(out)
}

/// Element types `gemm` computes natively (`f32` goes through [`sgemm`]).
trait GemmElement: Element {}
impl GemmElement for f64 {}

/// `f16` and `bf16` products (`bf16` where [`bf16_gemm`] does not take
/// it): both operands widened to `f32` (one elementwise pass each), an
/// `f32` product ([`f32_batched`], kiln's own kernels: `gemm`'s `f16` path
/// ran a 1024^3 product 1.7x slower), the result rounded back once, in
/// parallel.
fn widened<T: Element + Half>(a: &Data, b: &Data, shape: &[usize]) -> Result<HostVec<T>> {
    let f32_ = crate::primitive::Primitive::AsType(crate::DType::F32);
    let widen = |x: &Data| super::fused::run_single(&f32_, &[x], &x.layout().shape, crate::DType::F32);
    let (a32, b32) = (widen(a)?, widen(b)?);
    let out = f32_batched(&a32, &b32, &Geometry::new(&a32, &b32, shape)?, None)?;
    drop((a32, b32));
    let mut narrow = take_vec::<T>("matmul", out.len())?;
    narrow.resize(out.len(), T::zero());
    let round = |src: &[f32], dst: &mut [T]| dst.iter_mut().zip(src).for_each(|(d, &x)| *d = T::narrow(x));
    const CHUNK: usize = 1 << 15;
    if out.len() > CHUNK {
        team::chunks(&mut narrow, CHUNK, |at, dst| round(&out[at..at + dst.len()], dst));
    } else {
        round(&out, &mut narrow);
    }
    Ok(narrow)
}

fn gemm_batched<T: GemmElement>(a: &Data, b: &Data, g: &Geometry) -> Result<HostVec<T>> {
    let (m, n, k) = (g.m, g.n, g.k);
    let mn = m * n;
    let mut out = take_vec("matmul", g.offsets.len() * mn)?;
    out.resize(g.offsets.len() * mn, T::zero());
    if mn == 0 || k == 0 || g.offsets.is_empty() {
        return Ok(out); // empty, or sums over nothing: zeros
    }
    let sa = a.buffer().as_slice::<T>().expect("matmul operands have the inferred dtype");
    let sb = b.buffer().as_slice::<T>().expect("matmul operands have the inferred dtype");
    // One block (rows, columns) of one batch matrix, its output from `dst`
    // (the matrix's first element), on this thread.
    let run = |dst: Shared<*mut T>, (oa, ob): (isize, isize), rows: Range<usize>, cols: Range<usize>| {
        let (a_at, b_at) = (oa + rows.start as isize * g.a_rs, ob + cols.start as isize * g.b_cs);
        // SAFETY: `dst` is the first element of an exclusively borrowed,
        // initialized `m x n` matrix written row-major (row stride n,
        // column stride 1), of which this call writes only rows `rows`,
        // columns `cols` (the blocks of `split_blocks` and the batch's
        // matrices are disjoint, and both return only after every block has
        // run, while `out` is borrowed). Every element gemm reads from `sa`
        // is at `oa + i*a_rs + p*a_cs` for i in `rows`, p < k, and from `sb`
        // at `ob + p*b_rs + j*b_cs` for p < k, j in `cols`: these are the
        // positions of elements of the operands' layouts (broadcast to the
        // batch), which address elements inside their buffers, so all reads
        // are in bounds (strides may be negative or 0; gemm only reads
        // through them). Both slices outlive the call, and T is f64 or f16,
        // types gemm supports. alpha = 0 with read_dst = false means dst is
        // only written: dst = a @ b.
        unsafe {
            gemm::gemm(
                rows.len(),
                cols.len(),
                k,
                dst.get().add(rows.start * n + cols.start),
                1,
                n as isize,
                false,
                sa.as_ptr().wrapping_offset(a_at),
                g.a_cs,
                g.a_rs,
                sb.as_ptr().wrapping_offset(b_at),
                g.b_cs,
                g.b_rs,
                T::zero(),
                T::one(),
                false,
                false,
                false,
                Parallelism::None,
            )
        }
    };
    let work = mn * k;
    if work >= PAR_WORK {
        for (dst, &o) in out.chunks_mut(mn).zip(&g.offsets) {
            let dst = Shared(dst.as_mut_ptr());
            split_blocks(m, n, team::threads(), |rows, cols| run(dst, o, rows, cols));
        }
    } else if uses_threads(g.offsets.len(), m, n, k) {
        team::chunks(&mut out, mn, |at, dst| run(Shared(dst.as_mut_ptr()), g.offsets[at / mn], 0..m, 0..n));
    } else {
        for (dst, &o) in out.chunks_mut(mn).zip(&g.offsets) {
            run(Shared(dst.as_mut_ptr()), o, 0..m, 0..n);
        }
    }
    Ok(out)
}

/// Raw pointers (an output matrix's first element, a kernel's operands)
/// handed to the team's threads.
#[derive(Clone, Copy)]
pub(crate) struct Shared<T>(pub(crate) T);

impl<T: Copy> Shared<T> {
    /// The pointers (a method, so closures capture the whole `Shared`).
    pub(crate) fn get(&self) -> T {
        self.0
    }
}

// SAFETY: used only inside `split_blocks`, `team::run` and `team::chunks`,
// which return before the borrows the pointers come from end; the parts
// read the operands and each writes its own block of the output (see
// `gemm_batched` and `sgemm`).
unsafe impl<T> Sync for Shared<T> {}

/// `f32` products through [`sgemm`]; with `bias`, each output matrix
/// starts as the bias broadcast to it (read by the product's kernel).
fn f32_batched(a: &Data, b: &Data, g: &Geometry, bias: Option<&Data>) -> Result<HostVec<f32>> {
    let (m, n, k) = (g.m, g.n, g.k);
    let mn = m * n;
    let nb = g.offsets.len();
    if mn == 0 || nb == 0 {
        return Ok(HostVec::new());
    }
    let sa = a.buffer().as_slice::<f32>().expect("matmul operands have the inferred dtype");
    let sb = b.buffer().as_slice::<f32>().expect("matmul operands have the inferred dtype");
    let nd = g.shape.len();
    let bias = match bias {
        Some(d) => {
            let l = d.layout().broadcast_to(&g.shape);
            let data = d.buffer().as_slice::<f32>().expect("matmul_bias checked the dtype");
            Some((data, batch_offsets(&l, &g.shape[..nd - 2])?, l.strides[nd - 2], l.strides[nd - 1]))
        }
        None => None,
    };
    let level = sgemm::level();
    let run = |dst: &mut [MaybeUninit<f32>], batch: usize, threads: bool| {
        let (oa, ob) = g.offsets[batch];
        // The operands' layouts broadcast to the batch address elements of
        // their buffers for every i < m, p < k, j < n (Mat's contract), and
        // so does the bias's, broadcast to the output.
        let am = sgemm::Mat { data: sa, off: oa, rs: g.a_rs, cs: g.a_cs };
        let bm = sgemm::Mat { data: sb, off: ob, rs: g.b_rs, cs: g.b_cs };
        let init = match &bias {
            Some((data, offs, rs, cs)) => sgemm::Init::From(sgemm::Mat { data, off: offs[batch], rs: *rs, cs: *cs }),
            None => sgemm::Init::Zero,
        };
        sgemm::sgemm(level, m, n, k, am, bm, dst, init, threads);
    };
    // Left uninitialized: the kernels write every element, each on the
    // thread that computes it.
    let mut out = take_vec("matmul", nb * mn)?;
    let spare = &mut out.spare_capacity_mut()[..nb * mn];
    if mn * k < PAR_WORK && uses_threads(nb, m, n, k) {
        team::chunks(spare, mn, |at, dst| run(dst, at / mn, false));
    } else {
        // Each product splits over threads itself when it is large enough.
        for (i, dst) in spare.chunks_mut(mn).enumerate() {
            run(dst, i, true);
        }
    }
    // SAFETY: `sgemm` wrote every element of each of the nb chunks of mn.
    unsafe { out.set_len(nb * mn) };
    Ok(out)
}

/// `bf16` products on `kernel` ([`bf16_gemm`]): each output matrix
/// rounded once from `f32` sums, as the widening path does.
fn bf16_kernel_batched(a: &Data, b: &Data, g: &Geometry, kernel: bf16_gemm::Kernel) -> Result<HostVec<bf16>> {
    let (m, n, k) = (g.m, g.n, g.k);
    let (mn, nb) = (m * n, g.offsets.len());
    let sa = a.buffer().as_slice::<bf16>().expect("matmul operands have the inferred dtype");
    let sb = b.buffer().as_slice::<bf16>().expect("matmul operands have the inferred dtype");
    let run = |dst: &mut [MaybeUninit<bf16>], batch: usize, threads: bool| {
        let (oa, ob) = g.offsets[batch];
        // The operands' layouts broadcast to the batch address elements of
        // their buffers for every i < m, p < k, j < n (Mat's contract).
        let am = sgemm::Mat { data: sa, off: oa, rs: g.a_rs, cs: g.a_cs };
        let bm = sgemm::Mat { data: sb, off: ob, rs: g.b_rs, cs: g.b_cs };
        bf16_gemm::product([m, n, k], am, bm, dst, threads, kernel)
    };
    let mut out = take_vec("matmul", nb * mn)?;
    let spare = &mut out.spare_capacity_mut()[..nb * mn];
    if mn * k < PAR_WORK && uses_threads(nb, m, n, k) {
        let first_error = std::sync::Mutex::new(None);
        team::chunks(spare, mn, |at, dst| {
            if let Err(e) = run(dst, at / mn, false) {
                first_error.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(e);
            }
        });
        if let Some(e) = first_error.into_inner().unwrap_or_else(|p| p.into_inner()) {
            return Err(e);
        }
    } else {
        for (i, dst) in spare.chunks_mut(mn).enumerate() {
            run(dst, i, true)?;
        }
    }
    // SAFETY: `bf16_gemm::product` wrote every element of each of the nb
    // chunks of mn (an error returned above before this point).
    unsafe { out.set_len(nb * mn) };
    Ok(out)
}

/// Exact integer product with wrapping arithmetic, in i-k-j order so the
/// inner loop streams a row of `b` into a row of the output.
fn int_batched<I: IntMath>(a: &Data, b: &Data, g: &Geometry) -> Result<HostVec<I>> {
    let (m, n, k) = (g.m, g.n, g.k);
    let mut out = take_vec("matmul", g.offsets.len() * m * n)?;
    out.resize(g.offsets.len() * m * n, I::zero());
    if out.is_empty() || k == 0 {
        return Ok(out);
    }
    let sa = a.buffer().as_slice::<I>().expect("matmul operands have the inferred dtype");
    let sb = b.buffer().as_slice::<I>().expect("matmul operands have the inferred dtype");
    // One output row: row `r` of batch matrix `bi`.
    let row = |(idx, dst): (usize, &mut [I])| {
        let (bi, i) = (idx / m, idx % m);
        let (oa, ob) = g.offsets[bi];
        let arow = oa + i as isize * g.a_rs;
        for p in 0..k {
            let x = sa[(arow + p as isize * g.a_cs) as usize];
            let brow = ob + p as isize * g.b_rs;
            if g.b_cs == 1 {
                let src = &sb[brow as usize..brow as usize + n];
                for (d, &y) in dst.iter_mut().zip(src) {
                    *d = d.add_(x.mul_(y));
                }
            } else {
                for (j, d) in dst.iter_mut().enumerate() {
                    let y = sb[(brow + j as isize * g.b_cs) as usize];
                    *d = d.add_(x.mul_(y));
                }
            }
        }
    };
    if uses_threads(g.offsets.len(), m, n, k) {
        team::chunks(&mut out, n, |at, dst| row((at / n, dst)));
    } else {
        out.chunks_mut(n).enumerate().for_each(row);
    }
    Ok(out)
}
