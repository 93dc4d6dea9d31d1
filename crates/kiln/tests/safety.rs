//! Memory safety and sizes from safe code (issue 14, sections 3 and 4): a
//! layout never reaches outside its buffer, shapes too large for memory are
//! errors when the op is built, and allocations that cannot be made are
//! `Error::OutOfMemory`, never an abort; empty results allocate nothing.
//!
//! A case that could abort the process (an allocation failure, a stack
//! overflow, an out-of-bounds read) runs in a child process: the test
//! binary runs itself with `KILN_SAFETY_CASE` naming the case, so an abort
//! fails that test instead of killing the harness. The children also set a
//! memory limit (`KILN_MEMORY_LIMIT`), so whether an allocation is refused
//! does not depend on how much memory the machine has or on overcommit.

use std::process::Command;
use std::sync::Arc;

use kiln::array::Data;
use kiln::layout::Layout;
use kiln::Buffer;
use kiln::{Array, DType, Error, Result, SliceAxis};
use proptest::prelude::*;

const CASE_VAR: &str = "KILN_SAFETY_CASE";

/// Runs `case` in a child process with `KILN_MEMORY_LIMIT=limit` and
/// fails (showing the child's output) unless it exits cleanly having
/// finished the case.
fn in_child(case: &str, limit: &str) {
    let exe = std::env::current_exe().expect("the test binary");
    let out = Command::new(exe)
        .args(["--exact", "child_entry", "--nocapture", "--test-threads=1"])
        .env(CASE_VAR, case)
        .env("KILN_MEMORY_LIMIT", limit)
        .output()
        .expect("spawn the test binary");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains(&format!("case {case} passed")),
        "case {case} failed in its child process ({}):\n{stdout}\n{stderr}",
        out.status
    );
}

/// The child's side: runs the case named by `KILN_SAFETY_CASE` (nothing
/// when the variable is unset, as in the parent's own run).
#[test]
fn child_entry() {
    let Ok(case) = std::env::var(CASE_VAR) else { return };
    let run: fn() = match case.as_str() {
        "huge_elementwise" => huge_elementwise,
        "huge_matmul" => huge_matmul,
        "huge_random" => huge_random,
        "huge_arange" => huge_arange,
        "huge_to_vec" => huge_to_vec,
        "huge_reduction" => huge_reduction,
        "huge_compiled" => huge_compiled,
        "empty_results_allocate_nothing" => empty_results_allocate_nothing,
        "split_many_sections" => split_many_sections,
        "limit_bounds_each_allocation" => limit_bounds_each_allocation,
        "prop_random_shapes" => prop_random_shapes,
        other => panic!("unknown case {other}"),
    };
    run();
    println!("case {case} passed");
}

/// The error of `r`, which must be `OutOfMemory` naming `op` and `bytes`.
fn assert_oom<T: std::fmt::Debug>(r: Result<T>, op: &str, bytes: usize) {
    match r {
        Err(Error::OutOfMemory { op: o, bytes: b }) => {
            assert_eq!((o, b), (op, bytes), "the error names the op and the bytes");
            let msg = Error::OutOfMemory { op: o, bytes: b }.to_string();
            assert!(msg.contains(op) && msg.contains(&bytes.to_string()) && msg.contains("out of memory"), "{msg}");
        }
        other => panic!("expected OutOfMemory from {op} for {bytes} bytes, got {other:?}"),
    }
}

fn f32s(v: &[f32], shape: &[usize]) -> Array {
    Array::from_slice(v, shape).unwrap()
}

// ------------------------------------------------------------- sizes

fn huge_elementwise() {
    // 4 TiB: more than the limit, and more than most machines have.
    let x = kiln::zeros(&[1 << 40], DType::F32).unwrap();
    let y = (&x + 1.0f32).unwrap();
    assert_oom(y.eval(), "add", 4 << 40);
    // Just above the limit of the child (1 GiB) fails; just below works.
    let big = (kiln::zeros(&[(1 << 28) + 1], DType::F32).unwrap() + 1.0f32).unwrap();
    assert_oom(big.eval(), "add", (4 << 28) + 4);
    let ok = (kiln::zeros(&[1 << 20], DType::F32).unwrap() + 1.0f32).unwrap();
    assert_eq!(kiln::sum(&ok, kiln::Axes::All, false).unwrap().item::<f32>().unwrap(), (1 << 20) as f32);
}

