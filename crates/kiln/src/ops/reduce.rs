//! Reductions over any set of axes (with `keepdims`), arg-reductions, and
//! the composite statistics built from them (`var`, `std`, `logsumexp`,
//! `softmax`).
//!
//! Dtypes: `sum` and `prod` keep the dtype (bool gives `i32`; integers
//! wrap on overflow; `f16`/`bf16` accumulate in `f32`); `mean`, `var`, `std`
//! and `logsumexp` give a float (`f32` for integer input); `max`/`min` keep
//! the dtype and propagate NaN; `all`/`any` give bool; `argmax`/`argmin`
//! give `u32` (the first index on ties; NaN counts as the extremum).
//! Reducing an empty axis gives the identity (0 for sum, 1 for prod, NaN
//! for mean, true for all, false for any); max, min, argmax and argmin of an
//! empty axis are errors.
//!
//! Every `f16`/`bf16` reduction (`sum`, `mean`, `prod`, `var`, `std`,
//! `logsumexp`, softmax's sum) accumulates in `f32` and rounds once at the
//! end, eagerly and in compiled code alike, as MLX and NumPy do. The order
//! in which a reduction combines its elements (a fixed pairwise tree over
//! each row) is documented in the CPU kernel's module
//! (the CPU backend's `reduce` module); compiled code folds in that same order, so on
//! special values (signed zeros, infinities, NaN, products that overflow)
//! compiled and eager results agree bit for bit. A reduction over no axes,
//! or over size-1 axes, is the reduction of one element (`logsumexp(-0.0)`
//! is `+0.0`, as `-0 + ln(1)`).

use crate::array::Array;
use crate::error::Result;
use crate::ops::binary::sub;
use crate::ops::shape::reshape;
use crate::primitive::{ArgReduceOp, Primitive, ReduceOp};
use crate::shape::{normalize_axes, normalize_axis};

/// Which axes to reduce.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Axes {
    /// Every axis.
    All,
    /// The listed axes (negative count from the end).
    Some(Vec<isize>),
}

impl From<isize> for Axes {
    fn from(a: isize) -> Axes {
        Axes::Some(vec![a])
    }
}

impl From<i32> for Axes {
    fn from(a: i32) -> Axes {
        Axes::Some(vec![a as isize])
    }
}

impl From<&[isize]> for Axes {
    fn from(a: &[isize]) -> Axes {
        Axes::Some(a.to_vec())
    }
}

impl From<Vec<isize>> for Axes {
    fn from(a: Vec<isize>) -> Axes {
        Axes::Some(a)
    }
}

impl<const N: usize> From<[isize; N]> for Axes {
    fn from(a: [isize; N]) -> Axes {
        Axes::Some(a.to_vec())
    }
}

impl Axes {
    fn resolve(&self, op: &'static str, ndim: usize) -> Result<Vec<usize>> {
        match self {
            Axes::All => Ok((0..ndim).collect()),
            Axes::Some(a) => normalize_axes(op, a, ndim),
        }
    }
}

/// Records a reduction.
pub fn reduce(op: ReduceOp, x: &Array, axes: impl Into<Axes>, keepdims: bool) -> Result<Array> {
    let axes = axes.into().resolve(op.name(), x.ndim())?;
    Array::from_op(Primitive::Reduce { op, axes, keepdims }, vec![x.clone()])
}

macro_rules! reduce_fns {
    ($($name:ident => $op:ident: $doc:literal),* $(,)?) => {
        $(
            #[doc = $doc]
            pub fn $name(x: &Array, axes: impl Into<Axes>, keepdims: bool) -> Result<Array> {
                reduce(ReduceOp::$op, x, axes, keepdims)
            }
        )*
        impl Array {
            $(
                #[doc = $doc]
                pub fn $name(&self, axes: impl Into<Axes>, keepdims: bool) -> Result<Array> {
                    reduce(ReduceOp::$op, self, axes, keepdims)
                }
            )*
        }
    };
}

reduce_fns! {
    sum => Sum: "Sum over `axes`.",
    mean => Mean: "Mean over `axes` (divides by the number of reduced elements at run time).",
    prod => Prod: "Product over `axes`.",
    max => Max: "Maximum over `axes` (NaN propagates).",
    min => Min: "Minimum over `axes` (NaN propagates).",
    all => All: "True where every reduced element is nonzero.",
    any => Any: "True where some reduced element is nonzero.",
}

