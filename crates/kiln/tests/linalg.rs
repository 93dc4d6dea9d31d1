//! `matmul` against a plain f64 triple loop written here, on every layout the
//! kernel can meet: transposed, sliced (negative steps), broadcast, batched.

use kiln::backend::cpu::matmul::uses_threads;
use kiln::{Array, DType, Result};

/// Deterministic values in [-2, 2] on a 1/16 grid (exact in every float dtype
/// but bf16, which rounds them to 8 bits).
fn values(n: usize, seed: u64) -> Vec<f64> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 33) % 65) as f64 / 16.0 - 2.0
        })
        .collect()
}

/// Small integers in [-7, 7].
fn ints(n: usize, seed: u64) -> Vec<f64> {
    values(n, seed).into_iter().map(|v| (v * 3.5).round()).collect()
}

fn array(vals: &[f64], shape: &[usize], dtype: DType) -> Result<Array> {
    Array::from_slice(vals, shape)?.astype(dtype)
}

/// The elements as f64, row-major.
fn read(a: &Array) -> Result<Vec<f64>> {
    a.astype(DType::F64)?.to_vec::<f64>()
}

/// Reference `a @ b` for operands of >= 2 dims with NumPy batch broadcasting.
/// Returns the product, the sum of |a||b| terms per element (for tolerances)
/// and the output shape.
fn reference(a: &[f64], sa: &[usize], b: &[f64], sb: &[usize]) -> (Vec<f64>, Vec<f64>, Vec<usize>) {
    let (m, k) = (sa[sa.len() - 2], sa[sa.len() - 1]);
    let n = sb[sb.len() - 1];
    assert_eq!(k, sb[sb.len() - 2]);
    let (ba, bb) = (&sa[..sa.len() - 2], &sb[..sb.len() - 2]);
    let nd = ba.len().max(bb.len());
    let pad = |s: &[usize]| -> Vec<usize> { std::iter::repeat_n(1, nd - s.len()).chain(s.iter().copied()).collect() };
    let (pa, pb) = (pad(ba), pad(bb));
    let batch: Vec<usize> = pa.iter().zip(&pb).map(|(&x, &y)| x.max(y)).collect();
    let nb: usize = batch.iter().product();
    let mut out = vec![0.0; nb * m * n];
    let mut mag = vec![0.0; nb * m * n];
    for bi in 0..nb {
        // Multi-index of the batch, then each operand's own batch index.
        let mut rem = bi;
        let mut idx = vec![0; nd];
        for d in (0..nd).rev() {
            idx[d] = rem % batch[d];
            rem /= batch[d];
        }
        let lin = |p: &[usize]| idx.iter().zip(p).fold(0, |acc, (&i, &d)| acc * d + if d == 1 { 0 } else { i });
        let (ia, ib) = (lin(&pa), lin(&pb));
        for i in 0..m {
            for j in 0..n {
                let (mut s, mut g) = (0.0, 0.0);
                for p in 0..k {
                    let x = a[ia * m * k + i * k + p];
                    let y = b[ib * k * n + p * n + j];
                    s += x * y;
                    g += (x * y).abs();
                }
                out[bi * m * n + i * n + j] = s;
                mag[bi * m * n + i * n + j] = g;
            }
        }
    }
    let mut shape = batch;
    shape.extend([m, n]);
    (out, mag, shape)
}

fn tolerance(dtype: DType) -> f64 {
    match dtype {
        DType::F64 => 1e-12,
        DType::F32 => 1e-5,
        DType::F16 | DType::BF16 => 1e-2,
        _ => 0.0,
    }
}

/// Checks `a @ b` (any layouts) against the reference computed from the
/// operands' values.
fn check(a: &Array, b: &Array) -> Result<()> {
    let got = kiln::matmul(a, b)?;
    let (va, vb) = (read(a)?, read(b)?);
    let (want, mag, shape) = reference(&va, a.shape(), &vb, b.shape());
    assert_eq!(got.shape(), &shape[..], "shape of {:?} @ {:?}", a.shape(), b.shape());
    assert_eq!(got.dtype(), a.dtype());
    let g = read(&got)?;
    let tol = tolerance(a.dtype());
    for (i, ((&x, &w), &m)) in g.iter().zip(&want).zip(&mag).enumerate() {
        assert!(
            (x - w).abs() <= tol * m.max(1.0),
            "{} {:?} @ {:?} element {i}: got {x}, want {w}",
            a.dtype(),
            a.shape(),
            b.shape()
        );
    }
    Ok(())
}

const FLOATS: [DType; 4] = [DType::F32, DType::F64, DType::F16, DType::BF16];
const ALL: [DType; 6] = [DType::F32, DType::F64, DType::F16, DType::BF16, DType::I32, DType::I64];

fn gen(dtype: DType, n: usize, seed: u64) -> Vec<f64> {
    if dtype.is_float() {
        values(n, seed)
    } else {
        ints(n, seed)
    }
}

#[test]
fn plain_products_every_dtype() -> Result<()> {
    for dt in ALL {
        for &(m, k, n) in &[(1, 1, 1), (7, 13, 5), (3, 2, 9), (17, 33, 19), (1, 40, 1), (40, 3, 1)] {
            let a = array(&gen(dt, m * k, 1), &[m, k], dt)?;
            let b = array(&gen(dt, k * n, 2), &[k, n], dt)?;
            check(&a, &b)?;
        }
    }
    Ok(())
}

#[test]
fn transposed_and_sliced_operands() -> Result<()> {
    for dt in ALL {
        let x = array(&gen(dt, 13 * 7, 3), &[13, 7], dt)?; // x.t(): 7 x 13
        let y = array(&gen(dt, 5 * 13, 4), &[5, 13], dt)?; // y.t(): 13 x 5
        check(&x.t()?, &y.t()?)?;
        let z = array(&gen(dt, 13 * 5, 5), &[13, 5], dt)?;
        check(&x.t()?, &z)?;
        // Reversed rows and columns (negative strides) and step-2 slices.
        let big = array(&gen(dt, 14 * 26, 6), &[14, 26], dt)?;
        let rev = kiln::slice_axis(&kiln::slice_axis(&big, 0, None, None, -1)?, 1, None, None, -2)?; // 14 x 13
        check(&rev, &z)?;
        let every_other = kiln::slice_axis(&big, 1, Some(1), None, 2)?; // 14 x 13
        check(&kiln::slice_axis(&x.t()?, 0, Some(-1), None, -1)?, &every_other.t()?)?; // (7,13) reversed @ (13,14)
        let cols = kiln::slice_axis(&big, 1, Some(3), Some(8), 1)?; // 14 x 5, row stride 26
        let left = array(&gen(dt, 4 * 14, 7), &[4, 14], dt)?;
        check(&left, &cols)?;
        check(&kiln::slice_axis(&left, 1, None, None, -1)?, &kiln::slice_axis(&cols, 1, None, None, -1)?)?;
    }
    Ok(())
}

