//! A small team of threads for work too short for the rayon pool.
//!
//! A rayon job started from a thread outside the pool is injected into the
//! pool's queue and the caller blocks until a worker has run it: a worker
//! that is asleep takes tens of microseconds to wake, and the caller's
//! wake-up after the job costs as much again. A product such as the seed's
//! `(32 x 128) @ (128 x 256)` takes microseconds on one core, so that
//! latency eats the gain of the second core.
//!
//! [`run`] splits a task into numbered parts. The calling thread works on
//! parts itself and the team's helper threads claim the others; a helper
//! that finished a job keeps polling for the next one for [`SPIN`] before
//! it sleeps, so back-to-back calls (a compiled function in a loop) hand
//! work over in well under a microsecond. Parts are claimed one at a time,
//! so a helper that is asleep or descheduled never delays the caller, who
//! runs whatever is left. One job runs at a time: a call made while the
//! team is busy (from another thread, or from inside a part) runs all its
//! parts on the calling thread.
//!
//! The team has `min(rayon threads, cores, MAX_THREADS) - 1` helpers,
//! started on first use; with one thread `run` is a plain loop.
//!
//! [`set_threads`] caps the threads of every parallel kernel at run time:
//! the team then wakes at most that many threads less one, and the kernels'
//! rayon loops run through [`parallel`] in a rayon pool of that size instead
//! of the global one (gemm is given the count).

use std::any::Any;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

/// How long a helper polls for the next job before it sleeps.
pub const SPIN: Duration = Duration::from_micros(100);
/// At most this many threads (the caller included) work on one job.
pub const MAX_THREADS: usize = 4;
/// At most this many parts per job.
pub const MAX_PARTS: usize = 0xffff;

/// The task of a job, borrowed from the caller of [`run`].
type Task<'a> = &'a (dyn Fn(usize) + Sync);

/// The team's shared state.
///
/// `state` packs the current job: its number (bits 32..64), its part count
/// (bits 16..32) and the next unclaimed part (bits 0..16). A part is claimed
/// by a compare-exchange of the whole word, so a claim can only succeed for
/// the job it was read from.
struct Team {
    helpers: usize,
    /// A caller owns the team.
    busy: AtomicBool,
    state: AtomicU64,
    /// Parts of the current job that have finished.
    done: AtomicUsize,
    /// The current job's task: a pointer to the caller's `Task`.
    task: AtomicPtr<()>,
    /// The first panic of the current job's parts.
    panic: Mutex<Option<Box<dyn Any + Send>>>,
    /// Helpers that are asleep, or about to sleep.
    sleepers: AtomicUsize,
    lock: Mutex<()>,
    wake: Condvar,
}

fn job(s: u64) -> u64 {
    s >> 32
}

fn parts_of(s: u64) -> usize {
    ((s >> 16) & 0xffff) as usize
}

fn next_of(s: u64) -> usize {
    (s & 0xffff) as usize
}

static TEAM: OnceLock<&'static Team> = OnceLock::new();

fn team() -> &'static Team {
    TEAM.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let threads = rayon::current_num_threads().min(cores).clamp(1, MAX_THREADS);
        let team: &'static Team = Box::leak(Box::new(Team {
            helpers: threads - 1,
            busy: AtomicBool::new(false),
            state: AtomicU64::new(0),
            done: AtomicUsize::new(0),
            task: AtomicPtr::new(std::ptr::null_mut()),
            panic: Mutex::new(None),
            sleepers: AtomicUsize::new(0),
            lock: Mutex::new(()),
            wake: Condvar::new(),
        }));
        let mut started = 0;
        for i in 0..team.helpers {
            let spawned = std::thread::Builder::new().name(format!("kiln-team-{i}")).spawn(move || team.helper(i));
            started += usize::from(spawned.is_ok());
        }
        if started < team.helpers {
            // Parts are claimed, never assigned, so fewer helpers is only slower.
            log::warn!("kiln team: started {started} of {} helper threads", team.helpers);
        }
        team
    })
}

/// The cap set by [`set_threads`] (0: none).
static LIMIT: AtomicUsize = AtomicUsize::new(0);
/// The rayon pool of [`set_threads`]'s size, for [`parallel`].
static POOL: RwLock<Option<Arc<rayon::ThreadPool>>> = RwLock::new(None);

