//! kiln's own f32 matrix product for x86-64 with AVX-512F or with AVX2
//! and FMA, with the `gemm` crate as the portable fallback.
//!
//! `c = c0 + a @ b` where `c` is a row-major `m x n` block and `c0` is
//! zero or a strided matrix (such as a bias broadcast over the rows; see
//! [`Init`]), which kiln's kernel reads as it starts each block, so a
//! bias add costs no pass of its own. `a` and `b` may have any strides.
//!
//! kiln's kernel takes small products (under `PAR_WORK` multiply-adds,
//! `b` at most `UNPACKED_B` elements), where packing would cost as much as
//! the product: `a` is read in place through its strides (broadcasts come
//! straight from memory), `b` in place when its columns are unit-stride
//! (else packed into zero-padded panels as wide as a tile). The
//! microkernel keeps a tile of `c` in registers (AVX-512: 8 rows by 48
//! columns in 24 zmm registers; AVX2: 6 rows by 16 columns in 12 ymm
//! registers), with masked loads and stores at the right edge, and runs
//! `k` in blocks of `KC`; it is written once, over the instruction set
//! (the private trait `own::Isa`). Each element of `c` is one chain of
//! fused multiply-adds in the order of `k`, whatever the operands'
//! layouts, so a product of a transposed view equals the product of its
//! copy bit for bit. From [`TEAM_WORK`] multiply-adds the blocks are split
//! over the team's threads ([`crate::backend::cpu::team`]), each writing
//! its own rows or columns. Larger products go to the `gemm` crate (its
//! AVX-512 or AVX2 kernels and packing), one single-threaded call per
//! block of the output on the team's threads (`matmul::split_blocks`): one such thread ran a 1024^3 product at the
//! rate of torch's oneDNN on an Intel Xeon. A packed, cache-blocked path
//! for this microkernel was tried and ran 1.2x slower than `gemm`'s (see
//! `bench/README.md`). Below kiln's kernel (no AVX2), every product runs
//! on `gemm`.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;
use std::cell::Cell;
use std::mem::MaybeUninit;

/// Depth of one block of `k` (a `KC x 48` panel of `b`, AVX-512's, is 48 KiB).
const KC: usize = 256;
/// Largest `b` (in elements) read in place when its column stride is 1.
const UNPACKED_B: usize = 1 << 16;
/// Multiply-adds from which a single product splits over threads.
const PAR_WORK: usize = 1 << 22;
/// Multiply-adds from which a small product splits over the team's threads
/// (see [`crate::backend::cpu::team`]).
pub const TEAM_WORK: usize = 1 << 17;

/// Which kernel computes f32 products, ordered from the most portable: a
/// CPU that runs a level runs every level below it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// The `gemm` crate (its own runtime dispatch: AVX-512, AVX2+FMA, NEON, scalar).
    Portable,
    /// kiln's microkernel in AVX2 and FMA code (x86-64 only, when the CPU
    /// has them).
    Avx2,
    /// kiln's microkernel in AVX-512F code (x86-64 only, when the CPU has it).
    Avx512,
}

thread_local! {
    static FORCED: Cell<Option<Level>> = const { Cell::new(None) };
}

/// The best level this CPU supports, capped as every kernel is by
/// `KILN_SIMD` ([`crate::backend::simd_math::detected_level`]), so that
/// the AVX2 kernel can be tested on a CPU with AVX-512.
pub fn detected() -> Level {
    use crate::backend::simd_math::{detected_level, Level as Simd};
    match detected_level() {
        Simd::Avx512 if cfg!(target_arch = "x86_64") => Level::Avx512,
        Simd::Avx2 if cfg!(target_arch = "x86_64") => Level::Avx2,
        _ => Level::Portable,
    }
}

/// Rows of `c` per tile of the kernel at `level` (blocks of rows a
/// multiple of it split into whole tiles).
pub fn tile_rows(level: Level) -> usize {
    #[cfg(target_arch = "x86_64")]
    {
        use own::Isa;
        match level.min(detected()) {
            Level::Avx512 => return own::Avx512::MR,
            Level::Avx2 => return own::Avx2::MR,
            Level::Portable => {}
        }
    }
    let _ = level;
    8
}