#[test]
fn broadcast_operands_with_zero_strides() -> Result<()> {
    for dt in ALL {
        // Every stride 0 (a broadcast scalar) and a broadcast row.
        let ones = kiln::ones(&[6, 9], dt)?;
        let b = array(&gen(dt, 9 * 4, 8), &[9, 4], dt)?;
        check(&ones, &b)?;
        let row = array(&gen(dt, 9, 9), &[1, 9], dt)?.broadcast_to(&[5, 9])?;
        check(&row, &b)?;
        let col = array(&gen(dt, 9, 10), &[9, 1], dt)?.broadcast_to(&[9, 3])?;
        check(&ones, &col)?;
    }
    Ok(())
}

#[test]
fn vector_operands() -> Result<()> {
    for dt in ALL {
        let v = gen(dt, 4, 11);
        let m = gen(dt, 4 * 3, 12);
        let (va, ma) = (array(&v, &[4], dt)?, array(&m, &[4, 3], dt)?);
        let tol = tolerance(dt);
        let close = |x: f64, w: f64, mag: f64| (x - w).abs() <= tol * mag.max(1.0);
        // Values as kiln holds them (bf16 rounds the inputs).
        let (v, m) = (read(&va)?, read(&ma)?);

        // 1-D @ 2-D: (4) @ (4, 3) -> (3)
        let r = kiln::matmul(&va, &ma)?;
        assert_eq!(r.shape(), &[3]);
        for (j, x) in read(&r)?.into_iter().enumerate() {
            let w: f64 = (0..4).map(|p| v[p] * m[p * 3 + j]).sum();
            let g: f64 = (0..4).map(|p| (v[p] * m[p * 3 + j]).abs()).sum();
            assert!(close(x, w, g), "{dt} vec@mat {j}: {x} vs {w}");
        }
        // 2-D @ 1-D: (3, 4) @ (4) -> (3), with the matrix transposed.
        let r = kiln::matmul(&ma.t()?, &va)?;
        assert_eq!(r.shape(), &[3]);
        for (i, x) in read(&r)?.into_iter().enumerate() {
            let w: f64 = (0..4).map(|p| m[p * 3 + i] * v[p]).sum();
            let g: f64 = (0..4).map(|p| (m[p * 3 + i] * v[p]).abs()).sum();
            assert!(close(x, w, g), "{dt} mat@vec {i}: {x} vs {w}");
        }
        // 1-D @ 1-D: a 0-d dot product.
        let r = kiln::matmul(&va, &va)?;
        assert_eq!(r.shape(), &[] as &[usize]);
        let w: f64 = v.iter().map(|x| x * x).sum();
        let x = read(&r)?[0];
        assert!(close(x, w, w), "{dt} dot: {x} vs {w}");
        // A 1-D operand against a batch: (4) @ (2, 4, 3) -> (2, 3).
        let batch = array(&gen(dt, 2 * 4 * 3, 13), &[2, 4, 3], dt)?;
        let r = kiln::matmul(&va, &batch)?;
        assert_eq!(r.shape(), &[2, 3]);
        let bv = read(&batch)?;
        for (idx, x) in read(&r)?.into_iter().enumerate() {
            let (bi, j) = (idx / 3, idx % 3);
            let w: f64 = (0..4).map(|p| v[p] * bv[bi * 12 + p * 3 + j]).sum();
            let g: f64 = (0..4).map(|p| (v[p] * bv[bi * 12 + p * 3 + j]).abs()).sum();
            assert!(close(x, w, g), "{dt} vec@batch {idx}: {x} vs {w}");
        }
    }
    Ok(())
}

#[test]
fn batched_with_broadcasting() -> Result<()> {
    for dt in ALL {
        let a = array(&gen(dt, 2 * 3 * 4, 14), &[2, 1, 3, 4], dt)?;
        let b = array(&gen(dt, 5 * 4 * 2, 15), &[5, 4, 2], dt)?;
        assert_eq!(kiln::matmul(&a, &b)?.shape(), &[2, 5, 3, 2]);
        check(&a, &b)?;
        // A plain matrix against a batch, and a transposed batch.
        let m = array(&gen(dt, 3 * 4, 16), &[3, 4], dt)?;
        check(&m, &b)?;
        let bt = array(&gen(dt, 5 * 2 * 4, 17), &[5, 2, 4], dt)?.permute(&[0, 2, 1])?;
        check(&a, &bt)?;
        // A batch dim broadcast by a view (stride 0) rather than by size 1.
        let wide = array(&gen(dt, 3 * 4, 18), &[3, 4], dt)?.broadcast_to(&[5, 3, 4])?;
        check(&wide, &b)?;
    }
    Ok(())
}

#[test]
fn empty_and_zero_inner_dims() -> Result<()> {
    for dt in ALL {
        // k = 0: every element is a sum over nothing.
        let a = kiln::zeros(&[3, 0], dt)?;
        let b = kiln::zeros(&[0, 4], dt)?;
        let r = kiln::matmul(&a, &b)?;
        assert_eq!(r.shape(), &[3, 4]);
        assert_eq!(read(&r)?, vec![0.0; 12]);
        // k = 0 in a batch, and with a 1-D operand.
        let r = kiln::matmul(&kiln::zeros(&[2, 3, 0], dt)?, &kiln::zeros(&[0, 2], dt)?)?;
        assert_eq!(read(&r)?, vec![0.0; 12]);
        let r = kiln::matmul(&kiln::zeros(&[0], dt)?, &kiln::zeros(&[0], dt)?)?;
        assert_eq!(read(&r)?, vec![0.0]);
        // m = 0, n = 0 and an empty batch give empty results.
        let ones = |s: &[usize]| kiln::ones(s, dt);
        assert_eq!(kiln::matmul(&ones(&[0, 3])?, &ones(&[3, 4])?)?.shape(), &[0, 4]);
        assert!(read(&kiln::matmul(&ones(&[0, 3])?, &ones(&[3, 4])?)?)?.is_empty());
        assert!(read(&kiln::matmul(&ones(&[2, 3])?, &ones(&[3, 0])?)?)?.is_empty());
        let r = kiln::matmul(&ones(&[0, 2, 3])?, &ones(&[3, 4])?)?;
        assert_eq!(r.shape(), &[0, 2, 4]);
        assert!(read(&r)?.is_empty());
    }
    Ok(())
}

