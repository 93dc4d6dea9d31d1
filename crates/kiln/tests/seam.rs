//! The device seam, proven by a second backend: `Mirror` serves a device of
//! its own with a storage type of its own (a host buffer wrapped in another
//! type, which the CPU kernels would refuse). It runs every primitive and
//! every compiled program through the CPU backend, converting storage at
//! its border. Eager evaluation, `compile` (shapeless too), random draws,
//! reads, printing and device errors all work through it, with no change
//! to the graph layer: everything the graph layer does with data goes
//! through the `Backend` and `Executable` traits.

use std::any::Any;
use std::sync::{Arc, OnceLock};

use kiln::backend::cpu::matmul::sgemm;
use kiln::backend::{for_device, register, Backend, Executable, StepView};
use kiln::passes::Facts;
use kiln::primitive::Primitive;
use kiln::program::Program;
use kiln::storage::Storage;
use kiln::{compile, compile_with, Array, Buffer, CompileOptions, DType, Data, Device, Error, Result};

/// The mirror's device.
const MIRROR: Device = Device::Cuda(7);

/// The mirror's storage: a host buffer under another type.
#[derive(Debug)]
struct MirrorStorage(Buffer);

impl Storage for MirrorStorage {
    fn device(&self) -> Device {
        MIRROR
    }
    fn dtype(&self) -> DType {
        self.0.dtype()
    }
    fn len(&self) -> usize {
        self.0.len()
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

struct Mirror;

fn cpu() -> &'static dyn Backend {
    for_device(Device::Cpu).expect("the CPU backend")
}

/// Mirror data as CPU data (a copy of its buffer, same layout).
fn to_cpu(d: &Data) -> Result<Data> {
    let m = d.storage().as_any().downcast_ref::<MirrorStorage>().expect("mirror storage");
    Data::new(Arc::new(m.0.clone()), d.layout().clone())
}

/// CPU data as mirror data (contiguous).
fn from_cpu(d: &Data) -> Result<Data> {
    assert_eq!(d.device(), Device::Cpu);
    Mirror.upload(cpu().to_host(d)?, &d.layout().shape)
}

impl Backend for Mirror {
    fn name(&self) -> &'static str {
        "mirror"
    }
    fn eval(&self, prim: &Primitive, inputs: &[&Data], shape: &[usize], dtype: DType) -> Result<Data> {
        let ins = inputs.iter().map(|d| to_cpu(d)).collect::<Result<Vec<_>>>()?;
        let refs: Vec<&Data> = ins.iter().collect();
        from_cpu(&cpu().eval(prim, &refs, shape, dtype)?)
    }
    fn facts(&self) -> &dyn Facts {
        cpu().facts()
    }
    /// The program's constants (captured arrays, scalars) are the
    /// mirror's data: the CPU executable gets CPU copies of them.
    fn lower(&self, mut program: Program) -> Result<Arc<dyn Executable>> {
        for ins in &mut program.instrs {
            if let Some(d) = &ins.constant {
                ins.constant = Some(to_cpu(d)?);
            }
        }
        Ok(Arc::new(MirrorExe(cpu().lower(program)?)))
    }
    fn to_host(&self, data: &Data) -> Result<Buffer> {
        cpu().to_host(&to_cpu(data)?)
    }
    fn upload(&self, buffer: Buffer, shape: &[usize]) -> Result<Data> {
        Data::new(Arc::new(MirrorStorage(buffer)), kiln::layout::Layout::contiguous(shape))
    }
}

#[derive(Debug)]
struct MirrorExe(Arc<dyn Executable>);

impl Executable for MirrorExe {
    fn program(&self) -> &Program {
        self.0.program()
    }
    fn run(&self, args: &[&Data], shapes: Option<&[Vec<usize>]>) -> Result<Vec<Data>> {
        let ins = args.iter().map(|d| to_cpu(d)).collect::<Result<Vec<_>>>()?;
        let refs: Vec<&Data> = ins.iter().collect();
        self.0.run(&refs, shapes)?.iter().map(from_cpu).collect()
    }
    fn kernel_count(&self) -> usize {
        self.0.kernel_count()
    }
    fn steps(&self) -> Vec<StepView<'_>> {
        self.0.steps()
    }
    fn step_code(&self, step: usize) -> Option<String> {
        self.0.step_code(step)
    }
    fn notes(&self) -> Vec<String> {
        self.0.notes()
    }
}

fn setup() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        static MIRROR_BACKEND: Mirror = Mirror;
        register(MIRROR, &MIRROR_BACKEND).expect("register the mirror");
    });
}

fn on_mirror(v: &[f32], shape: &[usize]) -> Result<Array> {
    Array::from_slice(v, shape)?.to_device(MIRROR)
}

