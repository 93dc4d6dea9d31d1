//! Fuzz target (a): every op on random shapes (zero dims, huge dims, up to
//! 12 axes), dtypes, axes and parameters. Each case builds an input, applies
//! a chain of shape and view ops (views of views are where layout bugs hide)
//! or a creation op with extreme parameters, and checks kiln against the
//! model in [`crate::reference`]:
//!
//! - where the model says the op is invalid, kiln must return `Err`, and
//!   where it is valid, `Ok` with the model's shape;
//! - the values of every small result must equal the model's, read directly,
//!   through a copy, through an elementwise kernel, a reduction, a matrix
//!   product and a compiled function (so kernels read through the view);
//! - a huge result must evaluate to an `Err` (its size, or out of memory),
//!   never abort; sizes in between are not evaluated (they would only be
//!   slow).
//!
//! A violated expectation panics with the case's description; so does a bug
//! that panics inside kiln. The driver runs cases in child processes, so an
//! abort or a crash is counted as well.

use kiln::{DType, Error, SliceAxis};

use crate::bytes::Bytes;
use crate::reference::{self, numel, View, LIMIT};

/// kiln's dtypes.
pub const DTYPES: [DType; 9] =
    [DType::Bool, DType::U8, DType::U32, DType::I32, DType::I64, DType::F16, DType::BF16, DType::F32, DType::F64];

/// What the model expects of an op.
enum Want {
    /// Valid, with this result (None: the model cannot hold it).
    Ok(Option<View>),
    /// Invalid: kiln must return an error when the op is built.
    Err,
    /// The model does not decide (kiln may accept or refuse).
    Any,
}

/// Dimensions a fuzz case draws from: mostly small, sometimes huge.
fn dim(b: &mut Bytes) -> usize {
    match b.below(16) {
        0..=11 => b.pick(&[0usize, 1, 1, 2, 2, 3, 4, 5, 7]),
        12 => 1 << (16 + b.below(30)),
        13 => usize::MAX >> b.below(3),
        14 => (isize::MAX as usize) / (1 + b.below(8)),
        _ => 1 + b.below(64),
    }
}

/// Integers a fuzz case draws from for starts, stops, steps and indices.
fn int(b: &mut Bytes) -> isize {
    match b.below(12) {
        0..=6 => b.below(15) as isize - 7,
        7 => isize::MAX - b.below(3) as isize,
        8 => isize::MIN + b.below(3) as isize,
        9 => (isize::MAX / 2) * if b.chance(50) { 1 } else { -1 },
        10 => 1 << (20 + b.below(40)),
        _ => -(1 << (20 + b.below(40))),
    }
}

fn int_opt(b: &mut Bytes) -> Option<isize> {
    if b.chance(20) {
        None
    } else {
        Some(int(b))
    }
}

/// An axis argument: usually in range (either sign), sometimes not.
fn axis(b: &mut Bytes, ndim: usize) -> isize {
    let n = ndim as isize;
    if b.chance(10) || n == 0 {
        return b.below(7) as isize - 3 + n * if b.chance(50) { 1 } else { -1 };
    }
    let a = b.below(ndim) as isize;
    if b.chance(30) {
        a - n
    } else {
        a
    }
}

/// Normalizes an axis as numpy does.
fn norm_axis(a: isize, ndim: usize) -> Option<usize> {
    let n = ndim as i128;
    let a = a as i128;
    let a = if a < 0 { a + n } else { a };
    (0..n).contains(&a).then_some(a as usize)
}

/// The model's value of `v` stored as `dtype` (the inputs hold small
/// non-negative integers, exact in every dtype).
fn cast(v: f64, dtype: DType) -> f64 {
    if dtype == DType::Bool {
        (v != 0.0) as u8 as f64
    } else {
        v
    }
}

