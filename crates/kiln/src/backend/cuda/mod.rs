//! The CUDA backend (feature `cuda`): kiln arrays on NVIDIA GPUs.
//!
//! [`backend`] opens GPU `n` on first use (its primary context and a
//! stream of its own) and serves [`Device::Cuda(n)`](crate::Device). The
//! driver, NVRTC and cuBLAS are loaded at run time (`KILN_CUDA_LIB_DIR`
//! names a folder to load them from first), so a build with the feature
//! runs on machines without CUDA: asking for a GPU there is an
//! [`Error::Device`] that says what is missing, never a panic.
//!
//! Every kernel is CUDA C that kiln writes itself ([`source`]; `f32`
//! transcendentals are CUDA's own functions or the CPU's `simd_math`
//! printed as C, whichever is shorter on the GPU: [`cmath`]),
//! compiled by NVRTC to a cubin for the device's architecture and kept for
//! the process. Sizes and strides are kernel arguments, so one kernel
//! serves every shape of a rank (shapeless functions compile once).
//!
//! - [`elementwise`]: one kernel per fused group (or single op, or copy)
//!   over a strided space: broadcasts and views are read in place.
//! - [`reduce`]: reductions and arg-reductions, a block per output.
//! - [`matmul`]: float products through cuBLAS (true `f32`, TF32 only
//!   when [`crate::set_matmul_precision`] asks for it),
//!   others (integers, layouts cuBLAS cannot read) as tiled kernels.
//! - [`index`]: gathers, concatenation, ranges, random bits (the CPU's
//!   Threefry: the same numbers for a key).
//! - [`executable`]: compiled programs: each fused elementwise group, each
//!   fused reduction (with the normalization after it) is one kernel; a
//!   product with an epilogue is cuBLAS and one kernel.
//!
//! All work of a GPU is queued on its one stream in program order; reading
//! values back (`to_host`) waits for it. Memory comes from the driver's
//! stream-ordered pool, which keeps freed blocks for reuse.
//!
//! Semantics equal the CPU backend's: integer, comparison and
//! non-transcendental float results are equal bit for bit; `f32`
//! transcendentals are each within its stated ulp bound of the true value
//! on both backends ([`cmath::bound`]: `exp`, `tanh`, `erf` 2 ulp, `log`,
//! `log1p` 1 ulp through CUDA's functions; `expm1`, `sigmoid`, `sin`, `cos`
//! the CPU's approximations), so the two agree within the sum of their
//! bounds; `f64` transcendentals and `log2`, `log10`, `tan`,
//! `pow`, `atan2` use CUDA's `f64` math (within 2 ulp of `f64`), and float
//! sums may be added in another order.

pub mod cmath;
pub mod driver;
pub mod elementwise;
pub mod executable;
pub mod index;
pub mod matmul;
pub mod reduce;
pub mod source;
pub mod storage;

use std::sync::{Arc, Mutex};

use crate::array::Data;
use crate::backend::{Backend, Executable};
use crate::buffer::Buffer;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::layout::Layout;
use crate::passes::fuse::FusedGroup;
use crate::passes::Facts;
use crate::primitive::Primitive;
use crate::program::Program;

pub use driver::Gpu;
pub use storage::CudaStorage;

/// The backend of one GPU.
#[derive(Debug)]
pub struct Cuda {
    gpu: &'static Gpu,
    /// One-element arrays uploaded before, by dtype, value bits and shape
    /// (see [`Cuda::upload`]).
    scalars: Mutex<Vec<(Scalar, Data)>>,
}

/// A one-element upload's key: dtype, the value's bits (floats as `f64`,
/// integers as `i64`), shape.
type Scalar = (DType, u64, Vec<usize>);

/// Most one-element uploads [`Cuda`] keeps for reuse.
const KEPT_SCALARS: usize = 64;

/// The backend serving GPU `ordinal`, opened on first use and kept for the
/// process; an error says why there is none (no driver, no NVRTC, no such
/// device).
pub fn backend(ordinal: usize) -> Result<&'static dyn Backend> {
    let mut open = OPEN.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, b)) = open.iter().find(|(o, _)| *o == ordinal) {
        return Ok(*b);
    }
    let gpu = Gpu::open(ordinal).map_err(|e| match e {
        Error::Device { op, msg } if !msg.starts_with("cuda:") => {
            Error::Device { op, msg: format!("cuda:{ordinal} was asked for, but {msg}") }
        }
        e => e,
    })?;
    let gpu: &'static Gpu = Box::leak(Box::new(gpu));
    let b: &'static Cuda = Box::leak(Box::new(Cuda { gpu, scalars: Mutex::default() }));
    open.push((ordinal, b));
    Ok(b)
}