fn huge_matmul() {
    // A 64 GiB output from two broadcast (stride 0) operands.
    let a = kiln::ones(&[1 << 17, 1], DType::F32).unwrap();
    let b = kiln::ones(&[1, 1 << 17], DType::F32).unwrap();
    assert_oom(kiln::matmul(&a, &b).unwrap().eval(), "matmul", 64 << 30);
    for dt in [DType::F64, DType::F16, DType::BF16, DType::I32] {
        let (a, b) = (a.astype(dt).unwrap(), b.astype(dt).unwrap());
        let r = kiln::matmul(&a, &b).unwrap().eval();
        assert!(matches!(r, Err(Error::OutOfMemory { op: "matmul", .. })), "{dt}: {r:?}");
    }
}

fn huge_random() {
    let x = kiln::random::normal(&[1 << 36], DType::F32, 0.0, 1.0, None).unwrap();
    let r = x.eval();
    // Two words of bits per f32 sample (Box-Muller): 512 GiB of them.
    assert_oom(r, "random_bits", 1 << 39);
}

fn huge_arange() {
    let x = kiln::arange(0.0, 1e13, 1.0, DType::F32).unwrap();
    assert_eq!(x.shape(), &[10_000_000_000_000]);
    assert_oom(x.eval(), "arange", 40_000_000_000_000);
}

fn huge_to_vec() {
    // A view costs nothing; reading it out needs 4 TiB.
    let x = kiln::zeros(&[1 << 40], DType::F32).unwrap();
    assert_oom(x.to_vec::<f32>(), "to_vec", 4 << 40);
    let t = kiln::broadcast_to(&f32s(&[1.0, 2.0], &[2, 1]), &[2, 1 << 39]).unwrap();
    assert_oom(kiln::contiguous(&t).unwrap().eval(), "copy", 4 << 40);
}

fn huge_reduction() {
    let x = kiln::zeros(&[1 << 40, 2], DType::F32).unwrap();
    let r = kiln::sum(&x, 1isize, false).unwrap().eval();
    assert!(matches!(r, Err(Error::OutOfMemory { .. })), "{r:?}");
    let r = kiln::argmax(&x, Some(1), false).unwrap().eval();
    assert!(matches!(r, Err(Error::OutOfMemory { op: "argmax", .. })), "{r:?}");
    // Reducing an empty axis still gives the identity over 2^40 outputs.
    let e = kiln::zeros(&[0, 1 << 40], DType::F32).unwrap();
    let r = kiln::sum(&e, 0isize, false).unwrap().eval();
    assert!(matches!(r, Err(Error::OutOfMemory { .. })), "{r:?}");
}

fn huge_compiled() {
    let f = kiln::compile(|x: &Array| (x * 2.0f32)? + 1.0f32);
    let x = kiln::zeros(&[1 << 40], DType::F32).unwrap();
    let r = f.call(&x);
    assert!(matches!(r, Err(Error::OutOfMemory { .. })), "{r:?}");
    // The function still works on sizes that fit.
    let y = f.call(&f32s(&[1.0, 2.0], &[2])).unwrap();
    assert_eq!(y.to_vec::<f32>().unwrap(), vec![3.0, 5.0]);
    // A size rejected while tracing: an error, not a panic.
    let g = kiln::compile(|x: &Array| kiln::linspace(0.0, 1.0, usize::MAX, DType::F32)? + x);
    let r = g.call(&f32s(&[1.0], &[1]));
    assert!(matches!(r, Err(Error::TooLarge { op: "arange", .. })), "{r:?}");
}

fn empty_results_allocate_nothing() {
    // The child's limit is 1 KiB: any array-sized allocation would fail.
    let e = kiln::eye(0, 1 << 33, 0, DType::F32).unwrap();
    assert_eq!(e.shape(), &[0, 1 << 33]);
    assert_eq!(e.to_vec::<f32>().unwrap(), Vec::<f32>::new());
    let e = kiln::eye(1 << 33, 0, 2, DType::I64).unwrap();
    assert_eq!(e.to_vec::<i64>().unwrap(), Vec::<i64>::new());
    let z = kiln::zeros(&[0, 1 << 40], DType::F32).unwrap();
    let parts = kiln::split(&z, 4, 0).unwrap();
    assert_eq!(parts.len(), 4);
    for p in &parts {
        assert_eq!(p.shape(), &[0, 1 << 40]);
        assert!(p.to_vec::<f32>().unwrap().is_empty());
    }
    let m =
        kiln::matmul(&kiln::zeros(&[1 << 40, 0, 3], DType::F32).unwrap(), &kiln::zeros(&[3, 5], DType::F32).unwrap())
            .unwrap();
    assert_eq!(m.to_vec::<f32>().unwrap(), Vec::<f32>::new());
    let idx = kiln::zeros(&[1 << 40], DType::I32).unwrap();
    let t = kiln::take(&kiln::zeros(&[0, 3], DType::F32).unwrap(), &idx, 1).unwrap();
    assert_eq!(t.shape(), &[0, 1 << 40]);
    assert!(t.to_vec::<f32>().unwrap().is_empty());
    let s = kiln::sum(&kiln::zeros(&[1 << 40, 0], DType::F32).unwrap(), 0isize, false).unwrap();
    assert!(s.to_vec::<f32>().unwrap().is_empty());
}