fn is_mirror(a: &Array) -> bool {
    a.device() == MIRROR && a.data().is_some_and(|d| d.storage().as_any().is::<MirrorStorage>())
}

#[test]
fn eager_ops_run_on_the_mirror_and_match_the_cpu() -> Result<()> {
    setup();
    let v: Vec<f32> = (0..24).map(|i| i as f32 * 0.25 - 3.0).collect();
    let f = |x: &Array| -> Result<Array> {
        let y = kiln::softmax(&(x.exp()? * 2.0f32)?, -1)?;
        let z = kiln::matmul(&y, &kiln::transpose(x)?)?;
        (z.sum(kiln::Axes::All, false)? + &x.max(kiln::Axes::All, false)?)? - 1.0f32
    };
    let cpu_x = Array::from_slice(&v, &[4, 6])?;
    let m_x = on_mirror(&v, &[4, 6])?;
    let (want, got) = (f(&cpu_x)?, f(&m_x)?);
    got.eval()?;
    assert!(is_mirror(&got), "the result is the mirror's storage");
    // The mirror materializes the transpose that the CPU reads as a view.
    // kiln's own f32 kernels sum a product in one order for any layout, so
    // the results are equal bit for bit; the portable `gemm` crate (below
    // AVX2, or with `KILN_SIMD=scalar`) may order its sums by layout (its
    // AVX2 kernels did, in the last bit).
    let (g, w) = (got.to_vec::<f32>()?, want.to_vec::<f32>()?);
    if sgemm::level() == sgemm::Level::Portable {
        assert!(g.iter().zip(&w).all(|(a, b)| (a - b).abs() <= 1e-6 * b.abs()), "{g:?} against {w:?}");
    } else {
        assert_eq!(g, w);
    }
    // Views (a transpose, a slice) share the mirror's storage.
    let t = kiln::transpose(&m_x)?;
    t.eval()?;
    assert!(is_mirror(&t));
    assert_eq!(t.to_vec::<f32>()?, kiln::transpose(&cpu_x)?.to_vec::<f32>()?);
    assert_eq!(format!("{m_x}"), format!("{cpu_x}"));
    Ok(())
}

#[test]
fn compiled_functions_run_on_the_mirror() -> Result<()> {
    setup();
    let g = |x: &Array, w: &Array| -> Result<Array> { (kiln::matmul(x, w)? + 1.0f32)?.tanh() };
    let f = compile(g);
    let xv: Vec<f32> = (0..32).map(|i| (i as f32).sin()).collect();
    let wv: Vec<f32> = (0..16).map(|i| (i as f32).cos()).collect();
    let (x, w) = (on_mirror(&xv, &[8, 4])?, on_mirror(&wv, &[4, 4])?);
    let y = f.call((&x, &w))?;
    assert!(is_mirror(&y));
    let want = g(&Array::from_slice(&xv, &[8, 4])?, &Array::from_slice(&wv, &[4, 4])?)?;
    // Where the product's kernel reads a bias (AVX-512), the `+ 1` seeds its
    // accumulators: equal to eager up to the rounding of that sum.
    for (a, b) in y.to_vec::<f32>()?.iter().zip(want.to_vec::<f32>()?) {
        assert!((a - b).abs() <= 4.0 * f32::EPSILON * b.abs().max(1.0), "compiled {a}, eager {b}");
    }
    // The device is part of the cache key: CPU arguments trace again.
    f.call((&Array::from_slice(&xv, &[8, 4])?, &Array::from_slice(&wv, &[4, 4])?))?;
    assert_eq!(f.stats().traces, 2);
    f.call((&x, &w))?;
    assert_eq!(f.stats().traces, 2);
    assert!(f.explain((&x, &w))?.contains("kernel"));
    Ok(())
}

#[test]
fn shapeless_and_random_work_through_the_seam() -> Result<()> {
    setup();
    let f = compile_with(
        |x: &Array| -> Result<Array> {
            let noise = kiln::random::uniform_like(0.0, 1.0, x, DType::F32, None)?;
            (x * 2.0f32)? + noise
        },
        CompileOptions { shapeless: true, ..Default::default() },
    );
    for n in [3usize, 7] {
        let v: Vec<f32> = (0..n).map(|i| i as f32).collect();
        let y = f.call(&on_mirror(&v, &[n])?)?;
        assert!(is_mirror(&y));
        let got = y.to_vec::<f32>()?;
        assert_eq!(got.len(), n);
        for (g, x) in got.iter().zip(&v) {
            assert!((0.0..1.0).contains(&(g - 2.0 * x)), "{g} = 2 * {x} + uniform noise");
        }
    }
    assert_eq!(f.stats().traces, 1);
    Ok(())
}

