//! A matrix product's epilogue is compiled once, not on every call (its
//! own test binary: the kernel counter is process-wide, and other tests
//! running in parallel would move it).

use kiln::backend::cpu::jit;
use kiln::{compile, Array, Result};

#[test]
fn matmul_epilogues_keep_their_code_across_calls() -> Result<()> {
    let f = |a: &Array, b: &Array, bias: &Array| ((a.matmul(b)? + bias)?.tanh()? * 2.0f32)?.sigmoid();
    let c = compile(f);
    let a = Array::from_vec((0..64).map(|i| (i as f32 * 0.37).sin()).collect(), &[8, 8])?;
    let b = Array::from_vec((0..64).map(|i| (i as f32 * 0.11).cos()).collect(), &[8, 8])?;
    let bias = Array::from_vec((0..8).map(|i| i as f32 * 0.1).collect(), &[8])?;
    let want = f(&a, &b, &bias)?.to_vec::<f32>()?;
    // The bias seeds the product's accumulators: equal up to rounding.
    let close = |got: Vec<f32>| got.iter().zip(&want).all(|(g, w)| (g - w).abs() <= 1e-5 * w.abs().max(1.0));
    assert!(close(c.call((&a, &b, &bias))?.to_vec::<f32>()?));
    let generated = jit::counts().0;
    if jit::enabled() {
        assert!(generated > 0, "the epilogue after the bias (tanh, multiply, sigmoid) is compiled");
    }
    for _ in 0..5 {
        assert!(close(c.call((&a, &b, &bias))?.to_vec::<f32>()?));
    }
    assert_eq!(jit::counts().0, generated, "later calls reuse the epilogue's kernel");
    Ok(())
}