fn split_many_sections() {
    let z = kiln::zeros(&[0], DType::F32).unwrap();
    let r = kiln::split(&z, 1 << 40, 0);
    assert!(matches!(r, Err(Error::OutOfMemory { op: "split", .. })), "{:?}", r.map(|v| v.len()));
}

fn limit_bounds_each_allocation() {
    assert_eq!(kiln::memory_limit(), Some(1 << 20), "KILN_MEMORY_LIMIT=1M");
    let x = kiln::arange(0.0, (1 << 18) as f64, 1.0, DType::F32).unwrap();
    assert_eq!(x.to_vec::<f32>().unwrap().len(), 1 << 18, "exactly the limit is allowed");
    let y = kiln::arange(0.0, ((1 << 18) + 1) as f64, 1.0, DType::F32).unwrap();
    assert_oom(y.eval(), "arange", (1 << 20) + 4);
    let msg = y.eval().unwrap_err().to_string();
    assert!(msg.contains("memory limit"), "{msg}");
    kiln::set_memory_limit(None);
    assert_eq!(kiln::memory_limit(), None);
    assert_eq!(y.to_vec::<f32>().unwrap()[1 << 18], (1 << 18) as f32);
    kiln::set_memory_limit(Some(64));
    let r = kiln::random::uniform(0.0, 1.0, &[17], DType::F32, None).unwrap().eval();
    assert_oom(r, "random_bits", 68);
}

#[test]
fn huge_elementwise_is_out_of_memory() {
    in_child("huge_elementwise", "1G");
}

#[test]
fn huge_matmul_is_out_of_memory() {
    in_child("huge_matmul", "16G");
}

#[test]
fn huge_random_is_out_of_memory() {
    in_child("huge_random", "16G");
}

#[test]
fn huge_arange_is_out_of_memory() {
    in_child("huge_arange", "16G");
}

#[test]
fn huge_to_vec_is_out_of_memory() {
    in_child("huge_to_vec", "16G");
}

#[test]
fn huge_reduction_is_out_of_memory() {
    in_child("huge_reduction", "16G");
}

#[test]
fn huge_compiled_call_is_out_of_memory() {
    in_child("huge_compiled", "16G");
}

#[test]
fn empty_results_allocate_nothing_in_child() {
    in_child("empty_results_allocate_nothing", "1K");
}

#[test]
fn split_into_too_many_sections_is_an_error() {
    in_child("split_many_sections", "1G");
}

#[test]
fn memory_limit_bounds_each_allocation() {
    in_child("limit_bounds_each_allocation", "1M");
}

// ---------------------------------------------- too large when built

