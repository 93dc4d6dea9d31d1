use kiln::{Array, DType};

#[test]
fn smoke() -> kiln::Result<()> {
    let x = Array::from_slice(&[1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3])?;
    let y = ((&x * 2.0f32)? + 1.0f32)?;
    assert_eq!(y.to_vec::<f32>()?, vec![3.0, 5.0, 7.0, 9.0, 11.0, 13.0]);
    let t = x.t()?;
    assert_eq!(t.shape(), &[3, 2]);
    assert_eq!(t.to_vec::<f32>()?, vec![1.0, 4.0, 2.0, 5.0, 3.0, 6.0]);
    let e = (t.exp()? + &Array::from_slice(&[1.0f32, 2.0], &[2])?)?;
    assert_eq!(e.shape(), &[3, 2]);
    let z = kiln::zeros(&[2, 2], DType::I32)?;
    assert_eq!(z.to_vec::<i32>()?, vec![0; 4]);
    let i = kiln::eye(3, 3, 0, DType::F32)?;
    assert_eq!(i.to_vec::<f32>()?, vec![1., 0., 0., 0., 1., 0., 0., 0., 1.]);
    let big = kiln::arange(0.0, 100000.0, 1.0, DType::F64)?;
    let s = kiln::sqrt(&big)?.to_vec::<f64>()?;
    assert_eq!(s[99999], (99999f64).sqrt());
    let r = kiln::slice_axis(&x, 1, None, None, -1)?;
    assert_eq!(r.to_vec::<f32>()?, vec![3.0, 2.0, 1.0, 6.0, 5.0, 4.0]);
    let f = r.reshape(&[-1])?;
    assert_eq!(f.to_vec::<f32>()?, vec![3.0, 2.0, 1.0, 6.0, 5.0, 4.0]);
    Ok(())
}

#[test]
fn eval_of_evaluated_and_pending_arrays_evaluates_the_pending_ones() -> kiln::Result<()> {
    let x = Array::from_slice(&[1.0f32, 2.0], &[2])?;
    let done = (&x + 1.0f32)?;
    done.eval()?;
    assert!(done.is_evaluated());
    done.eval()?; // nothing left to do
    let pending = (&done * 3.0f32)?;
    assert!(!pending.is_evaluated());
    kiln::eval(&[&done, &pending])?;
    assert!(pending.is_evaluated(), "a pending array next to an evaluated one is evaluated");
    assert_eq!(pending.to_vec::<f32>()?, vec![6.0, 9.0]);
    Ok(())
}
