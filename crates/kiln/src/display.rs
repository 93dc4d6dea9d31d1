//! `Display` for arrays, NumPy/MLX style (stub until implemented).

use std::fmt;

use crate::array::Array;

impl fmt::Display for Array {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self)
    }
}
