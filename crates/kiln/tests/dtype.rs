//! Dtype promotion through real ops (the table in `dtype.rs`), weakly typed
//! scalars, the operators on every kind of operand, and `astype` between
//! every pair of dtypes with `as`-cast semantics.

mod common;

use common::*;
use half::{bf16, f16};
use kiln::{Array, DType, Error, Result};

use DType::*;

const DTYPES: [DType; 9] = [Bool, U8, U32, I32, I64, F16, BF16, F32, F64];

/// The promotion table from the `dtype` module docs, written out: row and
/// column in the order of `DTYPES`.
const TABLE: [[DType; 9]; 9] = [
    //  Bool  U8   U32  I32  I64  F16  BF16  F32  F64
    [Bool, U8, U32, I32, I64, F16, BF16, F32, F64],      // Bool
    [U8, U8, U32, I32, I64, F16, BF16, F32, F64],        // U8
    [U32, U32, U32, I64, I64, F16, BF16, F32, F64],      // U32
    [I32, I32, I64, I32, I64, F16, BF16, F32, F64],      // I32
    [I64, I64, I64, I64, I64, F16, BF16, F32, F64],      // I64
    [F16, F16, F16, F16, F16, F16, F32, F32, F64],       // F16
    [BF16, BF16, BF16, BF16, BF16, F32, BF16, F32, F64], // BF16
    [F32, F32, F32, F32, F32, F32, F32, F32, F64],       // F32
    [F64, F64, F64, F64, F64, F64, F64, F64, F64],       // F64
];

#[test]
fn promotion_table_through_ops() -> Result<()> {
    let xa = [0i64, 1, 2, 3];
    let xb = [2i64, 0];
    for (i, &da) in DTYPES.iter().enumerate() {
        for (j, &db) in DTYPES.iter().enumerate() {
            let want = TABLE[i][j];
            assert_eq!(TABLE[j][i], want, "the table is symmetric");
            let a = small_array(da, &xa, &[4]);
            let b = small_array(db, &xb, &[2, 1, 1]);
            let (va, vb) = (values_f64(&a), values_f64(&b));
            let y = kiln::add(&a, &b)?;
            assert_eq!(y.dtype(), want, "{da} + {db}");
            assert_eq!(y.shape(), &[2, 1, 4]);
            let sum: Vec<f64> =
                (0..8)
                    .map(|k| {
                        if want == Bool {
                            ((va[k % 4] + vb[k / 4]) != 0.0) as u8 as f64
                        } else {
                            va[k % 4] + vb[k / 4]
                        }
                    })
                    .collect();
            assert_eq!(values_f64(&y), sum, "{da} + {db}");
            let y = kiln::mul(&a, &b)?;
            assert_eq!(y.dtype(), want, "{da} * {db}");
            assert_eq!(values_f64(&y), (0..8).map(|k| va[k % 4] * vb[k / 4]).collect::<Vec<_>>(), "{da} * {db}");
            assert_eq!(kiln::maximum(&a, &b)?.dtype(), want, "maximum({da}, {db})");
            let c = small_array(Bool, &[1, 0, 1, 0], &[4]);
            assert_eq!(kiln::where_(&c, &a, &b)?.dtype(), want, "where({da}, {db})");
            // Comparisons promote, then give bool.
            let lt = kiln::less(&a, &b)?;
            assert_eq!(lt.dtype(), Bool);
            let lt_want: Vec<f64> = (0..8).map(|k| (va[k % 4] < vb[k / 4]) as u8 as f64).collect();
            assert_eq!(values_f64(&lt), lt_want, "{da} < {db}");
            // True division: floats keep the promoted dtype, the rest give f32.
            let d = kiln::div(&a, &b)?;
            assert_eq!(d.dtype(), if want.is_float() { want } else { F32 }, "{da} / {db}");
            // sub of two bools is an error, other pairs work.
            if want == Bool {
                assert!(matches!(kiln::sub(&a, &b), Err(Error::DType { op: "sub", dtype: Bool, .. })));
            } else {
                let s = kiln::sub(&a, &b)?;
                assert_eq!(s.dtype(), want);
            }
        }
    }
    Ok(())
}

