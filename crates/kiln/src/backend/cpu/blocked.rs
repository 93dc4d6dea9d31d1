//! Blocked traversal of an elementwise iteration space: for groups (and
//! strided copies, [`copy`]) that read an input across its layout (a
//! transpose, a permutation of axes).
//!
//! The tile interpreter walks the iteration space in row-major order, which
//! is the output's order. An input whose innermost stride in that order is
//! a cache line or more (`x.t() + y`, a `(b, s, h)` to `(b, h, s)`
//! permutation) then reads every element from a different line, and
//! usually a different page: a 4096x4096 f32 transpose touched 4096 pages
//! per row of output. Here the space is cut into 2-D blocks instead,
//! `rows` positions along an outer dimension `k` (the one along which
//! that input is densest) by `cols` along the innermost: each block reads
//! `rows` neighbouring elements of `cols` lines of that input, and writes
//! `cols` neighbouring elements of `rows` lines of the outputs, so every
//! line read or written is used whole while it is in L1.
//!
//! A block is gathered into tile registers in block order (row `r`, column
//! `c` at `r * cols + c`): elementwise ops do not care where a position
//! sits, so the group's kernel runs on the block unchanged, and its outputs
//! are then stored back as `rows` runs of `cols`. Blocks of `rows`
//! consecutive indices of `k` (over everything inside `k`) make a band,
//! a contiguous range of positions; parallel tasks take whole bands.

use crate::host_vec::HostVec;
use smallvec::SmallVec;

use crate::buffer::Buffer;
use crate::layout::{collapse, contiguous_strides, Layout};

use crate::backend::cpu::interpreter::OutPtr;
use crate::backend::cpu::strided::PAR_CHUNK;
use crate::backend::cpu::team;
use crate::backend::cpu::tile::TILE;
use crate::dtype::Element;
use crate::error::Result;

/// Fewest positions worth a blocked traversal: below it the whole space
/// sits in L1 or L2, where reading across lines costs little.
pub const MIN_BLOCKED: usize = 1 << 14;

/// Bytes of stride along the innermost dimension from which an input is
/// read across its layout: each element from a different cache line.
const LINE: usize = 64;

/// Rows of a block, at most (`TILE / MAX_ROWS` columns).
const MAX_ROWS: usize = 32;

static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Elementwise launches run in blocks so far in this process: for tests
/// and diagnostics.
pub fn runs() -> usize {
    RUNS.load(std::sync::atomic::Ordering::Relaxed)
}

