//! `bf16` matrix products on `bf16` instructions, where the CPU has them:
//! AMX tiles (Intel's Advanced Matrix Extensions, from Sapphire Rapids
//! on), else AVX512-BF16 dot products (AMD from Zen 4 on, Intel from
//! Cooper Lake on) where a product measured once runs faster so than in
//! `f32` ([`default_kernel`]); elsewhere `bf16` products are widened to
//! `f32` (see the parent module). Both kernels ([`Kernel`]) take the same
//! packed operands and blocks; only the innermost block differs.
//!
//! A tile is a register of 16 rows of 64 bytes. `tdpbf16ps` adds the
//! product of a 16 x 32 `bf16` tile of `a` and a 32 x 16 tile of `b`
//! (stored as 16 rows of column pairs) to a 16 x 16 `f32` tile of `c`:
//! 16,384 flops in one instruction. `vdpbf16ps` adds to each of 16 `f32`
//! lanes the products of a pair of `bf16` (two consecutive elements of a
//! row of `a`, broadcast) and the lane's pair (one column of `b`, two
//! consecutive rows): a row of a tile of `b`, as AMX stores it, is one
//! vector. On a Zen 5 EPYC (2 threads) a 1024^3 product ran 2.0x faster
//! so than widened to `f32` products. Each product
//!
//! 1. packs `a` into panels of 16 rows, each a run of tiles of 16 x 32
//!    elements stored contiguously (1 KiB, loaded with a 64-byte stride, so
//!    that the rows of a tile do not share cache sets as the rows of a
//!    large row-major `a` would), and `b` into panels of 16 columns whose
//!    rows hold pairs of consecutive rows of `b`. Both are zero-padded to
//!    whole tiles (`k` to 32, rows and columns to 16): the padding adds
//!    `0 * 0` and cannot make a NaN. Every packed buffer starts on a 64-byte
//!    boundary: a tile row that straddles two cache lines loads about six
//!    times slower (measured on a Sapphire Rapids VM);
//! 2. computes `c` in blocks of 32 x 32: on AMX four accumulator tiles, two
//!    tiles of `a`, two of `b` (all eight tile registers), each tile load
//!    placed just before the first instruction that reads it (tile
//!    registers are not renamed, so a load waits for the last reader of its
//!    register); with dot products, 8 rows at a time in 16 vector
//!    accumulators;
//! 3. rounds the sums to `bf16` once, as the widening path does.
//!
//! Cache blocking: `a` is packed once, its panels shared out over the
//! team's threads; then `c` is split over the team in a grid of blocks
//! of pairs of panels (near-square blocks, which read the least of the
//! operands). Each thread packs its columns of `b` a group at
//! a time (about 1 MiB, for the L2 cache) just before it uses them, and
//! passes every row pair of `a` over the group in runs of 8 tiles of `k`
//! (16 KiB of `a`, for the L1 cache), keeping the row pair's sums in a
//! strip of `f32` between runs.
//! Packed buffers are kept by each thread between products.
//!
//! Numerics: a product of two `bf16` values is exact in `f32`, and sums are
//! `f32`, as in the widening path, but in the hardware's order; Intel
//! documents that both instructions read subnormal inputs as zero and
//! flush subnormal results to zero, so results differ from the widened
//! product's only by the order of the sums and where values fall below
//! `f32`'s normal range.
//!
//! Linux leaves the tile registers off until a process asks for them
//! (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`): [`kernels`]
//! asks once, on x86-64 CPUs with AMX-TILE and AMX-BF16 whose vector level
//! is AVX-512 (so `KILN_SIMD=avx2` or `scalar` turns these kernels off
//! too), and AMX is used only when the kernel grants it.

use std::cell::Cell;
use std::mem::MaybeUninit;
use std::ops::Range;
use std::sync::OnceLock;

use half::bf16;

use super::sgemm::Mat;
use super::Shared;
use crate::backend::cpu::half_conv::Half;
use crate::backend::cpu::team;
use crate::error::{Error, Result};

/// Elements of `k` in one tile of `a` (64 bytes of `bf16`).
const KT: usize = 32;
/// Rows of a tile; also the columns of an accumulator tile.
const T: usize = 16;
/// Multiply-adds from which a product runs on AMX (smaller ones are
/// widened: packing would cost more than the tiles save).
const MIN_WORK: usize = 1 << 12;
/// Multiply-adds per part of a product split over the team's threads (one
/// part per this many, at most one per thread).
const TEAM_WORK: usize = 1 << 20;
/// Bytes of packed `b` computed against each row pair of `a` in turn (see
/// `compute`): about half a 2 MiB L2 cache.
const B_BLOCK: usize = 1 << 20;
/// Tiles of `k` (32 each) per run of the row pair of `a` over a group of
/// columns (see `compute`): 16 KiB of `a`.
const KC_TILES: usize = 8;

/// The instructions that compute a packed block of a `bf16` product.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    /// AMX tiles (`tdpbf16ps`).
    Tiles,
    /// AVX512-BF16 dot products on vectors (`vdpbf16ps`).
    Dot,
}