#[test]
fn mixing_devices_is_an_error_naming_both() -> Result<()> {
    setup();
    let m = on_mirror(&[1.0, 2.0], &[2])?;
    let c = Array::from_slice(&[1.0f32, 2.0], &[2])?;
    match &m + &c {
        Err(e @ Error::Device { .. }) => {
            let s = e.to_string();
            assert!(s.contains("cuda:7") && s.contains("cpu") && s.contains("add"), "{s}");
        }
        other => panic!("expected a device error, got {other:?}"),
    }
    let f = compile(|a: &Array, b: &Array| a + b);
    assert!(matches!(f.call((&m, &c)), Err(Error::Device { .. })));
    // Moving back to the CPU makes them compatible.
    assert_eq!((m.to_device(Device::Cpu)? + &c)?.to_vec::<f32>()?, vec![2.0, 4.0]);
    Ok(())
}

#[test]
fn zero_d_arrays_holding_data_join_the_other_device() -> Result<()> {
    setup();
    let m = on_mirror(&[1.0, 2.0], &[2])?;
    let two = Array::scalar(2.0f32);
    // Eager: the CPU scalar moves to the mirror, either side of the op.
    for y in [(&m * &two)?, (&two * &m)?] {
        y.eval()?;
        assert!(is_mirror(&y));
        assert_eq!(y.to_vec::<f32>()?, vec![2.0, 4.0]);
    }
    // Compiled: as an argument, and as a constant made while tracing.
    let f = compile(|a: &Array, s: &Array| (a * s)? + &kiln::full(&[], 1.0, DType::F32)?);
    let y = f.call((&m, &two))?;
    assert!(is_mirror(&y));
    assert_eq!(y.to_vec::<f32>()?, vec![3.0, 5.0]);
    // A 0-d array not yet computed, or any larger array, does not move.
    let lazy = (&two + 1.0f32)?;
    assert!(matches!(&m * &lazy, Err(Error::Device { .. })));
    let one = Array::from_slice(&[2.0f32], &[1])?;
    assert!(matches!(&m * &one, Err(Error::Device { .. })));
    Ok(())
}

#[test]
fn kiln_default_device_creates_arrays_there() -> Result<()> {
    setup();
    let a = kiln::with_default_device(MIRROR, || -> Result<Array> { Array::from_slice(&[1.0f32, 2.0, 3.0], &[3]) })??;
    let z = kiln::with_default_device(MIRROR, || kiln::zeros(&[2], DType::F32))??;
    assert_eq!(a.device(), MIRROR);
    assert_eq!(z.device(), MIRROR);
    assert_eq!((&a * 2.0f32)?.to_vec::<f32>()?, vec![2.0, 4.0, 6.0]);
    assert_eq!(kiln::default_device(), Device::Cpu);
    Ok(())
}

/// Creation ops take a device where they take a dtype (`DType::on`): the
/// arrays are made there, evaluate there, and the default device is left
/// as it was; a device without a backend is an error.
#[test]
fn creation_ops_take_a_device_with_their_dtype() -> Result<()> {
    setup();
    let on = DType::F32.on(MIRROR);
    let made = [
        kiln::zeros(&[2, 3], on)?,
        kiln::ones(&[3], on)?,
        kiln::full(&[2], 2.5f32, on)?,
        kiln::arange(0.0, 4.0, 1.0, on)?,
        kiln::linspace(0.0, 1.0, 5, on)?,
        kiln::eye(3, 3, 0, on)?,
    ];
    for a in &made {
        assert_eq!(a.device(), MIRROR, "{:?} is made on the mirror", a.shape());
        a.eval()?;
        assert!(is_mirror(a), "{:?} evaluates into mirror storage", a.shape());
    }
    assert_eq!(made[2].to_vec::<f32>()?, vec![2.5, 2.5]);
    assert_eq!(made[3].to_vec::<f32>()?, vec![0.0, 1.0, 2.0, 3.0]);
    assert_eq!(made[4].to_vec::<f32>()?, vec![0.0, 0.25, 0.5, 0.75, 1.0]);
    assert_eq!(made[5].to_vec::<f32>()?, vec![1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]);
    assert_eq!(kiln::default_device(), Device::Cpu);
    assert_eq!(kiln::zeros(&[2], DType::F32)?.device(), Device::Cpu);
    let err = kiln::zeros(&[2], DType::F32.on(Device::Cuda(5))).expect_err("no backend for cuda:5");
    assert!(err.to_string().contains("cuda:5"), "{err}");
    Ok(())
}