/// The GPUs' backends opened so far, by ordinal.
static OPEN: Mutex<Vec<(usize, &'static Cuda)>> = Mutex::new(Vec::new());

/// The backends of the GPUs opened so far (none before the first use).
pub fn opened() -> Vec<&'static dyn Backend> {
    OPEN.lock().unwrap_or_else(|e| e.into_inner()).iter().map(|&(_, b)| b as &'static dyn Backend).collect()
}

/// Whether this machine has a usable CUDA GPU (the libraries load and the
/// driver reports at least one device).
pub fn available() -> bool {
    driver::device_count().is_ok_and(|n| n > 0)
}

/// The device storage of GPU data (an error for data of another backend).
pub(crate) fn dev(d: &Data) -> Result<&CudaStorage> {
    d.storage().as_any().downcast_ref::<CudaStorage>().ok_or_else(|| Error::Device {
        op: "cuda",
        msg: format!("a GPU kernel was given data on {}; move it with .to_device() first", d.device()),
    })
}

/// Fresh contiguous GPU data of `shape` (contents unset), for `op`.
pub(crate) fn fresh(gpu: &'static Gpu, op: &'static str, dtype: DType, shape: &[usize]) -> Result<Data> {
    crate::shape::check_size(op, shape, dtype)?;
    let n: usize = shape.iter().product();
    Ok(Data::from_parts(Arc::new(CudaStorage::alloc(gpu, op, dtype, n)?), Layout::contiguous(shape)))
}

/// A contiguous host copy of GPU data (waits for the work queued before).
pub(crate) fn to_host(gpu: &'static Gpu, d: &Data) -> Result<Buffer> {
    let c = elementwise::contiguous(gpu, d)?;
    let s = dev(&c)?;
    let n = c.layout().numel();
    Ok(crate::with_dtype!(c.dtype(), T => {
        let mut v: crate::host_vec::HostVec<T> = crate::memory::try_vec("to_host", n)?;
        v.resize(n, <T as crate::dtype::Element>::zero());
        // Bools are stored as bytes 0 and 1, so they read back as bools.
        gpu.download(&mut v, s.ptr_at(0))?;
        Buffer::from_vec(v)
    }))
}

impl Backend for Cuda {
    fn name(&self) -> &'static str {
        "cuda"
    }

    fn eval(&self, prim: &Primitive, inputs: &[&Data], shape: &[usize], dtype: DType) -> Result<Data> {
        eval(self.gpu, prim, inputs, shape, dtype)
    }

    fn facts(&self) -> &dyn Facts {
        &GpuFacts
    }

    fn lower(&self, program: Program) -> Result<Arc<dyn Executable>> {
        Ok(Arc::new(executable::CudaExecutable::new(self.gpu, program)?))
    }

    fn to_host(&self, data: &Data) -> Result<Buffer> {
        to_host(self.gpu, data)
    }

    fn synchronize(&self) -> Result<()> {
        self.gpu.sync("synchronize")
    }

    fn release_memory(&self) -> usize {
        self.scalars.lock().unwrap_or_else(|e| e.into_inner()).clear();
        self.gpu.release_blocks()
    }

    /// Host data to the GPU. A one-element array (a scalar mixed into an
    /// op, as in `x * 2 + 1`) uploaded before with the same dtype, value
    /// and shape is the same data again (arrays are never written in
    /// place), so repeated scalars cost no copy.
    fn upload(&self, buffer: Buffer, shape: &[usize]) -> Result<Data> {
        let key = (buffer.len() == 1).then(|| {
            let dt = buffer.dtype();
            let bits = crate::with_buffer!(&buffer, v => {
                let x = v[0];
                if dt.is_float() { crate::dtype::Element::to_f64(x).to_bits() } else { crate::dtype::Element::to_i64(x) as u64 }
            });
            (dt, bits, shape.to_vec())
        });
        if let Some(k) = &key {
            if let Some((_, d)) = self.scalars.lock().unwrap_or_else(|e| e.into_inner()).iter().find(|(s, _)| s == k) {
                return Ok(d.clone());
            }
        }
        let d = fresh(self.gpu, "upload", buffer.dtype(), shape)?;
        let ptr = dev(&d)?.ptr_at(0);
        crate::with_buffer!(&buffer, v => self.gpu.upload(ptr, v.as_slice())?);
        if let Some(k) = key {
            let mut kept = self.scalars.lock().unwrap_or_else(|e| e.into_inner());
            if kept.len() == KEPT_SCALARS {
                kept.remove(0);
            }
            kept.push((k, d.clone()));
        }
        Ok(d)
    }
}

