//! Shape operations. `reshape` (when the strides allow), `transpose`,
//! `broadcast_to`, `slice`, `squeeze` and `expand_dims` are views: stride
//! changes over the same buffer, not copies. `concatenate`, `stack` and
//! `take` build new arrays.

use crate::array::Array;
use crate::error::{shape_str, Error, Result};
use crate::ops::result_dtype;
use crate::ops::{operand_as, Operand};
use crate::primitive::{Primitive, SliceAxis};
use crate::shape::{normalize_axes, normalize_axis};

/// Reshapes to `shape`; one dimension may be -1 (inferred).
pub fn reshape(x: &Array, shape: &[isize]) -> Result<Array> {
    if x.shape().iter().map(|&d| d as isize).eq(shape.iter().copied()) {
        return Ok(x.clone());
    }
    Array::from_op(Primitive::Reshape { shape: shape.to_vec() }, vec![x.clone()])
}

/// Reshapes to one dimension.
pub fn flatten(x: &Array) -> Result<Array> {
    reshape(x, &[-1])
}

/// Removes size-1 axes: the given ones (each must have size 1) or all.
/// (Under shapeless compilation the axes, not the resulting shape, are
/// kept; squeezing all size-1 axes fails at new shapes whose size-1 axes
/// are other ones.)
pub fn squeeze(x: &Array, axes: Option<&[isize]>) -> Result<Array> {
    let s = x.shape();
    let (drop, all) = match axes {
        Some(a) => (normalize_axes("squeeze", a, s.len())?, false),
        None => ((0..s.len()).filter(|&i| s[i] == 1).collect(), true),
    };
    if drop.is_empty() && !all {
        return Ok(x.clone());
    }
    Array::from_op(Primitive::Squeeze { axes: drop, all }, vec![x.clone()])
}

/// Inserts size-1 axes at the given positions of the result.
pub fn expand_dims(x: &Array, axes: &[isize]) -> Result<Array> {
    let out_nd = x.ndim() + axes.len();
    let a = normalize_axes("expand_dims", axes, out_nd)?;
    if a.is_empty() {
        return Ok(x.clone());
    }
    Array::from_op(Primitive::ExpandDims { axes: a }, vec![x.clone()])
}

/// Reverses the axes (the matrix transpose for 2-D arrays).
pub fn transpose(x: &Array) -> Result<Array> {
    let perm: Vec<isize> = (0..x.ndim() as isize).rev().collect();
    permute(x, &perm)
}

/// Permutes the axes: result axis `i` is input axis `perm[i]`.
pub fn permute(x: &Array, perm: &[isize]) -> Result<Array> {
    let mut p = Vec::with_capacity(perm.len());
    for &a in perm {
        p.push(normalize_axis("transpose", a, x.ndim())?);
    }
    if p.iter().enumerate().all(|(i, &a)| i == a) && p.len() == x.ndim() {
        return Ok(x.clone());
    }
    Array::from_op(Primitive::Transpose { perm: p }, vec![x.clone()])
}

/// Swaps two axes.
pub fn swapaxes(x: &Array, a: isize, b: isize) -> Result<Array> {
    let (a, b) = (normalize_axis("swapaxes", a, x.ndim())?, normalize_axis("swapaxes", b, x.ndim())?);
    let mut perm: Vec<isize> = (0..x.ndim() as isize).collect();
    perm.swap(a, b);
    permute(x, &perm)
}

/// Broadcasts to `shape` (a view with stride 0 on broadcast axes).
pub fn broadcast_to(x: &Array, shape: &[usize]) -> Result<Array> {
    if x.shape() == shape {
        return Ok(x.clone());
    }
    Array::from_op(Primitive::BroadcastTo { shape: shape.to_vec() }, vec![x.clone()])
}

/// Broadcasts several arrays to their common shape. Each result depends on
/// the shapes of all the arrays, so a shapeless compiled function follows
/// whichever of them broadcasts at the new shapes.
pub fn broadcast_arrays(xs: &[Array]) -> Result<Vec<Array>> {
    if xs.len() < 2 {
        return Ok(xs.to_vec());
    }
    (0..xs.len())
        .map(|i| {
            let mut ins = vec![xs[i].clone()];
            ins.extend(xs.iter().enumerate().filter(|&(j, _)| j != i).map(|(_, x)| x.clone()));
            Array::from_op(Primitive::BroadcastLike, ins)
        })
        .collect()
}

/// A strided slice of the leading axes, as Python's `x[a:b:s, ...]`.
/// Negative starts/stops count from the end; out-of-range bounds clamp.
pub fn slice(x: &Array, axes: &[SliceAxis]) -> Result<Array> {
    Array::from_op(Primitive::Slice { axes: axes.to_vec() }, vec![x.clone()])
}

/// `x[start:stop:step]` along one axis.
pub fn slice_axis(x: &Array, axis: isize, start: Option<isize>, stop: Option<isize>, step: isize) -> Result<Array> {
    let ax = normalize_axis("slice", axis, x.ndim())?;
    let mut axes = vec![SliceAxis { start: None, stop: None, step: 1 }; ax + 1];
    axes[ax] = SliceAxis { start, stop, step };
    slice(x, &axes)
}

