//! Shape ops, gathers and creation ops against a plain reference: a
//! row-major `Vec<f64>` n-d array with its own index arithmetic, and Python's
//! slice rules written out step by step.

use std::sync::Arc;

use kiln::{Array, DType, SliceAxis};
use proptest::prelude::*;

// ---------------------------------------------------------------- reference

/// A row-major n-d array of f64 with naive indexing.
#[derive(Clone, Debug, PartialEq)]
struct Nd {
    shape: Vec<usize>,
    data: Vec<f64>,
}

/// Every multi-index of `shape` in row-major order.
fn multi_indices(shape: &[usize]) -> Vec<Vec<usize>> {
    let mut out = vec![vec![]];
    for &d in shape {
        out = out.into_iter().flat_map(|p| (0..d).map(move |i| [p.clone(), vec![i]].concat())).collect();
    }
    out
}

impl Nd {
    fn build(shape: &[usize], f: impl Fn(&[usize]) -> f64) -> Nd {
        Nd { shape: shape.to_vec(), data: multi_indices(shape).iter().map(|i| f(i)).collect() }
    }
    /// Element k is `k` (distinct values make misplaced elements visible).
    fn iota(shape: &[usize]) -> Nd {
        Nd::build(shape, {
            let shape = shape.to_vec();
            move |i| i.iter().zip(&shape).fold(0usize, |acc, (&x, &d)| acc * d + x) as f64
        })
    }
    fn at(&self, idx: &[usize]) -> f64 {
        let mut k = 0;
        for (d, &i) in idx.iter().enumerate() {
            assert!(i < self.shape[d]);
            k = k * self.shape[d] + i;
        }
        self.data[k]
    }
    fn permute(&self, perm: &[usize]) -> Nd {
        let shape: Vec<usize> = perm.iter().map(|&p| self.shape[p]).collect();
        Nd::build(&shape, |i| {
            let mut src = vec![0; i.len()];
            for (k, &p) in perm.iter().enumerate() {
                src[p] = i[k];
            }
            self.at(&src)
        })
    }
    /// `self[specs...]` with per-axis index lists.
    fn select(&self, lists: &[Vec<usize>]) -> Nd {
        let shape: Vec<usize> = lists.iter().map(|l| l.len()).collect();
        Nd::build(&shape, |i| self.at(&i.iter().zip(lists).map(|(&k, l)| l[k]).collect::<Vec<_>>()))
    }
    fn array(&self) -> Array {
        Array::from_slice(&self.data, &self.shape).unwrap()
    }
}

/// The indices `range(n)[start:stop:step]` picks, following CPython's
/// `PySlice_AdjustIndices` literally.
fn py_slice(n: usize, start: Option<isize>, stop: Option<isize>, step: isize) -> Vec<usize> {
    let n = n as isize;
    let (lower, upper) = if step < 0 { (-1, n - 1) } else { (0, n) };
    let adjust = |v: Option<isize>, default: isize| match v {
        None => default,
        Some(v) if v < 0 => (v + n).max(lower),
        Some(v) => v.min(upper),
    };
    let start = adjust(start, if step < 0 { upper } else { lower });
    let stop = adjust(stop, if step < 0 { lower } else { upper });
    let mut out = vec![];
    let mut i = start;
    while (step > 0 && i < stop) || (step < 0 && i > stop) {
        out.push(i as usize);
        i += step;
    }
    out
}

fn vals(a: &Array) -> Vec<f64> {
    a.astype(DType::F64).unwrap().to_vec::<f64>().unwrap()
}

fn check(a: &Array, want: &Nd) {
    assert_eq!(a.shape(), &want.shape[..], "shape");
    assert_eq!(vals(a), want.data);
}

fn shares_buffer(a: &Array, b: &Array) -> bool {
    a.eval().unwrap();
    b.eval().unwrap();
    Arc::ptr_eq(a.data().unwrap().storage(), b.data().unwrap().storage())
}

fn err(r: kiln::Result<Array>) -> String {
    match r {
        Ok(a) => match a.eval() {
            Ok(()) => panic!("expected an error, got {a:?}"),
            Err(e) => e.to_string(),
        },
        Err(e) => e.to_string(),
    }
}

fn full_slice() -> SliceAxis {
    SliceAxis { start: None, stop: None, step: 1 }
}

// ------------------------------------------------------------------ reshape

