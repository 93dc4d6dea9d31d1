//! Kernels that move elements between positions: concatenate, take, arange.
//!
//! Both gathers fill the output in row-major order through
//! [`strided::fill`](crate::backend::cpu::strided::fill) (parallel above its
//! threshold) and copy whole runs from each source: a run is a stretch of the
//! output that comes from one contiguous-in-row-major-order range of one
//! source. Sources may be any strided view.

use crate::host_vec::HostVec;
use std::mem::MaybeUninit;

use crate::array::Data;
use crate::backend::cpu::strided::fill;
use crate::buffer::elem_type;
use crate::buffer::Buffer;
use crate::dtype::{DType, Element};
use crate::error::{Error, Result};
use crate::layout::{collapse, for_each_block, Layout};

/// A source layout collapsed once, ready to copy row-major ranges from.
struct Source<'a, T> {
    src: &'a [T],
    /// Collapsed shape and strides.
    shape: Vec<usize>,
    strides: Vec<isize>,
    /// Stride of the innermost collapsed dimension.
    inner: isize,
}

impl<'a, T: Element> Source<'a, T> {
    fn new(src: &'a [T], shape: &[usize], strides: &[isize]) -> Self {
        let (cs, st) = collapse(shape, &[strides]);
        let strides = st.into_iter().next().unwrap_or_default();
        let inner = strides.last().copied().unwrap_or(0);
        Source { src, shape: cs, strides, inner }
    }

    /// True when the collapsed layout is one dense run (or a single element).
    fn dense(&self) -> bool {
        self.shape.len() <= 1 && (self.shape.is_empty() || self.inner == 1)
    }

    /// Writes the row-major elements `range` of the source (whose first
    /// element sits at buffer offset `offset`) to `dst`.
    fn copy(&self, offset: usize, range: std::ops::Range<usize>, dst: &mut [MaybeUninit<T>]) {
        debug_assert_eq!(dst.len(), range.len());
        if self.dense() {
            let s = &self.src[offset + range.start..offset + range.end];
            for (d, v) in dst.iter_mut().zip(s) {
                d.write(*v);
            }
            return;
        }
        let start = range.start;
        let inner = self.inner;
        for_each_block(&self.shape, [&self.strides], [offset], range, |pos, o, cnt| {
            let out = &mut dst[pos - start..pos - start + cnt];
            if inner == 1 {
                let s = &self.src[o[0] as usize..o[0] as usize + cnt];
                for (d, v) in out.iter_mut().zip(s) {
                    d.write(*v);
                }
            } else {
                for (i, d) in out.iter_mut().enumerate() {
                    d.write(self.src[(o[0] + i as isize * inner) as usize]);
                }
            }
        });
    }
}

fn concat_typed<T: Element>(xs: &[&Data], axis: usize, shape: &[usize]) -> Result<HostVec<T>> {
    let n: usize = shape.iter().product();
    if n == 0 {
        return Ok(HostVec::new());
    }
    let inner: usize = shape[axis + 1..].iter().product();
    let row: usize = shape[axis..].iter().product();
    // Per input: its source, its offset, its segment length in an output row
    // and where that segment starts in the row.
    let mut parts = Vec::with_capacity(xs.len());
    let mut at = 0usize;
    for x in xs {
        let src = x.buffer().as_slice::<T>().expect("concatenate inputs share the output dtype");
        debug_assert!(x.layout().fits(src.len()), "concatenate: an input's layout reaches outside its buffer");
        let seg = x.layout().shape[axis] * inner;
        if seg > 0 {
            parts.push((Source::new(src, &x.layout().shape, &x.layout().strides), x.layout().offset, seg, at));
        }
        at += seg;
    }
    fill("concatenate", n, |start, out| {
        let end = start + out.len();
        let mut pos = start;
        while pos < end {
            let (o, r) = (pos / row, pos % row);
            // The segment holding column r (segments are few; a scan is fine).
            let k = parts.partition_point(|p| p.3 + p.2 <= r);
            let (src, off, seg, begin) = &parts[k];
            let q = o * seg + (r - begin);
            let cnt = (begin + seg - r).min(end - pos);
            src.copy(*off, q..q + cnt, &mut out[pos - start..pos - start + cnt]);
            pos += cnt;
        }
    })
}

/// Concatenates `xs` (one dtype, any layouts) along `axis` into a contiguous
/// array of `shape`.
pub fn concatenate(xs: &[&Data], axis: usize, shape: &[usize]) -> Result<Buffer> {
    let first = xs.first().ok_or(Error::Invalid { op: "concatenate", msg: "needs at least one array".into() })?;
    if let Some(bad) = xs.iter().find(|x| x.buffer().dtype() != first.buffer().dtype()) {
        return Err(Error::Invalid {
            op: "concatenate",
            msg: format!("inputs have different dtypes {} and {}", first.buffer().dtype(), bad.buffer().dtype()),
        });
    }
    crate::with_buffer!(first.buffer(), v => {
        let t = elem_type(v);
        concat_with(t, xs, axis, shape)
    })
}

