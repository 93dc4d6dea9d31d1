//! Generated code calls the scalar code only for the lanes its vector path
//! does not cover. One test in its own process: it counts the calls
//! process-wide ([`jit::fix_calls`]), which a test running beside it could
//! add to.

use kiln::backend::cpu::jit;
use kiln::{compile, Array, Result};

type F2 = fn(&Array, &Array) -> Result<Array>;

#[test]
fn ordinary_lanes_take_the_vector_path_alone() -> Result<()> {
    if !jit::enabled() {
        return Ok(());
    }
    // Floor division and remainder, f32 and f64, whose quotients are well
    // inside the vector path's range, at every tail length around the
    // vector widths; then one lane beyond it, which must call out.
    let cases: [(&str, F2, F2); 2] = [
        ("floor_divide", |x, y| x.floor_divide(y), |x, y| x.floor_divide(y)),
        ("remainder", |x, y| x.remainder(y), |x, y| x.remainder(y)),
    ];
    for (name, f32_op, f64_op) in cases {
        for wide in [false, true] {
            let f = compile(if wide { f64_op } else { f32_op });
            for n in [1usize, 7, 8, 9, 15, 16, 17, 33, 1000] {
                let xs: Vec<f64> = (0..n).map(|i| i as f64 * 7.25 - 3000.0).collect();
                let ys: Vec<f64> = (0..n).map(|i| 0.75 + (i % 5) as f64).collect();
                let dtype = if wide { kiln::DType::F64 } else { kiln::DType::F32 };
                let x = Array::from_slice(&xs, &[n])?.astype(dtype)?;
                let y = Array::from_slice(&ys, &[n])?.astype(dtype)?;
                kiln::eval(&[&x, &y])?;
                let before = jit::fix_calls();
                f.call((&x, &y))?.eval()?;
                assert_eq!(jit::fix_calls(), before, "{name}, f64 {wide}, {n} elements: a call out");
                let mut big = xs.clone();
                big[n / 2] = 1e30;
                let x = Array::from_slice(&big, &[n])?.astype(dtype)?;
                kiln::eval(&[&x])?;
                f.call((&x, &y))?.eval()?;
                assert!(
                    jit::fix_calls() > before,
                    "{name}, f64 {wide}, {n} elements: a huge quotient did not call out"
                );
            }
        }
    }
    // A call out among the values computed once before the loop (both
    // operands broadcast): it runs, and its lane is the scalar code's.
    for wide in [false, true] {
        let dtype = if wide { kiln::DType::F64 } else { kiln::DType::F32 };
        let f = compile(|x: &Array, a: &Array, b: &Array| x + a.floor_divide(b)?);
        let x = Array::from_slice(&[0.5f64; 37], &[37])?.astype(dtype)?;
        let (a, b) = (Array::scalar(1e30f64).astype(dtype)?, Array::scalar(3.0f64).astype(dtype)?);
        kiln::eval(&[&x, &a, &b])?;
        let before = jit::fix_calls();
        let got = f.call((&x, &a, &b))?.astype(kiln::DType::F64)?.to_vec::<f64>()?;
        assert!(jit::fix_calls() > before, "f64 {wide}: the invariant call out did not run");
        let want = jit::interpreted(|| (&x + a.floor_divide(&b)?)?.astype(kiln::DType::F64)?.to_vec::<f64>())?;
        assert_eq!(got, want, "f64 {wide}: an invariant huge quotient");
    }
    Ok(())
}