#[test]
fn reshape_infers_minus_one() {
    let r = Nd::iota(&[2, 3, 4]);
    let a = r.array();
    let b = a.reshape(&[4, -1]).unwrap();
    assert_eq!(b.shape(), &[4, 6]);
    assert_eq!(vals(&b), r.data);
    assert_eq!(a.reshape(&[-1, 2, 2]).unwrap().shape(), &[6, 2, 2]);
    assert!(err(a.reshape(&[5, -1])).contains("reshape"));
    let e = err(a.reshape(&[5, 5]));
    assert!(e.contains("reshape") && e.contains("(2, 3, 4)"), "{e}");
    assert!(err(a.reshape(&[-1, -1, 2])).contains("-1"));
}

#[test]
fn views_share_the_input_buffer() {
    let a = Nd::iota(&[2, 3, 4]).array();
    assert!(shares_buffer(&a, &a.reshape(&[6, 4]).unwrap()));
    assert!(shares_buffer(&a, &a.t().unwrap()));
    assert!(shares_buffer(&a, &kiln::swapaxes(&a, 0, 2).unwrap()));
    assert!(shares_buffer(&a, &kiln::slice_axis(&a, 2, Some(3), None, -2).unwrap()));
    assert!(shares_buffer(&a, &kiln::expand_dims(&a, &[0, -1]).unwrap()));
    let one = Nd::iota(&[1, 3]).array();
    assert!(shares_buffer(&one, &kiln::broadcast_to(&one, &[4, 2, 3]).unwrap()));
    assert!(shares_buffer(&one, &kiln::squeeze(&one, None).unwrap()));
    // A slice keeping whole rows reshapes as a view too.
    let s = kiln::slice_axis(&a, 0, Some(1), None, 1).unwrap();
    assert!(shares_buffer(&a, &s.reshape(&[12]).unwrap()));
}

#[test]
fn reshape_of_transposed_copies_and_is_correct() {
    let r = Nd::iota(&[3, 4]);
    let a = r.array();
    let t = a.t().unwrap();
    let f = t.reshape(&[-1]).unwrap();
    assert!(!shares_buffer(&a, &f));
    assert_eq!(vals(&f), r.permute(&[1, 0]).data);
    // A transposed 3-d array split along a stride-compatible axis stays a view.
    let r3 = Nd::iota(&[4, 6]);
    let t3 = r3.array().t().unwrap();
    let v = t3.reshape(&[2, 3, 4]).unwrap();
    assert!(shares_buffer(&t3, &v));
    assert_eq!(vals(&v), r3.permute(&[1, 0]).data);
}

#[test]
fn flatten() {
    let r = Nd::iota(&[2, 3, 2]);
    let p = r.array().permute(&[2, 0, 1]).unwrap().flatten().unwrap();
    assert_eq!(p.shape(), &[12]);
    assert_eq!(vals(&p), r.permute(&[2, 0, 1]).data);
    assert_eq!(Array::scalar(3.0f32).flatten().unwrap().shape(), &[1]);
}

#[test]
fn squeeze_and_expand_dims() {
    let a = Nd::iota(&[1, 3, 1, 2]).array();
    assert_eq!(kiln::squeeze(&a, None).unwrap().shape(), &[3, 2]);
    assert_eq!(kiln::squeeze(&a, Some(&[0])).unwrap().shape(), &[3, 1, 2]);
    assert_eq!(kiln::squeeze(&a, Some(&[-2, 0])).unwrap().shape(), &[3, 2]);
    let e = err(kiln::squeeze(&a, Some(&[1])));
    assert!(e.contains("squeeze") && e.contains("axis 1") && e.contains("(1, 3, 1, 2)"), "{e}");
    assert!(err(kiln::squeeze(&a, Some(&[4]))).contains("squeeze"));
    let b = Nd::iota(&[2, 3]).array();
    assert_eq!(kiln::expand_dims(&b, &[-1]).unwrap().shape(), &[2, 3, 1]);
    assert_eq!(kiln::expand_dims(&b, &[0, -1]).unwrap().shape(), &[1, 2, 3, 1]);
    assert_eq!(kiln::expand_dims(&b, &[1, -2]).unwrap().shape(), &[2, 1, 1, 3]);
    assert_eq!(vals(&kiln::expand_dims(&b, &[1]).unwrap()), Nd::iota(&[2, 3]).data);
    assert!(err(kiln::expand_dims(&b, &[3])).contains("expand_dims"));
    assert!(err(kiln::expand_dims(&b, &[0, 0])).contains("expand_dims"));
}

