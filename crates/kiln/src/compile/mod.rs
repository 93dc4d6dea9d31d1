//! `compile(f)`: tracing, optimization and caching (in progress).

use std::cell::RefCell;

thread_local! {
    static TRACE_NAMES: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

/// Descriptions of the placeholders of the function being traced on this
/// thread ("argument 0 (f32[10, 64])"), used in error messages.
pub(crate) fn trace_input_names() -> Vec<String> {
    TRACE_NAMES.with(|t| t.borrow().clone())
}