/// The kernels this process can run, the fastest first (detected once;
/// see the module docs): empty where `bf16` products are widened.
pub fn kernels() -> &'static [Kernel] {
    static K: OnceLock<Vec<Kernel>> = OnceLock::new();
    K.get_or_init(detect)
}

/// The kernel `bf16` products run on unless a thread chooses otherwise
/// ([`with_kernel`], [`without`]): AMX tiles where the kernel granted
/// them; else dot products where they beat `f32` FMAs on this CPU,
/// measured once: a `64 x 256 x 256` product each way on one thread, best
/// of 5 (the widening passes a widened product also pays not counted;
/// 0.65-0.69 ms on a Zen 5 EPYC, 2.1-2.4 ms where it is the process's
/// first product); else none (products are widened).
pub fn default_kernel() -> Option<Kernel> {
    static K: OnceLock<Option<Kernel>> = OnceLock::new();
    *K.get_or_init(|| {
        let k = kernels();
        if k.contains(&Kernel::Tiles) {
            Some(Kernel::Tiles)
        } else if k.contains(&Kernel::Dot) && dot_pays() {
            Some(Kernel::Dot)
        } else {
            None
        }
    })
}

/// Whether `bf16` products run on a kernel of this module by default.
pub fn available() -> bool {
    default_kernel().is_some()
}

/// Whether a `bf16` product runs faster on dot products than in `f32` on
/// this CPU (see [`default_kernel`]). The rate of `vdpbf16ps` depends on
/// the core: on a Zen 5 EPYC dot products ran a 1024^3 product 2.0x
/// faster than widened, on a Sapphire Rapids host (which has AMX) 1.9x
/// slower, 79-82 GFLOP/s a core against about 150.
fn dot_pays() -> bool {
    use std::time::{Duration, Instant};
    const M: usize = 64;
    const K: usize = 256;
    const N: usize = 256;
    let value = |i: usize| ((i * 7 % 13) as f32 - 6.0) / 8.0;
    let (a32, b32): (Vec<f32>, Vec<f32>) = ((0..M * K).map(value).collect(), (0..K * N).map(value).collect());
    let (a, b): (Vec<bf16>, Vec<bf16>) =
        (a32.iter().map(|&x| bf16::from_f32(x)).collect(), b32.iter().map(|&x| bf16::from_f32(x)).collect());
    let best = |f: &mut dyn FnMut() -> bool| {
        let mut best = Duration::MAX;
        for _ in 0..5 {
            let t = Instant::now();
            if !f() {
                return Duration::MAX;
            }
            best = best.min(t.elapsed());
        }
        best
    };
    let mut c16 = vec![MaybeUninit::<bf16>::uninit(); M * N];
    let dot = best(&mut || {
        let (am, bm) =
            (Mat { data: &a, off: 0, rs: K as isize, cs: 1 }, Mat { data: &b, off: 0, rs: N as isize, cs: 1 });
        product([M, N, K], am, bm, &mut c16, false, Kernel::Dot).is_ok()
    });
    let mut c32 = vec![MaybeUninit::<f32>::uninit(); M * N];
    let widened = best(&mut || {
        let (am, bm) =
            (Mat { data: &a32, off: 0, rs: K as isize, cs: 1 }, Mat { data: &b32, off: 0, rs: N as isize, cs: 1 });
        super::sgemm::sgemm(super::sgemm::level(), M, N, K, am, bm, &mut c32, super::sgemm::Init::Zero, false);
        true
    });
    dot < widened
}

#[cfg(target_arch = "x86_64")]
fn detect() -> Vec<Kernel> {
    use crate::backend::simd_math::{detected_level, Level};
    if detected_level() != Level::Avx512 {
        return Vec::new();
    }
    let mut found = Vec::new();
    if amx_granted() {
        found.push(Kernel::Tiles);
    }
    if std::arch::is_x86_feature_detected!("avx512bf16") {
        found.push(Kernel::Dot);
    }
    found
}

#[cfg(not(target_arch = "x86_64"))]
fn detect() -> Vec<Kernel> {
    Vec::new()
}

/// Whether the CPU has AMX-TILE and AMX-BF16 and the kernel granted this
/// process the tile state (asked here).
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn amx_granted() -> bool {
    // Leaf 7 exists on every CPU with AVX-512. EDX bit 24: AMX-TILE, bit 22:
    // AMX-BF16.
    // (`cpuid` is safe to call on x86-64; older toolchains mark it unsafe.)
    #[allow(unused_unsafe)]
    // SAFETY: `cpuid` only reads identification registers.
    let edx = unsafe { std::arch::x86_64::__cpuid_count(7, 0) }.edx;
    if edx >> 24 & 1 == 0 || edx >> 22 & 1 == 0 {
        return false;
    }
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: this request only asks the kernel to enable the tile state for
    // the process; it reads and writes no memory of ours. A kernel without
    // AMX support refuses it (non-zero), and then AMX is not used.
    unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0 }
}

/// AMX needs the operating system's grant, asked for on Linux only.
#[cfg(all(target_arch = "x86_64", not(target_os = "linux")))]
fn amx_granted() -> bool {
    false
}

thread_local! {
    /// `Some(None)`: products widened; `Some(Some(k))`: kernel `k`.
    static CHOICE: Cell<Option<Option<Kernel>>> = const { Cell::new(None) };
}