/// One fuzz case of target (a), decoded from `data`.
pub fn run(data: &[u8]) {
    let mut b = Bytes::new(data);
    if b.chance(15) {
        create(&mut b);
    } else {
        chain(&mut b);
    }
}

/// An input array: a small shape (or up to 12 axes, mostly of size 1) and
/// values `(a + i * s) % 101` of a random dtype.
fn input(b: &mut Bytes) -> (kiln::Array, View, String) {
    let nd = if b.chance(10) { 5 + b.below(8) } else { b.below(5) };
    let mut shape: Vec<usize> = (0..nd)
        .map(|_| if nd > 4 && b.chance(70) { 1 } else { b.pick(&[0usize, 1, 1, 2, 3, 3, 4, 5, 6, 8]) })
        .collect();
    while numel(&shape) > 4096 {
        let i = shape.iter().position(|&d| d > 1).expect("a dim above 1");
        shape[i] = 1;
    }
    let dtype = b.pick(&DTYPES);
    let (a, s) = (b.below(101) as u64, b.below(101) as u64);
    let n = numel(&shape) as usize;
    let vals: Vec<f64> = (0..n as u64).map(|i| ((a + i * s) % 101) as f64).collect();
    let x = kiln::Array::from_vec(vals.clone(), &shape)
        .and_then(|x| x.astype(dtype))
        .unwrap_or_else(|e| panic!("making a {shape:?} input failed: {e}"));
    let model = View::new(vals.into_iter().map(|v| cast(v, dtype)).collect(), &shape);
    (x, model, format!("input {dtype:?}{shape:?} a={a} s={s}"))
}

/// A chain of view and shape ops on one input, then the checks.
fn chain(b: &mut Bytes) {
    let (mut x, model, mut story) = input(b);
    let mut model = Some(model);
    let steps = 1 + b.below(6);
    for _ in 0..steps {
        let (r, want, what) = step(b, &x, model.as_ref());
        story.push_str(" -> ");
        story.push_str(&what);
        if std::env::var_os("KILN_FUZZ_TRACE").is_some() {
            eprintln!("{story}");
        }
        match (r, want) {
            (Ok(y), Want::Ok(m)) => {
                if let Some(m) = &m {
                    assert_eq!(y.shape(), &m.shape[..], "shape | {story}");
                }
                x = y;
                model = m;
            }
            (Ok(y), Want::Any) => {
                x = y;
                model = None;
            }
            (Err(_), Want::Err | Want::Any) => return,
            (Ok(y), Want::Err) => panic!("kiln accepted an invalid op (result shape {:?}) | {story}", y.shape()),
            (Err(e), Want::Ok(m)) => {
                // Only a result kiln cannot hold may be refused.
                let big = m.as_ref().is_none_or(|m| too_big(m.numel(), x.dtype()));
                assert!(big || is_size_error(&e), "kiln refused a valid op: {e} | {story}");
                return;
            }
        }
    }
    check(&x, model.as_ref(), &story);
}

/// Whether `n` elements of `dtype` exceed what an array may hold.
fn too_big(n: u128, dtype: DType) -> bool {
    n.saturating_mul(dtype.size() as u128) > isize::MAX as u128
}

/// The product of the nonzero dims of `shape` (what kiln bounds).
fn nonzero_numel(shape: &[usize]) -> u128 {
    shape.iter().filter(|&&d| d != 0).fold(1u128, |n, &d| n.saturating_mul(d as u128))
}

fn is_size_error(e: &Error) -> bool {
    let s = e.to_string().to_lowercase();
    s.contains("memory") || s.contains("overflow") || s.contains("too large") || s.contains("size")
}

