//! [`CudaStorage`]: device memory of one dtype on one GPU.

use std::any::Any;

use crate::backend::cuda::driver::Gpu;
use crate::device::Device;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::storage::Storage;

/// Device memory holding `len` elements of `dtype` (bools as bytes 0 and 1,
/// `f16`/`bf16` as their 16-bit patterns), freed when the last array
/// viewing it goes.
#[derive(Debug)]
pub struct CudaStorage {
    gpu: &'static Gpu,
    ptr: u64,
    dtype: DType,
    len: usize,
}

impl CudaStorage {
    /// Fresh, unset memory for `len` elements of `dtype`, for `op`.
    pub fn alloc(gpu: &'static Gpu, op: &'static str, dtype: DType, len: usize) -> Result<CudaStorage> {
        let bytes = len.checked_mul(dtype.size()).ok_or(Error::OutOfMemory { op, bytes: usize::MAX })?;
        let ptr = gpu.alloc(op, bytes)?;
        Ok(CudaStorage { gpu, ptr, dtype, len })
    }

    /// The device address of element `i` (which may be one past the end).
    pub fn ptr_at(&self, i: usize) -> u64 {
        self.ptr + (i * self.dtype.size()) as u64
    }

    /// The GPU that holds it.
    pub fn gpu(&self) -> &'static Gpu {
        self.gpu
    }
}

impl Drop for CudaStorage {
    fn drop(&mut self) {
        self.gpu.free(self.ptr, self.len * self.dtype.size());
    }
}

impl Storage for CudaStorage {
    fn device(&self) -> Device {
        Device::Cuda(self.gpu.ordinal)
    }
    fn dtype(&self) -> DType {
        self.dtype
    }
    fn len(&self) -> usize {
        self.len
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}
