//! A function that keeps recompiling logs one loud warning (its own test
//! binary: it installs a global logger).

use std::sync::Mutex;

use kiln::{compile_with, Array, CompileOptions, Result};

static LOGGED: Mutex<Vec<String>> = Mutex::new(Vec::new());

struct Capture;

impl log::Log for Capture {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= log::Level::Warn
    }
    fn log(&self, r: &log::Record) {
        if self.enabled(r.metadata()) {
            LOGGED.lock().unwrap().push(r.args().to_string());
        }
    }
    fn flush(&self) {}
}

#[test]
fn recompiling_warns_once_and_keeps_compiling() -> Result<()> {
    log::set_logger(&Capture).unwrap();
    log::set_max_level(log::LevelFilter::Warn);
    let f = compile_with(|x: &Array| x * 2.0f32, CompileOptions { recompile_warning: 3, ..Default::default() });
    for n in 1..=8 {
        let x = Array::from_vec(vec![1.0f32; n], &[n])?;
        assert_eq!(f.call(&x)?.to_vec::<f32>()?, vec![2.0; n]);
    }
    assert_eq!(f.stats().traces, 8, "it never stops compiling");
    let logged = LOGGED.lock().unwrap();
    assert_eq!(logged.len(), 1, "{logged:?}");
    assert!(
        logged[0].contains("traced 4 times") && logged[0].contains("arg 0: now f32[4], before f32[3]"),
        "{}",
        logged[0]
    );
    Ok(())
}