/// Applies one random op to `x`: kiln's result, the model's expectation,
/// and a description.
fn step(b: &mut Bytes, x: &kiln::Array, m: Option<&View>) -> (kiln::Result<kiln::Array>, Want, String) {
    let nd = x.ndim();
    let shape = x.shape().to_vec();
    let n = numel(&shape);
    let known = |f: &dyn Fn(&View) -> Option<View>| Want::Ok(m.and_then(f));
    match b.below(17) {
        0 => {
            // reshape: the size in one or two axes, an inferred axis, or a guess
            let target: Vec<isize> = match b.below(5) {
                0 => vec![n.min(isize::MAX as u128) as isize],
                1 => vec![-1],
                2 => {
                    let d = b.pick(&[1usize, 2, 3, 4]);
                    if b.chance(50) {
                        vec![-1, d as isize]
                    } else {
                        vec![d as isize, -1]
                    }
                }
                3 => vec![1, n.min(isize::MAX as u128) as isize, 1],
                _ => (0..b.below(4))
                    .map(|_| dim(b).min(isize::MAX as usize) as isize * if b.chance(5) { -1 } else { 1 })
                    .collect(),
            };
            let want = reshape_rule(n, &target).map_or(Want::Err, |s| match s {
                Some(s) => known(&|m| m.reshape(&s)),
                None => Want::Any,
            });
            (x.reshape(&target), want, format!("reshape {target:?}"))
        }
        1 => (x.flatten(), known(&|m| m.reshape(&[numel(&m.shape) as usize])), "flatten".into()),
        2 => {
            if b.chance(40) {
                let keep: Vec<usize> = shape.iter().copied().filter(|&d| d != 1).collect();
                (kiln::squeeze(x, None), known(&|m| m.reshape(&keep)), "squeeze all".into())
            } else {
                let axes: Vec<isize> = (0..1 + b.below(2)).map(|_| axis(b, nd)).collect();
                let norm: Option<Vec<usize>> = axes.iter().map(|&a| norm_axis(a, nd)).collect();
                let want = match norm {
                    None => Want::Err,
                    Some(v) if has_dup(&v) => Want::Any,
                    Some(v) if v.iter().any(|&a| shape[a] != 1) => Want::Err,
                    Some(v) => {
                        let keep: Vec<usize> = (0..nd).filter(|i| !v.contains(i)).map(|i| shape[i]).collect();
                        known(&|m| m.reshape(&keep))
                    }
                };
                (kiln::squeeze(x, Some(&axes)), want, format!("squeeze {axes:?}"))
            }
        }
        3 => {
            let k = 1 + b.below(3);
            let axes: Vec<isize> = (0..k).map(|_| axis(b, nd + k)).collect();
            let norm: Option<Vec<usize>> = axes.iter().map(|&a| norm_axis(a, nd + k)).collect();
            let want = match norm {
                None => Want::Err,
                Some(v) if has_dup(&v) => Want::Any,
                Some(v) => {
                    let mut src = shape.iter();
                    let s: Vec<usize> =
                        (0..nd + k).map(|i| if v.contains(&i) { 1 } else { *src.next().unwrap() }).collect();
                    known(&|m| Some(View::new(m.values()?, &s)))
                }
            };
            (kiln::expand_dims(x, &axes), want, format!("expand_dims {axes:?}"))
        }
        4 => {
            let perm: Vec<usize> = (0..nd).rev().collect();
            (kiln::transpose(x), known(&|m| Some(m.permute(&perm))), "transpose".into())
        }
        5 => {
            let mut perm: Vec<isize> = (0..nd as isize).collect();
            for i in (1..nd).rev() {
                perm.swap(i, b.below(i + 1));
            }
            if b.chance(20) && !perm.is_empty() {
                let i = b.below(perm.len());
                perm[i] = axis(b, nd);
            } else if b.chance(10) {
                perm.push(axis(b, nd));
            }
            let norm: Option<Vec<usize>> = perm.iter().map(|&a| norm_axis(a, nd)).collect();
            let want = match norm {
                Some(p) if p.len() == nd && !has_dup(&p) => known(&|m| Some(m.permute(&p))),
                _ => Want::Err,
            };
            (x.permute(&perm), want, format!("permute {perm:?}"))
        }
        6 => {
            let (a1, a2) = (axis(b, nd), axis(b, nd));
            let want = match (norm_axis(a1, nd), norm_axis(a2, nd)) {
                (Some(p), Some(q)) => {
                    let mut perm: Vec<usize> = (0..nd).collect();
                    perm.swap(p, q);
                    known(&|m| Some(m.permute(&perm)))
                }
                _ => Want::Err,
            };
            (kiln::swapaxes(x, a1, a2), want, format!("swapaxes {a1} {a2}"))
        }
        7 => {
            let mut target: Vec<usize> = (0..b.below(3)).map(|_| dim(b)).collect();
            target.extend(shape.iter().map(|&d| if d == 1 && b.chance(50) { dim(b) } else { d }));
            if b.chance(10) && !target.is_empty() {
                let i = b.below(target.len());
                target[i] = dim(b);
            }
            let want = if broadcastable(&shape, &target) { known(&|m| Some(m.broadcast(&target))) } else { Want::Err };
            (x.broadcast_to(&target), want, format!("broadcast_to {target:?}"))
        }
        8 => {
            let (a, start, stop) = (axis(b, nd), int_opt(b), int_opt(b));
            let step = if b.chance(5) { 0 } else { int(b) };
            let want = match norm_axis(a, nd) {
                Some(ax) if step != 0 => {
                    let (s, len) = reference::slice_bounds(
                        shape[ax],
                        start.map(|v| v as i128),
                        stop.map(|v| v as i128),
                        step as i128,
                    );
                    known(&|m| Some(m.slice(ax, s, len, step as i128)))
                }
                _ => Want::Err,
            };
            (kiln::slice_axis(x, a, start, stop, step), want, format!("slice_axis {a} {start:?}:{stop:?}:{step}"))
        }
        9 => {
            let k = b.below(nd + 2);
            let axes: Vec<SliceAxis> = (0..k)
                .map(|_| SliceAxis { start: int_opt(b), stop: int_opt(b), step: if b.chance(3) { 0 } else { int(b) } })
                .collect();
            let want = if k > nd || axes.iter().any(|s| s.step == 0) {
                Want::Err
            } else {
                known(&|m| {
                    let mut v = m.clone();
                    for (ax, s) in axes.iter().enumerate() {
                        let (st, len) = reference::slice_bounds(
                            shape[ax],
                            s.start.map(|v| v as i128),
                            s.stop.map(|v| v as i128),
                            s.step as i128,
                        );
                        v = v.slice(ax, st, len, s.step as i128);
                    }
                    Some(v)
                })
            };
            (kiln::slice(x, &axes), want, format!("slice {axes:?}"))
        }
        10 => {
            let copies = 1 + b.below(3);
            let a = axis(b, nd);
            let xs = vec![x.clone(); copies];
            let want = match norm_axis(a, nd) {
                Some(ax) => known(&|m| reference::concatenate(&vec![m.clone(); copies], ax)),
                None => Want::Err,
            };
            (kiln::concatenate(&xs, a), want, format!("concatenate x{copies} axis {a}"))
        }
        11 => {
            let a = axis(b, nd + 1);
            let want = match norm_axis(a, nd + 1) {
                Some(ax) => known(&|m| {
                    let mut s = m.shape.clone();
                    s.insert(ax, 1);
                    let e = View::new(m.values()?, &s);
                    reference::concatenate(&[e.clone(), e], ax)
                }),
                None => Want::Err,
            };
            (kiln::stack(&[x.clone(), x.clone()], a), want, format!("stack x2 axis {a}"))
        }
        12 => {
            let (sections, a, piece) = (b.below(6), axis(b, nd), b.byte() as usize);
            let want = match norm_axis(a, nd) {
                Some(ax) if sections > 0 && shape[ax].is_multiple_of(sections) => {
                    let len = shape[ax] / sections;
                    let j = piece % sections;
                    known(&|m| Some(m.slice(ax, (j * len) as i128, len, 1)))
                }
                _ => Want::Err,
            };
            let r = kiln::split(x, sections, a).map(|v| v[piece % v.len().max(1)].clone());
            (r, want, format!("split {sections} axis {a} piece {piece}"))
        }
        13 => {
            let idx: Vec<usize> = (0..b.below(4)).map(|_| if b.chance(80) { b.below(8) } else { dim(b) }).collect();
            let (a, piece) = (axis(b, nd), b.byte() as usize);
            let want = match norm_axis(a, nd) {
                Some(ax) => {
                    let len = shape[ax];
                    let mut bounds = vec![0usize];
                    bounds.extend(idx.iter().map(|&i| i.min(len)));
                    bounds.push(len);
                    let j = piece % (bounds.len() - 1);
                    let (lo, hi) = (bounds[j], bounds[j + 1].max(bounds[j]));
                    known(&|m| Some(m.slice(ax, lo as i128, hi - lo, 1)))
                }
                None => Want::Err,
            };
            let r = kiln::split_at(x, &idx, a).map(|v| v[piece % v.len().max(1)].clone());
            (r, want, format!("split_at {idx:?} axis {a} piece {piece}"))
        }
        14 => {
            let a = axis(b, nd);
            let len = norm_axis(a, nd).map_or(1, |ax| shape[ax]) as isize;
            let k = b.below(5);
            let idx: Vec<i32> = (0..k)
                .map(|_| {
                    let i = if b.chance(85) { b.below(len.max(1) as usize * 2 + 1) as isize - len } else { int(b) };
                    i.clamp(i32::MIN as isize, i32::MAX as isize) as i32
                })
                .collect();
            let idx_shape = if k == 4 && b.chance(50) { vec![2, 2] } else { vec![k] };
            let ind = kiln::Array::from_vec(idx.clone(), &idx_shape).expect("indices");
            let want = match norm_axis(a, nd) {
                None => Want::Err,
                Some(ax) => {
                    let n = shape[ax] as i64;
                    let norm: Option<Vec<usize>> = idx
                        .iter()
                        .map(|&i| {
                            let i = if i < 0 { i as i64 + n } else { i as i64 };
                            (0..n).contains(&i).then_some(i as usize)
                        })
                        .collect();
                    match norm {
                        Some(v) => known(&|m| reference::take(m, &v, &idx_shape, ax)),
                        // Out of range: an error at evaluation.
                        None => Want::Any,
                    }
                }
            };
            (kiln::take(x, &ind, a), want, format!("take {idx:?} axis {a}"))
        }
        15 => (kiln::contiguous(x), known(&|m| m.materialize()), "contiguous".into()),
        _ => {
            let d = b.pick(&DTYPES);
            let values = |m: &View| -> Option<View> {
                Some(View::new(m.values()?.into_iter().map(|v| cast(v, d)).collect(), &m.shape))
            };
            (x.astype(d), known(&values), format!("astype {d:?}"))
        }
    }
}

