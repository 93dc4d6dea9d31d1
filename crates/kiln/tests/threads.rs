//! `set_threads` and `release_memory`: process-wide settings, so in a test
//! binary of their own.

use kiln::{Array, Axes, DType, Result};

/// The tests here change and read process-wide state (the thread cap, the
/// pool of kept buffers), so they take turns: one test dropping a result
/// while another checks that a release left nothing would race.
static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn ramp(n: usize) -> Array {
    let v: Vec<f32> = (0..n).map(|i| ((i % 1000) as f32 * 0.37).sin()).collect();
    Array::from_vec(v, &[n]).unwrap()
}

#[test]
fn a_thread_cap_keeps_results_and_is_checked() -> Result<()> {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let n = 1 << 22;
    let x = ramp(n);
    let w = kiln::random::normal(&[256, 256], DType::F32, 0.0, 1.0, Some(&kiln::random::key(3)))?;
    let a = kiln::random::normal(&[512, 256], DType::F32, 0.0, 1.0, Some(&kiln::random::key(4)))?;
    let f = kiln::compile(|x: &Array| (x.exp()? * 2.0f32)?.sum(Axes::All, false));
    let before = (f.call(&x)?.item::<f32>()?, a.matmul(&w)?.to_vec::<f32>()?, (&x * 3.0f32)?.to_vec::<f32>()?);
    // Column reductions split their rows into 19 chunks, folded in groups
    // of a size set by the thread count.
    let c = kiln::random::normal(&[4096, 300], DType::F32, 0.0, 1.0, Some(&kiln::random::key(5)))?;
    let columns = || -> Result<Vec<Vec<u32>>> {
        let bits = |a: Array| -> Result<Vec<u32>> { Ok(a.to_vec::<f32>()?.into_iter().map(f32::to_bits).collect()) };
        Ok(vec![bits(c.sum(0, false)?)?, bits(c.var(0, false, 0)?)?, bits(c.mean(0, false)?)?])
    };
    let columns_before = columns()?;
    let all = kiln::threads();
    assert!(kiln::set_threads(0).is_err(), "0 threads is an error");
    kiln::set_threads(1)?;
    assert_eq!(kiln::threads(), 1);
    let capped = (f.call(&x)?.item::<f32>()?, a.matmul(&w)?.to_vec::<f32>()?, (&x * 3.0f32)?.to_vec::<f32>()?);
    assert_eq!(before, capped, "one thread computes the same values");
    assert_eq!(columns()?, columns_before, "one thread reduces columns to the same bits");
    kiln::set_threads(64)?;
    assert_eq!(kiln::threads(), all, "the cap never adds threads to the team");
    assert_eq!(a.matmul(&w)?.to_vec::<f32>()?, before.1);
    Ok(())
}

#[test]
fn release_memory_frees_the_kept_buffers() -> Result<()> {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    // A dropped 32 MiB result goes to the pool of kept buffers...
    let y = (ramp(1 << 23) + 1.0f32)?;
    y.eval()?;
    drop(y);
    let freed = kiln::release_memory();
    assert!(freed >= 32 << 20, "freed {freed} bytes");
    // ...and nothing is left after a release.
    assert_eq!(kiln::release_memory(), 0);
    Ok(())
}
