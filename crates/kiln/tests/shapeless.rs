//! Shapeless compilation follows new shapes or refuses them (issue 14 §1):
//! each case is traced on some shapes, then called on others, and must give
//! what eager evaluation gives on those shapes, or a clear error when eager
//! evaluation fails too (or when the function baked a shape in).

use kiln::{compile_with, Array, CompileOptions, Result};

fn shapeless() -> CompileOptions {
    CompileOptions { shapeless: true, ..Default::default() }
}

fn ramp(shape: &[usize], seed: f32) -> Array {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|i| ((i as f32 + seed) * 0.37).sin()).collect();
    Array::from_slice(&v, shape).unwrap()
}

/// Same shape, dtype and values (floats within 1e-5).
fn same(got: &Array, want: &Array, what: &str) {
    assert_eq!(got.shape(), want.shape(), "{what}: shape");
    assert_eq!(got.dtype(), want.dtype(), "{what}: dtype");
    let (g, w) = (got.astype(kiln::DType::F64).unwrap(), want.astype(kiln::DType::F64).unwrap());
    let (g, w) = (g.to_vec::<f64>().unwrap(), w.to_vec::<f64>().unwrap());
    assert_eq!(g.len(), w.len(), "{what}: element count");
    for (i, (a, b)) in g.iter().zip(&w).enumerate() {
        assert!((a - b).abs() <= 1e-5 * a.abs().max(b.abs()) + 1e-6, "{what}: element {i}: {a} vs {b}");
    }
}

/// Compiles `f` shapeless, traces it on `traced`, then checks every call in
/// `calls` against `f` run eagerly; returns the number of traces.
fn follows<F>(f: F, traced: &[&[usize]], calls: &[&[&[usize]]]) -> Result<usize>
where
    F: Fn(&[Array]) -> Result<Vec<Array>> + Clone,
{
    let c = compile_with(f.clone(), shapeless());
    let args: Vec<Array> = traced.iter().enumerate().map(|(i, s)| ramp(s, i as f32)).collect();
    c.call(&args[..])?;
    for shapes in calls {
        let args: Vec<Array> = shapes.iter().enumerate().map(|(i, s)| ramp(s, 10.0 + i as f32)).collect();
        let want = f(&args)?;
        let got = c.call(&args[..])?;
        assert_eq!(got.len(), want.len());
        for (k, (g, w)) in got.iter().zip(&want).enumerate() {
            same(g, w, &format!("output {k} on {shapes:?}"));
        }
    }
    Ok(c.stats().traces)
}

#[test]
fn a_fused_group_with_outputs_of_new_different_shapes() -> Result<()> {
    let f = |a: &[Array]| -> Result<Vec<Array>> {
        let x2 = (&a[0] * 2.0f32)?;
        let b = (&x2 + &a[1])?;
        Ok(vec![x2, b])
    };
    let traces = follows(f, &[&[2, 2], &[2, 2]], &[&[&[1, 2], &[3, 2]], &[&[3, 2], &[1, 2]], &[&[5, 2], &[5, 2]]])?;
    assert_eq!(traces, 1);
    Ok(())
}

#[test]
fn sibling_reductions_in_one_kernel_at_new_shapes() -> Result<()> {
    // max(x) and sum(x * y) share one kernel at the traced shapes; called
    // with a y that broadcasts x, the product no longer has x's shape.
    let f = |a: &[Array]| -> Result<Vec<Array>> {
        let (x, y) = (&a[0], &a[1]);
        Ok(vec![x.max(-1, false)?, (x * y)?.sum(-1, false)?])
    };
    let traces = follows(f, &[&[2, 3], &[2, 3]], &[&[&[1, 3], &[4, 3]], &[&[4, 1], &[4, 3]], &[&[3, 3], &[3, 3]]])?;
    assert_eq!(traces, 1);
    Ok(())
}

#[test]
fn matmul_with_a_bias_that_broadcasts_the_product() -> Result<()> {
    let f = |a: &[Array]| -> Result<Vec<Array>> { Ok(vec![(a[0].matmul(&a[1])? + &a[2])?.maximum(0.0f32)?]) };
    let traces =
        follows(f, &[&[2, 3], &[3, 4], &[2, 4]], &[&[&[1, 3], &[3, 4], &[5, 4]], &[&[6, 3], &[3, 2], &[1, 2]]])?;
    assert_eq!(traces, 1);
    Ok(())
}

#[test]
fn matmul_with_vectors_when_a_length_changes() -> Result<()> {
    let vm = |a: &[Array]| -> Result<Vec<Array>> { Ok(vec![a[0].matmul(&a[1])?]) };
    assert_eq!(follows(vm, &[&[3], &[3, 4]], &[&[&[5], &[5, 4]], &[&[2], &[2, 7]]])?, 1);
    let mv = |a: &[Array]| -> Result<Vec<Array>> { Ok(vec![a[0].matmul(&a[1])?]) };
    assert_eq!(follows(mv, &[&[4, 3], &[3]], &[&[&[4, 5], &[5]], &[&[2, 6], &[6]]])?, 1);
    let vv = |a: &[Array]| -> Result<Vec<Array>> { Ok(vec![a[0].matmul(&a[1])?]) };
    assert_eq!(follows(vv, &[&[3], &[3]], &[&[&[8], &[8]]])?, 1);
    Ok(())
}

