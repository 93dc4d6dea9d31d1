//! The threads that run every parallel kernel.
//!
//! Every parallel loop of the CPU kernels runs on this one team, large
//! matrix products too (each thread runs a single-threaded `gemm` call on
//! its block of the output). One team, rather than a team for short work
//! and a rayon pool for long work, matters for the kernels of one compiled call:
//! a layernorm over 64 rows runs a reduction and an elementwise kernel of a
//! few microseconds each, and a second set of threads would wake (tens of
//! microseconds) for one while the first set still polls for work after
//! the other, each taking the other's cores.
//!
//! A rayon job started from a thread outside its pool is injected into the
//! pool's queue and the caller blocks until a worker has run it: a worker
//! that is asleep takes tens of microseconds to wake, and the caller's
//! wake-up after the job costs as much again. [`run`] instead splits a task
//! into numbered parts; the calling thread works on parts itself and the
//! team's helper threads claim the others; a helper that finished a job
//! keeps polling for the next one for [`SPIN`] before it sleeps, so
//! back-to-back kernels hand work over in well under a microsecond.
//!
//! Each helper has a slot of its own (a cache line): helper `i` claims
//! part `i + 1` there, the caller runs part 0, and parts past one per
//! thread are claimed from a shared counter. With every part claimed from
//! one shared word, helpers queued for its cache line: on a 16-core Xeon
//! the last of 8 parts started 2.1-2.5 us after the job was published,
//! against 0.9 us for 2 parts (with slots: 0.9 us for 8). A part whose helper is asleep or descheduled never
//! delays the caller: once the caller ran out of parts it takes every part
//! still unclaimed in a slot. One job runs at a time: a call made while
//! the team is busy (from another thread, or from inside a part) runs all
//! its parts on the calling thread.
//!
//! [`run_with`] gives each thread that takes part in a job its own state
//! (a kernel's scratch tiles), made once per thread and job rather than
//! once per part; [`chunks`] and [`map`] are the loops the kernels use.
//!
//! The team has `min(rayon's thread count, cores, MAX_THREADS) - 1`
//! helpers (so `RAYON_NUM_THREADS` sets it), started on first use; with
//! one thread `run` is a plain loop. [`set_threads`] caps the threads of
//! every parallel kernel at run time: helpers beyond the cap sit out.

use std::any::Any;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long a helper polls for the next job before it sleeps.
pub const SPIN: Duration = Duration::from_micros(100);
/// At most this many threads (the caller included) work on one job.
pub const MAX_THREADS: usize = 256;
/// Parts of one published job; [`run`] publishes longer tasks in batches.
const MAX_PARTS: usize = 0xffff;

/// What each thread taking part in a job runs: it takes parts from its
/// [`Claims`] until none is left.
type Worker<'a> = &'a (dyn Fn(&mut Claims) + Sync);

/// The parts a thread takes: of the team's current job, or (when the job
/// runs on the calling thread alone) all of them in order.
struct Claims<'t> {
    job: Option<Job<'t>>,
    /// A part claimed before the worker started.
    first: Option<usize>,
    /// The caller's claims: after the shared counter, the slots' parts
    /// that no helper claimed, from this slot on.
    steal_from: Option<usize>,
    /// For a job on the calling thread alone: the next part and the count.
    next: usize,
    parts: usize,
}

/// A published job, as a thread taking part in it sees it.
#[derive(Clone, Copy)]
struct Job<'t> {
    team: &'t Team,
    id: u64,
    parts: usize,
    /// Threads with a part of their own: the caller, helpers `0..slots - 1`.
    slots: usize,
}

impl Claims<'_> {
    fn take(&mut self) -> Option<usize> {
        if let Some(i) = self.first.take() {
            return Some(i);
        }
        let Some(j) = self.job else {
            return (self.next < self.parts).then(|| {
                self.next += 1;
                self.next - 1
            });
        };
        if j.parts > j.slots {
            if let Some(i) = j.team.claim_next(j.id, j.parts) {
                return Some(i);
            }
        }
        while let Some(k) = self.steal_from.filter(|&k| k + 1 < j.slots) {
            self.steal_from = Some(k + 1);
            if j.team.take_slot(k, j.id, STOLEN) {
                return Some(k + 1);
            }
        }
        None
    }
}