#[test]
fn integer_products_are_exact_and_wrap() -> Result<()> {
    // i64 beyond 2^53 must not go through floats.
    let big = (1i64 << 40) + 7;
    let a = Array::from_slice(&[big, 3, -5, big], &[2, 2])?;
    let b = Array::from_slice(&[big - 1, 2, 1, big], &[2, 2])?;
    let r = kiln::matmul(&a, &b)?.to_vec::<i64>()?;
    let want = [
        big.wrapping_mul(big - 1).wrapping_add(3),
        (2 * big).wrapping_add(3i64.wrapping_mul(big)),
        (-5i64).wrapping_mul(big - 1).wrapping_add(big),
        -10 + big.wrapping_mul(big),
    ];
    assert_eq!(r, want);
    // u8 and u32 wrap like their elementwise `*` and `+`.
    let a8: Vec<u8> = (0..12).map(|i| (i * 37 + 200) as u8).collect();
    let b8: Vec<u8> = (0..12).map(|i| (i * 91 + 13) as u8).collect();
    let r = kiln::matmul(&Array::from_slice(&a8, &[3, 4])?, &Array::from_slice(&b8, &[4, 3])?)?.to_vec::<u8>()?;
    for i in 0..3 {
        for j in 0..3 {
            let w: u64 = (0..4).map(|p| a8[i * 4 + p] as u64 * b8[p * 3 + j] as u64).sum();
            assert_eq!(r[i * 3 + j], w as u8);
        }
    }
    let a32: Vec<u32> = (0..6).map(|i| 4_000_000_000u32.wrapping_add(i * 12345)).collect();
    let r = kiln::matmul(&Array::from_slice(&a32, &[2, 3])?, &Array::from_slice(&a32, &[3, 2])?)?.to_vec::<u32>()?;
    for i in 0..2 {
        for j in 0..2 {
            let w: u128 = (0..3).map(|p| a32[i * 3 + p] as u128 * a32[p * 2 + j] as u128).sum();
            assert_eq!(r[i * 2 + j], w as u32);
        }
    }
    Ok(())
}

#[test]
fn operands_are_promoted() -> Result<()> {
    let a = Array::from_slice(&[1i32, 2, 3, 4], &[2, 2])?;
    let b = Array::from_slice(&[0.5f32, 1.0, 1.5, 2.0], &[2, 2])?;
    let r = kiln::matmul(&a, &b)?;
    assert_eq!(r.dtype(), DType::F32);
    assert_eq!(r.to_vec::<f32>()?, vec![3.5, 5.0, 7.5, 11.0]);
    let r = a.matmul(&a.astype(DType::I64)?)?;
    assert_eq!(r.dtype(), DType::I64);
    assert_eq!(r.to_vec::<i64>()?, vec![7, 10, 15, 22]);
    Ok(())
}

#[test]
fn shape_and_dtype_errors() -> Result<()> {
    let a = kiln::ones(&[32, 128], DType::F32)?;
    let b = kiln::ones(&[256, 128], DType::F32)?;
    let m = kiln::matmul(&a, &b).unwrap_err().to_string();
    assert!(m.contains("matmul") && m.contains("(32, 128)") && m.contains("(256, 128)"), "{m}");
    // 1-D operands are named as given, not as expanded.
    let m = kiln::matmul(&kiln::ones(&[3], DType::F32)?, &kiln::ones(&[4], DType::F32)?).unwrap_err().to_string();
    assert!(m.contains("matmul") && m.contains("(3)") && m.contains("(4)"), "{m}");
    let m = kiln::matmul(&kiln::ones(&[2, 3], DType::F32)?, &kiln::ones(&[4], DType::F32)?).unwrap_err().to_string();
    assert!(m.contains("(2, 3)") && m.contains("(4)"), "{m}");
    // Batch dims that do not broadcast.
    let m = kiln::matmul(&kiln::ones(&[2, 3, 4], DType::F32)?, &kiln::ones(&[3, 4, 5], DType::F32)?)
        .unwrap_err()
        .to_string();
    assert!(m.contains("matmul") && m.contains("(2)") && m.contains("(3)"), "{m}");
    // 0-d operands and bool operands.
    let m = kiln::matmul(&Array::scalar(1.0f32), &a).unwrap_err().to_string();
    assert!(m.contains("matmul") && m.contains("()"), "{m}");
    let t = kiln::ones(&[2, 2], DType::Bool)?;
    let m = kiln::matmul(&t, &t).unwrap_err().to_string();
    assert!(m.contains("matmul") && m.contains("bool"), "{m}");
    Ok(())
}

#[test]
fn threading_policy() {
    // The 32x128x256 product runs on the calling thread.
    assert!(!uses_threads(1, 32, 256, 128));
    assert!(!uses_threads(1, 64, 64, 64));
    assert!(uses_threads(1, 300, 250, 200));
    assert!(uses_threads(64, 64, 64, 64)); // a batch large enough as a whole
    assert!(!uses_threads(4, 32, 32, 32));
}

#[test]
fn large_products_take_the_parallel_paths() -> Result<()> {
    // One big product splits its output into a block per team thread, each
    // a single-threaded gemm call: by rows when `a` is the larger operand,
    // by columns when `b` is, with blocks meeting at sizes that are not
    // multiples of the split's unit, operands transposed or sliced.
    assert!(uses_threads(1, 300, 250, 200));
    for (m, k, n) in [(300, 200, 250), (250, 200, 301)] {
        for dt in [DType::F32, DType::F64, DType::F16, DType::I32] {
            let a = array(&gen(dt, m * k, 20), &[m, k], dt)?;
            let b = array(&gen(dt, n * k, 21), &[n, k], dt)?.t()?;
            check(&a, &b)?;
            let wide = array(&gen(dt, (m + 3) * 2 * k, 22), &[m + 3, 2 * k], dt)?;
            let sliced = kiln::slice_axis(&kiln::slice_axis(&wide, 0, Some(3), None, 1)?, 1, None, None, -2)?;
            check(&sliced, &array(&gen(dt, k * n, 23), &[k, n], dt)?)?;
        }
    }
    // Many small products: the batch is split across threads.
    assert!(uses_threads(64, 64, 64, 64) && !uses_threads(1, 64, 64, 64));
    for dt in FLOATS.into_iter().chain([DType::I64]) {
        let a = array(&gen(dt, 64 * 64 * 64, 22), &[64, 64, 64], dt)?;
        let b = array(&gen(dt, 64 * 64, 23), &[64, 64], dt)?;
        check(&a, &b)?;
    }
    Ok(())
}

// ---- the f32 kernels: kiln's AVX-512 microkernel and the portable one ----

use kiln::backend::cpu::matmul::sgemm::{self, with_level, Level};

/// Every f32 kernel level (one the CPU lacks runs as the best one it has
/// below it).
const LEVELS: [Level; 3] = [Level::Avx512, Level::Avx2, Level::Portable];

/// Checks f32 `a @ b` against the f64 reference with a relative tolerance of
/// 1e-5 * sqrt(k) of the sum of |a_ip * b_pj| terms (values here are on a
/// 1/16 grid, so every product is exact and only the sums round).
fn check_f32(a: &Array, b: &Array) -> Result<()> {
    let got = kiln::matmul(a, b)?;
    let (va, vb) = (read(a)?, read(b)?);
    let (want, mag, shape) = reference(&va, a.shape(), &vb, b.shape());
    assert_eq!(got.shape(), &shape[..]);
    let k = a.shape()[a.ndim() - 1] as f64;
    let tol = 1e-5 * k.sqrt().max(1.0);
    for (i, ((&x, &w), &m)) in read(&got)?.iter().zip(&want).zip(&mag).enumerate() {
        assert!((x - w).abs() <= tol * m.max(1.0), "{:?} @ {:?} element {i}: got {x}, want {w}", a.shape(), b.shape());
    }
    Ok(())
}