/// Caps the threads that kernels use at `n` (at least 1), from now on:
/// [`run`] uses at most `n` threads and [`parallel`] runs loops in a rayon
/// pool of `n` threads. Errors when `n` is 0 or the pool cannot start.
pub fn set_threads(n: usize) -> crate::Result<()> {
    if n == 0 {
        return Err(crate::Error::Invalid { op: "set_threads", msg: "the thread count must be at least 1".into() });
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .thread_name(|i| format!("kiln-pool-{i}"))
        .build()
        .map_err(|e| crate::Error::Invalid { op: "set_threads", msg: format!("cannot start {n} threads: {e}") })?;
    *POOL.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(pool));
    LIMIT.store(n, Ordering::SeqCst);
    Ok(())
}

/// The cap of [`set_threads`], or 0 when none was set (gemm reads 0 as
/// "rayon's thread count").
pub fn max_threads() -> usize {
    LIMIT.load(Ordering::Relaxed)
}

/// Runs the parallel loop `f` in the pool of [`set_threads`] when one was
/// set, else on the calling thread (whose rayon loops use the global pool).
pub fn parallel<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    let pool = POOL.read().unwrap_or_else(|e| e.into_inner()).clone();
    match pool {
        Some(p) => p.install(f),
        None => f(),
    }
}

/// Threads that work on a job of [`run`]: the caller and the helpers (at
/// most the cap of [`set_threads`]).
pub fn threads() -> usize {
    let all = team().helpers + 1;
    match max_threads() {
        0 => all,
        cap => all.min(cap),
    }
}

/// Runs `task(i)` for every `i < parts` (at most [`MAX_PARTS`]), on the
/// calling thread and the team's helpers, and returns when all have run.
/// Parts run in any order, each exactly once. A panic in a part is raised
/// again here, after every other part has finished.
pub fn run(parts: usize, task: &(dyn Fn(usize) + Sync)) {
    assert!(parts <= MAX_PARTS, "team::run: at most {MAX_PARTS} parts");
    let t = team();
    if parts <= 1 || threads() == 1 || t.busy.swap(true, Ordering::Acquire) {
        let mut first = None;
        for i in 0..parts {
            if let Err(p) = catch_unwind(AssertUnwindSafe(|| task(i))) {
                first.get_or_insert(p);
            }
        }
        if let Some(p) = first {
            resume_unwind(p);
        }
        return;
    }
    t.task.store(&task as *const Task as *mut (), Ordering::Relaxed);
    t.done.store(0, Ordering::Relaxed);
    let id = job(t.state.load(Ordering::Relaxed)).wrapping_add(1) & 0xffff_ffff;
    // SeqCst pairs with the sleepers' check in `wait_for_job` (see there).
    t.state.store(id << 32 | (parts as u64) << 16, Ordering::SeqCst);
    if t.sleepers.load(Ordering::SeqCst) > 0 {
        let _g = t.lock.lock().unwrap_or_else(|e| e.into_inner());
        t.wake.notify_all();
    }
    t.work(id);
    let mut polls = 0u32;
    while t.done.load(Ordering::Acquire) < parts {
        polls = polls.wrapping_add(1);
        if polls.is_multiple_of(64) {
            // A helper holding a part may have been descheduled.
            std::thread::yield_now();
        } else {
            std::hint::spin_loop();
        }
    }
    t.task.store(std::ptr::null_mut(), Ordering::Relaxed);
    let panic = t.panic.lock().unwrap_or_else(|e| e.into_inner()).take();
    t.busy.store(false, Ordering::Release);
    if let Some(p) = panic {
        resume_unwind(p);
    }
}

impl Team {
    /// Claims and runs parts of job `id` until none is left.
    fn work(&self, id: u64) {
        loop {
            let s = self.state.load(Ordering::Acquire);
            if job(s) != id || next_of(s) >= parts_of(s) {
                return;
            }
            if self.state.compare_exchange_weak(s, s + 1, Ordering::AcqRel, Ordering::Acquire).is_err() {
                continue;
            }
            let ptr = self.task.load(Ordering::Relaxed) as *const Task;
            // SAFETY: the claim succeeded on a state word of job `id`, so part
            // `next_of(s)` of that job has not finished, and the caller of
            // `run` that published the job (and wrote `task` before its
            // release store of `state`, which our acquire read saw) does not
            // return, nor publish another job, before `done` counts this part.
            // So `ptr` points to that caller's live `Task`, whose referent
            // outlives the call to `run`.
            let task: Task = unsafe { *ptr };
            if let Err(p) = catch_unwind(AssertUnwindSafe(|| task(next_of(s)))) {
                self.panic.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert(p);
            }
            self.done.fetch_add(1, Ordering::Release);
        }
    }