#[test]
fn named_promotions() -> Result<()> {
    let one = |d| small_array(d, &[1], &[1]);
    for (a, b, want) in [
        (I32, F32, F32),
        (U32, I32, I64),
        (F16, BF16, F32),
        (I32, F16, F16),
        (U8, I32, I32),
        (U8, U32, U32),
        (Bool, U8, U8),
        (I64, F32, F32),
        (U32, I64, I64),
        (F32, F64, F64),
        (BF16, F32, F32),
    ] {
        assert_eq!((one(a) + one(b))?.dtype(), want, "{a} + {b}");
        assert_eq!((one(b) + one(a))?.dtype(), want, "{b} + {a}");
    }
    // u32 + i32 -> i64 computes exactly where either 32-bit type would wrap.
    let a = Array::from_slice(&[u32::MAX], &[1])?;
    let b = Array::from_slice(&[-1i32], &[1])?;
    assert_eq!((&a + &b)?.to_vec::<i64>()?, vec![u32::MAX as i64 - 1]);
    assert_eq!(kiln::less(&b, &a)?.to_vec::<bool>()?, vec![true], "-1 < u32::MAX after promotion to i64");
    Ok(())
}

#[test]
fn weak_scalars_never_widen_arrays() -> Result<()> {
    let h = Array::from_slice(&[f16::from_f32(1.5), f16::from_f32(-2.0)], &[2])?;
    let y = (&h * 2.0)?;
    assert_eq!(y.dtype(), F16, "f16 array * 2.0 stays f16");
    assert_eq!(y.to_vec::<f16>()?, vec![f16::from_f32(3.0), f16::from_f32(-4.0)]);
    assert_eq!((2.0f64 * &h)?.dtype(), F16, "scalar on the left too");
    assert_eq!((&h / 4)?.to_vec::<f16>()?, vec![f16::from_f32(0.375), f16::from_f32(-0.5)]);
    let b16 = Array::from_slice(&[bf16::from_f32(1.0)], &[1])?;
    assert_eq!((&b16 + 1)?.dtype(), BF16);
    assert_eq!((&b16 + 1.0f32)?.dtype(), BF16);

    let i = Array::from_slice(&[1i32, 2], &[2])?;
    let y = (&i + 1.5)?;
    assert_eq!(y.dtype(), F32, "i32 array + 1.5 -> f32");
    assert_eq!(y.to_vec::<f32>()?, vec![2.5, 3.5]);
    assert_eq!((&i + 1)?.dtype(), I32);
    assert_eq!((&i + 1i64)?.dtype(), I32, "an i64 scalar is weak too");
    assert_eq!((&i / 2)?.to_vec::<f32>()?, vec![0.5, 1.0], "int / int scalar is true division in f32");
    assert_eq!(kiln::maximum(&i, 1.5)?.to_vec::<f32>()?, vec![1.5, 2.0]);
    assert_eq!(kiln::equal(&i, 2.0)?.to_vec::<bool>()?, vec![false, true]);

    let b = Array::from_slice(&[true, false], &[2])?;
    let y = (&b + 1)?;
    assert_eq!(y.dtype(), I32, "bool + 1 -> i32");
    assert_eq!(y.to_vec::<i32>()?, vec![2, 1]);
    assert_eq!((&b + 0.5)?.to_vec::<f32>()?, vec![1.5, 0.5], "bool + 0.5 -> f32");
    assert_eq!(kiln::add(&b, true)?.to_vec::<bool>()?, vec![true, true], "bool + true stays bool");
    assert_eq!(kiln::add(&i, true)?.to_vec::<i32>()?, vec![2, 3], "a bool scalar takes the array's dtype");

    let u = Array::from_slice(&[0u8, 5, 255], &[3])?;
    assert_eq!((&u + 1)?.to_vec::<u8>()?, vec![1, 6, 0], "u8 + 1 stays u8 (and wraps)");
    assert_eq!((1u8 - &u)?.to_vec::<u8>()?, vec![1, 252, 2]);
    let w = Array::from_slice(&[5u32], &[1])?;
    assert_eq!((&w + -1)?.to_vec::<u32>()?, vec![4]);
    let l = Array::from_slice(&[i64::MAX], &[1])?;
    assert_eq!((&l * 2)?.to_vec::<i64>()?, vec![-2]);
    let d = Array::from_slice(&[1.0f64], &[1])?;
    assert_eq!((&d + 0.1f32)?.to_vec::<f64>()?, vec![1.0 + 0.1f32 as f64], "f64 array + f32 scalar stays f64");

    // Scalars alone promote their default dtypes (i32, f32).
    let y = kiln::add(1, 2.5)?;
    assert_eq!((y.dtype(), y.shape()), (F32, &[] as &[usize]));
    assert_eq!(y.item::<f32>()?, 3.5);
    assert_eq!(kiln::mul(3, 4)?.item::<i32>()?, 12);
    Ok(())
}