/// How a helper's slot took part in the job it holds (bits 2..34): its
/// helper claimed the part, then finished, or the caller took it.
const CLAIMED: u64 = 1;
const DONE: u64 = 2;
const STOLEN: u64 = 3;

/// A value alone on its cache lines.
#[repr(align(128))]
struct Line<T>(T);

impl<T> std::ops::Deref for Line<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

/// True when job `a` was published after job `b` (job numbers are 32 bits
/// and wrap).
fn later(a: u64, b: u64) -> bool {
    (a.wrapping_sub(b) as u32 as i32) > 0
}

/// The team's shared state.
///
/// `state` packs the current job: its number (bits 32..64), its part count
/// (bits 16..32) and how many threads have a part of their own (bits
/// 0..16: the caller and helpers `0..slots - 1`). `next` packs the job's
/// number (bits 32..64) and its next part for the shared counter (bits
/// 0..32), claimed by a compare-exchange of the whole word, so a claim can
/// only succeed for the job it was read from. `slots[i]` is helper `i`'s
/// (see [`Team::take_slot`]). What a caller writes to publish a job
/// (`state`, `worker`, `busy`) shares one cache line, which a helper
/// reads once to enter the job.
#[repr(C, align(128))]
struct Team {
    state: AtomicU64,
    /// The current job's worker: a pointer to the caller's `Worker`.
    worker: AtomicPtr<()>,
    /// A caller owns the team.
    busy: AtomicBool,
    helpers: usize,
    next: Line<AtomicU64>,
    slots: Box<[Line<AtomicU64>]>,
    /// Helpers that are asleep, or about to sleep.
    sleepers: Line<AtomicUsize>,
    lock: Mutex<()>,
    wake: Condvar,
}

fn job(s: u64) -> u64 {
    s >> 32
}

fn parts_of(s: u64) -> usize {
    ((s >> 16) & 0xffff) as usize
}