#[test]
fn transpose_permute_swapaxes() {
    let r = Nd::iota(&[2, 3, 4]);
    let a = r.array();
    check(&a.t().unwrap(), &r.permute(&[2, 1, 0]));
    check(&a.permute(&[1, 2, 0]).unwrap(), &r.permute(&[1, 2, 0]));
    check(&a.permute(&[-1, 0, 1]).unwrap(), &r.permute(&[2, 0, 1]));
    check(&kiln::swapaxes(&a, 0, -1).unwrap(), &r.permute(&[2, 1, 0]));
    check(&kiln::swapaxes(&a, 1, 2).unwrap(), &r.permute(&[0, 2, 1]));
    // Transposing twice composes the permutations.
    check(&a.permute(&[1, 2, 0]).unwrap().permute(&[2, 0, 1]).unwrap(), &r);
    assert!(err(a.permute(&[0, 0, 1])).contains("transpose"));
    assert!(err(a.permute(&[0, 1])).contains("transpose"));
}

#[test]
fn broadcast_to_values_and_error() {
    let r = Nd::iota(&[3, 1]);
    let b = kiln::broadcast_to(&r.array(), &[2, 3, 4]).unwrap();
    check(&b, &Nd::build(&[2, 3, 4], |i| r.at(&[i[1], 0])));
    let e = err(kiln::broadcast_to(&r.array(), &[3, 2, 2]));
    assert!(e.contains("broadcast_to") && e.contains("(3, 1)") && e.contains("(3, 2, 2)"), "{e}");
    assert!(err(kiln::broadcast_to(&r.array(), &[1])).contains("(3, 1)"));
}

// -------------------------------------------------------------------- slice

#[test]
fn slice_matches_python_for_every_bound_and_step() {
    let bounds = [None, Some(-9), Some(-5), Some(-3), Some(-1), Some(0), Some(1), Some(2), Some(4), Some(5), Some(9)];
    for n in [0usize, 1, 5] {
        let r = Nd::iota(&[n, 2]);
        let a = r.array();
        for step in [-3isize, -2, -1, 1, 2, 3, 7] {
            for start in bounds {
                for stop in bounds {
                    let s = kiln::slice(&a, &[SliceAxis { start, stop, step }]).unwrap();
                    let want = r.select(&[py_slice(n, start, stop, step), vec![0, 1]]);
                    assert_eq!(s.shape(), &want.shape[..], "n={n} {start:?}:{stop:?}:{step}");
                    assert_eq!(vals(&s), want.data, "n={n} {start:?}:{stop:?}:{step}");
                }
            }
        }
    }
}

#[test]
fn slice_of_slices_and_errors() {
    let r = Nd::iota(&[6, 5]);
    let a = r.array();
    let s1 = kiln::slice(
        &a,
        &[SliceAxis { start: Some(5), stop: None, step: -2 }, SliceAxis { start: Some(1), stop: Some(5), step: 1 }],
    )
    .unwrap();
    let s2 = kiln::slice(&s1, &[full_slice(), SliceAxis { start: None, stop: None, step: -3 }]).unwrap();
    let l1 = py_slice(6, Some(5), None, -2);
    let c1 = py_slice(5, Some(1), Some(5), 1);
    let c2: Vec<usize> = py_slice(c1.len(), None, None, -3).into_iter().map(|k| c1[k]).collect();
    check(&s2, &r.select(&[l1, c2]));
    assert!(err(kiln::slice(&a, &[SliceAxis { start: None, stop: None, step: 0 }])).contains("step"));
    assert!(err(kiln::slice(&a, &[full_slice(); 3])).contains("slice"));
    assert!(err(kiln::slice_axis(&a, 2, None, None, 1)).contains("slice"));
}

// -------------------------------------------------------------- concatenate

#[test]
fn concatenate_along_each_axis_with_strided_inputs() {
    let x = Nd::iota(&[3, 2, 4]);
    let y = Nd::build(&[4, 2, 3], |i| 100.0 + i[0] as f64 * 6.0 + i[1] as f64 * 3.0 + i[2] as f64);
    // yt is (3, 2, 4) but transposed in memory; z is a reversed slice.
    let yt = y.array().permute(&[2, 1, 0]).unwrap();
    let yt_ref = y.permute(&[2, 1, 0]);
    let z = kiln::slice_axis(&x.array(), 2, None, None, -1).unwrap();
    let z_ref = x.select(&[vec![0, 1, 2], vec![0, 1], vec![3, 2, 1, 0]]);
    for axis in 0..3 {
        let c = kiln::concatenate(&[x.array(), yt.clone(), z.clone()], axis as isize).unwrap();
        let mut shape = x.shape.clone();
        shape[axis] *= 3;
        let n = x.shape[axis];
        let want = Nd::build(&shape, |i| {
            let mut j = i.to_vec();
            j[axis] %= n;
            match i[axis] / n {
                0 => x.at(&j),
                1 => yt_ref.at(&j),
                _ => z_ref.at(&j),
            }
        });
        check(&c, &want);
    }
    // Negative axis and a broadcast input.
    let ones = kiln::ones(&[3, 2, 1], DType::F64).unwrap();
    let c = kiln::concatenate(&[x.array(), ones], -1).unwrap();
    check(&c, &Nd::build(&[3, 2, 5], |i| if i[2] < 4 { x.at(i) } else { 1.0 }));
}

