//! kiln's own f32 matrix product for x86-64 with AVX-512F, with the `gemm`
//! crate as the portable fallback.
//!
//! `c = c0 + a @ b` where `c` is a row-major `m x n` block and `c0` is
//! zero or a strided matrix (such as a bias broadcast over the rows; see
//! [`Init`]), which the AVX-512 kernel reads as it starts each block, so a
//! bias add costs no pass of its own. `a` and `b` may have any strides.
//!
//! The AVX-512 path takes small products (under `PAR_WORK` multiply-adds,
//! `b` at most `UNPACKED_B` elements), where packing would cost as much as
//! the product: `a` is read in place through its strides (broadcasts come
//! straight from memory), `b` in place when its columns are unit-stride
//! (else packed into zero-padded panels of [`NR`] columns). The microkernel
//! keeps an `MR x NR` block of `c` in 24 zmm registers, with masked loads
//! and stores at the right edge, and runs `k` in blocks of `KC`. From
//! [`TEAM_WORK`] multiply-adds the blocks are split over the team's threads
//! ([`crate::backend::cpu::team`]), each writing its own rows or columns. Larger
//! products go to the `gemm` crate (its AVX-512 kernels and packing), one
//! single-threaded call per block of the output on the team's threads
//! (`matmul::split_blocks`): one such thread ran a 1024^3 product at the
//! rate of torch's oneDNN on an Intel Xeon. A packed, cache-blocked path
//! for this microkernel was tried and ran 1.2x slower than `gemm`'s (see
//! `bench/README.md`).

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;
use std::cell::Cell;
use std::mem::MaybeUninit;

/// Rows of `c` per microkernel tile.
pub const MR: usize = 8;
/// zmm vectors per row of a microkernel tile.
const NV: usize = 3;
/// Columns of `c` per microkernel tile.
pub const NR: usize = 16 * NV;
/// Depth of one block of `k` (a `KC x NR` panel of `b` is 32 KiB).
const KC: usize = 256;
/// Largest `b` (in elements) read in place when its column stride is 1.
const UNPACKED_B: usize = 1 << 16;
/// Multiply-adds from which a single product splits over threads.
const PAR_WORK: usize = 1 << 22;
/// Multiply-adds from which a small product splits over the team's threads
/// (see [`crate::backend::cpu::team`]).
pub const TEAM_WORK: usize = 1 << 17;

/// Which kernel computes f32 products.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    /// kiln's AVX-512F microkernel (x86-64 only, when the CPU has it).
    Avx512,
    /// The `gemm` crate (its own runtime dispatch: AVX-512, AVX2+FMA, NEON, scalar).
    Portable,
}

thread_local! {
    static FORCED: Cell<Option<Level>> = const { Cell::new(None) };
}

/// The best level this CPU supports.
pub fn detected() -> Level {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx512f") {
        return Level::Avx512;
    }
    Level::Portable
}

/// The level f32 products started on this thread use: the forced one (see
/// [`with_level`]) or [`detected`].
pub fn level() -> Level {
    FORCED.with(|f| f.get()).unwrap_or_else(detected)
}

/// Runs `f` with f32 products started on this thread using `level` (for
/// tests comparing the kernels). A level the CPU lacks falls back to
/// [`Level::Portable`].
pub fn with_level<R>(level: Level, f: impl FnOnce() -> R) -> R {
    let level = if level == Level::Avx512 && detected() != Level::Avx512 { Level::Portable } else { level };
    let old = FORCED.with(|c| c.replace(Some(level)));
    let r = f();
    FORCED.with(|c| c.set(old));
    r
}

/// A strided `rows x cols` matrix inside a slice: element `(i, j)` is at
/// `off + i * rs + j * cs`, and every such position is in bounds.
#[derive(Clone, Copy)]
pub struct Mat<'a, T = f32> {
    /// The buffer.
    pub data: &'a [T],
    /// Position of element (0, 0).
    pub off: isize,
    /// Row stride.
    pub rs: isize,
    /// Column stride.
    pub cs: isize,
}

impl<T: Copy> Mat<'_, T> {
    /// Element `(i, j)`.
    #[inline(always)]
    pub(crate) fn at(&self, i: usize, j: usize) -> T {
        self.data[(self.off + i as isize * self.rs + j as isize * self.cs) as usize]
    }
}