#[test]
fn broadcast_arrays_follows_which_operand_broadcasts() -> Result<()> {
    let f = |a: &[Array]| -> Result<Vec<Array>> { kiln::broadcast_arrays(&[a[0].clone(), a[1].clone()]) };
    let calls: &[&[&[usize]]] = &[&[&[1, 3], &[4, 3]], &[&[4, 1], &[1, 3]], &[&[5, 3], &[5, 3]], &[&[2, 3], &[2, 1]]];
    assert_eq!(follows(f, &[&[2, 3], &[1, 3]], calls)?, 1);
    Ok(())
}

#[test]
fn squeeze_expand_dims_and_stack_keep_axes_not_sizes() -> Result<()> {
    let f = |a: &[Array]| -> Result<Vec<Array>> {
        let x = &a[0];
        Ok(vec![
            kiln::squeeze(x, Some(&[1]))?,
            kiln::expand_dims(x, &[0, -1])?,
            kiln::stack(&[x.clone(), (x * 2.0f32)?], 1)?,
        ])
    };
    // (6, 1) has as many elements as (2, 1, 3) and (3, 1, 2): sizes must follow.
    assert_eq!(follows(f, &[&[2, 1, 3]], &[&[&[3, 1, 2]], &[&[6, 1, 1]], &[&[4, 1, 5]]])?, 1);
    Ok(())
}

#[test]
fn split_by_sections_follows_the_axis_size() -> Result<()> {
    let f = |a: &[Array]| kiln::split(&a[0], 3, 0);
    // Traced on 6 elements (three pairs), called on 9 (three triples).
    assert_eq!(follows(f, &[&[6]], &[&[&[9]], &[&[3]], &[&[12]]])?, 1);
    let g = |a: &[Array]| kiln::split(&a[0], 2, -1);
    assert_eq!(follows(g, &[&[3, 4]], &[&[&[2, 6]], &[&[5, 2]]])?, 1);
    Ok(())
}

/// The error of a shapeless call on `new` after a trace on `traced`.
fn refusal<F>(f: F, traced: &[usize], new: &[usize]) -> String
where
    F: Fn(&Array) -> Result<Array>,
{
    let eager = f(&ramp(new, 1.0));
    let c = compile_with(f, shapeless());
    c.call(&ramp(traced, 0.0)).unwrap();
    let e = c.call(&ramp(new, 1.0)).unwrap_err().to_string();
    assert!(eager.is_err() || e.contains("shapeless"), "eager works on {new:?} but compiled failed: {e}");
    e
}

#[test]
fn shapes_that_cannot_follow_fail_naming_op_and_shapes() {
    let e = refusal(|x| kiln::squeeze(x, Some(&[1])), &[2, 1, 3], &[2, 2, 3]);
    assert!(e.starts_with("squeeze") && e.contains("(2, 3)") && e.contains("(2, 2, 3)"), "{e}");
    // Squeezing every size-1 axis: the output rank depends on which are 1.
    let e = refusal(|x| kiln::squeeze(x, None), &[2, 1, 3], &[1, 1, 3]);
    assert!(e.starts_with("squeeze") && e.contains("(2, 3)") && e.contains("(1, 1, 3)"), "{e}");
    let e = refusal(|x| Ok(kiln::split(x, 3, 0)?.remove(0)), &[6], &[8]);
    assert!(e.starts_with("split") && e.contains("(2)") && e.contains("(8)") && e.contains("3 equal"), "{e}");
    let e = refusal(|x| x.reshape(&[2, 3]), &[6], &[8]);
    assert!(e.starts_with("reshape") && e.contains("(2, 3)") && e.contains("(8)"), "{e}");
}

#[test]
fn random_draws_sized_like_an_input_follow_it() -> Result<()> {
    // The key is an argument, so eager and compiled draw the same numbers.
    let f = |a: &[Array]| -> Result<Vec<Array>> {
        let (x, k) = (&a[0], a[1].astype(kiln::DType::U32)?);
        use kiln::random::{bernoulli_like, normal_like, randint_like, uniform_like};
        Ok(vec![
            (x + &normal_like(x, kiln::DType::F32, 0.0, 1.0, Some(&k))?)?,
            uniform_like(-1.0, 1.0, x, kiln::DType::F64, Some(&k))?,
            randint_like(0, 10, x, kiln::DType::I32, Some(&k))?,
            randint_like(i64::MIN / 2, i64::MAX / 2, x, kiln::DType::I64, Some(&k))?,
            bernoulli_like(0.3, x, Some(&k))?,
        ])
    };
    assert_eq!(follows(f, &[&[2, 3], &[2]], &[&[&[3, 2], &[2]], &[&[6, 1], &[2]], &[&[4, 5], &[2]]])?, 1);
    Ok(())
}

#[test]
fn random_draws_of_a_literal_shape_keep_it() -> Result<()> {
    // A literal shape is what eager evaluation draws too (documented).
    let f = compile_with(
        |x: &Array| -> Result<(Array, Array)> {
            Ok((x.sum(0, false)?, kiln::random::uniform(0.0, 1.0, &[4], kiln::DType::F32, None)?))
        },
        shapeless(),
    );
    f.call(&ramp(&[2, 3], 0.0))?;
    let (s, u) = f.call(&ramp(&[5, 7], 0.0))?;
    assert_eq!((s.shape(), u.shape()), (&[7][..], &[4][..]));
    assert_eq!(f.stats().traces, 1);
    Ok(())
}
