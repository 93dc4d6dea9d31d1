//! Counter-based random bits (stub until implemented).

use crate::array::Data;
use crate::backend::cpu::Buffer;
use crate::error::{Error, Result};

/// `u32` random bits of `shape` from a `u32[2]` key.
pub fn random_bits(key: &Data, shape: &[usize]) -> Result<Buffer> {
    let _ = (key, shape);
    Err(Error::Invalid { op: "random_bits", msg: "not implemented yet".into() })
}