fn slots_of(s: u64) -> usize {
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
            next: Line(AtomicU64::new(0)),
            slots: (0..threads - 1).map(|_| Line(AtomicU64::new(0))).collect(),
            worker: AtomicPtr::new(std::ptr::null_mut()),
            sleepers: Line(AtomicUsize::new(0)),
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

/// Caps the threads that kernels use at `n` (at least 1), from now on: the
/// calling thread and at most `n - 1` helpers work on a kernel. A cap
/// above [`threads`]' count adds no thread. Errors when `n` is 0.
pub fn set_threads(n: usize) -> crate::Result<()> {
    if n == 0 {
        return Err(crate::Error::Invalid { op: "set_threads", msg: "the thread count must be at least 1".into() });
    }
    LIMIT.store(n, Ordering::SeqCst);
    Ok(())
}

/// The cap of [`set_threads`], or 0 when none was set.
pub fn max_threads() -> usize {
    LIMIT.load(Ordering::Relaxed)
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

/// Parts to split `work` into: one per `per_part` of it (a few
/// microseconds of one core's time, against a hand-over of about one), at
/// most one per thread, at least one. On a machine of many cores a small
/// job then runs on a few of them, rather than each core taking a sliver
/// and the next kernel reading the result back from all of their caches.
pub fn parts_for(work: usize, per_part: usize) -> usize {
    threads().min(work / per_part.max(1)).max(1)
}

/// One part per thread for a job over `bytes` of data (read and written),
/// when each thread's share fits in its core's level-2 cache
/// ([`stream::l2_cache_bytes`](crate::backend::cpu::stream::l2_cache_bytes),
/// 1 MiB where unknown), at most `bytes / min_part` parts; `None` when the
/// shares do not fit (the caller splits finer, for balance) or one part
/// does it all. Helper `i` takes part `i + 1` from its slot, so call after
/// call each thread reads and writes the same positions, still in its L2
/// from the call before: finer parts, claimed from a shared counter in
/// whatever order, sent each thread to data that another core's L2 held.
pub fn cached_parts(bytes: usize, min_part: usize) -> Option<usize> {
    let l2 = crate::backend::cpu::stream::l2_cache_bytes().unwrap_or(1 << 20);
    let parts = threads().min(bytes / min_part.max(1));
    (parts > 1 && bytes.div_ceil(parts) <= l2).then_some(parts)
}

/// Runs `task(i)` for every `i < parts`, on the calling thread and the
/// team's helpers, and returns when all have run. Parts run in any order,
/// each exactly once. A panic in a part is raised again here, after every
/// other part has finished.
pub fn run(parts: usize, task: &(dyn Fn(usize) + Sync)) {
    run_with(parts, || (), |_, i| task(i));
}

/// [`run`] where each thread that takes part makes its own state with
/// `init` before its first part and passes it to each of its parts.
pub fn run_with<S>(parts: usize, init: impl Fn() -> S + Sync, task: impl Fn(&mut S, usize) + Sync) {
    let panic: Mutex<Option<Box<dyn Any + Send>>> = Mutex::new(None);
    let keep = |p: Box<dyn Any + Send>| {
        panic.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert(p);
    };
    for base in (0..parts).step_by(MAX_PARTS) {
        let n = (parts - base).min(MAX_PARTS);
        let worker = |claims: &mut Claims| {
            let Some(first) = claims.take() else { return };
            let mut state = match catch_unwind(AssertUnwindSafe(&init)) {
                Ok(s) => s,
                Err(p) => {
                    keep(p);
                    while claims.take().is_some() {}
                    return;
                }
            };
            let mut part = Some(first);
            while let Some(i) = part {
                if let Err(p) = catch_unwind(AssertUnwindSafe(|| task(&mut state, base + i))) {
                    keep(p);
                }
                part = claims.take();
            }
        };
        publish(n, &worker);
    }
    if let Some(p) = panic.into_inner().unwrap_or_else(|e| e.into_inner()) {
        resume_unwind(p);
    }
}

/// Runs a job of `parts` parts (at most [`MAX_PARTS`]): `worker` on the
/// calling thread and on every helper that claims a part; returns when
/// every thread has left it.
fn publish(parts: usize, worker: Worker) {
    let t = team();
    if parts == 0 {
        return;
    }
    if parts == 1 || threads() == 1 || t.busy.swap(true, Ordering::Acquire) {
        worker(&mut Claims { job: None, first: None, steal_from: None, next: 0, parts });
        return;
    }
    let slots = threads().min(parts).min(t.helpers + 1);
    t.worker.store(&worker as *const Worker as *mut (), Ordering::Relaxed);
    let id = job(t.state.load(Ordering::Relaxed)).wrapping_add(1) & 0xffff_ffff;
    if parts > slots {
        t.next.store(id << 32 | slots as u64, Ordering::Relaxed);
    }
    // SeqCst pairs with the sleepers' check in `wait_for_job` (see there).
    t.state.store(id << 32 | (parts as u64) << 16 | slots as u64, Ordering::SeqCst);
    if t.sleepers.load(Ordering::SeqCst) > 0 {
        let _g = t.lock.lock().unwrap_or_else(|e| e.into_inner());
        t.wake.notify_all();
    }
    let job = Job { team: t, id, parts, slots };
    worker(&mut Claims { job: Some(job), first: Some(0), steal_from: Some(0), next: 0, parts });
    // Each slot's part is now ours (we took every one still unclaimed) or
    // its helper's: wait until those helpers have left the job (a helper
    // marks its slot done after its last part, the counter's included).
    for slot in &t.slots[..slots - 1] {
        let mut polls = 0u32;
        while slot.load(Ordering::Acquire) == id << 2 | CLAIMED {
            polls = polls.wrapping_add(1);
            if polls.is_multiple_of(64) {
                // A helper holding a part may have been descheduled.
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
    }
    t.worker.store(std::ptr::null_mut(), Ordering::Relaxed);
    t.busy.store(false, Ordering::Release);
}

/// Runs `f(offset, chunk)` over the consecutive chunks of `out` of `chunk`
/// elements (the last one shorter), in parallel.
pub fn chunks<T: Send>(out: &mut [T], chunk: usize, f: impl Fn(usize, &mut [T]) + Sync) {
    let chunk = chunk.max(1);
    let cells: Vec<Mutex<&mut [T]>> = out.chunks_mut(chunk).map(Mutex::new).collect();
    run(cells.len(), &|i| f(i * chunk, &mut cells[i].lock().unwrap_or_else(|e| e.into_inner())));
}

/// `f(i)` for every `i < parts`, computed in parallel, in order of `i`.
pub fn map<R: Send>(parts: usize, f: impl Fn(usize) -> R + Sync) -> Vec<R> {
    let slots: Vec<Mutex<Option<R>>> = (0..parts).map(|_| Mutex::new(None)).collect();
    run(parts, &|i| *slots[i].lock().unwrap_or_else(|e| e.into_inner()) = Some(f(i)));
    slots.into_iter().map(|s| s.into_inner().unwrap_or_else(|e| e.into_inner()).expect("every part ran")).collect()
}

impl Team {
    /// The next part of job `id` (of `parts`) from the shared counter.
    fn claim_next(&self, id: u64, parts: usize) -> Option<usize> {
        loop {
            let n = self.next.load(Ordering::SeqCst);
            let i = (n & 0xffff_ffff) as usize;
            if job(n) != id || i >= parts {
                return None;
            }
            if self.next.compare_exchange_weak(n, n + 1, Ordering::SeqCst, Ordering::SeqCst).is_ok() {
                return Some(i);
            }
        }
    }

    /// Takes slot `k`'s part of job `id`, `how` ([`CLAIMED`] by its helper,
    /// [`STOLEN`] by the caller), unless it was taken already. A slot holds
    /// an earlier job until one of the two takes it: both compare and
    /// exchange that value, so exactly one succeeds. A helper that saw job
    /// `id` late (the caller has finished it, or published another since)
    /// finds the slot at `id` or later and takes nothing.
    fn take_slot(&self, k: usize, id: u64, how: u64) -> bool {
        let slot = &self.slots[k];
        let v = slot.load(Ordering::Acquire);
        later(id, v >> 2) && slot.compare_exchange(v, id << 2 | how, Ordering::AcqRel, Ordering::Relaxed).is_ok()
    }

    /// Helper `index`'s part in job `id` (published as `state`): its slot's
    /// part, then parts from the shared counter; then its slot is done.
    fn work(&self, index: usize, id: u64, state: u64) {
        if !self.take_slot(index, id, CLAIMED) {
            return;
        }
        let ptr = self.worker.load(Ordering::Relaxed) as *const Worker;
        // SAFETY: the slot was taken for job `id`, which is live: its
        // caller returns (and clears `worker`, or publishes another job)
        // only once every slot it handed out holds something other than
        // `id` CLAIMED, which ours does until the store below, after the
        // worker returned. The caller wrote `worker` before its SeqCst
        // store of `state` that we read with Acquire. So `ptr` points to
        // that caller's live `Worker`, whose referent outlives the job.
        let worker: Worker = unsafe { *ptr };
        let job = Job { team: self, id, parts: parts_of(state), slots: slots_of(state) };
        // The worker catches the panics of its parts and of its state.
        worker(&mut Claims { job: Some(job), first: Some(index + 1), steal_from: None, next: 0, parts: 0 });
        self.slots[index].store(id << 2 | DONE, Ordering::Release);
    }

    /// A helper's life: wait for a job, work on it (unless the job gave
    /// helper `index` no slot: too few parts, or [`set_threads`] leaves it
    /// out), repeat. A helper outside a job touches none of its words.
    fn helper(&self, index: usize) {
        let mut seen = job(self.state.load(Ordering::Acquire));
        loop {
            seen = self.wait_for_job(seen);
            let s = self.state.load(Ordering::Acquire);
            if job(s) == seen && index + 1 < slots_of(s) {
                self.work(index, seen, s);
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
    fn cached_parts_give_each_thread_a_share_that_fits_its_l2() {
        let l2 = crate::backend::cpu::stream::l2_cache_bytes().unwrap_or(1 << 20);
        let t = threads();
        // Too little for two parts of `min_part`: no split.
        assert_eq!(cached_parts(1000, 1000), None);
        assert_eq!(cached_parts(0, 64), None);
        if t >= 2 {
            // Two small parts' worth: two parts, each within the L2.
            assert_eq!(cached_parts(2 * 4096, 4096), Some(2));
            let parts = cached_parts(t * l2, 1).expect("a share of one L2 per thread fits");
            assert_eq!(parts, t);
            // A share past the L2: the caller splits finer.
            assert_eq!(cached_parts(t * l2 + t, 1), None);
        } else {
            assert_eq!(cached_parts(1 << 20, 1), None);
        }
    }

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

    /// Runs two parts that wait (up to 100 ms) for each other; true when two
    /// threads ran them. The wait yields: under valgrind, which runs one
    /// thread at a time, a spinning part would keep the helper off the CPU.
    /// Jobs back to back, each with as many parts as threads or a few
    /// more (slots and the shared counter), parts short enough that
    /// helpers and the caller race for the slots: every part of every job
    /// runs once, and no part of a job runs after the job returned.
    #[test]
    fn back_to_back_jobs_run_each_part_once() {
        let jobs = if cfg!(debug_assertions) { 2000 } else { 20000 };
        let hits: Vec<AtomicU32> = (0..threads() + 3).map(|_| AtomicU32::new(0)).collect();
        for j in 0..jobs {
            let parts = 2 + j % (threads() + 2);
            run(parts, &|i| {
                hits[i].fetch_add(1, Ordering::Relaxed);
                // Long enough (about a microsecond) for a polling helper
                // to arrive while the caller still works.
                let start = Instant::now();
                while start.elapsed() < Duration::from_micros(1) {
                    std::hint::spin_loop();
                }
            });
            for (i, h) in hits.iter().enumerate() {
                let n = h.swap(0, Ordering::Relaxed);
                assert_eq!(n, u32::from(i < parts), "job {j} of {parts} parts: part {i} ran {n} times");
            }
        }
    }

    fn two_threads_ran_a_job() -> bool {
        let ids = Mutex::new(std::collections::HashSet::new());
        let arrived = AtomicU32::new(0);
        run(2, &|_| {
            arrived.fetch_add(1, Ordering::SeqCst);
            let start = Instant::now();
            while arrived.load(Ordering::SeqCst) < 2 && start.elapsed() < Duration::from_millis(100) {
                std::thread::yield_now();
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
        // Other tests may hold the team (their jobs then run inline): retry,
        // for up to a minute (a loaded machine, or valgrind).
        let start = Instant::now();
        let took = std::iter::repeat_with(two_threads_ran_a_job)
            .take_while(|_| start.elapsed() < Duration::from_secs(60))
            .any(|two| two);
        assert!(took, "a helper polling for work takes a part");
        // A helper that idled longer than SPIN sleeps, and wakes for the next job.
        let woke = (0..50).any(|_| {
            std::thread::sleep(SPIN * 20);
            two_threads_ran_a_job()
        });
        assert!(woke, "a sleeping helper wakes for a job");
    }

    #[test]
    fn each_thread_makes_its_state_once_per_job() {
        let made = AtomicU32::new(0);
        let hits: Vec<AtomicU32> = (0..300).map(|_| AtomicU32::new(0)).collect();
        run_with(
            hits.len(),
            || {
                made.fetch_add(1, Ordering::SeqCst);
                Vec::<usize>::new()
            },
            |seen, i| {
                // A thread's state carries over from its earlier parts.
                assert!(seen.iter().all(|&j| j != i));
                seen.push(i);
                hits[i].fetch_add(1, Ordering::Relaxed);
            },
        );
        assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
        let made = made.load(Ordering::SeqCst) as usize;
        assert!((1..=threads()).contains(&made), "{made} states for {} threads", threads());
        // No part, no state.
        run_with(0, || panic!("no state for an empty job"), |_: &mut (), _| {});
    }

    #[test]
    fn loops_cover_every_element_in_order_past_one_batch_of_parts() {
        // More parts than one published job holds.
        let n = MAX_PARTS * 2 + 17;
        let mut v = vec![0usize; n];
        chunks(&mut v, 1, |at, c| c[0] = at);
        assert!(v.iter().enumerate().all(|(i, &x)| x == i));
        let mut w = vec![0usize; 1000];
        chunks(&mut w, 64, |at, c| {
            assert!(c.len() == 64 || at + c.len() == 1000);
            c.iter_mut().enumerate().for_each(|(k, x)| *x = at + k);
        });
        assert!(w.iter().enumerate().all(|(i, &x)| x == i));
        assert_eq!(map(n, |i| i * 3), (0..n).map(|i| i * 3).collect::<Vec<_>>());
        assert!(map(0, |i| i).is_empty());
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