#[test]
fn operators_on_every_operand_kind() -> Result<()> {
    let xa = [1.5f32, -2.0, 4.0];
    let xb = [0.5f32, 8.0, -2.0];
    let a = Array::from_slice(&xa, &[3])?;
    let b = Array::from_slice(&xb, &[3])?;
    let check = |y: Result<Array>, f: fn(f32, f32) -> f32, what: &str| {
        let want: Vec<f32> = xa.iter().zip(&xb).map(|(x, y)| f(*x, *y)).collect();
        assert_eq!(y.expect(what).to_vec::<f32>().unwrap(), want, "{what}");
    };
    macro_rules! all_forms {
        ($op:tt, $f:expr) => {{
            let f: fn(f32, f32) -> f32 = $f;
            let s = stringify!($op);
            check(a.clone() $op b.clone(), f, &format!("Array {s} Array"));
            check(&a $op &b, f, &format!("&Array {s} &Array"));
            check(a.clone() $op &b, f, &format!("Array {s} &Array"));
            check(&a $op b.clone(), f, &format!("&Array {s} Array"));
            // Result<Array> on the left with an array on the right.
            check((&a * 1.0) $op &b, f, &format!("Result {s} &Array"));
            check((&a * 1.0) $op b.clone(), f, &format!("Result {s} Array"));
            // A Result on the right.
            check(&a $op (&b * 1.0), f, &format!("&Array {s} Result"));
            check(a.clone() $op (&b * 1.0), f, &format!("Array {s} Result"));
            // Scalars on both sides, every scalar type.
            let sc = |y: Result<Array>, g: &dyn Fn(f32) -> f32, what: &str| {
                let want: Vec<f32> = xa.iter().map(|x| g(*x)).collect();
                assert_eq!(y.expect(what).to_vec::<f32>().unwrap(), want, "{what}");
            };
            sc(&a $op 2.0f32, &|x| f(x, 2.0), "&Array op f32");
            sc(a.clone() $op 2.0f64, &|x| f(x, 2.0), "Array op f64");
            sc(&a $op 2i32, &|x| f(x, 2.0), "&Array op i32");
            sc(&a $op 2i64, &|x| f(x, 2.0), "&Array op i64");
            sc(&a $op 2u8, &|x| f(x, 2.0), "&Array op u8");
            sc(&a $op 2u32, &|x| f(x, 2.0), "&Array op u32");
            sc(3.0f32 $op &a, &|x| f(3.0, x), "f32 op &Array");
            sc(3.0f64 $op a.clone(), &|x| f(3.0, x), "f64 op Array");
            sc(3i32 $op &a, &|x| f(3.0, x), "i32 op &Array");
            sc(3i64 $op &a, &|x| f(3.0, x), "i64 op &Array");
            sc(3u8 $op &a, &|x| f(3.0, x), "u8 op &Array");
            sc(3u32 $op &a, &|x| f(3.0, x), "u32 op &Array");
        }};
    }
    all_forms!(+, |x, y| x + y);
    all_forms!(-, |x, y| x - y);
    all_forms!(*, |x, y| x * y);
    all_forms!(/, |x, y| x / y);
    assert_eq!((-a.clone())?.to_vec::<f32>()?, vec![-1.5, 2.0, -4.0]);
    assert_eq!((-&a)?.to_vec::<f32>()?, vec![-1.5, 2.0, -4.0]);
    // A chain with one `?`.
    // (`Result<Array> op scalar` cannot exist: the orphan rule forbids
    // implementing a std operator for `Result<Array>` with a foreign
    // right-hand side, so a scalar after a Result needs a `?` first.)
    let y = ((((&a * 2.0)? + &b - &a) * &b)? / 2.0)?;
    let want: Vec<f32> = xa.iter().zip(&xb).map(|(x, y)| (x * 2.0 + y - x) * y / 2.0).collect();
    assert_eq!(y.to_vec::<f32>()?, want);
    // Integer operators and unary minus on ints.
    let i = Array::from_slice(&[7i32, -7], &[2])?;
    assert_eq!((&i - 10)?.to_vec::<i32>()?, vec![-3, -17]);
    assert_eq!((-&i)?.to_vec::<i32>()?, vec![-7, 7]);
    assert_eq!((&i / 2)?.to_vec::<f32>()?, vec![3.5, -3.5]);
    Ok(())
}

