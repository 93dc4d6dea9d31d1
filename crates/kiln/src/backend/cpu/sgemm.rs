//! kiln's own f32 matrix product for x86-64 with AVX-512F, with the `gemm`
//! crate as the portable fallback.
//!
//! `c = c0 + a @ b` where `c` is a row-major `m x n` block and `c0` is either
//! zero or what `c` held on entry (a bias the caller broadcast into it), so
//! a bias add costs no pass of its own. `a` and `b` may have any strides.
//!
//! The AVX-512 path takes small products (under `PAR_WORK` multiply-adds,
//! `b` at most `UNPACKED_B` elements), where packing would cost as much as
//! the product: `a` is read in place through its strides (broadcasts come
//! straight from memory), `b` in place when its columns are unit-stride
//! (else packed into zero-padded panels of [`NR`] columns). The microkernel
//! keeps an `MR x NR` block of `c` in 24 zmm registers, with masked loads
//! and stores at the right edge, and runs `k` in blocks of `KC`. Larger
//! products go to the `gemm` crate (its AVX-512 kernels, packing and rayon
//! threads), which runs them at this machine's peak.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;
use std::cell::Cell;

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
pub struct Mat<'a> {
    /// The buffer.
    pub data: &'a [f32],
    /// Position of element (0, 0).
    pub off: isize,
    /// Row stride.
    pub rs: isize,
    /// Column stride.
    pub cs: isize,
}

impl Mat<'_> {
    #[inline(always)]
    fn at(&self, i: usize, j: usize) -> f32 {
        self.data[(self.off + i as isize * self.rs + j as isize * self.cs) as usize]
    }
}

/// `c = c0 + a @ b` for `a: m x k`, `b: k x n`, `c: m x n` row-major
/// (`c.len() == m * n`); `c0` is `c`'s content when `accumulate`, else zero.
/// `threads` allows splitting over the rayon pool when the product is large.
#[allow(clippy::too_many_arguments)]
pub fn sgemm(
    level: Level,
    m: usize,
    n: usize,
    k: usize,
    a: Mat,
    b: Mat,
    c: &mut [f32],
    accumulate: bool,
    threads: bool,
) {
    assert_eq!(c.len(), m * n, "sgemm: c is m x n");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            c.fill(0.0);
        }
        return;
    }
    match level {
        #[cfg(target_arch = "x86_64")]
        Level::Avx512 if detected() == Level::Avx512 && avx512::takes(m, n, k) => {
            avx512::sgemm(m, n, k, a, b, c, accumulate)
        }
        _ => portable(m, n, k, a, b, c, accumulate, threads),
    }
}

