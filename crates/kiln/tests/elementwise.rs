//! Elementwise ops against f64 / i128 references computed here: every unary
//! and binary op, `where_` and `clip`, for every dtype where the op is
//! defined, on contiguous, transposed, negatively-strided and broadcast
//! operands, on empty arrays, on NaN / ±Inf / -0.0, and on arrays large
//! enough to take the parallel path.

mod common;

use common::*;
use half::{bf16, f16};
use kiln::{Array, DType, Error, Result};

type UFn = fn(&Array) -> Result<Array>;
type BFn = fn(&Array, &Array) -> Result<Array>;
/// A named op `F` with its reference `R`.
type Named<F, R> = (&'static str, F, R);
type FPred = fn(f64) -> bool;
type IRef = fn(i128) -> i128;
type IPred = fn(i128) -> bool;
type FPred2 = fn(f64, f64) -> bool;
type IRef2 = fn(i128, i128) -> i128;
type IPred2 = fn(i128, i128) -> bool;

/// A float unary op with its reference and an input domain.
struct FloatUnary {
    name: &'static str,
    f: UFn,
    r: fn(f64) -> f64,
    lo: f64,
    hi: f64,
}

fn float_unary_ops() -> Vec<FloatUnary> {
    fn u(name: &'static str, f: UFn, r: fn(f64) -> f64, lo: f64, hi: f64) -> FloatUnary {
        FloatUnary { name, f, r, lo, hi }
    }
    vec![
        u("neg", kiln::neg, |x| -x, -10.0, 10.0),
        u("abs", kiln::abs, f64::abs, -10.0, 10.0),
        u("sign", kiln::sign, sign_ref, -3.0, 3.0),
        u("sqrt", kiln::sqrt, f64::sqrt, 0.0, 100.0),
        u("rsqrt", kiln::rsqrt, |x| 1.0 / x.sqrt(), 0.01, 100.0),
        u("square", kiln::square, |x| x * x, -10.0, 10.0),
        u("reciprocal", kiln::reciprocal, |x| 1.0 / x, -10.0, 10.0),
        u("exp", kiln::exp, f64::exp, -10.0, 10.0),
        u("expm1", kiln::expm1, f64::exp_m1, -5.0, 5.0),
        u("log", kiln::log, f64::ln, 0.01, 100.0),
        u("log1p", kiln::log1p, f64::ln_1p, -0.9, 10.0),
        u("log2", kiln::log2, f64::log2, 0.01, 100.0),
        u("log10", kiln::log10, f64::log10, 0.01, 100.0),
        u("sin", kiln::sin, f64::sin, -10.0, 10.0),
        u("cos", kiln::cos, f64::cos, -10.0, 10.0),
        u("tan", kiln::tan, f64::tan, -1.5, 1.5),
        u("tanh", kiln::tanh, f64::tanh, -5.0, 5.0),
        u("sigmoid", kiln::sigmoid, sigmoid_ref, -20.0, 20.0),
        u("erf", kiln::erf, erf_ref, -4.5, 4.5),
        u("floor", kiln::floor, f64::floor, -10.0, 10.0),
        u("ceil", kiln::ceil, f64::ceil, -10.0, 10.0),
        u("round", kiln::round, round_half_even, -10.0, 10.0),
    ]
}

fn float_predicates() -> Vec<Named<UFn, FPred>> {
    vec![
        ("logical_not", kiln::logical_not as UFn, (|x| x == 0.0) as FPred),
        ("isnan", kiln::isnan, |x| x.is_nan()),
        ("isinf", kiln::isinf, |x| x.is_infinite()),
        ("isfinite", kiln::isfinite, |x| x.is_finite()),
    ]
}

const SPECIAL: [f64; 13] =
    [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, -0.0, 0.0, 1.0, -1.0, 0.5, -0.5, 2.5, -2.5, 1e-30, 3.0];

fn check_float_unary<T: TestFloat>(r: usize, c: usize, views: &[View], seed: u64) -> Result<()> {
    let mut rng = Rng::new(seed);
    for op in float_unary_ops() {
        for &view in views {
            let vals: Vec<T> = rng.floats(r * c, op.lo, op.hi).into_iter().map(T::of).collect();
            let (a, logical) = make_view(view, &vals, r, c, T::of(-7.0))?;
            let y = (op.f)(&a)?;
            assert_eq!(y.shape(), &[r, c], "{} shape", op.name);
            let want: Vec<f64> = logical.iter().map(|v| (op.r)(v.f())).collect();
            let ctx = format!("{} on {view:?} {r}x{c}", op.name);
            assert_close::<T>(&y, &want, false, &ctx, &|i| format!("{:?}", logical[i]));
        }
    }
    for (name, f, p) in float_predicates() {
        for &view in views {
            let vals: Vec<T> = (0..r * c).map(|_| T::of(rng.pick(&SPECIAL))).collect();
            let (a, logical) = make_view(view, &vals, r, c, T::of(-7.0))?;
            let y = f(&a)?;
            assert_eq!(y.dtype(), DType::Bool, "{name}");
            let want: Vec<bool> = logical.iter().map(|v| p(v.f())).collect();
            assert_eq!(y.to_vec::<bool>()?, want, "{name} on {view:?} [{}] of {logical:?}", T::DT);
        }
    }
    Ok(())
}

#[test]
fn unary_f32_all_views() -> Result<()> {
    check_float_unary::<f32>(7, 9, &VIEWS, 1)
}

#[test]
fn unary_f64_all_views() -> Result<()> {
    check_float_unary::<f64>(7, 9, &VIEWS, 2)
}

#[test]
fn unary_f16_all_views() -> Result<()> {
    check_float_unary::<f16>(7, 9, &VIEWS, 3)
}

#[test]
fn unary_bf16_all_views() -> Result<()> {
    check_float_unary::<bf16>(7, 9, &VIEWS, 4)
}

#[test]
fn unary_large_arrays_take_the_parallel_path() -> Result<()> {
    // 300 x 401 = 120300 elements, above the parallel threshold.
    let views = [View::Contiguous, View::Transposed, View::Reversed, View::BroadcastCol];
    check_float_unary::<f32>(300, 401, &views, 5)?;
    check_float_unary::<f16>(300, 401, &[View::Transposed], 6)
}

fn check_unary_special<T: TestFloat>() -> Result<()> {
    let vals: Vec<T> = SPECIAL.iter().map(|&v| T::of(v)).collect();
    let a = Array::from_slice(&vals, &[vals.len()])?;
    for op in float_unary_ops() {
        let y = (op.f)(&a)?;
        let want: Vec<f64> = vals.iter().map(|v| (op.r)(v.f())).collect();
        assert_close::<T>(&y, &want, true, &format!("{} on special values", op.name), &|i| format!("{:?}", vals[i]));
    }
    Ok(())
}

#[test]
fn unary_special_values_nan_inf_signed_zero() -> Result<()> {
    check_unary_special::<f32>()?;
    check_unary_special::<f64>()?;
    check_unary_special::<f16>()?;
    check_unary_special::<bf16>()
}

#[test]
fn round_is_half_to_even() -> Result<()> {
    let x = Array::from_slice(&[0.5f32, 1.5, 2.5, -0.5, -1.5, -2.5, 3.5, 0.49999997, 2.5000002], &[9])?;
    let y = x.round()?.to_vec::<f32>()?;
    assert_eq!(y, vec![0.0, 2.0, 2.0, -0.0, -2.0, -2.0, 4.0, 0.0, 3.0]);
    assert!(y[3].is_sign_negative(), "round(-0.5) is -0.0");
    let h = Array::from_slice(&[f16::from_f32(2.5), f16::from_f32(-3.5)], &[2])?.round()?;
    assert_eq!(h.to_vec::<f16>()?, vec![f16::from_f32(2.0), f16::from_f32(-4.0)]);
    Ok(())
}

// ---------------------------------------------------------------- integer and bool unary

fn int_pool<T: TestInt>(rng: &mut Rng, n: usize) -> Vec<T> {
    let edges = [T::LO, T::LO + 1, -1, 0, 1, 2, 7, T::HI - 1, T::HI];
    (0..n)
        .map(|_| {
            if rng.next_u64().is_multiple_of(3) {
                let e = rng.pick(&edges);
                T::wrap(e.clamp(T::LO, T::HI))
            } else if rng.next_u64().is_multiple_of(2) {
                T::wrap(rng.int(-100, 100) as i128)
            } else {
                T::wrap(rng.int(T::LO as i64, T::HI.min(i64::MAX as i128) as i64) as i128)
            }
        })
        .collect()
}

fn check_int_unary<T: TestInt>(seed: u64) -> Result<()> {
    let mut rng = Rng::new(seed);
    let ops: Vec<Named<UFn, IRef>> = vec![
        ("neg", kiln::neg, |x| -x),
        ("abs", kiln::abs, |x| x.abs()),
        ("sign", kiln::sign, |x| x.signum()),
        ("square", kiln::square, |x| x * x),
        ("floor", kiln::floor, |x| x),
        ("ceil", kiln::ceil, |x| x),
        ("round", kiln::round, |x| x),
    ];
    let (r, c) = (6, 11);
    for (name, f, reference) in ops {
        for view in VIEWS {
            let vals = int_pool::<T>(&mut rng, r * c);
            let (a, logical) = make_view(view, &vals, r, c, T::wrap(99))?;
            let y = f(&a)?;
            assert_eq!(y.dtype(), T::DT, "{name} keeps the integer dtype");
            let want: Vec<T> = logical.iter().map(|v| T::wrap(reference(v.i()))).collect();
            assert_eq!(y.to_vec::<T>()?, want, "{name} on {view:?} [{}] of {logical:?}", T::DT);
        }
    }
    let preds: Vec<Named<UFn, IPred>> = vec![
        ("logical_not", kiln::logical_not, |x| x == 0),
        ("isnan", kiln::isnan, |_| false),
        ("isinf", kiln::isinf, |_| false),
        ("isfinite", kiln::isfinite, |_| true),
    ];
    for (name, f, p) in preds {
        let vals = int_pool::<T>(&mut rng, r * c);
        let (a, logical) = make_view(View::Reversed, &vals, r, c, T::wrap(0))?;
        let want: Vec<bool> = logical.iter().map(|v| p(v.i())).collect();
        assert_eq!(f(&a)?.to_vec::<bool>()?, want, "{name} [{}]", T::DT);
    }
    Ok(())
}

#[test]
fn unary_integers_wrap_and_keep_dtype() -> Result<()> {
    check_int_unary::<u8>(11)?;
    check_int_unary::<u32>(12)?;
    check_int_unary::<i32>(13)?;
    check_int_unary::<i64>(14)?;
    // The documented wrapping edge cases, spelled out.
    let x = Array::from_slice(&[i32::MIN, i32::MAX, -5], &[3])?;
    assert_eq!(x.abs()?.to_vec::<i32>()?, vec![i32::MIN, i32::MAX, 5]);
    assert_eq!(x.neg()?.to_vec::<i32>()?, vec![i32::MIN, -i32::MAX, 5]);
    let u = Array::from_slice(&[0u8, 1, 200], &[3])?;
    assert_eq!(u.neg()?.to_vec::<u8>()?, vec![0, 255, 56]);
    assert_eq!(u.sign()?.to_vec::<u8>()?, vec![0, 1, 1]);
    Ok(())
}

#[test]
fn unary_bool() -> Result<()> {
    let vals = [true, false, false, true, true, false];
    for view in VIEWS {
        let (a, logical) = make_view(view, &vals, 2, 3, false)?;
        let not: Vec<bool> = logical.iter().map(|v| !v).collect();
        assert_eq!(a.logical_not()?.to_vec::<bool>()?, not, "{view:?}");
        assert_eq!(a.isnan()?.to_vec::<bool>()?, vec![false; 6]);
        assert_eq!(a.isinf()?.to_vec::<bool>()?, vec![false; 6]);
        assert_eq!(a.isfinite()?.to_vec::<bool>()?, vec![true; 6]);
    }
    let a = Array::from_slice(&vals, &[6])?;
    for (name, f) in [
        ("neg", kiln::neg as UFn),
        ("abs", kiln::abs),
        ("sign", kiln::sign),
        ("square", kiln::square),
        ("floor", kiln::floor),
        ("ceil", kiln::ceil),
        ("round", kiln::round),
    ] {
        let e = assert_err_contains(f(&a), &[name, "bool", "astype"]);
        assert!(matches!(e, Error::DType { op, dtype: DType::Bool, .. } if op == name), "{e:?}");
    }
    Ok(())
}

#[test]
fn float_only_unary_ops_reject_integers_with_a_fix() -> Result<()> {
    for dt in [DType::Bool, DType::U8, DType::U32, DType::I32, DType::I64] {
        let x = kiln::zeros(&[2, 3], dt)?;
        for op in float_unary_ops() {
            let is_float_only = !matches!(op.name, "neg" | "abs" | "sign" | "square" | "floor" | "ceil" | "round");
            if !is_float_only {
                continue;
            }
            let e = assert_err_contains((op.f)(&x), &[op.name, dt.name(), "astype"]);
            assert!(matches!(e, Error::DType { op: o, dtype, .. } if o == op.name && dtype == dt), "{e:?}");
        }
    }
    let e = kiln::erf(&Array::from_slice(&[1i32, 2], &[2])?).unwrap_err();
    assert_eq!(
        e.to_string(),
        "erf: dtype i32 is not supported: erf needs a float array; convert first with .astype(DType::F32)"
    );
    Ok(())
}

// ---------------------------------------------------------------- float binary

struct FloatBinary {
    name: &'static str,
    f: BFn,
    r: fn(f64, f64) -> f64,
    a: (f64, f64),
    b: (f64, f64),
    /// Compare the sign of zero results too.
    signed_zero: bool,
}

fn float_binary_ops() -> Vec<FloatBinary> {
    fn b(name: &'static str, f: BFn, r: fn(f64, f64) -> f64, a: (f64, f64), b: (f64, f64), s: bool) -> FloatBinary {
        FloatBinary { name, f, r, a, b, signed_zero: s }
    }
    let w = (-10.0, 10.0);
    vec![
        b("add", |x, y| kiln::add(x, y), |x, y| x + y, w, w, true),
        b("sub", |x, y| kiln::sub(x, y), |x, y| x - y, w, w, true),
        b("mul", |x, y| kiln::mul(x, y), |x, y| x * y, w, w, true),
        b("div", |x, y| kiln::div(x, y), |x, y| x / y, w, w, true),
        b("floor_divide", |x, y| kiln::floor_divide(x, y), floor_div_ref, w, (-3.0, 3.0), true),
        b("remainder", |x, y| kiln::remainder(x, y), rem_ref, w, (-3.0, 3.0), true),
        b("pow", |x, y| kiln::pow(x, y), f64::powf, (0.0, 4.0), (-3.0, 3.0), true),
        b("maximum", |x, y| kiln::maximum(x, y), max_ref, w, w, false),
        b("minimum", |x, y| kiln::minimum(x, y), min_ref, w, w, false),
        b("atan2", |x, y| kiln::atan2(x, y), f64::atan2, w, w, true),
    ]
}

fn max_ref(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else if a > b {
        a
    } else {
        b
    }
}

fn min_ref(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else if a < b {
        a
    } else {
        b
    }
}

fn float_binary_predicates() -> Vec<Named<BFn, FPred2>> {
    vec![
        ("equal", |x, y| kiln::equal(x, y), |a, b| a == b),
        ("not_equal", |x, y| kiln::not_equal(x, y), |a, b| a != b),
        ("less", |x, y| kiln::less(x, y), |a, b| a < b),
        ("less_equal", |x, y| kiln::less_equal(x, y), |a, b| a <= b),
        ("greater", |x, y| kiln::greater(x, y), |a, b| a > b),
        ("greater_equal", |x, y| kiln::greater_equal(x, y), |a, b| a >= b),
        ("logical_and", |x, y| kiln::logical_and(x, y), |a, b| a != 0.0 && b != 0.0),
        ("logical_or", |x, y| kiln::logical_or(x, y), |a, b| a != 0.0 || b != 0.0),
    ]
}

/// Shapes of the right operand broadcast against a left operand of (r, c).
fn rhs_shapes(r: usize, c: usize) -> Vec<Vec<usize>> {
    vec![vec![c], vec![r, 1], vec![1, c], vec![], vec![1, 1, c]]
}

fn check_float_binary<T: TestFloat>(r: usize, c: usize, views: &[View], seed: u64) -> Result<()> {
    let mut rng = Rng::new(seed);
    let fill = T::of(-7.0);
    for op in float_binary_ops() {
        for &va in views {
            for &vb in views {
                let xa: Vec<T> = rng.floats(r * c, op.a.0, op.a.1).into_iter().map(T::of).collect();
                let xb: Vec<T> = rng.floats(r * c, op.b.0, op.b.1).into_iter().map(T::of).collect();
                let (a, la) = make_view(va, &xa, r, c, fill)?;
                let (b, lb) = make_view(vb, &xb, r, c, fill)?;
                let y = (op.f)(&a, &b)?;
                assert_eq!(y.shape(), &[r, c]);
                let want: Vec<f64> = la.iter().zip(&lb).map(|(x, y)| (op.r)(x.f(), y.f())).collect();
                let ctx = format!("{} on {va:?} x {vb:?} {r}x{c}", op.name);
                assert_close::<T>(&y, &want, false, &ctx, &|i| format!("({:?}, {:?})", la[i], lb[i]));
            }
        }
        // Broadcasting against lower-rank and size-1 shapes, both orders.
        for bs in rhs_shapes(r, c) {
            let nb: usize = bs.iter().product();
            let xa: Vec<T> = rng.floats(r * c, op.a.0, op.a.1).into_iter().map(T::of).collect();
            let xb: Vec<T> = rng.floats(nb, op.b.0, op.b.1).into_iter().map(T::of).collect();
            let a = Array::from_slice(&xa, &[r, c])?;
            let b = Array::from_slice(&xb, &bs)?;
            let out = broadcast_shape_ref(&[r, c], &bs).expect("compatible");
            let (ra, rb) = (broadcast_ref(&xa, &[r, c], &out), broadcast_ref(&xb, &bs, &out));
            let want: Vec<f64> = ra.iter().zip(&rb).map(|(x, y)| (op.r)(x.f(), y.f())).collect();
            let ctx = format!("{} on ({r}, {c}) with {bs:?}", op.name);
            let y = (op.f)(&a, &b)?;
            assert_eq!(y.shape(), &out[..]);
            assert_close::<T>(&y, &want, false, &ctx, &|i| format!("({:?}, {:?})", ra[i], rb[i]));
            // Operand order swapped: the broadcast operand on the left.
            let y = (op.f)(&b, &a)?;
            let want: Vec<f64> = rb.iter().zip(&ra).map(|(x, y)| (op.r)(x.f(), y.f())).collect();
            assert_close::<T>(&y, &want, false, &format!("{ctx} swapped"), &|i| format!("({:?}, {:?})", rb[i], ra[i]));
        }
    }
    let small = [-1.5, -1.0, -0.0, 0.0, 0.5, 1.0, 1.5, 2.0];
    for (name, f, p) in float_binary_predicates() {
        for &va in views {
            for &vb in views {
                let xa: Vec<T> = (0..r * c).map(|_| T::of(rng.pick(&small))).collect();
                let xb: Vec<T> = (0..r * c).map(|_| T::of(rng.pick(&small))).collect();
                let (a, la) = make_view(va, &xa, r, c, fill)?;
                let (b, lb) = make_view(vb, &xb, r, c, fill)?;
                let y = f(&a, &b)?;
                assert_eq!(y.dtype(), DType::Bool);
                let want: Vec<bool> = la.iter().zip(&lb).map(|(x, y)| p(x.f(), y.f())).collect();
                assert_eq!(y.to_vec::<bool>()?, want, "{name} on {va:?} x {vb:?} [{}]", T::DT);
            }
        }
    }
    Ok(())
}

#[test]
fn binary_f32_all_view_pairs() -> Result<()> {
    check_float_binary::<f32>(5, 7, &VIEWS, 21)
}

#[test]
fn binary_f64_all_view_pairs() -> Result<()> {
    check_float_binary::<f64>(5, 7, &VIEWS, 22)
}

#[test]
fn binary_f16_all_view_pairs() -> Result<()> {
    check_float_binary::<f16>(5, 7, &VIEWS, 23)
}

#[test]
fn binary_bf16_all_view_pairs() -> Result<()> {
    check_float_binary::<bf16>(5, 7, &VIEWS, 24)
}

#[test]
fn binary_large_arrays_take_the_parallel_path() -> Result<()> {
    let views = [View::Contiguous, View::Transposed, View::BroadcastRow];
    check_float_binary::<f32>(300, 401, &views, 25)
}

fn check_binary_special<T: TestFloat>() -> Result<()> {
    let n = SPECIAL.len();
    let xa: Vec<T> = (0..n * n).map(|i| T::of(SPECIAL[i / n])).collect();
    let xb: Vec<T> = (0..n * n).map(|i| T::of(SPECIAL[i % n])).collect();
    let a = Array::from_slice(&xa, &[n * n])?;
    let b = Array::from_slice(&xb, &[n * n])?;
    for op in float_binary_ops() {
        let want: Vec<f64> = xa.iter().zip(&xb).map(|(x, y)| (op.r)(x.f(), y.f())).collect();
        let ctx = format!("{} on special values", op.name);
        assert_close::<T>(&(op.f)(&a, &b)?, &want, op.signed_zero, &ctx, &|i| format!("({:?}, {:?})", xa[i], xb[i]));
    }
    for (name, f, p) in float_binary_predicates() {
        let want: Vec<bool> = xa.iter().zip(&xb).map(|(x, y)| p(x.f(), y.f())).collect();
        let got = f(&a, &b)?.to_vec::<bool>()?;
        for i in 0..got.len() {
            assert_eq!(got[i], want[i], "{name}({:?}, {:?}) [{}]", xa[i], xb[i], T::DT);
        }
    }
    Ok(())
}

#[test]
fn binary_special_values_nan_inf_signed_zero() -> Result<()> {
    check_binary_special::<f32>()?;
    check_binary_special::<f64>()?;
    check_binary_special::<f16>()?;
    check_binary_special::<bf16>()
}

#[test]
fn maximum_minimum_propagate_nan_and_comparisons_with_nan_are_false() -> Result<()> {
    let nan = f32::NAN;
    let a = Array::from_slice(&[nan, 1.0, nan, f32::INFINITY], &[4])?;
    let b = Array::from_slice(&[1.0f32, nan, nan, nan], &[4])?;
    for y in [kiln::maximum(&a, &b)?, kiln::minimum(&a, &b)?, kiln::maximum(&b, &a)?, kiln::minimum(&b, &a)?] {
        assert!(y.to_vec::<f32>()?.iter().all(|v| v.is_nan()), "NaN must propagate");
    }
    assert_eq!(kiln::equal(&a, &b)?.to_vec::<bool>()?, vec![false; 4]);
    assert_eq!(kiln::less(&a, &b)?.to_vec::<bool>()?, vec![false; 4]);
    assert_eq!(kiln::greater_equal(&a, &b)?.to_vec::<bool>()?, vec![false; 4]);
    assert_eq!(kiln::not_equal(&a, &b)?.to_vec::<bool>()?, vec![true; 4]);
    assert_eq!(kiln::equal(&a, &a)?.to_vec::<bool>()?, vec![false, true, false, true]);
    // -0.0 == 0.0
    let z = Array::from_slice(&[-0.0f32], &[1])?;
    assert_eq!(kiln::equal(&z, 0.0)?.to_vec::<bool>()?, vec![true]);
    assert_eq!(kiln::less(&z, 0.0)?.to_vec::<bool>()?, vec![false]);
    Ok(())
}

#[test]
fn float_floor_divide_and_remainder_follow_python() -> Result<()> {
    // 0.1f32 is slightly above 0.1, so 1 // 0.1 is 9 (Python and NumPy), not 10.
    let a = Array::from_slice(&[1.0f32, -1.0, 7.5, -7.5, 7.5, -7.5], &[6])?;
    let b = Array::from_slice(&[0.1f32, 0.1, 2.0, 2.0, -2.0, -2.0], &[6])?;
    assert_eq!(kiln::floor_divide(&a, &b)?.to_vec::<f32>()?, vec![9.0, -10.0, 3.0, -4.0, -4.0, 3.0]);
    let r = kiln::remainder(&a, &b)?.to_vec::<f32>()?;
    let want = [1.0 - 9.0 * 0.1f64 as f32 as f64, 0.1f32 as f64 * 10.0 - 1.0, 1.5, 0.5, -0.5, -1.5];
    for (g, w) in r.iter().zip(want) {
        assert!((*g as f64 - w).abs() < 1e-6, "remainder {r:?} vs {want:?}");
    }
    // a == b * (a // b) + a % b, and the remainder takes the divisor's sign.
    let mut rng = Rng::new(77);
    let xa: Vec<f64> = (0..2000).map(|_| rng.uniform(-1e3, 1e3)).collect();
    let xb: Vec<f64> = (0..2000).map(|_| rng.uniform(-5.0, 5.0)).collect();
    let (a, b) = (Array::from_slice(&xa, &[2000])?, Array::from_slice(&xb, &[2000])?);
    let q = kiln::floor_divide(&a, &b)?.to_vec::<f64>()?;
    let m = kiln::remainder(&a, &b)?.to_vec::<f64>()?;
    for i in 0..2000 {
        assert_eq!(q[i], floor_div_ref(xa[i], xb[i]), "floor_divide({}, {})", xa[i], xb[i]);
        assert!(m[i] == 0.0 || (m[i] < 0.0) == (xb[i] < 0.0), "remainder sign ({}, {})", xa[i], xb[i]);
        assert!(m[i].abs() < xb[i].abs());
        assert!((q[i] * xb[i] + m[i] - xa[i]).abs() <= 1e-12 * xa[i].abs().max(1.0));
    }
    Ok(())
}

// ---------------------------------------------------------------- integer and bool binary

fn wrapping_pow<T: TestInt>(a: T, e: T) -> T {
    let (base, e) = (a.i(), e.i());
    if e < 0 {
        return T::wrap(match base {
            1 => 1,
            -1 => {
                if e % 2 == 0 {
                    1
                } else {
                    -1
                }
            }
            _ => 0,
        });
    }
    let mut acc = T::wrap(1);
    for _ in 0..e {
        acc = T::wrap(acc.i() * base);
    }
    acc
}

fn check_int_binary<T: TestInt>(seed: u64) -> Result<()> {
    let mut rng = Rng::new(seed);
    let ops: Vec<Named<BFn, IRef2>> = vec![
        ("add", |x, y| kiln::add(x, y), |a, b| a + b),
        ("sub", |x, y| kiln::sub(x, y), |a, b| a - b),
        ("mul", |x, y| kiln::mul(x, y), |a, b| a * b),
        ("floor_divide", |x, y| kiln::floor_divide(x, y), int_floor_div_ref),
        ("remainder", |x, y| kiln::remainder(x, y), int_rem_ref),
        ("maximum", |x, y| kiln::maximum(x, y), |a, b| a.max(b)),
        ("minimum", |x, y| kiln::minimum(x, y), |a, b| a.min(b)),
    ];
    let preds: Vec<Named<BFn, IPred2>> = vec![
        ("equal", |x, y| kiln::equal(x, y), |a, b| a == b),
        ("not_equal", |x, y| kiln::not_equal(x, y), |a, b| a != b),
        ("less", |x, y| kiln::less(x, y), |a, b| a < b),
        ("less_equal", |x, y| kiln::less_equal(x, y), |a, b| a <= b),
        ("greater", |x, y| kiln::greater(x, y), |a, b| a > b),
        ("greater_equal", |x, y| kiln::greater_equal(x, y), |a, b| a >= b),
        ("logical_and", |x, y| kiln::logical_and(x, y), |a, b| a != 0 && b != 0),
        ("logical_or", |x, y| kiln::logical_or(x, y), |a, b| a != 0 || b != 0),
    ];
    let (r, c) = (5, 6);
    let fill = T::wrap(3);
    for &va in &VIEWS {
        for &vb in &VIEWS {
            for (name, f, reference) in &ops {
                let xa = int_pool::<T>(&mut rng, r * c);
                let xb = int_pool::<T>(&mut rng, r * c);
                let (a, la) = make_view(va, &xa, r, c, fill)?;
                let (b, lb) = make_view(vb, &xb, r, c, fill)?;
                let y = f(&a, &b)?;
                assert_eq!(y.dtype(), T::DT, "{name}");
                let want: Vec<T> = la.iter().zip(&lb).map(|(x, y)| T::wrap(reference(x.i(), y.i()))).collect();
                assert_eq!(y.to_vec::<T>()?, want, "{name} on {va:?} x {vb:?} [{}]: {la:?} {lb:?}", T::DT);
            }
            for (name, f, p) in &preds {
                // Small values so ties happen.
                let xa: Vec<T> = (0..r * c).map(|_| T::wrap(rng.int(0, 3) as i128)).collect();
                let xb: Vec<T> = (0..r * c).map(|_| T::wrap(rng.int(0, 3) as i128)).collect();
                let (a, la) = make_view(va, &xa, r, c, fill)?;
                let (b, lb) = make_view(vb, &xb, r, c, fill)?;
                let want: Vec<bool> = la.iter().zip(&lb).map(|(x, y)| p(x.i(), y.i())).collect();
                assert_eq!(f(&a, &b)?.to_vec::<bool>()?, want, "{name} on {va:?} x {vb:?} [{}]", T::DT);
            }
            // pow with small exponents (negative ones for signed types).
            let lo = if T::LO < 0 { -3 } else { 0 };
            let xa: Vec<T> = (0..r * c).map(|_| T::wrap(rng.int(-5, 20) as i128)).collect();
            let xb: Vec<T> = (0..r * c).map(|_| T::wrap(rng.int(lo, 12) as i128)).collect();
            let (a, la) = make_view(va, &xa, r, c, fill)?;
            let (b, lb) = make_view(vb, &xb, r, c, fill)?;
            let want: Vec<T> = la.iter().zip(&lb).map(|(x, y)| wrapping_pow(*x, *y)).collect();
            assert_eq!(kiln::pow(&a, &b)?.to_vec::<T>()?, want, "pow on {va:?} x {vb:?} [{}]", T::DT);
            // True division of integers gives f32.
            let xa = int_pool::<T>(&mut rng, r * c);
            let xb = int_pool::<T>(&mut rng, r * c);
            let (a, la) = make_view(va, &xa, r, c, fill)?;
            let (b, lb) = make_view(vb, &xb, r, c, fill)?;
            let y = kiln::div(&a, &b)?;
            let want: Vec<f64> =
                la.iter().zip(&lb).map(|(x, y)| (x.i() as f32 as f64) / (y.i() as f32 as f64)).collect();
            assert_close::<f32>(&y, &want, false, &format!("div [{}]", T::DT), &|i| {
                format!("({:?}, {:?})", la[i], lb[i])
            });
        }
    }
    Ok(())
}

#[test]
fn binary_u8_all_view_pairs() -> Result<()> {
    check_int_binary::<u8>(31)
}

#[test]
fn binary_u32_all_view_pairs() -> Result<()> {
    check_int_binary::<u32>(32)
}

#[test]
fn binary_i32_all_view_pairs() -> Result<()> {
    check_int_binary::<i32>(33)
}

#[test]
fn binary_i64_all_view_pairs() -> Result<()> {
    check_int_binary::<i64>(34)
}

#[test]
fn integer_semantics() -> Result<()> {
    let max = Array::from_slice(&[i32::MAX, i32::MIN, 5], &[3])?;
    assert_eq!((&max + 1)?.to_vec::<i32>()?, vec![i32::MIN, i32::MIN + 1, 6], "i32::MAX + 1 wraps");
    assert_eq!((&max - 1)?.to_vec::<i32>()?, vec![i32::MAX - 1, i32::MAX, 4], "i32::MIN - 1 wraps");
    assert_eq!((&max * 2)?.to_vec::<i32>()?, vec![-2, 0, 10]);
    let a = Array::from_slice(&[7i32, -7, 7, -7, 5, 0, i32::MIN, i32::MIN], &[8])?;
    let b = Array::from_slice(&[2i32, 2, -2, -2, 0, 0, -1, 1], &[8])?;
    assert_eq!(kiln::floor_divide(&a, &b)?.to_vec::<i32>()?, vec![3, -4, -4, 3, 0, 0, i32::MIN, i32::MIN]);
    assert_eq!(kiln::remainder(&a, &b)?.to_vec::<i32>()?, vec![1, 1, -1, -1, 0, 0, 0, 0]);
    // True division of ints is f32.
    let q = kiln::div(&a, &b)?;
    assert_eq!(q.dtype(), DType::F32);
    let q = q.to_vec::<f32>()?;
    assert_eq!(&q[..4], &[3.5, -3.5, -3.5, 3.5]);
    assert!(q[4].is_infinite() && q[4] > 0.0 && q[5].is_nan());
    // Negative exponents (documented in backend/cpu/math.rs).
    let base = Array::from_slice(&[2i32, 1, -1, -1, 0, 3, -2], &[7])?;
    let e = Array::from_slice(&[-1i32, -5, -3, -2, -1, 0, 3], &[7])?;
    assert_eq!(kiln::pow(&base, &e)?.to_vec::<i32>()?, vec![0, 1, -1, 1, 0, 1, -8]);
    assert_eq!(kiln::pow(&Array::from_slice(&[3i64], &[1])?, 40)?.to_vec::<i64>()?, vec![3i64.wrapping_pow(40)]);
    // Unsigned wrap and division by zero.
    let u = Array::from_slice(&[200u8, 0, 9], &[3])?;
    assert_eq!((&u + 100)?.to_vec::<u8>()?, vec![44, 100, 109]);
    assert_eq!((&u - 1)?.to_vec::<u8>()?, vec![199, 255, 8]);
    assert_eq!(kiln::floor_divide(&u, 0)?.to_vec::<u8>()?, vec![0, 0, 0]);
    assert_eq!(kiln::remainder(&u, 0)?.to_vec::<u8>()?, vec![0, 0, 0]);
    assert_eq!(kiln::remainder(&u, 4)?.to_vec::<u8>()?, vec![0, 0, 1]);
    // The same wrapping on a large transposed operand (parallel path).
    let (r, c) = (350, 300);
    let vals: Vec<i32> = (0..r * c).map(|i| (i32::MAX - 1000).wrapping_add(i as i32 % 2000)).collect();
    let (x, logical) = make_view(View::Transposed, &vals, r, c, 0)?;
    let y = (&x + &Array::from_slice(&[1i32, 2, 3], &[3, 1, 1])?)?;
    assert_eq!(y.shape(), &[3, r, c]);
    let want: Vec<i32> = (1..=3).flat_map(|k| logical.iter().map(move |v| v.wrapping_add(k))).collect();
    assert_eq!(y.to_vec::<i32>()?, want);
    let l = Array::from_slice(&[i64::MIN, i64::MAX], &[2])?;
    assert_eq!(kiln::floor_divide(&l, -1)?.to_vec::<i64>()?, vec![i64::MIN, -i64::MAX]);
    assert_eq!(kiln::remainder(&l, -1)?.to_vec::<i64>()?, vec![0, 0]);
    Ok(())
}

#[test]
fn bool_binary() -> Result<()> {
    let a = Array::from_slice(&[false, false, true, true], &[4])?;
    let b = Array::from_slice(&[false, true, false, true], &[4])?;
    let bools = |x: Array| x.to_vec::<bool>();
    assert_eq!(bools(kiln::add(&a, &b)?)?, vec![false, true, true, true], "bool + bool is or");
    assert_eq!(bools(kiln::mul(&a, &b)?)?, vec![false, false, false, true], "bool * bool is and");
    assert_eq!(bools(kiln::maximum(&a, &b)?)?, vec![false, true, true, true]);
    assert_eq!(bools(kiln::minimum(&a, &b)?)?, vec![false, false, false, true]);
    assert_eq!(bools(kiln::less(&a, &b)?)?, vec![false, true, false, false]);
    assert_eq!(bools(kiln::greater_equal(&a, &b)?)?, vec![true, false, true, true]);
    assert_eq!(bools(kiln::equal(&a, &b)?)?, vec![true, false, false, true]);
    assert_eq!(bools(kiln::logical_and(&a, &b)?)?, vec![false, false, false, true]);
    assert_eq!(bools(kiln::logical_or(&a, &b)?)?, vec![false, true, true, true]);
    let d = kiln::div(&a, &b)?;
    assert_eq!(d.dtype(), DType::F32);
    let d = d.to_vec::<f32>()?;
    assert!(d[0].is_nan() && d[1] == 0.0 && d[2] == f32::INFINITY && d[3] == 1.0, "{d:?}");
    for (name, r) in [
        ("sub", kiln::sub(&a, &b)),
        ("floor_divide", kiln::floor_divide(&a, &b)),
        ("remainder", kiln::remainder(&a, &b)),
        ("pow", kiln::pow(&a, &b)),
    ] {
        let e = assert_err_contains(r, &[name, "bool"]);
        assert!(matches!(e, Error::DType { dtype: DType::Bool, .. }));
    }
    let e = assert_err_contains(kiln::atan2(&Array::from_slice(&[1i32], &[1])?, 1), &["atan2", "i32", "astype"]);
    assert!(matches!(e, Error::DType { op: "atan2", .. }));
    Ok(())
}

// ---------------------------------------------------------------- where and clip

#[test]
fn where_on_all_views_and_dtypes() -> Result<()> {
    let mut rng = Rng::new(41);
    let (r, c) = (4, 7);
    for vc in VIEWS {
        for va in VIEWS {
            for vb in [View::Contiguous, View::Reversed, View::BroadcastCol] {
                let cond: Vec<bool> = (0..r * c).map(|_| rng.next_u64().is_multiple_of(2)).collect();
                let xa: Vec<f32> = rng.floats_f32(r * c, -5.0, 5.0);
                let xb: Vec<f32> = rng.floats_f32(r * c, -5.0, 5.0);
                let (cc, lc) = make_view(vc, &cond, r, c, true)?;
                let (a, la) = make_view(va, &xa, r, c, 99.0)?;
                let (b, lb) = make_view(vb, &xb, r, c, 99.0)?;
                let y = kiln::where_(&cc, &a, &b)?;
                let want: Vec<f32> = (0..r * c).map(|i| if lc[i] { la[i] } else { lb[i] }).collect();
                assert_eq!(y.to_vec::<f32>()?, want, "where on {vc:?} {va:?} {vb:?}");
            }
        }
    }
    // Broadcast condition, scalar branch, integer and f16 data, promotion.
    let cond = Array::from_slice(&[true, false, true], &[3])?;
    let a = Array::from_slice(&[1i32, 2, 3, 4, 5, 6], &[2, 3])?;
    let y = kiln::where_(&cond, &a, -1)?;
    assert_eq!(y.dtype(), DType::I32);
    assert_eq!(y.to_vec::<i32>()?, vec![1, -1, 3, 4, -1, 6]);
    let h = Array::from_slice(&[f16::from_f32(0.5); 3], &[3])?;
    let y = kiln::where_(&cond, &h, 2.0)?;
    assert_eq!(y.dtype(), DType::F16, "a weak float scalar keeps f16");
    assert_eq!(y.to_vec::<f16>()?, vec![f16::from_f32(0.5), f16::from_f32(2.0), f16::from_f32(0.5)]);
    let y = kiln::where_(&cond, &a, &Array::from_slice(&[0.5f32], &[1])?)?;
    assert_eq!(y.dtype(), DType::F32, "i32 and f32 branches promote to f32");
    assert_eq!(y.to_vec::<f32>()?, vec![1.0, 0.5, 3.0, 4.0, 0.5, 6.0]);
    // A numeric condition means nonzero; NaN is nonzero.
    let cf = Array::from_slice(&[0.0f32, f32::NAN, -0.0, 2.0], &[4])?;
    let y = kiln::where_(&cf, 1, 0)?;
    assert_eq!(y.to_vec::<i32>()?, vec![0, 1, 0, 1]);
    // Large: parallel path.
    let n = 150_001;
    let xs: Vec<f32> = (0..n).map(|i| i as f32).collect();
    let x = Array::from_vec(xs.clone(), &[n])?;
    let rev = kiln::slice_axis(&x, 0, None, None, -1)?;
    let y = kiln::where_(&kiln::greater(&x, 1000.0)?, &rev, &x)?.to_vec::<f32>()?;
    for i in 0..n {
        let want = if xs[i] > 1000.0 { xs[n - 1 - i] } else { xs[i] };
        assert_eq!(y[i], want, "element {i}");
    }
    Ok(())
}

#[test]
fn clip() -> Result<()> {
    let x = Array::from_slice(&[-3.0f32, -1.0, 0.0, 2.0, 5.0, f32::NAN], &[6])?;
    let y = kiln::clip(&x, Some(-1.5), Some(2.5))?.to_vec::<f32>()?;
    assert_eq!(&y[..5], &[-1.5, -1.0, 0.0, 2.0, 2.5]);
    assert!(y[5].is_nan(), "clip propagates NaN");
    let y = kiln::clip(&x, Some(0.0), None::<f32>)?.to_vec::<f32>()?;
    assert_eq!(&y[..5], &[0.0, 0.0, 0.0, 2.0, 5.0]);
    let y = kiln::clip(&x, None::<f32>, Some(0.0))?.to_vec::<f32>()?;
    assert_eq!(&y[..5], &[-3.0, -1.0, 0.0, 0.0, 0.0]);
    // Integer array, integer bounds: keeps the dtype.
    let i = Array::from_slice(&[-5i32, 0, 5, 10], &[4])?;
    let y = kiln::clip(&i, Some(-1), Some(6))?;
    assert_eq!(y.dtype(), DType::I32);
    assert_eq!(y.to_vec::<i32>()?, vec![-1, 0, 5, 6]);
    // f16 array with float bounds stays f16.
    let h = Array::from_slice(&[f16::from_f32(-2.0), f16::from_f32(3.0)], &[2])?;
    let y = kiln::clip(&h, Some(-1.0), Some(1.0))?;
    assert_eq!(y.to_vec::<f16>()?, vec![f16::from_f32(-1.0), f16::from_f32(1.0)]);
    // Array bounds broadcast; on a transposed view.
    let m = Array::from_slice(&[1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0], &[3, 2])?.t()?; // [[1,3,5],[2,4,6]]
    let lo = Array::from_slice(&[2.0f32, 0.0, 6.0], &[3])?;
    let hi = Array::from_slice(&[3.0f32, 3.5], &[2, 1])?;
    let y = kiln::clip(&m, Some(&lo), Some(&hi))?;
    assert_eq!(y.to_vec::<f32>()?, vec![2.0, 3.0, 3.0, 2.0, 3.5, 3.5]);
    // lo > hi gives hi, as NumPy.
    assert_eq!(kiln::clip(&i, Some(5), Some(1))?.to_vec::<i32>()?, vec![1, 1, 1, 1]);
    assert_err_contains(kiln::clip(&x, None::<f32>, None::<f32>), &["clip"]);
    Ok(())
}

// ---------------------------------------------------------------- empty arrays

#[test]
fn empty_arrays() -> Result<()> {
    for shape in [vec![0usize, 5], vec![3, 0], vec![0]] {
        let x = kiln::zeros(&shape, DType::F32)?;
        let x = (&x + 1.0)?; // a materialized (not broadcast) empty array
        for op in float_unary_ops() {
            let y = (op.f)(&x)?;
            assert_eq!(y.shape(), &shape[..]);
            assert_eq!(y.to_vec::<f32>()?, Vec::<f32>::new(), "{}", op.name);
        }
        for op in float_binary_ops() {
            let y = (op.f)(&x, &x)?;
            assert_eq!(y.shape(), &shape[..]);
            assert!(y.to_vec::<f32>()?.is_empty());
        }
        assert!(x.isnan()?.to_vec::<bool>()?.is_empty());
        assert!(kiln::less(&x, 1.0)?.to_vec::<bool>()?.is_empty());
        assert!(x.astype(DType::I64)?.to_vec::<i64>()?.is_empty());
        assert!(kiln::where_(&kiln::less(&x, 0.0)?, &x, 1.0)?.to_vec::<f32>()?.is_empty());
        let t = kiln::transpose(&x)?;
        assert!(t.exp()?.to_vec::<f32>()?.is_empty());
    }
    // Broadcasting with a zero-size dimension.
    let a = Array::from_vec(Vec::<f32>::new(), &[0, 1])?;
    let b = Array::from_slice(&[1.0f32, 2.0, 3.0, 4.0], &[1, 4])?;
    let y = (&a + &b)?;
    assert_eq!(y.shape(), &[0, 4]);
    assert!(y.to_vec::<f32>()?.is_empty());
    let e = Array::from_vec(Vec::<i32>::new(), &[2, 0, 3])?;
    let s = kiln::slice_axis(&e, 0, None, None, -1)?;
    let y = (&s * &Array::from_slice(&[1i32, 2, 3], &[3])?)?;
    assert_eq!(y.shape(), &[2, 0, 3]);
    assert!(y.to_vec::<i32>()?.is_empty());
    // (0,) and (3,) do not broadcast.
    let z = Array::from_vec(Vec::<f32>::new(), &[0])?;
    let err = kiln::add(&z, &Array::from_slice(&[1.0f32, 2.0, 3.0], &[3])?).unwrap_err();
    assert_eq!(err, Error::Broadcast { op: "add", lhs: vec![0], rhs: vec![3] });
    Ok(())
}

#[test]
fn scalars_and_zero_dim_arrays() -> Result<()> {
    let s = Array::scalar(2.5f32);
    assert_eq!(s.shape(), &[] as &[usize]);
    assert_eq!(s.exp()?.item::<f32>()?, 2.5f32.exp());
    assert_eq!((&s * 2.0)?.item::<f32>()?, 5.0);
    let v = Array::from_slice(&[1.0f32, 2.0], &[2])?;
    assert_eq!((&s - &v)?.to_vec::<f32>()?, vec![1.5, 0.5]);
    assert_eq!((&v - &s)?.to_vec::<f32>()?, vec![-1.5, -0.5]);
    Ok(())
}

// ---------------------------------------------------------------- broadcasting properties

mod broadcasting {
    use super::Rng;
    use super::*;
    use proptest::prelude::*;

    type Op = (&'static str, BFn, fn(f32, f32) -> f32);

    fn ops() -> Vec<Op> {
        vec![
            ("add", |a, b| kiln::add(a, b), |x, y| x + y),
            ("mul", |a, b| kiln::mul(a, b), |x, y| x * y),
            ("maximum", |a, b| kiln::maximum(a, b), |x, y| if x.is_nan() || y.is_nan() { f32::NAN } else { x.max(y) }),
            ("less", |a, b| kiln::less(a, b), |x, y| (x < y) as u8 as f32),
        ]
    }

    /// Row-major values of a shape, as an array either contiguous or as the
    /// transpose of a reversed-axes buffer (so its strides are reversed).
    fn build(vals: &[f32], shape: &[usize], transposed: bool) -> Array {
        if !transposed || shape.len() < 2 {
            return Array::from_slice(vals, shape).unwrap();
        }
        let rev: Vec<usize> = shape.iter().rev().copied().collect();
        let n = vals.len();
        let mut storage = vec![0.0f32; n];
        // storage[j_{k-1}, ..., j_0] = vals[j_0, ..., j_{k-1}]
        for (lin, &v) in vals.iter().enumerate() {
            let mut rem = lin;
            let mut idx = vec![0usize; shape.len()];
            for d in (0..shape.len()).rev() {
                idx[d] = rem % shape[d];
                rem /= shape[d];
            }
            let mut s = 0;
            for d in (0..shape.len()).rev() {
                s = s * shape[d] + idx[d];
            }
            storage[s] = v;
        }
        Array::from_vec(storage, &rev).unwrap().t().unwrap()
    }

    fn check(sa: &[usize], sb: &[usize], seed: u64, ta: bool, tb: bool) -> std::result::Result<(), TestCaseError> {
        let mut rng = Rng::new(seed);
        let na: usize = sa.iter().product();
        let nb: usize = sb.iter().product();
        let va: Vec<f32> = (0..na).map(|_| rng.int(-4, 4) as f32).collect();
        let vb: Vec<f32> = (0..nb).map(|_| rng.int(-4, 4) as f32).collect();
        let (a, b) = (build(&va, sa, ta), build(&vb, sb, tb));
        for (name, f, r) in ops() {
            match broadcast_shape_ref(sa, sb) {
                None => {
                    let e = f(&a, &b).expect_err("incompatible shapes must fail");
                    prop_assert_eq!(&e, &Error::Broadcast { op: name, lhs: sa.to_vec(), rhs: sb.to_vec() });
                    let m = e.to_string();
                    prop_assert!(m.contains(name), "{}", m);
                }
                Some(out) => {
                    let y = f(&a, &b).unwrap();
                    prop_assert_eq!(y.shape(), &out[..]);
                    let (ra, rb) = (broadcast_ref(&va, sa, &out), broadcast_ref(&vb, sb, &out));
                    let want: Vec<f32> = ra.iter().zip(&rb).map(|(x, y)| r(*x, *y)).collect();
                    let got: Vec<f32> = if y.dtype() == DType::Bool {
                        y.to_vec::<bool>().unwrap().into_iter().map(|v| v as u8 as f32).collect()
                    } else {
                        y.to_vec::<f32>().unwrap()
                    };
                    prop_assert_eq!(got, want, "{} of {:?} and {:?}", name, sa, sb);
                }
            }
        }
        Ok(())
    }

    /// A compatible pair: an output shape, and two operands that each take
    /// a suffix of it with some dims replaced by 1.
    fn compatible() -> impl Strategy<Value = (Vec<usize>, Vec<usize>, u64)> {
        (prop::collection::vec(prop::sample::select(vec![0usize, 1, 2, 3, 5]), 0..=4), any::<u64>()).prop_map(
            |(out, seed)| {
                let mut rng = Rng::new(seed);
                let mut mk = || {
                    let k = rng.int(0, out.len() as i64) as usize;
                    out[out.len() - k..].iter().map(|&d| if rng.next_u64().is_multiple_of(3) { 1 } else { d }).collect()
                };
                let (a, b) = (mk(), mk());
                (a, b, seed)
            },
        )
    }

    fn any_shape() -> impl Strategy<Value = Vec<usize>> {
        prop::collection::vec(0usize..4, 0..=4)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

        #[test]
        fn compatible_shapes_match_the_reference((sa, sb, seed) in compatible(), ta: bool, tb: bool) {
            prop_assert!(broadcast_shape_ref(&sa, &sb).is_some());
            check(&sa, &sb, seed, ta, tb)?;
        }

        #[test]
        fn arbitrary_shape_pairs_broadcast_or_fail_cleanly(sa in any_shape(), sb in any_shape(), seed: u64, ta: bool) {
            check(&sa, &sb, seed, ta, false)?;
        }

        #[test]
        fn incompatible_pairs_name_the_op_and_both_shapes(
            mut sa in prop::collection::vec(1usize..4, 1..=4),
            mut sb in prop::collection::vec(1usize..4, 1..=4),
            x in 2usize..5,
            dx in 1usize..3,
            from_end in 0usize..4,
        ) {
            // Force one aligned dimension pair to be unequal with neither 1 (x vs x+dx, or 0 vs x).
            let k = from_end % sa.len().min(sb.len());
            let (ia, ib) = (sa.len() - 1 - k, sb.len() - 1 - k);
            sa[ia] = x;
            sb[ib] = if dx == 2 { 0 } else { x + dx };
            prop_assert!(broadcast_shape_ref(&sa, &sb).is_none());
            check(&sa, &sb, 1, false, false)?;
        }
    }
}

#[test]
fn small_whole_powers_are_products_that_fuse() -> Result<()> {
    let v: Vec<f32> = (0..100).map(|i| (i as f32 - 50.0) * 0.173).collect();
    let x = Array::from_slice(&v, &[100])?;
    for (n, want) in [
        (2.0, v.iter().map(|a| a * a).collect::<Vec<f32>>()),
        (3.0, v.iter().map(|a| a * a * a).collect()),
        (4.0, v.iter().map(|a| (a * a) * (a * a)).collect()),
        (-2.0, v.iter().map(|a| 1.0 / (a * a)).collect()),
        (1.0, v.clone()),
    ] {
        assert_eq!(kiln::pow(&x, n)?.to_vec::<f32>()?, want, "x ^ {n}");
    }
    // Other exponents still go through pow.
    let half = kiln::pow(&x.abs()?, 0.5f32)?.to_vec::<f32>()?;
    assert!(half.iter().zip(&v).all(|(h, a)| (h - a.abs().sqrt()).abs() <= 1e-6 * (1.0 + a.abs())));
    // Compiled, x ^ 3 is vector code, not the per-element interpreter
    // (where the code generator runs: it needs AVX2 and FMA, or AVX-512).
    let f = kiln::compile(|x: &Array| kiln::pow(x, 3.0f32)? + 1.0f32);
    let text = f.explain(&x)?;
    if kiln::backend::cpu::jit::enabled() {
        assert!(text.contains("code:    machine code ("), "{text}");
    } else {
        assert!(text.contains("needs AVX2 and FMA"), "{text}");
    }
    assert_eq!(f.call(&x)?.to_vec::<f32>()?, v.iter().map(|a| a * a * a + 1.0).collect::<Vec<_>>());
    Ok(())
}