/// What `c` starts from before the product is added to it.
#[derive(Clone, Copy)]
pub enum Init<'a> {
    /// Zeros.
    Zero,
    /// Element `(i, j)` of an `m x n` matrix, such as a bias broadcast over
    /// the rows (row stride 0). The AVX-512 kernel reads it as it starts
    /// each block of `c`, on the thread that computes the block, so the
    /// output is written once, by one core.
    From(Mat<'a>),
}

/// `c = c0 + a @ b` for `a: m x k`, `b: k x n`, `c: m x n` row-major
/// (`c.len() == m * n`), with `c0` given by `init`; every element of `c` is
/// written, so `c` may be uninitialized memory, and is best left untouched
/// by the caller (a block written by another core costs a transfer per
/// cache line). `threads` allows splitting over the team's threads
/// ([`crate::backend::cpu::team`]).
#[allow(clippy::too_many_arguments)]
pub fn sgemm(
    level: Level,
    m: usize,
    n: usize,
    k: usize,
    a: Mat,
    b: Mat,
    c: &mut [MaybeUninit<f32>],
    init: Init,
    threads: bool,
) {
    assert_eq!(c.len(), m * n, "sgemm: c is m x n");
    if m == 0 || n == 0 {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if own_kernel(level, m, n, k) {
        return avx512::sgemm([m, n, k], a, b, c, init, threads);
    }
    let accumulate = match init {
        Init::Zero => false,
        Init::From(c0) => {
            for (i, row) in c.chunks_exact_mut(n).enumerate() {
                if c0.cs == 1 {
                    // A contiguous row (a bias vector): a copy.
                    let start = (c0.off + i as isize * c0.rs) as usize;
                    for (x, &v) in row.iter_mut().zip(&c0.data[start..start + n]) {
                        x.write(v);
                    }
                } else {
                    for (j, x) in row.iter_mut().enumerate() {
                        x.write(c0.at(i, j));
                    }
                }
            }
            true
        }
    };
    if k == 0 {
        if !accumulate {
            c.fill(MaybeUninit::new(0.0));
        }
        return;
    }
    portable(m, n, k, a, b, c, accumulate, threads)
}

/// Whether a product of these sizes, at this thread's [`level`], reads an
/// [`Init::From`] start inside its kernel. The portable path instead fills
/// `c` first and accumulates into it, which costs more than a separate
/// pass over the output (the fill is another pass, and the kernel threads
/// then read blocks written by the caller's core).
pub fn seeds_in_kernel(m: usize, n: usize, k: usize) -> bool {
    own_kernel(level(), m, n, k)
}

/// Whether a product at `level` runs on kiln's own kernel (see [`sgemm`]).
fn own_kernel(level: Level, m: usize, n: usize, k: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    if level == Level::Avx512 && detected() == Level::Avx512 {
        return k > 0 && avx512::takes(m, n, k);
    }
    let _ = (level, m, n, k);
    false
}

/// The `gemm` crate. A product of at least [`PAR_WORK`] multiply-adds, with
/// `threads`, runs as one block of `c` per team thread
/// ([`super::split_blocks`]), each a single-threaded `gemm` call.
#[allow(clippy::too_many_arguments)]
fn portable(m: usize, n: usize, k: usize, a: Mat, b: Mat, c: &mut [MaybeUninit<f32>], accumulate: bool, threads: bool) {
    let parts = if threads && m * n * k >= PAR_WORK { crate::backend::cpu::team::threads() } else { 1 };
    let dst = super::Shared(c.as_mut_ptr().cast::<f32>());
    super::split_blocks(m, n, parts, |rows, cols| {
        let (a_at, b_at, c_at) = (rows.start as isize * a.rs, cols.start as isize * b.cs, rows.start * n + cols.start);
        // SAFETY: `c` is an exclusively borrowed `m x n` block written
        // row-major (row stride n, column stride 1), initialized when
        // `accumulate` (gemm reads it only then); this part writes rows
        // `rows`, columns `cols` of it from `c_at`, disjoint from every
        // other part's, and `split_blocks` returns only after every part
        // has finished, while `c` is still borrowed. Every element gemm reads
        // from `a` is at `a.off + i*a.rs + p*a.cs` for i in `rows`, p < k,
        // and from `b` at `b.off + p*b.rs + j*b.cs` for p < k, j in `cols`:
        // by `Mat`'s contract these are in bounds of their slices (strides
        // may be negative or 0; gemm only reads through them). Both slices
        // outlive the call. With read_dst = accumulate, alpha = 1 and beta
        // = 1, gemm computes c = c + a @ b, or c = a @ b without reading c.
        unsafe {
            gemm::gemm(
                rows.len(),
                cols.len(),
                k,
                dst.get().add(c_at),
                1,
                n as isize,
                accumulate,
                a.data.as_ptr().wrapping_offset(a.off + a_at),
                a.cs,
                a.rs,
                b.data.as_ptr().wrapping_offset(b.off + b_at),
                b.cs,
                b.rs,
                1.0f32,
                1.0f32,
                false,
                false,
                false,
                gemm::Parallelism::None,
            )
        }
    });
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::*;

    /// Packs `b` into panels of `NR` columns: panel `q` holds, for each
    /// `p < k`, columns `q*NR..q*NR+NR` of row `p` (zeros past column `n`).
    fn pack_b(k: usize, n: usize, b: Mat) -> Vec<f32> {
        let panels = n.div_ceil(NR);
        let mut out = vec![0.0f32; panels * NR * k];
        for (q, panel) in out.chunks_exact_mut(NR * k).enumerate() {
            let cols = NR.min(n - q * NR);
            for (p, row) in panel.chunks_exact_mut(NR).enumerate() {
                if b.cs == 1 {
                    let start = (b.off + p as isize * b.rs + (q * NR) as isize) as usize;
                    row[..cols].copy_from_slice(&b.data[start..start + cols]);
                } else {
                    for (j, d) in row[..cols].iter_mut().enumerate() {
                        *d = b.at(p, q * NR + j);
                    }
                }
            }
        }
        out
    }

    /// Where the microkernel reads `b`: panel `q` starts at `base + q *
    /// panel_step`, row `p` of a panel at `+ p * row_step`.
    #[derive(Clone, Copy)]
    struct BSource {
        base: *const f32,
        panel_step: usize,
        row_step: usize,
    }

    /// Whether [`sgemm`] takes this product: small ones, where `b` (read in
    /// place or packed) stays in L2 and the whole product on one thread.
    pub(super) fn takes(m: usize, n: usize, k: usize) -> bool {
        m.saturating_mul(n).saturating_mul(k) < PAR_WORK && k.saturating_mul(n) <= UNPACKED_B
    }

    /// See [`takes`]: `a` is read in place through its strides, `b` in place
    /// when its columns are unit-stride, else packed into panels.
    ///
    /// With `threads`, a product of at least [`TEAM_WORK`] multiply-adds is
    /// split over the team's threads.
    pub(super) fn sgemm([m, n, k]: [usize; 3], a: Mat, b: Mat, c: &mut [MaybeUninit<f32>], init: Init, threads: bool) {
        let packed_b;
        let src = if b.cs == 1 && b.rs >= 0 {
            BSource { base: b.data.as_ptr().wrapping_offset(b.off), panel_step: NR, row_step: b.rs as usize }
        } else {
            packed_b = pack_b(k, n, b);
            BSource { base: packed_b.as_ptr(), panel_step: NR * k, row_step: NR }
        };
        let asrc = ASource { base: a.data.as_ptr().wrapping_offset(a.off), rs: a.rs, cs: a.cs };
        let cp = c.as_mut_ptr().cast::<f32>();
        let c0 = match init {
            Init::Zero => C0Source { base: std::ptr::null(), rs: 0, cs: 1 },
            Init::From(m0) => C0Source { base: m0.data.as_ptr().wrapping_offset(m0.off), rs: m0.rs, cs: m0.cs },
        };
        // Parts split `b` in place at any vector of 16 columns; packed
        // panels only at a panel's start.
        let unit = if src.panel_step == NR { 16 } else { NR };
        let blocks = Blocks::new(m, n, k, unit, threads);
        // SAFETY (both calls below): `asrc` addresses a.off + i*a.rs + p*a.cs for i < m, p < k,
        // in bounds by Mat's contract. `src` addresses k rows of each panel
        // q < n.div_ceil(NR): packed panels have NR*k floats, and in-place
        // panels read row p at b.off + p*b.rs + q*NR + j only for
        // j < n - q*NR (masked past n), in bounds by Mat's contract. `c0`
        // is null, or `c` itself, or addresses an m x n matrix by Mat's
        // contract. `c` is the exclusively borrowed m*n output. The CPU has
        // AVX-512F (checked by the caller's dispatch).
        if blocks.parts == 1 {
            // SAFETY: as above, for the whole of `c` (row stride n).
            unsafe { panels_avx512(m, n, k, asrc, src, c0, cp, n) };
            return;
        }
        let shared = super::super::Shared((asrc, src, c0, cp));
        crate::backend::cpu::team::run(blocks.parts, &|i| {
            let (a, b, c0, c) = shared.get();
            let (r0, r1, j0, j1) = blocks.part(i);
            let (a, b, c0) = (
                ASource { base: a.base.wrapping_offset(r0 as isize * a.rs), ..a },
                BSource { base: b.base.wrapping_add(j0 / NR * b.panel_step + j0 % NR), ..b },
                c0.at(r0, j0),
            );
            // SAFETY: as above, for rows r0..r1 and columns j0..j1 of `c`
            // (row stride n): the parts are disjoint blocks of `c` (see
            // `Blocks::part`), so no two threads write one element, and
            // `team::run` returns only after every part has finished, while
            // `a`, `b` and `c` are still borrowed. A part of packed `b`
            // starts at a panel (`j0` a multiple of NR); one of `b` in place
            // at column j0 of its rows.
            unsafe { panels_avx512(r1 - r0, j1 - j0, k, a, b, c0, c.add(r0 * n + j0), n) }
        });
    }

    /// A product split into parts for the team: contiguous groups of row
    /// tiles or of columns, whichever leaves the least work to the busiest
    /// thread (rows when even: the seed's 32 rows on two threads).
    ///
    /// Rows on a tie, though each part then reads all of `b`: this kernel
    /// takes `b` of at most [`UNPACKED_B`] elements, which stays in each
    /// core's L2 from call to call when it is a layer's weights, while `a`
    /// (the batch) is new on each call, and a split by columns made every
    /// thread read all of it; whole rows also keep the full-width panels.
    /// The seed's `(32 x 128) @ (128 x 256)` with a new `x` per call on two
    /// threads ran 8-10% faster split 16 + 16 rows than 128 + 128 columns.
    /// Columns split in units of `unit` (16 columns, one vector, when `b`
    /// is read in place), so each part has the same number of vectors.
    #[derive(Clone, Copy)]
    struct Blocks {
        m: usize,
        n: usize,
        unit: usize,
        parts: usize,
        by_rows: bool,
    }

    impl Blocks {
        fn new(m: usize, n: usize, k: usize, unit: usize, threads: bool) -> Blocks {
            let threads = if threads { crate::backend::cpu::team::parts_for(m * n * k, TEAM_WORK) } else { 1 };
            let tiles = m.div_ceil(MR);
            let units = n.div_ceil(unit);
            // The busiest thread's share of rows, against its share of
            // columns (cross-multiplied).
            let most_rows = (tiles.div_ceil(threads) * MR).min(m);
            let most_cols = (units.div_ceil(threads) * unit).min(n);
            let by_rows = most_rows * n <= most_cols * m;
            let parts = threads.min(if by_rows { tiles } else { units }).max(1);
            Blocks { m, n, unit, parts, by_rows }
        }

        /// Rows `r0..r1` and columns `j0..j1` of part `i`.
        fn part(&self, i: usize) -> (usize, usize, usize, usize) {
            if self.by_rows {
                let tiles = self.m.div_ceil(MR);
                let (t0, t1) = (i * tiles / self.parts, (i + 1) * tiles / self.parts);
                ((t0 * MR).min(self.m), (t1 * MR).min(self.m), 0, self.n)
            } else {
                let units = self.n.div_ceil(self.unit);
                let (u0, u1) = (i * units / self.parts, (i + 1) * units / self.parts);
                (0, self.m, (u0 * self.unit).min(self.n), (u1 * self.unit).min(self.n))
            }
        }
    }

    /// Where a block of `c` starts from: element (i, j) at `base + i*rs +
    /// j*cs`, or zeros when `base` is null.
    #[derive(Clone, Copy)]
    struct C0Source {
        base: *const f32,
        rs: isize,
        cs: isize,
    }

    impl C0Source {
        /// The source of the block starting at row `i`, column `j`.
        fn at(self, i: usize, j: usize) -> C0Source {
            if self.base.is_null() {
                return self;
            }
            C0Source { base: self.base.wrapping_offset(i as isize * self.rs + j as isize * self.cs), ..self }
        }
    }

    /// Where the microkernel reads `a`: element (i, p) at `base + i*rs + p*cs`.
    #[derive(Clone, Copy)]
    struct ASource {
        base: *const f32,
        rs: isize,
        cs: isize,
    }

    /// All of `c`, panel by panel, `k` in blocks of `KC`.
    ///
    /// # Safety
    /// See the call in `sgemm`: `a`/`src` cover the operands, `c` is `m x n`
    /// with row stride `ldc`, and the CPU supports AVX-512F.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn panels_avx512(
        m: usize,
        n: usize,
        k: usize,
        a: ASource,
        src: BSource,
        c0: C0Source,
        c: *mut f32,
        ldc: usize,
    ) {
        let mut p0 = 0;
        while p0 < k {
            let kc = KC.min(k - p0);
            // Later blocks of `k` add to what the earlier ones left in `c`.
            let start = if p0 == 0 { c0 } else { C0Source { base: c, rs: ldc as isize, cs: 1 } };
            for q in 0..n.div_ceil(NR) {
                let cols = NR.min(n - q * NR);
                let bp = src.base.wrapping_add(q * src.panel_step + p0 * src.row_step);
                let (cp, s) = (c.add(q * NR), start.at(0, q * NR));
                // SAFETY: as this function's contract, for this panel's
                // columns (a narrower last panel computes only its vectors).
                // Only a panel whose columns end inside a vector masks its
                // loads of `b` (a masked load cost about an eighth of the
                // product's time where every vector was whole).
                let args = (m, kc, a, p0, bp, src.row_step, s, cp, ldc, cols);
                match (cols.div_ceil(16), !cols.is_multiple_of(16)) {
                    (1, false) => panel::<1, false>(args),
                    (1, true) => panel::<1, true>(args),
                    (2, false) => panel::<2, false>(args),
                    (2, true) => panel::<2, true>(args),
                    (_, false) => panel::<NV, false>(args),
                    (_, true) => panel::<NV, true>(args),
                }
            }
            p0 += kc;
        }
    }

    /// The arguments of [`panel`]: rows `m`, depth `kc`, `a` and the first
    /// step `p0` of `k`, the panel of `b` and its row step, the start of
    /// `c`, `c` and its row stride, and the panel's columns.
    type PanelArgs = (usize, usize, ASource, usize, *const f32, usize, C0Source, *mut f32, usize, usize);

    /// One panel of `cols <= 16 * V` columns of `c` (all `m` rows, tile by
    /// tile) over `kc` steps of `k` from `p0`, in `V` vectors per row;
    /// `MASKED` when `cols` ends inside a vector (loads of `b` then read
    /// only the panel's lanes).
    ///
    /// # Safety
    /// As [`panels_avx512`], for this panel: `bp` has `kc` rows `row_step`
    /// apart whose first `cols` lanes are readable, `c` and `c0` start at
    /// the panel's first column.
    #[target_feature(enable = "avx512f")]
    unsafe fn panel<const V: usize, const MASKED: bool>((m, kc, a, p0, bp, row_step, start, c, ldc, cols): PanelArgs) {
        let masks: [__mmask16; V] =
            std::array::from_fn(|v| ((1u32 << cols.saturating_sub(16 * v).min(16)) - 1) as __mmask16);
        prefetch_rows(a, 0, MR.min(m), p0, kc);
        for t in 0..m.div_ceil(MR) {
            let rows = MR.min(m - t * MR);
            let ap = a.base.wrapping_offset((t * MR) as isize * a.rs + p0 as isize * a.cs);
            prefetch_rows(a, (t + 1) * MR, MR.min(m.saturating_sub((t + 1) * MR)), p0, kc);
            let cp = c.add(t * MR * ldc);
            let s = start.at(t * MR, 0);
            // SAFETY: as this function's contract; the tile reads
            // kc rows of the panel and `rows` rows of `c`.
            match rows {
                1 => tile::<1, V, MASKED>(kc, ap, a.rs, a.cs, bp, row_step, s, cp, ldc, masks),
                2 => tile::<2, V, MASKED>(kc, ap, a.rs, a.cs, bp, row_step, s, cp, ldc, masks),
                3 => tile::<3, V, MASKED>(kc, ap, a.rs, a.cs, bp, row_step, s, cp, ldc, masks),
                4 => tile::<4, V, MASKED>(kc, ap, a.rs, a.cs, bp, row_step, s, cp, ldc, masks),
                5 => tile::<5, V, MASKED>(kc, ap, a.rs, a.cs, bp, row_step, s, cp, ldc, masks),
                6 => tile::<6, V, MASKED>(kc, ap, a.rs, a.cs, bp, row_step, s, cp, ldc, masks),
                7 => tile::<7, V, MASKED>(kc, ap, a.rs, a.cs, bp, row_step, s, cp, ldc, masks),
                _ => tile::<8, V, MASKED>(kc, ap, a.rs, a.cs, bp, row_step, s, cp, ldc, masks),
            }
        }
    }

    /// Asks the cache for rows `r0..r0 + rows` of `a`, columns `p0..p0 +
    /// kc`, when its rows are contiguous: a tile reads its rows a few bytes
    /// per step of `k`, too slowly for the hardware's prefetchers when `a`
    /// is fresh from memory (an input read once, as a batch of the seed's
    /// `x %*% w`).
    #[target_feature(enable = "avx512f")]
    fn prefetch_rows(a: ASource, r0: usize, rows: usize, p0: usize, kc: usize) {
        if a.cs != 1 {
            return;
        }
        for i in r0..r0 + rows {
            let row = a.base.wrapping_offset(i as isize * a.rs + p0 as isize);
            for j in (0..kc).step_by(16) {
                // A hint: it never faults, wherever it points.
                _mm_prefetch::<_MM_HINT_T0>(row.wrapping_add(j).cast::<i8>());
            }
        }
    }

    /// One `R x 16V` block of `c` (`R <= MR`, `V <= NV`) over `kc` steps of `k`:
    /// `c = c0 + a_tile @ b_panel`, column vector `v` masked by `masks[v]`
    /// (every lane of each vector unless `MASKED`).
    ///
    /// # Safety
    /// `ap + i*a_rs + p*a_cs` is readable for i < R, p < kc, `bp` has `kc` rows
    /// `row_step` apart of which the masked lanes are readable, `c0` is null
    /// or readable at the masked lanes of R rows, `c` has `R` rows `ldc`
    /// apart whose masked lanes are writable; AVX-512F.
    #[target_feature(enable = "avx512f")]
    #[inline]
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile<const R: usize, const V: usize, const MASKED: bool>(
        kc: usize,
        ap: *const f32,
        a_rs: isize,
        a_cs: isize,
        bp: *const f32,
        row_step: usize,
        c0: C0Source,
        c: *mut f32,
        ldc: usize,
        masks: [__mmask16; V],
    ) {
        let mut cr = [[_mm512_setzero_ps(); V]; R];
        if !c0.base.is_null() {
            for (i, row) in cr.iter_mut().enumerate() {
                let r = c0.base.wrapping_offset(i as isize * c0.rs);
                for (v, x) in row.iter_mut().enumerate() {
                    *x = if c0.cs == 1 {
                        _mm512_maskz_loadu_ps(masks[v], r.wrapping_add(16 * v))
                    } else {
                        let m = masks[v];
                        let lanes: [f32; 16] = std::array::from_fn(|l| {
                            if m >> l & 1 == 1 {
                                *r.wrapping_offset((16 * v + l) as isize * c0.cs)
                            } else {
                                0.0
                            }
                        });
                        _mm512_loadu_ps(lanes.as_ptr())
                    };
                }
            }
        }
        let (mut a, mut b) = (ap, bp);
        // Each row's offset from the current column of `a`, computed once.
        // Opaque to the optimizer, which would otherwise address row i + 1
        // from row i, a chain of R additions in every step of `k`; this way
        // each broadcast reads `a + rows[i]` (base and index registers).
        let rows: [isize; R] = std::hint::black_box(std::array::from_fn(|i| i as isize * a_rs));
        for _ in 0..kc {
            let mut bv = [_mm512_setzero_ps(); V];
            for (v, x) in bv.iter_mut().enumerate() {
                let at = b.wrapping_add(16 * v);
                *x = if MASKED { _mm512_maskz_loadu_ps(masks[v], at) } else { _mm512_loadu_ps(at) };
            }
            for (i, row) in cr.iter_mut().enumerate() {
                let x = _mm512_set1_ps(*a.wrapping_offset(rows[i]));
                for (v, y) in row.iter_mut().enumerate() {
                    *y = _mm512_fmadd_ps(x, bv[v], *y);
                }
            }
            a = a.wrapping_offset(a_cs);
            b = b.wrapping_add(row_step);
        }
        for (i, row) in cr.iter().enumerate() {
            for (v, x) in row.iter().enumerate() {
                _mm512_mask_storeu_ps(c.wrapping_add(i * ldc + 16 * v), masks[v], *x);
            }
        }
    }
}