const SIZES: [usize; 15] = [1, 2, 3, 7, 8, 13, 16, 31, 32, 33, 64, 65, 127, 129, 300];

#[test]
fn f32_kernels_on_many_shapes() -> Result<()> {
    for level in LEVELS {
        with_level(level, || -> Result<()> {
            for (im, &m) in SIZES.iter().enumerate() {
                for (jn, &n) in SIZES.iter().enumerate() {
                    // Every (m, n) with a k that cycles through the sizes, and
                    // every k for the edge-heavy (m, n) pairs.
                    let ks: Vec<usize> = if [3, 33, 129].contains(&m) && [7, 31, 65].contains(&n) {
                        SIZES.to_vec()
                    } else {
                        vec![SIZES[(im * 7 + jn * 3) % SIZES.len()]]
                    };
                    for k in ks {
                        let a = array(&values(m * k, (m * 31 + k) as u64), &[m, k], DType::F32)?;
                        let b = array(&values(k * n, (n * 17 + k) as u64), &[k, n], DType::F32)?;
                        check_f32(&a, &b)?;
                    }
                }
            }
            Ok(())
        })?;
    }
    Ok(())
}

#[test]
fn f32_kernels_on_strided_broadcast_and_batched_operands() -> Result<()> {
    for level in LEVELS {
        with_level(level, || -> Result<()> {
            let f = DType::F32;
            let x = array(&values(70 * 33, 1), &[70, 33], f)?;
            let y = array(&values(33 * 45, 2), &[33, 45], f)?;
            check_f32(&x, &y)?;
            // Both transposed: a column-strided b.
            check_f32(&y.t()?, &x.t()?)?;
            // Reversed rows and columns, step-2 slices.
            let rev = kiln::slice_axis(&kiln::slice_axis(&x, 0, None, None, -1)?, 1, None, None, -1)?;
            check_f32(&rev, &kiln::slice_axis(&y, 0, None, None, -1)?)?;
            let big = array(&values(66 * 90, 3), &[66, 90], f)?;
            let every_other = kiln::slice_axis(&kiln::slice_axis(&big, 0, Some(1), None, 2)?, 1, None, None, 2)?; // 33 x 45
            check_f32(&x, &every_other)?;
            check_f32(&x, &kiln::slice_axis(&every_other, 1, None, None, -1)?)?;
            // Broadcast (stride 0) operands.
            let row = array(&values(33, 4), &[1, 33], f)?.broadcast_to(&[40, 33])?;
            check_f32(&row, &y)?;
            let col = array(&values(33, 5), &[33, 1], f)?.broadcast_to(&[33, 50])?;
            check_f32(&x, &col)?;
            check_f32(&kiln::ones(&[9, 33], f)?, &y)?;
            // Batches, broadcast batch dims.
            let xb = array(&values(3 * 17 * 33, 6), &[3, 17, 33], f)?;
            check_f32(&xb, &y)?;
            let yb = array(&values(2 * 33 * 20, 7), &[2, 1, 33, 20], f)?;
            check_f32(&xb, &yb)?;
            Ok(())
        })?;
    }
    Ok(())
}

/// Products large enough to split over the team (with two or more
/// threads): by rows, by columns of `b` read in place (any vector of 16
/// columns, so parts end in panels 1, 2 or 3 vectors wide), and by whole
/// panels of a packed (transposed) `b`.
#[test]
fn f32_team_splits_by_rows_vectors_and_panels() -> Result<()> {
    let f = DType::F32;
    for (m, k, n) in [(32, 128, 256), (32, 128, 200), (8, 200, 130), (9, 150, 100), (300, 60, 16)] {
        let a = array(&values(m * k, (m + k) as u64), &[m, k], f)?;
        let vb = values(k * n, (k + n) as u64);
        check_f32(&a, &array(&vb, &[k, n], f)?)?;
        // A `k x n` view of an `n x k` array: column stride `k`, so packed.
        let stored: Vec<f64> = (0..n * k).map(|i| vb[(i % k) * n + i / k]).collect();
        check_f32(&a, &array(&stored, &[n, k], f)?.t()?)?;
    }
    Ok(())
}

/// kiln's kernels sum each element of a product as one chain of fused
/// multiply-adds in the order of `k`, whatever the operands' layouts: a
/// transposed, reversed or broadcast view gives the product of its
/// contiguous copy bit for bit (so a backend that materializes views
/// computes the same numbers). Values off the 1/16 grid, so the order of
/// the sums shows in the last bits.
#[test]
fn f32_own_kernels_give_the_same_bits_for_any_layout() -> Result<()> {
    let contiguous = |a: &Array| -> Result<Array> { Array::from_slice(&a.to_vec::<f32>()?, a.shape()) };
    let odd = |n: usize, seed: u64| -> Vec<f64> {
        (0..n).map(|i| ((i as u64 * 2654435761 + seed * 97) % 1000) as f64 / 997.0 - 0.37).collect()
    };
    for level in [Level::Avx512, Level::Avx2] {
        if sgemm::with_level(level, sgemm::level) != level {
            continue;
        }
        for (m, k, n) in [(4, 6, 4), (13, 70, 37), (32, 128, 256), (7, 300, 9)] {
            let x = array(&odd(m * k, 1), &[m, k], DType::F32)?;
            let wt = array(&odd(n * k, 2), &[n, k], DType::F32)?;
            let w = wt.t()?; // k x n, column-strided: packed
            let xr = kiln::slice_axis(&array(&odd(m * k, 3), &[m, k], DType::F32)?, 0, None, None, -1)?;
            let bias = array(&odd(n, 4), &[n], DType::F32)?;
            with_level(level, || -> Result<()> {
                for (a, b) in [(&x, &w), (&xr, &w), (&x.t()?.t()?, &contiguous(&w)?)] {
                    let got = kiln::matmul(a, b)?.to_vec::<f32>()?;
                    let want = kiln::matmul(&contiguous(a)?, &contiguous(b)?)?.to_vec::<f32>()?;
                    let same = got.iter().zip(&want).all(|(p, q)| p.to_bits() == q.to_bits());
                    assert!(same, "{level:?} {m}x{k}x{n}: a view's product differs from its copy's");
                    let f = kiln::compile(|a: &Array, b: &Array, c: &Array| a.matmul(b)? + c);
                    let got = f.call((a, b, &bias))?.to_vec::<f32>()?;
                    let want = f.call((&contiguous(a)?, &contiguous(b)?, &bias))?.to_vec::<f32>()?;
                    assert_eq!(got, want, "{level:?} {m}x{k}x{n} with a bias");
                }
                Ok(())
            })?;
        }
    }
    Ok(())
}

