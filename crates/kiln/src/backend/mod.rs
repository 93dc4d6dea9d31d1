//! Backends: where primitives run. The graph layer (arrays, programs,
//! passes, `compile`) talks to a backend only through the [`Backend`] and
//! [`Executable`] traits defined here; each backend lives in a submodule
//! and imports the graph layer, never the reverse. This module is the one
//! place outside a backend that names it: `cpu_backend` picks the CPU
//! backend, and the crate's process-wide settings reach it through the
//! functions here.

pub mod cpu;

use std::sync::Arc;

use crate::array::Data;
use crate::dtype::DType;
use crate::error::Result;
use crate::passes::fuse::{FusedGroup, Kernel};
use crate::passes::Facts;
use crate::primitive::Primitive;
use crate::program::Program;

pub use cpu::pool::{memory_limit, set_memory_limit};
pub use cpu::team::{set_threads, threads};

/// Frees the memory kiln keeps for reuse (large buffers of arrays that were
/// dropped, and the C allocator's free heap); returns the bytes of buffers
/// freed. Live arrays are not touched.
pub fn release_memory() -> usize {
    cpu::pool::release()
}

/// For hosts that free arrays in batches (a garbage-collected language such
/// as R): asks the C allocator to keep up to `bytes` of freed memory for the
/// next outputs instead of returning it to the OS, where every new output
/// would fault in fresh pages. [`release_memory`] gives it back.
pub fn retain_freed_memory(bytes: usize) {
    cpu::pool::retain_freed_memory(bytes)
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

/// The CPU backend: the one backend every device runs on today. Call sites
/// that need a backend ask here, so choosing one per device is a change to
/// this function alone.
pub(crate) fn cpu_backend() -> &'static dyn Backend {
    static CPU: cpu::Cpu = cpu::Cpu;
    &CPU
}
