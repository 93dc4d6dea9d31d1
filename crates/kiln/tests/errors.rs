//! Misuse returns an `Err` (never a panic) whose message names the op and
//! the offending shapes, axes or dtypes. Only build-time checks are used
//! here, so these tests do not depend on any kernel being implemented.

mod common;

use common::assert_err_contains;
use kiln::{Array, DType, Error, Result};

fn f32s(shape: &[usize]) -> Array {
    let n = shape.iter().product();
    Array::from_vec((0..n).map(|i| i as f32).collect(), shape).unwrap()
}

#[test]
fn incompatible_broadcast_names_op_and_both_shapes() {
    let a = f32s(&[3, 4]);
    let b = f32s(&[5]);
    let e = assert_err_contains(kiln::add(&a, &b), &["add", "(3, 4)", "(5)", "broadcast"]);
    assert_eq!(e, Error::Broadcast { op: "add", lhs: vec![3, 4], rhs: vec![5] });
    assert_err_contains(&a * &b, &["mul", "(3, 4)", "(5)"]);
    assert_err_contains(kiln::maximum(&b, &a), &["maximum", "(5)", "(3, 4)"]);
    assert_err_contains(kiln::less_equal(&a, f32s(&[2, 3, 2])), &["less_equal", "(3, 4)", "(2, 3, 2)"]);
    let cond = kiln::less(&b, 1.0).unwrap();
    assert_err_contains(kiln::where_(&cond, &a, 0.0), &["where", "(5)", "(3, 4)"]);
    assert_err_contains(kiln::broadcast_to(&a, &[2, 4]), &["broadcast_to", "(3, 4)", "(2, 4)"]);
    assert_err_contains(kiln::broadcast_to(&a, &[4]), &["broadcast_to", "(3, 4)", "(4)"]);
}

#[test]
fn matmul_inner_dims() {
    let a = kiln::zeros(&[32, 128], DType::F32).unwrap();
    let b = kiln::zeros(&[256, 128], DType::F32).unwrap();
    let e = assert_err_contains(kiln::matmul(&a, &b), &["matmul", "(32, 128)", "(256, 128)", "128", "256"]);
    assert!(matches!(e, Error::Shape { op: "matmul", .. }), "{e:?}");
    // Batch dims that do not broadcast.
    let a = kiln::zeros(&[2, 3, 4], DType::F32).unwrap();
    let b = kiln::zeros(&[5, 4, 6], DType::F32).unwrap();
    assert_err_contains(kiln::matmul(&a, &b), &["matmul", "(2)", "(5)"]);
    // 1-D operands: the message names the shapes as given.
    let v3 = kiln::zeros(&[3], DType::F32).unwrap();
    let v4 = kiln::zeros(&[4], DType::F32).unwrap();
    assert_err_contains(kiln::matmul(&v3, &v4), &["matmul", "(3)", "(4)"]);
    // 0-d operands.
    assert_err_contains(kiln::matmul(&Array::scalar(1.0f32), &b), &["matmul", "()", "(5, 4, 6)"]);
    // Bool operands.
    let t = kiln::zeros(&[2, 2], DType::Bool).unwrap();
    assert_err_contains(kiln::matmul(&t, &t), &["matmul", "bool"]);
}

#[test]
fn axis_out_of_range() {
    let x = f32s(&[2, 3]);
    let e = assert_err_contains(kiln::sum(&x, 2, false), &["sum", "axis 2", "2 dimension"]);
    assert_eq!(e, Error::Axis { op: "sum", axis: 2, ndim: 2 });
    assert_err_contains(kiln::sum(&x, -3, true), &["sum", "axis -3", "2 dimension"]);
    assert_err_contains(kiln::mean(&x, [0isize, 5], false), &["mean", "axis 5"]);
    assert_err_contains(kiln::max(&x, 7, false), &["max", "axis 7"]);
    assert_err_contains(kiln::argmax(&x, Some(2), false), &["argmax", "axis 2"]);
    assert_err_contains(kiln::softmax(&x, 5), &["softmax", "axis 5", "2 dimension"]);
    assert_err_contains(kiln::softmax(&x, -3), &["softmax", "axis -3"]);
    let e =
        assert_err_contains(kiln::concatenate(&[x.clone(), x.clone()], 2), &["concatenate", "axis 2", "2 dimension"]);
    assert_eq!(e, Error::Axis { op: "concatenate", axis: 2, ndim: 2 });
    assert_err_contains(kiln::concatenate(&[x.clone(), x.clone()], -3), &["concatenate", "axis -3"]);
    assert_err_contains(kiln::slice_axis(&x, 2, None, None, 1), &["slice", "axis 2"]);
    assert_err_contains(kiln::expand_dims(&x, &[4]), &["expand_dims", "axis 4"]);
    assert_err_contains(kiln::squeeze(&x, Some(&[3])), &["squeeze", "axis 3"]);
    assert_err_contains(kiln::swapaxes(&x, 0, 2), &["swapaxes", "axis 2"]);
    assert_err_contains(kiln::take(&x, &Array::from_slice(&[0i32], &[1]).unwrap(), 2), &["take", "axis 2"]);
    // Repeated axes.
    assert_err_contains(kiln::sum(&x, [0isize, -2], false), &["sum", "repeated"]);
}