/// Runs `f` with the `bf16` products started on this thread widened to
/// `f32` instead of run on a kernel of this module (for tests comparing
/// the two paths).
pub fn without<R>(f: impl FnOnce() -> R) -> R {
    with_choice(None, f)
}

/// Runs `f` with the `bf16` products started on this thread run on
/// `kernel`, which must be one of [`kernels`] (for tests of each kernel on
/// a CPU that has several, and for measurements).
///
/// # Panics
/// If this process cannot run `kernel`.
pub fn with_kernel<R>(kernel: Kernel, f: impl FnOnce() -> R) -> R {
    assert!(kernels().contains(&kernel), "bf16_gemm: {kernel:?} is not available here");
    with_choice(Some(kernel), f)
}

fn with_choice<R>(choice: Option<Kernel>, f: impl FnOnce() -> R) -> R {
    let old = CHOICE.with(|o| o.replace(Some(choice)));
    let r = f();
    CHOICE.with(|o| o.set(old));
    r
}

/// The kernel that products started on this thread run on, if any.
fn chosen() -> Option<Kernel> {
    CHOICE.with(Cell::get).unwrap_or_else(default_kernel)
}

/// The kernel a `bf16` product of these sizes, started on this thread,
/// runs on; `None` where it is widened. The caller passes it to
/// the product (which may run on other threads, where a choice made with
/// [`with_kernel`] or [`without`] does not hold).
pub fn kernel_for(m: usize, n: usize, k: usize) -> Option<Kernel> {
    if k > 0 && m.saturating_mul(n).saturating_mul(k) >= MIN_WORK {
        chosen()
    } else {
        None
    }
}

/// `c = a @ b` for `a: m x k`, `b: k x n` (any strides, within their
/// buffers: [`Mat`]'s contract) and `c` row-major `m x n`, every element of
/// which is written, on `kernel` (one of [`kernels`]). `threads` allows
/// splitting over the team's threads. Errors only when the packed copies
/// cannot be allocated.
pub(super) fn product(
    [m, n, k]: [usize; 3],
    a: Mat<bf16>,
    b: Mat<bf16>,
    c: &mut [MaybeUninit<bf16>],
    threads: bool,
    kernel: Kernel,
) -> Result<()> {
    assert!(kernels().contains(&kernel), "bf16_gemm::product: {kernel:?} is not available here");
    assert!(k > 0 && c.len() == m * n, "bf16_gemm::product: sizes");
    let kp = k.div_ceil(KT) * KT;
    let (mp, np) = (m.div_ceil(T), n.div_ceil(T));
    let a_len = mp * T * kp;
    let work = m.saturating_mul(n).saturating_mul(k);
    let parts = if threads { PARTS.with(Cell::get).unwrap_or_else(|| team::parts_for(work, TEAM_WORK)) } else { 1 };
    // Columns go in groups whose packed `b` (`kp * 32` bytes a panel)
    // stays in the L2 cache while every row pair of `a` passes over it;
    // each thread packs its groups of `b` just before it uses them.
    let group = ((B_BLOCK / (kp * 2 * T)).max(2) & !1).min(np.next_multiple_of(2));
    let g_words = group * T * kp / 2 + 2 * T * group * T;
    // This thread's scratch holds packed `a` (as pairs of `bf16` in `u32`s;
    // `a_len / 2` is a multiple of 256) and then one group buffer per part
    // (multiples of 256 too), from a 64-byte boundary: a tile row that
    // straddles two cache lines loads about six times slower.
    let words = a_len / 2 + parts * g_words;
    let mut scratch = Scratch::take(words + 15)?;
    let spare = scratch.0.spare_capacity_mut();
    let skip = (64 - spare.as_ptr().addr() % 64) % 64 / 4;
    let base = Shared(spare[skip..skip + words].as_mut_ptr());
    let pack = |i: usize| {
        let ra = share(mp, parts, i);
        // SAFETY: part `i` takes panels `ra` of `a` (T * kp `bf16` each) in
        // the first `a_len` halves of the `words` `u32`s from `base`
        // (alignment 2, below `u32`'s); the parts' ranges are disjoint, so
        // this slice is in bounds and no two parts share an element. `run`
        // returns only after every part has run.
        let sa = unsafe {
            std::slice::from_raw_parts_mut(
                base.get().cast::<MaybeUninit<bf16>>().add(ra.start * T * kp),
                ra.len() * T * kp,
            )
        };
        pack_a(a, [m, k, kp], ra, sa);
    };
    run(parts, &pack);
    // SAFETY: the parts' panels cover `0..mp`, and `pack_a` writes every
    // element of its panels: the first `a_len` `bf16` from `base` are
    // initialized (plain bits: any value is valid), and the scratch outlives
    // this borrow, which the group buffers after it do not overlap.
    let pa = unsafe { std::slice::from_raw_parts(base.get().cast::<bf16>(), a_len) };
    let (row_pairs, col_pairs) = (mp.div_ceil(2), np.div_ceil(2));
    let (pr, pc) = grid(parts, row_pairs, col_pairs, n >= m);
    let dst = Shared(c.as_mut_ptr());
    let block = |i: usize| {
        // Share `j` of `of` of the `pairs` pairs of `count` panels.
        let panels = |pairs: usize, count: usize, of: usize, j: usize| {
            let r = share(pairs, of, j);
            (r.start * 2).min(count)..(r.end * 2).min(count)
        };
        let (rows, cols) = (panels(row_pairs, mp, pr, i / pc), panels(col_pairs, np, pc, i % pc));
        // SAFETY: part `i < parts` owns the `i`-th group buffer of
        // `g_words` `u32`s after packed `a`, inside the `words` from
        // `base`; no other part touches it, and `run` returns before the
        // scratch is dropped.
        let buf = unsafe { std::slice::from_raw_parts_mut(base.get().add(a_len / 2 + i * g_words), g_words) };
        compute(kernel, pa, b, buf, [m, n, k, kp], group, rows, cols, dst);
    };
    run(pr * pc, &block);
    Ok(())
}