/// Counts one launch run in blocks (see [`runs`]).
pub(super) fn count_run() {
    RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// How one input is read in a block.
#[derive(Clone, Debug)]
pub enum BlockedInput {
    /// Every element of the space is one value: element `at`.
    Scalar(usize),
    /// Strides over the plan's collapsed space, and the offset of its
    /// first position.
    Strided(SmallVec<[isize; 6]>, usize),
}

/// A blocked traversal of a group's iteration space (see the module docs).
#[derive(Clone, Debug)]
pub struct Blocks {
    /// The iteration space, with dimensions merged where the outputs and
    /// every input allow.
    pub shape: SmallVec<[usize; 6]>,
    /// Per input: how it is read.
    pub inputs: Vec<BlockedInput>,
    /// The dimension blocked beside the innermost.
    pub k: usize,
    /// Positions per block along `k`.
    pub rows: usize,
    /// Positions per block along the innermost dimension.
    pub cols: usize,
}

/// One block: where it starts and its extent.
#[derive(Clone, Copy, Debug)]
pub struct Block {
    /// Row-major position of its first element.
    pub at: usize,
    /// Rows (along `k`).
    pub rows: usize,
    /// Columns (along the innermost dimension).
    pub cols: usize,
    /// Positions between the starts of two rows.
    pub pitch: usize,
}

impl Blocks {
    /// A blocked traversal of `shape` for inputs viewed over it as
    /// `views` with elements of `sizes` bytes, when one of them is read
    /// across its layout and blocking gives it denser reads; `None` when
    /// the row-major order serves as well.
    pub fn plan(shape: &[usize], views: &[&Layout], sizes: &[usize]) -> Option<Blocks> {
        let n: usize = shape.iter().product();
        if n < MIN_BLOCKED {
            return None;
        }
        let out = contiguous_strides(shape);
        let mut all: Vec<&[isize]> = vec![&out];
        all.extend(views.iter().map(|l| &l.strides[..]));
        let (cs, st) = collapse(shape, &all);
        let nd = cs.len();
        if nd < 2 {
            return None;
        }
        // The input read most sparsely along the innermost dimension, and
        // the outer dimension along which it is densest.
        let (mut best, mut k) = (0usize, None);
        for (s, &size) in st[1..].iter().zip(sizes) {
            let last = s[nd - 1].unsigned_abs() * size;
            if last < LINE || last <= best {
                continue;
            }
            let dense = (0..nd - 1).filter(|&d| s[d] != 0).min_by_key(|&d| s[d].unsigned_abs());
            if let Some(d) = dense.filter(|&d| s[d].unsigned_abs() < s[nd - 1].unsigned_abs()) {
                (best, k) = (last, Some(d));
            }
        }
        let k = k?;
        let (len_k, len_last) = (cs[k], cs[nd - 1]);
        let mut cols = len_last.min(TILE / MAX_ROWS);
        let rows = len_k.min(TILE / cols);
        cols = len_last.min(TILE / rows);
        let inputs = views
            .iter()
            .zip(&st[1..])
            .map(|(l, s)| {
                if s.iter().all(|&x| x == 0) {
                    BlockedInput::Scalar(l.offset)
                } else {
                    BlockedInput::Strided(s.iter().copied().collect(), l.offset)
                }
            })
            .collect();
        Some(Blocks { shape: cs.into_iter().collect(), inputs, k, rows, cols })
    }

    /// Positions between consecutive indices of `k`.
    fn pitch(&self) -> usize {
        self.shape[self.k + 1..].iter().product()
    }

    /// Number of bands (see the module docs).
    pub fn bands(&self) -> usize {
        let outer: usize = self.shape[..self.k].iter().product();
        outer * self.shape[self.k].div_ceil(self.rows)
    }

    /// Positions in a band (the last band of an index of the dims outside
    /// `k` may have fewer).
    pub fn band_len(&self) -> usize {
        self.rows * self.pitch()
    }

    /// Calls `f` for each block of band `b`, in order.
    pub fn for_each_block(&self, b: usize, mut f: impl FnMut(Block)) {
        let per = self.shape[self.k].div_ceil(self.rows);
        let (outer, k0) = (b / per, (b % per) * self.rows);
        let pitch = self.pitch();
        let rows = self.rows.min(self.shape[self.k] - k0);
        let start = (outer * self.shape[self.k] + k0) * pitch;
        let last = self.shape[self.shape.len() - 1];
        for m in (0..pitch).step_by(last) {
            for c0 in (0..last).step_by(self.cols) {
                f(Block { at: start + m + c0, rows, cols: self.cols.min(last - c0), pitch });
            }
        }
    }

    /// The buffer offset of input `i`'s element at position `at`, and its
    /// strides along `k` and the innermost dimension; `None` for a scalar.
    pub fn origin(&self, i: usize, at: usize) -> Option<(isize, isize, isize)> {
        let BlockedInput::Strided(s, offset) = &self.inputs[i] else { return None };
        let nd = self.shape.len();
        let (mut rem, mut off) = (at, *offset as isize);
        for d in (0..nd).rev() {
            off += (rem % self.shape[d]) as isize * s[d];
            rem /= self.shape[d];
        }
        Some((off, s[self.k], s[nd - 1]))
    }
}

/// Where a block of an input is: one run read in place, one repeated
/// value, or gathered into a register.
pub enum Read {
    /// `rows * cols` elements in order from this offset.
    Run(usize),
    /// One value at this offset.
    Repeat(usize),
    /// Copied into the register.
    Gathered,
}

/// Reads a block of `src` whose element `(r, c)` is at `o + r * sk + c * sl`
/// (`origin`), into `reg` at `r * cols + c` when it is not one run or value.
pub fn gather(src: &Buffer, at: (isize, isize, isize), b: &Block, reg: &mut Buffer) -> Read {
    crate::with_buffer!(src, s => {
        let d = crate::buffer::BufferElement::slice_of_mut(reg).expect("register dtype is the input dtype");
        gather_typed(s, at, b, d)
    })
}

/// [`gather`] on typed slices (`d` holds at least the block).
fn gather_typed<T: Copy>(s: &[T], (o, sk, sl): (isize, isize, isize), b: &Block, d: &mut [T]) -> Read {
    let (rows, cols) = (b.rows, b.cols);
    if sl == 0 && (sk == 0 || rows == 1) {
        return Read::Repeat(o as usize);
    }
    if sl == 1 && (rows == 1 || sk == cols as isize) {
        return Read::Run(o as usize);
    }
    {
        let d = &mut d[..rows * cols];
        let at = |r: usize, c: usize| (o + r as isize * sk + c as isize * sl) as usize;
        if sl == 1 {
            // Rows far apart: each streams from memory on its own; ask
            // for the next block's part of each (`cols` further along).
            let bytes = std::mem::size_of_val(&s[..cols]);
            for (r, row) in d.chunks_exact_mut(cols).enumerate() {
                let src = &s[at(r, 0)..at(r, 0) + cols];
                for line in (0..bytes).step_by(LINE) {
                    prefetch_l2(src.as_ptr().cast::<u8>().wrapping_add(bytes + line));
                }
                row.copy_from_slice(src);
            }
        } else if sl == 0 {
            for (r, row) in d.chunks_exact_mut(cols).enumerate() {
                row.fill(s[at(r, 0)]);
            }
        } else if sk == 1 {
            // Across the layout: each column is a run of the input. Its
            // lines come from memory one by one, far apart: ask for the
            // next block's column (`cols` further along) while copying.
            let bytes = std::mem::size_of_val(&s[..rows]);
            let next = cols as isize * sl * std::mem::size_of_val(&s[..1]) as isize;
            for c in 0..cols {
                let col = &s[at(0, c)..at(0, c) + rows];
                for line in (0..bytes).step_by(LINE) {
                    let p = col.as_ptr().cast::<u8>().wrapping_offset(next + line as isize);
                    prefetch_l2(p);
                }
            }
            // Whole 8x8 squares of 4-byte elements in vector registers.
            let (r8, c8) =
                if std::mem::size_of_val(&s[..1]) == 4 { transpose8(s, o, sl, rows, cols, d) } else { (0, 0) };
            for c in 0..cols {
                let col = &s[at(0, c)..at(0, c) + rows];
                let from = if c < c8 { r8 } else { 0 };
                for (r, v) in col.iter().enumerate().skip(from) {
                    d[r * cols + c] = *v;
                }
            }
        } else {
            for c in 0..cols {
                for r in 0..rows {
                    d[r * cols + c] = s[at(r, c)];
                }
            }
        }
    }
    Read::Gathered
}

/// The elements of `layout` over `src` in row-major order, copied in
/// blocks (see the module docs) into a vector allocated for `op`; `None`
/// when the plan finds the row-major order serves as well. The layout
/// must fit `src`.
pub fn copy<T: Element>(op: &'static str, src: &[T], layout: &Layout) -> Option<Result<HostVec<T>>> {
    let b = Blocks::plan(&layout.shape, &[layout], &[std::mem::size_of::<T>()])?;
    Some(copy_planned(op, src, &b))
}

fn copy_planned<T: Element>(op: &'static str, src: &[T], b: &Blocks) -> Result<HostVec<T>> {
    let n: usize = b.shape.iter().product();
    let mut out: HostVec<T> = crate::memory::take_vec(op, n)?;
    let dst = OutPtr(out.spare_capacity_mut()[..n].as_mut_ptr().cast::<u8>());
    let (bands, per) = (b.bands(), (PAR_CHUNK / b.band_len()).max(1));
    let dst = &dst;
    team::run_with(
        bands.div_ceil(per),
        || vec![T::zero(); TILE],
        |reg, c| {
            for band in c * per..((c + 1) * per).min(bands) {
                b.for_each_block(band, |blk| {
                    let at = b.origin(0, blk.at).expect("a copied layout is strided");
                    let (from, step) = match gather_typed(src, at, &blk, reg) {
                        Read::Run(o) => (&src[o..o + blk.rows * blk.cols], blk.cols),
                        Read::Repeat(o) => (&src[o..o + 1], 0),
                        Read::Gathered => (&reg[..blk.rows * blk.cols], blk.cols),
                    };
                    for r in 0..blk.rows {
                        let at = blk.at + r * blk.pitch;
                        // SAFETY: the block's row `r` is positions `at..at +
                        // cols`, inside `0..n` (the blocks tile the space),
                        // written by this task only; `from` holds `cols`
                        // elements from `r * step` (or one repeated).
                        unsafe {
                            let d = dst.0.cast::<T>().add(at);
                            if step == 0 {
                                for i in 0..blk.cols {
                                    d.add(i).write(from[0]);
                                }
                            } else {
                                std::ptr::copy_nonoverlapping(from[r * step..].as_ptr(), d, blk.cols);
                            }
                        }
                    }
                });
            }
        },
    );
    // SAFETY: the blocks cover every position of `0..n` once, and each
    // wrote all of its elements.
    unsafe { out.set_len(n) };
    Ok(out)
}

/// Copies the squares of 8x8 elements of a block read across its layout
/// (element `(r, c)` of `s` at `o + r + c * sl`, into `d` at `r * cols + c`)
/// through vector registers where the CPU has AVX2, for 4-byte elements;
/// returns the rows and columns covered (multiples of 8 from 0), the rest
/// left to the caller.
fn transpose8<T: Copy>(s: &[T], o: isize, sl: isize, rows: usize, cols: usize, d: &mut [T]) -> (usize, usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use crate::backend::cpu::simd_math::{detected_level, Level};
        let (r8, c8) = (rows / 8 * 8, cols / 8 * 8);
        if std::mem::size_of::<T>() != 4 || detected_level() == Level::Scalar || r8 == 0 || c8 == 0 {
            return (0, 0);
        }
        // Every element the squares read, `o + r + c * sl` for `r < rows`
        // and `c < cols`, is one the caller's block reads (in bounds); the
        // checks make that so whatever the caller passes.
        let reach = |r: usize, c: usize| o + r as isize + c as isize * sl;
        let inside = |i: isize| usize::try_from(i).is_ok_and(|i| i < s.len());
        assert!(
            inside(reach(0, 0))
                && inside(reach(rows - 1, cols - 1))
                && inside(reach(rows - 1, 0))
                && inside(reach(0, cols - 1))
        );
        assert!(d.len() >= rows * cols);
        for c0 in (0..c8).step_by(8) {
            for r0 in (0..r8).step_by(8) {
                // SAFETY: AVX2 was detected; the square's 8 source runs of 8
                // start at `reach(r0, c0 + i)` and lie between the corners
                // checked above (the reach is monotone in `r` and in `c`),
                // and its 8 destination runs at `(r0 + j) * cols + c0`, with
                // `c0 + 8 <= cols` and `r0 + 8 <= rows`, lie inside `d`.
                unsafe {
                    x86::square(
                        s.as_ptr().offset(reach(r0, c0)).cast(),
                        sl,
                        d.as_mut_ptr().add(r0 * cols + c0).cast(),
                        cols,
                    )
                };
            }
        }
        (r8, c8)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (s, o, sl, rows, cols, d);
        (0, 0)
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// Transposes one 8x8 square of 4-byte elements: source run `i` (8
    /// elements from `src + i * sl`) becomes column `i` of the 8 rows at
    /// `dst + j * pitch`.
    ///
    /// # Safety
    /// AVX2 is available; the 8 source runs are readable and the 8
    /// destination runs writable.
    #[target_feature(enable = "avx2")]
    pub unsafe fn square(src: *const f32, sl: isize, dst: *mut f32, pitch: usize) {
        // SAFETY: the caller's contract covers every load and store.
        unsafe {
            let r = |i: isize| _mm256_loadu_ps(src.offset(i * sl));
            let (r0, r1, r2, r3, r4, r5, r6, r7) = (r(0), r(1), r(2), r(3), r(4), r(5), r(6), r(7));
            let (t0, t1) = (_mm256_unpacklo_ps(r0, r1), _mm256_unpackhi_ps(r0, r1));
            let (t2, t3) = (_mm256_unpacklo_ps(r2, r3), _mm256_unpackhi_ps(r2, r3));
            let (t4, t5) = (_mm256_unpacklo_ps(r4, r5), _mm256_unpackhi_ps(r4, r5));
            let (t6, t7) = (_mm256_unpacklo_ps(r6, r7), _mm256_unpackhi_ps(r6, r7));
            let (u0, u1) = (_mm256_shuffle_ps::<0x44>(t0, t2), _mm256_shuffle_ps::<0xEE>(t0, t2));
            let (u2, u3) = (_mm256_shuffle_ps::<0x44>(t1, t3), _mm256_shuffle_ps::<0xEE>(t1, t3));
            let (u4, u5) = (_mm256_shuffle_ps::<0x44>(t4, t6), _mm256_shuffle_ps::<0xEE>(t4, t6));
            let (u6, u7) = (_mm256_shuffle_ps::<0x44>(t5, t7), _mm256_shuffle_ps::<0xEE>(t5, t7));
            let w = |j: usize, v: __m256| _mm256_storeu_ps(dst.add(j * pitch), v);
            w(0, _mm256_permute2f128_ps::<0x20>(u0, u4));
            w(1, _mm256_permute2f128_ps::<0x20>(u1, u5));
            w(2, _mm256_permute2f128_ps::<0x20>(u2, u6));
            w(3, _mm256_permute2f128_ps::<0x20>(u3, u7));
            w(4, _mm256_permute2f128_ps::<0x31>(u0, u4));
            w(5, _mm256_permute2f128_ps::<0x31>(u1, u5));
            w(6, _mm256_permute2f128_ps::<0x31>(u2, u6));
            w(7, _mm256_permute2f128_ps::<0x31>(u3, u7));
        }
    }
}

/// Asks the CPU to start loading the cache line at `at` into the level-2
/// cache (not L1: the lines of a block's columns lie a row's length
/// apart, often a multiple of 4 KiB, so they share L1 sets and would evict
/// each other before use). Only a hint: `at` is never dereferenced.
#[inline(always)]
fn prefetch_l2(at: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: PREFETCHT1 is part of SSE (every x86-64 CPU) and never
    // faults, whatever the address.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T1 }>(at.cast())
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = at;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transposed(r: usize, c: usize) -> Layout {
        Layout::contiguous(&[c, r]).permute(&[1, 0])
    }

    #[test]
    fn only_inputs_read_across_lines_are_blocked() {
        let (r, c) = (256, 512);
        let plain = Layout::contiguous(&[r, c]);
        // Contiguous, a broadcast row, every other column: row-major order serves.
        assert!(Blocks::plan(&[r, c], &[&plain, &plain], &[4, 4]).is_none());
        let row = Layout::contiguous(&[c]).broadcast_to(&[r, c]);
        assert!(Blocks::plan(&[r, c], &[&plain, &row], &[4, 4]).is_none());
        let wide = Layout::contiguous(&[r, 2 * c]).slice(&[0, 0], &[r, c], &[1, 2]);
        assert!(Blocks::plan(&[r, c], &[&wide], &[4]).is_none());
        // A transpose: blocks along its dense (outer) dimension.
        let t = transposed(r, c);
        let b = Blocks::plan(&[r, c], &[&plain, &t], &[4, 4]).expect("a transposed input is blocked");
        assert_eq!((b.k, b.rows, b.cols), (0, MAX_ROWS, TILE / MAX_ROWS));
        assert_eq!(b.bands() * b.band_len(), r * c);
        // Too small to matter.
        assert!(Blocks::plan(&[64, 64], &[&transposed(64, 64)], &[4]).is_none());
    }

    #[test]
    fn blocks_cover_every_position_once() {
        // A (5, 130, 33) space read through a (0, 2, 1) permutation: bands
        // of rows along the middle dimension, the last one short.
        let shape = [5, 130, 33];
        let l = Layout::contiguous(&[5, 33, 130]).permute(&[0, 2, 1]);
        let b = Blocks::plan(&shape, &[&l], &[8]).expect("blocked");
        assert_eq!(b.k, 1);
        let mut seen = vec![0u8; shape.iter().product()];
        for band in 0..b.bands() {
            b.for_each_block(band, |blk| {
                assert!(blk.rows * blk.cols <= TILE);
                for r in 0..blk.rows {
                    for c in 0..blk.cols {
                        seen[blk.at + r * blk.pitch + c] += 1;
                    }
                }
                // Where the input's element of the block's first position is.
                let (o, sk, sl) = b.origin(0, blk.at).expect("strided");
                let (i, j, k) = (blk.at / (130 * 33), blk.at / 33 % 130, blk.at % 33);
                assert_eq!((o, sk, sl), ((i * 33 * 130 + k * 130 + j) as isize, 1, 130));
            });
        }
        assert!(seen.iter().all(|&s| s == 1));
    }
}