#[test]
fn too_large_shapes_fail_when_built() {
    let too_large = |r: Result<Array>, op: &str| match r {
        Err(e @ (Error::TooLarge { .. } | Error::Overflow { .. })) => {
            let msg = e.to_string();
            assert!(msg.starts_with(op), "{msg}");
        }
        other => panic!("{op}: expected a size error, got {other:?}"),
    };
    too_large(kiln::linspace(0.0, 1.0, usize::MAX, DType::F32), "arange");
    too_large(kiln::zeros(&[1 << 62], DType::F32), "full");
    too_large(kiln::zeros(&[usize::MAX, 2], DType::U8), "full");
    // Every dimension fits isize, even of an empty array.
    too_large(kiln::zeros(&[0, usize::MAX], DType::U8), "full");
    too_large(kiln::eye(1 << 31, 1 << 31, 0, DType::F32), "eye");
    too_large(kiln::random::normal(&[1 << 62], DType::F32, 0.0, 1.0, None), "random_bits");
    // Concatenating two arrays of isize::MAX bytes: the sum no longer fits.
    let half = kiln::zeros(&[isize::MAX as usize], DType::U8).unwrap();
    too_large(kiln::concatenate(&[half.clone(), half.clone()], 0), "concatenate");
    // Four of 2^62 elements: the sum wraps usize to 0 without checks.
    let q = kiln::zeros(&[1 << 62], DType::U8).unwrap();
    too_large(kiln::concatenate(&[q.clone(), q.clone(), q.clone(), q.clone()], 0), "concatenate");
    let e = kiln::concatenate(&[q.clone(), q.clone(), q.clone(), q], 0).unwrap_err();
    assert!(matches!(e, Error::Overflow { op: "concatenate", .. }), "{e:?}");
    // Broadcasting and matmul outputs are checked too.
    let col = kiln::zeros(&[1 << 32, 1], DType::F32).unwrap();
    let row = kiln::zeros(&[1, 1 << 32], DType::F32).unwrap();
    too_large(kiln::add(&col, &row), "add");
    too_large(kiln::matmul(&col, &row), "matmul");
    let big = kiln::zeros(&[1 << 30, 1 << 30], DType::F32).unwrap();
    too_large(kiln::astype(&big, DType::F64), "astype");
    let e = kiln::astype(&big, DType::F64).unwrap_err();
    assert_eq!(e, Error::TooLarge { op: "astype", shape: vec![1 << 30, 1 << 30], dtype: DType::F64 });
}

// ------------------------------------------------ layouts and buffers

/// Python's `range(start, stop, step)` over `0..n` after slice
/// normalization, computed naively in i128.
fn python_slice(n: usize, start: Option<isize>, stop: Option<isize>, step: isize) -> Vec<usize> {
    let n = n as i128;
    let step = step as i128;
    let norm = |v: isize| if v < 0 { v as i128 + n } else { v as i128 };
    let (lo, hi) = if step > 0 { (0, n) } else { (-1, n - 1) };
    let start = start.map_or(if step > 0 { 0 } else { n - 1 }, |s| norm(s).clamp(lo, hi));
    let stop = stop.map_or(if step > 0 { n } else { -1 }, |s| norm(s).clamp(lo, hi));
    let mut out = vec![];
    let mut i = start;
    while (step > 0 && i < stop) || (step < 0 && i > stop) {
        out.push(i as usize);
        i += step;
    }
    out
}

#[test]
fn extreme_slice_steps_stay_inside_the_buffer() -> Result<()> {
    let x = f32s(&[1.0, 2.0, 3.0], &[3]);
    let steps = [isize::MAX, isize::MAX - 1, isize::MIN, isize::MIN + 1, 2, -2, 1, -1];
    let bounds = [None, Some(0), Some(1), Some(-1), Some(isize::MAX), Some(isize::MIN), Some(3), Some(-4)];
    for &step in &steps {
        for &start in &bounds {
            for &stop in &bounds {
                let s = kiln::slice(&x, &[SliceAxis { start, stop, step }])?;
                let want: Vec<f32> = python_slice(3, start, stop, step).iter().map(|&i| i as f32 + 1.0).collect();
                assert_eq!(s.shape(), &[want.len()], "x[{start:?}:{stop:?}:{step}]");
                assert_eq!(s.to_vec::<f32>()?, want, "x[{start:?}:{stop:?}:{step}]");
                // The crash: matmul and a reduction over the slice.
                let m = kiln::matmul(&s.reshape(&[1, -1])?, &s.reshape(&[-1, 1])?)?;
                let dot: f32 = want.iter().map(|v| v * v).sum();
                assert_eq!(m.to_vec::<f32>()?, vec![dot]);
                assert_eq!(kiln::sum(&s, kiln::Axes::All, false)?.item::<f32>()?, want.iter().sum::<f32>());
            }
        }
    }
    Ok(())
}

fn data(buffer: Buffer, shape: &[usize], strides: &[isize], offset: usize) -> Result<Data> {
    Data::new(Arc::new(buffer), Layout { shape: shape.into(), strides: strides.into(), offset })
}