/// What the optimizer needs to know of a GPU (the same for every GPU).
#[derive(Debug)]
pub struct GpuFacts;

impl Facts for GpuFacts {
    /// [`Primitive::costly`]: transcendental functions, `pow`, `atan2`.
    fn costly(&self, p: &Primitive) -> bool {
        p.costly()
    }

    /// No row blocking: a GPU kernel covers the whole array.
    fn splits_rows(&self, _shape: &[usize]) -> bool {
        false
    }

    /// Most instructions in one fused group (one kernel's source).
    fn max_group(&self) -> usize {
        256
    }
}

/// Runs `prim` on GPU `inputs`, producing an output of the inferred
/// `shape` and `dtype`. Views share the input's storage.
pub fn eval(gpu: &'static Gpu, prim: &Primitive, inputs: &[&Data], shape: &[usize], dtype: DType) -> Result<Data> {
    let leaf = matches!(prim, Primitive::Constant | Primitive::Placeholder { .. });
    if shape.contains(&0) && !leaf && !matches!(prim, Primitive::Take { .. }) {
        return fresh(gpu, "empty", dtype, shape);
    }
    if let Some(l) = inputs.first().and_then(|x| prim.view_layout(x.layout(), shape)) {
        return Ok(inputs[0].view(l));
    }
    match prim {
        Primitive::Constant | Primitive::Placeholder { .. } => {
            unreachable!("leaves are never evaluated: constants hold data, placeholders are rejected first")
        }
        Primitive::Unary(_) | Primitive::Binary(_) | Primitive::Where | Primitive::AsType(_) => {
            let g = FusedGroup::single(prim.clone(), inputs.iter().map(|d| d.dtype()).collect(), dtype);
            // The kernels of each op and dtypes on each GPU, kept for the
            // process (an eager op then launches without writing its
            // source again).
            type Kept = Vec<(usize, FusedGroup, Arc<driver::Memo>)>;
            static EAGER: Mutex<Kept> = Mutex::new(Vec::new());
            let memo = {
                let mut kept = EAGER.lock().unwrap_or_else(|e| e.into_inner());
                match kept.iter().find(|(o, k, _)| *o == gpu.ordinal && *k == g) {
                    Some((_, _, m)) => m.clone(),
                    None => {
                        let m = Arc::new(driver::Memo::default());
                        kept.push((gpu.ordinal, g.clone(), m.clone()));
                        m
                    }
                }
            };
            Ok(elementwise::run(gpu, &g, Some(&memo), &[], inputs, shape)?.remove(0))
        }
        Primitive::Reduce { op, axes, .. } => reduce::reduce(gpu, *op, inputs[0], axes, shape, dtype),
        Primitive::ArgReduce { op, axis, .. } => reduce::arg_reduce(gpu, *op, inputs[0], *axis, shape),
        Primitive::Matmul => matmul::matmul(gpu, inputs[0], inputs[1], shape),
        // A reshape the strides do not allow as a view (views returned above).
        Primitive::Reshape { .. } | Primitive::Squeeze { .. } | Primitive::ExpandDims { .. } | Primitive::Copy => {
            let c = elementwise::copy(gpu, inputs[0])?;
            Ok(c.relayout(Layout::contiguous(shape)))
        }
        Primitive::Transpose { .. }
        | Primitive::BroadcastTo { .. }
        | Primitive::BroadcastLike
        | Primitive::Slice { .. }
        | Primitive::SplitSection { .. } => unreachable!("views are returned above"),
        Primitive::Concatenate { axis } => index::concatenate(gpu, inputs, *axis, shape),
        Primitive::Take { axis } => index::take(gpu, inputs[0], inputs[1], *axis, shape),
        Primitive::Arange { start, step, len, dtype } => index::arange(gpu, *start, *step, *len, *dtype),
        Primitive::RandomBits { .. } => index::random_bits(gpu, inputs[0], shape),
    }
}
