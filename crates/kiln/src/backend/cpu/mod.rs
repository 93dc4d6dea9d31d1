//! The CPU backend: typed buffers, strided maps and one kernel module per
//! family of primitives, and the executor of compiled programs
//! ([`executable`], [`row_chain`]). [`eval`] is the single entry point that
//! runs a primitive on evaluated inputs, used by eager evaluation and by
//! compiled programs alike. [`Cpu`] is this backend behind the
//! [`Backend`] trait.

pub mod binary;
pub mod block_fold;
pub mod blocked;
pub mod cast;
pub mod executable;
pub mod fused;
pub mod fused_reduce;
pub mod group;
pub mod half_conv;
pub mod index;
pub mod interpreter;
pub mod jit;
#[cfg(target_arch = "x86_64")]
pub mod jit_avx2;
#[cfg(target_arch = "x86_64")]
pub mod jit_code;
#[cfg(target_arch = "x86_64")]
pub mod jit_x86;
pub mod math;
pub mod math_f64;
pub mod matmul;
pub mod random;
pub mod reduce;
pub mod row_chain;
pub mod row_kernel;
pub mod rows;
pub use super::simd_math;
pub mod stream;
pub mod strided;
pub mod team;
pub mod tile;
pub mod unary;

use std::sync::Arc;

pub use crate::buffer::{Buffer, BufferElement};
pub use group::CpuGroup;

use crate::array::Data;
use crate::backend::{Backend, Executable};
use crate::dtype::DType;
use crate::error::Result;
use crate::layout::Layout;
use crate::passes::Facts;
use crate::primitive::Primitive;
use crate::program::Program;

/// Most instructions in one fused group. Checking whether two groups may
/// merge, building a group's register program and generating its code all
/// grow with its size; past this size a group's output is stored and the
/// next group reads it back, which costs little next to hundreds of ops.
pub const MAX_GROUP: usize = 512;

/// The CPU backend.
#[derive(Clone, Copy, Debug, Default)]
pub struct Cpu;

impl Backend for Cpu {
    fn name(&self) -> &'static str {
        "cpu"
    }

    fn eval(&self, prim: &Primitive, inputs: &[&Data], shape: &[usize], dtype: DType) -> Result<Data> {
        eval(prim, inputs, shape, dtype)
    }

    fn facts(&self) -> &dyn Facts {
        self
    }

    fn lower(&self, program: Program) -> Result<Arc<dyn Executable>> {
        Ok(Arc::new(executable::CpuExecutable::new(program)))
    }

    fn to_host(&self, data: &Data) -> Result<Buffer> {
        copy("to_vec", data)
    }

    fn upload(&self, buffer: Buffer, shape: &[usize]) -> Result<Data> {
        Ok(Data::contiguous(buffer, shape))
    }
}

impl Facts for Cpu {
    /// [`Primitive::costly`]: transcendental functions, `pow`, `atan2`.
    fn costly(&self, p: &Primitive) -> bool {
        p.costly()
    }

    /// [`row_chain::splits`]: a chain's block of rows stays in L2.
    fn splits_rows(&self, shape: &[usize]) -> bool {
        row_chain::splits(shape)
    }

    /// [`MAX_GROUP`].
    fn max_group(&self) -> usize {
        MAX_GROUP
    }
}

/// Runs `prim` on evaluated `inputs`, producing an output of the inferred
/// `shape` and `dtype`. Views share the input's buffer.
pub fn eval(prim: &Primitive, inputs: &[&Data], shape: &[usize], dtype: DType) -> Result<Data> {
    let fresh = |b: Buffer| Ok(Data::contiguous(b, shape));
    let view = |layout: Layout| Ok(inputs[0].view(layout));
    // An empty result computes nothing: kernels that walk the outer axes of
    // a view would otherwise loop over every combination of its nonzero
    // dimensions (up to 2^60 of them beside one empty axis).
    if shape.contains(&0) && !matches!(prim, Primitive::Constant | Primitive::Placeholder { .. }) {
        return fresh(crate::with_dtype!(dtype, T => Buffer::from_vec(Vec::<T>::new())));
    }
    match prim {
        Primitive::Constant | Primitive::Placeholder { .. } => {
            unreachable!("leaves are never evaluated: constants hold data, placeholders are rejected first")
        }
        Primitive::Unary(_) | Primitive::Binary(_) | Primitive::Where | Primitive::AsType(_) => {
            fused::run_single(prim, inputs, shape, dtype)
        }
        Primitive::Reduce { op, axes, .. } => fresh(reduce::reduce(*op, inputs[0], axes, dtype)?),
        Primitive::ArgReduce { op, axis, .. } => fresh(reduce::arg_reduce(*op, inputs[0], *axis)?),
        Primitive::Matmul => fresh(matmul::matmul(inputs[0], inputs[1], shape)?),
        Primitive::Reshape { .. }
        | Primitive::Squeeze { .. }
        | Primitive::ExpandDims { .. }
        | Primitive::Transpose { .. }
        | Primitive::BroadcastTo { .. }
        | Primitive::BroadcastLike
        | Primitive::Slice { .. }
        | Primitive::SplitSection { .. } => match prim.view_layout(inputs[0].layout(), shape) {
            Some(l) => view(l),
            // A reshape the strides cannot express.
            None => fresh(copy("reshape", inputs[0])?),
        },
        Primitive::Copy => fresh(copy("copy", inputs[0])?),
        Primitive::Concatenate { axis } => fresh(index::concatenate(inputs, *axis, shape)?),
        Primitive::Take { axis } => fresh(index::take(inputs[0], inputs[1], *axis, shape)?),
        Primitive::Arange { start, step, len, dtype } => fresh(index::arange(*start, *step, *len, *dtype)?),
        Primitive::RandomBits { .. } => fresh(random::random_bits(inputs[0], shape)?),
    }
}

/// A contiguous copy of an evaluated array, allocated for `op`.
pub fn copy(op: &'static str, x: &Data) -> Result<Buffer> {
    Ok(crate::with_buffer!(x.buffer(), v => Buffer::from_vec(strided::gather(op, v, x.layout())?)))
}
