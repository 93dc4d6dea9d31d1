//! # kiln
//!
//! Lazy n-dimensional arrays with NumPy/MLX semantics and an MLX-style
//! tracing compiler.
//!
//! ```
//! use kiln::{Array, DType};
//! let x = Array::from_slice(&[1.0f32, 2.0, 3.0, 4.0], &[2, 2])?;
//! let y = ((&x * 2.0f32)? + 1.0f32)?; // lazy: nothing computed yet
//! assert_eq!(y.sum(kiln::Axes::All, false)?.item::<f32>()?, 24.0);
//! # Ok::<(), kiln::Error>(())
//! ```
//!
//! Arrays are immutable handles to nodes of a lazy graph. Every operation
//! checks shapes and dtypes when it is recorded and returns `Result`;
//! evaluation happens on [`Array::eval`], [`eval`] or when data is read.
//!
//! Sizes are checked like shapes: an op whose output would exceed
//! `isize::MAX` bytes fails when it is built ([`Error::TooLarge`]), and an
//! allocation the system refuses, or one above [`set_memory_limit`] (or
//! the `KILN_MEMORY_LIMIT` environment variable), fails the evaluation with
//! [`Error::OutOfMemory`] naming the op and the bytes, never aborting the
//! process. (Where the operating system overcommits memory it may grant a
//! request it cannot back; a limit bounds what kiln asks for.)
//!
//! Every array lives on a [`Device`] ([`Array::device`]); an op's array
//! inputs share one device, new arrays go to the default device
//! ([`set_default_device`], [`with_default_device`]), and
//! [`Array::to_device`] copies between devices. Backends (the CPU today)
//! sit behind [`backend::Backend`]; `ARCHITECTURE.md` in the repository
//! draws the layers.

#![warn(missing_docs)]

pub mod array;
pub mod backend;
pub mod buffer;
pub mod compile;
pub mod device;
mod display;
pub mod dtype;
pub mod error;
pub mod host_vec;
pub mod layout;
pub mod memory;
pub mod ops;
pub mod passes;
pub mod precision;
pub mod primitive;
pub mod program;
pub mod shape;
pub mod storage;
mod trace;

pub use array::{eval, Array, Data};
pub use backend::{set_threads, threads};
pub use buffer::Buffer;
pub use compile::{
    compile, compile_with, disable_compile, enable_compile, CacheStats, CompileOptions, Compiled, Outputs,
};
pub use device::{default_device, set_default_device, synchronize, with_default_device, Device, Spec};
pub use dtype::{DType, Element};
pub use error::{Error, Result};
pub use host_vec::HostVec;
pub use memory::{memory_limit, release_memory, retain_freed_memory, set_memory_limit};
pub use ops::binary::*;
pub use ops::create::*;
pub use ops::linalg::*;
pub use ops::random;
pub use ops::reduce::*;
pub use ops::shape::*;
pub use ops::unary::*;
pub use ops::{astype, Operand, Scalar};
pub use precision::{matmul_precision, set_matmul_precision, MatmulPrecision};
pub use primitive::SliceAxis;
