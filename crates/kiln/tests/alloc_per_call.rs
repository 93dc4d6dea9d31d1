//! Heap allocations per call of a compiled function on a cache hit: the
//! fixed per-call overhead of small kernels, where malloc and free once
//! cost about a third of the call.
//!
//! This test binary installs its own global allocator, which counts the
//! allocations of the thread that asked for them only (other tests of this
//! binary run in parallel on other threads, and pool threads are not ours).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use kiln::{compile, Array, DType, Result};

struct Counting;

thread_local! {
    // Const-initialized, with no destructor: touching them never allocates.
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static COUNT: Cell<usize> = const { Cell::new(0) };
}

fn note() {
    // `try_with`: a thread being torn down may still allocate.
    let _ = COUNTING.try_with(|on| {
        if on.get() {
            let _ = COUNT.try_with(|c| c.set(c.get() + 1));
        }
    });
}

// SAFETY: every call is forwarded to the system allocator unchanged;
// counting only touches the thread-local cells above.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        note();
        // SAFETY: the caller's contract is passed on.
        unsafe { System.alloc(l) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        note();
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        note();
        // SAFETY: as above.
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations (and reallocations) made on this thread per call of `f`,
/// averaged over 100 calls that follow 20 warm-up calls (which trace,
/// compile, and fill the per-thread pools of tile registers and vectors).
fn allocs_per_call(f: impl Fn() -> Result<()>) -> Result<f64> {
    for _ in 0..20 {
        f()?;
    }
    let calls = 100;
    COUNT.with(|c| c.set(0));
    COUNTING.with(|on| on.set(true));
    let run = (0..calls).try_for_each(|_| f());
    COUNTING.with(|on| on.set(false));
    run?;
    Ok(COUNT.with(|c| c.get()) as f64 / calls as f64)
}

/// A bound with room for a few more allocations than today's count (in
/// each test's comment), and far below the count before the per-call
/// vectors and layouts were made inline (also given): it fails when the
/// per-call path starts allocating its vectors again.
const SLACK: f64 = 3.0;

#[test]
fn a_compiled_elementwise_call_allocates_only_its_result() -> Result<()> {
    // 4 today: the output buffer, its `Arc`, the list of outputs and the
    // result's graph node (30 before).
    let x = kiln::random::normal(&[16], DType::F32, 0.0, 1.0, None)?;
    x.eval()?;
    let f = compile(|x: &Array| x + 1.0f32);
    let n = allocs_per_call(|| f.call(&x)?.eval())?;
    assert!(n <= 4.0 + SLACK, "x + 1 on 16 elements: {n} allocations per call");
    Ok(())
}

#[test]
fn a_compiled_scalar_call_allocates_only_its_result() -> Result<()> {
    // 4 today, as above (21 before).
    let s = kiln::random::normal(&[], DType::F32, 0.0, 1.0, None)?.abs()?;
    s.eval()?;
    let f = compile(|s: &Array| s.sqrt());
    let n = allocs_per_call(|| f.call(&s)?.eval())?;
    assert!(n <= 4.0 + SLACK, "sqrt of a scalar: {n} allocations per call");
    Ok(())
}

#[test]
fn a_compiled_matrix_product_allocates_only_its_result() -> Result<()> {
    // 4 today, as above (31 before).
    let x = kiln::random::normal(&[32, 128], DType::F32, 0.0, 1.0, None)?;
    let w = kiln::random::normal(&[128, 256], DType::F32, 0.0, 1.0, None)?;
    kiln::eval(&[&x, &w])?;
    let f = compile(|x: &Array, w: &Array| x.matmul(w));
    let n = allocs_per_call(|| f.call((&x, &w))?.eval())?;
    assert!(n <= 4.0 + SLACK, "x @ w (32x128 by 128x256): {n} allocations per call");
    Ok(())
}