/// The parts of a product as a grid of `pr` blocks of row pairs by `pc`
/// blocks of column pairs (at most `parts` in all): the fewest pairs per
/// part, then the fewest row and column pairs a part reads, then columns
/// split before rows where `cols_first`. A part reads its rows of `a` once
/// per column pair and its columns of `b` once per row pair, so near-square
/// blocks read the least: on 16 threads a 1024^3 product split by columns
/// alone had every part read all of `a` from the shared cache twice.
fn grid(parts: usize, rows: usize, cols: usize, cols_first: bool) -> (usize, usize) {
    let (parts, rows, cols) = (parts.max(1), rows.max(1), cols.max(1));
    let mut best = (1, 1);
    let mut best_key = (usize::MAX, usize::MAX, true);
    for pr in 1..=parts.min(rows) {
        let pc = (parts / pr).min(cols);
        let (h, w) = (rows.div_ceil(pr), cols.div_ceil(pc));
        let key = (h * w, h + w, if cols_first { pr > pc } else { pc > pr });
        if key < best_key {
            (best, best_key) = ((pr, pc), key);
        }
    }
    best
}

/// The packed operands' buffer, kept by each thread between products (up
/// to [`SCRATCH_KEPT`] bytes) so that a product called again does not
/// fault in fresh pages (a 1024^3 product packs 4 MiB).
struct Scratch(Vec<u32>);

/// Bytes of packing scratch a thread keeps between products.
const SCRATCH_KEPT: usize = 64 << 20;

thread_local! {
    static SCRATCH: Cell<Vec<u32>> = const { Cell::new(Vec::new()) };
}

impl Scratch {
    /// This thread's scratch, emptied, with room for `len` `u32`s.
    fn take(len: usize) -> Result<Scratch> {
        let mut v = SCRATCH.with(Cell::take);
        v.clear();
        v.try_reserve_exact(len).map_err(|_| Error::OutOfMemory { op: "matmul", bytes: len.saturating_mul(4) })?;
        Ok(Scratch(v))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if self.0.capacity() * 4 <= SCRATCH_KEPT {
            SCRATCH.with(|s| s.set(std::mem::take(&mut self.0)));
        }
    }
}

/// Share `i` of `parts` of `0..count`.
fn share(count: usize, parts: usize, i: usize) -> Range<usize> {
    i * count / parts..(i + 1) * count / parts
}

/// `task(i)` for `i < parts`: on the team when `parts > 1`.
fn run(parts: usize, task: &(dyn Fn(usize) + Sync)) {
    if parts == 1 {
        task(0);
    } else {
        team::run(parts, task);
    }
}

/// Packs the 16-row panels `panels` of `a` (`m x k`) into `out`, laid end
/// to end, each `kp / KT` tiles of `T x KT` elements (row-major within the
/// tile); zeros past `m` and `k`.
fn pack_a(a: Mat<bf16>, [m, k, kp]: [usize; 3], panels: Range<usize>, out: &mut [MaybeUninit<bf16>]) {
    for (pi, p) in panels.enumerate() {
        let panel = &mut out[pi * T * kp..(pi + 1) * T * kp];
        for r in 0..T {
            let i = p * T + r;
            for t in 0..kp / KT {
                let dst = &mut panel[t * T * KT + r * KT..][..KT];
                let k0 = t * KT;
                if i < m && a.cs == 1 && k0 + KT <= k {
                    let at = (a.off + i as isize * a.rs) as usize + k0;
                    let src = &a.data[at..at + KT];
                    // SAFETY: `src` and `dst` are KT elements each, and a
                    // packed buffer never overlaps an operand.
                    unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst.as_mut_ptr().cast::<bf16>(), KT) };
                } else {
                    for (j, d) in dst.iter_mut().enumerate() {
                        d.write(if i < m && k0 + j < k { a.at(i, k0 + j) } else { bf16::ZERO });
                    }
                }
            }
        }
    }
}

/// Packs the 16-column panels `panels` of `b` (`k x n`) into `out`, laid
/// end to end, each `kp / 2` rows of 16 columns, each column a pair of
/// consecutive rows of `b` (the first in the low half); zeros past `k` and
/// `n`.
fn pack_b(b: Mat<bf16>, kn: [usize; 3], panels: Range<usize>, out: &mut [MaybeUninit<u32>]) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: these kernels run only where kiln detected AVX-512F (`detect`).
    unsafe {
        pack_b_avx512(b, kn, panels, out)
    }
    #[cfg(not(target_arch = "x86_64"))]
    pack_b_loops(b, kn, panels, out)
}