#[test]
fn concatenate_promotes_and_checks_shapes() {
    let a = Array::from_slice(&[1i32, 2], &[2]).unwrap();
    let b = Array::from_slice(&[0.5f32], &[1]).unwrap();
    let c = kiln::concatenate(&[a.clone(), b], 0).unwrap();
    assert_eq!(c.dtype(), DType::F32);
    assert_eq!(c.to_vec::<f32>().unwrap(), vec![1.0, 2.0, 0.5]);
    let u = Array::from_slice(&[7u8], &[1]).unwrap();
    let d = kiln::concatenate(&[u, a.clone()], 0).unwrap();
    assert_eq!(d.dtype(), DType::I32);
    assert_eq!(d.to_vec::<i32>().unwrap(), vec![7, 1, 2]);
    let m = Nd::iota(&[2, 3]).array();
    let e = err(kiln::concatenate(&[m.clone(), Nd::iota(&[2, 4]).array()], 0));
    assert!(e.contains("concatenate") && e.contains("(2, 3)") && e.contains("(2, 4)"), "{e}");
    assert!(err(kiln::concatenate(&[m.clone(), a], 0)).contains("concatenate"));
    assert!(err(kiln::concatenate(&[], 0)).contains("concatenate"));
    assert!(err(kiln::concatenate(&[m.clone(), m], 2)).contains("concatenate"));
}

#[test]
fn concatenate_large_runs_in_parallel_correctly() {
    let x = Nd::iota(&[300, 70]);
    let y = Nd::iota(&[500, 300]);
    let yt = y.array().t().unwrap();
    let c = kiln::concatenate(&[x.array(), yt], 1).unwrap();
    let yr = y.permute(&[1, 0]);
    let want = Nd::build(&[300, 570], |i| if i[1] < 70 { x.at(i) } else { yr.at(&[i[0], i[1] - 70]) });
    check(&c, &want);
}

#[test]
fn stack_along_new_axes() {
    let a = Nd::iota(&[2, 3]);
    let b = Nd::build(&[2, 3], |i| -(a.at(i) + 1.0));
    for axis in [0isize, 1, 2, -1, -3] {
        let s = kiln::stack(&[a.array(), b.array()], axis).unwrap();
        let ax = if axis < 0 { axis + 3 } else { axis } as usize;
        let mut shape = vec![2, 3];
        shape.insert(ax, 2);
        let want = Nd::build(&shape, |i| {
            let mut j = i.to_vec();
            let which = j.remove(ax);
            if which == 0 {
                a.at(&j)
            } else {
                b.at(&j)
            }
        });
        check(&s, &want);
    }
    let e = err(kiln::stack(&[a.array(), Nd::iota(&[3, 2]).array()], 0));
    assert!(e.contains("stack") && e.contains("(2, 3)") && e.contains("(3, 2)"), "{e}");
    assert!(err(kiln::stack(&[a.array(), b.array()], 3)).contains("stack"));
    assert!(err(kiln::stack(&[], 0)).contains("stack"));
    // Mixed dtypes promote as in concatenate.
    let m = kiln::stack(&[Array::from_slice(&[1u8], &[1]).unwrap(), Array::from_slice(&[0.5f32], &[1]).unwrap()], 0);
    assert_eq!(m.unwrap().to_vec::<f32>().unwrap(), vec![1.0, 0.5]);
}

#[test]
fn split_and_split_at() {
    let r = Nd::iota(&[4, 6]);
    let a = r.array();
    let parts = kiln::split(&a, 3, 1).unwrap();
    assert_eq!(parts.len(), 3);
    for (k, p) in parts.iter().enumerate() {
        check(p, &r.select(&[vec![0, 1, 2, 3], vec![2 * k, 2 * k + 1]]));
    }
    let e = err(kiln::split(&a, 4, 1).map(|v| v[0].clone()));
    assert!(e.contains("split") && e.contains("(4, 6)"), "{e}");
    let parts = kiln::split_at(&a, &[1, 3, 10], 0).unwrap();
    let rows = [vec![0], vec![1, 2], vec![3], vec![]];
    assert_eq!(parts.len(), 4);
    for (p, rows) in parts.iter().zip(rows) {
        check(p, &r.select(&[rows, (0..6).collect()]));
    }
    // Descending indices give empty pieces, as in NumPy.
    let parts = kiln::split_at(&a, &[4, 2], -1).unwrap();
    check(&parts[1], &r.select(&[(0..4).collect(), vec![]]));
    check(&parts[2], &r.select(&[(0..4).collect(), vec![2, 3, 4, 5]]));
}

