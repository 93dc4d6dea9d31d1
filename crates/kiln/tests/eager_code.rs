//! Eager elementwise ops keep their generated code: one test in its own
//! process, so no other test generates code while it counts.

use kiln::backend::cpu::jit;
use kiln::{Array, Result};

#[test]
fn repeated_eager_ops_generate_no_more_code() -> Result<()> {
    let x = Array::from_vec((0..5000).map(|i| (i as f32 - 2500.0) / 700.0).collect(), &[5000])?;
    let ops = |x: &Array| -> Result<Vec<f32>> { ((x * 3.0f32)?.tanh()? - 0.5f32)?.to_vec::<f32>() };
    let first = ops(&x)?;
    let before = jit::counts();
    for _ in 0..5 {
        assert_eq!(ops(&x)?, first, "same input, same bits");
    }
    assert_eq!(jit::counts(), before, "repeated eager ops reuse their code");
    if jit::enabled() {
        assert!(before.0 >= 3, "each of the three ops ran generated code: {before:?}");
    }
    // `jit::interpreted` (the tests' reference) runs an op without code.
    let reference = jit::interpreted(|| x.expm1()?.to_vec::<f32>())?;
    assert_eq!(jit::counts(), before, "the interpreter ran expm1");
    assert_eq!(x.expm1()?.to_vec::<f32>()?, reference, "generated expm1 equals the interpreter's");
    if jit::enabled() {
        assert_eq!(jit::counts().0, before.0 + 1, "and was generated on its first call outside");
    }
    Ok(())
}
