//! `astype`: conversion between any two dtypes, with `as` semantics (float
//! to int truncates toward zero and saturates, NaN becomes 0; int to
//! narrower int wraps; anything to bool is `!= 0`, so NaN is true).

use std::marker::PhantomData;

use crate::array::Data;
use crate::backend::cpu::buffer::elem_type;
use crate::backend::cpu::strided::map1;
use crate::backend::cpu::Buffer;
use crate::dtype::{DType, Element};

fn cast_from<S: Element>(x: &Data, shape: &[usize], to: DType) -> Buffer {
    let float_src = S::DTYPE.is_float();
    crate::with_dtype!(to, D => {
        if float_src {
            if D::DTYPE == DType::Bool {
                Buffer::from_vec(map1(x, shape, |v: S| D::from_f64((v.to_f64() != 0.0) as u8 as f64)))
            } else {
                Buffer::from_vec(map1(x, shape, |v: S| D::from_f64(v.to_f64())))
            }
        } else {
            Buffer::from_vec(map1(x, shape, |v: S| D::from_i64(v.to_i64())))
        }
    })
}

/// Converts `x` to dtype `to`.
pub fn cast(x: &Data, shape: &[usize], to: DType) -> Buffer {
    fn go<S: Element>(_: PhantomData<S>, x: &Data, shape: &[usize], to: DType) -> Buffer {
        cast_from::<S>(x, shape, to)
    }
    crate::with_buffer!(&*x.buffer, v => go(elem_type(v), x, shape, to))
}
