//! Reductions and arg-reductions against plain f64/i64 reference loops, on
//! contiguous, transposed, reversed, strided and broadcast views.

use half::{bf16, f16};
use kiln::primitive::ReduceOp;
use kiln::{slice_axis, Array, Axes, DType};
use proptest::prelude::*;

type R<T = ()> = kiln::Result<T>;

const OPS: [ReduceOp; 11] = [
    ReduceOp::Sum,
    ReduceOp::Mean,
    ReduceOp::Prod,
    ReduceOp::Max,
    ReduceOp::Min,
    ReduceOp::All,
    ReduceOp::Any,
    ReduceOp::LogSumExp,
    ReduceOp::SumExp,
    ReduceOp::Var { ddof: 0 },
    ReduceOp::Var { ddof: 1 },
];
const DTYPES: [DType; 9] =
    [DType::F32, DType::F64, DType::F16, DType::BF16, DType::I32, DType::I64, DType::U8, DType::U32, DType::Bool];

// ---------------------------------------------------------------- helpers

/// Deterministic pseudo-random numbers in [0, 1).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> f64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Values exactly representable in `dt`: floats are multiples of 1/16 in
/// [-2, 2], signed ints in [-20, 20), unsigned in [0, 40), bools 0/1.
fn values(n: usize, dt: DType, seed: u64) -> Vec<f64> {
    let mut g = Lcg(seed);
    (0..n)
        .map(|_| {
            let u = g.next();
            match dt {
                DType::Bool => (u < 0.6) as u8 as f64,
                DType::U8 | DType::U32 => (u * 40.0).floor(),
                DType::I32 | DType::I64 => (u * 40.0).floor() - 20.0,
                _ => ((u * 64.0).floor() - 32.0) / 16.0,
            }
        })
        .collect()
}

fn make(vals: &[f64], shape: &[usize], dt: DType) -> Array {
    let r = match dt {
        DType::F32 => Array::from_vec(vals.iter().map(|&v| v as f32).collect(), shape),
        DType::F64 => Array::from_vec(vals.to_vec(), shape),
        DType::F16 => Array::from_vec(vals.iter().map(|&v| f16::from_f64(v)).collect(), shape),
        DType::BF16 => Array::from_vec(vals.iter().map(|&v| bf16::from_f64(v)).collect(), shape),
        DType::I32 => Array::from_vec(vals.iter().map(|&v| v as i32).collect(), shape),
        DType::I64 => Array::from_vec(vals.iter().map(|&v| v as i64).collect(), shape),
        DType::U8 => Array::from_vec(vals.iter().map(|&v| v as u8).collect(), shape),
        DType::U32 => Array::from_vec(vals.iter().map(|&v| v as u32).collect(), shape),
        DType::Bool => Array::from_vec(vals.iter().map(|&v| v != 0.0).collect(), shape),
    };
    r.unwrap()
}

fn read(a: &Array) -> Vec<f64> {
    match a.dtype() {
        DType::F32 => a.to_vec::<f32>().unwrap().into_iter().map(f64::from).collect(),
        DType::F64 => a.to_vec::<f64>().unwrap(),
        DType::F16 => a.to_vec::<f16>().unwrap().into_iter().map(f64::from).collect(),
        DType::BF16 => a.to_vec::<bf16>().unwrap().into_iter().map(f64::from).collect(),
        DType::I32 => a.to_vec::<i32>().unwrap().into_iter().map(f64::from).collect(),
        DType::I64 => a.to_vec::<i64>().unwrap().into_iter().map(|v| v as f64).collect(),
        DType::U8 => a.to_vec::<u8>().unwrap().into_iter().map(f64::from).collect(),
        DType::U32 => a.to_vec::<u32>().unwrap().into_iter().map(f64::from).collect(),
        DType::Bool => a.to_vec::<bool>().unwrap().into_iter().map(|b| b as u8 as f64).collect(),
    }
}

/// Row-major multi-index of `lin` in `shape`.
fn unravel(mut lin: usize, shape: &[usize]) -> Vec<usize> {
    let mut idx = vec![0; shape.len()];
    for d in (0..shape.len()).rev() {
        idx[d] = lin % shape[d];
        lin /= shape[d];
    }
    idx
}

/// The elements of a strided view of `base`, row-major, by explicit indexing.
fn view_values(base: &[f64], shape: &[usize], strides: &[isize], offset: isize) -> Vec<f64> {
    let n: usize = shape.iter().product();
    (0..n)
        .map(|lin| {
            let idx = unravel(lin, shape);
            let pos: isize = offset + idx.iter().zip(strides).map(|(&i, &s)| i as isize * s).sum::<isize>();
            base[pos as usize]
        })
        .collect()
}

/// For each output (row-major over the kept axes), the reduced elements in
/// row-major order of the reduced axes.
fn groups(vals: &[f64], shape: &[usize], axes: &[usize]) -> Vec<Vec<f64>> {
    let kept: Vec<usize> = (0..shape.len()).filter(|a| !axes.contains(a)).collect();
    let n_out: usize = kept.iter().map(|&a| shape[a]).product();
    let mut g = vec![vec![]; n_out];
    for (lin, &v) in vals.iter().enumerate() {
        let idx = unravel(lin, shape);
        let o = kept.iter().fold(0, |acc, &a| acc * shape[a] + idx[a]);
        g[o].push(v);
    }
    g
}

fn out_dtype(op: ReduceOp, dt: DType) -> DType {
    match (op, dt) {
        (ReduceOp::Sum | ReduceOp::Prod, DType::Bool) => DType::I32,
        (ReduceOp::Mean | ReduceOp::LogSumExp | ReduceOp::SumExp | ReduceOp::Var { .. }, _) => dt.to_float(),
        (ReduceOp::All | ReduceOp::Any, _) => DType::Bool,
        _ => dt,
    }
}

fn nan_max(g: &[f64]) -> f64 {
    g.iter().fold(f64::NEG_INFINITY, |a, &x| if a.is_nan() || x.is_nan() { f64::NAN } else { a.max(x) })
}

fn nan_min(g: &[f64]) -> f64 {
    g.iter().fold(f64::INFINITY, |a, &x| if a.is_nan() || x.is_nan() { f64::NAN } else { a.min(x) })
}

/// The reference result of one output, in the output dtype's values.
fn expected(op: ReduceOp, dt: DType, g: &[f64]) -> f64 {
    let int_like = !matches!(dt, DType::F32 | DType::F64 | DType::F16 | DType::BF16);
    let wrap = |v: i64| match out_dtype(op, dt) {
        DType::I32 => v as i32 as f64,
        DType::U8 => v as u8 as f64,
        DType::U32 => v as u32 as f64,
        _ => v as f64,
    };
    match op {
        ReduceOp::Sum if int_like => wrap(g.iter().fold(0i64, |a, &x| a.wrapping_add(x as i64))),
        ReduceOp::Prod if int_like => wrap(g.iter().fold(1i64, |a, &x| a.wrapping_mul(x as i64))),
        ReduceOp::Sum => g.iter().sum(),
        ReduceOp::Prod => g.iter().product(),
        ReduceOp::Mean => g.iter().sum::<f64>() / g.len() as f64,
        ReduceOp::Max => nan_max(g),
        ReduceOp::Min => nan_min(g),
        ReduceOp::All => g.iter().all(|&x| x != 0.0) as u8 as f64,
        ReduceOp::Any => g.iter().any(|&x| x != 0.0) as u8 as f64,
        ReduceOp::LogSumExp => ref_logsumexp(g),
        ReduceOp::SumExp => {
            let m = nan_max(g);
            if m.is_finite() {
                g.iter().map(|x| (x - m).exp()).sum()
            } else {
                f64::NAN
            }
        }
        ReduceOp::Var { ddof } => {
            let n = g.len() as f64;
            let m = g.iter().sum::<f64>() / n;
            let m2 = g.iter().map(|x| (x - m) * (x - m)).sum::<f64>();
            m2 / (n - ddof as f64).max(0.0)
        }
    }
}