#[test]
fn f32_kernels_propagate_nan_and_inf() -> Result<()> {
    for level in LEVELS {
        with_level(level, || -> Result<()> {
            let (m, k, n) = (9, 20, 37);
            let mut va = values(m * k, 11);
            va[2 * k + 5] = f64::NAN; // row 2 becomes NaN
            va[4 * k + 3] = f64::INFINITY; // row 4: inf * b[3, j]
            let mut vb = values(k * n, 12);
            vb[3 * n + 7] = 0.0; // inf * 0 = NaN at (4, 7)
            vb[3 * n + 8] = 0.5; // +inf at (4, 8)
            vb[3 * n + 9] = -0.5; // -inf at (4, 9)
            let a = array(&va, &[m, k], DType::F32)?;
            let b = array(&vb, &[k, n], DType::F32)?;
            let got = read(&kiln::matmul(&a, &b)?)?;
            let (want, _, _) = reference(&va, &[m, k], &vb, &[k, n]);
            for (i, (&x, &w)) in got.iter().zip(&want).enumerate() {
                let same = (x.is_nan() && w.is_nan()) || (x.is_infinite() && x == w) || (x - w).abs() <= 1e-3;
                assert!(same, "{level:?} element {i}: got {x}, want {w}");
            }
            assert!(got[2 * n..3 * n].iter().all(|x| x.is_nan()));
            assert!(got[4 * n + 7].is_nan() && got[4 * n + 8] == f64::INFINITY && got[4 * n + 9] == f64::NEG_INFINITY);
            Ok(())
        })?;
    }
    Ok(())
}

/// `x @ w + bias` compiled (the bias seeds the product's output) against
/// the reference plus the bias, for bias shapes along rows, columns, both,
/// batched, and with an activation after the add. The larger sizes split
/// over the team's threads, whichever way leaves the busiest thread less
/// work: by row tiles (150 rows,
/// 40 columns) and by column panels (40 rows, 150 columns; 6 rows, one
/// tile).
#[test]
fn compiled_matmul_bias_epilogue() -> Result<()> {
    for (m, k, n) in [(13, 40, 37), (150, 60, 40), (40, 60, 150), (6, 80, 600)] {
        matmul_bias_epilogue(m, k, n)?;
    }
    Ok(())
}

fn matmul_bias_epilogue(m: usize, k: usize, n: usize) -> Result<()> {
    let f = DType::F32;
    let vx = values(m * k, 30);
    let vw = values(k * n, 31);
    let x = array(&vx, &[m, k], f)?;
    let w = array(&vw, &[k, n], f)?;
    let (prod, mag, _) = reference(&vx, &[m, k], &vw, &[k, n]);
    for level in LEVELS {
        for bias_shape in [vec![n], vec![1, n], vec![m, 1], vec![m, n], vec![]] {
            let nb: usize = bias_shape.iter().product();
            let vb = values(nb, 32);
            let b = array(&vb, &bias_shape, f)?;
            let bias_at = |i: usize, j: usize| match bias_shape.as_slice() {
                [_] | [1, _] => vb[j],
                [_, 1] => vb[i],
                [_, _] => vb[i * n + j],
                _ => vb[0],
            };
            let add = kiln::compile(|x: &Array, w: &Array, b: &Array| x.matmul(w)? + b);
            let add_first = kiln::compile(|x: &Array, w: &Array, b: &Array| b + &x.matmul(w)?);
            let relu = kiln::compile(|x: &Array, w: &Array, b: &Array| (x.matmul(w)? + b)?.maximum(0.0f32));
            // The bare product is also an output: it must not include the bias.
            let both = kiln::compile(|x: &Array, w: &Array, b: &Array| {
                let p = x.matmul(w)?;
                let s = (&p + b)?;
                Ok((p, s))
            });
            let (g_add, g_first, g_relu, (g_p, g_s)) = with_level(level, || -> Result<_> {
                Ok((
                    read(&add.call((&x, &w, &b))?)?,
                    read(&add_first.call((&x, &w, &b))?)?,
                    read(&relu.call((&x, &w, &b))?)?,
                    {
                        let (p, s) = both.call((&x, &w, &b))?;
                        (read(&p)?, read(&s)?)
                    },
                ))
            })?;
            for i in 0..m {
                for j in 0..n {
                    let e = i * n + j;
                    let tol = 1e-5 * (k as f64).sqrt() * (mag[e] + bias_at(i, j).abs()).max(1.0);
                    let want = prod[e] + bias_at(i, j);
                    let ctx = format!("{level:?} bias {bias_shape:?} at ({i}, {j})");
                    assert!((g_add[e] - want).abs() <= tol, "{ctx}: add {} vs {want}", g_add[e]);
                    assert!((g_first[e] - want).abs() <= tol, "{ctx}: bias first {} vs {want}", g_first[e]);
                    assert!((g_relu[e] - want.max(0.0)).abs() <= tol, "{ctx}: relu {} vs {want}", g_relu[e]);
                    assert!((g_p[e] - prod[e]).abs() <= tol, "{ctx}: bare product {} vs {}", g_p[e], prod[e]);
                    assert!((g_s[e] - want).abs() <= tol, "{ctx}: sum {} vs {want}", g_s[e]);
                }
            }
        }
    }
    // A batched product with a per-batch bias, and an f64 product (no seeding).
    let xb = array(&values(2 * m * k, 33), &[2, m, k], f)?;
    let bb = array(&values(2 * n, 34), &[2, 1, n], f)?;
    let got = read(&kiln::compile(|x: &Array, w: &Array, b: &Array| x.matmul(w)? + b).call((&xb, &w, &bb))?)?;
    let (p, mag, _) = reference(&read(&xb)?, &[2, m, k], &vw, &[k, n]);
    let vbb = read(&bb)?;
    for (e, (&g, &want)) in got.iter().zip(&p).enumerate() {
        let bias = vbb[(e / (m * n)) * n + e % n];
        assert!((g - (want + bias)).abs() <= 1e-5 * (k as f64).sqrt() * mag[e].max(1.0), "batched element {e}");
    }
    let (x64, w64) = (x.astype(DType::F64)?, w.astype(DType::F64)?);
    let b64 = array(&values(n, 35), &[n], DType::F64)?;
    let got = read(&kiln::compile(|x: &Array, w: &Array, b: &Array| x.matmul(w)? + b).call((&x64, &w64, &b64))?)?;
    let vb64 = read(&b64)?;
    for (e, (&g, &want)) in got.iter().zip(&prod).enumerate() {
        assert!((g - (want + vb64[e % n])).abs() <= 1e-12 * mag[e].max(1.0), "f64 element {e}");
    }
    Ok(())
}

