//! Linear algebra: `matmul` with NumPy semantics.

use crate::array::Array;
use crate::error::{shape_str, Error, Result};
use crate::ops::shape::{expand_dims, squeeze};
use crate::ops::{operand_as, result_dtype, Operand};
use crate::primitive::Primitive;

/// Matrix product with NumPy semantics: 1-D operands are treated as a row
/// (left) or column (right) vector and that axis is removed from the result;
/// leading batch dimensions broadcast. Floats use the `gemm` crate; integers
/// use an exact (wrapping) loop.
pub fn matmul(a: &Array, b: &Array) -> Result<Array> {
    let shapes = || format!("{} and {}", shape_str(a.shape()), shape_str(b.shape()));
    if a.ndim() == 0 || b.ndim() == 0 {
        return Err(Error::Shape {
            op: "matmul",
            msg: format!("operands must have at least 1 dimension, got {}", shapes()),
        });
    }
    // Check the contracted dims here, against the shapes the caller gave
    // (before 1-D operands are expanded), so the message names those.
    let (ka, kb) = (a.shape()[a.ndim() - 1], b.shape()[b.ndim().saturating_sub(2)]);
    if ka != kb {
        return Err(Error::Shape {
            op: "matmul",
            msg: format!(
                "inner dimensions do not match: {} @ {} (last dim of the left, {ka}, must equal the {} of the \
                 right, {kb})",
                shape_str(a.shape()),
                shape_str(b.shape()),
                if b.ndim() == 1 { "length" } else { "second-to-last dim" }
            ),
        });
    }
    let (oa, ob) = (Operand::from(a), Operand::from(b));
    let dt = result_dtype(&[&oa, &ob]);
    let dev = a.device();
    let (mut a2, mut b2) = (operand_as(oa, dt, dev)?, operand_as(ob, dt, dev)?);
    let (va, vb) = (a.ndim() == 1, b.ndim() == 1);
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
