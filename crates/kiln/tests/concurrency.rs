//! Concurrency and re-entrancy of compiled functions (issue 14, section 6):
//! the cache bound holds under racing threads, every call counts once as a
//! hit or a miss, and a function that calls itself while being traced gets
//! a clear error instead of a deadlock.

use std::sync::mpsc;
use std::sync::{Arc, Barrier, OnceLock};
use std::time::Duration;

use kiln::{compile, compile_with, Array, CompileOptions, Error, Result};

fn ramp(n: usize, seed: usize) -> Array {
    let v: Vec<f32> = (0..n).map(|i| ((i + seed) as f32 * 0.37).sin()).collect();
    Array::from_slice(&v, &[n]).unwrap()
}

/// What the compiled function computes, by hand.
fn eager(x: &Array) -> Vec<f32> {
    x.to_vec::<f32>().unwrap().iter().map(|v| v.sin() * 2.0 + 1.0).collect()
}

fn close(got: &[f32], want: &[f32]) -> bool {
    got.len() == want.len() && got.iter().zip(want).all(|(a, b)| (a - b).abs() <= 1e-5 * (1.0 + b.abs()))
}

/// Runs `f` on its own thread and waits at most ten seconds for it, so a
/// deadlock fails the test instead of hanging it.
fn within_deadline<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(10)).expect("the call did not return within 10 s (deadlock?)")
}

/// Generated cases: thread counts x cache bounds, every thread calling the
/// same compiled function on many shapes in its own order.
#[test]
fn bound_and_counters_hold_under_racing_threads() {
    const SHAPES: usize = 7;
    const ROUNDS: usize = 2;
    for threads in [2usize, 4, 8] {
        for bound in [1usize, 2, 3] {
            let f = compile_with(
                |x: &Array| -> Result<Array> { (x.sin()? * 2.0f32)? + 1.0f32 },
                CompileOptions { max_cache_entries: bound, recompile_warning: usize::MAX, ..Default::default() },
            );
            let start = Barrier::new(threads);
            std::thread::scope(|s| {
                for t in 0..threads {
                    let (f, start) = (&f, &start);
                    s.spawn(move || {
                        start.wait();
                        for round in 0..ROUNDS {
                            for i in 0..SHAPES {
                                // A different order per thread and round.
                                let k =
                                    if (t + round) % 2 == 0 { (i + t) % SHAPES } else { (SHAPES - 1 - i + t) % SHAPES };
                                let x = ramp(k + 1, t);
                                let got = f.call(&x).unwrap().to_vec::<f32>().unwrap();
                                assert!(close(&got, &eager(&x)), "threads {threads}, bound {bound}, shape [{}]", k + 1);
                                let st = f.stats();
                                assert!(st.entries <= bound, "threads {threads}, bound {bound}: {st:?} after a call");
                            }
                        }
                    });
                }
            });
            let st = f.stats();
            let calls = threads * SHAPES * ROUNDS;
            let case = format!("threads {threads}, bound {bound}: {st:?}");
            assert!(st.entries <= bound, "{case}");
            assert!(st.entries >= 1, "{case}");
            assert_eq!(st.hits + st.misses, calls, "every call counts once: {case}");
            assert_eq!(st.traces, st.misses, "no trace failed, so each miss traced: {case}");
            assert!(st.traces >= SHAPES, "each shape traced at least once: {case}");
        }
    }
}

/// Calls that wait for another thread's trace of the same signature are hits.
#[test]
fn a_call_that_waits_for_another_threads_trace_is_a_hit() {
    for threads in [2usize, 4, 8] {
        let f = compile(|x: &Array| {
            std::thread::sleep(Duration::from_millis(30));
            x.sin()
        });
        let x = ramp(64, 0);
        let want = x.sin().unwrap().to_vec::<f32>().unwrap();
        let start = Barrier::new(threads);
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(|| {
                    start.wait();
                    assert_eq!(f.call(&x).unwrap().to_vec::<f32>().unwrap(), want);
                });
            }
        });
        let st = f.stats();
        assert_eq!((st.traces, st.misses, st.hits, st.entries), (1, 1, threads - 1, 1), "{threads} threads");
    }
}

/// The bound also holds when a thread's trace completes while the cache is
/// full of programs other threads traced meanwhile.
#[test]
fn a_completed_trace_evicts_down_to_the_bound() {
    for bound in [1usize, 2, 3] {
        let f = compile_with(
            |x: &Array| {
                std::thread::sleep(Duration::from_millis(10));
                x + 1.0f32
            },
            CompileOptions { max_cache_entries: bound, recompile_warning: usize::MAX, ..Default::default() },
        );
        let start = Barrier::new(8);
        std::thread::scope(|s| {
            for t in 0..8 {
                let (f, start) = (&f, &start);
                s.spawn(move || {
                    start.wait();
                    f.call(&ramp(t + 1, 0)).unwrap();
                    assert!(f.stats().entries <= bound);
                });
            }
        });
        let st = f.stats();
        assert_eq!((st.traces, st.misses, st.hits), (8, 8, 0), "bound {bound}");
        assert_eq!(st.entries, bound, "bound {bound}: the last traces are kept, the rest evicted");
    }
}

