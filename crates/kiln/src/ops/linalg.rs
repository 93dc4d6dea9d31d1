//! Linear algebra: `matmul` with NumPy semantics.

use crate::array::Array;
use crate::error::Result;
use crate::ops::shape::{expand_dims, squeeze};
use crate::ops::{operand_as, result_dtype, Operand};
use crate::primitive::Primitive;

/// Matrix product with NumPy semantics: 1-D operands are treated as a row
/// (left) or column (right) vector and that axis is removed from the result;
/// leading batch dimensions broadcast. Floats use the `gemm` crate; integers
/// use an exact (wrapping) loop.
pub fn matmul(a: &Array, b: &Array) -> Result<Array> {
    let (oa, ob) = (Operand::from(a), Operand::from(b));
    let dt = result_dtype(&[&oa, &ob]);
    let (mut a2, mut b2) = (operand_as(oa, dt)?, operand_as(ob, dt)?);
    let (va, vb) = (a.ndim() == 1, b.ndim() == 1);
    if a.ndim() == 0 || b.ndim() == 0 {
        return Err(crate::Error::Shape {
            op: "matmul",
            msg: format!(
                "operands must have at least 1 dimension, got {} and {}",
                crate::error::shape_str(a.shape()),
                crate::error::shape_str(b.shape())
            ),
        });
    }
    // Check the inner dims of 1-D operands here so the message names the shapes as given.
    let (ka, kb) = (a.shape()[a.ndim() - 1], b.shape()[b.ndim().saturating_sub(2)]);
    if (va || vb) && ka != kb {
        return Err(crate::Error::Shape {
            op: "matmul",
            msg: format!(
                "inner dimensions do not match: {} @ {} ({ka} != {kb})",
                crate::error::shape_str(a.shape()),
                crate::error::shape_str(b.shape())
            ),
        });
    }
    if va {
        a2 = expand_dims(&a2, &[0])?;
    }
    if vb {
        b2 = expand_dims(&b2, &[1])?;
    }
    let mut out = Array::from_op(Primitive::Matmul, vec![a2, b2])?;
    if va {
        out = squeeze(&out, Some(&[-2]))?;
    }
    if vb {
        out = squeeze(&out, Some(&[-1]))?;
    }
    Ok(out)
}

impl Array {
    /// See [`matmul`].
    pub fn matmul(&self, other: &Array) -> Result<Array> {
        matmul(self, other)
    }
}