fn concat_with<T: Element>(
    _: std::marker::PhantomData<T>,
    xs: &[&Data],
    axis: usize,
    shape: &[usize],
) -> Result<Buffer> {
    Ok(Buffer::from_vec(concat_typed::<T>(xs, axis, shape)?))
}

/// The indices normalized against `dim` (negative ones count from the
/// end), or an error naming the first out-of-range one.
fn normalized_indices(idx: &Data, axis: usize, dim: usize) -> Result<HostVec<usize>> {
    let mut out = crate::memory::try_vec::<usize>("take", idx.layout().numel())?;
    // Dimensions fit isize (shape rules check), so `dim` fits i64.
    let n = dim as i64;
    crate::with_buffer!(idx.buffer(), v => {
        for &x in &crate::backend::cpu::strided::gather("take", v, idx.layout())? {
            let i = x.to_i64();
            let j = if i < 0 { i + n } else { i };
            if !(0..n).contains(&j) {
                return Err(Error::Invalid {
                    op: "take",
                    msg: format!(
                        "index {i} is out of bounds for axis {axis} with size {dim} (valid indices are {}..{})",
                        -n, n
                    ),
                });
            }
            out.push(j as usize);
        }
    });
    Ok(out)
}

fn take_typed<T: Element>(x: &Data, idx: &[usize], axis: usize, shape: &[usize]) -> Result<HostVec<T>> {
    let src = x.buffer().as_slice::<T>().expect("take output dtype is the input dtype");
    let l: &Layout = x.layout();
    debug_assert!(l.fits(src.len()), "take: the layout reaches outside its buffer");
    let n: usize = shape.iter().product();
    if n == 0 {
        return Ok(HostVec::new());
    }
    let ni = idx.len();
    let inner: usize = l.shape[axis + 1..].iter().product();
    let axis_stride = l.strides[axis];
    let inner_src = Source::new(src, &l.shape[axis + 1..], &l.strides[axis + 1..]);
    let (outer_shape, outer_strides) = (&l.shape[..axis], &l.strides[..axis]);
    // Buffer offset of outer position `o` (row-major over the leading axes).
    let outer_offset = |mut o: usize| -> isize {
        let mut off = l.offset as isize;
        for d in (0..outer_shape.len()).rev() {
            off += (o % outer_shape[d]) as isize * outer_strides[d];
            o /= outer_shape[d];
        }
        off
    };
    fill("take", n, |start, out| {
        let end = start + out.len();
        let mut pos = start;
        while pos < end {
            let (rowi, mut r) = (pos / inner, pos % inner);
            let (o, mut j) = (rowi / ni, rowi % ni);
            let ooff = outer_offset(o);
            while j < ni && pos < end {
                let base = ooff + idx[j] as isize * axis_stride;
                let cnt = (inner - r).min(end - pos);
                let dst = &mut out[pos - start..pos - start + cnt];
                if inner == 1 {
                    dst[0].write(src[base as usize]);
                } else {
                    inner_src.copy(base as usize, r..r + cnt, dst);
                }
                pos += cnt;
                r = 0;
                j += 1;
            }
        }
    })
}

fn take_with<T: Element>(
    _: std::marker::PhantomData<T>,
    x: &Data,
    idx: &[usize],
    axis: usize,
    shape: &[usize],
) -> Result<Buffer> {
    Ok(Buffer::from_vec(take_typed::<T>(x, idx, axis, shape)?))
}

/// Gathers `x` along `axis` at the integer indices `idx` (any integer dtype,
/// any layout; negative indices count from the end). The output has `shape`
/// = `x.shape[..axis] + idx.shape + x.shape[axis+1..]`. An index outside
/// `-size..size` is an error naming it, the axis and the axis size.
pub fn take(x: &Data, idx: &Data, axis: usize, shape: &[usize]) -> Result<Buffer> {
    if !idx.buffer().dtype().is_int() {
        return Err(Error::DType {
            op: "take",
            dtype: idx.buffer().dtype(),
            msg: "indices must be an integer array".into(),
        });
    }
    if shape.contains(&0) {
        // An empty result reads no index (and allocates nothing).
        return Ok(crate::with_dtype!(x.buffer().dtype(), T => Buffer::from_vec(Vec::<T>::new())));
    }
    let dim = x.layout().shape[axis];
    let idx = normalized_indices(idx, axis, dim)?;
    crate::with_buffer!(x.buffer(), v => {
        let t = elem_type(v);
        take_with(t, x, &idx, axis, shape)
    })
}

/// `start + i * step` for `i` in `0..len`, computed in `f64` and converted
/// to `dtype`.
pub fn arange(start: f64, step: f64, len: usize, dtype: DType) -> Result<Buffer> {
    Ok(crate::with_dtype!(dtype, T => Buffer::from_vec(fill("arange", len, |s, out: &mut [MaybeUninit<T>]| {
        for (i, d) in out.iter_mut().enumerate() {
            d.write(<T as Element>::from_f64(start + (s + i) as f64 * step));
        }
    })?)))
}