#[test]
fn operator_errors_propagate_through_a_result_chain() -> Result<()> {
    let a = Array::from_slice(&[1.0f32, 2.0, 3.0], &[3])?;
    let wrong = Array::from_slice(&[1.0f32, 2.0], &[2])?;
    let first = Error::Broadcast { op: "add", lhs: vec![3], rhs: vec![2] };
    assert_eq!((&a + &wrong).unwrap_err(), first);
    // The first error survives every later operator, left or right.
    assert_eq!(((&a + &wrong) * &a).unwrap_err(), first);
    assert_eq!(((&a + &wrong) - a.clone()).unwrap_err(), first);
    assert_eq!((&a / (&a + &wrong)).unwrap_err(), first);
    assert_eq!((a.clone() * (&a + &wrong)).unwrap_err(), first);
    assert_eq!((((&a + &wrong) * &a) + &a).unwrap_err(), first);
    // A later error in a chain names its own op and shapes.
    let e = (((&a * 2.0)? - &wrong) * &a).unwrap_err();
    assert_eq!(e, Error::Broadcast { op: "sub", lhs: vec![3], rhs: vec![2] });
    assert!(e.to_string().contains("sub") && e.to_string().contains("(3)") && e.to_string().contains("(2)"));
    // Unary minus of a bool array is an error, not a panic.
    let b = Array::from_slice(&[true], &[1])?;
    assert!(matches!(-&b, Err(Error::DType { op: "neg", dtype: Bool, .. })));
    Ok(())
}

// ---------------------------------------------------------------- astype

#[derive(Clone, Copy, Debug)]
enum V {
    F(f64),
    I(i128),
    B(bool),
}

const FLOAT_SRC: [f64; 28] = [
    f64::NAN,
    f64::INFINITY,
    f64::NEG_INFINITY,
    -0.0,
    0.0,
    0.4,
    -0.6,
    1.7,
    -1.7,
    2.5,
    -2.5,
    127.9,
    128.0,
    -128.9,
    255.9,
    256.0,
    300.5,
    -300.5,
    65504.0,
    70000.0,
    3e9,
    -3e9,
    2147483647.0,
    -2147483649.0,
    1e19,
    -1e19,
    1e300,
    1e-30,
];

const INT_SRC: [i128; 22] = [
    0,
    1,
    -1,
    127,
    128,
    255,
    256,
    300,
    -129,
    2049,
    65519,
    65520,
    16777217,
    i32::MAX as i128,
    i32::MIN as i128,
    u32::MAX as i128,
    1 << 53,
    (1 << 53) + 1,
    i64::MAX as i128,
    i64::MIN as i128,
    -100000,
    7,
];

fn float_src<T: TestFloat>() -> (Vec<T>, Vec<V>) {
    let v: Vec<T> = FLOAT_SRC.iter().map(|&x| T::of(x)).collect();
    let l = v.iter().map(|x| V::F(x.f())).collect();
    (v, l)
}

fn int_src<T: TestInt>() -> (Vec<T>, Vec<V>) {
    let v: Vec<T> = INT_SRC.iter().map(|&x| T::wrap(x)).collect();
    let l = v.iter().map(|x| V::I(x.i())).collect();
    (v, l)
}

