//! User-facing operations, by family. Each function checks its arguments,
//! promotes dtypes (inserting `astype` nodes) and records a node; nothing is
//! computed until evaluation.
//!
//! Binary functions take anything that converts into an [`Operand`]: an
//! [`Array`], a `&Array`, or a Rust scalar (`f32`, `f64`, `i32`, `i64`, `u8`,
//! `u32`, `bool`). Scalars are weakly typed (see [`crate::dtype`]).

pub mod binary;
pub mod create;
pub mod linalg;
pub mod random;
pub mod reduce;
pub mod shape;
pub mod unary;

use crate::array::Array;
use crate::buffer::Buffer;
use crate::device::Device;
use crate::dtype::{DType, Element, ScalarKind};
use crate::error::Result;
use crate::primitive::Primitive;

/// A Rust scalar, kept with its kind until the dtype of the operation is known.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Scalar {
    /// A boolean.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A float.
    Float(f64),
}

impl Scalar {
    /// The weak-typing kind.
    pub fn kind(self) -> ScalarKind {
        match self {
            Scalar::Bool(_) => ScalarKind::Bool,
            Scalar::Int(_) => ScalarKind::Int,
            Scalar::Float(_) => ScalarKind::Float,
        }
    }

    /// The dtype a scalar has on its own: bool, i32 or f32.
    pub fn default_dtype(self) -> DType {
        match self {
            Scalar::Bool(_) => DType::Bool,
            Scalar::Int(_) => DType::I32,
            Scalar::Float(_) => DType::F32,
        }
    }

    /// A one-element buffer of `dtype` holding this value.
    pub fn to_buffer(self, dtype: DType) -> Buffer {
        crate::with_dtype!(dtype, T => {
            let v: T = match self {
                Scalar::Bool(b) => <T as Element>::from_i64(b as i64),
                Scalar::Int(i) => <T as Element>::from_i64(i),
                Scalar::Float(f) => <T as Element>::from_f64(f),
            };
            Buffer::from_vec(vec![v])
        })
    }

    /// A 0-d array of `dtype` holding this value, on `device` (on the CPU
    /// if that device cannot take it: an op mixing it with arrays on
    /// `device` then fails with a device error).
    pub fn to_array(self, dtype: DType, device: Device) -> Array {
        Array::from_host(self.to_buffer(dtype), &[], device)
            .unwrap_or_else(|_| Array::from_valid_data(crate::array::Data::contiguous(self.to_buffer(dtype), &[])))
    }
}

macro_rules! scalar_from {
    ($($t:ty => $v:ident),*) => {$(
        impl From<$t> for Scalar {
            fn from(x: $t) -> Scalar {
                Scalar::$v(x.into())
            }
        }
        impl From<$t> for Operand {
            fn from(x: $t) -> Operand {
                Operand::Scalar(Scalar::from(x))
            }
        }
    )*};
}
scalar_from!(bool => Bool, u8 => Int, u32 => Int, i32 => Int, i64 => Int, f32 => Float, f64 => Float);

/// An operand of a binary op: an array or a weakly typed scalar.
#[derive(Clone, Debug)]
pub enum Operand {
    /// An array.
    Array(Array),
    /// A Rust scalar.
    Scalar(Scalar),
}

impl From<Array> for Operand {
    fn from(a: Array) -> Operand {
        Operand::Array(a)
    }
}

impl From<&Array> for Operand {
    fn from(a: &Array) -> Operand {
        Operand::Array(a.clone())
    }
}

impl Operand {
    fn dtype_or_kind(&self) -> std::result::Result<DType, Scalar> {
        match self {
            Operand::Array(a) => Ok(a.dtype()),
            Operand::Scalar(s) => Err(*s),
        }
    }
}

/// The common dtype of operands: arrays promote among themselves, scalars
/// never widen an array's dtype.
pub fn result_dtype(ops: &[&Operand]) -> DType {
    use crate::dtype::{promote, promote_scalar};
    let arrays = ops.iter().filter_map(|o| o.dtype_or_kind().ok()).reduce(promote);
    let scalars = ops.iter().filter_map(|o| o.dtype_or_kind().err());
    match arrays {
        Some(d) => scalars.fold(d, |d, s| promote_scalar(d, s.kind())),
        // Scalars alone: promote their default dtypes.
        None => scalars.map(Scalar::default_dtype).fold(DType::Bool, promote),
    }
}

/// The device of an op on `ops`: that of the first array operand (all
/// arrays must share it, which the op checks), else the default device.
pub fn operand_device(ops: &[&Operand]) -> Device {
    ops.iter()
        .find_map(|o| match o {
            Operand::Array(a) => Some(a.device()),
            Operand::Scalar(_) => None,
        })
        .unwrap_or_else(crate::device::default_device)
}

/// The operand as an array of `dtype` (scalars become 0-d constants on
/// `device`, arrays get an `astype` node when their dtype differs).
pub fn operand_as(o: Operand, dtype: DType, device: Device) -> Result<Array> {
    match o {
        Operand::Array(a) => astype(&a, dtype),
        Operand::Scalar(s) => Ok(s.to_array(dtype, device)),
    }
}

/// Converts to `dtype` (no node is recorded when the dtype already matches).
pub fn astype(x: &Array, dtype: DType) -> Result<Array> {
    if x.dtype() == dtype {
        return Ok(x.clone());
    }
    Array::from_op(Primitive::AsType(dtype), vec![x.clone()])
}

impl Array {
    /// Converts to `dtype`; see [`astype`].
    pub fn astype(&self, dtype: DType) -> Result<Array> {
        astype(self, dtype)
    }
}
