//! Devices: every array has one, ops keep it, a device without a backend
//! is a clear error (never a panic), and the default device is restored.

use kiln::{compile, default_device, set_default_device, with_default_device, Array, Device, Error, Result};

fn device_error(r: Result<impl std::fmt::Debug>, want: &str) {
    match r {
        Err(e @ Error::Device { .. }) => assert!(e.to_string().contains(want), "{e}"),
        other => panic!("expected a device error mentioning {want:?}, got {other:?}"),
    }
}

#[test]
fn arrays_and_ops_are_on_the_cpu_by_default() -> Result<()> {
    assert_eq!(default_device(), Device::Cpu);
    let x = Array::from_slice(&[1.0f32, 2.0], &[2])?;
    let y = ((&x * 2.0f32)? + kiln::arange(0.0, 2.0, 1.0, kiln::DType::F32)?)?;
    assert_eq!(x.device(), Device::Cpu);
    assert_eq!(y.device(), Device::Cpu);
    assert_eq!(y.to_vec::<f32>()?, vec![2.0, 5.0]);
    assert_eq!(Device::Cuda(3).to_string(), "cuda:3");
    Ok(())
}

/// A device no build serves (an index past any machine's GPUs).
const MISSING: Device = Device::Cuda(4096);

#[test]
fn a_device_without_a_backend_is_an_error() -> Result<()> {
    device_error(set_default_device(MISSING), "cuda:4096");
    assert_eq!(default_device(), Device::Cpu, "a refused default leaves the old one");
    device_error(with_default_device(Device::Cuda(4097), || 1), "cuda:4097 was asked for");
    let x = Array::from_slice(&[1.0f32, 2.0], &[2])?;
    device_error(x.to_device(MISSING), "cuda:4096");
    Ok(())
}

#[test]
fn with_default_device_restores_the_default_even_on_panic() -> Result<()> {
    let n = with_default_device(Device::Cpu, || Array::scalar(1.0f32).device())?;
    assert_eq!(n, Device::Cpu);
    let r = std::panic::catch_unwind(|| with_default_device(Device::Cpu, || panic!("inside")));
    assert!(r.is_err());
    assert_eq!(default_device(), Device::Cpu);
    Ok(())
}

#[test]
fn to_device_of_the_same_device_is_the_array_itself() -> Result<()> {
    let x = Array::from_slice(&[1i32, 2, 3], &[3])?;
    let y = x.to_device(Device::Cpu)?;
    assert_eq!(y.id(), x.id());
    Ok(())
}

#[test]
fn compiled_functions_run_on_their_arguments_device() -> Result<()> {
    let f = compile(|x: &Array| (x * 3.0f32)? + kiln::random::normal(&[2], kiln::DType::F32, 0.0, 1.0, None)?);
    let x = Array::from_slice(&[1.0f32, 2.0], &[2])?;
    let y = f.call(&x)?;
    assert_eq!(y.device(), Device::Cpu);
    assert_eq!(y.shape(), &[2]);
    Ok(())
}

#[test]
fn data_views_are_checked_against_their_storage() -> Result<()> {
    let x = Array::from_slice(&[1.0f32, 2.0, 3.0, 4.0], &[2, 2])?;
    x.eval()?;
    let d = x.data().expect("evaluated");
    assert_eq!(d.device(), Device::Cpu);
    assert_eq!(d.dtype(), kiln::DType::F32);
    // The transpose of the same storage is a valid view ...
    let t = kiln::Data::new(d.storage().clone(), d.layout().permute(&[1, 0]))?;
    assert_eq!(Array::from_data(t)?.to_vec::<f32>()?, vec![1.0, 3.0, 2.0, 4.0]);
    // ... one reaching past it is refused.
    let mut past = d.layout().clone();
    past.offset = 1;
    assert!(kiln::Data::new(d.storage().clone(), past).is_err());
    Ok(())
}