fn rel_tol(dt: DType) -> f64 {
    match dt {
        DType::F64 => 1e-12,
        DType::F32 => 1e-5,
        DType::F16 => 2e-3,
        DType::BF16 => 1.6e-2,
        _ => 0.0,
    }
}

/// Checks one output value against the reference group.
fn check(op: ReduceOp, dt: DType, g: &[f64], got: f64, what: &str) {
    let want = expected(op, dt, g);
    let out = out_dtype(op, dt);
    if want.is_nan() || got.is_nan() {
        assert!(want.is_nan() && got.is_nan(), "{what}: got {got}, want {want}");
        return;
    }
    if want.is_infinite() || got.is_infinite() {
        assert_eq!(got, want, "{what}");
        return;
    }
    let scale = match op {
        ReduceOp::Sum => g.iter().map(|x| x.abs()).sum::<f64>(),
        ReduceOp::Mean => g.iter().map(|x| x.abs()).sum::<f64>() / g.len() as f64,
        ReduceOp::Prod | ReduceOp::SumExp => want.abs(),
        ReduceOp::LogSumExp => want.abs().max(1.0),
        ReduceOp::Var { .. } => want.abs(),
        _ => 0.0,
    };
    let tol = rel_tol(out) * scale;
    assert!(got == want || (got - want).abs() <= tol, "{what}: got {got}, want {want} (tol {tol})");
}

/// A view of a base array: how kiln builds it, and the same view as explicit
/// strides for the reference.
struct Case {
    name: &'static str,
    base_shape: &'static [usize],
    build: fn(&Array) -> R<Array>,
    shape: &'static [usize],
    strides: &'static [isize],
    offset: isize,
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "contiguous",
            base_shape: &[4, 5, 6],
            build: |x| Ok(x.clone()),
            shape: &[4, 5, 6],
            strides: &[30, 6, 1],
            offset: 0,
        },
        Case {
            name: "transposed",
            base_shape: &[4, 5, 6],
            build: |x| x.permute(&[2, 0, 1]),
            shape: &[6, 4, 5],
            strides: &[1, 30, 6],
            offset: 0,
        },
        Case {
            name: "reversed",
            base_shape: &[4, 5, 6],
            build: |x| slice_axis(x, 1, None, None, -1),
            shape: &[4, 5, 6],
            strides: &[30, -6, 1],
            offset: 24,
        },
        Case {
            name: "step -2",
            base_shape: &[4, 5, 6],
            build: |x| slice_axis(x, 2, None, None, -2),
            shape: &[4, 5, 3],
            strides: &[30, 6, -2],
            offset: 5,
        },
        Case {
            name: "reversed transposed",
            base_shape: &[4, 5, 6],
            build: |x| slice_axis(x, 0, None, None, -1)?.permute(&[1, 2, 0]),
            shape: &[5, 6, 4],
            strides: &[6, 1, -30],
            offset: 90,
        },
        Case {
            name: "broadcast leading",
            base_shape: &[5, 6],
            build: |x| x.broadcast_to(&[4, 5, 6]),
            shape: &[4, 5, 6],
            strides: &[0, 6, 1],
            offset: 0,
        },
        Case {
            name: "broadcast middle",
            base_shape: &[4, 1, 6],
            build: |x| x.broadcast_to(&[4, 5, 6]),
            shape: &[4, 5, 6],
            strides: &[6, 0, 1],
            offset: 0,
        },
    ]
}

/// All subsets of `0..nd`, sorted.
fn subsets(nd: usize) -> Vec<Vec<usize>> {
    (0..1u32 << nd).map(|m| (0..nd).filter(|&a| m & (1 << a) != 0).collect()).collect()
}

fn reduced_shape(shape: &[usize], axes: &[usize], keepdims: bool) -> Vec<usize> {
    (0..shape.len())
        .filter_map(|a| match (axes.contains(&a), keepdims) {
            (true, true) => Some(1),
            (true, false) => None,
            _ => Some(shape[a]),
        })
        .collect()
}

// ---------------------------------------------------------------- reductions

#[test]
fn every_reduction_on_every_view_and_dtype() -> R {
    let mut checked = 0;
    for case in cases() {
        for dt in DTYPES {
            let n: usize = case.base_shape.iter().product();
            let base_vals = values(n, dt, 7 + dt as u64);
            let x = (case.build)(&make(&base_vals, case.base_shape, dt))?;
            assert_eq!(x.shape(), case.shape, "{}", case.name);
            let vals = view_values(&base_vals, case.shape, case.strides, case.offset);
            for op in OPS {
                for (si, axes) in subsets(3).into_iter().enumerate() {
                    // Alternate between positive and negative spellings of the axes.
                    let spelled: Vec<isize> =
                        axes.iter().map(|&a| if si % 2 == 1 { a as isize - 3 } else { a as isize }).collect();
                    let g = groups(&vals, case.shape, &axes);
                    for keepdims in [false, true] {
                        let r = kiln::reduce(op, &x, spelled.clone(), keepdims)?;
                        assert_eq!(r.dtype(), out_dtype(op, dt));
                        assert_eq!(r.shape(), reduced_shape(case.shape, &axes, keepdims));
                        let got = read(&r);
                        assert_eq!(got.len(), g.len());
                        for (i, (gv, &v)) in g.iter().zip(&got).enumerate() {
                            let what = format!("{:?} {dt} {} axes {axes:?} keepdims {keepdims} out {i}", op, case.name);
                            check(op, dt, gv, v, &what);
                            checked += 1;
                        }
                    }
                }
                // Axes::All is the same as listing every axis.
                let all = kiln::reduce(op, &x, Axes::All, false)?;
                assert_eq!(all.shape(), &[] as &[usize]);
                check(op, dt, &vals, read(&all)[0], &format!("{op:?} {dt} {} all", case.name));
            }
        }
    }
    assert!(checked > 10_000);
    Ok(())
}

#[test]
fn method_and_function_forms_agree_with_keepdims_shapes() -> R {
    let x = make(&values(24, DType::F32, 1), &[2, 3, 4], DType::F32);
    assert_eq!(x.sum(-1, true)?.shape(), &[2, 3, 1]);
    assert_eq!(x.mean([0, 2], true)?.shape(), &[1, 3, 1]);
    assert_eq!(x.max([-3, -1], false)?.shape(), &[3]);
    assert_eq!(kiln::min(&x, Axes::All, true)?.shape(), &[1, 1, 1]);
    assert_eq!(x.prod(Vec::<isize>::new(), false)?.shape(), &[2, 3, 4]);
    // An empty axis list reduces nothing: values pass through (as the output dtype).
    let vals = values(24, DType::F32, 1);
    assert_eq!(read(&x.sum(Vec::<isize>::new(), false)?), vals);
    let any = x.any(Vec::<isize>::new(), false)?;
    assert_eq!(read(&any), vals.iter().map(|&v| (v != 0.0) as u8 as f64).collect::<Vec<_>>());
    Ok(())
}

