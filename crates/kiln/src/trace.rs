//! Tracing: running a user function on placeholder arrays (shape, dtype
//! and device, no data) to record the graph it builds. One module serves
//! `compile` (and later `grad` and `vmap`).
//!
//! The thread's tracing state (the placeholders' descriptions, for error
//! messages, and the trace's random key) is set by a guard and restored
//! when it drops, so no exit from the traced function leaves the thread
//! "tracing": not an error it returns, not a panic (caught and turned into
//! an error), not a foreign runtime's unwind such as an R error crossing
//! back through kiln.

use std::cell::RefCell;
use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::array::Array;
use crate::device::Device;
use crate::dtype::DType;
use crate::error::{Error, Result};

thread_local! {
    static TRACE_NAMES: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

/// Descriptions of the placeholders of the function being traced on this
/// thread ("argument 0 (f32[10, 64])"), used in error messages.
pub(crate) fn trace_input_names() -> Vec<String> {
    TRACE_NAMES.with(|t| t.borrow().clone())
}

/// True while a function is being traced on this thread.
pub fn is_tracing() -> bool {
    TRACE_NAMES.with(|t| !t.borrow().is_empty())
}

/// The thread's tracing state while a function is traced: set by
/// [`Tracing::begin`], restored to what it was by [`Tracing::end`] or, when
/// the traced function unwinds past it, by the drop of the guard.
struct Tracing {
    prev: Option<(Vec<String>, Option<Array>)>,
}

impl Tracing {
    /// Starts tracing with placeholder descriptions `names` and the trace's
    /// random `key`.
    fn begin(names: Vec<String>, key: Array) -> Tracing {
        let prev_names = TRACE_NAMES.with(|t| std::mem::replace(&mut *t.borrow_mut(), names));
        let prev_key = crate::ops::random::begin_trace(key);
        Tracing { prev: Some((prev_names, prev_key)) }
    }

    /// Ends tracing; returns the trace key as the function left it.
    fn end(mut self) -> Option<Array> {
        self.restore()
    }

    fn restore(&mut self) -> Option<Array> {
        let (names, key) = self.prev.take()?;
        TRACE_NAMES.with(|t| *t.borrow_mut() = names);
        crate::ops::random::end_trace(key)
    }
}

impl Drop for Tracing {
    fn drop(&mut self) {
        self.restore();
    }
}

/// What [`record`] returns.
pub(crate) struct Traced<R> {
    /// The placeholders, one per argument, then the implicit random key.
    pub placeholders: Vec<Array>,
    /// True when the function drew random numbers from the implicit key.
    pub uses_random: bool,
    /// What the function returned.
    pub result: Result<R>,
}

/// Runs `f` on placeholders for arguments of the given (shape, dtype,
/// device), plus an implicit random key on `device` (index `args.len()`);
/// `names` describes each placeholder for error messages. A panic in `f` is
/// caught and becomes the result's error; the thread's state is restored
/// on every exit.
pub(crate) fn record<R>(
    args: &[(Vec<usize>, DType, Device)],
    device: Device,
    names: Vec<String>,
    f: impl FnOnce(&[Array]) -> Result<R>,
) -> Result<Traced<R>> {
    let mut placeholders: Vec<Array> = args
        .iter()
        .enumerate()
        .map(|(i, (shape, dtype, dev))| Array::placeholder(i, shape.clone(), *dtype, *dev))
        .collect();
    let key = Array::placeholder(args.len(), vec![2], DType::U32, device);
    let tracing = Tracing::begin(names, key.clone());
    let result = catch_unwind(AssertUnwindSafe(|| f(&placeholders)));
    let final_key = tracing.end();
    let uses_random = final_key.is_some_and(|k| k.id() != key.id());
    placeholders.push(key);
    let result = result.unwrap_or_else(|panic| {
        let msg = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "unknown panic".into());
        Err(Error::Invalid { op: "compile", msg: format!("the function panicked while tracing: {msg}") })
    });
    Ok(Traced { placeholders, uses_random, result })
}