#[test]
fn shape_mismatches() {
    let x = f32s(&[2, 3]);
    let e = assert_err_contains(x.reshape(&[4, 2]), &["reshape", "(2, 3)", "(4, 2)", "6", "8"]);
    assert!(matches!(e, Error::Shape { op: "reshape", .. }));
    assert_err_contains(x.reshape(&[4, -1]), &["reshape", "(2, 3)", "4, -1"]);
    assert_err_contains(x.reshape(&[-1, -1]), &["reshape", "-1"]);
    assert_err_contains(x.reshape(&[-2, -3]), &["reshape", "negative"]);
    let y = f32s(&[2, 4]);
    assert_err_contains(kiln::concatenate(&[x.clone(), y.clone()], 0), &["concatenate", "(2, 3)", "(2, 4)"]);
    assert_err_contains(kiln::stack(&[x.clone(), y.clone()], 0), &["stack", "(2, 3)", "(2, 4)"]);
    assert_err_contains(kiln::squeeze(&x, Some(&[0])), &["squeeze", "(2, 3)"]);
    assert_err_contains(kiln::split(&x, 2, 1), &["split", "(2, 3)", "2"]);
    assert_err_contains(x.permute(&[0, 0]), &["transpose"]);
    assert_err_contains(kiln::slice_axis(&x, 0, None, None, 0), &["slice", "step"]);
    assert_err_contains(kiln::max(&f32s(&[0, 3]), 0, false), &["max", "(0, 3)", "empty"]);
    assert_err_contains(kiln::argmin(&f32s(&[2, 0]), Some(1), false), &["argmin", "(2, 0)", "empty"]);
    assert_err_contains(kiln::concatenate(&[], 0), &["concatenate", "at least one"]);
}

#[test]
fn data_length_for_a_shape() {
    let e = assert_err_contains(Array::from_slice(&[1.0f32, 2.0, 3.0], &[2, 2]), &["from_slice", "(2, 2)", "4", "3"]);
    assert_eq!(e, Error::DataLength { expected: 4, got: 3, shape: vec![2, 2] });
    assert_err_contains(Array::from_vec(vec![1i32; 7], &[2, 3]), &["(2, 3)", "6", "7"]);
    assert_err_contains(Array::from_slice::<f64>(&[], &[1]), &["(1)", "1", "0"]);
    // A zero-size shape takes no data.
    assert!(Array::from_slice::<f32>(&[], &[3, 0]).is_ok());
    assert_err_contains(Array::from_slice(&[1u8], &[0]), &["(0)"]);
}

#[test]
fn element_count_overflow() {
    let big = [usize::MAX, 2];
    let e = kiln::zeros(&big, DType::F32).unwrap_err();
    assert!(matches!(&e, Error::Overflow { shape, .. } if shape == &big.to_vec()), "{e:?}");
    let m = e.to_string();
    assert!(m.contains("overflow") && m.contains(&format!("({}, 2)", usize::MAX)), "{m}");
    assert_err_contains(kiln::ones(&big, DType::I32), &["overflow"]);
    assert_err_contains(kiln::full(&[1 << 40, 1 << 40], 1.0, DType::F64), &["overflow", "full"]);
    assert_err_contains(Array::from_slice(&[1.0f32], &big), &["from_slice", "overflow"]);
    assert_err_contains(Array::scalar(1.0f32).broadcast_to(&big), &["broadcast_to", "overflow"]);
    assert_err_contains(f32s(&[4]).reshape(&[isize::MAX, 4]), &["reshape", "overflow"]);
    assert_err_contains(kiln::eye(usize::MAX, 2, 0, DType::F32), &["eye", "overflow"]);
    // Broadcasting two huge (but individually valid) shapes.
    let a = Array::scalar(1.0f32).broadcast_to(&[usize::MAX / 2, 1]);
    if let Ok(a) = a {
        let b = Array::scalar(1.0f32).broadcast_to(&[1, 4]).unwrap();
        assert_err_contains(kiln::add(&a, &b), &["add", "overflow"]);
    }
}