#[test]
fn integer_sums_wrap_and_half_sums_accumulate_in_f32() -> R {
    let u = Array::from_slice(&[200u8, 100, 3], &[3])?;
    assert_eq!(u.sum(Axes::All, false)?.item::<u8>()?, 47);
    let i = Array::from_slice(&[i32::MAX, 1], &[2])?;
    assert_eq!(i.sum(Axes::All, false)?.item::<i32>()?, i32::MIN);
    assert_eq!(Array::from_slice(&[65536i32, 65536], &[2])?.prod(0, false)?.item::<i32>()?, 0);
    // 3000 f16 ones: a running f16 sum would stall at 2048.
    let h = Array::from_vec(vec![f16::ONE; 3000], &[3000])?;
    assert_eq!(h.sum(0, false)?.item::<f16>()?, f16::from_f32(3000.0));
    assert_eq!(h.mean(0, false)?.item::<f16>()?, f16::ONE);
    let b = Array::from_vec(vec![bf16::ONE; 1000], &[1000])?;
    assert_eq!(b.sum(0, false)?.item::<bf16>()?, bf16::from_f32(1000.0));
    // Bool sums count (as i32); bool means are f32.
    let t = Array::from_slice(&[true, false, true, true], &[2, 2])?;
    assert_eq!(t.sum(1, false)?.to_vec::<i32>()?, vec![1, 2]);
    assert_eq!(t.prod(1, false)?.to_vec::<i32>()?, vec![0, 1]);
    assert_eq!(t.mean(Axes::All, false)?.item::<f32>()?, 0.75);
    assert_eq!(t.max(0, false)?.to_vec::<bool>()?, vec![true, true]);
    assert_eq!(t.min(0, false)?.to_vec::<bool>()?, vec![true, false]);
    // Integer means divide in floating point.
    assert_eq!(Array::from_slice(&[1i64, 2], &[2])?.mean(0, false)?.item::<f32>()?, 1.5);
    Ok(())
}

#[test]
fn nan_and_inf_inputs() -> R {
    let nan = f32::NAN;
    let inf = f32::INFINITY;
    let x = Array::from_slice(&[1.0, nan, 3.0, -inf, -inf, -inf, inf, -inf, 0.0, 2.0, 7.0, -1.0], &[4, 3])?;
    let mx = x.max(1, false)?.to_vec::<f32>()?;
    assert!(mx[0].is_nan());
    assert_eq!(&mx[1..], &[-inf, inf, 7.0]);
    let mn = x.min(1, false)?.to_vec::<f32>()?;
    assert!(mn[0].is_nan());
    assert_eq!(&mn[1..], &[-inf, -inf, -1.0]);
    let s = x.sum(1, false)?.to_vec::<f32>()?;
    assert!(s[0].is_nan() && s[2].is_nan(), "nan and inf - inf: {s:?}");
    assert_eq!(&[s[1], s[3]], &[-inf, 8.0]);
    // NaN in the first position still propagates (the identity is not NaN-aware).
    let y = Array::from_slice(&[nan, 1.0, 2.0, 5.0], &[4])?;
    assert!(y.max(0, false)?.item::<f32>()?.is_nan());
    assert!(y.min(0, false)?.item::<f32>()?.is_nan());
    // NaN is truthy.
    let z = Array::from_slice(&[nan, 0.0], &[2])?;
    assert!(z.any(0, false)?.item::<bool>()?);
    assert!(!z.all(0, false)?.item::<bool>()?);
    assert!(Array::from_slice(&[nan, -0.5], &[2])?.all(0, false)?.item::<bool>()?);
    // -0.0 is false.
    assert!(!Array::from_slice(&[-0.0f64], &[1])?.any(0, false)?.item::<bool>()?);
    // f16 NaN too.
    let h = Array::from_slice(&[f16::ONE, f16::NAN], &[2])?;
    assert!(h.max(0, false)?.item::<f16>()?.is_nan());
    Ok(())
}

#[test]
fn extrema_of_long_rows_find_the_extreme_and_nan_in_any_leaf() -> R {
    // Rows of 5000 are folded leaf by leaf (1024 elements): the extreme (or
    // a NaN) sits first, last in a leaf, first in the next one, or last.
    let n = 5000;
    for at in [0usize, 1023, 1024, 2500, 4999] {
        for (op, extreme) in [(ReduceOp::Max, 9.0f32), (ReduceOp::Min, -9.0), (ReduceOp::Max, f32::NAN)] {
            let mut v: Vec<f32> = (0..3 * n).map(|i| ((i * 37 % 101) as f32) / 101.0 - 0.5).collect();
            v[n + at] = extreme;
            let x = Array::from_vec(v, &[3, n])?;
            let got = if op == ReduceOp::Max { x.max(1, false)? } else { x.min(1, false)? }.to_vec::<f32>()?;
            let at_row = got[1];
            assert!(at_row == extreme || (extreme.is_nan() && at_row.is_nan()), "{op:?} at {at}: {at_row}");
            // The other rows keep their own extreme (in [-0.5, 0.5)).
            assert!(got[0].abs() <= 0.5 && got[2].abs() <= 0.5, "{op:?} at {at}: {got:?}");
        }
    }
    Ok(())
}

#[test]
fn empty_arrays_give_identities() -> R {
    let x = Array::from_vec(Vec::<f32>::new(), &[0, 3])?;
    assert_eq!(x.sum(0, false)?.to_vec::<f32>()?, vec![0.0; 3]);
    assert_eq!(x.prod(0, false)?.to_vec::<f32>()?, vec![1.0; 3]);
    assert!(x.mean(0, false)?.to_vec::<f32>()?.iter().all(|v| v.is_nan()));
    assert_eq!(x.all(0, false)?.to_vec::<bool>()?, vec![true; 3]);
    assert_eq!(x.any(0, true)?.to_vec::<bool>()?, vec![false; 3]);
    assert_eq!(x.any(0, true)?.shape(), &[1, 3]);
    assert_eq!(x.sum(Axes::All, false)?.item::<f32>()?, 0.0);
    // Reducing the non-empty axis gives an empty result, also for max.
    let r = x.max(1, false)?;
    assert_eq!(r.shape(), &[0]);
    assert!(r.to_vec::<f32>()?.is_empty());
    assert!(x.sum(1, true)?.to_vec::<f32>()?.is_empty());
    assert_eq!(x.argmax(Some(1), false)?.shape(), &[0]);
    assert!(x.argmax(Some(1), false)?.to_vec::<u32>()?.is_empty());
    // Integer and bool identities.
    let i = Array::from_vec(Vec::<i32>::new(), &[2, 0])?;
    assert_eq!(i.sum(1, false)?.to_vec::<i32>()?, vec![0, 0]);
    assert_eq!(i.prod(1, false)?.to_vec::<i32>()?, vec![1, 1]);
    assert!(i.mean(1, false)?.to_vec::<f32>()?.iter().all(|v| v.is_nan()));
    let b = Array::from_vec(Vec::<bool>::new(), &[0])?;
    assert_eq!(b.sum(0, false)?.item::<i32>()?, 0);
    assert_eq!(b.prod(0, false)?.item::<i32>()?, 1);
    // Max/min/argmax/argmin of an empty axis are errors naming the op.
    for (name, e) in [
        ("max", x.max(0, false).err()),
        ("min", x.min(Axes::All, false).err()),
        ("argmax", x.argmax(Some(0), false).err()),
        ("argmin", x.argmin(None, false).err()),
    ] {
        let msg = e.unwrap_or_else(|| panic!("{name} of an empty axis should fail")).to_string();
        assert!(msg.starts_with(name) && msg.contains("empty"), "{msg}");
    }
    Ok(())
}

#[test]
fn axis_errors_name_the_op_and_axis() -> R {
    let x = make(&values(6, DType::F32, 3), &[2, 3], DType::F32);
    let e = x.sum(2, false).unwrap_err().to_string();
    assert!(e.starts_with("sum") && e.contains("axis 2"), "{e}");
    let e = x.mean(-3, false).unwrap_err().to_string();
    assert!(e.starts_with("mean") && e.contains("axis -3"), "{e}");
    let e = x.max([0, -2], false).unwrap_err().to_string();
    assert!(e.starts_with("max") && e.contains("axis 0") && e.contains("repeated"), "{e}");
    let e = x.argmax(Some(5), false).unwrap_err().to_string();
    assert!(e.starts_with("argmax") && e.contains("axis 5"), "{e}");
    let e = x.argmin(Some(-3), true).unwrap_err().to_string();
    assert!(e.starts_with("argmin") && e.contains("axis -3"), "{e}");
    let e = x.var(4, false, 0).unwrap_err().to_string();
    assert!(e.starts_with("var") && e.contains("axis 4"), "{e}");
    let e = x.std([1, 1], false, 0).unwrap_err().to_string();
    assert!(e.starts_with("std") && e.contains("repeated"), "{e}");
    let e = x.logsumexp(3, false).unwrap_err().to_string();
    assert!(e.starts_with("logsumexp") && e.contains("axis 3"), "{e}");
    let e = x.softmax(2).unwrap_err().to_string();
    assert!(e.starts_with("softmax") && e.contains("axis 2"), "{e}");
    Ok(())
}