/// The `gemm` crate.
#[allow(clippy::too_many_arguments)]
fn portable(m: usize, n: usize, k: usize, a: Mat, b: Mat, c: &mut [f32], accumulate: bool, threads: bool) {
    let par = if threads && m * n * k >= PAR_WORK { gemm::Parallelism::Rayon(0) } else { gemm::Parallelism::None };
    // SAFETY: `c` is an exclusively borrowed, initialized `m x n` block
    // written row-major (row stride n, column stride 1). Every element gemm
    // reads from `a` is at `a.off + i*a.rs + p*a.cs` for i < m, p < k, and
    // from `b` at `b.off + p*b.rs + j*b.cs` for p < k, j < n: by `Mat`'s
    // contract these are in bounds of their slices (strides may be negative
    // or 0; gemm only reads through them). Both slices outlive the call.
    // With read_dst = accumulate, alpha = 1 and beta = 1, gemm computes
    // c = c + a @ b, or c = a @ b without reading c.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.data.as_ptr().wrapping_offset(a.off),
            a.cs,
            a.rs,
            b.data.as_ptr().wrapping_offset(b.off),
            b.cs,
            b.rs,
            1.0f32,
            1.0f32,
            false,
            false,
            false,
            par,
        )
    }
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
    pub(super) fn sgemm(m: usize, n: usize, k: usize, a: Mat, b: Mat, c: &mut [f32], accumulate: bool) {
        let packed_b;
        let src = if b.cs == 1 && b.rs >= 0 {
            BSource { base: b.data.as_ptr().wrapping_offset(b.off), panel_step: NR, row_step: b.rs as usize }
        } else {
            packed_b = pack_b(k, n, b);
            BSource { base: packed_b.as_ptr(), panel_step: NR * k, row_step: NR }
        };
        let asrc = ASource { base: a.data.as_ptr().wrapping_offset(a.off), rs: a.rs, cs: a.cs };
        // SAFETY: `asrc` addresses a.off + i*a.rs + p*a.cs for i < m, p < k,
        // in bounds by Mat's contract. `src` addresses k rows of each panel
        // q < n.div_ceil(NR): packed panels have NR*k floats, and in-place
        // panels read row p at b.off + p*b.rs + q*NR + j only for
        // j < n - q*NR (masked past n), in bounds by Mat's contract. `c` is
        // the exclusively borrowed m*n output. The CPU has AVX-512F (checked
        // by the caller's dispatch).
        unsafe { panels_avx512(m, n, k, asrc, src, c.as_mut_ptr(), accumulate) }
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
    /// row-major, and the CPU supports AVX-512F.
    #[target_feature(enable = "avx512f")]
    unsafe fn panels_avx512(m: usize, n: usize, k: usize, a: ASource, src: BSource, c: *mut f32, accumulate: bool) {
        let tiles = m.div_ceil(MR);
        let mut p0 = 0;
        while p0 < k {
            let kc = KC.min(k - p0);
            let acc = accumulate || p0 > 0;
            for q in 0..n.div_ceil(NR) {
                let cols = NR.min(n - q * NR);
                let masks: [__mmask16; NV] =
                    std::array::from_fn(|v| ((1u32 << cols.saturating_sub(16 * v).min(16)) - 1) as __mmask16);
                let bp = src.base.wrapping_add(q * src.panel_step + p0 * src.row_step);
                for t in 0..tiles {
                    let rows = MR.min(m - t * MR);
                    let ap = a.base.wrapping_offset((t * MR) as isize * a.rs + p0 as isize * a.cs);
                    let cp = c.add(t * MR * n + q * NR);
                    // SAFETY: as this function's contract; the tile reads
                    // kc rows of the panel and `rows` rows of `c`.
                    match rows {
                        1 => tile::<1>(kc, ap, a.rs, a.cs, bp, src.row_step, cp, n, masks, acc),
                        2 => tile::<2>(kc, ap, a.rs, a.cs, bp, src.row_step, cp, n, masks, acc),
                        3 => tile::<3>(kc, ap, a.rs, a.cs, bp, src.row_step, cp, n, masks, acc),
                        4 => tile::<4>(kc, ap, a.rs, a.cs, bp, src.row_step, cp, n, masks, acc),
                        5 => tile::<5>(kc, ap, a.rs, a.cs, bp, src.row_step, cp, n, masks, acc),
                        6 => tile::<6>(kc, ap, a.rs, a.cs, bp, src.row_step, cp, n, masks, acc),
                        7 => tile::<7>(kc, ap, a.rs, a.cs, bp, src.row_step, cp, n, masks, acc),
                        _ => tile::<8>(kc, ap, a.rs, a.cs, bp, src.row_step, cp, n, masks, acc),
                    }
                }
            }
            p0 += kc;
        }
    }

    /// One `R x NR` block of `c` (`R <= MR`) over `kc` steps of `k`:
    /// `c = (acc ? c : 0) + a_tile @ b_panel`, column vector `v` masked by
    /// `masks[v]`.
    ///
    /// # Safety
    /// `ap + i*a_rs + p*a_cs` is readable for i < R, p < kc, `bp` has `kc` rows
    /// `row_step` apart of which the masked lanes are readable, `c` has `R`
    /// rows `ldc` apart whose masked lanes are writable; AVX-512F.
    #[target_feature(enable = "avx512f")]
    #[inline]
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile<const R: usize>(
        kc: usize,
        ap: *const f32,
        a_rs: isize,
        a_cs: isize,
        bp: *const f32,
        row_step: usize,
        c: *mut f32,
        ldc: usize,
        masks: [__mmask16; NV],
        acc: bool,
    ) {
        let mut cr = [[_mm512_setzero_ps(); NV]; R];
        if acc {
            for (i, row) in cr.iter_mut().enumerate() {
                for (v, x) in row.iter_mut().enumerate() {
                    *x = _mm512_maskz_loadu_ps(masks[v], c.wrapping_add(i * ldc + 16 * v));
                }
            }
        }
        let (mut a, mut b) = (ap, bp);
        for _ in 0..kc {
            let mut bv = [_mm512_setzero_ps(); NV];
            for (v, x) in bv.iter_mut().enumerate() {
                *x = _mm512_maskz_loadu_ps(masks[v], b.wrapping_add(16 * v));
            }
            for (i, row) in cr.iter_mut().enumerate() {
                let x = _mm512_set1_ps(*a.wrapping_offset(i as isize * a_rs));
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