/// Joins arrays along an existing axis (dtypes are promoted).
pub fn concatenate(xs: &[Array], axis: isize) -> Result<Array> {
    let first = xs.first().ok_or(Error::Invalid { op: "concatenate", msg: "needs at least one array".into() })?;
    let ax = normalize_axis("concatenate", axis, first.ndim())?;
    let ops: Vec<Operand> = xs.iter().map(Operand::from).collect();
    let dt = result_dtype(&ops.iter().collect::<Vec<_>>());
    let dev = first.device();
    let ins = ops.into_iter().map(|o| operand_as(o, dt, dev)).collect::<Result<Vec<_>>>()?;
    if ins.len() == 1 {
        return Ok(ins[0].clone());
    }
    Array::from_op(Primitive::Concatenate { axis: ax }, ins)
}

/// Joins arrays of one shape along a new axis.
pub fn stack(xs: &[Array], axis: isize) -> Result<Array> {
    let first = xs.first().ok_or(Error::Invalid { op: "stack", msg: "needs at least one array".into() })?;
    if let Some(bad) = xs.iter().find(|x| x.shape() != first.shape()) {
        return Err(Error::Shape {
            op: "stack",
            msg: format!(
                "all arrays must have the same shape, got {} and {}",
                shape_str(first.shape()),
                shape_str(bad.shape())
            ),
        });
    }
    let ax = normalize_axis("stack", axis, first.ndim() + 1)? as isize;
    let expanded = xs.iter().map(|x| expand_dims(x, &[ax])).collect::<Result<Vec<_>>>()?;
    concatenate(&expanded, ax)
}

/// Splits into `sections` equal parts along `axis` (the size must divide
/// evenly). The parts keep the count, not the bounds, so under shapeless
/// compilation they follow a new size of the axis. (`split_at` takes literal
/// indices, which stay as given.)
pub fn split(x: &Array, sections: usize, axis: isize) -> Result<Vec<Array>> {
    let ax = normalize_axis("split", axis, x.ndim())?;
    let n = x.shape()[ax];
    if sections == 0 || !n.is_multiple_of(sections) {
        return Err(Error::Shape {
            op: "split",
            msg: format!("axis {ax} of shape {} does not split into {sections} equal sections", shape_str(x.shape())),
        });
    }
    if sections == 1 {
        return Ok(vec![x.clone()]);
    }
    // The list of parts is as long as asked (an empty axis splits into any
    // number of empty parts): reserved fallibly, so an absurd count is an
    // error rather than an abort.
    let bytes = sections.saturating_mul(std::mem::size_of::<Array>());
    crate::memory::within_limit("split", bytes)?;
    let mut parts = Vec::new();
    parts.try_reserve_exact(sections).map_err(|_| Error::OutOfMemory { op: "split", bytes })?;
    for index in 0..sections {
        parts.push(Array::from_op(Primitive::SplitSection { axis: ax, sections, index }, vec![x.clone()])?);
    }
    Ok(parts)
}

/// Splits along `axis` before each of the given indices (ascending).
pub fn split_at(x: &Array, indices: &[usize], axis: isize) -> Result<Vec<Array>> {
    let ax = normalize_axis("split", axis, x.ndim())?;
    let n = x.shape()[ax];
    let mut bounds = vec![0usize];
    bounds.extend(indices.iter().map(|&i| i.min(n)));
    bounds.push(n);
    bounds
        .windows(2)
        .map(|w| slice_axis(x, ax as isize, Some(w[0] as isize), Some(w[1].max(w[0]) as isize), 1))
        .collect()
}

/// Gathers elements of `x` along `axis` at integer `indices` (negative
/// indices count from the end; out-of-range ones are an error at evaluation).
pub fn take(x: &Array, indices: &Array, axis: isize) -> Result<Array> {
    let ax = normalize_axis("take", axis, x.ndim())?;
    Array::from_op(Primitive::Take { axis: ax }, vec![x.clone(), indices.clone()])
}

/// A contiguous row-major copy of `x` (materializes a transposed, sliced or
/// broadcast view, so later kernels read it sequentially).
pub fn contiguous(x: &Array) -> Result<Array> {
    Array::from_op(Primitive::Copy, vec![x.clone()])
}

impl Array {
    /// See [`reshape`].
    pub fn reshape(&self, shape: &[isize]) -> Result<Array> {
        reshape(self, shape)
    }
    /// See [`transpose`].
    pub fn t(&self) -> Result<Array> {
        transpose(self)
    }
    /// See [`permute`].
    pub fn permute(&self, perm: &[isize]) -> Result<Array> {
        permute(self, perm)
    }
    /// See [`broadcast_to`].
    pub fn broadcast_to(&self, shape: &[usize]) -> Result<Array> {
        broadcast_to(self, shape)
    }
    /// See [`flatten`].
    pub fn flatten(&self) -> Result<Array> {
        flatten(self)
    }
}
