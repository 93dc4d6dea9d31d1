//! Devices: where an array's data lives and where its operations run.
//!
//! Every array belongs to one [`Device`] ([`Array::device`]). An operation
//! runs on the device of its array inputs, which must all be on one device
//! (otherwise [`Error::Device`] names the op and both devices); Rust
//! scalars mixed into an op become constants on that device. Arrays made
//! from host data or by creation ops (`zeros`, `arange`, random draws
//! without an array to follow) go to the *default device*:
//! [`set_default_device`] sets it for the process, [`with_default_device`]
//! overrides it on the current thread for the length of a closure.
//! [`Array::to_device`] copies an array to another device.
//!
//! A compiled function runs on the device of its arguments; the device is
//! part of its cache key, so one function compiled once per device.
//!
//! Which backend serves a device is decided in one place,
//! [`crate::backend::for_device`]; a device without a backend (CUDA in a
//! build without the `cuda` feature, or a GPU index that does not exist)
//! is an error when it is asked for, never a panic.

use std::cell::Cell;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::array::Array;
use crate::error::{Error, Result};

/// A device: the host CPU or one NVIDIA GPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Device {
    /// The host CPU (all its cores).
    Cpu,
    /// The CUDA GPU of this index.
    Cuda(usize),
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

/// The process-wide default device, encoded: 0 = CPU, i + 1 = CUDA GPU i.
static DEFAULT: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// This thread's override of the default device ([`with_default_device`]).
    static OVERRIDE: Cell<Option<Device>> = const { Cell::new(None) };
}

fn encode(d: Device) -> usize {
    match d {
        Device::Cpu => 0,
        Device::Cuda(i) => i.saturating_add(1),
    }
}

fn decode(v: usize) -> Device {
    match v {
        0 => Device::Cpu,
        i => Device::Cuda(i - 1),
    }
}

/// The device new arrays go to: this thread's override if one is active
/// ([`with_default_device`]), else the process-wide default (the CPU unless
/// [`set_default_device`] changed it).
pub fn default_device() -> Device {
    OVERRIDE.with(|o| o.get()).unwrap_or_else(|| decode(DEFAULT.load(Ordering::Relaxed)))
}

/// Sets the process-wide default device. A device without a backend is an
/// error and leaves the default unchanged.
pub fn set_default_device(device: Device) -> Result<()> {
    crate::backend::for_device(device)?;
    DEFAULT.store(encode(device), Ordering::Relaxed);
    Ok(())
}

/// Runs `f` with `device` as this thread's default device, then restores
/// the previous default (also when `f` panics). A device without a backend
/// is an error and `f` does not run.
pub fn with_default_device<R>(device: Device, f: impl FnOnce() -> R) -> Result<R> {
    crate::backend::for_device(device)?;
    struct Restore(Option<Device>);
    impl Drop for Restore {
        fn drop(&mut self) {
            OVERRIDE.with(|o| o.set(self.0));
        }
    }
    let _restore = Restore(OVERRIDE.with(|o| o.replace(Some(device))));
    Ok(f())
}

/// Waits until the work queued on `device` is done. Evaluating an array
/// on a GPU queues its kernels and returns; reading values waits for them,
/// and so does this (for timing, or before handing memory to other code).
/// On the CPU, work is done when `eval` returns.
pub fn synchronize(device: Device) -> Result<()> {
    crate::backend::for_device(device)?.synchronize()
}

/// What a creation op makes: a dtype, and the device to make it on (the
/// default device when `None`). Creation ops (`full`, `zeros`, `ones`,
/// `arange`, `linspace`, `eye`) take `impl Into<Spec>`, so a plain
/// [`DType`](crate::DType) keeps meaning "on the default device" and
/// [`DType::on`](crate::DType::on) names another:
///
/// ```
/// use kiln::{DType, Device};
/// let x = kiln::zeros(&[2, 3], DType::F32.on(Device::Cpu))?;
/// assert_eq!(x.device(), Device::Cpu);
/// // A device with no backend is an error, never a panic.
/// assert!(kiln::zeros(&[2], DType::F32.on(Device::Cuda(99))).is_err());
/// # Ok::<(), kiln::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Spec {
    /// The element type.
    pub dtype: crate::DType,
    /// The device; `None` for the default device.
    pub device: Option<Device>,
}

impl From<crate::DType> for Spec {
    fn from(dtype: crate::DType) -> Spec {
        Spec { dtype, device: None }
    }
}

impl Spec {
    /// Runs `make` with the dtype, with the spec's device (if any) as the
    /// thread's default device: everything `make` creates goes there.
    pub(crate) fn make<R>(self, make: impl FnOnce(crate::DType) -> Result<R>) -> Result<R> {
        match self.device {
            None => make(self.dtype),
            Some(d) => with_default_device(d, || make(self.dtype))?,
        }
    }
}

/// The one device of `inputs` for an op named `op`, and the inputs on it:
/// the device they share, or the default device when there are none. A
/// 0-d array that already holds data on another device moves to the
/// others' device (as a CPU scalar tensor joins a GPU tensor in torch);
/// other arrays on two devices are an [`Error::Device`] naming both.
pub(crate) fn common(op: &'static str, inputs: Vec<Array>) -> Result<(Device, Vec<Array>)> {
    let Some(first) = inputs.first() else { return Ok((default_device(), inputs)) };
    let d = first.device();
    if inputs.iter().all(|a| a.device() == d) {
        return Ok((d, inputs));
    }
    let movable = |a: &Array| a.ndim() == 0 && a.is_evaluated();
    let target = inputs.iter().find(|a| !movable(a)).unwrap_or(first).device();
    let inputs = inputs
        .into_iter()
        .map(|a| match a.device() {
            x if x == target => Ok(a),
            _ if movable(&a) => a.to_device(target),
            other => Err(Error::Device {
                op,
                msg: format!("its inputs are on two devices, {target} and {other}; move one with .to_device() first"),
            }),
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((target, inputs))
}