/// [`pack_b`] compiled for AVX-512F, whose loops then run on 16 lanes (the
/// baseline build's code, element by element, spent about a tenth of a
/// 1024^3 product on packing).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn pack_b_avx512(b: Mat<bf16>, kn: [usize; 3], panels: Range<usize>, out: &mut [MaybeUninit<u32>]) {
    pack_b_loops(b, kn, panels, out)
}

/// The loops of [`pack_b`].
#[inline(always)]
fn pack_b_loops(b: Mat<bf16>, [k, n, kp]: [usize; 3], panels: Range<usize>, out: &mut [MaybeUninit<u32>]) {
    let pair = |lo: bf16, hi: bf16| lo.to_bits() as u32 | (hi.to_bits() as u32) << 16;
    let get = |kk: usize, j: usize| if kk < k && j < n { b.at(kk, j) } else { bf16::ZERO };
    let rows = kp / 2;
    if b.rs == 1 && b.cs != 1 {
        // Columns of `b` are contiguous (a transposed row-major matrix):
        // read each column once.
        for (pi, p) in panels.enumerate() {
            let panel = &mut out[pi * T * rows..(pi + 1) * T * rows];
            for c in 0..T {
                let j = p * T + c;
                for r in 0..rows {
                    panel[r * T + c].write(pair(get(2 * r, j), get(2 * r + 1, j)));
                }
            }
        }
        return;
    }
    let first = panels.start;
    for r in 0..rows {
        let (k0, k1) = (2 * r, 2 * r + 1);
        for p in panels.clone() {
            let dst = &mut out[((p - first) * rows + r) * T..][..T];
            let j0 = p * T;
            if b.cs == 1 && k1 < k && j0 + T <= n {
                let (at0, at1) =
                    ((b.off + k0 as isize * b.rs) as usize + j0, (b.off + k1 as isize * b.rs) as usize + j0);
                let (x, y) = (&b.data[at0..at0 + T], &b.data[at1..at1 + T]);
                let words: [u32; T] = std::array::from_fn(|c| pair(x[c], y[c]));
                // SAFETY: `dst` is T elements, and a packed buffer never
                // overlaps an operand.
                unsafe { std::ptr::copy_nonoverlapping(words.as_ptr(), dst.as_mut_ptr().cast::<u32>(), T) };
            } else {
                for (c, d) in dst.iter_mut().enumerate() {
                    d.write(pair(get(k0, j0 + c), get(k1, j0 + c)));
                }
            }
        }
    }
}

/// The block of `c` (row-major `m x n` from `c`) covered by the 16-row
/// panels `rows` of packed `a` and the 16-column panels `cols` of `b`,
/// rounded to `bf16`, `b` packed `group` panels at a time into `buf`.
/// Blocks of distinct calls must not overlap.
#[allow(clippy::too_many_arguments)]
fn compute(
    kernel: Kernel,
    pa: &[bf16],
    b: Mat<bf16>,
    buf: &mut [MaybeUninit<u32>],
    [m, n, k, kp]: [usize; 4],
    group: usize,
    rows: Range<usize>,
    cols: Range<usize>,
    c: Shared<*mut MaybeUninit<bf16>>,
) {
    let steps = kp / KT;
    let panel = T * kp / 2;
    let width = group * T;
    let ldc = width * std::mem::size_of::<f32>();
    let (packed, strip) = buf.split_at_mut(group * panel);
    // The sums of a row pair of `c` over a group: 32 rows of `width` `f32`.
    let strip_len = 2 * T * width;
    // SAFETY: the part's buffer holds `2 * T * width` `u32`s after the
    // group's packed `b` (see `product`), which this function alone uses;
    // zeros are a valid `f32`, so the slice is initialized here.
    let strip = unsafe {
        let s = std::slice::from_raw_parts_mut(strip.as_mut_ptr().cast::<f32>(), strip_len);
        s.fill(0.0);
        s
    };
    if kernel == Kernel::Tiles {
        tiles::configure();
    }
    for g in cols.clone().step_by(group) {
        let g_end = (g + group).min(cols.end);
        let packed = &mut packed[..(g_end - g) * panel];
        pack_b(b, [k, n, kp], g..g_end, packed);
        // SAFETY: `pack_b` wrote every element of `packed`.
        let pb = unsafe { std::slice::from_raw_parts(packed.as_ptr().cast::<u32>(), packed.len()) };
        let j_range = g * T..(g_end * T).min(n);
        for p in rows.clone().step_by(2) {
            let two_rows = p + 1 < rows.end;
            let a_panel = &pa[p * T * kp..(p + 1 + two_rows as usize) * T * kp];
            // `k` in runs of `KC_TILES` tiles, so that the run of the row
            // pair of `a` stays in the L1 cache while the group's columns
            // pass; the sums go to `strip` and back between runs.
            for first in (0..steps).step_by(KC_TILES) {
                let run = KC_TILES.min(steps - first);
                for q in (g..g_end).step_by(2) {
                    let two_cols = q + 1 < g_end;
                    let b_panel = &pb[(q - g) * panel..(q - g + 1 + two_cols as usize) * panel];
                    let sums = &mut strip[(q - g) * T..];
                    let blk = Block {
                        a: a_panel,
                        b: b_panel,
                        geometry: [kp, first, run, ldc],
                        two_rows,
                        two_cols,
                        accumulate: first > 0,
                        c: sums,
                    };
                    if kernel == Kernel::Tiles {
                        tiles::block(blk);
                    } else {
                        dot::block(blk);
                    }
                }
            }
            for i in p * T..((p + 1 + two_rows as usize) * T).min(m) {
                let src = &strip[(i - p * T) * width..][..j_range.len()];
                // SAFETY: row `i < m`, columns `j_range` (ending at most at
                // `n`) of the `m x n` output: inside `c`, and inside this
                // call's block, which no other call writes (the caller's
                // contract); `product` returns only after every block has
                // been written.
                let dst = unsafe { std::slice::from_raw_parts_mut(c.get().add(i * n + j_range.start), j_range.len()) };
                narrow(src, dst);
            }
        }
    }
    if kernel == Kernel::Tiles {
        tiles::release();
    }
}

