//! The CUDA backend against the CPU backend: every elementwise op on every
//! dtype, reductions, products, views, gathers, random bits and compiled
//! functions computed on the GPU equal the CPU's results (bit for bit, or
//! within the stated ulp bound for transcendental functions). Without a
//! GPU the GPU tests print why they skip, and asking for a GPU is a clear
//! error (never a panic).
#![cfg(feature = "cuda")]

mod common;

use common::ulp::{domain, linear, random_bits, reference, strided, ulp_err};
use common::Rng;
use half::{bf16, f16};
use kiln::backend::cpu::simd_math::Func;
use kiln::backend::cuda::cmath;
use kiln::dtype::ALL_DTYPES;
use kiln::primitive::{ArgReduceOp, BinaryOp, ReduceOp, UnaryOp};
use kiln::{compile, compile_with, Array, CompileOptions, DType, Device, Error, Result};

/// The GPU, or `None` (with the reason printed) when this machine has none.
fn gpu() -> Option<Device> {
    if kiln::backend::cuda::available() {
        Some(Device::Cuda(0))
    } else {
        let why = match kiln::zeros(&[1], DType::F32.on(Device::Cuda(0))) {
            Err(e) => e.to_string(),
            Ok(_) => "no device".into(),
        };
        eprintln!("skipped: no CUDA GPU here ({why})");
        None
    }
}

#[test]
fn asking_for_a_missing_gpu_is_an_error_not_a_panic() -> Result<()> {
    let bad = if kiln::backend::cuda::available() { Device::Cuda(4096) } else { Device::Cuda(0) };
    for r in [kiln::zeros(&[2], DType::F32.on(bad)).map(|_| ()), kiln::set_default_device(bad)] {
        match r {
            Err(e @ Error::Device { .. }) => {
                let msg = e.to_string();
                assert!(msg.contains("CUDA") || msg.contains("cuda"), "{msg}");
            }
            other => panic!("expected a device error, got {other:?}"),
        }
    }
    assert_eq!(kiln::default_device(), Device::Cpu);
    Ok(())
}

/// Values of every kind for dtype `dt`, as a CPU array.
fn values(dt: DType, rng: &mut Rng, n: usize) -> Result<Array> {
    let mut v: Vec<f64> = if dt.is_float() {
        vec![
            0.0,
            -0.0,
            1.0,
            -1.0,
            0.5,
            -2.5,
            3.75,
            1e-3,
            100.0,
            -100.0,
            1e30,
            -1e30,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::NAN,
            1e-40,
            65504.0,
            70000.0,
            88.7,
            -104.0,
            1e5,
            -3e5,
            2.5,
            1.5,
            0.1,
            -0.7,
            9.5,
            1e-300,
        ]
    } else {
        vec![
            0.0,
            1.0,
            -1.0,
            2.0,
            -2.0,
            7.0,
            -7.0,
            100.0,
            -100.0,
            127.0,
            128.0,
            255.0,
            256.0,
            2147483647.0,
            -2147483648.0,
            3.0,
            31.0,
            33.0,
            64.0,
        ]
    };
    while v.len() < n {
        let x = rng.uniform(-1.0, 1.0) * [1.0, 4.0, 40.0, 1e4][rng.int(0, 3) as usize];
        v.push(if dt.is_float() { x } else { x.round() });
    }
    let a = Array::from_slice(&v, &[v.len()])?;
    let a = if dt.is_float() { a } else { a.astype(DType::I64)? };
    a.astype(dt)
}

/// Ordered integer of a float's bits (so ulp distance is a difference).
fn ordered(bits: u64, width: u32) -> i128 {
    let sign = 1u64 << (width - 1);
    if bits & sign != 0 {
        -((bits & !sign) as i128)
    } else {
        bits as i128
    }
}

/// Each element as (bits, width) on the CPU.
fn bits(a: &Array) -> Result<(Vec<u64>, u32)> {
    let a = a.to_device(Device::Cpu)?;
    Ok(match a.dtype() {
        DType::F16 => (a.to_vec::<f16>()?.iter().map(|v| v.to_bits() as u64).collect(), 16),
        DType::BF16 => (a.to_vec::<bf16>()?.iter().map(|v| v.to_bits() as u64).collect(), 16),
        DType::F32 => (a.to_vec::<f32>()?.iter().map(|v| v.to_bits() as u64).collect(), 32),
        DType::F64 => (a.to_vec::<f64>()?.iter().map(|v| v.to_bits()).collect(), 64),
        _ => (a.astype(DType::I64)?.to_vec::<i64>()?.iter().map(|&v| v as u64).collect(), 0),
    })
}

/// Asserts that `got` (GPU) equals `want` (CPU): same dtype and shape, and
/// every element equal in bits, or for `ulps > 0` within that many ulps
/// (NaN matching NaN).
fn same(got: &Array, want: &Array, ulps: u64, ctx: &str) -> Result<()> {
    assert_eq!(got.dtype(), want.dtype(), "{ctx}: dtype");
    assert_eq!(got.shape(), want.shape(), "{ctx}: shape");
    let (g, _) = bits(got)?;
    let (want_v, width) = bits(want)?;
    let dt = want.dtype();
    for (i, (&a, &b)) in g.iter().zip(&want_v).enumerate() {
        let ok = if width == 0 || ulps == 0 {
            a == b || (is_nan(a, dt) && is_nan(b, dt))
        } else if is_nan(a, dt) || is_nan(b, dt) {
            is_nan(a, dt) && is_nan(b, dt)
        } else {
            (ordered(a, width) - ordered(b, width)).unsigned_abs() <= ulps as u128
        };
        assert!(ok, "{ctx}: element {i}: GPU bits {a:#x}, CPU bits {b:#x} (width {width}, {ulps} ulp allowed)");
    }
    Ok(())
}