fn arg_reduce(op: ArgReduceOp, x: &Array, axis: Option<isize>, keepdims: bool) -> Result<Array> {
    let name = if op == ArgReduceOp::ArgMax { "argmax" } else { "argmin" };
    match axis {
        Some(a) => {
            let axis = normalize_axis(name, a, x.ndim())?;
            Array::from_op(Primitive::ArgReduce { op, axis, keepdims }, vec![x.clone()])
        }
        None => {
            let flat = reshape(x, &[-1])?;
            let r = Array::from_op(Primitive::ArgReduce { op, axis: 0, keepdims: false }, vec![flat])?;
            if keepdims {
                reshape(&r, &vec![1; x.ndim()])
            } else {
                Ok(r)
            }
        }
    }
}

/// Index of the maximum along `axis` (over the flattened array if `None`).
pub fn argmax(x: &Array, axis: Option<isize>, keepdims: bool) -> Result<Array> {
    arg_reduce(ArgReduceOp::ArgMax, x, axis, keepdims)
}

/// Index of the minimum along `axis` (over the flattened array if `None`).
pub fn argmin(x: &Array, axis: Option<isize>, keepdims: bool) -> Result<Array> {
    arg_reduce(ArgReduceOp::ArgMin, x, axis, keepdims)
}

/// Variance over `axes` with `ddof` delta degrees of freedom
/// (`sum((x - mean)^2) / max(n - ddof, 0)`, so `ddof >= n` gives inf or NaN
/// as in NumPy), computed in one pass over `x`.
pub fn var(x: &Array, axes: impl Into<Axes>, keepdims: bool, ddof: usize) -> Result<Array> {
    reduce(ReduceOp::Var { ddof }, x, axes, keepdims)
}

/// Standard deviation: `sqrt(var(x, axes, keepdims, ddof))`.
pub fn std(x: &Array, axes: impl Into<Axes>, keepdims: bool, ddof: usize) -> Result<Array> {
    let axes = axes.into().resolve("std", x.ndim())?;
    Array::from_op(Primitive::Reduce { op: ReduceOp::Var { ddof }, axes, keepdims }, vec![x.clone()])?.sqrt()
}

/// `log(sum(exp(x)))` over `axes`, computed stably in one pass with a
/// running maximum (all -inf gives -inf, +inf gives +inf, an empty axis
/// gives -inf).
pub fn logsumexp(x: &Array, axes: impl Into<Axes>, keepdims: bool) -> Result<Array> {
    reduce(ReduceOp::LogSumExp, x, axes, keepdims)
}

/// Softmax along `axis`: `exp(x - max) * (1 / sum(exp(x - max)))`, the
/// reciprocal taken once per row (as MLX and PyTorch compute it: a
/// division per element costs several times a product, and its result
/// differs from this one by about an ulp).
pub fn softmax(x: &Array, axis: isize) -> Result<Array> {
    let ax = normalize_axis("softmax", axis, x.ndim())?;
    let xf = x.astype(x.dtype().to_float())?;
    if x.shape()[ax] == 0 {
        // No max to shift by. This form is softmax at any size, so a
        // shapeless trace on an empty axis stays right at other sizes.
        return (&xf - &logsumexp(&xf, axis, true)?)?.exp();
    }
    let m = max(&xf, axis, true)?;
    let e = sub(&xf, &m)?.exp()?;
    let s = sum(&e, axis, true)?;
    e * s.reciprocal()?
}

impl Array {
    /// See [`argmax`].
    pub fn argmax(&self, axis: Option<isize>, keepdims: bool) -> Result<Array> {
        argmax(self, axis, keepdims)
    }
    /// See [`argmin`].
    pub fn argmin(&self, axis: Option<isize>, keepdims: bool) -> Result<Array> {
        argmin(self, axis, keepdims)
    }
    /// See [`softmax`].
    pub fn softmax(&self, axis: isize) -> Result<Array> {
        softmax(self, axis)
    }
    /// See [`logsumexp`].
    pub fn logsumexp(&self, axes: impl Into<Axes>, keepdims: bool) -> Result<Array> {
        logsumexp(self, axes, keepdims)
    }
    /// See [`var`].
    pub fn var(&self, axes: impl Into<Axes>, keepdims: bool, ddof: usize) -> Result<Array> {
        var(self, axes, keepdims, ddof)
    }
    /// See [`std()`].
    pub fn std(&self, axes: impl Into<Axes>, keepdims: bool, ddof: usize) -> Result<Array> {
        std(self, axes, keepdims, ddof)
    }
}
