//! `Display` of arrays. Expected strings are NumPy 2.x's `repr` of the same
//! data (array body from `np.array2string`), with kiln's one difference:
//! the dtype is always shown, placed by NumPy's own rule for trailing extras.

use kiln::{Array, DType};

fn f64s(v: &[f64], shape: &[usize], dt: DType) -> Array {
    Array::from_slice(v, shape).unwrap().astype(dt).unwrap()
}

fn check(a: &Array, want: &str) {
    assert_eq!(a.to_string(), want);
    assert_eq!(a.to_string_checked().unwrap(), want);
}

#[test]
fn int_matrix() {
    check(&Array::from_slice(&[1i32, 2, 3, 4], &[2, 2]).unwrap(), "array([[1, 2],\n       [3, 4]], dtype=int32)");
}

#[test]
fn float32_padding_and_integral_floats() {
    check(&Array::from_slice(&[1.0f32, 2.5, -3.0], &[3]).unwrap(), "array([ 1. ,  2.5, -3. ], dtype=float32)");
}

#[test]
fn zero_d() {
    check(&Array::scalar(1.5f32), "array(1.5, dtype=float32)");
    check(&Array::scalar(-7i64), "array(-7, dtype=int64)");
    check(&Array::scalar(false), "array(False, dtype=bool)");
}

#[test]
fn empty_arrays_show_their_shape() {
    check(&kiln::zeros(&[0, 3], DType::F32).unwrap(), "array([], shape=(0, 3), dtype=float32)");
    check(&kiln::zeros(&[0], DType::F32).unwrap(), "array([], dtype=float32)");
    check(&kiln::zeros(&[2, 3, 0], DType::I32).unwrap(), "array([], shape=(2, 3, 0), dtype=int32)");
}

#[test]
fn elides_2000_element_vector() {
    let a = Array::from_vec((0..2000).collect::<Vec<i32>>(), &[2000]).unwrap();
    check(&a, "array([   0,    1,    2, ..., 1997, 1998, 1999],\n      shape=(2000,), dtype=int32)");
}

#[test]
fn elides_50x50_matrix() {
    let a = Array::from_vec((0..2500).collect::<Vec<i32>>(), &[50, 50]).unwrap();
    check(
        &a,
        "array([[   0,    1,    2, ...,   47,   48,   49],\n       [  50,   51,   52, ...,   97,   98,   99],\n       \
         [ 100,  101,  102, ...,  147,  148,  149],\n       ...,\n       [2350, 2351, 2352, ..., 2397, 2398, 2399],\n       \
         [2400, 2401, 2402, ..., 2447, 2448, 2449],\n       [2450, 2451, 2452, ..., 2497, 2498, 2499]],\n      \
         shape=(50, 50), dtype=int32)",
    );
}

#[test]
fn elides_float_matrix_and_wraps_rows() {
    let a = Array::from_vec((0..2500).map(|i| i as f64 / 7.0).collect::<Vec<f64>>(), &[50, 50]).unwrap();
    check(
        &a,
        "array([[0.00000000e+00, 1.42857143e-01, 2.85714286e-01, ...,\n        6.71428571e+00, 6.85714286e+00, \
         7.00000000e+00],\n       [7.14285714e+00, 7.28571429e+00, 7.42857143e+00, ...,\n        1.38571429e+01, \
         1.40000000e+01, 1.41428571e+01],\n       [1.42857143e+01, 1.44285714e+01, 1.45714286e+01, ...,\n        \
         2.10000000e+01, 2.11428571e+01, 2.12857143e+01],\n       ...,\n       [3.35714286e+02, 3.35857143e+02, \
         3.36000000e+02, ...,\n        3.42428571e+02, 3.42571429e+02, 3.42714286e+02],\n       [3.42857143e+02, \
         3.43000000e+02, 3.43142857e+02, ...,\n        3.49571429e+02, 3.49714286e+02, 3.49857143e+02],\n       \
         [3.50000000e+02, 3.50142857e+02, 3.50285714e+02, ...,\n        3.56714286e+02, 3.56857143e+02, \
         3.57000000e+02]],\n      shape=(50, 50), dtype=float64)",
    );
}

#[test]
fn elides_only_long_axes() {
    let a = Array::from_vec((0..1200).collect::<Vec<i32>>(), &[2, 3, 200]).unwrap();
    check(
        &a,
        "array([[[   0,    1,    2, ...,  197,  198,  199],\n        [ 200,  201,  202, ...,  397,  398,  399],\n        \
         [ 400,  401,  402, ...,  597,  598,  599]],\n\n       [[ 600,  601,  602, ...,  797,  798,  799],\n        \
         [ 800,  801,  802, ...,  997,  998,  999],\n        [1000, 1001, 1002, ..., 1197, 1198, 1199]]],\n      \
         shape=(2, 3, 200), dtype=int32)",
    );
    let b = Array::from_vec((0..1001).map(|i| i as f32 * 0.5).collect::<Vec<f32>>(), &[1001]).unwrap();
    check(&b, "array([  0. ,   0.5,   1. , ..., 499. , 499.5, 500. ],\n      shape=(1001,), dtype=float32)");
}

#[test]
fn f16_uses_its_own_shortest_digits() {
    check(&f64s(&[0.1, 0.2, 0.3], &[3], DType::F16), "array([0.1, 0.2, 0.3], dtype=float16)");
    check(
        &f64s(&[1.5, -2.25, 1000.0, 0.001], &[4], DType::F16),
        "array([ 1.50e+00, -2.25e+00,  1.00e+03,  1.00e-03], dtype=float16)",
    );
    check(
        &f64s(&[65504.0, -0.5, 3.1406, 7.0], &[2, 2], DType::F16),
        "array([[ 6.55e+04, -5.00e-01],\n       [ 3.14e+00,  7.00e+00]], dtype=float16)",
    );
}

