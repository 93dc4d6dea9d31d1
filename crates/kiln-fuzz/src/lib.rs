//! Fuzz targets for kiln. Each target takes a byte string and panics when
//! kiln breaks a promise (a wrong value, an invalid op accepted, a valid one
//! refused, a panic inside kiln); an abort or a crash ends the process.
//!
//! Two drivers run them: the stable one in `src/main.rs` (random byte
//! strings from seeds, cases in child processes under a memory limit so that
//! aborts and crashes are counted, reproducers saved) and cargo-fuzz with
//! libFuzzer and AddressSanitizer on nightly (`fuzz/`). See RELIABILITY.md.

pub mod bytes;
pub mod ops;
pub mod programs;
pub mod reference;

/// A fuzz target: runs one case.
pub type Target = fn(&[u8]);

/// The targets by name.
pub const TARGETS: &[(&str, Target)] = &[("ops", ops::run), ("programs", programs::case)];

/// The target called `name`.
pub fn target(name: &str) -> Option<Target> {
    TARGETS.iter().find(|(n, _)| *n == name).map(|&(_, f)| f)
}
