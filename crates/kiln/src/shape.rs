//! Shapes: element counts, axis normalization and NumPy broadcasting.

use crate::dtype::DType;
use crate::error::{shape_str, Error, Result};

/// Number of elements of a shape, or an `Overflow` error naming `op`.
pub fn numel_checked(op: &'static str, shape: &[usize]) -> Result<usize> {
    shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| Error::Overflow { op, shape: shape.to_vec() })
}

/// Checks that an array of `shape` and `dtype` can exist: the product of
/// its nonzero dimensions, in bytes, fits `isize` (Rust's limit for one
/// allocation). Counting only nonzero dimensions holds empty arrays to the
/// same bound, so that for every array the product of any of its
/// dimensions, and every offset and stride of its layouts, is
/// representable. Returns the element count. Every shape rule ends here
/// ([`Primitive::infer`](crate::primitive::Primitive::infer)), so an op
/// whose output would be too large fails when it is built.
/// An element count that overflows `usize` is an [`Error::Overflow`], any
/// other excess an [`Error::TooLarge`].
pub fn check_size(op: &'static str, shape: &[usize], dtype: DType) -> Result<usize> {
    let n = numel_checked(op, shape)?;
    let bytes = shape.iter().filter(|&&d| d != 0).try_fold(dtype.size(), |acc, &d| acc.checked_mul(d));
    if bytes.is_none_or(|b| b > isize::MAX as usize) {
        return Err(Error::TooLarge { op, shape: shape.to_vec(), dtype });
    }
    Ok(n)
}

/// Whether two shapes are equal, compared element by element: shapes are a
/// few dims, and on a compiled call's path (every argument, every fused
/// input) a `memcmp` call costs more than the comparison itself.
#[inline]
pub fn same(a: &[usize], b: &[usize]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x == y)
}

/// Number of elements of a shape that passed [`check_size`], or of any
/// sub-list of its dimensions: 0 when a dimension is 0 (the product of the
/// others may then exceed `usize`), else a product that cannot overflow.
pub fn numel(shape: &[usize]) -> usize {
    if shape.contains(&0) {
        0
    } else {
        shape.iter().product()
    }
}

/// Turns a possibly negative axis into an index in `0..ndim`.
pub fn normalize_axis(op: &'static str, axis: isize, ndim: usize) -> Result<usize> {
    let n = ndim as isize;
    let a = if axis < 0 { axis + n } else { axis };
    if a < 0 || a >= n {
        Err(Error::Axis { op, axis, ndim })
    } else {
        Ok(a as usize)
    }
}

/// Normalizes a list of axes, sorted, rejecting duplicates.
pub fn normalize_axes(op: &'static str, axes: &[isize], ndim: usize) -> Result<Vec<usize>> {
    let mut out = Vec::with_capacity(axes.len());
    for &a in axes {
        out.push(normalize_axis(op, a, ndim)?);
    }
    out.sort_unstable();
    for w in out.windows(2) {
        if w[0] == w[1] {
            return Err(Error::Invalid { op, msg: format!("axis {} is repeated in {:?}", w[0], axes) });
        }
    }
    Ok(out)
}

/// The NumPy broadcast of two shapes: align trailing dimensions; each pair
/// must be equal or contain a 1.
pub fn broadcast_shapes(op: &'static str, a: &[usize], b: &[usize]) -> Result<Vec<usize>> {
    let n = a.len().max(b.len());
    let mut out = vec![0; n];
    for i in 0..n {
        let da = if i + a.len() >= n { a[i + a.len() - n] } else { 1 };
        let db = if i + b.len() >= n { b[i + b.len() - n] } else { 1 };
        out[i] = if da == db || db == 1 {
            da
        } else if da == 1 {
            db
        } else {
            return Err(Error::Broadcast { op, lhs: a.to_vec(), rhs: b.to_vec() });
        };
    }
    numel_checked(op, &out)?;
    Ok(out)
}

/// Checks that `from` can be broadcast to `to` (one-directional broadcast).
pub fn check_broadcast_to(op: &'static str, from: &[usize], to: &[usize]) -> Result<()> {
    let bad =
        || Error::Shape { op, msg: format!("cannot broadcast shape {} to shape {}", shape_str(from), shape_str(to)) };
    if from.len() > to.len() {
        return Err(bad());
    }
    let off = to.len() - from.len();
    for (i, &d) in from.iter().enumerate() {
        if d != 1 && d != to[off + i] {
            return Err(bad());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_compares_length_and_every_dim() {
        assert!(same(&[], &[]));
        assert!(same(&[2, 3], &[2, 3]));
        assert!(!same(&[2, 3], &[3, 2]));
        assert!(!same(&[2], &[2, 1]));
        assert!(!same(&[], &[1]));
    }

    #[test]
    fn broadcast_rules() {
        assert_eq!(broadcast_shapes("add", &[3, 1], &[4]).unwrap(), vec![3, 4]);
        assert_eq!(broadcast_shapes("add", &[], &[2, 2]).unwrap(), vec![2, 2]);
        assert_eq!(broadcast_shapes("add", &[0, 1], &[1, 5]).unwrap(), vec![0, 5]);
        let e = broadcast_shapes("add", &[3], &[4]).unwrap_err().to_string();
        assert!(e.contains("add") && e.contains("(3)") && e.contains("(4)"), "{e}");
    }

    #[test]
    fn axes() {
        assert_eq!(normalize_axis("sum", -1, 3).unwrap(), 2);
        assert!(normalize_axis("sum", 3, 3).is_err());
        assert!(normalize_axes("sum", &[0, -3], 3).is_err());
        assert!(numel_checked("zeros", &[usize::MAX, 2]).is_err());
        assert_eq!(check_size("zeros", &[3, 0, 5], DType::F32).unwrap(), 0);
        assert!(check_size("zeros", &[0, 1 << 31, 1 << 31], DType::F32).is_err());
        assert!(check_size("zeros", &[1 << 31, 1 << 31, 0], DType::F32).is_err());
        assert!(check_size("zeros", &[1 << 61], DType::F32).is_err());
        assert_eq!(check_size("zeros", &[1 << 59], DType::F64).unwrap(), 1 << 59);
        assert!(matches!(check_size("zeros", &[1 << 60], DType::F64), Err(Error::TooLarge { .. })));
        assert!(matches!(check_size("zeros", &[1 << 40, 1 << 40], DType::U8), Err(Error::Overflow { .. })));
    }
}
