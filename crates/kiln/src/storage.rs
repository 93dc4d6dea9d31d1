//! [`Storage`]: the memory behind an evaluated array, owned by a backend.
//!
//! The graph layer never looks inside a storage: it asks for its device,
//! dtype and length (to check that a layout stays inside it) and hands it
//! back to the backend that made it. Each backend has its own storage type
//! (the CPU's is the host [`Buffer`]; a GPU's is device memory) and
//! recovers it with [`Storage::as_any`] and a downcast.

use std::any::Any;
use std::fmt;

use crate::buffer::Buffer;
use crate::device::Device;
use crate::dtype::DType;

/// Memory of one dtype on one device, shared by the arrays that view it.
pub trait Storage: Any + Send + Sync + fmt::Debug {
    /// The device the memory is on.
    fn device(&self) -> Device;
    /// The dtype of the elements.
    fn dtype(&self) -> DType;
    /// Number of elements.
    fn len(&self) -> usize;
    /// True when the storage holds no elements.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The storage as `Any`, for its backend to downcast.
    fn as_any(&self) -> &dyn Any;
    /// The storage as `Any`, mutably (for a backend that writes an output
    /// over an input nothing else holds).
    fn as_any_mut(&mut self) -> &mut dyn Any;
}

/// A host buffer is the CPU's storage.
impl Storage for Buffer {
    fn device(&self) -> Device {
        Device::Cpu
    }
    fn dtype(&self) -> DType {
        Buffer::dtype(self)
    }
    fn len(&self) -> usize {
        Buffer::len(self)
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}
