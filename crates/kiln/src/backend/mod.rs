//! Backends: where primitives run. The graph layer (arrays, programs,
//! passes, `compile`) talks to a backend only through the [`Backend`] and
//! [`Executable`] traits defined here; each backend lives in a submodule
//! and imports the graph layer, never the reverse. [`for_device`] is the
//! one place that names concrete backends: it picks the backend that
//! serves a device.

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod simd_math;

use std::sync::{Arc, RwLock};

use crate::passes::fuse::{FusedGroup, Kernel};
use crate::passes::Facts;
use crate::program::Program;

pub use cpu::team::{set_threads, threads};

use crate::array::Data;
use crate::buffer::Buffer;
use crate::device::Device;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::primitive::Primitive;

/// Backends serving devices other than the CPU, added by [`register`].
static REGISTERED: RwLock<Vec<(Device, &'static dyn Backend)>> = RwLock::new(Vec::new());

/// The backend that serves `device`, or an error saying why there is none.
pub fn for_device(device: Device) -> Result<&'static dyn Backend> {
    if device == Device::Cpu {
        static CPU: cpu::Cpu = cpu::Cpu;
        return Ok(&CPU);
    }
    let registered = REGISTERED.read().unwrap_or_else(|e| e.into_inner());
    if let Some((_, b)) = registered.iter().find(|(d, _)| *d == device) {
        return Ok(*b);
    }
    #[cfg(feature = "cuda")]
    if let Device::Cuda(i) = device {
        return cuda::backend(i);
    }
    Err(Error::Device {
        op: "device",
        msg: format!(
            "{device} was asked for, but this build of kiln has no CUDA backend (build with the `cuda` feature)"
        ),
    })
}

/// Makes `backend` serve `device` from now on (replacing an earlier
/// registration for it): the plug for a backend built outside this module,
/// such as the storage-swapping backend of the seam test. The CPU's backend
/// cannot be replaced. Arrays already on `device` keep their storage, so
/// register before making any.
pub fn register(device: Device, backend: &'static dyn Backend) -> Result<()> {
    if device == Device::Cpu {
        return Err(Error::Device { op: "register", msg: "the CPU's backend cannot be replaced".into() });
    }
    let mut registered = REGISTERED.write().unwrap_or_else(|e| e.into_inner());
    registered.retain(|(d, _)| *d != device);
    registered.push((device, backend));
    Ok(())
}

/// A backend: what the graph layer needs of the hardware that runs it.
pub trait Backend: Send + Sync + 'static {
    /// A short name for messages ("cpu").
    fn name(&self) -> &'static str;

    /// Evaluates one primitive on evaluated `inputs`, producing an output of
    /// the inferred `shape` and `dtype` (eager evaluation, and compiled
    /// steps that run op by op). Views may share an input's storage.
    fn eval(&self, prim: &Primitive, inputs: &[&Data], shape: &[usize], dtype: DType) -> Result<Data>;

    /// The cost facts the optimization passes need
    /// ([`optimize`](crate::passes::optimize), [`plan`](crate::passes::fuse::plan)).
    fn facts(&self) -> &dyn Facts;

    /// Lowers an optimized program (see [`optimize`](crate::passes::optimize)
    /// with this backend's [`facts`](Backend::facts)) to an executable: plans
    /// its kernels and prepares whatever running them needs.
    fn lower(&self, program: Program) -> Result<Arc<dyn Executable>>;

    /// A contiguous host copy of `data`'s elements in row-major order
    /// (reading values, moving data to another device).
    fn to_host(&self, data: &Data) -> Result<Buffer>;

    /// This backend's data for a contiguous host buffer of `shape` (whose
    /// length matches the shape): arrays made from host values, and data
    /// moved here from another device.
    fn upload(&self, buffer: Buffer, shape: &[usize]) -> Result<Data>;

    /// Waits until the work queued on this backend's device is done (a
    /// backend that runs synchronously, like the CPU's, returns at once).
    fn synchronize(&self) -> Result<()> {
        Ok(())
    }

    /// Gives back the memory this backend keeps for reuse (freed blocks of
    /// dropped arrays), not touching live arrays; returns the bytes given
    /// back. The CPU's pool is the graph layer's ([`crate::memory`]), so
    /// its backend keeps none of its own.
    fn release_memory(&self) -> usize {
        0
    }
}

/// [`Backend::release_memory`] of every backend in use besides the CPU's
/// (registered ones, and the GPUs opened so far), summed.
pub fn release_backends() -> usize {
    #[allow(unused_mut)]
    let mut backends: Vec<&'static dyn Backend> =
        REGISTERED.read().unwrap_or_else(|e| e.into_inner()).iter().map(|(_, b)| *b).collect();
    #[cfg(feature = "cuda")]
    backends.extend(cuda::opened());
    backends.iter().map(|b| b.release_memory()).sum()
}

/// A program lowered by a [`Backend`]: a list of kernel steps it runs on
/// its own storage. Shared by every call of a compiled function, from any
/// thread.
pub trait Executable: Send + Sync + std::fmt::Debug {
    /// The optimized program it runs (its shapes are the traced ones; a
    /// shapeless call re-infers them from it).
    fn program(&self) -> &Program;

    /// Runs on evaluated arguments (one per program input) and returns the
    /// program's outputs. `shapes` holds every value's shape when it differs
    /// from the traced one (shapeless calls): a fused step whose values no
    /// longer share one iteration space at those shapes must still compute
    /// what eager evaluation would, for example op by op.
    fn run(&self, args: &[&Data], shapes: Option<&[Vec<usize>]>) -> Result<Vec<Data>>;

    /// Number of kernel launches per run (views, which cost nothing, are
    /// not counted).
    fn kernel_count(&self) -> usize;

    /// The steps in execution order, for `explain` and `to_dot`.
    fn steps(&self) -> Vec<StepView<'_>>;

    /// How step `step`'s elementwise work runs (for example as generated
    /// machine code or on an interpreter, and why), or `None` when it has
    /// none. May prepare that code, as a first run would.
    fn step_code(&self, step: usize) -> Option<String>;

    /// Lines about how the executable runs beyond its steps (for example
    /// steps that run together, block by block), for `explain`.
    fn notes(&self) -> Vec<String>;
}

/// One step of an [`Executable`] as the graph layer sees it.
#[derive(Clone, Debug)]
pub struct StepView<'a> {
    /// What the step computes, its groups in their planned form.
    pub kernel: Kernel<&'a FusedGroup>,
    /// Values read (program instruction indices).
    pub inputs: &'a [usize],
    /// Values written.
    pub outputs: &'a [usize],
}