fn has_dup(v: &[usize]) -> bool {
    v.iter().enumerate().any(|(i, a)| v[..i].contains(a))
}

/// numpy's broadcast_to rule.
fn broadcastable(from: &[usize], to: &[usize]) -> bool {
    to.len() >= from.len() && from.iter().rev().zip(to.iter().rev()).all(|(&f, &t)| f == t || f == 1)
}

/// The shape a reshape of `n` elements to `target` gives: `Err` when it is
/// invalid, `Ok(None)` when the model does not decide (an inferred axis
/// beside a zero-size one).
fn reshape_rule(n: u128, target: &[isize]) -> Result<Option<Vec<usize>>, ()> {
    let infer = target.iter().filter(|&&d| d == -1).count();
    if infer > 1 || target.iter().any(|&d| d < -1) {
        return Err(());
    }
    let known: u128 = target.iter().filter(|&&d| d >= 0).fold(1u128, |p, &d| p.saturating_mul(d as u128));
    if infer == 0 {
        return if known == n { Ok(Some(target.iter().map(|&d| d as usize).collect())) } else { Err(()) };
    }
    if known == 0 {
        return Ok(None);
    }
    if !n.is_multiple_of(known) {
        return Err(());
    }
    let rest = n / known;
    Ok(Some(target.iter().map(|&d| if d == -1 { rest as usize } else { d as usize }).collect()))
}

