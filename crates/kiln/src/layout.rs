//! Strides and offsets. A view (transpose, broadcast, slice, most reshapes)
//! is a new [`Layout`] over the same buffer; nothing is copied.
//!
//! Kernels walk strided operands with [`for_each_block`], which visits the
//! iteration space in row-major order as runs along the innermost dimension,
//! after [`collapse`] has merged dimensions that are contiguous in every
//! operand (so a contiguous array is a single run).

use std::ops::Range;

use smallvec::SmallVec;

/// Dimensions a [`Dims`] or [`Strides`] holds inline: layouts of up to
/// this many dimensions are made and cloned without a heap allocation
/// (the per-call overhead of small kernels).
pub const INLINE_DIMS: usize = 4;

/// A layout's shape: a `SmallVec` of dimensions, inline up to
/// [`INLINE_DIMS`]. It derefs to `&[usize]`; build one with
/// `Dims::from_slice(&[2, 3])` or from a `Vec` with `.into()`.
pub type Dims = SmallVec<[usize; INLINE_DIMS]>;

/// A layout's strides, inline up to [`INLINE_DIMS`] like [`Dims`].
pub type Strides = SmallVec<[isize; INLINE_DIMS]>;

/// How an array's elements sit in its buffer.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Layout {
    /// Dimensions.
    pub shape: Dims,
    /// Step in elements between neighbours along each dimension (0 for a
    /// broadcast dimension, negative for a reversed slice).
    pub strides: Strides,
    /// Element index of the first element in the buffer.
    pub offset: usize,
}

/// Row-major strides of a shape. (Of an empty shape whose other
/// dimensions multiply past `isize::MAX`, the outer strides saturate:
/// no element is ever reached through them.)
pub fn contiguous_strides(shape: &[usize]) -> Strides {
    let mut strides = Strides::from_elem(0, shape.len());
    let mut acc = 1isize;
    for i in (0..shape.len()).rev() {
        strides[i] = acc;
        acc = acc.saturating_mul(isize::try_from(shape[i].max(1)).unwrap_or(isize::MAX));
    }
    strides
}

impl Layout {
    /// A row-major layout starting at element 0.
    pub fn contiguous(shape: &[usize]) -> Layout {
        Layout { shape: Dims::from_slice(shape), strides: contiguous_strides(shape), offset: 0 }
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        crate::shape::numel(&self.shape)
    }

    /// Number of dimensions.
    pub fn ndim(&self) -> usize {
        self.shape.len()
    }

    /// True when the elements are row-major and dense (any offset).
    pub fn is_contiguous(&self) -> bool {
        let mut acc = 1isize;
        for i in (0..self.shape.len()).rev() {
            if self.shape[i] != 1 && self.strides[i] != acc {
                return false;
            }
            acc = acc.saturating_mul(isize::try_from(self.shape[i]).unwrap_or(isize::MAX));
        }
        true
    }

    /// True when every element of the layout lies inside a buffer of `len`
    /// elements (and, for an empty layout, its offset is at most `len`):
    /// the invariant of every layout attached to a buffer. Exact for any
    /// shape, strides and offset (computed in `i128`); costs one pass over
    /// the dimensions.
    pub fn fits(&self, len: usize) -> bool {
        if self.shape.len() != self.strides.len() {
            return false;
        }
        if self.shape.contains(&0) {
            return self.offset <= len;
        }
        let (mut lo, mut hi) = (self.offset as i128, self.offset as i128);
        for (&d, &s) in self.shape.iter().zip(&self.strides) {
            let span = (d as i128 - 1) * s as i128;
            if span < 0 {
                lo += span;
            } else {
                hi += span;
            }
        }
        lo >= 0 && hi < len as i128
    }

    /// The buffer range of a contiguous layout.
    pub fn contiguous_range(&self) -> Option<Range<usize>> {
        self.is_contiguous().then(|| self.offset..self.offset + self.numel())
    }

    /// Permutes the dimensions (`perm` must be a permutation, checked by the caller).
    pub fn permute(&self, perm: &[usize]) -> Layout {
        Layout {
            shape: perm.iter().map(|&p| self.shape[p]).collect(),
            strides: perm.iter().map(|&p| self.strides[p]).collect(),
            offset: self.offset,
        }
    }

    /// Broadcasts to `shape` (compatibility checked by the caller): new and
    /// size-1 dimensions get stride 0.
    pub fn broadcast_to(&self, shape: &[usize]) -> Layout {
        let off = shape.len() - self.shape.len();
        let strides = (0..shape.len())
            .map(|i| if i < off || (self.shape[i - off] == 1 && shape[i] != 1) { 0 } else { self.strides[i - off] })
            .collect();
        Layout { shape: Dims::from_slice(shape), strides, offset: self.offset }
    }

