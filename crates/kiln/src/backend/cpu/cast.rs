//! `astype` tile kernel: conversion between any two dtypes, with `as`
//! semantics (float to int truncates toward zero and saturates, NaN becomes
//! 0; int to narrower int wraps; anything to bool is `!= 0`, so NaN is true).

use std::marker::PhantomData;

use crate::backend::cpu::half_conv;
use crate::backend::cpu::tile::{map1, multiversion, Src};
use crate::buffer::elem_type;
use crate::buffer::Buffer;
use crate::dtype::{DType, Element};

#[inline(always)]
fn cast_from<S: Element>(x: Src, out: &mut Buffer) {
    // f16 to and from f32 through `half_conv` (the same bits as through
    // f64, and vectorized).
    match (S::DTYPE, out.dtype()) {
        (DType::F16, DType::F32) => return map1(x, out, |v: half::f16| half_conv::f16_to_f32(v)),
        (DType::F32, DType::F16) => return map1(x, out, |v: f32| half_conv::f32_to_f16(v)),
        _ => {}
    }
    let float_src = S::DTYPE.is_float();
    crate::with_dtype!(out.dtype(), D => {
        if float_src {
            if D::DTYPE == DType::Bool {
                map1(x, out, |v: S| <D as Element>::from_f64((v.to_f64() != 0.0) as u8 as f64))
            } else {
                map1(x, out, |v: S| <D as Element>::from_f64(v.to_f64()))
            }
        } else {
            map1(x, out, |v: S| <D as Element>::from_i64(v.to_i64()))
        }
    })
}

multiversion! {
    /// Casts from `f32`/`f64`/`f16`, vectorized at the best SIMD level.
    fn cast_from_simd<S: Element>(x: Src, out: &mut Buffer) => cast_from
}

/// Converts a tile of `x` to the dtype of `out`.
pub fn cast(x: Src, out: &mut Buffer) {
    fn go<S: Element>(_: PhantomData<S>, x: Src, out: &mut Buffer) {
        if S::DTYPE == DType::F32 || S::DTYPE == DType::F64 || S::DTYPE == DType::F16 {
            cast_from_simd::<S>(x, out)
        } else {
            cast_from::<S>(x, out)
        }
    }
    crate::with_buffer!(x.buf, v => go(elem_type(v), x, out))
}