/// Source arrays of dtype `dt`, contiguous and as a reversed strided view,
/// and the values they hold.
fn sources(dt: DType) -> Result<Vec<(Array, Vec<V>)>> {
    fn both<T: kiln::Element>(v: Vec<T>, l: Vec<V>) -> Result<Vec<(Array, Vec<V>)>> {
        let n = v.len();
        let (r, _) = make_view(View::Reversed, &v, 1, n, v[0])?;
        Ok(vec![(Array::from_vec(v, &[n])?, l.clone()), (r.reshape(&[n as isize])?, l)])
    }
    match dt {
        Bool => {
            let v = vec![false, true, true, false];
            let l = v.iter().map(|&b| V::B(b)).collect();
            both(v, l)
        }
        U8 => {
            let (v, l) = int_src::<u8>();
            both(v, l)
        }
        U32 => {
            let (v, l) = int_src::<u32>();
            both(v, l)
        }
        I32 => {
            let (v, l) = int_src::<i32>();
            both(v, l)
        }
        I64 => {
            let (v, l) = int_src::<i64>();
            both(v, l)
        }
        F16 => {
            let (v, l) = float_src::<f16>();
            both(v, l)
        }
        BF16 => {
            let (v, l) = float_src::<bf16>();
            both(v, l)
        }
        F32 => {
            let (v, l) = float_src::<f32>();
            both(v, l)
        }
        F64 => {
            let (v, l) = float_src::<f64>();
            both(v, l)
        }
    }
}

fn to_float<T: TestFloat>(v: V) -> f64 {
    match v {
        V::F(x) => T::of(x).f(),
        V::I(i) => T::from_int(i).f(),
        V::B(b) => b as u8 as f64,
    }
}

fn to_int<T: TestInt>(v: V) -> i128 {
    match v {
        V::F(x) => T::sat(x).i(),
        V::I(i) => T::wrap(i).i(),
        V::B(b) => b as i128,
    }
}

#[test]
fn astype_all_pairs_has_as_cast_semantics() -> Result<()> {
    for src in DTYPES {
        for (x, vals) in sources(src)? {
            for dst in DTYPES {
                let y = x.astype(dst)?;
                assert_eq!((y.dtype(), y.shape()), (dst, x.shape()), "{src} -> {dst}");
                if dst.is_float() {
                    let want: Vec<f64> = vals
                        .iter()
                        .map(|&v| match dst {
                            F16 => to_float::<f16>(v),
                            BF16 => to_float::<bf16>(v),
                            F32 => to_float::<f32>(v),
                            _ => to_float::<f64>(v),
                        })
                        .collect();
                    let got = values_f64(&y);
                    for k in 0..got.len() {
                        assert!(
                            close_signed(got[k], want[k], 0.0, 0.0),
                            "{src} -> {dst}: {:?} gave {}, want {}",
                            vals[k],
                            got[k],
                            want[k]
                        );
                    }
                } else {
                    let want: Vec<i128> = vals
                        .iter()
                        .map(|&v| match (dst, v) {
                            (Bool, V::F(x)) => (x != 0.0) as i128,
                            (Bool, V::I(i)) => (i != 0) as i128,
                            (Bool, V::B(b)) => b as i128,
                            (U8, v) => to_int::<u8>(v),
                            (U32, v) => to_int::<u32>(v),
                            (I32, v) => to_int::<i32>(v),
                            (_, v) => to_int::<i64>(v),
                        })
                        .collect();
                    assert_eq!(values_i128(&y), want, "{src} -> {dst} of {vals:?}");
                }
            }
        }
    }
    Ok(())
}

