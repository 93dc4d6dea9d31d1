//! A second, independent model of kiln's views: a strided window over
//! row-major `f64` values, with every index computed in `i128` so the model
//! itself never overflows. The ops target runs each op on kiln and on this
//! model and compares.

use std::rc::Rc;

/// Arrays above this many elements are not materialized by the model.
pub const LIMIT: u128 = 1 << 16;

/// A strided view of row-major values.
#[derive(Clone, Debug)]
pub struct View {
    base: Rc<Vec<f64>>,
    offset: i128,
    strides: Vec<i128>,
    /// The view's shape.
    pub shape: Vec<usize>,
}

/// The number of elements of `shape`, without overflow.
pub fn numel(shape: &[usize]) -> u128 {
    shape.iter().fold(1u128, |n, &d| n.saturating_mul(d as u128))
}

/// Row-major strides of `shape`.
fn row_major(shape: &[usize]) -> Vec<i128> {
    let mut s = vec![0i128; shape.len()];
    let mut acc = 1i128;
    for i in (0..shape.len()).rev() {
        s[i] = acc;
        acc = acc.saturating_mul(shape[i] as i128);
    }
    s
}

impl View {
    /// `values` (row-major) with `shape`.
    pub fn new(values: Vec<f64>, shape: &[usize]) -> View {
        assert_eq!(numel(shape), values.len() as u128);
        View { base: Rc::new(values), offset: 0, strides: row_major(shape), shape: shape.to_vec() }
    }

    /// Number of elements.
    pub fn numel(&self) -> u128 {
        numel(&self.shape)
    }

    /// The values in row-major order, if there are at most [`LIMIT`].
    pub fn values(&self) -> Option<Vec<f64>> {
        let n = self.numel();
        if n > LIMIT {
            return None;
        }
        let mut out = Vec::with_capacity(n as usize);
        let mut idx = vec![0usize; self.shape.len()];
        for _ in 0..n {
            let off = self.offset + idx.iter().zip(&self.strides).map(|(&i, &s)| i as i128 * s).sum::<i128>();
            out.push(self.base[usize::try_from(off).expect("model offset in range")]);
            for a in (0..idx.len()).rev() {
                idx[a] += 1;
                if idx[a] < self.shape[a] {
                    break;
                }
                idx[a] = 0;
            }
        }
        Some(out)
    }

    /// A contiguous copy (None if too large to hold).
    pub fn materialize(&self) -> Option<View> {
        Some(View::new(self.values()?, &self.shape))
    }

    /// Axes permuted: result axis i is input axis `perm[i]`.
    pub fn permute(&self, perm: &[usize]) -> View {
        View {
            base: self.base.clone(),
            offset: self.offset,
            strides: perm.iter().map(|&p| self.strides[p]).collect(),
            shape: perm.iter().map(|&p| self.shape[p]).collect(),
        }
    }

    /// The view with a new shape whose leading axes broadcast (stride 0).
    pub fn broadcast(&self, shape: &[usize]) -> View {
        let lead = shape.len() - self.shape.len();
        let strides = (0..shape.len())
            .map(|i| if i < lead || self.shape[i - lead] != shape[i] { 0 } else { self.strides[i - lead] })
            .collect();
        View { base: self.base.clone(), offset: self.offset, strides, shape: shape.to_vec() }
    }

    /// Axis `axis` restricted to `len` elements from `start` by `step`.
    pub fn slice(&self, axis: usize, start: i128, len: usize, step: i128) -> View {
        let mut v = self.clone();
        if len > 0 {
            v.offset += start * self.strides[axis];
        }
        // A stride only matters between two elements; for fewer it could
        // overflow even i128 (a broadcast stride times a step near 2^63).
        v.strides[axis] = if len > 1 { self.strides[axis] * step } else { 0 };
        v.shape[axis] = len;
        v
    }

    /// The same elements with another shape (materializes unless contiguous).
    pub fn reshape(&self, shape: &[usize]) -> Option<View> {
        Some(View::new(self.values()?, shape))
    }
}

/// Python's slice normalization on an axis of length `n`: the start and the
/// number of elements (`step` is never 0).
pub fn slice_bounds(n: usize, start: Option<i128>, stop: Option<i128>, step: i128) -> (i128, usize) {
    let n = n as i128;
    let norm = |v: i128, lo: i128, hi: i128| {
        let v = if v < 0 { v + n } else { v };
        v.clamp(lo, hi)
    };
    let (start, stop) = if step > 0 {
        (start.map_or(0, |v| norm(v, 0, n)), stop.map_or(n, |v| norm(v, 0, n)))
    } else {
        (start.map_or(n - 1, |v| norm(v, -1, n - 1)), stop.map_or(-1, |v| norm(v, -1, n - 1)))
    };
    let len = if step > 0 {
        if stop > start {
            (stop - start + step - 1) / step
        } else {
            0
        }
    } else if start > stop {
        (start - stop + (-step) - 1) / (-step)
    } else {
        0
    };
    (start, len as usize)
}

/// Concatenates materialized views along `axis` (their other dims agree).
pub fn concatenate(views: &[View], axis: usize) -> Option<View> {
    let vals: Vec<Vec<f64>> = views.iter().map(View::values).collect::<Option<_>>()?;
    let mut shape = views[0].shape.clone();
    shape[axis] = views.iter().map(|v| v.shape[axis]).sum();
    if numel(&shape) > LIMIT {
        return None;
    }
    if numel(&shape) == 0 {
        return Some(View::new(vec![], &shape));
    }
    let outer: usize = shape[..axis].iter().product();
    let mut out = Vec::with_capacity(numel(&shape) as usize);
    for o in 0..outer {
        for (v, vals) in views.iter().zip(&vals) {
            let chunk: usize = v.shape[axis..].iter().product();
            out.extend_from_slice(&vals[o * chunk..(o + 1) * chunk]);
        }
    }
    Some(View::new(out, &shape))
}

/// Gathers along `axis` at `indices` (already normalized and in range).
pub fn take(x: &View, indices: &[usize], idx_shape: &[usize], axis: usize) -> Option<View> {
    let vals = x.values()?;
    let mut shape = x.shape[..axis].to_vec();
    shape.extend_from_slice(idx_shape);
    shape.extend_from_slice(&x.shape[axis + 1..]);
    if numel(&shape) > LIMIT {
        return None;
    }
    if numel(&shape) == 0 {
        return Some(View::new(vec![], &shape));
    }
    let outer: usize = x.shape[..axis].iter().product();
    let inner: usize = x.shape[axis + 1..].iter().product();
    let n = x.shape[axis];
    let mut out = Vec::with_capacity(numel(&shape) as usize);
    for o in 0..outer {
        for &i in indices {
            let at = (o * n + i) * inner;
            out.extend_from_slice(&vals[at..at + inner]);
        }
    }
    Some(View::new(out, &shape))
}