// --------------------------------------------------------------------- take

fn take_ref(x: &Nd, idx: &[i64], idx_shape: &[usize], axis: usize) -> Nd {
    let n = x.shape[axis] as i64;
    let mut shape = x.shape[..axis].to_vec();
    shape.extend_from_slice(idx_shape);
    shape.extend_from_slice(&x.shape[axis + 1..]);
    Nd::build(&shape, |i| {
        let k = idx_shape.len();
        let flat = i[axis..axis + k].iter().zip(idx_shape).fold(0usize, |acc, (&v, &d)| acc * d + v);
        let mut j = idx[flat];
        if j < 0 {
            j += n;
        }
        let mut src = i[..axis].to_vec();
        src.push(j as usize);
        src.extend_from_slice(&i[axis + k..]);
        x.at(&src)
    })
}

#[test]
fn take_along_each_axis_with_2d_negative_indices() {
    let x = Nd::iota(&[3, 4, 5]);
    for axis in 0..3 {
        let n = x.shape[axis] as i64;
        let idx: Vec<i64> = vec![0, -1, 1, -n, n - 1, 0];
        let ia = Array::from_slice(&idx, &[2, 3]).unwrap();
        let t = kiln::take(&x.array(), &ia, axis as isize).unwrap();
        check(&t, &take_ref(&x, &idx, &[2, 3], axis));
        // The same through a transposed source and i32 indices.
        let xt = x.array().permute(&[2, 0, 1]).unwrap();
        let xr = x.permute(&[2, 0, 1]);
        let n = xr.shape[axis] as i64;
        let idx: Vec<i64> = vec![-1, 0, n - 2, -n];
        let ia = Array::from_vec(idx.iter().map(|&v| v as i32).collect::<Vec<i32>>(), &[2, 2]).unwrap();
        let t = kiln::take(&xt, &ia, axis as isize - 3).unwrap();
        check(&t, &take_ref(&xr, &idx, &[2, 2], axis));
    }
}

#[test]
fn take_index_dtypes_layouts_and_scalars() {
    let x = Nd::iota(&[4, 3]);
    let xa = x.array();
    let u8i = Array::from_slice(&[3u8, 0, 2], &[3]).unwrap();
    check(&kiln::take(&xa, &u8i, 0).unwrap(), &take_ref(&x, &[3, 0, 2], &[3], 0));
    let u32i = Array::from_slice(&[2u32, 2, 1], &[3]).unwrap();
    check(&kiln::take(&xa, &u32i, 1).unwrap(), &take_ref(&x, &[2, 2, 1], &[3], 1));
    // Transposed index array: logical order is [[0, 2], [1, 3]] -> [0, 2, 1, 3].
    let it = Array::from_slice(&[0i64, 1, 2, 3], &[2, 2]).unwrap().t().unwrap();
    check(&kiln::take(&xa, &it, 0).unwrap(), &take_ref(&x, &[0, 2, 1, 3], &[2, 2], 0));
    // Broadcast index array.
    let ib = kiln::broadcast_to(&Array::from_slice(&[-1i32, 0], &[2]).unwrap(), &[3, 2]).unwrap();
    check(&kiln::take(&xa, &ib, 1).unwrap(), &take_ref(&x, &[-1, 0, -1, 0, -1, 0], &[3, 2], 1));
    // A 0-d index drops the axis.
    let s = kiln::take(&xa, &Array::scalar(-2i32), 0).unwrap();
    check(&s, &Nd { shape: vec![3], data: vec![6.0, 7.0, 8.0] });
    // Other dtypes of x.
    let b = Array::from_slice(&[true, false, false], &[3]).unwrap();
    let tb = kiln::take(&b, &Array::from_slice(&[1i32, 0, 0], &[3]).unwrap(), 0).unwrap();
    assert_eq!(tb.to_vec::<bool>().unwrap(), vec![false, true, true]);
}