/// Evaluates `x` and compares it with the model `m` in several ways.
fn check(x: &kiln::Array, m: Option<&View>, story: &str) {
    let n = numel(x.shape());
    let bytes = n.saturating_mul(8);
    if bytes > (64 << 30) {
        // Larger than any memory here: evaluating must fail cleanly.
        if let Ok(v) = x.astype(DType::F64).and_then(|y| y.to_vec::<f64>()) {
            panic!("a {n}-element result evaluated to {} values | {story}", v.len());
        }
        return;
    }
    if n > LIMIT {
        return;
    }
    let got = match x.astype(DType::F64).and_then(|y| y.to_vec::<f64>()) {
        Ok(v) => v,
        // kiln bounds the product of the nonzero dims of every array, empty
        // ones too (so that every stride fits): an f64 copy may exceed it.
        Err(e) if is_size_error(&e) && too_big(nonzero_numel(x.shape()), DType::F64) => return,
        // A small result of a graph with a huge intermediate (a take from a
        // concatenation of broadcasts) may need more than the limit.
        Err(Error::OutOfMemory { .. }) => return,
        Err(e) => {
            // Out-of-range take indices are the one error at evaluation.
            assert!(m.is_none(), "evaluating a valid result failed: {e} | {story}");
            return;
        }
    };
    assert_eq!(got.len() as u128, n, "to_vec length | {story}");
    let Some(want) = m.and_then(View::values) else { return };
    assert_eq!(got, want, "values | {story}");
    let dtype = x.dtype();
    // The same values through a copy, an elementwise kernel, a compiled
    // function, a reduction and a matrix product.
    let read = |y: kiln::Result<kiln::Array>, what: &str| -> Vec<f64> {
        y.and_then(|y| y.astype(DType::F64))
            .and_then(|y| y.to_vec::<f64>())
            .unwrap_or_else(|e| panic!("{what} failed: {e} | {story}"))
    };
    assert_eq!(read(kiln::contiguous(x), "contiguous"), want, "contiguous | {story}");
    if dtype != DType::Bool {
        let doubled: Vec<f64> = want.iter().map(|v| v * 2.0).collect();
        assert_eq!(read(x + x, "x + x"), doubled, "x + x | {story}");
        let f = kiln::compile(|a: &kiln::Array| a + a);
        assert_eq!(read(f.call(x), "compiled x + x"), doubled, "compiled x + x | {story}");
    }
    let exact_sum = matches!(dtype, DType::I32 | DType::I64 | DType::F32 | DType::F64);
    if exact_sum {
        let total: f64 = want.iter().sum();
        assert_eq!(read(x.sum(kiln::Axes::All, false), "sum"), vec![total], "sum | {story}");
        if x.ndim() > 0 {
            let ax = x.ndim() - 1;
            // Summing an empty last axis makes zeros over the other axes,
            // which may be too many to hold.
            if numel(&x.shape()[..ax]) > LIMIT {
                return;
            }
            let got = read(x.sum(ax as isize, false), "row sum");
            let want_rows: Vec<f64> = match x.shape()[ax] {
                0 => vec![0.0; got.len()],
                len => want.chunks(len).map(|c| c.iter().sum()).collect(),
            };
            assert_eq!(got, want_rows, "row sums | {story}");
        }
    }
    if x.ndim() == 2 && matches!(dtype, DType::F32 | DType::F64) && x.shape().iter().all(|&d| d <= 64) {
        let (r, c) = (x.shape()[0], x.shape()[1]);
        let mut prod = vec![0.0; r * r];
        for i in 0..r {
            for j in 0..r {
                prod[i * r + j] = (0..c).map(|k| want[i * c + k] * want[j * c + k]).sum();
            }
        }
        assert_eq!(read(x.t().and_then(|t| x.matmul(&t)), "x @ x.T"), prod, "x @ x.T | {story}");
    }
}

