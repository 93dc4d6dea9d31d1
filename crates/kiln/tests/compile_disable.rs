//! Disabling compilation (a process-wide switch, so this file is its own
//! test binary with a single test).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use kiln::{compile, Array, Result};

#[test]
fn disabled_compile_runs_eagerly() -> Result<()> {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let f = compile(move |x: &Array| -> Result<Array> {
        c.fetch_add(1, Ordering::SeqCst);
        let y = x.exp()?;
        let _ = y.to_vec::<f32>()?; // reading values works when compile is disabled
        Ok(y)
    });
    let x = Array::from_slice(&[0.5f32, 1.0, 2.0], &[3])?;
    assert!(f.call(&x).is_err(), "reading values fails while tracing");

    kiln::disable_compile();
    let r1 = f.call(&x)?;
    let r2 = f.call(&x)?;
    kiln::enable_compile();
    assert_eq!(r1.to_vec::<f32>()?, x.exp()?.to_vec::<f32>()?);
    assert_eq!(r2.to_vec::<f32>()?, x.exp()?.to_vec::<f32>()?);
    assert_eq!(calls.load(Ordering::SeqCst), 3, "f runs on every call");
    assert_eq!(f.stats().traces, 0);

    // The environment variable is read once per process: check it in a child.
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "env_child", "--nocapture"])
        .env("KILN_DISABLE_COMPILE", "1")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(String::from_utf8_lossy(&out.stdout).contains("env_child ... ok"));
    Ok(())
}

/// Run by the test above in a child process with KILN_DISABLE_COMPILE=1.
#[test]
fn env_child() -> Result<()> {
    if std::env::var("KILN_DISABLE_COMPILE").as_deref() != Ok("1") {
        return Ok(());
    }
    let f = compile(|x: &Array| -> Result<Array> {
        let y = x.exp()?;
        let _ = y.to_vec::<f32>()?;
        Ok(y)
    });
    let x = Array::from_slice(&[0.5f32], &[1])?;
    assert!(f.call(&x).is_ok(), "KILN_DISABLE_COMPILE=1 runs f eagerly");
    assert_eq!(f.stats().traces, 0);
    Ok(())
}