    /// A strided slice: per dimension a normalized start, a length and a
    /// step (possibly negative).
    pub fn slice(&self, starts: &[usize], lens: &[usize], steps: &[isize]) -> Layout {
        let mut offset = self.offset as isize;
        let mut strides = Strides::with_capacity(self.ndim());
        for i in 0..self.ndim() {
            if lens[i] > 0 {
                offset += starts[i] as isize * self.strides[i];
            }
            // Taking two or more elements, the step times the stride is the
            // distance between two of them, inside the buffer: it cannot
            // saturate. A single element's stride is never used.
            strides.push(if lens[i] > 1 { self.strides[i].saturating_mul(steps[i]) } else { self.strides[i] });
        }
        if lens.contains(&0) {
            offset = self.offset as isize;
        }
        Layout { shape: Dims::from_slice(lens), strides, offset: offset as usize }
    }

    /// Reshape without copying when the strides allow it (NumPy's rule:
    /// each group of old dimensions that maps to a group of new ones must be
    /// contiguous within itself). `None` means a copy is needed.
    pub fn reshape(&self, shape: &[usize]) -> Option<Layout> {
        if self.is_contiguous() {
            return Some(Layout {
                shape: Dims::from_slice(shape),
                strides: contiguous_strides(shape),
                offset: self.offset,
            });
        }
        if self.numel() == 0 {
            return Some(Layout::contiguous(shape));
        }
        // Drop size-1 dims of the old layout; they carry no stride information.
        let (old_s, old_st): (Vec<usize>, Vec<isize>) =
            self.shape.iter().zip(&self.strides).filter(|(&d, _)| d != 1).map(|(&d, &s)| (d, s)).unzip();
        let mut new_strides = Strides::from_elem(0, shape.len());
        let (mut oi, mut ni) = (0usize, 0usize);
        while ni < shape.len() {
            if shape[ni] == 1 {
                new_strides[ni] = 0;
                ni += 1;
                continue;
            }
            if oi >= old_s.len() {
                return None;
            }
            // Grow groups until their element counts agree.
            let (o0, n0) = (oi, ni);
            let mut op = old_s[oi];
            let mut np = shape[ni];
            oi += 1;
            ni += 1;
            while op != np {
                if op < np {
                    if oi >= old_s.len() {
                        return None;
                    }
                    op *= old_s[oi];
                    oi += 1;
                } else {
                    if ni >= shape.len() {
                        return None;
                    }
                    np *= shape[ni];
                    ni += 1;
                }
            }
            // The old group must be contiguous in itself.
            for k in o0..oi - 1 {
                if Some(old_st[k]) != old_st[k + 1].checked_mul(old_s[k + 1] as isize) {
                    return None;
                }
            }
            // Assign strides to the new group from its innermost dimension.
            let mut st = old_st[oi - 1];
            for k in (n0..ni).rev() {
                new_strides[k] = st;
                // Past the group's outermost dimension the value is unused
                // (and may exceed the buffer): wrapping, not overflowing.
                st = st.wrapping_mul(shape[k] as isize);
            }
        }
        if oi != old_s.len() {
            return None;
        }
        Some(Layout { shape: Dims::from_slice(shape), strides: new_strides, offset: self.offset })
    }
}

/// Merges neighbouring dimensions that are contiguous with each other in
/// every operand and drops size-1 dimensions. Returns the collapsed shape
/// and one stride list per operand. An empty shape means a single element.
pub fn collapse(shape: &[usize], strides: &[&[isize]]) -> (Vec<usize>, Vec<Vec<isize>>) {
    let mut out_shape: Vec<usize> = Vec::with_capacity(shape.len());
    let mut out_strides: Vec<Vec<isize>> = vec![Vec::with_capacity(shape.len()); strides.len()];
    for (i, &d) in shape.iter().enumerate() {
        if d == 1 {
            continue;
        }
        let merge = !out_shape.is_empty()
            && strides
                .iter()
                .zip(&out_strides)
                .all(|(s, os)| Some(*os.last().unwrap()) == s[i].checked_mul(d as isize));
        if merge {
            // Saturates only for an empty layout, whose sizes nothing reads.
            let last = out_shape.last_mut().unwrap();
            *last = last.saturating_mul(d);
            for (s, os) in strides.iter().zip(out_strides.iter_mut()) {
                *os.last_mut().unwrap() = s[i];
            }
        } else {
            out_shape.push(d);
            for (s, os) in strides.iter().zip(out_strides.iter_mut()) {
                os.push(s[i]);
            }
        }
    }
    (out_shape, out_strides)
}