/// Whether bits `b` of a float of `dt` are a NaN (of any sign and payload).
fn is_nan(b: u64, dt: DType) -> bool {
    match dt {
        DType::F16 => f16::from_bits(b as u16).is_nan(),
        DType::BF16 => bf16::from_bits(b as u16).is_nan(),
        DType::F32 => f32::from_bits(b as u32).is_nan(),
        DType::F64 => f64::from_bits(b).is_nan(),
        _ => false,
    }
}

/// The ulp bound a result of `dt` from a transcendental function meets.
fn bound(transcendental: bool, dt: DType) -> u64 {
    match (transcendental, dt) {
        (false, _) => 0,
        (true, DType::F16 | DType::BF16) => 1,
        _ => 2,
    }
}

/// How far apart (ulps) the GPU's and the CPU's results of unary `op` on
/// `dt` may be: for the `f32` functions whose GPU form is CUDA's own, the
/// sum of the two backends' bounds from the true value.
fn unary_bound(op: UnaryOp, dt: DType) -> u64 {
    use UnaryOp::*;
    match Func::of(op) {
        Some(f) if dt == DType::F32 => (cmath::bound(f) + f.bound()).ceil() as u64,
        // The CPU's vectorized f64 functions (`math_f64`: 1 ulp for exp,
        // expm1, log, log2, sin and cos, 2 for log1p, log10, tan, tanh and
        // sigmoid, measured against the C library) against CUDA's (at
        // most 2).
        _ if dt == DType::F64
            && matches!(op, Exp | Expm1 | Log | Log1p | Log2 | Log10 | Sin | Cos | Tan | Tanh | Sigmoid) =>
        {
            4
        }
        _ => bound(transcendental_unary(op), dt),
    }
}

fn transcendental_unary(op: UnaryOp) -> bool {
    use UnaryOp::*;
    matches!(op, Exp | Expm1 | Log | Log1p | Log2 | Log10 | Sin | Cos | Tan | Tanh | Sigmoid | Erf)
}

#[test]
fn elementwise_ops_equal_the_cpu_on_every_dtype() -> Result<()> {
    let Some(g) = gpu() else { return Ok(()) };
    let mut rng = Rng::new(7);
    let mut checked = 0;
    for dt in ALL_DTYPES {
        let x = values(dt, &mut rng, 96)?;
        // A second operand: the values in another order.
        let n = x.shape()[0];
        let perm: Vec<i32> = (0..n as i32).map(|i| (i * 37 + 11) % n as i32).collect();
        let y = kiln::take(&x, &Array::from_slice(&perm, &[n])?, 0)?;
        let (xg, yg) = (x.to_device(g)?, y.to_device(g)?);
        for op in UnaryOp::ALL {
            let Ok(want) = kiln::ops::unary::unary(op, &x) else {
                assert!(kiln::ops::unary::unary(op, &xg).is_err(), "{op:?} on {dt}: refused on the CPU only");
                continue;
            };
            let got = kiln::ops::unary::unary(op, &xg)?;
            same(&got, &want, unary_bound(op, dt), &format!("{op:?} on {dt}"))?;
            checked += 1;
        }
        for op in BinaryOp::ALL {
            let Ok(want) = kiln::ops::binary::binary(op, &x, &y) else { continue };
            let got = kiln::ops::binary::binary(op, &xg, &yg)?;
            let t = matches!(op, BinaryOp::Pow | BinaryOp::Atan2);
            // Integer division and atan2 compute in a float dtype.
            let rdt = if dt.is_float() { dt } else { want.dtype() };
            same(&got, &want, bound(t, rdt), &format!("{op:?} on {dt}"))?;
            checked += 1;
        }
        for to in ALL_DTYPES {
            same(&xg.astype(to)?, &x.astype(to)?, 0, &format!("astype {dt} -> {to}"))?;
            checked += 1;
        }
        let c = kiln::greater(&x, &y)?;
        same(&kiln::where_(&c.to_device(g)?, &xg, &yg)?, &kiln::where_(&c, &x, &y)?, 0, &format!("where on {dt}"))?;
    }
    assert!(checked >= 380, "only {checked} cases ran");
    Ok(())
}