/// `src` rounded to `bf16` into `dst` (as [`Half::narrow`] rounds), on
/// 16 lanes: the baseline build's 4-lane loop took about a sixth of a
/// 1024^3 product's time.
fn narrow(src: &[f32], dst: &mut [MaybeUninit<bf16>]) {
    #[inline(always)]
    fn loops(src: &[f32], dst: &mut [MaybeUninit<bf16>]) {
        for (d, &x) in dst.iter_mut().zip(src) {
            d.write(bf16::narrow(x));
        }
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    fn avx512(src: &[f32], dst: &mut [MaybeUninit<bf16>]) {
        loops(src, dst)
    }
    #[cfg(target_arch = "x86_64")]
    // SAFETY: these kernels run only where kiln detected AVX-512F (`detect`).
    unsafe {
        avx512(src, dst)
    }
    #[cfg(not(target_arch = "x86_64"))]
    loops(src, dst)
}

/// One block of a product for a kernel: the products of one or two packed
/// panels of `a` (`T * kp` elements each, end to end in `a`) and of `b`
/// (`T * kp / 2` pairs each, in `b`) over tiles `first..first + steps`
/// of `k`: 16 or 32 rows (`two_rows`) by 16 or 32 columns (`two_cols`) of
/// `f32` sums in `c` (rows of `ldc` bytes), which the kernel starts from
/// when `accumulate` (else from zero) and stores back.
struct Block<'s> {
    a: &'s [bf16],
    b: &'s [u32],
    /// `[kp, first, steps, ldc]`.
    geometry: [usize; 4],
    two_rows: bool,
    two_cols: bool,
    accumulate: bool,
    c: &'s mut [f32],
}

impl Block<'_> {
    /// Checks that the slices hold the whole block; returns its panels of
    /// rows and of columns (1 or 2 each).
    ///
    /// # Panics
    /// If a slice is too short for the block.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    fn check(&self) -> (usize, usize) {
        let [kp, first, steps, ldc] = self.geometry;
        let (nr, nc) = (1 + self.two_rows as usize, 1 + self.two_cols as usize);
        assert!(kp % KT == 0 && first + steps <= kp / KT, "bf16_gemm: tiles of k");
        assert!(self.a.len() >= nr * T * kp && self.b.len() >= nc * T * kp / 2, "bf16_gemm: packed panels");
        let c_len = (nr * T - 1) * ldc / 4 + nc * T;
        assert!(ldc % 4 == 0 && ldc / 4 >= nc * T && self.c.len() >= c_len, "bf16_gemm: c block");
        (nr, nc)
    }
}

/// The tile instructions, in inline assembly (Rust has no stable AMX
/// intrinsics).
#[cfg(target_arch = "x86_64")]
mod tiles {
    use std::arch::asm;

    use super::{KT, T};

    /// The tile configuration (palette 1): eight tiles of 16 rows of 64
    /// bytes.
    #[repr(C, align(64))]
    struct Config {
        palette: u8,
        start_row: u8,
        reserved: [u8; 14],
        colsb: [u16; 16],
        rows: [u8; 16],
    }

    const CONFIG: Config = Config {
        palette: 1,
        start_row: 0,
        reserved: [0; 14],
        colsb: [64, 64, 64, 64, 64, 64, 64, 64, 0, 0, 0, 0, 0, 0, 0, 0],
        rows: [16, 16, 16, 16, 16, 16, 16, 16, 0, 0, 0, 0, 0, 0, 0, 0],
    };

    /// Loads [`CONFIG`] on this thread.
    pub(super) fn configure() {
        // SAFETY: reached only when `detect` found AMX (`Kernel::Tiles`) and
        // the kernel enabled it; `ldtilecfg` reads the 64 bytes of CONFIG
        // (palette 1, eight tiles within the palette's limits of 16 rows
        // and 64 bytes).
        unsafe { asm!("ldtilecfg [{0}]", in(reg) &CONFIG, options(nostack, readonly)) };
    }

