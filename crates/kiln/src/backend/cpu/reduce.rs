//! Reductions over axes and arg-reductions (stubs until implemented).

use crate::array::Data;
use crate::backend::cpu::Buffer;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::primitive::{ArgReduceOp, ReduceOp};

/// Reduces `x` over the sorted `axes`, producing `out` dtype elements in
/// row-major order of the kept axes.
pub fn reduce(op: ReduceOp, x: &Data, axes: &[usize], out: DType) -> Result<Buffer> {
    let _ = (x, axes, out);
    Err(Error::Invalid { op: op.name(), msg: "not implemented yet".into() })
}

/// Index of the extremum along `axis`, as `u32`.
pub fn arg_reduce(op: ArgReduceOp, x: &Data, axis: usize) -> Result<Buffer> {
    let _ = (op, x, axis);
    Err(Error::Invalid { op: "argmax", msg: "not implemented yet".into() })
}
