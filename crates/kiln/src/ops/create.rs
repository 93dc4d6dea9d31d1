//! Creating arrays: constants of a shape, ranges and identity matrices.
//! `zeros`, `ones` and `full` are a broadcast view of one scalar, so they
//! cost no memory until something is computed from them.

use crate::array::Array;
use crate::device::Spec;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::ops::shape::{broadcast_to, concatenate, expand_dims};
use crate::ops::{binary, Scalar};
use crate::primitive::Primitive;
use crate::shape::check_size;

/// An array of `shape` filled with `value`, in `dtype` (a [`DType`], or
/// [`DType::on`] a device: see [`Spec`]).
pub fn full(shape: &[usize], value: impl Into<Scalar>, dtype: impl Into<Spec>) -> Result<Array> {
    let value = value.into();
    dtype.into().make(|dtype| {
        check_size("full", shape, dtype)?;
        broadcast_to(&value.to_array(dtype, crate::device::default_device()), shape)
    })
}

/// An array of zeros (on a device as [`full`]).
pub fn zeros(shape: &[usize], dtype: impl Into<Spec>) -> Result<Array> {
    full(shape, 0i32, dtype)
}

/// An array of ones (on a device as [`full`]).
pub fn ones(shape: &[usize], dtype: impl Into<Spec>) -> Result<Array> {
    full(shape, 1i32, dtype)
}

/// `value` with the shape and dtype of `x` (follows `x`'s shape in shapeless
/// compiled functions).
pub fn full_like(x: &Array, value: impl Into<Scalar>) -> Result<Array> {
    Array::from_op(Primitive::BroadcastLike, vec![value.into().to_array(x.dtype(), x.device()), x.clone()])
}

/// Zeros with the shape and dtype of `x`.
pub fn zeros_like(x: &Array) -> Result<Array> {
    full_like(x, 0i32)
}

/// Ones with the shape and dtype of `x`.
pub fn ones_like(x: &Array) -> Result<Array> {
    full_like(x, 1i32)
}

/// Values `start, start + step, ...` up to but excluding `stop`, as NumPy's
/// `arange` (`ceil((stop - start) / step)` elements; on a device as [`full`]).
pub fn arange(start: f64, stop: f64, step: f64, dtype: impl Into<Spec>) -> Result<Array> {
    dtype.into().make(|dtype| arange_in(start, stop, step, dtype))
}

fn arange_in(start: f64, stop: f64, step: f64, dtype: DType) -> Result<Array> {
    if step == 0.0 || !step.is_finite() || !start.is_finite() || !stop.is_finite() {
        return Err(Error::Invalid {
            op: "arange",
            msg: format!("start, stop and step must be finite and step nonzero, got {start}, {stop}, {step}"),
        });
    }
    let n = ((stop - start) / step).ceil().max(0.0);
    if n >= usize::MAX as f64 {
        return Err(Error::Overflow { op: "arange", shape: vec![usize::MAX] });
    }
    Array::from_op(Primitive::Arange { start, step, len: n as usize, dtype }, vec![])
}

/// `num` evenly spaced values from `start` to `stop` inclusive, as NumPy's
/// `linspace`: element `i` is `start + i * step` computed in `f64` (with
/// `step = (stop - start) / (num - 1)`), and the last element is exactly
/// `stop` (on a device as [`full`]).
pub fn linspace(start: f64, stop: f64, num: usize, dtype: impl Into<Spec>) -> Result<Array> {
    dtype.into().make(|dtype| linspace_in(start, stop, num, dtype))
}

fn linspace_in(start: f64, stop: f64, num: usize, dtype: DType) -> Result<Array> {
    if !dtype.is_float() {
        return Err(Error::DType { op: "linspace", dtype, msg: "linspace produces a float dtype".into() });
    }
    if num < 2 {
        return Array::from_op(Primitive::Arange { start, step: 0.0, len: num, dtype }, vec![]);
    }
    let step = (stop - start) / (num - 1) as f64;
    let head = Array::from_op(Primitive::Arange { start, step, len: num - 1, dtype }, vec![])?;
    // `start + (num - 1) * step` can miss `stop` by an ulp: append `stop` itself.
    let last =
        crate::with_dtype!(dtype, T => Array::from_vec(vec![<T as crate::dtype::Element>::from_f64(stop)], &[1])?);
    concatenate(&[head, last], 0)
}

/// An `n x m` matrix with ones on the `k`-th diagonal (k > 0 above the
/// main one; on a device as [`full`]).
pub fn eye(n: usize, m: usize, k: isize, dtype: impl Into<Spec>) -> Result<Array> {
    dtype.into().make(|dtype| eye_in(n, m, k, dtype))
}

fn eye_in(n: usize, m: usize, k: isize, dtype: DType) -> Result<Array> {
    check_size("eye", &[n, m], dtype)?;
    if n == 0 || m == 0 {
        // Empty: no row and column ranges to compare.
        return zeros(&[n, m], dtype);
    }
    let rows = expand_dims(&arange(0.0, n as f64, 1.0, DType::I64)?, &[1])?;
    let cols = expand_dims(&arange(0.0, m as f64, 1.0, DType::I64)?, &[0])?;
    let diag = binary::equal(&binary::sub(&cols, &rows)?, k as i64)?;
    diag.astype(dtype)
}