/// Visits the row-major positions `range` of an iteration space of `shape`
/// in runs along the innermost dimension. For each run, `f` receives the
/// linear position of its first element, each operand's buffer offset of that
/// element, and the run length. Operand `k` advances by `strides[k][last]`
/// within a run. Use [`collapse`] first so runs are as long as possible.
pub fn for_each_block<const K: usize>(
    shape: &[usize],
    strides: [&[isize]; K],
    offsets: [usize; K],
    range: Range<usize>,
    mut f: impl FnMut(usize, [isize; K], usize),
) {
    if range.is_empty() {
        return;
    }
    let nd = shape.len();
    if nd == 0 {
        f(range.start, offsets.map(|o| o as isize), 1);
        return;
    }
    let inner = shape[nd - 1];
    // Multi-index of range.start (on the stack for up to 16 dims: this runs
    // once per gathered tile).
    let mut small = [0usize; 16];
    let mut heap;
    let idx: &mut [usize] = if nd <= small.len() {
        &mut small[..nd]
    } else {
        heap = vec![0usize; nd];
        &mut heap
    };
    let mut rem = range.start;
    for d in (0..nd).rev() {
        idx[d] = rem % shape[d];
        rem /= shape[d];
    }
    let mut off = [0isize; K];
    for k in 0..K {
        off[k] = offsets[k] as isize + (0..nd).map(|d| idx[d] as isize * strides[k][d]).sum::<isize>();
    }
    let mut pos = range.start;
    while pos < range.end {
        let count = (inner - idx[nd - 1]).min(range.end - pos);
        f(pos, off, count);
        pos += count;
        if pos >= range.end {
            break;
        }
        // Advance the multi-index by `count` (to the start of the next row).
        for k in 0..K {
            off[k] += count as isize * strides[k][nd - 1];
        }
        idx[nd - 1] += count;
        let mut d = nd - 1;
        while idx[d] == shape[d] && d > 0 {
            for k in 0..K {
                off[k] -= shape[d] as isize * strides[k][d];
                off[k] += strides[k][d - 1];
            }
            idx[d] = 0;
            idx[d - 1] += 1;
            d -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offsets_of(l: &Layout) -> Vec<isize> {
        let mut v = vec![];
        let (shape, st) = collapse(&l.shape, &[&l.strides]);
        for_each_block(&shape, [&st[0]], [l.offset], 0..l.numel(), |_, o, n| {
            let s = *st[0].last().unwrap_or(&0);
            for i in 0..n {
                v.push(o[0] + i as isize * s);
            }
        });
        v
    }

    #[test]
    fn iterates_transposed_and_sliced() {
        let l = Layout::contiguous(&[2, 3]).permute(&[1, 0]);
        assert_eq!(offsets_of(&l), vec![0, 3, 1, 4, 2, 5]);
        let s = Layout::contiguous(&[5]).slice(&[4], &[3], &[-2]);
        assert_eq!(offsets_of(&s), vec![4, 2, 0]);
        let b = Layout::contiguous(&[3]).broadcast_to(&[2, 3]);
        assert_eq!(offsets_of(&b), vec![0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn partial_ranges() {
        let l = Layout::contiguous(&[3, 4]).permute(&[1, 0]);
        let all = offsets_of(&l);
        let mut part = vec![];
        for_each_block(&l.shape, [&l.strides], [0], 5..11, |p, o, n| {
            for i in 0..n {
                part.push((p + i, o[0] + i as isize * l.strides[1]));
            }
        });
        for (p, o) in part {
            assert_eq!(all[p], o);
        }
    }

    #[test]
    fn fits_is_exact() {
        let l = Layout::contiguous(&[2, 3]);
        assert!(l.fits(6) && !l.fits(5));
        let r = Layout::contiguous(&[5]).slice(&[4], &[3], &[-2]);
        assert!(r.fits(5) && !r.fits(4));
        let neg = Layout { shape: Dims::from_slice(&[3]), strides: Strides::from_slice(&[-1]), offset: 1 };
        assert!(!neg.fits(100), "reaches offset -1");
        let huge = Layout { shape: Dims::from_slice(&[usize::MAX]), strides: Strides::from_slice(&[1]), offset: 0 };
        assert!(!huge.fits(3));
        let wide = Layout { shape: Dims::from_slice(&[2]), strides: Strides::from_slice(&[isize::MAX]), offset: 0 };
        assert!(!wide.fits(isize::MAX as usize) && wide.fits(usize::MAX));
        let empty = Layout::contiguous(&[0, usize::MAX / 2, 4]);
        assert!(empty.fits(0) && empty.is_contiguous());
        assert!(Layout::contiguous(&[]).fits(1) && !Layout::contiguous(&[]).fits(0));
    }

    #[test]
    fn reshape_views() {
        let t = Layout::contiguous(&[4, 6]).permute(&[1, 0]);
        assert!(t.reshape(&[24]).is_none());
        let r = t.reshape(&[2, 3, 4]).unwrap();
        assert_eq!(r.strides[..], [3, 1, 6]);
        let s = Layout::contiguous(&[4, 6]).slice(&[0, 0], &[4, 3], &[1, 2]);
        assert_eq!(s.reshape(&[2, 2, 3]).unwrap().strides[..], [12, 6, 2]);
    }
}