#[test]
fn take_out_of_range_is_an_error() {
    let x = Nd::iota(&[4, 3]).array();
    let e = err(kiln::take(&x, &Array::from_slice(&[0i32, 3], &[2]).unwrap(), 1));
    assert!(e.contains("take") && e.contains("index 3") && e.contains("axis 1") && e.contains("size 3"), "{e}");
    let e = err(kiln::take(&x, &Array::from_slice(&[-5i64], &[1]).unwrap(), 0));
    assert!(e.contains("take") && e.contains("index -5") && e.contains("axis 0") && e.contains("size 4"), "{e}");
    let e = err(kiln::take(&x, &Array::from_slice(&[0.5f32], &[1]).unwrap(), 0));
    assert!(e.contains("take") && e.contains("f32"), "{e}");
    assert!(err(kiln::take(&x, &Array::from_slice(&[0i32], &[1]).unwrap(), 2)).contains("take"));
}

#[test]
fn take_large_runs_in_parallel_correctly() {
    let x = Nd::iota(&[50, 40, 30]);
    let idx: Vec<i64> = (0..70).map(|i| (i * 17 % 80) - 40).collect();
    let ia = Array::from_slice(&idx, &[7, 10]).unwrap();
    let t = kiln::take(&x.array(), &ia, 1).unwrap();
    check(&t, &take_ref(&x, &idx, &[7, 10], 1));
    let idx2: Vec<i64> = (0..2000).map(|i| (i * 7 % 30) - 15).collect();
    let t2 = kiln::take(&x.array(), &Array::from_slice(&idx2, &[2000]).unwrap(), 2).unwrap();
    check(&t2, &take_ref(&x, &idx2, &[2000], 2));
}

// ------------------------------------------------------------- empty arrays

#[test]
fn every_op_on_empty_arrays() {
    let e = Nd::iota(&[2, 0, 3]);
    let a = e.array();
    let same = |x: &Array, shape: &[usize]| {
        assert_eq!(x.shape(), shape);
        assert_eq!(vals(x), Vec::<f64>::new());
    };
    same(&a.reshape(&[0, 5]).unwrap(), &[0, 5]);
    same(&a.reshape(&[-1, 2]).unwrap(), &[0, 2]);
    same(&a.flatten().unwrap(), &[0]);
    same(&a.t().unwrap(), &[3, 0, 2]);
    same(&a.t().unwrap().reshape(&[3, 0]).unwrap(), &[3, 0]);
    same(&kiln::swapaxes(&a, 0, 1).unwrap(), &[0, 2, 3]);
    same(&kiln::expand_dims(&a, &[-1]).unwrap(), &[2, 0, 3, 1]);
    same(&kiln::squeeze(&kiln::expand_dims(&a, &[0]).unwrap(), None).unwrap(), &[2, 0, 3]);
    same(&kiln::broadcast_to(&a, &[4, 2, 0, 3]).unwrap(), &[4, 2, 0, 3]);
    same(&kiln::slice_axis(&a, 2, None, None, -1).unwrap(), &[2, 0, 3]);
    same(&kiln::slice_axis(&Nd::iota(&[4]).array(), 0, Some(3), Some(1), 1).unwrap(), &[0]);
    same(&kiln::concatenate(&[a.clone(), a.clone()], 1).unwrap(), &[2, 0, 3]);
    same(&kiln::concatenate(&[a.clone(), a.clone()], 0).unwrap(), &[4, 0, 3]);
    same(&kiln::stack(&[a.clone(), a.clone()], 1).unwrap(), &[2, 2, 0, 3]);
    let parts = kiln::split(&a, 3, 2).unwrap();
    assert_eq!(parts.len(), 3);
    same(&parts[2], &[2, 0, 1]);
    let none = Array::from_slice::<i32>(&[], &[0]).unwrap();
    same(&kiln::take(&a, &none, 2).unwrap(), &[2, 0, 0]);
    same(&kiln::take(&a, &Array::from_slice(&[1i32], &[1]).unwrap(), 2).unwrap(), &[2, 0, 1]);
    same(&kiln::take(&Nd::iota(&[3]).array(), &none, 0).unwrap(), &[0]);
    assert!(err(kiln::take(&a, &Array::from_slice(&[0i32], &[1]).unwrap(), 1)).contains("take"));
    // Concatenating an empty piece with a full one.
    let full = Nd::iota(&[2, 2, 3]);
    check(&kiln::concatenate(&[a.clone(), full.array()], 1).unwrap(), &full);
    same(&kiln::zeros(&[0, 4], DType::I32).unwrap(), &[0, 4]);
    same(&kiln::zeros_like(&a).unwrap(), &[2, 0, 3]);
    same(&kiln::arange(3.0, 3.0, 1.0, DType::F32).unwrap(), &[0]);
    same(&kiln::linspace(0.0, 1.0, 0, DType::F32).unwrap(), &[0]);
    same(&kiln::eye(0, 3, 0, DType::F32).unwrap(), &[0, 3]);
}