#[test]
fn unsupported_dtypes() {
    let i = Array::from_slice(&[1i32, 2], &[2]).unwrap();
    let e = assert_err_contains(kiln::erf(&i), &["erf", "i32", "astype"]);
    assert!(matches!(e, Error::DType { op: "erf", dtype: DType::I32, .. }));
    assert_err_contains(i.exp(), &["exp", "i32", "astype"]);
    assert_err_contains(kiln::sqrt(&Array::from_slice(&[4u8], &[1]).unwrap()), &["sqrt", "u8", "astype"]);
    assert_err_contains(kiln::atan2(&i, &i), &["atan2", "i32", "astype"]);
    let b = Array::from_slice(&[true, false], &[2]).unwrap();
    assert_err_contains(kiln::sub(&b, &b), &["sub", "bool"]);
    assert_err_contains(b.abs(), &["abs", "bool"]);
    assert_err_contains(kiln::take(&i, &Array::from_slice(&[0.5f32], &[1]).unwrap(), 0), &["take", "f32", "integer"]);
    assert_err_contains(kiln::linspace(0.0, 1.0, 5, DType::I32), &["linspace", "i32"]);
}

#[test]
fn reading_values_with_the_wrong_type() {
    let x = Array::from_slice(&[1.0f32, 2.0], &[2]).unwrap();
    let e = assert_err_contains(x.to_vec::<i32>(), &["to_vec", "f32", "i32", "astype"]);
    assert!(matches!(e, Error::DType { op: "to_vec", dtype: DType::F32, .. }));
    assert_err_contains(x.to_vec::<f64>(), &["to_vec", "f32", "f64"]);
    assert_err_contains(x.item::<f32>(), &["item", "(2)"]);
    assert_err_contains(f32s(&[2, 3]).item::<f32>(), &["item", "(2, 3)", "one element"]);
    assert_err_contains(f32s(&[0]).item::<f32>(), &["item", "(0)"]);
    // A size-1 array of the wrong element type names the dtypes, not the shape.
    assert_err_contains(Array::from_slice(&[1u8], &[1, 1]).unwrap().item::<i32>(), &["u8", "i32"]);
    assert_eq!(Array::from_slice(&[7u8], &[1, 1]).unwrap().item::<u8>().unwrap(), 7);
}

#[test]
fn invalid_parameters() {
    let x = f32s(&[3]);
    assert_err_contains(kiln::clip(&x, None::<f32>, None::<f32>), &["clip", "lo", "hi"]);
    assert_err_contains(kiln::arange(0.0, 1.0, 0.0, DType::F32), &["arange", "step"]);
    assert_err_contains(kiln::arange(0.0, f64::INFINITY, 1.0, DType::F32), &["arange", "finite"]);
    assert_err_contains(kiln::split(&x, 0, 0), &["split"]);
}

/// Results are returned, never panics: run a batch of misuses inside
/// `catch_unwind` to make a panic a distinct failure.
#[test]
fn misuse_never_panics() {
    let r = std::panic::catch_unwind(|| {
        let x = f32s(&[2, 3]);
        let i = Array::from_slice(&[1i32], &[1]).unwrap();
        let outcomes: Vec<Result<Array>> = vec![
            kiln::add(&x, f32s(&[4])),
            kiln::matmul(&x, &x),
            kiln::sum(&x, 9, false),
            x.reshape(&[7]),
            kiln::erf(&i),
            kiln::zeros(&[usize::MAX, usize::MAX], DType::F32),
            kiln::concatenate(&[x.clone(), i.clone()], 0),
            kiln::slice_axis(&x, -9, None, None, 1),
            x.permute(&[5, 0]),
        ];
        outcomes.iter().filter(|o| o.is_err()).count()
    });
    assert_eq!(r.expect("no misuse may panic"), 9);
}
