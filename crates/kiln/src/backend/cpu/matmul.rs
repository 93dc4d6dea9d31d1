//! Matrix products (stub until implemented).

use crate::array::Data;
use crate::backend::cpu::Buffer;
use crate::error::{Error, Result};

/// `a @ b` with broadcast batch dims; `shape` is the output shape.
pub fn matmul(a: &Data, b: &Data, shape: &[usize]) -> Result<Buffer> {
    let _ = (a, b, shape);
    Err(Error::Invalid { op: "matmul", msg: "not implemented yet".into() })
}