// ----------------------------------------------------------------- creation

#[test]
fn zeros_ones_full_and_likes() {
    let z = kiln::zeros(&[2, 3], DType::F16).unwrap();
    assert_eq!((z.shape(), z.dtype()), (&[2usize, 3][..], DType::F16));
    assert_eq!(vals(&z), vec![0.0; 6]);
    assert_eq!(kiln::ones(&[4], DType::U8).unwrap().to_vec::<u8>().unwrap(), vec![1; 4]);
    assert_eq!(kiln::ones(&[2], DType::Bool).unwrap().to_vec::<bool>().unwrap(), vec![true; 2]);
    assert_eq!(kiln::full(&[2, 2], 2.5f64, DType::F32).unwrap().to_vec::<f32>().unwrap(), vec![2.5; 4]);
    assert_eq!(kiln::full(&[3], -4i32, DType::I64).unwrap().to_vec::<i64>().unwrap(), vec![-4; 3]);
    assert_eq!(kiln::full(&[], 7i32, DType::I32).unwrap().item::<i32>().unwrap(), 7);
    let x = Nd::iota(&[3, 2]).array().astype(DType::I32).unwrap();
    let zl = kiln::zeros_like(&x).unwrap();
    assert_eq!((zl.shape(), zl.dtype()), (&[3usize, 2][..], DType::I32));
    assert_eq!(zl.to_vec::<i32>().unwrap(), vec![0; 6]);
    assert_eq!(kiln::ones_like(&x).unwrap().to_vec::<i32>().unwrap(), vec![1; 6]);
    assert_eq!(kiln::full_like(&x, 9i32).unwrap().to_vec::<i32>().unwrap(), vec![9; 6]);
    assert!(kiln::zeros(&[usize::MAX, 4], DType::F32).is_err());
}

#[test]
fn arange_counts_and_values_match_numpy() {
    // (start, stop, step, len(np.arange(start, stop, step)))
    let cases = [
        (0.0, 10.0, 1.0, 10),
        (0.0, 10.0, 3.0, 4),
        (10.0, 0.0, -1.0, 10),
        (10.0, 0.0, -3.0, 4),
        (0.0, 1.0, 0.1, 10),
        (1.0, 1.3, 0.1, 4),
        (0.0, -5.0, 1.0, 0),
        (5.0, 5.0, 1.0, 0),
        (-3.0, 3.0, 0.5, 12),
        (0.0, 1.0, 0.3, 4),
        (2.5, -1.0, -0.7, 5),
    ];
    for (start, stop, step, len) in cases {
        let a = kiln::arange(start, stop, step, DType::F64).unwrap();
        assert_eq!(a.shape(), &[len], "arange({start}, {stop}, {step})");
        let want: Vec<f64> = (0..len).map(|i| start + i as f64 * step).collect();
        assert_eq!(a.to_vec::<f64>().unwrap(), want);
    }
    assert_eq!(kiln::arange(10.0, 0.0, -3.0, DType::I32).unwrap().to_vec::<i32>().unwrap(), vec![10, 7, 4, 1]);
    assert_eq!(kiln::arange(0.0, 1.0, 0.25, DType::F32).unwrap().to_vec::<f32>().unwrap(), vec![0.0, 0.25, 0.5, 0.75]);
    assert!(err(kiln::arange(0.0, 1.0, 0.0, DType::F32)).contains("arange"));
    assert!(err(kiln::arange(0.0, f64::INFINITY, 1.0, DType::F32)).contains("arange"));
    // Large enough for the parallel path.
    let big = kiln::arange(-5.0, 100_000.0, 0.5, DType::F64).unwrap().to_vec::<f64>().unwrap();
    assert_eq!(big.len(), 200_010);
    assert!(big.iter().enumerate().all(|(i, &v)| v == -5.0 + i as f64 * 0.5));
}