#[test]
fn from_data_rejects_layouts_outside_the_buffer() -> Result<()> {
    let buf = || Buffer::from_vec(vec![1.0f32, 2.0, 3.0]);
    let bad = [
        data(buf(), &[usize::MAX], &[1], 0),
        data(buf(), &[4], &[1], 0),
        data(buf(), &[3], &[1], 1),
        data(buf(), &[2], &[-1], 0),
        data(buf(), &[2, 2], &[2, 1], 0),
        data(buf(), &[2], &[isize::MAX], 0),
        data(buf(), &[2], &[isize::MIN], 2),
        data(buf(), &[0], &[1], 4),
        data(buf(), &[3], &[1, 1], 0),
        data(buf(), &[], &[], 3),
    ];
    for (i, d) in bad.into_iter().enumerate() {
        match d.and_then(Array::from_data) {
            Err(e @ (Error::Invalid { op: "from_data", .. } | Error::TooLarge { .. })) => {
                assert!(e.to_string().contains("from_data"), "{e}")
            }
            other => panic!("bad layout {i}: expected an error, got {other:?}"),
        }
    }
    // Valid views are read as such.
    let rev = Array::from_data(data(buf(), &[3], &[-1], 2)?)?;
    assert_eq!(rev.to_vec::<f32>()?, vec![3.0, 2.0, 1.0]);
    let bcast = Array::from_data(data(buf(), &[2, 3], &[0, 1], 0)?)?;
    assert_eq!(kiln::sum(&bcast, 0isize, false)?.to_vec::<f32>()?, vec![2.0, 4.0, 6.0]);
    let t = Array::from_data(data(Buffer::from_vec(vec![1.0f32, 2.0, 3.0, 4.0]), &[2, 2], &[1, 2], 0)?)?;
    assert_eq!(kiln::matmul(&t, &t)?.to_vec::<f32>()?, vec![7.0, 15.0, 10.0, 22.0]);
    let empty = Array::from_data(data(buf(), &[0, 5], &[5, 1], 3)?)?;
    assert!(empty.to_vec::<f32>()?.is_empty());
    Ok(())
}

// --------------------------------------------------- property tests

/// Dimensions worth trying: small ones with values, and the edges.
fn dim() -> impl Strategy<Value = usize> {
    prop_oneof![
        6 => 0usize..4,
        1 => Just(1usize << 20),
        1 => Just(1usize << 33),
        1 => Just(1usize << 62),
        1 => Just(isize::MAX as usize),
        1 => Just(usize::MAX),
    ]
}

fn step() -> impl Strategy<Value = isize> {
    prop_oneof![
        4 => 1isize..4,
        4 => -3isize..0,
        1 => Just(isize::MAX),
        1 => Just(isize::MIN),
        1 => Just(isize::MAX / 3),
    ]
}

fn bound() -> impl Strategy<Value = Option<isize>> {
    prop_oneof![
        3 => Just(None),
        4 => (-5isize..5).prop_map(Some),
        1 => Just(Some(isize::MAX)),
        1 => Just(Some(isize::MIN)),
    ]
}

/// What the result of an op on shapes of `dims` may be: an array (whose
/// evaluation may run out of memory: the child's limit is 64 MiB) or a
/// size error, never a panic. Arrays small enough are checked for values.
fn check(r: Result<Array>) {
    match r {
        Ok(a) => match a.eval() {
            Ok(()) => {
                let v = a.to_vec::<f32>();
                match v {
                    Ok(v) => {
                        assert_eq!(v.len(), a.size());
                        READ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    Err(e) => assert!(matches!(e, Error::OutOfMemory { .. }), "{e}"),
                }
            }
            Err(e) => assert!(matches!(e, Error::OutOfMemory { .. }), "{e}"),
        },
        Err(e) => assert!(
            matches!(e, Error::TooLarge { .. } | Error::Overflow { .. } | Error::OutOfMemory { .. }),
            "unexpected error {e}"
        ),
    }
}

/// Results of [`check`] that were evaluated and read.
static READ: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// A real (small) array of `dims` when it has few elements, else a
/// broadcast view of one value.
fn source(dims: &[usize]) -> Result<Array> {
    match dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d)) {
        Some(n) if n <= 4096 => Array::from_vec((0..n).map(|i| i as f32).collect(), dims),
        _ => kiln::full(dims, 1.5f32, DType::F32),
    }
}