/// Every `f32` transcendental computed on the GPU is within its stated
/// bound of the `f64` reference (`cmath::bound`: CUDA's documented bound
/// where kernels call CUDA's function, else the CPU approximation's), over
/// the sweeps the CPU's accuracy tests run, in eager ops and in a compiled
/// function (where it is fused with other work).
#[test]
fn f32_transcendentals_meet_their_gpu_bounds() -> Result<()> {
    let Some(g) = gpu() else { return Ok(()) };
    let mut failures = vec![];
    for f in Func::ALL {
        let op = UnaryOp::ALL.into_iter().find(|&op| Func::of(op) == Some(f)).expect("a unary op per function");
        let (lo, hi) = domain(f);
        let mut xs = strided(f32::MIN, f32::MAX, 4093);
        xs.extend(strided(lo, hi, 1021));
        xs.extend(linear(lo, hi, 200_001));
        xs.extend(random_bits(200_000, 0x51ed_270b ^ f as u64));
        xs.extend([0.0, -0.0, f32::INFINITY, f32::NEG_INFINITY, f32::NAN, f32::MIN_POSITIVE, 1e-45, -1e-45]);
        let x = Array::from_slice(&xs, &[xs.len()])?.to_device(g)?;
        let eager = kiln::ops::unary::unary(op, &x)?;
        // Compiled, the function's input is scaled by one and shifted by
        // zero first: the same values, through a fused kernel.
        let fused = compile(move |a: &Array| kiln::ops::unary::unary(op, &((a * 1.0f32)? + 0.0f32)?)).call(&x)?;
        for (how, y) in [("eager", eager), ("compiled", fused)] {
            let ys = y.to_device(Device::Cpu)?.to_vec::<f32>()?;
            let (mut worst, mut at) = (0.0f64, 0.0f32);
            for (&x, &y) in xs.iter().zip(&ys) {
                let e = ulp_err(y, reference(f, x as f64));
                if e > worst || e.is_nan() {
                    (worst, at) = (e, x);
                }
            }
            println!("{f:?} on the GPU, {how}: max {worst:.3} ulp at {at:e} (bound {})", cmath::bound(f));
            if worst.is_nan() || worst > cmath::bound(f) {
                failures.push(format!("{f:?} {how}: {worst} ulp at x = {at:e} (bound {})", cmath::bound(f)));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    Ok(())
}

/// Blocks of dropped arrays are handed to later arrays at once (the GPU
/// keeps small freed blocks for reuse): work queued on a block before it
/// was freed still reads what it should, and its next owner sees only
/// what it wrote.
#[test]
fn freed_blocks_are_reused_in_stream_order() -> Result<()> {
    let Some(g) = gpu() else { return Ok(()) };
    for i in 0..300usize {
        let n = [1000, 4096, 70_000][i % 3];
        let a = kiln::arange(0.0, n as f64, 1.0, DType::F32.on(g))?;
        let b = (&a * 2.0f32)?;
        b.eval()?;
        drop(a);
        let c = kiln::full(&[n], 7.0f32, DType::F32.on(g))?;
        c.eval()?;
        let (b, c) = (b.to_vec::<f32>()?, c.to_vec::<f32>()?);
        assert!(b.iter().enumerate().all(|(k, &v)| v == 2.0 * k as f32), "round {i}: a reused block changed b");
        assert!(c.iter().all(|&v| v == 7.0), "round {i}: c is not what was written");
    }
    Ok(())
}

/// Scalars mixed into GPU ops are uploaded without waiting for the queued
/// work, and repeated ones are reused: a long queue of ops, each with its
/// own or a repeated scalar (more distinct ones than are kept; `0.0` and
/// `-0.0`, which only their bits tell apart), reads back exactly.
#[test]
fn scalars_mixed_into_gpu_ops_keep_their_values() -> Result<()> {
    let Some(g) = gpu() else { return Ok(()) };
    let x = (kiln::arange(0.0, 4096.0, 1.0, DType::F32.on(g))? + 1.0f32)?;
    x.eval()?;
    let scalars: Vec<f32> = (0..300).map(|i| if i % 3 == 0 { 2.5 } else { i as f32 * 0.25 - 10.0 }).collect();
    let mut ys = vec![];
    for &c in &scalars {
        let y = (&x * c)?;
        y.eval()?;
        ys.push(y);
    }
    let host = x.to_vec::<f32>()?;
    for (y, &c) in ys.iter().zip(&scalars) {
        let want: Vec<f32> = host.iter().map(|&v| v * c).collect();
        assert_eq!(y.to_vec::<f32>()?, want, "x * {c}");
    }
    for z in [0.0f32, -0.0, 0.0, -0.0] {
        let r = (Array::scalar(1.0f32) / (&x * z)?)?.to_vec::<f32>()?;
        assert!(r.iter().all(|&v| v.is_infinite() && v.is_sign_negative() == z.is_sign_negative()), "1 / {z:?}");
    }
    Ok(())
}

/// `release_memory` gives back the blocks the GPU keeps for reuse (the R
/// package's `mlx_release_memory()` relies on it), and live arrays keep
/// their values.
#[test]
fn release_memory_gives_back_the_gpus_kept_blocks() -> Result<()> {
    let Some(g) = gpu() else { return Ok(()) };
    kiln::release_memory();
    let live = kiln::full(&[1000], 3.0f32, DType::F32.on(g))?;
    live.eval()?;
    let n = 1 << 21;
    let a = (kiln::arange(0.0, n as f64, 1.0, DType::F32.on(g))? + 1.0f32)?;
    a.eval()?;
    drop(a);
    let freed = kiln::release_memory();
    assert!(freed >= 4 * n, "{freed} bytes given back after dropping an array of {} bytes", 4 * n);
    assert_eq!(kiln::release_memory(), 0, "nothing is kept after a release");
    assert!(live.to_vec::<f32>()?.iter().all(|&v| v == 3.0), "a live array changed");
    Ok(())
}
/// Contiguous elementwise work runs 4 positions per thread through
/// aligned vector accesses, with a scalar loop for the rest and a scalar
/// kernel for views that are not aligned: every length (n % 4 of 0 to 3),
/// start offset (aligned or not), dtype of every width, and a broadcast
/// one-element operand gives the CPU's result, eager and compiled.
#[test]
fn contiguous_work_of_any_length_and_offset_equals_the_cpu() -> Result<()> {
    let Some(g) = gpu() else { return Ok(()) };
    let mut rng = Rng::new(21);
    let f = |x: &Array, y: &Array| -> Result<Array> { ((x * y)? + x)? - y };
    let fc = compile(f);
    let mut checked = 0;
    for dt in [DType::F32, DType::F16, DType::BF16, DType::F64, DType::U8, DType::I32, DType::I64] {
        let base = values(dt, &mut rng, 1040)?;
        // Views of one GPU array: their starts are offsets into its block
        // (moving a CPU view to the GPU would copy it to a fresh one).
        let bg = base.to_device(g)?;
        let one = kiln::slice_axis(&base, 0, Some(5), Some(6), 1)?;
        let og = kiln::slice_axis(&bg, 0, Some(5), Some(6), 1)?;
        for n in [1usize, 2, 3, 4, 5, 7, 8, 13, 1001] {
            for off in 0..4usize {
                let (start, stop) = (Some(off as isize), Some((off + n) as isize));
                let x = kiln::slice_axis(&base, 0, start, stop, 1)?;
                let xg = kiln::slice_axis(&bg, 0, start, stop, 1)?;
                let want = f(&x, &one)?;
                same(&f(&xg, &og)?, &want, 0, &format!("eager {dt}, n {n}, offset {off}"))?;
                same(&fc.call((&xg, &og))?, &want, 0, &format!("compiled {dt}, n {n}, offset {off}"))?;
                same(&xg.astype(DType::F32)?, &x.astype(DType::F32)?, 0, &format!("astype {dt}, n {n}, offset {off}"))?;
                checked += 3;
            }
        }
    }
    assert_eq!(checked, 7 * 9 * 4 * 3);
    Ok(())
}

#[test]
fn broadcasts_and_strided_views_read_in_place() -> Result<()> {
    let Some(g) = gpu() else { return Ok(()) };
    let mut rng = Rng::new(3);
    let a = Array::from_slice(&rng.floats_f32(60, -3.0, 3.0), &[3, 4, 5])?;
    let row = Array::from_slice(&rng.floats_f32(5, -3.0, 3.0), &[5])?;
    let col = Array::from_slice(&rng.floats_f32(3, -3.0, 3.0), &[3, 1, 1])?;
    let (ag, rg, cg) = (a.to_device(g)?, row.to_device(g)?, col.to_device(g)?);
    let f = |a: &Array, r: &Array, c: &Array| -> Result<Array> {
        let t = kiln::permute(a, &[2, 0, 1])?; // (5, 3, 4)
        let rev = kiln::SliceAxis { start: None, stop: None, step: -1 };
        let odd = kiln::SliceAxis { start: Some(1), stop: Some(4), step: 2 };
        let s = kiln::slice(a, &[rev, odd])?; // (3, 2, 5)
        let u = ((&s * r)? + c)?;
        let v = kiln::reshape(&kiln::permute(&t, &[1, 2, 0])?, &[12, 5])?; // a copy: the strides do not allow a view
        let w = kiln::concatenate(&[kiln::reshape(&u, &[6, 5])?, v], 0)?;
        kiln::exp(&(w * 0.5f32)?)
    };
    same(&f(&ag, &rg, &cg)?, &f(&a, &row, &col)?, 2, "views")?;
    Ok(())
}

#[test]
fn reductions_equal_the_cpu() -> Result<()> {
    let Some(g) = gpu() else { return Ok(()) };
    let mut rng = Rng::new(11);
    let ops = [
        ReduceOp::Sum,
        ReduceOp::Mean,
        ReduceOp::Prod,
        ReduceOp::Max,
        ReduceOp::Min,
        ReduceOp::All,
        ReduceOp::Any,
        ReduceOp::LogSumExp,
        ReduceOp::SumExp,
        ReduceOp::Var { ddof: 1 },
    ];
    for dt in ALL_DTYPES {
        let x = kiln::reshape(&values(dt, &mut rng, 7 * 6 * 5)?, &[7, 6, 5])?;
        let x = if dt.is_float() { kiln::minimum(&kiln::maximum(&x, -20.0f32)?, 20.0f32)? } else { x };
        let xt = kiln::permute(&x, &[1, 2, 0])?;
        let xg = x.to_device(g)?;
        let xtg = kiln::permute(&xg, &[1, 2, 0])?;
        for op in ops {
            for axes in [vec![0], vec![2], vec![0, 2], vec![0, 1, 2]] {
                for (cpu, gpu_, name) in [(&x, &xg, "x"), (&xt, &xtg, "transposed x")] {
                    let ax: Vec<isize> = axes.iter().map(|&a| a as isize).collect();
                    let Ok(want) = kiln::ops::reduce::reduce(op, cpu, ax.clone(), false) else { continue };
                    let got = kiln::ops::reduce::reduce(op, gpu_, ax, false)?;
                    let ctx = format!("{op:?} over {axes:?} of {name} ({dt})");
                    let exact = !want.dtype().is_float() || matches!(op, ReduceOp::Max | ReduceOp::Min);
                    if exact {
                        same(&got, &want, 0, &ctx)?;
                    } else {
                        // Float sums are added in another order.
                        let w = want.astype(DType::F64)?.to_vec::<f64>()?;
                        let gv = got.to_device(Device::Cpu)?.astype(DType::F64)?.to_vec::<f64>()?;
                        let (rtol, atol) = common::tol(want.dtype());
                        for (i, (&a, &b)) in gv.iter().zip(&w).enumerate() {
                            assert!(
                                common::close(a, b, rtol * 64.0, atol * 64.0 + rtol * 64.0),
                                "{ctx}: {i}: GPU {a}, CPU {b}"
                            );
                        }
                    }
                }
            }
        }
        for op in [ArgReduceOp::ArgMax, ArgReduceOp::ArgMin] {
            for axis in 0..3isize {
                let f = |a: &Array| match op {
                    ArgReduceOp::ArgMax => kiln::argmax(a, Some(axis), false),
                    ArgReduceOp::ArgMin => kiln::argmin(a, Some(axis), false),
                };
                same(&f(&xtg)?, &f(&xt)?, 0, &format!("{op:?} axis {axis} ({dt})"))?;
            }
        }
    }
    Ok(())
}

#[test]
fn matrix_products_equal_the_cpu() -> Result<()> {
    let Some(g) = gpu() else { return Ok(()) };
    let _lock = PRECISION.lock().unwrap_or_else(|e| e.into_inner());
    let mut rng = Rng::new(5);
    for dt in [DType::F32, DType::F64, DType::F16, DType::BF16, DType::I32, DType::I64, DType::U8] {
        let a = Array::from_slice(&rng.floats(2 * 3 * 17 * 33, -4.0, 4.0), &[2, 3, 17, 33])?;
        let b = Array::from_slice(&rng.floats(33 * 9, -4.0, 4.0), &[9, 33])?;
        let (a, b) = if dt.is_float() {
            (a.astype(dt)?, b.astype(dt)?)
        } else {
            (kiln::round(&a)?.astype(dt)?, kiln::round(&b)?.astype(dt)?)
        };
        // b transposed (a strided operand) and broadcast over the batch.
        let want = kiln::matmul(&a, &kiln::transpose(&b)?)?;
        let got = kiln::matmul(&a.to_device(g)?, &kiln::transpose(&b.to_device(g)?)?)?;
        // Reversed columns (a negative stride): the tiled kernel, not cuBLAS.
        let rev = kiln::SliceAxis { start: None, stop: None, step: -1 };
        let all = kiln::SliceAxis { start: None, stop: None, step: 1 };
        let ar = kiln::slice(&a, &[all, all, all, rev])?;
        let want_r = kiln::matmul(&ar, &kiln::transpose(&b)?)?;
        let got_r =
            kiln::matmul(&kiln::slice(&a.to_device(g)?, &[all, all, all, rev])?, &kiln::transpose(&b.to_device(g)?)?)?;
        for (got, want) in [(&got, &want), (&got_r, &want_r)] {
            compare_product(got, want, dt, 33)?;
        }
        // Sums longer than the tiled kernel's 64-element steps, and a
        // product above its size limit (cuBLAS for floats), b broadcast
        // over the batch.
        for (ashape, bshape) in [(&[3usize, 70][..], &[70usize, 5][..]), (&[2, 160, 130], &[130, 120])] {
            let k = bshape[0];
            let a = Array::from_slice(&rng.floats(ashape.iter().product(), -4.0, 4.0), ashape)?;
            let b = Array::from_slice(&rng.floats(bshape.iter().product(), -4.0, 4.0), bshape)?;
            let (a, b) = if dt.is_float() {
                (a.astype(dt)?, b.astype(dt)?)
            } else {
                (kiln::round(&a)?.astype(dt)?, kiln::round(&b)?.astype(dt)?)
            };
            compare_product(&kiln::matmul(&a.to_device(g)?, &b.to_device(g)?)?, &kiln::matmul(&a, &b)?, dt, k)?;
        }
    }
    Ok(())
}

fn compare_product(got: &Array, want: &Array, dt: DType, k: usize) -> Result<()> {
    {
        assert_eq!(got.shape(), want.shape());
        if dt.is_float() {
            let w = want.astype(DType::F64)?.to_vec::<f64>()?;
            let gv = got.to_device(Device::Cpu)?.astype(DType::F64)?.to_vec::<f64>()?;
            let (rtol, _) = common::tol(dt);
            for (i, (&x, &y)) in gv.iter().zip(&w).enumerate() {
                assert!((x - y).abs() <= rtol * 16.0 * k as f64 * 16.0, "matmul {dt}: {i}: GPU {x}, CPU {y}");
            }
        } else {
            same(got, want, 0, &format!("matmul {dt}"))?;
        }
    }
    Ok(())
}

#[test]
fn gathers_ranges_and_random_bits_equal_the_cpu() -> Result<()> {
    let Some(g) = gpu() else { return Ok(()) };
    let x = kiln::reshape(&kiln::arange(0.0, 24.0, 1.0, DType::F32)?, &[4, 6])?;
    let idx = Array::from_slice(&[-1i64, 0, 5, 2, 2], &[5])?;
    let xg = x.to_device(g)?;
    same(&kiln::take(&xg, &idx.to_device(g)?, 1)?, &kiln::take(&x, &idx, 1)?, 0, "take")?;
    let bad = Array::from_slice(&[6i32], &[1])?;
    let e = kiln::take(&xg, &bad.to_device(g)?, 1).and_then(|a| a.eval().map(|_| a)).unwrap_err();
    assert!(e.to_string().contains("index 6 is out of bounds for axis 1 with size 6"), "{e}");
    for dt in ALL_DTYPES {
        let want = kiln::arange(-3.0, 5.0, 0.75, dt)?;
        let got = kiln::with_default_device(g, || kiln::arange(-3.0, 5.0, 0.75, dt))??;
        assert_eq!(got.device(), g);
        same(&got, &want, 0, &format!("arange {dt}"))?;
    }
    let key = kiln::random::key(42);
    let want = kiln::random::uniform(0.0, 1.0, &[1001], DType::F32, Some(&key))?;
    let got = kiln::random::uniform(0.0, 1.0, &[1001], DType::F32, Some(&key.to_device(g)?))?;
    assert_eq!(got.device(), g);
    same(&got, &want, 0, "uniform draws for one key")?;
    Ok(())
}

#[test]
fn compiled_functions_run_on_the_gpu() -> Result<()> {
    let Some(g) = gpu() else { return Ok(()) };
    let mut rng = Rng::new(9);
    let gelu = |x: &Array, b: &Array| -> Result<Array> {
        let x = (x + b)?;
        let inner = ((&x + (kiln::pow(&x, 3.0f32)? * 0.044715f32)?)? * 0.797_884_6f32)?;
        let y = ((&x * 0.5f32)? * (kiln::tanh(&inner)? + 1.0f32)?)?;
        let m = kiln::mean(&y, -1, true)?;
        &y - &m
    };
    let f = compile(move |x: &Array, b: &Array| gelu(x, b));
    let x = Array::from_slice(&rng.floats_f32(8 * 128, -4.0, 4.0), &[8, 128])?;
    let b = Array::from_slice(&rng.floats_f32(128, -1.0, 1.0), &[128])?;
    let want = gelu(&x, &b)?;
    let (xg, bg) = (x.to_device(g)?, b.to_device(g)?);
    for _ in 0..2 {
        let got = f.call((&xg, &bg))?;
        assert_eq!(got.device(), g);
        let w = want.to_vec::<f32>()?;
        let gv = got.to_device(Device::Cpu)?.to_vec::<f32>()?;
        for (i, (&a, &c)) in gv.iter().zip(&w).enumerate() {
            assert!((a - c).abs() <= 1e-5 * (1.0 + c.abs()), "compiled gelu {i}: GPU {a}, CPU {c}");
        }
    }
    // Shapeless: one trace serves other row counts.
    let s = compile_with(
        |x: &Array| kiln::exp(&((x * 2.0f32)? - 1.0f32)?),
        CompileOptions { shapeless: true, ..Default::default() },
    );
    for rows in [3usize, 17, 64] {
        let x = Array::from_slice(&rng.floats_f32(rows * 5, -3.0, 3.0), &[rows, 5])?;
        same(
            &s.call(&x.to_device(g)?)?,
            &kiln::exp(&((&x * 2.0f32)? - 1.0f32)?)?,
            unary_bound(UnaryOp::Exp, DType::F32),
            &format!("shapeless rows {rows}"),
        )?;
    }
    assert_eq!(s.stats().traces, 1, "one trace for every shape");
    Ok(())
}

#[test]
fn a_compiled_call_replans_its_launch_when_an_operand_moves() -> Result<()> {
    // A compiled step keeps its last launch's plan (vector width, strides)
    // for calls like the one before; a view of the same shape that starts
    // one element later is not 16-byte aligned, so its call must plan
    // anew (a reused vector plan would read misaligned), and so must a
    // strided view of that shape, and the aligned call after them.
    let Some(g) = gpu() else { return Ok(()) };
    let f = compile(|x: &Array| (x * 2.0f32)? + 1.0f32);
    let n = 8192;
    let host: Vec<f32> = (0..2 * n + 8).map(|i| i as f32 * 0.25 - 100.0).collect();
    let all = Array::from_slice(&host, &[2 * n + 8])?.to_device(g)?;
    let want = |v: &[f32]| -> Vec<f32> { v.iter().map(|&x| x * 2.0 + 1.0).collect() };
    let len = n / 2;
    for (start, step) in [(0usize, 1usize), (1, 1), (0, 1), (3, 2), (4, 1), (0, 2), (0, 1)] {
        let stop = start + len * step;
        let x = kiln::slice_axis(&all, 0, Some(start as isize), Some(stop as isize), step as isize)?;
        assert_eq!(x.shape(), [len]);
        let got = f.call(&x)?.to_device(Device::Cpu)?.to_vec::<f32>()?;
        let expect: Vec<f32> = host[start..stop].iter().step_by(step).copied().collect();
        assert_eq!(got, want(&expect), "view from {start}, step {step}");
    }
    Ok(())
}

/// Element-wise closeness of a GPU float result to the CPU's.
fn near(got: &Array, want: &Array, rtol: f32, ctx: &str) -> Result<()> {
    assert_eq!(got.shape(), want.shape(), "{ctx}: shape");
    let w = want.astype(DType::F32)?.to_vec::<f32>()?;
    let g = got.to_device(Device::Cpu)?.astype(DType::F32)?.to_vec::<f32>()?;
    for (i, (&a, &b)) in g.iter().zip(&w).enumerate() {
        let ok = (a.is_nan() && b.is_nan()) || a == b || (a - b).abs() <= rtol * (1.0 + b.abs());
        assert!(ok, "{ctx}: element {i}: GPU {a}, CPU {b}");
    }
    Ok(())
}

#[test]
fn compiled_reductions_and_epilogues_equal_the_cpu() -> Result<()> {
    let Some(g) = gpu() else { return Ok(()) };
    let mut rng = Rng::new(21);
    let layernorm = |x: &Array, w: &Array, b: &Array| -> Result<Array> {
        let m = kiln::mean(x, -1, true)?;
        let xc = (x - &m)?;
        let v = kiln::mean(&kiln::square(&xc)?, -1, true)?;
        ((&xc * kiln::rsqrt(&(v + 1e-5f32)?)?)? * w)? + b
    };
    let stats = |x: &Array| -> Result<Vec<Array>> {
        // Several reductions of one producer: one fused kernel.
        let y = kiln::tanh(&(x * 0.5f32)?)?;
        Ok(vec![
            kiln::softmax(x, -1)?,
            kiln::logsumexp(&y, -1, false)?,
            kiln::var(&y, -1, false, 1)?,
            kiln::max(&y, 0, true)?,
            kiln::sum(&(&y * &y)?, -1, false)?,
        ])
    };
    let dense =
        |x: &Array, w: &Array, b: &Array| -> Result<Array> { kiln::maximum(&(kiln::matmul(x, w)? + b)?, 0.0f32) };
    let opts = || CompileOptions { shapeless: true, ..Default::default() };
    let ln = compile_with(move |x: &Array, w: &Array, b: &Array| layernorm(x, w, b), opts());
    let st = compile_with(move |x: &Array| stats(x), opts());
    let de = compile_with(move |x: &Array, w: &Array, b: &Array| dense(x, w, b), opts());
    // Products of 130 rows and fewer run with their epilogue in one kernel;
    // 400 rows pass the tiled kernel's limit (cuBLAS, then the epilogue).
    for rows in [1usize, 7, 130, 400] {
        let cols = 300;
        let x = Array::from_slice(&rng.floats_f32(rows * cols, -4.0, 4.0), &[rows, cols])?;
        let w = Array::from_slice(&rng.floats_f32(cols, 0.5, 1.5), &[cols])?;
        let b = Array::from_slice(&rng.floats_f32(cols, -1.0, 1.0), &[cols])?;
        let (xg, wg, bg) = (x.to_device(g)?, w.to_device(g)?, b.to_device(g)?);
        near(&ln.call((&xg, &wg, &bg))?, &layernorm(&x, &w, &b)?, 1e-5, &format!("layernorm rows {rows}"))?;
        for (k, (got, want)) in st.call(&xg)?.iter().zip(stats(&x)?).enumerate() {
            near(got, &want, 1e-5, &format!("statistic {k}, rows {rows}"))?;
        }
        let m = Array::from_slice(&rng.floats_f32(cols * 64, -0.2, 0.2), &[cols, 64])?;
        let mb = Array::from_slice(&rng.floats_f32(64, -1.0, 1.0), &[64])?;
        let got = de.call((&xg, &m.to_device(g)?, &mb.to_device(g)?))?;
        near(&got, &dense(&x, &m, &mb)?, 1e-4, &format!("dense rows {rows}"))?;
    }
    assert_eq!(ln.stats().traces, 1);
    Ok(())
}

#[test]
fn row_kernels_equal_the_cpu() -> Result<()> {
    let Some(g) = gpu() else { return Ok(()) };
    let mut rng = Rng::new(33);
    // Statistics, a per-row step (also returned) and a normalization: one
    // kernel on the GPU, rows of one to 70000 elements.
    let norm = |x: &Array, w: &Array| -> Result<Vec<Array>> {
        let m = kiln::mean(x, -1, true)?;
        let v = kiln::var(x, -1, true, 0)?;
        let r = kiln::rsqrt(&(v + 1e-5f32)?)?;
        Ok(vec![((&(x - &m)? * &r)? * w)?, r])
    };
    let logsm = |x: &Array| -> Result<Vec<Array>> {
        let l = kiln::log(&kiln::sum(&kiln::exp(x)?, -1, true)?)?;
        Ok(vec![(x - &l)?, kiln::softmax(x, -1)?])
    };
    let opts = || CompileOptions { shapeless: true, ..Default::default() };
    let n = compile_with(move |x: &Array, w: &Array| norm(x, w), opts());
    let s = compile_with(move |x: &Array| logsm(x), opts());
    for (rows, cols) in [(3usize, 1usize), (5, 300), (4, 16384), (2, 70000)] {
        for dt in [DType::F32, DType::F16] {
            let x = Array::from_slice(&rng.floats_f32(rows * cols, -4.0, 4.0), &[rows, cols])?.astype(dt)?;
            let w = Array::from_slice(&rng.floats_f32(cols, 0.5, 1.5), &[cols])?.astype(dt)?;
            let (xg, wg) = (x.to_device(g)?, w.to_device(g)?);
            let tol = if dt == DType::F16 { 2e-3 } else { 2e-5 };
            let ctx = format!("{rows}x{cols} {}", dt.name());
            for (k, (got, want)) in n.call((&xg, &wg))?.iter().zip(norm(&x, &w)?).enumerate() {
                near(got, &want, tol, &format!("layernorm output {k}, {ctx}"))?;
            }
            for (k, (got, want)) in s.call(&xg)?.iter().zip(logsm(&x)?).enumerate() {
                near(got, &want, tol, &format!("log-softmax/softmax {k}, {ctx}"))?;
            }
            // Rows that are columns of a transposed view (strided rows).
            let t = kiln::transpose(&x)?;
            let tg = kiln::transpose(&xg)?;
            if cols > 1 && rows > 1 {
                let want = kiln::softmax(&t, 0)?;
                let f = compile(|t: &Array| kiln::softmax(t, 0));
                near(&f.call(&tg)?, &want, tol, &format!("softmax of a transposed view, {ctx}"))?;
            }
        }
    }
    Ok(())
}

#[test]
fn variances_keep_their_accuracy_far_from_zero_and_past_outliers() -> Result<()> {
    let Some(g) = gpu() else { return Ok(()) };
    let mut rng = Rng::new(41);
    // The GPU folds each thread's deviations from its own first value: rows
    // far from zero and rows with one far value lose no accuracy to
    // cancellation (the reference is the CPU's variance in f64).
    let f = compile(|x: &Array| kiln::var(x, -1, false, 0));
    for (rows, cols, offset, outlier) in
        [(4usize, 16384usize, 1e4f32, 0.0f32), (4, 16384, 0.0, 1e4), (3, 1000, -3e3, -2e4)]
    {
        let mut v = rng.floats_f32(rows * cols, -1.0, 1.0);
        for (i, x) in v.iter_mut().enumerate() {
            *x += offset;
            if outlier != 0.0 && i % cols == 5 * (i / cols) {
                *x = offset + outlier;
            }
        }
        let x = Array::from_slice(&v, &[rows, cols])?;
        let want = kiln::var(&x.astype(DType::F64)?, -1, false, 0)?.astype(DType::F32)?;
        near(
            &f.call(&x.to_device(g)?)?,
            &want,
            1e-5,
            &format!("var of {rows}x{cols}, offset {offset}, outlier {outlier}"),
        )?;
    }
    Ok(())
}

#[test]
fn row_vectors_take_any_start_width_and_broadcast() -> Result<()> {
    let Some(g) = gpu() else { return Ok(()) };
    let mut rng = Rng::new(35);
    // A producer with a per-row operand, statistics, and a space step that
    // reads the row, a per-row operand and a per-column one.
    let f = |x: &Array, c: &Array, w: &Array| -> Result<Vec<Array>> {
        let y = (x - c)?;
        let m = kiln::mean(&y, -1, true)?;
        let v = kiln::var(&y, -1, true, 0)?;
        let z = ((&(&y - &m)? * kiln::rsqrt(&(v + 1e-5f32)?)?)? * w)?;
        Ok(vec![(z * c)?, kiln::softmax(&y, -1)?, kiln::sum(x, -1, false)?])
    };
    let fc = compile_with(
        move |x: &Array, c: &Array, w: &Array| f(x, c, w),
        CompileOptions { shapeless: true, ..Default::default() },
    );
    let mut checked = 0;
    for dt in [DType::F32, DType::F16] {
        let (rows, cols) = (6usize, 1040usize);
        let base = Array::from_slice(&rng.floats_f32(rows * cols, -4.0, 4.0), &[rows, cols])?.astype(dt)?;
        let bg = base.to_device(g)?;
        let c = Array::from_slice(&rng.floats_f32(rows, -1.0, 1.0), &[rows, 1])?.astype(dt)?;
        let cg = c.to_device(g)?;
        // Rows starting on and off a 4-element boundary, of widths with and
        // without a remainder after the vectors, and of widths below 8.
        for (start, width) in [(0usize, 1040usize), (4, 1031), (4, 1032), (1, 1032), (3, 9), (8, 8), (0, 5), (2, 1)] {
            let (a, b) = (Some(start as isize), Some((start + width) as isize));
            let x = kiln::slice_axis(&base, 1, a, b, 1)?;
            let xg = kiln::slice_axis(&bg, 1, a, b, 1)?;
            let w = Array::from_slice(&rng.floats_f32(width, 0.5, 1.5), &[width])?.astype(dt)?;
            let wg = w.to_device(g)?;
            let tol = if dt == DType::F16 { 4e-3 } else { 2e-5 };
            for (k, (got, want)) in fc.call((&xg, &cg, &wg))?.iter().zip(f(&x, &c, &w)?).enumerate() {
                near(got, &want, tol, &format!("output {k}, {dt}, start {start}, width {width}"))?;
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 2 * 8 * 3);
    Ok(())
}

#[test]
fn compiled_constants_of_every_dtype_equal_the_cpu() -> Result<()> {
    let Some(g) = gpu() else { return Ok(()) };
    let mut rng = Rng::new(5);
    for dt in ALL_DTYPES {
        let x = values(dt, &mut rng, 257)?;
        // A constant of each dtype (i32's minimum, a float with an exact
        // binary value; one-element constants are literals in the kernel
        // source and must keep their exact value), in a fused group and
        // beside a reduction.
        let f = move |x: &Array| -> Result<Vec<Array>> {
            let v = match dt {
                DType::Bool => 1.0,
                d if d.is_float() => -0.1875,
                DType::I32 => i32::MIN as f64,
                DType::I64 => -(1i64 << 53) as f64,
                _ => 200.0,
            };
            let c = kiln::full(&[], v, dt.on(x.device()))?;
            let y = kiln::maximum(x, &c)?;
            Ok(vec![y.clone(), kiln::max(&y, kiln::Axes::All, false)?])
        };
        let c = compile(f);
        for (k, (got, want)) in c.call(&x.to_device(g)?)?.iter().zip(f(&x)?).enumerate() {
            same(got, &want, 0, &format!("{} constant, output {k}", dt.name()))?;
        }
    }
    Ok(())
}

/// Serializes the tests that change [`kiln::set_matmul_precision`] (a
/// process-wide setting) with the tests that check products.
static PRECISION: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The largest error of `got` against `want`, each element's divided by
/// the same element of `scale` (`|a| @ |b|`, the bound's sum), all three
/// CPU arrays of `f64`.
fn scaled_error(got: &Array, want: &Array, scale: &Array) -> Result<f64> {
    let (g, w, s) = (
        got.to_device(Device::Cpu)?.astype(DType::F64)?.to_vec::<f64>()?,
        want.to_vec::<f64>()?,
        scale.to_vec::<f64>()?,
    );
    Ok(g.iter().zip(&w).zip(&s).map(|((x, y), s)| (x - y).abs() / s).fold(0.0, f64::max))
}

#[test]
fn tf32_products_only_when_asked_and_within_their_bound() -> Result<()> {
    let Some(g) = gpu() else { return Ok(()) };
    let _lock = PRECISION.lock().unwrap_or_else(|e| e.into_inner());
    // 64 x 4096 by 4096 x 96: 2^24 * 1.5 multiply-adds, above the tiled
    // kernel's limit, so cuBLAS runs it.
    let (m, k, n) = (64, 4096, 96);
    let mut rng = Rng::new(16);
    // Uniform values (not `floats`' quarter steps, which TF32 holds exactly).
    let mut uniform = |len: usize| -> Vec<f32> { (0..len).map(|_| rng.uniform(-2.0, 2.0) as f32).collect() };
    let a = Array::from_slice(&uniform(m * k), &[m, k])?;
    let b = Array::from_slice(&uniform(k * n), &[k, n])?;
    assert_eq!(a.dtype(), DType::F32);
    let (a64, b64) = (a.astype(DType::F64)?, b.astype(DType::F64)?);
    let want = kiln::matmul(&a64, &b64)?;
    let scale = kiln::matmul(&kiln::abs(&a64)?, &kiln::abs(&b64)?)?;
    let (ag, bg) = (a.to_device(g)?, b.to_device(g)?);
    let product = compile(|a: &Array, b: &Array| kiln::matmul(a, b));
    let old = kiln::set_matmul_precision(kiln::MatmulPrecision::Highest);
    let highest = [
        scaled_error(&kiln::matmul(&ag, &bg)?, &want, &scale)?,
        scaled_error(&product.call((&ag, &bg))?, &want, &scale)?,
    ];
    kiln::set_matmul_precision(kiln::MatmulPrecision::Tf32);
    let tf32 = [
        scaled_error(&kiln::matmul(&ag, &bg)?, &want, &scale)?,
        scaled_error(&product.call((&ag, &bg))?, &want, &scale)?,
    ];
    // The CPU has no TF32 path: its f32 products keep their bits.
    let cpu_tf32 = kiln::matmul(&a, &b)?.to_vec::<f32>()?;
    kiln::set_matmul_precision(kiln::MatmulPrecision::Highest);
    let cpu = kiln::matmul(&a, &b)?.to_vec::<f32>()?;
    kiln::set_matmul_precision(old);
    eprintln!("largest error / sum |a b|: highest {highest:?}, tf32 {tf32:?}");
    for e in highest {
        // True f32: rounding of the sums only.
        assert!(e < 2f64.powi(-19), "an f32 product by default is true f32: error {e} of the bound's sum");
    }
    for e in tf32 {
        // Operands cut to 10 mantissa bits (2^-11 each when rounded, 2^-10
        // when truncated): at most 2^-9 of the sum, and far above true
        // f32's error.
        assert!(e <= 2f64.powi(-9), "TF32 error {e} of the sum, past its 2^-9 bound");
        assert!(e > 2f64.powi(-17), "TF32 asked for, but the error {e} is true f32's");
    }
    assert_eq!(cpu, cpu_tf32, "the CPU's f32 products do not change with the setting");
    Ok(())
}
