//! Kernels that move elements between positions: concatenate, take, arange
//! (stubs until implemented).

use crate::array::Data;
use crate::backend::cpu::Buffer;
use crate::dtype::DType;
use crate::error::{Error, Result};

/// Concatenates `xs` (one dtype) along `axis` into `shape`.
pub fn concatenate(xs: &[&Data], axis: usize, shape: &[usize]) -> Result<Buffer> {
    let _ = (xs, axis, shape);
    Err(Error::Invalid { op: "concatenate", msg: "not implemented yet".into() })
}

/// Gathers `x` along `axis` at `idx`.
pub fn take(x: &Data, idx: &Data, axis: usize, shape: &[usize]) -> Result<Buffer> {
    let _ = (x, idx, axis, shape);
    Err(Error::Invalid { op: "take", msg: "not implemented yet".into() })
}

/// `start + i * step` for `i` in `0..len`.
pub fn arange(start: f64, step: f64, len: usize, dtype: DType) -> Buffer {
    crate::with_dtype!(dtype, T => Buffer::from_vec((0..len).map(|i| <T as crate::dtype::Element>::from_f64(start + i as f64 * step)).collect::<Vec<T>>()))
}