    /// Returns the tile registers to their initial state (so that the
    /// operating system does not save them at each switch).
    pub(super) fn release() {
        // SAFETY: AMX is enabled (see `configure`); `tilerelease` touches no
        // memory.
        unsafe { asm!("tilerelease", options(nostack, nomem)) };
    }

    /// One [`Block`](super::Block) on AMX tiles.
    ///
    /// # Panics
    /// If a slice is too short for the block.
    pub(super) fn block(blk: super::Block) {
        blk.check();
        let super::Block { a, b, geometry: [kp, first, steps, ldc], two_rows, two_cols, accumulate, c } = blk;
        // SAFETY: AMX is enabled and configured on this thread (`configure`
        // ran in `compute` before any block). Tile `t` of an `a` panel is
        // the KiB at `t * T * KT` elements from the panel's start, and of a
        // `b` panel the KiB at `t * T * KT / 2` u32s: with `t < kp / KT` and
        // the checks of `Block::check`, every 16 x 64-byte tile load lies
        // inside `a` and `b`. The loads and stores of sums touch rows of the
        // block's panels (16 or 32) of `c`, columns of its panels (16 or
        // 32), at `ldc` bytes per row: inside `c` by the same checks. Only
        // the tiles of this block are used (tmm0-3 sums, tmm4-5 `a`, tmm6-7
        // `b`), and no Rust code uses tile registers.
        unsafe {
            let (a0, b0, c0) = (a.as_ptr(), b.as_ptr(), c.as_mut_ptr());
            let (a1, b1) = (a0.add(T * kp), b0.add(T * kp / 2));
            let (c01, c10) = (c0.add(T), c0.byte_add(T * ldc));
            if accumulate {
                asm!("tileloadd tmm0, [{c} + {s}*1]", c = in(reg) c0, s = in(reg) ldc, options(nostack, readonly));
                if two_cols {
                    asm!("tileloadd tmm1, [{c} + {s}*1]", c = in(reg) c01, s = in(reg) ldc, options(nostack, readonly));
                }
                if two_rows {
                    asm!("tileloadd tmm2, [{c} + {s}*1]", c = in(reg) c10, s = in(reg) ldc, options(nostack, readonly));
                    if two_cols {
                        asm!("tileloadd tmm3, [{c} + {s}*1]", c = in(reg) c10.add(T), s = in(reg) ldc, options(nostack, readonly));
                    }
                }
            } else {
                asm!("tilezero tmm0", "tilezero tmm1", "tilezero tmm2", "tilezero tmm3", options(nostack, nomem));
            }
            for t in first..first + steps {
                let (at, bt) = (t * T * KT, t * T * KT / 2);
                asm!(
                    "tileloadd tmm4, [{a} + {s}*1]",
                    "tileloadd tmm6, [{b} + {s}*1]",
                    "tdpbf16ps tmm0, tmm4, tmm6",
                    a = in(reg) a0.add(at), b = in(reg) b0.add(bt), s = in(reg) 64usize,
                    options(nostack, readonly)
                );
                if two_cols {
                    asm!(
                        "tileloadd tmm7, [{b} + {s}*1]",
                        "tdpbf16ps tmm1, tmm4, tmm7",
                        b = in(reg) b1.add(bt), s = in(reg) 64usize,
                        options(nostack, readonly)
                    );
                }
                if two_rows {
                    asm!(
                        "tileloadd tmm5, [{a} + {s}*1]",
                        "tdpbf16ps tmm2, tmm5, tmm6",
                        a = in(reg) a1.add(at), s = in(reg) 64usize,
                        options(nostack, readonly)
                    );
                    if two_cols {
                        asm!("tdpbf16ps tmm3, tmm5, tmm7", options(nostack, nomem));
                    }
                }
            }
            asm!("tilestored [{c} + {s}*1], tmm0", c = in(reg) c0, s = in(reg) ldc, options(nostack));
            if two_cols {
                asm!("tilestored [{c} + {s}*1], tmm1", c = in(reg) c01, s = in(reg) ldc, options(nostack));
            }
            if two_rows {
                asm!("tilestored [{c} + {s}*1], tmm2", c = in(reg) c10, s = in(reg) ldc, options(nostack));
                if two_cols {
                    asm!("tilestored [{c} + {s}*1], tmm3", c = in(reg) c10.add(T), s = in(reg) ldc, options(nostack));
                }
            }
        }
    }
}

/// The AVX512-BF16 kernel ([`Kernel::Dot`]).
#[cfg(target_arch = "x86_64")]
mod dot {
    use std::arch::x86_64::*;

    use super::{KT, T};