/// The value a creation op should put at each index.
type Expected = Box<dyn Fn(usize) -> f64>;

/// A creation op with extreme parameters: `Err`, or the right values.
fn create(b: &mut Bytes) {
    let dtype = b.pick(&DTYPES);
    let shape: Vec<usize> = (0..b.below(4)).map(|_| dim(b)).collect();
    let n = numel(&shape);
    let story;
    let (r, want): (kiln::Result<kiln::Array>, Option<Expected>) = match b.below(7) {
        0 => {
            story = format!("zeros {dtype:?}{shape:?}");
            (kiln::zeros(&shape, dtype), Some(Box::new(|_| 0.0)))
        }
        1 => {
            let v = b.below(50) as f64;
            story = format!("full {dtype:?}{shape:?} {v}");
            (kiln::full(&shape, v, dtype), Some(Box::new(move |_| cast(v, dtype))))
        }
        2 => {
            let pick = |b: &mut Bytes| match b.below(6) {
                0 => b.below(20) as f64 - 10.0,
                1 => 1e13,
                2 => -1e300,
                3 => f64::NAN,
                4 => f64::INFINITY,
                _ => b.below(5) as f64 * 0.5,
            };
            let (start, stop, step) = (pick(b), pick(b), pick(b));
            story = format!("arange {start} {stop} {step} {dtype:?}");
            (kiln::arange(start, stop, step, dtype), None)
        }
        3 => {
            let num = dim(b);
            story = format!("linspace 0 1 {num} {dtype:?}");
            (kiln::linspace(0.0, 1.0, num, dtype), None)
        }
        4 => {
            let (r, c, k) = (dim(b), dim(b), int(b));
            story = format!("eye {r} {c} {k} {dtype:?}");
            (kiln::eye(r, c, k, dtype), None)
        }
        5 => {
            story = format!("normal {shape:?}");
            (kiln::random::normal(&shape, DType::F32, 0.0, 1.0, Some(&kiln::random::key(1))), None)
        }
        _ => {
            story = format!("randint {shape:?} {dtype:?}");
            (kiln::random::randint(0, 10, &shape, dtype, Some(&kiln::random::key(2))), None)
        }
    };
    let x = match r {
        Ok(x) => x,
        Err(_) => return,
    };
    let n = if matches!(story.split(' ').next(), Some("zeros" | "full" | "normal" | "randint")) {
        assert_eq!(x.shape(), &shape[..], "shape | {story}");
        n
    } else {
        numel(x.shape())
    };
    let bytes = n.saturating_mul(8);
    if bytes > (64 << 30) {
        if x.to_vec::<f64>().is_ok() || x.astype(DType::F64).and_then(|y| y.to_vec::<f64>()).is_ok() {
            panic!("a {n}-element result evaluated | {story}");
        }
        return;
    }
    if n > LIMIT {
        return;
    }
    match x.astype(DType::F64).and_then(|y| y.to_vec::<f64>()) {
        Ok(v) => {
            assert_eq!(v.len() as u128, n, "length | {story}");
            if let Some(f) = want {
                assert!(v.iter().enumerate().all(|(i, &g)| g == f(i)), "values | {story}");
            }
        }
        Err(e) if is_size_error(&e) && too_big(nonzero_numel(x.shape()), DType::F64) => {}
        Err(e) => panic!("evaluating a {n}-element result failed: {e} | {story}"),
    }
}