fn prop_random_shapes() {
    let config = ProptestConfig { cases: 400, failure_persistence: None, ..ProptestConfig::default() };
    let strategy = (
        proptest::collection::vec(dim(), 0..=12),
        proptest::collection::vec((bound(), bound(), step()), 0..=12),
        0usize..10,
        any::<u64>(),
    );
    proptest::test_runner::TestRunner::new(config)
        .run(&strategy, |(dims, slices, op, seed)| {
            let x = match source(&dims) {
                Ok(x) => x,
                Err(e) => {
                    prop_assert!(matches!(e, Error::TooLarge { .. } | Error::Overflow { .. }), "{e}");
                    return Ok(());
                }
            };
            let nd = dims.len();
            let axis = if nd == 0 { 0 } else { (seed % nd as u64) as isize };
            let slices: Vec<SliceAxis> =
                slices.into_iter().take(nd).map(|(start, stop, step)| SliceAxis { start, stop, step }).collect();
            // Reductions and products compute over every element of their
            // operand (a broadcast view costs nothing to make but not to
            // reduce): only over operands of a bounded size.
            let small = x.size() <= 1 << 22;
            match op {
                0 => check(kiln::slice(&x, &slices)),
                1 => check(kiln::slice(&x, &slices).and_then(|s| kiln::add(&s, &s))),
                2 if small => check(kiln::slice(&x, &slices).and_then(|s| kiln::sum(&s, kiln::Axes::All, true))),
                3 if nd >= 1 => check(kiln::concatenate(&[x.clone(), x.clone(), x.clone()], axis)),
                4 if nd >= 2 && small => {
                    check(kiln::slice(&x, &slices).and_then(|s| kiln::matmul(&s, &kiln::swapaxes(&s, -1, -2)?)))
                }
                5 if small => check(kiln::reshape(&x, &[-1]).and_then(|f| kiln::sum(&f, 0isize, false))),
                6 if nd >= 1 && dims[axis as usize] % 2 == 0 => {
                    check(kiln::split(&x, 2, axis).map(|p| p.into_iter().next().expect("two parts")));
                }
                7 if nd >= 1 && dims[axis as usize] >= 2 => {
                    let idx = Array::from_slice(&[0i32, -1, 1], &[3]).expect("indices");
                    check(kiln::take(&x, &idx, axis));
                }
                8 => check(kiln::eye(
                    dims.first().copied().unwrap_or(0),
                    dims.last().copied().unwrap_or(0),
                    1,
                    DType::F32,
                )),
                _ => check(kiln::broadcast_to(&x, &[&[2], &dims[..]].concat()).and_then(|b| &b * 2.0f32)),
            }
            Ok(())
        })
        .unwrap();
    let read = READ.load(std::sync::atomic::Ordering::Relaxed);
    println!("{read} results read");
    assert!(read >= 40, "only {read} of the cases produced values: the strategy is too lopsided");
}

#[test]
fn random_shapes_give_values_or_errors_never_panics() {
    in_child("prop_random_shapes", "64M");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, failure_persistence: None, ..ProptestConfig::default() })]

    /// Slices of a small real array with any bounds and steps read exactly
    /// the elements Python's slicing names, through every kernel family.
    #[test]
    fn slices_match_python(
        dims in proptest::collection::vec(1usize..4, 1..=4),
        axes in proptest::collection::vec((bound(), bound(), step()), 1..=4),
    ) {
        let n: usize = dims.iter().product();
        let x = Array::from_vec((0..n).map(|i| i as f32).collect(), &dims).unwrap();
        let axes: Vec<SliceAxis> =
            axes.into_iter().take(dims.len()).map(|(start, stop, step)| SliceAxis { start, stop, step }).collect();
        let s = kiln::slice(&x, &axes).unwrap();
        // Reference: per axis the kept indices, then their row-major product.
        let keep: Vec<Vec<usize>> = (0..dims.len())
            .map(|i| match axes.get(i) {
                Some(a) => python_slice(dims[i], a.start, a.stop, a.step),
                None => (0..dims[i]).collect(),
            })
            .collect();
        prop_assert_eq!(s.shape(), &keep.iter().map(|k| k.len()).collect::<Vec<_>>()[..]);
        let mut want = vec![0.0f32];
        for (i, k) in keep.iter().enumerate() {
            let stride: usize = dims[i + 1..].iter().product();
            want = want.iter().flat_map(|&b| k.iter().map(move |&j| b + (j * stride) as f32)).collect();
        }
        if keep.iter().any(|k| k.is_empty()) {
            want.clear();
        }
        prop_assert_eq!(s.to_vec::<f32>().unwrap(), want.clone());
        let doubled = (&s * 2.0f32).unwrap().to_vec::<f32>().unwrap();
        prop_assert_eq!(doubled, want.iter().map(|v| v * 2.0).collect::<Vec<_>>());
        let total = kiln::sum(&s, kiln::Axes::All, false).unwrap().item::<f32>().unwrap();
        prop_assert_eq!(total, want.iter().sum::<f32>());
    }
}