#[test]
fn astype_spelled_out_edge_cases() -> Result<()> {
    let x = Array::from_slice(&[f32::NAN, -1.9, 1.9, 1e10, -1e10, f32::INFINITY, -0.0], &[7])?;
    assert_eq!(
        x.astype(I32)?.to_vec::<i32>()?,
        vec![0, -1, 1, i32::MAX, i32::MIN, i32::MAX, 0],
        "truncate, saturate, NaN->0"
    );
    assert_eq!(x.astype(U8)?.to_vec::<u8>()?, vec![0, 0, 1, 255, 0, 255, 0]);
    assert_eq!(
        x.astype(Bool)?.to_vec::<bool>()?,
        vec![true, true, true, true, true, true, false],
        "NaN is true, -0.0 false"
    );
    let i = Array::from_slice(&[300i32, -1, 256, i32::MIN], &[4])?;
    assert_eq!(i.astype(U8)?.to_vec::<u8>()?, vec![44, 255, 0, 0], "int -> narrower int wraps");
    assert_eq!(i.astype(U32)?.to_vec::<u32>()?, vec![300, u32::MAX, 256, 1 << 31]);
    let l = Array::from_slice(&[i64::MAX, 1 << 32, -(1 << 31) - 1], &[3])?;
    assert_eq!(l.astype(I32)?.to_vec::<i32>()?, vec![-1, 0, i32::MAX]);
    assert_eq!(l.astype(Bool)?.to_vec::<bool>()?, vec![true, true, true]);
    let h = Array::from_slice(&[70000.0f32, 1e-8, 65519.0, 65520.0], &[4])?.astype(F16)?.to_vec::<f16>()?;
    assert_eq!(
        h,
        vec![f16::INFINITY, f16::ZERO, f16::MAX, f16::INFINITY],
        "f32 -> f16 rounds to nearest, overflows to inf"
    );
    // The same array twice: astype to its own dtype is a no-op.
    assert_eq!(x.astype(F32)?.id(), x.id());
    Ok(())
}

#[test]
fn astype_large_strided_arrays() -> Result<()> {
    let (r, c) = (301, 400);
    let mut rng = Rng::new(9);
    let vals: Vec<f32> = (0..r * c).map(|_| rng.uniform(-3e9, 3e9) as f32).collect();
    for view in [View::Contiguous, View::Transposed, View::Reversed] {
        let (x, logical) = make_view(view, &vals, r, c, 0.0)?;
        let want: Vec<i32> = logical.iter().map(|&v| v as i32).collect();
        assert_eq!(x.astype(I32)?.to_vec::<i32>()?, want, "{view:?}");
        let want: Vec<f16> = logical.iter().map(|&v| f16::from_f32(v / 1e5)).collect();
        assert_eq!((&x / 1e5)?.astype(F16)?.to_vec::<f16>()?, want, "{view:?}");
    }
    Ok(())
}

#[test]
fn casts_to_16_bit_floats_round_once() -> Result<()> {
    // Values just above (or below) a tie of the 16-bit type, by less than
    // the low 32 bits of an f64's mantissa or an i64's bits past an f64's:
    // rounded once, to nearest, they leave the tie; rounding twice (to f32,
    // or dropping the low bits, as `half`'s own conversions from f64 do)
    // lands on the tie and goes to even. Eager and compiled alike.
    let tiny = 2f64.powi(-40);
    let cases: Vec<(DType, f64, f64)> = vec![
        // (dtype, value, its value rounded once)
        (BF16, 1.0 + 2f64.powi(-8) + tiny, 1.0 + 2f64.powi(-7)),
        (BF16, 1.0 + 2f64.powi(-8) - tiny, 1.0),
        (BF16, 1.0 + 2f64.powi(-8), 1.0),
        (BF16, -(1.0 + 3.0 * 2f64.powi(-8) - tiny), -(1.0 + 2f64.powi(-7))),
        (BF16, 6_438_914.0, 6_455_296.0),
        (F16, 1.0 + 2f64.powi(-11) + tiny, 1.0 + 2f64.powi(-10)),
        (F16, 1.0 + 2f64.powi(-11), 1.0),
        (F16, -(2048.0 + 1.0 + tiny), -2050.0),
    ];
    let f = |x: &Array, dt: DType| x.astype(dt);
    for (dt, v, want) in cases {
        let x = Array::from_vec(vec![v], &[1])?;
        let eager = f(&x, dt)?.astype(F64)?.to_vec::<f64>()?[0];
        let compiled = kiln::compile(move |x: &Array| f(x, dt)).call(&x)?.astype(F64)?.to_vec::<f64>()?[0];
        assert_eq!(eager, want, "{v:e} to {dt:?} (eager)");
        assert_eq!(compiled, want, "{v:e} to {dt:?} (compiled)");
    }
    // From i64 and i32: 2^60 + 2^52 + 1 is one past a tie of bfloat16
    // (whose step there is 2^53), and an f64 drops the 1.
    let big: i64 = (1 << 60) + (1 << 52) + 1;
    let x = Array::from_vec(vec![big, -big, (1 << 60) + (1 << 52)], &[3])?;
    let got = x.astype(BF16)?.astype(F64)?.to_vec::<f64>()?;
    let up = 2f64.powi(60) + 2f64.powi(53);
    assert_eq!(got, vec![up, -up, 2f64.powi(60)], "i64 to bfloat16");
    let x = Array::from_vec(vec![(1i32 << 25) + (1 << 17) + 1], &[1])?;
    let got = x.astype(BF16)?.astype(F64)?.to_vec::<f64>()?[0];
    assert_eq!(got, 2f64.powi(25) + 2f64.powi(18), "i32 to bfloat16");
    Ok(())
}