/// A tanh gelu written out, as users write it.
fn gelu(y: &Array) -> Result<Array> {
    let inner = ((y + &((y.square()? * y)? * 0.044715f32)?)? * 0.797_884_6_f32)?;
    (y * 0.5f32)? * (inner.tanh()? + 1.0f32)?
}

fn gelu_ref(v: f64) -> f64 {
    0.5 * v * (1.0 + (0.797_884_6 * (v + 0.044715 * v * v * v)).tanh())
}

/// Epilogues that read the biased product several times (a gelu:
/// rematerialization copies `x @ w + b` into each reader, and the product
/// stays the head of the epilogue's kernel) run on each block of rows on
/// the thread that computed it. Against the reference: one block; blocks
/// split over the team by rows for either operand larger; rows longer
/// than 2^15 (blocks of fewer than 8 rows); batched products with the
/// batch from either operand and per-batch or per-row epilogue inputs; a
/// transposed operand; two outputs.
#[test]
fn epilogues_run_on_each_block_of_rows() -> Result<()> {
    let f32 = DType::F32;
    // x's shape, w's, the epilogue input's, x read through a transpose.
    type Case = (Vec<usize>, Vec<usize>, Vec<usize>, bool);
    let cases: [Case; 9] = [
        (vec![1, 3], vec![3, 5], vec![5], false),
        (vec![9, 7], vec![7, 33], vec![9, 1], false),
        (vec![150, 60], vec![60, 40], vec![40], false),
        (vec![40, 60], vec![60, 150], vec![1, 150], false),
        (vec![40, 60], vec![60, 150], vec![40, 150], true),
        (vec![20, 2], vec![2, 40000], vec![40000], false),
        (vec![3, 37, 16], vec![16, 24], vec![3, 1, 24], false),
        (vec![37, 16], vec![2, 16, 24], vec![37, 1], true),
        (vec![2, 64, 48], vec![2, 48, 72], vec![72], false),
    ];
    // One kernel: the product heads its epilogue although the biased sum
    // has four readers.
    let (x, w, b) =
        (array(&values(24, 1), &[4, 6], f32)?, array(&values(18, 2), &[6, 3], f32)?, array(&[0.5], &[1], f32)?);
    let plan = kiln::compile(|x: &Array, w: &Array, b: &Array| gelu(&(x.matmul(w)? + b)?)).explain((&x, &w, &b))?;
    assert!(plan.contains("1 kernel(s)") && plan.contains("[fused] matmul -> add"), "{plan}");
    // Empty operands: k = 0 (the epilogue of zeros plus the bias), m = 0.
    let zero = kiln::compile(|x: &Array, w: &Array, b: &Array| gelu(&(x.matmul(w)? + b)?));
    let (x0, w0, b0) = (kiln::zeros(&[3, 0], f32)?, kiln::zeros(&[0, 4], f32)?, array(&values(4, 3), &[4], f32)?);
    let got = read(&zero.call((&x0, &w0, &b0))?)?;
    let want: Vec<f64> = (0..12).map(|e| gelu_ref(values(4, 3)[e % 4])).collect();
    assert!(got.iter().zip(&want).all(|(g, w)| (g - w).abs() <= 1e-6), "k = 0: {got:?} vs {want:?}");
    let got = zero.call((&kiln::zeros(&[0, 5], f32)?, &kiln::zeros(&[5, 4], f32)?, &b0))?;
    assert_eq!(got.shape(), &[0, 4]);
    let two = kiln::compile(|x: &Array, w: &Array, b: &Array| {
        let y = (x.matmul(w)? + b)?;
        Ok((gelu(&y)?, (&y * 2.0f32)?))
    });
    for (i, (sx, sw, sb, transposed)) in cases.iter().enumerate() {
        let (nx, nw, nb) = (sx.iter().product(), sw.iter().product(), sb.iter().product::<usize>());
        let (vx, vw, vb) = (values(nx, 40 + i as u64), values(nw, 50 + i as u64), values(nb, 60 + i as u64));
        let x = if *transposed {
            // The same values, read through a transposed view.
            let (m, k) = (sx[sx.len() - 2], sx[sx.len() - 1]);
            let mut t = vec![0.0; nx];
            for r in 0..m {
                for c in 0..k {
                    t[c * m + r] = vx[r * k + c];
                }
            }
            let mut st = sx.clone();
            st.swap(sx.len() - 2, sx.len() - 1);
            kiln::swapaxes(&array(&t, &st, f32)?, -1, -2)?
        } else {
            array(&vx, sx, f32)?
        };
        let (w, b) = (array(&vw, sw, f32)?, array(&vb, sb, f32)?);
        let (prod, mag, shape) = reference(&vx, sx, &vw, sw);
        let (g, y2) = two.call((&x, &w, &b))?;
        let (g, y2) = (read(&g)?, read(&y2)?);
        assert_eq!(g.len(), prod.len(), "case {i}");
        let (m, n) = (shape[shape.len() - 2], shape[shape.len() - 1]);
        // The epilogue input broadcast to the output: its index per element.
        let pad: Vec<usize> = std::iter::repeat_n(1, shape.len() - sb.len()).chain(sb.iter().copied()).collect();
        let bias_at = |e: usize| {
            let (mut rem, mut at, mut step) = (e, 0, 1);
            for d in (0..shape.len()).rev() {
                let idx = rem % shape[d];
                rem /= shape[d];
                if pad[d] != 1 {
                    at += idx * step;
                }
                step *= pad[d];
            }
            vb[at]
        };
        let k = sx[sx.len() - 1];
        for e in 0..prod.len() {
            let y = prod[e] + bias_at(e);
            let tol = 2e-5 * (k as f64).sqrt() * (mag[e] + y.abs()).max(1.0);
            let ctx = format!("case {i} ({m}x{k}x{n}): element {e}");
            assert!((y2[e] - 2.0 * y).abs() <= 2.0 * tol, "{ctx}: 2y {} vs {}", y2[e], 2.0 * y);
            assert!((g[e] - gelu_ref(y)).abs() <= 2.0 * tol, "{ctx}: gelu {} vs {}", g[e], gelu_ref(y));
        }
    }
    Ok(())
}