    /// A helper's life: wait for a job, work on it (unless [`set_threads`]
    /// leaves helper `index` out), repeat.
    fn helper(&self, index: usize) {
        let mut seen = job(self.state.load(Ordering::Acquire));
        loop {
            seen = self.wait_for_job(seen);
            if index + 1 < threads() {
                self.work(seen);
            }
        }
    }

    /// Polls for a job other than `seen` for [`SPIN`], then sleeps until
    /// one is published; returns its number.
    fn wait_for_job(&self, seen: u64) -> u64 {
        let start = Instant::now();
        let mut polls = 0u32;
        loop {
            let id = job(self.state.load(Ordering::Acquire));
            if id != seen {
                return id;
            }
            polls = polls.wrapping_add(1);
            if polls.is_multiple_of(128) && start.elapsed() > SPIN {
                break;
            }
            std::hint::spin_loop();
        }
        let mut g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        // Announce the sleep before the last look at `state`: `run` stores
        // `state` before it reads `sleepers` (all SeqCst), so either it sees
        // this sleeper and notifies (under the lock, so after the wait
        // below has started), or this look sees its job.
        self.sleepers.fetch_add(1, Ordering::SeqCst);
        let id = loop {
            let id = job(self.state.load(Ordering::SeqCst));
            if id != seen {
                break id;
            }
            g = self.wake.wait(g).unwrap_or_else(|e| e.into_inner());
        };
        self.sleepers.fetch_sub(1, Ordering::SeqCst);
        id
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    #[test]
    fn every_part_runs_exactly_once() {
        for parts in [0, 1, 2, 3, 7, 64, 1000] {
            let hits: Vec<AtomicU32> = (0..parts).map(|_| AtomicU32::new(0)).collect();
            for _ in 0..50 {
                run(parts, &|i| {
                    hits[i].fetch_add(1, Ordering::Relaxed);
                });
            }
            assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 50), "{parts} parts");
        }
    }

    /// Runs two parts that wait (up to 20 ms) for each other; true when two
    /// threads ran them.
    fn two_threads_ran_a_job() -> bool {
        let ids = Mutex::new(std::collections::HashSet::new());
        let arrived = AtomicU32::new(0);
        run(2, &|_| {
            arrived.fetch_add(1, Ordering::SeqCst);
            let start = Instant::now();
            while arrived.load(Ordering::SeqCst) < 2 && start.elapsed() < Duration::from_millis(20) {
                std::hint::spin_loop();
            }
            ids.lock().unwrap().insert(std::thread::current().id());
        });
        let n = ids.lock().unwrap().len();
        n == 2
    }

    #[test]
    fn helpers_take_parts_when_there_are_helpers() {
        if threads() < 2 {
            return;
        }
        // Other tests may hold the team (their jobs then run inline): retry.
        assert!((0..200).any(|_| two_threads_ran_a_job()), "a helper polling for work takes a part");
        // A helper that idled longer than SPIN sleeps, and wakes for the next job.
        let woke = (0..50).any(|_| {
            std::thread::sleep(SPIN * 20);
            two_threads_ran_a_job()
        });
        assert!(woke, "a sleeping helper wakes for a job");
    }

    #[test]
    fn calls_from_many_threads_and_nested_calls_all_complete() {
        let total = AtomicU32::new(0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..200 {
                        run(4, &|_| {
                            // Nested: runs inline while the team is busy.
                            run(3, &|_| {
                                total.fetch_add(1, Ordering::Relaxed);
                            });
                        });
                    }
                });
            }
        });
        assert_eq!(total.load(Ordering::Relaxed), 4 * 200 * 4 * 3);
    }

    #[test]
    fn a_panicking_part_is_raised_in_the_caller_after_the_others_finish() {
        let finished = AtomicU32::new(0);
        let r = catch_unwind(AssertUnwindSafe(|| {
            run(8, &|i| {
                if i == 5 {
                    panic!("part five");
                }
                finished.fetch_add(1, Ordering::SeqCst);
            })
        }));
        let msg = r.expect_err("the panic reaches the caller");
        assert_eq!(msg.downcast_ref::<&str>(), Some(&"part five"));
        assert_eq!(finished.load(Ordering::SeqCst), 7);
        // The team is usable afterwards.
        let n = AtomicU32::new(0);
        run(5, &|_| {
            n.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(n.load(Ordering::Relaxed), 5);
    }
}