// ---------------------------------------------------------------- arg-reductions

/// First index of the extremum (NaN counts as the extremum).
fn ref_arg(g: &[f64], max: bool) -> u32 {
    let mut best = 0;
    for (i, &v) in g.iter().enumerate() {
        if g[best].is_nan() {
            break;
        }
        if v.is_nan() || (max && v > g[best]) || (!max && v < g[best]) {
            best = i;
        }
    }
    best as u32
}

#[test]
fn argmax_argmin_on_views() -> R {
    for case in cases() {
        for dt in DTYPES {
            for with_nan in [false, true] {
                if with_nan && !matches!(dt, DType::F32 | DType::F64 | DType::F16) {
                    continue;
                }
                let n: usize = case.base_shape.iter().product();
                // Few distinct values, so ties are common.
                let mut base_vals: Vec<f64> = values(n, dt, 11 + dt as u64).iter().map(|v| (v / 4.0).round()).collect();
                if dt == DType::U8 || dt == DType::U32 {
                    base_vals.iter_mut().for_each(|v| *v = v.abs());
                }
                if with_nan {
                    for i in (3..n).step_by(7) {
                        base_vals[i] = f64::NAN;
                    }
                }
                let x = (case.build)(&make(&base_vals, case.base_shape, dt))?;
                let vals = view_values(&base_vals, case.shape, case.strides, case.offset);
                for axis in 0..3usize {
                    let g = groups(&vals, case.shape, &[axis]);
                    for keepdims in [false, true] {
                        let spelled = if keepdims { axis as isize - 3 } else { axis as isize };
                        for max in [true, false] {
                            let r = if max {
                                x.argmax(Some(spelled), keepdims)?
                            } else {
                                x.argmin(Some(spelled), keepdims)?
                            };
                            assert_eq!(r.dtype(), DType::U32);
                            assert_eq!(r.shape(), reduced_shape(case.shape, &[axis], keepdims));
                            let want: Vec<u32> = g.iter().map(|g| ref_arg(g, max)).collect();
                            assert_eq!(
                                r.to_vec::<u32>()?,
                                want,
                                "arg{} {dt} {} axis {axis} nan {with_nan}",
                                if max { "max" } else { "min" },
                                case.name
                            );
                        }
                    }
                }
                // Over the flattened array.
                let flat = x.argmax(None, false)?;
                assert_eq!(flat.shape(), &[] as &[usize]);
                assert_eq!(flat.item::<u32>()?, ref_arg(&vals, true), "{dt} {}", case.name);
                let flat = x.argmin(None, true)?;
                assert_eq!(flat.shape(), &[1, 1, 1]);
                assert_eq!(flat.item::<u32>()?, ref_arg(&vals, false), "{dt} {}", case.name);
            }
        }
    }
    Ok(())
}

#[test]
fn argmax_ties_and_nan_follow_numpy() -> R {
    let x = Array::from_slice(&[1.0f32, 3.0, 3.0, 0.0, f32::NAN, 5.0, f32::NAN, -1.0, -1.0], &[9])?;
    assert_eq!(x.argmax(Some(0), false)?.item::<u32>()?, 4);
    assert_eq!(x.argmin(Some(0), false)?.item::<u32>()?, 4);
    let y = Array::from_slice(&[2i32, 7, 7, -4, -4, 0], &[6])?;
    assert_eq!(y.argmax(Some(0), false)?.item::<u32>()?, 1);
    assert_eq!(y.argmin(Some(0), false)?.item::<u32>()?, 3);
    let b = Array::from_slice(&[false, true, true], &[3])?;
    assert_eq!(b.argmax(Some(0), false)?.item::<u32>()?, 1);
    assert_eq!(b.argmin(Some(0), false)?.item::<u32>()?, 0);
    Ok(())
}

/// Arg-reductions over a leading axis of a large array scan its rows in
/// order (each a run of adjacent outputs), split over threads by
/// outputs: ties, NaN and a flipped (negatively strided) view give the
/// first extremum, as a column-by-column scan does.
#[test]
fn argmax_over_leading_axes_of_large_arrays() -> R {
    let (r, c) = (700, 3001);
    let mut vals: Vec<f32> = (0..r * c).map(|i| ((i * 7919) % 61) as f32).collect();
    vals[5 * c + 2] = f32::NAN;
    vals[600 * c + 2] = f32::NAN;
    vals[640 * c + 9] = f32::NAN;
    let x = Array::from_slice(&vals, &[r, c])?;
    let flipped = kiln::slice_axis(&x, 0, None, None, -1)?;
    for (name, a, rev) in [("plain", &x, false), ("flipped", &flipped, true)] {
        for max in [true, false] {
            let got = if max { a.argmax(Some(0), false)? } else { a.argmin(Some(0), false)? };
            let got = got.to_vec::<u32>()?;
            for (j, &g) in got.iter().enumerate() {
                let col: Vec<f64> = (0..r).map(|i| vals[(if rev { r - 1 - i } else { i }) * c + j] as f64).collect();
                assert_eq!(g, ref_arg(&col, max), "{name} arg{} column {j}", if max { "max" } else { "min" });
            }
        }
    }
    Ok(())
}

