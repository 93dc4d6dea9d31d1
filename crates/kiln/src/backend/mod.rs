//! Backends: where primitives run. [`Backend`] is the seam between the
//! graph layer and a backend, and [`for_device`] is the one place that
//! names concrete backends: it picks the backend that serves a device.

pub mod cpu;

pub use cpu::team::{set_threads, threads};

use crate::array::Data;
use crate::buffer::Buffer;
use crate::device::Device;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::primitive::Primitive;

/// What the graph layer asks of a backend.
pub trait Backend: Send + Sync + 'static {
    /// The backend's name, for messages.
    fn name(&self) -> &'static str;
    /// Runs `prim` eagerly on evaluated `inputs` (this backend's data),
    /// producing an output of the inferred `shape` and `dtype`.
    fn eval(&self, prim: &Primitive, inputs: &[&Data], shape: &[usize], dtype: DType) -> Result<Data>;
    /// A contiguous host copy of `data`'s elements in row-major order.
    fn to_host(&self, data: &Data) -> Result<Buffer>;
    /// This backend's data for a contiguous host buffer of `shape` (whose
    /// length matches the shape).
    fn upload(&self, buffer: Buffer, shape: &[usize]) -> Result<Data>;
}

/// The backend that serves `device`, or an error saying why there is none.
pub fn for_device(device: Device) -> Result<&'static dyn Backend> {
    match device {
        Device::Cpu => Ok(&cpu::Cpu),
        Device::Cuda(_) => Err(Error::Device {
            op: "device",
            msg: format!("{device} was asked for, but this build of kiln has no CUDA backend"),
        }),
    }
}