#[test]
fn linspace_hits_stop_exactly() {
    assert_eq!(
        kiln::linspace(0.0, 1.0, 5, DType::F32).unwrap().to_vec::<f32>().unwrap(),
        vec![0.0, 0.25, 0.5, 0.75, 1.0]
    );
    // Here start + 10 * step != stop in f64; NumPy sets the last element to stop.
    let (start, stop, n) = (-1.3, 2.9, 11usize);
    let step = (stop - start) / (n - 1) as f64;
    assert_ne!(start + (n - 1) as f64 * step, stop);
    let l = kiln::linspace(start, stop, n, DType::F64).unwrap().to_vec::<f64>().unwrap();
    let want: Vec<f64> = (0..n).map(|i| if i + 1 == n { stop } else { start + i as f64 * step }).collect();
    assert_eq!(l, want);
    assert_eq!(kiln::linspace(3.0, 9.0, 1, DType::F64).unwrap().to_vec::<f64>().unwrap(), vec![3.0]);
    let d = kiln::linspace(1.0, 0.0, 3, DType::F16).unwrap();
    assert_eq!((d.shape(), d.dtype()), (&[3usize][..], DType::F16));
    assert_eq!(vals(&d), vec![1.0, 0.5, 0.0]);
    assert!(err(kiln::linspace(0.0, 1.0, 3, DType::I32)).contains("linspace"));
}

#[test]
fn eye_offsets_and_non_square() {
    for (n, m) in [(3usize, 3usize), (3, 4), (4, 3), (1, 5)] {
        for k in -4isize..=4 {
            let e = kiln::eye(n, m, k, DType::F32).unwrap();
            let want = Nd::build(&[n, m], |i| if i[1] as isize - i[0] as isize == k { 1.0 } else { 0.0 });
            assert_eq!(e.dtype(), DType::F32);
            check(&e, &want);
        }
    }
    assert_eq!(kiln::eye(2, 2, 0, DType::Bool).unwrap().to_vec::<bool>().unwrap(), vec![true, false, false, true]);
}

// ----------------------------------------------------------------- property

fn slice_spec(dim: usize) -> impl Strategy<Value = SliceAxis> {
    let b = dim as isize + 2;
    (prop::option::of(-b..=b), prop::option::of(-b..=b), prop_oneof![-3isize..=-1, 1isize..=3])
        .prop_map(|(start, stop, step)| SliceAxis { start, stop, step })
}

fn case() -> impl Strategy<Value = (Vec<usize>, Vec<usize>, Vec<SliceAxis>, Vec<SliceAxis>)> {
    prop::collection::vec(0usize..5, 1..5).prop_flat_map(|shape| {
        let nd = shape.len();
        let perm = Just((0..nd).collect::<Vec<usize>>()).prop_shuffle();
        (Just(shape), perm).prop_flat_map(|(shape, perm)| {
            let permuted: Vec<usize> = perm.iter().map(|&p| shape[p]).collect();
            let before: Vec<_> = shape.iter().map(|&d| slice_spec(d)).collect();
            let after: Vec<_> = permuted.iter().map(|&d| slice_spec(d)).collect();
            (Just(shape), Just(perm), before, after)
        })
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, failure_persistence: None, ..ProptestConfig::default() })]

    /// slice -> permute -> slice -> (reshape to flat) against index lists.
    #[test]
    fn views_compose_like_reference((shape, perm, before, after) in case()) {
        let r = Nd::iota(&shape);
        let lists: Vec<Vec<usize>> =
            before.iter().zip(&shape).map(|(s, &d)| py_slice(d, s.start, s.stop, s.step)).collect();
        let r1 = r.select(&lists);
        let r2 = r1.permute(&perm);
        let lists2: Vec<Vec<usize>> =
            after.iter().zip(&r2.shape).map(|(s, &d)| py_slice(d, s.start, s.stop, s.step)).collect();
        let want = r2.select(&lists2);

        let p: Vec<isize> = perm.iter().map(|&v| v as isize).collect();
        let a = kiln::slice(&r.array(), &before).unwrap();
        let a = a.permute(&p).unwrap();
        let a = kiln::slice(&a, &after).unwrap();
        prop_assert_eq!(a.shape(), &want.shape[..]);
        prop_assert_eq!(vals(&a), want.data.clone());
        let flat = a.reshape(&[-1]).unwrap();
        prop_assert_eq!(vals(&flat), want.data.clone());
        // Reshape to a split of the last axis where possible (view or copy).
        if let Some(&last) = want.shape.last() {
            if last % 2 == 0 && last > 0 {
                let mut spec: Vec<isize> = want.shape.iter().map(|&d| d as isize).collect();
                spec.pop();
                spec.extend([2, last as isize / 2]);
                prop_assert_eq!(vals(&a.reshape(&spec).unwrap()), want.data.clone());
            }
        }
        // Merge the two leading axes (a view when their strides chain).
        if want.shape.len() >= 2 {
            let mut spec: Vec<isize> = want.shape.iter().map(|&d| d as isize).collect();
            let d0 = spec.remove(0);
            spec[0] *= d0;
            prop_assert_eq!(vals(&a.reshape(&spec).unwrap()), want.data);
        }
    }
}