/// Reductions of a view whose kept axes are out of memory order (the last
/// axis of `x.permute(2, 0, 1)` reduced, two kept axes swapped) run over
/// the view's axes in memory order and copy their results back into the
/// output's order: every op, arg-reductions too, keepdims, a reversed kept
/// axis, and a size large enough for the parallel walks.
#[test]
fn reductions_of_permuted_views_reorder_their_kept_axes() -> R {
    use kiln::backend::cpu::reduce::reordered_runs;
    for (base, perm, flip) in [([40usize, 50, 60], [2isize, 0, 1], false), ([7, 90, 130], [2, 0, 1], true)] {
        let n: usize = base.iter().product();
        let vals = values(n, DType::F32, 3);
        let mut x = make(&vals, &base, DType::F32);
        if flip {
            x = slice_axis(&x, 0, None, None, -1)?;
        }
        let v = x.permute(&perm)?;
        let shape: Vec<usize> = perm.iter().map(|&p| base[p as usize]).collect();
        let mut bstrides: Vec<isize> = vec![(base[1] * base[2]) as isize, base[2] as isize, 1];
        let mut offset = 0;
        if flip {
            offset = ((base[0] - 1) * base[1] * base[2]) as isize;
            bstrides[0] = -bstrides[0];
        }
        let strides: Vec<isize> = perm.iter().map(|&p| bstrides[p as usize]).collect();
        let held = view_values(&vals, &shape, &strides, offset);
        for axis in [2usize, 1] {
            let g = groups(&held, &shape, &[axis]);
            for op in [ReduceOp::Sum, ReduceOp::Max, ReduceOp::Mean, ReduceOp::Var { ddof: 0 }, ReduceOp::LogSumExp] {
                for keepdims in [false, true] {
                    let before = reordered_runs();
                    let r = kiln::reduce(op, &v, vec![axis as isize], keepdims)?;
                    assert_eq!(r.shape(), reduced_shape(&shape, &[axis], keepdims));
                    let got = read(&r);
                    assert!(reordered_runs() > before, "{op:?} over {axis} of {shape:?} kept the output's order");
                    for (i, (gv, &x)) in g.iter().zip(&got).enumerate() {
                        check(op, DType::F32, gv, x, &format!("{op:?} axis {axis} of {shape:?} flip {flip} out {i}"));
                    }
                }
            }
            for max in [true, false] {
                let before = reordered_runs();
                let r = if max { v.argmax(Some(axis as isize), false)? } else { v.argmin(Some(axis as isize), false)? };
                let got = r.to_vec::<u32>()?;
                assert!(reordered_runs() > before, "arg over {axis} of {shape:?} kept the output's order");
                for (i, (gv, &x)) in g.iter().zip(&got).enumerate() {
                    assert_eq!(x, ref_arg(gv, max), "arg{} axis {axis} out {i}", if max { "max" } else { "min" });
                }
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- large (parallel paths)

fn f32_values(n: usize, seed: u64) -> Vec<f32> {
    let mut g = Lcg(seed);
    (0..n).map(|_| g.next() as f32).collect()
}

#[test]
fn large_full_reductions_are_accurate_and_deterministic() -> R {
    let n = (1 << 21) + 3;
    let v = f32_values(n, 5);
    let x = Array::from_slice(&v, &[n])?;
    let want: f64 = v.iter().map(|&x| x as f64).sum();
    let got = x.sum(0, false)?.item::<f32>()? as f64;
    assert!((got - want).abs() <= 5e-7 * want, "sum {got} vs {want}");
    // A running f32 sum of 0.1s is off by ~2e-2 relative; blocked/pairwise sums are not.
    let tenth = Array::from_vec(vec![0.1f32; n], &[n])?.sum(0, false)?.item::<f32>()? as f64;
    let want_tenth = 0.1f32 as f64 * n as f64;
    assert!((tenth - want_tenth).abs() <= 5e-7 * want_tenth, "sum of 0.1s {tenth} vs {want_tenth}");
    let shifted: Vec<f32> = v.iter().map(|&a| 1.0 + a).collect();
    let want_shifted: f64 = shifted.iter().map(|&a| a as f64).sum();
    let got_shifted = Array::from_slice(&shifted, &[n])?.sum(0, false)?.item::<f32>()? as f64;
    assert!((got_shifted - want_shifted).abs() <= 5e-7 * want_shifted, "{got_shifted} vs {want_shifted}");
    let mean = x.mean(0, false)?.item::<f32>()? as f64;
    assert!((mean - want / n as f64).abs() <= 2e-6 * want / n as f64, "mean {mean}");
    let mx = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let imx = v.iter().position(|&a| a == mx).unwrap() as u32;
    assert_eq!(x.max(0, false)?.item::<f32>()?, mx);
    assert_eq!(x.argmax(Some(0), false)?.item::<u32>()?, imx);
    let mn = v.iter().copied().fold(f32::INFINITY, f32::min);
    assert_eq!(x.min(0, false)?.item::<f32>()?, mn);
    assert_eq!(x.argmin(Some(0), false)?.item::<u32>()?, v.iter().position(|&a| a == mn).unwrap() as u32);
    // A NaN late in a long row wins argmax, even across parallel chunks.
    let mut w = v.clone();
    w[n - 10] = f32::NAN;
    w[n - 5] = f32::NAN;
    let xn = Array::from_slice(&w, &[n])?;
    assert_eq!(xn.argmax(Some(0), false)?.item::<u32>()?, (n - 10) as u32);
    assert!(xn.max(0, false)?.item::<f32>()?.is_nan());
    // Same bits on 1 thread and on 3 threads.
    let on = |t: usize| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(t).build().unwrap();
        pool.install(|| {
            let s = Array::from_slice(&v, &[n]).unwrap().sum(0, false).unwrap().item::<f32>().unwrap();
            let c = Array::from_slice(&v[..1 << 20], &[1024, 1024]).unwrap();
            let c = c.sum(0, false).unwrap().to_vec::<f32>().unwrap();
            (s.to_bits(), c.iter().map(|x| x.to_bits()).collect::<Vec<_>>())
        })
    };
    assert_eq!(on(1), on(3));
    // Integer sums are exact.
    let iv: Vec<i64> = (0..n as i64).map(|i| i % 1000 - 400).collect();
    let want_i: i64 = iv.iter().sum();
    assert_eq!(Array::from_slice(&iv, &[n])?.sum(0, false)?.item::<i64>()?, want_i);
    Ok(())
}

/// Reduces a large 2-D array (or its transpose) along `axis` and compares
/// every output with the f64 reference.
fn check_large_2d(rows: usize, cols: usize, axis: usize, transpose: bool, op: ReduceOp) -> R {
    let v = f32_values(rows * cols, (rows * 31 + cols) as u64);
    let mut x = Array::from_slice(&v, &[rows, cols])?;
    let (mut shape, mut vals) = ([rows, cols], v.iter().map(|&a| a as f64).collect::<Vec<_>>());
    if transpose {
        x = x.t()?;
        shape = [cols, rows];
        vals = view_values(&vals, &shape, &[1, cols as isize], 0);
    }
    let got = read(&kiln::reduce(op, &x, axis as isize, false)?);
    let g = groups(&vals, &shape, &[axis]);
    assert_eq!(got.len(), g.len());
    for (i, (gv, &o)) in g.iter().zip(&got).enumerate() {
        check(op, DType::F32, gv, o, &format!("{op:?} {rows}x{cols} axis {axis} transposed {transpose} out {i}"));
    }
    Ok(())
}

#[test]
fn large_axis_reductions_on_every_path() -> R {
    for op in [ReduceOp::Sum, ReduceOp::Max, ReduceOp::Mean] {
        // Outer walk, reduced range split over threads.
        check_large_2d(2048, 600, 0, false, op)?;
        // Inner walk, outputs over threads.
        check_large_2d(600, 2048, 1, false, op)?;
        // Few long rows: reduced range split.
        check_large_2d(6, 300_000, 1, false, op)?;
        // Many short columns of a transposed view.
        check_large_2d(1500, 1000, 1, true, op)?;
    }
    // Outer walk with many outputs (output-parallel tiles).
    check_large_2d(300, 8192, 0, false, ReduceOp::Sum)?;
    // Full reduction of a large transposed view.
    let v = f32_values(1200 * 1100, 9);
    let x = Array::from_slice(&v, &[1200, 1100])?.t()?;
    let want: f64 = v.iter().map(|&a| a as f64).sum();
    let got = x.sum(Axes::All, false)?.item::<f32>()? as f64;
    assert!((got - want).abs() <= 2e-6 * want, "{got} vs {want}");
    // Large argmax along axis 0 (strided scans) and axis 1.
    let x = Array::from_slice(&v, &[1200, 1100])?;
    let am0 = x.argmax(Some(0), false)?.to_vec::<u32>()?;
    let am1 = x.argmin(Some(1), false)?.to_vec::<u32>()?;
    let vals: Vec<f64> = v.iter().map(|&a| a as f64).collect();
    let g0 = groups(&vals, &[1200, 1100], &[0]);
    let g1 = groups(&vals, &[1200, 1100], &[1]);
    assert_eq!(am0, g0.iter().map(|g| ref_arg(g, true)).collect::<Vec<_>>());
    assert_eq!(am1, g1.iter().map(|g| ref_arg(g, false)).collect::<Vec<_>>());
    Ok(())
}

// ---------------------------------------------------------------- composites

#[test]
fn var_and_std_match_reference() -> R {
    let (r, c) = (5, 7);
    let v = values(r * c, DType::F32, 21);
    let x = make(&v, &[r, c], DType::F32);
    let g = groups(&v, &[r, c], &[1]);
    for ddof in [0usize, 1] {
        let var = x.var(1, false, ddof)?.to_vec::<f32>()?;
        let std = x.std(-1, true, ddof)?;
        assert_eq!(std.shape(), &[r, 1]);
        let std = std.to_vec::<f32>()?;
        for (i, g) in g.iter().enumerate() {
            let m = g.iter().sum::<f64>() / g.len() as f64;
            let want = g.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (g.len() - ddof) as f64;
            assert!((var[i] as f64 - want).abs() <= 1e-5 * want.max(1e-3), "var ddof {ddof}: {} vs {want}", var[i]);
            assert!((std[i] as f64 - want.sqrt()).abs() <= 1e-5 * want.sqrt().max(1e-3), "std ddof {ddof}");
        }
        // Over all axes of an integer array (computed as f32).
        let iv = values(r * c, DType::I32, 22);
        let xi = make(&iv, &[r, c], DType::I32);
        let got = xi.var(Axes::All, false, ddof)?;
        assert_eq!(got.dtype(), DType::F32);
        let m = iv.iter().sum::<f64>() / iv.len() as f64;
        let want = iv.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (iv.len() - ddof) as f64;
        let got = got.item::<f32>()? as f64;
        assert!((got - want).abs() <= 1e-5 * want, "int var {got} vs {want}");
    }
    // ddof equal to the count divides by zero: inf, like NumPy.
    let y = Array::from_slice(&[1.0f64, 3.0], &[2])?;
    assert_eq!(y.var(0, false, 2)?.item::<f64>()?, f64::INFINITY);
    assert_eq!(y.var(0, false, 5)?.item::<f64>()?, f64::INFINITY);
    assert_eq!(y.var(0, false, 1)?.item::<f64>()?, 2.0);
    Ok(())
}

#[test]
fn one_pass_statistics_over_long_rows_with_special_values() -> R {
    // Rows long enough for many blocks and a pairwise split, with NaN, +-inf
    // and -inf-only rows; columns (axis 0) use the strided step path.
    let (r, c) = (6, 5000);
    let mut v: Vec<f64> = values(r * c, DType::F32, 41).iter().map(|x| x * 40.0 - 20.0).collect();
    v[c + 4321] = f64::NAN;
    v[2 * c + 17] = f64::INFINITY;
    for x in &mut v[3 * c..4 * c] {
        *x = f64::NEG_INFINITY;
    }
    v[4 * c + 2500] = f64::NEG_INFINITY;
    for x in &mut v[5 * c..6 * c] {
        *x += 1.0e4; // a large mean: the variance must not cancel
    }
    // One element per output: NaN and inf give NaN, as (x - mean)^2 does.
    let one = make(&[f64::NAN, f64::INFINITY, 1.5], &[1, 3], DType::F32).var(0, false, 0)?;
    let got = read(&one);
    assert!(got[0].is_nan() && got[1].is_nan() && got[2] == 0.0, "{got:?}");
    for dt in [DType::F32, DType::F64, DType::BF16] {
        let x = make(&v, &[r, c], dt);
        let vals = read(&x);
        for op in [ReduceOp::LogSumExp, ReduceOp::SumExp, ReduceOp::Var { ddof: 0 }, ReduceOp::Var { ddof: 3 }] {
            for axis in [0usize, 1] {
                let got = read(&kiln::reduce(op, &x, axis as isize, false)?);
                for (i, g) in groups(&vals, &[r, c], &[axis]).iter().enumerate() {
                    check(op, dt, g, got[i], &format!("{op:?} {dt} axis {axis} out {i}"));
                }
            }
        }
    }
    Ok(())
}

fn ref_logsumexp(g: &[f64]) -> f64 {
    let m = nan_max(g);
    if m.is_infinite() || m.is_nan() {
        return if m.is_nan() { f64::NAN } else { m };
    }
    m + g.iter().map(|x| (x - m).exp()).sum::<f64>().ln()
}

#[test]
fn logsumexp_is_stable_and_handles_infinities() -> R {
    let inf = f64::INFINITY;
    let rows: Vec<f64> = vec![
        1.0, 2.0, 3.0, //
        -inf, -inf, -inf, //
        inf, 0.0, 1.0, //
        1000.0, 1000.0, 1000.0, //
        -1000.0, -1001.0, -999.0, //
        inf, -inf, 2.0,
    ];
    for dt in [DType::F64, DType::F32] {
        let x = make(&rows, &[6, 3], dt);
        let got = read(&x.logsumexp(1, false)?);
        let kept = x.logsumexp(-1, true)?;
        assert_eq!(kept.shape(), &[6, 1]);
        assert_eq!(read(&kept), got);
        for (i, g) in groups(&rows, &[6, 3], &[1]).iter().enumerate() {
            let want = ref_logsumexp(g);
            if want.is_infinite() {
                assert_eq!(got[i], want, "{dt} row {i}");
            } else {
                assert!((got[i] - want).abs() <= 1e-5 * want.abs().max(1.0), "{dt} row {i}: {} vs {want}", got[i]);
            }
        }
        // Over a column of finite values, and over everything.
        let col = read(&x.logsumexp(0, false)?);
        assert_eq!(col.len(), 3);
        assert_eq!(col[0], inf);
        let all = read(&x.logsumexp(Axes::All, false)?);
        assert_eq!(all, vec![inf]);
    }
    // Empty axis: log(0) = -inf.
    let e = Array::from_vec(Vec::<f32>::new(), &[2, 0])?;
    let r = e.logsumexp(1, false)?;
    assert_eq!(r.shape(), &[2]);
    assert_eq!(r.to_vec::<f32>()?, vec![f32::NEG_INFINITY; 2]);
    Ok(())
}

/// Long rows whose leaves take the vector path (every element finite) or
/// the exact one (a NaN or an infinity anywhere: first, in a leaf's body,
/// in the tail after its last whole vector, last), at lengths around the
/// vector widths and the leaf length, and finite values whose differences
/// overflow (`x - max` is -inf for -3e38 below 3e38).
#[test]
fn logsumexp_long_rows_and_columns_with_special_values() -> R {
    let (nan, inf) = (f64::NAN, f64::INFINITY);
    for n in [1usize, 15, 16, 17, 63, 64, 65, 1000, 1024, 1025, 2049, 4100] {
        let base: Vec<f64> = (0..n).map(|i| ((i * 37 % 101) as f64 - 50.0) / 7.0).collect();
        let mut rows = vec![base.clone()];
        let mut wide = base.clone();
        wide[0] = -3e38;
        wide[n - 1] = 3e38;
        rows.push(wide);
        for at in [0, n / 2, n.saturating_sub(3), n - 1] {
            for special in [nan, inf, -inf] {
                let mut r = base.clone();
                r[at] = special;
                rows.push(r);
            }
        }
        let mut all_neg_inf = vec![-inf; n];
        all_neg_inf[n / 2] = 1.5;
        rows.push(all_neg_inf);
        rows.push(vec![-inf; n]);
        let flat: Vec<f64> = rows.concat();
        let shape = [rows.len(), n];
        for dt in [DType::F32, DType::F64, DType::BF16] {
            let x = make(&flat, &shape, dt);
            let got = read(&x.logsumexp(1, false)?);
            // The same rows as the columns of a contiguous array (the outer
            // walk, which folds leaves of each column).
            let nr = rows.len();
            let cols: Vec<f64> = (0..n * nr).map(|k| flat[(k % nr) * n + k / nr]).collect();
            let by_cols = read(&make(&cols, &[n, nr], dt).logsumexp(0, false)?);
            // The reference reads the values as the array holds them.
            let held = read(&x);
            for (i, g) in groups(&held, &shape, &[1]).iter().enumerate() {
                let want = ref_logsumexp(g);
                for (how, got) in [("row", got[i]), ("column", by_cols[i])] {
                    let ok = if want.is_nan() {
                        got.is_nan()
                    } else if want.is_infinite() {
                        got == want
                    } else {
                        (got - want).abs() <= rel_tol(dt) * want.abs().max(1.0)
                    };
                    assert!(ok, "{dt} n {n} {how} {i}: {got} vs {want}");
                }
            }
        }
    }
    Ok(())
}

#[test]
fn softmax_rows_sum_to_one() -> R {
    let (r, c) = (4, 9);
    let mut v = values(r * c, DType::F32, 33);
    v[c] = 1000.0; // a large value in row 1 must not overflow
    let x = make(&v, &[r, c], DType::F32);
    let s = x.softmax(-1)?;
    assert_eq!(s.shape(), &[r, c]);
    let got = read(&s);
    for (i, g) in groups(&v, &[r, c], &[1]).iter().enumerate() {
        let m = nan_max(g);
        let z: f64 = g.iter().map(|x| (x - m).exp()).sum();
        let row = &got[i * c..(i + 1) * c];
        assert!((row.iter().sum::<f64>() - 1.0).abs() < 1e-5, "row {i} sums to {}", row.iter().sum::<f64>());
        for (j, &p) in row.iter().enumerate() {
            assert!((p - (g[j] - m).exp() / z).abs() < 1e-6, "row {i} col {j}");
        }
    }
    // Along axis 0 of a transposed view, and for an integer input (as f32).
    let t = x.t()?.softmax(0)?;
    let cols = read(&t.sum(0, false)?);
    assert!(cols.iter().all(|s| (s - 1.0).abs() < 1e-5), "{cols:?}");
    let xi = make(&values(12, DType::I32, 34), &[3, 4], DType::I32);
    let si = xi.softmax(1)?;
    assert_eq!(si.dtype(), DType::F32);
    assert!(read(&si.sum(1, false)?).iter().all(|s| (s - 1.0).abs() < 1e-5));
    Ok(())
}

// ---------------------------------------------------------------- properties

fn arb_case() -> impl Strategy<Value = (Vec<usize>, Vec<bool>, bool, bool, bool, u64)> {
    prop::collection::vec(0usize..5, 0..=4).prop_flat_map(|shape| {
        let nd = shape.len();
        (
            Just(shape),
            prop::collection::vec(any::<bool>(), nd),
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
            any::<u64>(),
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn sum_max_mean_match_reference(
        (shape, mask, keepdims, transpose, negative, seed) in arb_case()
    ) {
        let n: usize = shape.iter().product();
        let nd = shape.len();
        let axes: Vec<usize> = (0..nd).filter(|&a| mask[a]).collect();
        let spelled: Vec<isize> = axes.iter().map(|&a| if negative { a as isize - nd as isize } else { a as isize }).collect();
        for dt in [DType::F32, DType::I32] {
            let base = values(n, dt, seed);
            let mut x = make(&base, &shape, dt);
            let (mut vshape, mut vals) = (shape.clone(), base.clone());
            if transpose {
                x = x.t().unwrap();
                vshape.reverse();
                let mut st: Vec<isize> = vec![0; nd];
                let mut acc = 1isize;
                for d in (0..nd).rev() {
                    st[d] = acc;
                    acc *= shape[d].max(1) as isize;
                }
                st.reverse();
                vals = view_values(&base, &vshape, &st, 0);
            }
            let g = groups(&vals, &vshape, &axes);
            for op in [ReduceOp::Sum, ReduceOp::Max, ReduceOp::Mean] {
                let r = kiln::reduce(op, &x, spelled.clone(), keepdims);
                if op == ReduceOp::Max && axes.iter().any(|&a| vshape[a] == 0) {
                    prop_assert!(r.is_err());
                    continue;
                }
                let r = r.unwrap();
                let want_shape = reduced_shape(&vshape, &axes, keepdims);
                prop_assert_eq!(r.shape(), want_shape.as_slice());
                let got = read(&r);
                prop_assert_eq!(got.len(), g.len());
                for (gv, &v) in g.iter().zip(&got) {
                    check(op, dt, gv, v, &format!("{op:?} {dt} shape {vshape:?} axes {axes:?}"));
                }
            }
        }
    }
}

#[test]
fn sums_of_negative_zeros_keep_their_sign() -> R {
    // As in NumPy: sum([-0.0]) and mean([-0.0]) are -0.0, an empty sum is +0.0.
    for dt in [DType::F32, DType::F64] {
        let z = Array::from_slice(&[-0.0f64, -0.0, -0.0], &[3])?.astype(dt)?;
        for (what, v) in [("sum", z.sum(Axes::All, false)?), ("mean", z.mean(Axes::All, false)?)] {
            let v = v.astype(DType::F64)?.to_vec::<f64>()?[0];
            assert!(v == 0.0 && v.is_sign_negative(), "{what} of -0.0 ({dt:?}): {v}");
        }
        let empty = Array::from_slice(&[0.0f64; 0], &[0])?.astype(dt)?;
        let v = empty.sum(Axes::All, false)?.astype(DType::F64)?.to_vec::<f64>()?[0];
        assert!(v == 0.0 && v.is_sign_positive(), "empty sum ({dt:?}): {v}");
    }
    Ok(())
}

/// `reduce_many` against one `reduce` per op on the same view.
fn many_vs_single(x: &Array, ops: &[ReduceOp], axes: &[usize]) -> R {
    use kiln::backend::cpu::reduce::{reduce, reduce_many};
    x.eval()?;
    let d = x.data().expect("evaluated");
    let together = reduce_many(ops, d, axes)?;
    for (&op, got) in ops.iter().zip(&together) {
        let want = reduce(op, d, axes, op.out_dtype(d.dtype()))?;
        let (g, w) = (got.as_slice::<f32>().expect("f32"), want.as_slice::<f32>().expect("f32"));
        assert_eq!(g.len(), w.len());
        for (i, (a, b)) in g.iter().zip(w).enumerate() {
            // Bit for bit, but a zero maximum may carry either sign.
            let same = a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()) || (*a == 0.0 && *b == 0.0);
            assert!(same, "{} at {i} of {:?} over {axes:?}: together {a:e}, alone {b:e}", op.name(), x.shape());
        }
    }
    Ok(())
}

#[test]
fn carried_reductions_equal_their_own_reduction() -> R {
    let pairs: [&[ReduceOp]; 4] = [
        &[ReduceOp::Max, ReduceOp::SumExp],
        &[ReduceOp::LogSumExp, ReduceOp::Max],
        &[ReduceOp::Mean, ReduceOp::Var { ddof: 0 }],
        &[ReduceOp::Var { ddof: 1 }, ReduceOp::Sum, ReduceOp::Mean, ReduceOp::Max],
    ];
    let mut seed = 0x9e37_79b9u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        ((seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 60.0
    };
    // (257, 35): the outer walk folds runs of 128 rows, each two leaves of
    // 64 joined (the variance's plain sum must join them as the mean's
    // walk does), and combines the runs in a tree. (1100, 1030): the rows
    // split over threads, runs of leaves of 16, groups of 1024 outputs and
    // a tail of 6.
    for (rows, cols) in [(3, 5), (7, 300), (4, 4096 + 19), (1, 1), (257, 35), (1100, 1030)] {
        let mut v: Vec<f32> = (0..rows * cols).map(|_| next()).collect();
        // Specials in some rows: infinities of one sign, of both, a NaN, -0.
        if rows >= 3 && cols >= 2 {
            v[0] = f32::INFINITY;
            v[1] = f32::INFINITY;
            v[cols] = f32::NEG_INFINITY;
            v[cols + 1] = f32::INFINITY;
            v[2 * cols + 1] = f32::NAN;
        }
        let x = Array::from_vec(v, &[rows, cols])?;
        for ops in pairs {
            many_vs_single(&x, ops, &[1])?;
            many_vs_single(&x, ops, &[0])?;
            many_vs_single(&x.t()?, ops, &[1])?;
        }
    }
    let zeros = Array::from_vec(vec![-0.0f32; 40], &[2, 20])?;
    many_vs_single(&zeros, pairs[2], &[1])?;
    let empty = Array::from_vec(Vec::<f32>::new(), &[3, 0])?;
    empty.eval()?;
    let err = kiln::backend::cpu::reduce::reduce_many(pairs[0], empty.data().expect("evaluated"), &[1]);
    assert!(err.is_err(), "max of an empty axis is an error together as alone");
    Ok(())
}

/// The column leaves fold up to 1024 adjacent columns at once, row after
/// row; each column's result must not depend on how many columns share its
/// pass, nor on which of them hold a NaN or an infinity (their groups of 16
/// are folded apart, mid-pass). Each 16-column slice, folded alone, must
/// give the same bits as the whole array.
#[test]
fn column_logsumexp_gives_the_same_bits_at_any_width() -> R {
    // 200 rows: one leaf, so every width folds each column's rows alike.
    let (rows, cols) = (200usize, 1100usize);
    let mut v: Vec<f64> = (0..rows * cols).map(|i| ((i * 7919 % 6007) as f64 / 97.0) - 31.0).collect();
    v[17 * cols + 5 * 16 + 3] = f64::NAN; // group 5, in the first pass of 1024 columns
    v[150 * cols + 9 * 16] = f64::INFINITY; // group 9
    v[3 * cols + 9 * 16 + 15] = f64::NEG_INFINITY; // group 9, another column
    v[60 * cols + 1090] = f64::NEG_INFINITY; // the columns after the last group of 16
    let x = make(&v, &[rows, cols], DType::F32);
    let all = x.logsumexp(0, false)?.to_vec::<f32>()?;
    let compiled = kiln::compile(|x: &Array| x.logsumexp(0, false)).call(&x)?.to_vec::<f32>()?;
    for c0 in (0..cols).step_by(16) {
        let w = 16.min(cols - c0);
        let part: Vec<f64> = (0..rows * w).map(|k| v[(k / w) * cols + c0 + k % w]).collect();
        let alone = make(&part, &[rows, w], DType::F32).logsumexp(0, false)?.to_vec::<f32>()?;
        for (i, a) in alone.iter().enumerate() {
            let c = c0 + i;
            assert_eq!(a.to_bits(), all[c].to_bits(), "column {c}: {a} alone vs {} in the array", all[c]);
            assert_eq!(a.to_bits(), compiled[c].to_bits(), "column {c}: {a} alone vs {} compiled", compiled[c]);
        }
    }
    assert!(all[5 * 16 + 3].is_nan() && all[9 * 16] == f32::INFINITY && all[5 * 16].is_finite());
    Ok(())
}

#[test]
fn logsumexp_and_softmax_over_columns_read_in_place() -> R {
    // 37 columns: two groups of 16 folded across the columns (a NaN in one
    // leaf of the second group, which that leaf folds column by column),
    // then 5 folded one by one; 700 rows, so leaves end mid-column.
    let (rows, cols) = (700usize, 37usize);
    let mut v: Vec<f64> = (0..rows * cols).map(|i| ((i * 7919 % 6007) as f64 / 100.0) - 30.0).collect();
    v[500 * cols + 20] = f64::NAN;
    for j in 0..rows {
        v[j * cols + 3] = 80.0 + j as f64 * 0.001; // exp would overflow without the maximum
    }
    let x = make(&v, &[rows, cols], DType::F32);
    let held = read(&x);
    let col = |c: usize| -> Vec<f64> { (0..rows).map(|j| held[j * cols + c]).collect() };
    let lse = read(&x.logsumexp(0, false)?);
    let sm = read(&kiln::compile(|x: &Array| x.softmax(0)).call(&x)?);
    for c in 0..cols {
        let want = ref_logsumexp(&col(c));
        if c == 20 {
            assert!(lse[c].is_nan() && (0..rows).all(|j| sm[j * cols + c].is_nan()), "column {c}");
            continue;
        }
        assert!((lse[c] - want).abs() <= 1e-6 * want.abs().max(1.0), "column {c}: {} vs {want}", lse[c]);
        for j in 0..rows {
            let p = (col(c)[j] - want).exp();
            assert!((sm[j * cols + c] - p).abs() <= 1e-6 * p.max(1e-3), "({j}, {c}): {} vs {p}", sm[j * cols + c]);
        }
    }
    Ok(())
}

#[test]
fn column_variance_matches_f64_across_runs_of_rows() -> R {
    // Columns far from zero (mean 100, spread about 1), 1000 rows: the
    // outer walk folds runs of rows (two passes over each run, 16-bit
    // floats and integers widened as they are read) and combines the runs; a one-pass
    // sum of squares in f32 would lose about 1e-3 of the variance here. A
    // NaN and an infinity make their columns NaN.
    let (rows, cols) = (1000, 37);
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut v: Vec<f64> = (0..rows * cols)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            100.0 + ((seed >> 40) as f64 / (1u64 << 24) as f64 - 0.5) * 3.5
        })
        .collect();
    v[500 * cols + 3] = f64::NAN;
    v[17 * cols + 20] = f64::INFINITY;
    let f = kiln::compile(|x: &Array| Ok(vec![x.var(0, false, 0)?, x.var(0, false, 1)?]));
    for dt in [DType::F32, DType::F64, DType::F16, DType::BF16, DType::I32] {
        let x = make(&v, &[rows, cols], dt);
        let held = read(&x);
        for (how, got) in [("eager", vec![x.var(0, false, 0)?, x.var(0, false, 1)?]), ("compiled", f.call(&x)?)] {
            for (ddof, g) in got.iter().enumerate() {
                let g = read(g);
                for c in 0..cols {
                    let col: Vec<f64> = (0..rows).map(|r| held[r * cols + c]).collect();
                    let what = format!("{how} {dt:?} var(ddof {ddof}) of column {c}");
                    check(ReduceOp::Var { ddof }, dt, &col, g[c], &what);
                    // (Integers hold no NaN or infinity.)
                    assert_eq!(g[c].is_nan(), dt != DType::I32 && (c == 3 || c == 20), "{what}");
                }
            }
        }
    }
    Ok(())
}

#[test]
fn reductions_over_rows_of_few_columns_match_f64() -> R {
    // Rows of 1 to 32 columns back to back (NHWC statistics over the
    // pixels): the outer walk folds them as one run over lanes of whole
    // rows, with rows left over after the last whole group; enough rows to
    // split the walk pairwise. Every op and dtype, eager and compiled, a
    // NaN in a float column.
    for &(rows, cols) in
        &[(1usize, 3usize), (63, 3), (5000, 3), (777, 1), (3001, 5), (1000, 7), (2500, 16), (999, 31), (1200, 32)]
    {
        for dt in DTYPES {
            let mut v = values(rows * cols, dt, (rows * 131 + cols) as u64);
            let float = matches!(dt, DType::F32 | DType::F64 | DType::F16 | DType::BF16);
            if float && rows > 2 {
                v[(rows / 2) * cols + cols - 1] = f64::NAN;
            }
            let x = make(&v, &[rows, cols], dt);
            let held = read(&x);
            for op in OPS {
                let f = kiln::compile(move |x: &Array| kiln::reduce(op, x, 0, false));
                let Ok(eager) = kiln::reduce(op, &x, 0, false) else { continue };
                for (how, got) in [("eager", eager), ("compiled", f.call(&x)?)] {
                    let got = read(&got);
                    assert_eq!(got.len(), cols);
                    for (c, &g) in got.iter().enumerate() {
                        let col: Vec<f64> = (0..rows).map(|r| held[r * cols + c]).collect();
                        check(op, dt, &col, g, &format!("{how} {op:?} {dt:?} {rows}x{cols} column {c}"));
                    }
                }
            }
        }
    }
    Ok(())
}