/// The level f32 products started on this thread use: the forced one (see
/// [`with_level`]) or [`detected`].
pub fn level() -> Level {
    FORCED.with(|f| f.get()).unwrap_or_else(detected)
}

/// Runs `f` with f32 products started on this thread using `level` (for
/// tests comparing the kernels). A level the CPU lacks falls back to the
/// best one it has below it.
pub fn with_level<R>(level: Level, f: impl FnOnce() -> R) -> R {
    let level = level.min(detected());
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
        return match level.min(detected()) {
            Level::Avx512 => own::sgemm::<own::Avx512>([m, n, k], a, b, c, init, threads),
            _ => own::sgemm::<own::Avx2>([m, n, k], a, b, c, init, threads),
        };
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
    if level.min(detected()) > Level::Portable {
        return k > 0 && own::takes(m, n, k);
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

/// kiln's microkernel, written once over the vector instruction set
/// ([`own::Isa`]): AVX-512F (8 rows by 3 vectors of 16) and AVX2 with FMA
/// (6 rows by 2 vectors of 8, the tile that fills AVX2's 16 registers:
/// 12 accumulators, 2 vectors of `b` and a broadcast of `a`).
#[cfg(target_arch = "x86_64")]
pub(super) mod own {
    use super::*;

    /// A vector instruction set the microkernel runs on: its vector and
    /// mask types, its tile of `MR` rows by `NV` vectors, and the few
    /// operations the kernel uses, each one instruction. The operations are
    /// inlined into [`Isa::panels`] and [`Isa::panel`], whose
    /// implementations enable the set's features, so the code generated
    /// for one set never uses another's instructions.
    pub(crate) trait Isa: Copy {
        /// A vector of `LANES` floats.
        type V: Copy;
        /// Which lanes of a vector a masked load or store touches.
        type M: Copy;
        /// Floats per vector (at most 16).
        const LANES: usize;
        /// Rows of `c` per tile.
        const MR: usize;
        /// Vectors per row of a tile (at most 3).
        const NV: usize;
        /// Columns of a panel of `b`.
        const NR: usize = Self::LANES * Self::NV;

        /// Zeros.
        ///
        /// # Safety
        /// The CPU has the set's features (so for every method).
        unsafe fn zero() -> Self::V;
        /// The first `lanes` lanes (`lanes <= LANES`).
        ///
        /// # Safety
        /// As [`Isa::zero`].
        unsafe fn mask(lanes: usize) -> Self::M;
        /// A vector from `p` (unaligned).
        ///
        /// # Safety
        /// `LANES` floats are readable at `p`.
        unsafe fn load(p: *const f32) -> Self::V;
        /// The lanes `m` from `p`, zeros elsewhere.
        ///
        /// # Safety
        /// The lanes `m` are readable at `p` (the others are not touched).
        unsafe fn load_masked(m: Self::M, p: *const f32) -> Self::V;
        /// `x` in every lane.
        ///
        /// # Safety
        /// As [`Isa::zero`].
        unsafe fn splat(x: f32) -> Self::V;
        /// `a * b + c`, rounded once.
        ///
        /// # Safety
        /// As [`Isa::zero`].
        unsafe fn fmadd(a: Self::V, b: Self::V, c: Self::V) -> Self::V;
        /// Stores `v` at `p`.
        ///
        /// # Safety
        /// `LANES` floats are writable at `p`.
        unsafe fn store(p: *mut f32, v: Self::V);
        /// Stores the lanes `m` of `v` at `p`.
        ///
        /// # Safety
        /// The lanes `m` are writable at `p` (the others are not touched).
        unsafe fn store_masked(p: *mut f32, m: Self::M, v: Self::V);

        /// [`panels`] for this set.
        ///
        /// # Safety
        /// As [`panels`].
        #[allow(clippy::too_many_arguments)]
        unsafe fn panels(m: usize, n: usize, k: usize, a: ASource, src: BSource, c0: C0Source, c: *mut f32, ldc: usize);
        /// [`panel`] for this set.
        ///
        /// # Safety
        /// As [`panel`].
        unsafe fn panel<const V: usize, const MASKED: bool>(args: PanelArgs);
    }

    /// AVX-512F: 8 rows by 3 vectors of 16 (24 of the 32 zmm registers).
    #[derive(Clone, Copy)]
    pub(crate) struct Avx512;

    impl Isa for Avx512 {
        type V = __m512;
        type M = __mmask16;
        const LANES: usize = 16;
        const MR: usize = 8;
        const NV: usize = 3;

        #[inline(always)]
        unsafe fn zero() -> __m512 {
            _mm512_setzero_ps()
        }
        #[inline(always)]
        unsafe fn mask(lanes: usize) -> __mmask16 {
            ((1u32 << lanes) - 1) as __mmask16
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> __m512 {
            _mm512_loadu_ps(p)
        }
        #[inline(always)]
        unsafe fn load_masked(m: __mmask16, p: *const f32) -> __m512 {
            _mm512_maskz_loadu_ps(m, p)
        }
        #[inline(always)]
        unsafe fn splat(x: f32) -> __m512 {
            _mm512_set1_ps(x)
        }
        #[inline(always)]
        unsafe fn fmadd(a: __m512, b: __m512, c: __m512) -> __m512 {
            _mm512_fmadd_ps(a, b, c)
        }
        #[inline(always)]
        unsafe fn store(p: *mut f32, v: __m512) {
            _mm512_storeu_ps(p, v)
        }
        #[inline(always)]
        unsafe fn store_masked(p: *mut f32, m: __mmask16, v: __m512) {
            _mm512_mask_storeu_ps(p, m, v)
        }
        #[target_feature(enable = "avx512f")]
        unsafe fn panels(
            m: usize,
            n: usize,
            k: usize,
            a: ASource,
            src: BSource,
            c0: C0Source,
            c: *mut f32,
            ldc: usize,
        ) {
            // SAFETY: as this function's contract.
            unsafe { panels::<Self>(m, n, k, a, src, c0, c, ldc) }
        }
        #[target_feature(enable = "avx512f")]
        unsafe fn panel<const V: usize, const MASKED: bool>(args: PanelArgs) {
            // SAFETY: as this function's contract.
            unsafe { panel::<Self, V, MASKED>(args) }
        }
    }

    /// AVX2 with FMA: 6 rows by 2 vectors of 8 (12 accumulators, 2 vectors
    /// of `b` and a broadcast: 15 of the 16 ymm registers).
    #[derive(Clone, Copy)]
    pub(crate) struct Avx2;

    impl Isa for Avx2 {
        type V = __m256;
        type M = __m256i;
        const LANES: usize = 8;
        const MR: usize = 6;
        const NV: usize = 2;

        #[inline(always)]
        unsafe fn zero() -> __m256 {
            _mm256_setzero_ps()
        }
        #[inline(always)]
        unsafe fn mask(lanes: usize) -> __m256i {
            _mm256_cmpgt_epi32(_mm256_set1_epi32(lanes as i32), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7))
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> __m256 {
            _mm256_loadu_ps(p)
        }
        #[inline(always)]
        unsafe fn load_masked(m: __m256i, p: *const f32) -> __m256 {
            _mm256_maskload_ps(p, m)
        }
        #[inline(always)]
        unsafe fn splat(x: f32) -> __m256 {
            _mm256_set1_ps(x)
        }
        #[inline(always)]
        unsafe fn fmadd(a: __m256, b: __m256, c: __m256) -> __m256 {
            _mm256_fmadd_ps(a, b, c)
        }
        #[inline(always)]
        unsafe fn store(p: *mut f32, v: __m256) {
            _mm256_storeu_ps(p, v)
        }
        #[inline(always)]
        unsafe fn store_masked(p: *mut f32, m: __m256i, v: __m256) {
            _mm256_maskstore_ps(p, m, v)
        }
        #[target_feature(enable = "avx2,fma")]
        unsafe fn panels(
            m: usize,
            n: usize,
            k: usize,
            a: ASource,
            src: BSource,
            c0: C0Source,
            c: *mut f32,
            ldc: usize,
        ) {
            // SAFETY: as this function's contract.
            unsafe { panels::<Self>(m, n, k, a, src, c0, c, ldc) }
        }
        #[target_feature(enable = "avx2,fma")]
        unsafe fn panel<const V: usize, const MASKED: bool>(args: PanelArgs) {
            // SAFETY: as this function's contract.
            unsafe { panel::<Self, V, MASKED>(args) }
        }
    }

    /// Packs `b` into panels of `K::NR` columns: panel `q` holds, for each
    /// `p < k`, columns `q*NR..q*NR+NR` of row `p` (zeros past column `n`).
    fn pack_b<K: Isa>(k: usize, n: usize, b: Mat) -> Vec<f32> {
        let nr = K::NR;
        let panels = n.div_ceil(nr);
        let mut out = vec![0.0f32; panels * nr * k];
        for (q, panel) in out.chunks_exact_mut(nr * k).enumerate() {
            let cols = nr.min(n - q * nr);
            for (p, row) in panel.chunks_exact_mut(nr).enumerate() {
                if b.cs == 1 {
                    let start = (b.off + p as isize * b.rs + (q * nr) as isize) as usize;
                    row[..cols].copy_from_slice(&b.data[start..start + cols]);
                } else {
                    for (j, d) in row[..cols].iter_mut().enumerate() {
                        *d = b.at(p, q * nr + j);
                    }
                }
            }
        }
        out
    }

    /// Where the microkernel reads `b`: panel `q` starts at `base + q *
    /// panel_step`, row `p` of a panel at `+ p * row_step`.
    #[derive(Clone, Copy)]
    pub(crate) struct BSource {
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
    /// when its columns are unit-stride, else packed into panels. The
    /// CPU must have `K`'s features.
    ///
    /// With `threads`, a product of at least [`TEAM_WORK`] multiply-adds is
    /// split over the team's threads.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn sgemm<K: Isa>(
        [m, n, k]: [usize; 3],
        a: Mat,
        b: Mat,
        c: &mut [MaybeUninit<f32>],
        init: Init,
        threads: bool,
    ) {
        let packed_b;
        let src = if b.cs == 1 && b.rs >= 0 {
            BSource { base: b.data.as_ptr().wrapping_offset(b.off), panel_step: K::NR, row_step: b.rs as usize }
        } else {
            packed_b = pack_b::<K>(k, n, b);
            BSource { base: packed_b.as_ptr(), panel_step: K::NR * k, row_step: K::NR }
        };
        let asrc = ASource { base: a.data.as_ptr().wrapping_offset(a.off), rs: a.rs, cs: a.cs };
        let cp = c.as_mut_ptr().cast::<f32>();
        let c0 = match init {
            Init::Zero => C0Source { base: std::ptr::null(), rs: 0, cs: 1 },
            Init::From(m0) => C0Source { base: m0.data.as_ptr().wrapping_offset(m0.off), rs: m0.rs, cs: m0.cs },
        };
        // Parts split `b` in place at any vector of columns; packed
        // panels only at a panel's start.
        let unit = if src.panel_step == K::NR { K::LANES } else { K::NR };
        let blocks = Blocks::new(m, n, k, K::MR, unit, threads);
        // SAFETY (both calls below): `asrc` addresses a.off + i*a.rs + p*a.cs for i < m, p < k,
        // in bounds by Mat's contract. `src` addresses k rows of each panel
        // q < n.div_ceil(NR): packed panels have NR*k floats, and in-place
        // panels read row p at b.off + p*b.rs + q*NR + j only for
        // j < n - q*NR (masked past n), in bounds by Mat's contract. `c0`
        // is null, or `c` itself, or addresses an m x n matrix by Mat's
        // contract. `c` is the exclusively borrowed m*n output. The CPU has
        // `K`'s features (checked by the caller's dispatch).
        if blocks.parts == 1 {
            // SAFETY: as above, for the whole of `c` (row stride n).
            unsafe { K::panels(m, n, k, asrc, src, c0, cp, n) };
            return;
        }
        let shared = super::super::Shared((asrc, src, c0, cp));
        crate::backend::cpu::team::run(blocks.parts, &|i| {
            let (a, b, c0, c) = shared.get();
            let (r0, r1, j0, j1) = blocks.part(i);
            let (a, b, c0) = (
                ASource { base: a.base.wrapping_offset(r0 as isize * a.rs), ..a },
                BSource { base: b.base.wrapping_add(j0 / K::NR * b.panel_step + j0 % K::NR), ..b },
                c0.at(r0, j0),
            );
            // SAFETY: as above, for rows r0..r1 and columns j0..j1 of `c`
            // (row stride n): the parts are disjoint blocks of `c` (see
            // `Blocks::part`), so no two threads write one element, and
            // `team::run` returns only after every part has finished, while
            // `a`, `b` and `c` are still borrowed. A part of packed `b`
            // starts at a panel (`j0` a multiple of NR); one of `b` in place
            // at column j0 of its rows.
            unsafe { K::panels(r1 - r0, j1 - j0, k, a, b, c0, c.add(r0 * n + j0), n) }
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
    /// Columns split in units of `unit` (one vector when `b` is read in
    /// place), so each part has the same number of vectors.
    #[derive(Clone, Copy)]
    struct Blocks {
        m: usize,
        n: usize,
        mr: usize,
        unit: usize,
        parts: usize,
        by_rows: bool,
    }

    impl Blocks {
        fn new(m: usize, n: usize, k: usize, mr: usize, unit: usize, threads: bool) -> Blocks {
            let threads = if threads { crate::backend::cpu::team::parts_for(m * n * k, TEAM_WORK) } else { 1 };
            let tiles = m.div_ceil(mr);
            let units = n.div_ceil(unit);
            // The busiest thread's share of rows, against its share of
            // columns (cross-multiplied).
            let most_rows = (tiles.div_ceil(threads) * mr).min(m);
            let most_cols = (units.div_ceil(threads) * unit).min(n);
            let by_rows = most_rows * n <= most_cols * m;
            let parts = threads.min(if by_rows { tiles } else { units }).max(1);
            Blocks { m, n, mr, unit, parts, by_rows }
        }

        /// Rows `r0..r1` and columns `j0..j1` of part `i`.
        fn part(&self, i: usize) -> (usize, usize, usize, usize) {
            if self.by_rows {
                let tiles = self.m.div_ceil(self.mr);
                let (t0, t1) = (i * tiles / self.parts, (i + 1) * tiles / self.parts);
                ((t0 * self.mr).min(self.m), (t1 * self.mr).min(self.m), 0, self.n)
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
    pub(crate) struct C0Source {
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
    pub(crate) struct ASource {
        base: *const f32,
        rs: isize,
        cs: isize,
    }

    /// All of `c`, panel by panel, `k` in blocks of `KC`.
    ///
    /// # Safety
    /// See the calls in `sgemm`: `a`/`src` cover the operands, `c` is `m x n`
    /// with row stride `ldc`, and the CPU has `K`'s features (the caller
    /// enables them: [`Isa::panels`]).
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn panels<K: Isa>(
        m: usize,
        n: usize,
        k: usize,
        a: ASource,
        src: BSource,
        c0: C0Source,
        c: *mut f32,
        ldc: usize,
    ) {
        let (nr, lanes) = (K::NR, K::LANES);
        let mut p0 = 0;
        while p0 < k {
            let kc = KC.min(k - p0);
            // Later blocks of `k` add to what the earlier ones left in `c`.
            let start = if p0 == 0 { c0 } else { C0Source { base: c, rs: ldc as isize, cs: 1 } };
            for q in 0..n.div_ceil(nr) {
                let cols = nr.min(n - q * nr);
                let bp = src.base.wrapping_add(q * src.panel_step + p0 * src.row_step);
                // SAFETY: `q * nr < n`, inside the row of `c`.
                let (cp, s) = (unsafe { c.add(q * nr) }, start.at(0, q * nr));
                // Only a panel whose columns end inside a vector masks its
                // last vector's loads of `b` (a masked load cost about an
                // eighth of the product's time where every vector was
                // whole).
                let args = (m, kc, a, p0, bp, src.row_step, s, cp, ldc, cols);
                // SAFETY: as this function's contract, for this panel's
                // columns (a narrower last panel computes only its vectors).
                unsafe {
                    match (cols.div_ceil(lanes), !cols.is_multiple_of(lanes)) {
                        (1, false) => K::panel::<1, false>(args),
                        (1, true) => K::panel::<1, true>(args),
                        (2, false) => K::panel::<2, false>(args),
                        (2, true) => K::panel::<2, true>(args),
                        (_, false) => K::panel::<3, false>(args),
                        (_, true) => K::panel::<3, true>(args),
                    }
                }
            }
            p0 += kc;
        }
    }

    /// The arguments of [`panel`]: rows `m`, depth `kc`, `a` and the first
    /// step `p0` of `k`, the panel of `b` and its row step, the start of
    /// `c`, `c` and its row stride, and the panel's columns.
    pub(crate) type PanelArgs = (usize, usize, ASource, usize, *const f32, usize, C0Source, *mut f32, usize, usize);

    /// One panel of `cols <= K::LANES * V` columns of `c` (all `m` rows,
    /// tile by tile) over `kc` steps of `k` from `p0`, in `V` vectors per
    /// row; `MASKED` when `cols` ends inside a vector (loads of `b` then
    /// read only the panel's lanes).
    ///
    /// # Safety
    /// As [`panels`], for this panel: `bp` has `kc` rows `row_step` apart
    /// whose first `cols` lanes are readable, `c` and `c0` start at the
    /// panel's first column.
    #[inline(always)]
    unsafe fn panel<K: Isa, const V: usize, const MASKED: bool>(
        (m, kc, a, p0, bp, row_step, start, c, ldc, cols): PanelArgs,
    ) {
        if V > K::NV {
            unreachable!("a panel is at most NV vectors wide");
        }
        // SAFETY: the caller has `K`'s features.
        let masks: [K::M; V] =
            std::array::from_fn(|v| unsafe { K::mask(cols.saturating_sub(K::LANES * v).min(K::LANES)) });
        let mr = K::MR;
        prefetch_rows(a, 0, mr.min(m), p0, kc);
        for t in 0..m.div_ceil(mr) {
            let rows = mr.min(m - t * mr);
            let ap = a.base.wrapping_offset((t * mr) as isize * a.rs + p0 as isize * a.cs);
            prefetch_rows(a, (t + 1) * mr, mr.min(m.saturating_sub((t + 1) * mr)), p0, kc);
            let cp = c.wrapping_add(t * mr * ldc);
            let s = start.at(t * mr, 0);
            let args = (kc, ap, a.rs, a.cs, bp, row_step, s, cp, ldc, cols, masks);
            // SAFETY: as this function's contract; the tile reads kc rows
            // of the panel and `rows` rows of `c`.
            unsafe {
                match rows {
                    1 => tile::<K, 1, V, MASKED>(args),
                    2 => tile::<K, 2, V, MASKED>(args),
                    3 => tile::<K, 3, V, MASKED>(args),
                    4 => tile::<K, 4, V, MASKED>(args),
                    5 => tile::<K, 5, V, MASKED>(args),
                    6 => tile::<K, 6, V, MASKED>(args),
                    7 => tile::<K, 7, V, MASKED>(args),
                    _ => tile::<K, 8, V, MASKED>(args),
                }
            }
        }
    }

    /// Asks the cache for rows `r0..r0 + rows` of `a`, columns `p0..p0 +
    /// kc`, when its rows are contiguous: a tile reads its rows a few bytes
    /// per step of `k`, too slowly for the hardware's prefetchers when `a`
    /// is fresh from memory (an input read once, as a batch of the seed's
    /// `x %*% w`).
    #[inline(always)]
    fn prefetch_rows(a: ASource, r0: usize, rows: usize, p0: usize, kc: usize) {
        if a.cs != 1 {
            return;
        }
        for i in r0..r0 + rows {
            let row = a.base.wrapping_offset(i as isize * a.rs + p0 as isize);
            for j in (0..kc).step_by(16) {
                // SAFETY: a hint (SSE, on every x86-64): it never faults,
                // wherever it points.
                unsafe { _mm_prefetch::<_MM_HINT_T0>(row.wrapping_add(j).cast::<i8>()) };
            }
        }
    }

    /// The arguments of [`tile`]: depth `kc`, `a` at the tile's first
    /// element and its strides, the panel of `b` and its row step, the
    /// start of the tile's `c`, `c` and its row stride, the panel's columns
    /// and the masks of its vectors.
    type TileArgs<M, const V: usize> =
        (usize, *const f32, isize, isize, *const f32, usize, C0Source, *mut f32, usize, usize, [M; V]);

    /// One `R x V` block of vectors of `c` (`R <= K::MR`, `V <= K::NV`)
    /// over `kc` steps of `k`: `c = c0 + a_tile @ b_panel`, the last vector
    /// of each row masked by its mask when `MASKED` (all lanes of each
    /// vector otherwise).
    ///
    /// # Safety
    /// `ap + i*a_rs + p*a_cs` is readable for i < R, p < kc, `bp` has `kc` rows
    /// `row_step` apart of which the first `cols` lanes are readable, `c0`
    /// is null or readable at those lanes of R rows, `c` has `R` rows `ldc`
    /// apart whose first `cols` lanes are writable; the CPU has `K`'s
    /// features.
    #[inline(always)]
    unsafe fn tile<K: Isa, const R: usize, const V: usize, const MASKED: bool>(
        (kc, ap, a_rs, a_cs, bp, row_step, c0, c, ldc, cols, masks): TileArgs<K::M, V>,
    ) {
        if R > K::MR || V > K::NV {
            unreachable!("a tile is at most MR rows of NV vectors");
        }
        let lanes = K::LANES;
        // Whether vector `v` of a row is the masked one.
        let partial = |v: usize| MASKED && v + 1 == V;
        // SAFETY (the whole body): as this function's contract.
        unsafe {
            let mut cr = [[K::zero(); V]; R];
            if !c0.base.is_null() {
                for (i, row) in cr.iter_mut().enumerate() {
                    let r = c0.base.wrapping_offset(i as isize * c0.rs);
                    for (v, x) in row.iter_mut().enumerate() {
                        *x = if c0.cs == 1 {
                            K::load_masked(masks[v], r.wrapping_add(lanes * v))
                        } else {
                            let mut buf = [0.0f32; 16];
                            for (l, d) in buf.iter_mut().enumerate().take(cols.saturating_sub(lanes * v).min(lanes)) {
                                *d = *r.wrapping_offset((lanes * v + l) as isize * c0.cs);
                            }
                            K::load(buf.as_ptr())
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
                let mut bv = [K::zero(); V];
                for (v, x) in bv.iter_mut().enumerate() {
                    let at = b.wrapping_add(lanes * v);
                    *x = if partial(v) { K::load_masked(masks[v], at) } else { K::load(at) };
                }
                for (i, row) in cr.iter_mut().enumerate() {
                    let x = K::splat(*a.wrapping_offset(rows[i]));
                    for (v, y) in row.iter_mut().enumerate() {
                        *y = K::fmadd(x, bv[v], *y);
                    }
                }
                a = a.wrapping_offset(a_cs);
                b = b.wrapping_add(row_step);
            }
            for (i, row) in cr.iter().enumerate() {
                for (v, x) in row.iter().enumerate() {
                    let at = c.wrapping_add(i * ldc + lanes * v);
                    if partial(v) {
                        K::store_masked(at, masks[v], *x);
                    } else {
                        K::store(at, *x);
                    }
                }
            }
        }
    }
}