    /// One [`Block`](super::Block) with `vdpbf16ps` on vectors: 8 rows at
    /// a time, each row's 16 or 32 columns in one or two accumulators.
    ///
    /// # Panics
    /// If a slice is too short for the block.
    pub(super) fn block(blk: super::Block) {
        let (nr, _) = blk.check();
        let super::Block { a, b, geometry: [kp, first, steps, ldc], two_cols, accumulate, c, .. } = blk;
        let (a, c) = (a.as_ptr().cast::<u32>(), c.as_mut_ptr());
        for r0 in (0..nr * T).step_by(8) {
            // SAFETY: `Kernel::Dot` is chosen only where `detect` found
            // AVX512-BF16 (and AVX-512F). Rows `r0..r0 + 8` lie in one
            // packed panel of `a`; the reads and writes of `rows` are
            // inside `a`, `b` and `c` by `Block::check` (see `rows`).
            unsafe {
                if two_cols {
                    rows::<2>(a, b.as_ptr(), [kp, first, steps, ldc / 4], r0, accumulate, c);
                } else {
                    rows::<1>(a, b.as_ptr(), [kp, first, steps, ldc / 4], r0, accumulate, c);
                }
            }
        }
    }

    /// Rows `r0..r0 + 8` of the block, `NC` panels of 16 columns, over
    /// tiles `first..first + steps` of `k`: the sums start from `c` (rows
    /// of `ldc` floats) when `accumulate`, else from zero, and are stored
    /// back to `c`.
    ///
    /// # Safety
    /// The CPU has AVX-512F and AVX512-BF16. `a` points to the packed
    /// panel(s) of `a` as `u32` pairs (`T * kp / 2` a panel), `b` to `NC`
    /// packed panels of `b` (`T * kp / 2` each), `c` to at least `(r0 + 7)
    /// * ldc + NC * T` floats; `r0` is a multiple of 8, `kp` of [`KT`],
    /// `first + steps <= kp / KT`, and the panel of row `r0` exists.
    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn rows<const NC: usize>(
        a: *const u32,
        b: *const u32,
        [kp, first, steps, ldc]: [usize; 4],
        r0: usize,
        accumulate: bool,
        c: *mut f32,
    ) {
        let panel = T * kp / 2;
        // Row r of a tile of `a` holds its KT elements as KT / 2 pairs.
        let a_rows = a.add(r0 / T * panel + r0 % T * (KT / 2));
        let mut acc = [[_mm512_setzero_ps(); NC]; 8];
        if accumulate {
            for (r, row) in acc.iter_mut().enumerate() {
                for (j, v) in row.iter_mut().enumerate() {
                    *v = _mm512_loadu_ps(c.add((r0 + r) * ldc + j * T));
                }
            }
        }
        for t in first..first + steps {
            // Tile t: T * KT / 2 pairs of `a` (T rows of KT / 2) and of `b`
            // (KT / 2 rows of T columns).
            let (at, bt) = (a_rows.add(t * T * KT / 2), b.add(t * T * KT / 2));
            for q in 0..KT / 2 {
                let bv: [__m512bh; NC] =
                    std::array::from_fn(|j| std::mem::transmute(_mm512_loadu_si512(bt.add(j * panel + q * T).cast())));
                for (r, row) in acc.iter_mut().enumerate() {
                    let av: __m512bh =
                        std::mem::transmute(_mm512_set1_epi32(at.add(r * KT / 2 + q).read_unaligned() as i32));
                    for (v, &bj) in row.iter_mut().zip(&bv) {
                        *v = _mm512_dpbf16_ps(*v, av, bj);
                    }
                }
            }
        }
        for (r, row) in acc.iter().enumerate() {
            for (j, v) in row.iter().enumerate() {
                _mm512_storeu_ps(c.add((r0 + r) * ldc + j * T), *v);
            }
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod tiles {
    pub(super) fn configure() {
        unreachable!("bf16_gemm: no kernel off x86-64")
    }

    pub(super) fn release() {}

    pub(super) fn block(_: super::Block) {
        unreachable!("bf16_gemm: no kernel off x86-64")
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod dot {
    pub(super) fn block(_: super::Block) {
        unreachable!("bf16_gemm: no kernel off x86-64")
    }
}

thread_local! {
    /// Parts a product started on this thread splits into ([`with_parts`]).
    static PARTS: Cell<Option<usize>> = const { Cell::new(None) };
}

/// Runs `f` with products started on this thread split into `parts` parts
/// (at least 1) instead of one per thread of the team: for tests of the
/// splits a machine with more cores would make, and for measurements.
pub fn with_parts<R>(parts: usize, f: impl FnOnce() -> R) -> R {
    let old = PARTS.with(|p| p.replace(Some(parts.max(1))));
    let r = f();
    PARTS.with(|p| p.set(old));
    r
}

#[cfg(test)]
mod tests {
    use super::grid;

    #[test]
    fn parts_form_near_square_grids() {
        assert_eq!(grid(16, 32, 32, true), (4, 4));
        assert_eq!(grid(2, 32, 32, true), (1, 2));
        assert_eq!(grid(2, 32, 32, false), (2, 1));
        assert_eq!(grid(16, 1, 64, true), (1, 16));
        assert_eq!(grid(3, 32, 2, true), (3, 1));
        assert_eq!(grid(8, 64, 4, true), (8, 1));
        assert_eq!(grid(1, 5, 5, false), (1, 1));
        for parts in 1..40 {
            let (pr, pc) = grid(parts, 7, 9, parts % 2 == 0);
            assert!(pr * pc <= parts && pr <= 7 && pc <= 9, "{parts}: {pr} x {pc}");
        }
    }
}