/// A product that an epilogue reads together with an op that cannot join
/// the epilogue's kernel (it needs a reduction of that kernel's output)
/// runs as a kernel of its own, and both readers see it.
#[test]
fn a_product_read_outside_its_epilogue_runs_on_its_own() -> Result<()> {
    let (m, k, n) = (24, 10, 40);
    let (vx, vw, vb) = (values(m * k, 70), values(k * n, 71), values(n, 72));
    let f32 = DType::F32;
    let (x, w, b) = (array(&vx, &[m, k], f32)?, array(&vw, &[k, n], f32)?, array(&vb, &[n], f32)?);
    let f = kiln::compile(|x: &Array, w: &Array, b: &Array| {
        let p = x.matmul(w)?;
        let s = (&p + b)?.tanh()?;
        let t = s.sum(-1, true)?;
        Ok((s, (&p * &t)?))
    });
    let (s, u) = f.call((&x, &w, &b))?;
    let (s, u) = (read(&s)?, read(&u)?);
    let (prod, mag, _) = reference(&vx, &[m, k], &vw, &[k, n]);
    for i in 0..m {
        let row: Vec<f64> = (0..n).map(|j| (prod[i * n + j] + vb[j]).tanh()).collect();
        let t: f64 = row.iter().sum();
        for (j, &r) in row.iter().enumerate() {
            let e = i * n + j;
            let tol = 1e-5 * (k as f64).sqrt() * mag[e].max(1.0);
            assert!((s[e] - r).abs() <= tol, "({i}, {j}): tanh {} vs {r}", s[e]);
            let want = prod[e] * t;
            assert!((u[e] - want).abs() <= tol * (n as f64) * t.abs().max(1.0), "({i}, {j}): {} vs {want}", u[e]);
        }
    }
    Ok(())
}

#[test]
fn the_cpu_keeps_true_f32_products_when_tf32_is_allowed() -> Result<()> {
    // The setting is a permission; the CPU has no TF32 path, so an f32
    // product keeps its bits under either.
    let a = array(&values(96 * 300, 71), &[96, 300], DType::F32)?;
    let b = array(&values(300 * 80, 72), &[300, 80], DType::F32)?;
    let old = kiln::set_matmul_precision(kiln::MatmulPrecision::Tf32);
    assert_eq!(kiln::matmul_precision(), kiln::MatmulPrecision::Tf32);
    let tf32 = kiln::matmul(&a, &b)?.to_vec::<f32>();
    kiln::set_matmul_precision(kiln::MatmulPrecision::Highest);
    let highest = kiln::matmul(&a, &b)?.to_vec::<f32>();
    kiln::set_matmul_precision(old);
    assert_eq!(tf32?, highest?);
    Ok(())
}

// ---- bf16 products: bf16 instructions where the CPU has them, else widened ----

use kiln::backend::cpu::matmul::bf16_gemm::{self, Kernel};

/// `a @ b`, evaluated at once: arrays are lazy, and a product evaluated
/// after `bf16_gemm::without` or `with_kernel` returned would run on the
/// thread's default path instead.
fn product_now(a: &Array, b: &Array) -> Result<Array> {
    let c = kiln::matmul(a, b)?;
    c.eval()?;
    Ok(c)
}

/// `a @ b` for bf16 operands whose values lie on the 1/16 grid in [-2, 2]
/// (exact in bf16): every product is exact and every sum too (multiples of
/// 1/256 far below 2^24 of them), on each bf16 kernel this CPU has and when
/// widened alike, so all paths must give the same bits, each the exact
/// result rounded once to bf16 (within 2^-8 of it, relatively).
fn check_bf16(a: &Array, b: &Array) -> Result<()> {
    let widened = bf16_gemm::without(|| product_now(a, b))?;
    let (va, vb) = (read(a)?, read(b)?);
    let (want, _, shape) = reference(&va, a.shape(), &vb, b.shape());
    let w = read(&widened)?;
    for &kernel in bf16_gemm::kernels() {
        let got = bf16_gemm::with_kernel(kernel, || product_now(a, b))?;
        assert_eq!(got.shape(), &shape[..]);
        assert_eq!(got.dtype(), DType::BF16);
        for (i, ((&x, &y), &e)) in read(&got)?.iter().zip(&w).zip(&want).enumerate() {
            let what = format!("{:?} @ {:?} element {i}", a.shape(), b.shape());
            assert_eq!(x.to_bits(), y.to_bits(), "{what}: {kernel:?} {x}, widened {y}");
            assert!((x - e).abs() <= e.abs() / 256.0, "{what}: got {x}, want {e}");
        }
    }
    let default = read(&kiln::matmul(a, b)?)?;
    assert!(default.iter().zip(&w).all(|(x, y)| x.to_bits() == y.to_bits()), "{:?} @ {:?}", a.shape(), b.shape());
    Ok(())
}

#[test]
fn bf16_kernels_are_used_where_the_cpu_has_them() {
    use kiln::backend::simd_math::{detected_level, Level};
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let flags: Vec<&str> = cpuinfo.lines().find(|l| l.starts_with("flags")).unwrap_or("").split_whitespace().collect();
    let has = |f: &str| flags.contains(&f);
    // The vector level kiln detected: below AVX-512 when `KILN_SIMD` caps
    // it, or under valgrind, whose CPU reports AVX2 (and runs no AMX).
    let avx512 = detected_level() == Level::Avx512;
    let linux = cfg!(all(target_arch = "x86_64", target_os = "linux"));
    let kernels = bf16_gemm::kernels();
    if linux && has("amx_tile") && has("amx_bf16") && avx512 {
        assert_eq!(
            kernels.first(),
            Some(&Kernel::Tiles),
            "the CPU lists amx_tile and amx_bf16, but kiln does not use AMX"
        );
        assert_eq!(bf16_gemm::default_kernel(), Some(Kernel::Tiles));
    }
    // Dot products run by default only where measured faster than `f32`.
    let default = bf16_gemm::default_kernel();
    assert!(default.is_none_or(|k| kernels.contains(&k)), "{default:?} not among {kernels:?}");
    if !kernels.contains(&Kernel::Tiles) && default.is_some() {
        assert_eq!(default, Some(Kernel::Dot));
    }
    if linux && has("avx512_bf16") && avx512 {
        assert!(kernels.contains(&Kernel::Dot), "the CPU lists avx512_bf16, but kiln does not use it");
    }
    if !avx512 {
        assert!(kernels.is_empty(), "below AVX-512 (KILN_SIMD, or an emulated CPU) the bf16 kernels stay off");
    }
    assert_eq!(bf16_gemm::kernel_for(64, 64, 64), default);
    assert_eq!(bf16_gemm::kernel_for(64, 64, 64).is_some(), bf16_gemm::available());
    assert_eq!(bf16_gemm::without(|| bf16_gemm::kernel_for(64, 64, 64)), None);
    assert_eq!(bf16_gemm::kernel_for(64, 64, 0), None);
    for &k in kernels {
        assert_eq!(bf16_gemm::with_kernel(k, || bf16_gemm::kernel_for(64, 64, 64)), Some(k));
    }
}

/// `a @ b` for f16 operands on the 1/16 grid (exact in f16): the sums are
/// exact in f32, so the result is the exact product rounded once to f16
/// (within 2^-11 of it, relatively); sums in f16 would miss that.
fn check_f16(a: &Array, b: &Array) -> Result<()> {
    let got = kiln::matmul(a, b)?;
    let (want, _, shape) = reference(&read(a)?, a.shape(), &read(b)?, b.shape());
    assert_eq!((got.shape(), got.dtype()), (&shape[..], DType::F16));
    for (i, (&x, &e)) in read(&got)?.iter().zip(&want).enumerate() {
        assert!((x - e).abs() <= e.abs() / 2048.0, "{:?} @ {:?} element {i}: got {x}, want {e}", a.shape(), b.shape());
    }
    Ok(())
}