#[test]
fn bf16() {
    // bf16(0.1) = 0.10009765625; "0.1" is its shortest round-tripping form.
    check(&f64s(&[0.1, 1.0, -2.5], &[3], DType::BF16), "array([ 0.1,  1. , -2.5], dtype=bfloat16)");
}

#[test]
fn i64_and_u8() {
    check(
        &Array::from_slice(&[-5i64, 100, 123456789012], &[3]).unwrap(),
        "array([          -5,          100, 123456789012], dtype=int64)",
    );
    check(
        &Array::from_slice(&[0u8, 255, 7, 8], &[2, 2]).unwrap(),
        "array([[  0, 255],\n       [  7,   8]], dtype=uint8)",
    );
}

#[test]
fn bools() {
    check(&Array::from_slice(&[true, false], &[2]).unwrap(), "array([ True, False], dtype=bool)");
    check(
        &Array::from_slice(&[true; 4], &[2, 2]).unwrap(),
        "array([[ True,  True],\n       [ True,  True]], dtype=bool)",
    );
}

#[test]
fn non_finite() {
    let (nan, inf) = (f64::NAN, f64::INFINITY);
    check(&f64s(&[1.0, nan, -inf, inf], &[4], DType::F32), "array([  1.,  nan, -inf,  inf], dtype=float32)");
    check(&Array::from_slice(&[nan, inf], &[2]).unwrap(), "array([nan, inf], dtype=float64)");
    check(&f64s(&[-1.25e-7, 3.0, nan], &[3], DType::F32), "array([-1.25e-07,  3.00e+00,       nan], dtype=float32)");
}

#[test]
fn scientific_notation() {
    check(&Array::from_slice(&[1e-5, 1.5, 1e10], &[3]).unwrap(), "array([1.0e-05, 1.5e+00, 1.0e+10], dtype=float64)");
    check(&Array::from_slice(&[1e100, 1.0], &[2]).unwrap(), "array([1.e+100, 1.e+000], dtype=float64)");
    check(&Array::from_slice(&[1e8f32, 1.0], &[2]).unwrap(), "array([1.e+08, 1.e+00], dtype=float32)");
}

#[test]
fn precision_and_shortest_digits() {
    check(&Array::from_slice(&[0.1f32, 1.0 / 3.0], &[2]).unwrap(), "array([0.1       , 0.33333334], dtype=float32)");
    check(
        &Array::from_slice(&[1.0 / 3.0, 2.0 / 3.0, 10.0], &[3]).unwrap(),
        "array([ 0.33333333,  0.66666667, 10.        ], dtype=float64)",
    );
    check(&Array::from_slice(&[-0.0f32, 0.0, 2.0], &[3]).unwrap(), "array([-0.,  0.,  2.], dtype=float32)");
}

#[test]
fn wraps_long_rows() {
    check(
        &Array::from_vec((0..30).collect::<Vec<i64>>(), &[30]).unwrap(),
        "array([ 0,  1,  2,  3,  4,  5,  6,  7,  8,  9, 10, 11, 12, 13, 14, 15, 16,\n       \
         17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29], dtype=int64)",
    );
    let mut v: Vec<f64> = (0..20).map(|i| i as f64 * (1.0 / 19.0)).collect();
    v[19] = 1.0;
    check(
        &Array::from_vec(v, &[20]).unwrap(),
        "array([0.        , 0.05263158, 0.10526316, 0.15789474, 0.21052632,\n       \
         0.26315789, 0.31578947, 0.36842105, 0.42105263, 0.47368421,\n       \
         0.52631579, 0.57894737, 0.63157895, 0.68421053, 0.73684211,\n       \
         0.78947368, 0.84210526, 0.89473684, 0.94736842, 1.        ],\n      dtype=float64)",
    );
}

#[test]
fn three_d() {
    check(
        &Array::from_vec((0..24).collect::<Vec<i32>>(), &[2, 3, 4]).unwrap(),
        "array([[[ 0,  1,  2,  3],\n        [ 4,  5,  6,  7],\n        [ 8,  9, 10, 11]],\n\n       \
         [[12, 13, 14, 15],\n        [16, 17, 18, 19],\n        [20, 21, 22, 23]]], dtype=int32)",
    );
}

#[test]
fn strided_views_print_their_logical_order() {
    let a = Array::from_slice(&[1i32, 2, 3, 4, 5, 6], &[2, 3]).unwrap();
    check(&a.t().unwrap(), "array([[1, 4],\n       [2, 5],\n       [3, 6]], dtype=int32)");
    let r = kiln::slice_axis(&a, 1, None, None, -2).unwrap();
    check(&r, "array([[3, 1],\n       [6, 4]], dtype=int32)");
    let b = kiln::broadcast_to(&Array::from_slice(&[7i32, 8], &[2]).unwrap(), &[2, 2]).unwrap();
    check(&b, "array([[7, 8],\n       [7, 8]], dtype=int32)");
}

#[test]
fn evaluation_errors_are_printed_not_panicked() {
    let x = Array::from_slice(&[1.0f32, 2.0, 3.0], &[3]).unwrap();
    let bad = kiln::take(&x, &Array::from_slice(&[0i32, 5], &[2]).unwrap(), 0).unwrap();
    let err = bad.to_string_checked().unwrap_err().to_string();
    assert!(err.contains("take") && err.contains('5'), "{err}");
    let shown = format!("{bad}");
    assert_eq!(shown, format!("<error: {err}>"));
}