type SelfCall = Arc<OnceLock<Box<dyn Fn(&Array) -> Result<Array> + Send + Sync>>>;

/// A compiled function that calls itself, with an evaluated argument of the
/// same signature, while it is being traced: a clear error, not a deadlock.
#[test]
fn a_reentrant_trace_is_an_error_not_a_deadlock() {
    let (err, stats, again) = within_deadline(|| {
        let me: SelfCall = Arc::new(OnceLock::new());
        let m = Arc::clone(&me);
        let f = compile(move |x: &Array| -> Result<Array> {
            let c = Array::from_slice(&[1.0f32, 2.0, 3.0], &[3])?;
            let inner = (m.get().expect("set"))(&c)?;
            x + &inner
        });
        let f2 = f.clone();
        let _ = me.set(Box::new(move |x: &Array| f2.call(x)));
        let x = ramp(3, 0);
        let err = f.call(&x).unwrap_err();
        let stats = f.stats();
        // A second call traces again and fails the same way (no stale slot).
        let again = f.call(&x).unwrap_err();
        (err, stats, again)
    });
    let text = err.to_string();
    assert!(matches!(err, Error::Invalid { op: "compile", .. }), "{err:?}");
    assert!(text.contains("calls itself while being traced"), "{text}");
    assert!(text.contains("disable_compile"), "{text}");
    assert!(text.contains("f32[3]"), "{text}");
    assert_eq!(again, err);
    // The outer call traced (a miss, the trace failed); the inner call was
    // refused (a miss without a trace).
    assert_eq!((stats.traces, stats.hits, stats.misses, stats.entries), (0, 0, 2, 0), "{stats:?}");
}

/// Inside its own trace, a call with a different signature traces normally.
#[test]
fn a_self_call_with_another_signature_inside_a_trace_works() {
    let (got, stats, got2, stats2) = within_deadline(|| {
        let me: SelfCall = Arc::new(OnceLock::new());
        let m = Arc::clone(&me);
        let f = compile(move |x: &Array| -> Result<Array> {
            if x.shape() == [3] {
                let c = Array::from_slice(&[1.0f32, 2.0, 3.0, 4.0], &[4])?;
                let inner = (m.get().expect("set"))(&c)?.sum(kiln::Axes::All, false)?;
                x + &inner
            } else {
                x * 2.0f32
            }
        });
        let f2 = f.clone();
        let _ = me.set(Box::new(move |x: &Array| f2.call(x)));
        let x = Array::from_slice(&[1.0f32, 2.0, 3.0], &[3]).unwrap();
        let got = f.call(&x).unwrap().to_vec::<f32>().unwrap();
        let stats = f.stats();
        let got2 = f.call(&x).unwrap().to_vec::<f32>().unwrap();
        (got, stats, got2, f.stats())
    });
    // sum(2 * [1, 2, 3, 4]) = 20.
    assert_eq!(got, vec![21.0, 22.0, 23.0]);
    assert_eq!(got2, got);
    assert_eq!((stats.traces, stats.hits, stats.misses, stats.entries), (2, 0, 2, 2), "{stats:?}");
    assert_eq!((stats2.traces, stats2.hits, stats2.misses), (2, 1, 2), "{stats2:?}");
}

/// A re-entrant call on one thread does not disturb another thread tracing
/// or waiting on the same function.
#[test]
fn a_reentrant_error_on_one_thread_does_not_block_others() {
    let results = within_deadline(|| {
        let me: SelfCall = Arc::new(OnceLock::new());
        let m = Arc::clone(&me);
        let f = compile(move |x: &Array| -> Result<Array> {
            std::thread::sleep(Duration::from_millis(10));
            if x.shape() == [3] {
                let c = Array::from_slice(&[1.0f32, 2.0, 3.0], &[3])?;
                let inner = (m.get().expect("set"))(&c)?;
                return x + &inner;
            }
            x * 2.0f32
        });
        let f2 = f.clone();
        let _ = me.set(Box::new(move |x: &Array| f2.call(x)));
        let start = Barrier::new(4);
        std::thread::scope(|s| {
            let hs: Vec<_> = (0..4)
                .map(|t| {
                    let (f, start) = (&f, &start);
                    s.spawn(move || {
                        start.wait();
                        let n = if t % 2 == 0 { 3 } else { 5 };
                        f.call(&ramp(n, 0)).map(|a| a.shape().to_vec())
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect::<Vec<_>>()
        })
    });
    for (t, r) in results.iter().enumerate() {
        if t % 2 == 0 {
            assert!(r.as_ref().is_err_and(|e| e.to_string().contains("calls itself")), "{r:?}");
        } else {
            assert_eq!(r.as_ref().unwrap(), &vec![5]);
        }
    }
}