/// A random nonzero integer below `2^bits` in magnitude, of every
/// magnitude up to that, either sign; every other one a tie of bfloat16
/// or float16 (the bit after the kept ones set) plus a few low bits.
fn any_int(rng: &mut Rng, bits: i64) -> i64 {
    let k = rng.int(0, bits - 1);
    let kept = [7, 10][rng.int(0, 1) as usize];
    let m = if k > kept + 2 && rng.int(0, 1) == 0 {
        1 << k | rng.int(0, (1 << kept) - 1) << (k - kept) | 1 << (k - kept - 1) | rng.int(0, 3)
    } else {
        (rng.uniform(0.0, 1.0) * 2f64.powi(k as i32)) as i64 | 1 << k
    };
    if rng.int(0, 1) == 0 {
        -m
    } else {
        m
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

    #[test]
    fn casts_to_16_bit_floats_match_a_model_of_one_rounding(seed in 0u64..u64::MAX, exp_lo in -150i32..140) {
        // f64s with random mantissas, many near ties (a few random low
        // bits below a half step), at exponents around the formats'
        // ranges, and i64s and i32s of every magnitude: eager casts
        // against the model.
        let mut rng = Rng::new(seed);
        let n = 256;
        let floats: Vec<f64> = (0..n)
            .map(|k| {
                // Random, or a bfloat16 or float16 tie (the bit after the
                // kept ones set) plus a few low bits.
                let low = rng.int(0, 3) as u64;
                let frac = match k % 3 {
                    0 => (rng.int(0, (1 << 30) - 1) as u64) << 22 | rng.int(0, (1 << 22) - 1) as u64,
                    1 => (rng.int(0, (1 << 7) - 1) as u64) << 45 | 1 << 44 | low,
                    _ => (rng.int(0, (1 << 10) - 1) as u64) << 42 | 1 << 41 | low,
                };
                let e = (exp_lo + rng.int(0, 20) as i32).clamp(-1022, 1023);
                let v = f64::from_bits(((e + 1023) as u64) << 52 | (frac & ((1 << 52) - 1)));
                if rng.int(0, 1) == 0 { -v } else { v }
            })
            .collect();
        let longs: Vec<i64> = (0..n).map(|_| any_int(&mut rng, 63)).collect();
        let ints: Vec<i32> = (0..n).map(|_| any_int(&mut rng, 31) as i32).collect();
        for dt in [F16, BF16] {
            let got = Array::from_vec(floats.clone(), &[n])?.astype(dt)?.astype(F64)?.to_vec::<f64>()?;
            for (&v, &g) in floats.iter().zip(&got) {
                proptest::prop_assert_eq!(g, float_model(v, dt), "{:e} to {:?}", v, dt);
            }
            let got = Array::from_vec(longs.clone(), &[n])?.astype(dt)?.astype(F64)?.to_vec::<f64>()?;
            for (&v, &g) in longs.iter().zip(&got) {
                proptest::prop_assert_eq!(g, int_model(v, dt), "{} to {:?}", v, dt);
            }
            let got = Array::from_vec(ints.clone(), &[n])?.astype(dt)?.astype(F64)?.to_vec::<f64>()?;
            for (&v, &g) in ints.iter().zip(&got) {
                proptest::prop_assert_eq!(g, int_model(i64::from(v), dt), "{} to {:?}", v, dt);
            }
        }
    }
}
