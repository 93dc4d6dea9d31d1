//! Typed host buffers. One enum variant per dtype keeps every kernel safe
//! Rust over slices; [`with_buffer!`](crate::with_buffer) dispatches a
//! generic body over the variant in one place. Each variant holds a
//! [`HostVec`], whose allocation kiln aligns to a cache line when it makes
//! it ([`crate::host_vec`]).

use half::{bf16, f16};

use crate::dtype::{DType, Element};
use crate::host_vec::HostVec;

/// A host buffer of one dtype.
#[derive(Clone, Debug, PartialEq)]
pub enum Buffer {
    /// `bool` elements.
    Bool(HostVec<bool>),
    /// `u8` elements.
    U8(HostVec<u8>),
    /// `u32` elements.
    U32(HostVec<u32>),
    /// `i32` elements.
    I32(HostVec<i32>),
    /// `i64` elements.
    I64(HostVec<i64>),
    /// `f16` elements.
    F16(HostVec<f16>),
    /// `bf16` elements.
    BF16(HostVec<bf16>),
    /// `f32` elements.
    F32(HostVec<f32>),
    /// `f64` elements.
    F64(HostVec<f64>),
}

/// Runs `$body` with `$v` bound to the typed [`HostVec`] inside a [`Buffer`]
/// (by reference when `$buf` is a reference).
#[macro_export]
#[doc(hidden)]
macro_rules! with_buffer {
    ($buf:expr, $v:ident => $body:expr) => {
        match $buf {
            $crate::buffer::Buffer::Bool($v) => $body,
            $crate::buffer::Buffer::U8($v) => $body,
            $crate::buffer::Buffer::U32($v) => $body,
            $crate::buffer::Buffer::I32($v) => $body,
            $crate::buffer::Buffer::I64($v) => $body,
            $crate::buffer::Buffer::F16($v) => $body,
            $crate::buffer::Buffer::BF16($v) => $body,
            $crate::buffer::Buffer::F32($v) => $body,
            $crate::buffer::Buffer::F64($v) => $body,
        }
    };
}

/// Runs `$body` with the type alias `$T` set to the Rust element type of a
/// [`DType`] value.
#[macro_export]
#[doc(hidden)]
macro_rules! with_dtype {
    ($dt:expr, $T:ident => $body:expr) => {
        match $dt {
            $crate::DType::Bool => {
                type $T = bool;
                $body
            }
            $crate::DType::U8 => {
                type $T = u8;
                $body
            }
            $crate::DType::U32 => {
                type $T = u32;
                $body
            }
            $crate::DType::I32 => {
                type $T = i32;
                $body
            }
            $crate::DType::I64 => {
                type $T = i64;
                $body
            }
            $crate::DType::F16 => {
                type $T = half::f16;
                $body
            }
            $crate::DType::BF16 => {
                type $T = half::bf16;
                $body
            }
            $crate::DType::F32 => {
                type $T = f32;
                $body
            }
            $crate::DType::F64 => {
                type $T = f64;
                $body
            }
        }
    };
}

impl Buffer {
    /// The dtype of the elements.
    pub fn dtype(&self) -> DType {
        match self {
            Buffer::Bool(_) => DType::Bool,
            Buffer::U8(_) => DType::U8,
            Buffer::U32(_) => DType::U32,
            Buffer::I32(_) => DType::I32,
            Buffer::I64(_) => DType::I64,
            Buffer::F16(_) => DType::F16,
            Buffer::BF16(_) => DType::BF16,
            Buffer::F32(_) => DType::F32,
            Buffer::F64(_) => DType::F64,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        with_buffer!(self, v => v.len())
    }

    /// True when the buffer holds no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The elements as a slice of `T`, if `T` is the buffer's type.
    pub fn as_slice<T: Element>(&self) -> Option<&[T]> {
        T::slice_of(self)
    }

    /// A buffer of `len` zero elements of `dtype`.
    pub fn zeros(dtype: DType, len: usize) -> Buffer {
        crate::with_dtype!(dtype, T => {
            let mut v = HostVec::<T>::new();
            v.resize(len, <T as Element>::zero());
            Buffer::from_vec(v)
        })
    }

    /// Wraps a vector: a `Vec` keeps its allocation, a [`HostVec`] its
    /// alignment.
    pub fn from_vec<T: Element>(v: impl Into<HostVec<T>>) -> Buffer {
        T::into_buffer(v.into())
    }
}

/// Moving typed vectors in and out of [`Buffer`]; implemented for every
/// [`Element`] type.
pub trait BufferElement: Sized + Copy {
    /// The elements of `b` if it holds this type.
    fn slice_of(b: &Buffer) -> Option<&[Self]>;
    /// Wraps a vector of this type.
    fn into_buffer(v: HostVec<Self>) -> Buffer;
    /// The elements of `b`, mutably, if it holds this type.
    fn slice_of_mut(b: &mut Buffer) -> Option<&mut [Self]>;
    /// The vector inside `b` if it holds this type (else `b` back).
    fn into_host(b: Buffer) -> std::result::Result<HostVec<Self>, Buffer>;
}

macro_rules! buffer_element {
    ($t:ty, $d:ident) => {
        impl BufferElement for $t {
            #[inline]
            fn slice_of(b: &Buffer) -> Option<&[Self]> {
                match b {
                    Buffer::$d(v) => Some(v),
                    _ => None,
                }
            }
            #[inline]
            fn into_buffer(v: HostVec<Self>) -> Buffer {
                Buffer::$d(v)
            }
            #[inline]
            fn slice_of_mut(b: &mut Buffer) -> Option<&mut [Self]> {
                match b {
                    Buffer::$d(v) => Some(v),
                    _ => None,
                }
            }
            #[inline]
            fn into_host(mut b: Buffer) -> std::result::Result<HostVec<Self>, Buffer> {
                match &mut b {
                    Buffer::$d(v) => Ok(std::mem::take(v)),
                    _ => Err(b),
                }
            }
        }
    };
}
buffer_element!(bool, Bool);
buffer_element!(u8, U8);
buffer_element!(u32, U32);
buffer_element!(i32, I32);
buffer_element!(i64, I64);
buffer_element!(f16, F16);
buffer_element!(bf16, BF16);
buffer_element!(f32, F32);
buffer_element!(f64, F64);

/// A type marker for the element type of a vector, for calling generic
/// kernels from [`with_buffer!`](crate::with_buffer).
pub fn elem_type<T: Copy>(_: &HostVec<T>) -> std::marker::PhantomData<T> {
    std::marker::PhantomData
}

/// Large buffers go back to the [`memory`](crate::memory) for reuse.
impl Drop for Buffer {
    fn drop(&mut self) {
        crate::memory::give(self);
    }
}