#[test]
fn f16_products_round_once_from_f32_sums() -> Result<()> {
    let h = DType::F16;
    for (m, k, n) in [(1, 1, 1), (3, 300, 5), (17, 64, 33), (64, 100, 64), (200, 130, 150), (40, 1000, 30)] {
        let a = array(&values(m * k, (m * 7 + k) as u64), &[m, k], h)?;
        let b = array(&values(k * n, (n * 5 + k) as u64), &[k, n], h)?;
        check_f16(&a, &b)?;
        check_f16(&b.t()?, &a.t()?)?;
    }
    let xb = array(&values(3 * 17 * 65, 6), &[3, 17, 65], h)?;
    check_f16(&xb, &array(&values(2 * 65 * 20, 7), &[2, 1, 65, 20], h)?)
}

#[test]
fn bf16_products_on_many_shapes() -> Result<()> {
    const S: [usize; 12] = [1, 2, 15, 16, 17, 31, 32, 33, 48, 63, 64, 100];
    let bf = DType::BF16;
    for (im, &m) in S.iter().enumerate() {
        for (jn, &n) in S.iter().enumerate() {
            let ks: Vec<usize> = if [17, 33, 63].contains(&m) && [15, 33, 100].contains(&n) {
                S.to_vec()
            } else {
                vec![S[(im * 5 + jn * 7) % S.len()]]
            };
            for k in ks {
                let a = array(&values(m * k, (m * 29 + k) as u64), &[m, k], bf)?;
                let b = array(&values(k * n, (n * 13 + k) as u64), &[k, n], bf)?;
                check_bf16(&a, &b)?;
            }
        }
    }
    Ok(())
}

#[test]
fn bf16_products_on_strided_batched_and_large_operands() -> Result<()> {
    let bf = DType::BF16;
    let x = array(&values(70 * 65, 1), &[70, 65], bf)?;
    let y = array(&values(65 * 45, 2), &[65, 45], bf)?;
    check_bf16(&x, &y)?;
    // Transposed operands (b with unit row stride: its columns are packed
    // as columns), reversed and step-2 slices, broadcasts.
    check_bf16(&y.t()?, &x.t()?)?;
    let rev = kiln::slice_axis(&kiln::slice_axis(&x, 0, None, None, -1)?, 1, None, None, -1)?;
    check_bf16(&rev, &kiln::slice_axis(&y, 0, None, None, -1)?)?;
    let big = array(&values(130 * 90, 3), &[130, 90], bf)?;
    let every_other = kiln::slice_axis(&kiln::slice_axis(&big, 0, Some(1), None, 2)?, 1, None, None, 2)?; // 65 x 45
    check_bf16(&x, &every_other)?;
    let row = array(&values(65, 4), &[1, 65], bf)?.broadcast_to(&[40, 65])?;
    check_bf16(&row, &y)?;
    // Batches: broadcast batch dims, and many small products (split over
    // the team by matrices).
    let xb = array(&values(3 * 17 * 65, 6), &[3, 17, 65], bf)?;
    check_bf16(&xb, &array(&values(2 * 65 * 20, 7), &[2, 1, 65, 20], bf)?)?;
    check_bf16(&array(&values(64 * 64 * 64, 8), &[64, 64, 64], bf)?, &array(&values(64 * 64, 9), &[64, 64], bf)?)?;
    // Large enough to pack and compute on the team: split by columns, by
    // rows (more rows than columns), odd panel counts on both sides.
    for (m, k, n) in [(96, 200, 520), (520, 64, 40), (300, 130, 273)] {
        let a = array(&values(m * k, (m + k) as u64), &[m, k], bf)?;
        check_bf16(&a, &array(&values(k * n, (k * n) as u64), &[k, n], bf)?)?;
    }
    // The grids of parts (blocks of rows by blocks of columns) that a
    // machine of more cores splits a product into, on square and odd shapes.
    for parts in [3, 4, 7, 16] {
        for (m, k, n) in [(160, 96, 160), (300, 130, 273), (40, 70, 520)] {
            let a = array(&values(m * k, (m * parts) as u64), &[m, k], bf)?;
            let b = array(&values(k * n, (n * parts) as u64), &[k, n], bf)?;
            bf16_gemm::with_parts(parts, || check_bf16(&a, &b))?;
        }
    }
    Ok(())
}

/// Where the widened path and a bf16 kernel may differ (sums that round),
/// both stay within bf16's rounding of the f64 product, NaN and infinity
/// included.
#[test]
fn bf16_products_round_like_the_widened_path() -> Result<()> {
    let bf = DType::BF16;
    let (m, k, n) = (48, 300, 40);
    let va: Vec<f64> = (0..m * k).map(|i| ((i * 7919 % 1000) as f64 - 500.0) * 0.0137).collect();
    let vb: Vec<f64> = (0..k * n).map(|i| ((i * 104_729 % 997) as f64 - 498.0) * 0.0071).collect();
    let (a, b) = (array(&va, &[m, k], bf)?, array(&vb, &[k, n], bf)?);
    // Each kernel's product, and the widened one.
    let products = |a: &Array, b: &Array| -> Result<Vec<(String, Vec<f64>)>> {
        let mut out = vec![("widened".to_string(), read(&bf16_gemm::without(|| product_now(a, b))?)?)];
        for &kernel in bf16_gemm::kernels() {
            out.push((format!("{kernel:?}"), read(&bf16_gemm::with_kernel(kernel, || product_now(a, b))?)?));
        }
        Ok(out)
    };
    let (want, mag, _) = reference(&read(&a)?, &[m, k], &read(&b)?, &[k, n]);
    for (path, got) in products(&a, &b)? {
        for i in 0..m * n {
            let bound = want[i].abs() / 256.0 + 1e-6 * mag[i];
            assert!((got[i] - want[i]).abs() <= bound, "element {i}: {path} {}, want {}", got[i], want[i]);
        }
    }
    // A NaN in `a` spoils its row only; an infinity makes its row infinite
    // or NaN, as in the widened path.
    let mut special = va.clone();
    special[3 * k + 5] = f64::NAN;
    special[7 * k + 2] = f64::INFINITY;
    let a = array(&special, &[m, k], bf)?;
    let products = products(&a, &b)?;
    let widened = &products[0].1;
    for (path, got) in &products {
        for i in 0..m * n {
            let row = i / n;
            assert_eq!(got[i].is_nan(), widened[i].is_nan(), "element {i}: {path} {} against {}", got[i], widened[i]);
            assert_eq!(got[i].is_finite(), row != 3 && row != 7, "element {i}: {path} {}", got[i]);
        }
    }
    Ok(())
}
