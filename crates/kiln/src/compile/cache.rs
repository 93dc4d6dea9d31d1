//! The bounded cache of compiled programs: hashed lookup by signature, LRU
//! eviction, counters, miss reasons, one trace per key even when calls race,
//! and no entry left behind by a failed trace.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use crate::backend::Executable;
use crate::compile::signature::Signature;
use crate::compile::CompileOptions;
use crate::error::{Error, Result};

/// A cached compiled program.
pub struct Entry {
    /// The executable, lowered by the backend.
    pub exe: Arc<dyn Executable>,
    /// Argument shapes at trace time.
    pub traced_shapes: Vec<Vec<usize>>,
    /// Instructions before optimization.
    pub traced_instrs: usize,
    /// The program reads the implicit random key (the last input).
    pub uses_random: bool,
    /// The traced function's [`crate::compile::Outputs::Tree`], rebuilt around
    /// each call's arrays.
    pub tree: Box<dyn std::any::Any + Send + Sync>,
}

struct Slot {
    /// The program, once traced. Set only while the state lock is held, so
    /// the number of ready slots changes only under that lock.
    ready: OnceLock<Arc<Entry>>,
    /// Held by the call that traces this slot; racing calls wait on it.
    tracing: Mutex<()>,
    last_used: AtomicU64,
}

impl Slot {
    fn new(now: u64) -> Arc<Slot> {
        Arc::new(Slot { ready: OnceLock::new(), tracing: Mutex::new(()), last_used: AtomicU64::new(now) })
    }

    /// The slot's address, naming it in [`TRACING_HERE`].
    fn addr(self: &Arc<Slot>) -> usize {
        Arc::as_ptr(self) as usize
    }
}

thread_local! {
    /// The slots this thread is tracing now (nested traces: innermost last).
    /// A call that finds its slot here is a re-entrant call: it would wait on
    /// a lock this thread holds.
    static TRACING_HERE: RefCell<Vec<usize>> = const { RefCell::new(Vec::new()) };
}

/// Marks a slot as traced by this thread until dropped (also on unwind).
struct TracingHere;

impl TracingHere {
    fn enter(slot: &Arc<Slot>) -> TracingHere {
        TRACING_HERE.with(|t| t.borrow_mut().push(slot.addr()));
        TracingHere
    }

    fn contains(slot: &Arc<Slot>) -> bool {
        TRACING_HERE.with(|t| t.borrow().contains(&slot.addr()))
    }
}

impl Drop for TracingHere {
    fn drop(&mut self) {
        TRACING_HERE.with(|t| t.borrow_mut().pop());
    }
}

#[derive(Default)]
struct State {
    slots: HashMap<Signature, Arc<Slot>>,
    clock: u64,
    last_sig: Option<Signature>,
    miss_reasons: Vec<String>,
    stats: CacheStats,
    warned: bool,
}

impl State {
    /// Records the signature of the latest call (for miss reasons); a hit
    /// with the same signature as before costs a comparison, not a clone.
    fn remember(&mut self, sig: &Signature) {
        if self.last_sig.as_ref() != Some(sig) {
            self.last_sig = Some(sig.clone());
        }
    }

    fn hit(&mut self, sig: &Signature) {
        self.stats.hits += 1;
        self.remember(sig);
    }

    fn miss(&mut self, sig: &Signature) {
        let reason = sig.miss_reason(self.last_sig.as_ref());
        self.stats.misses += 1;
        if self.miss_reasons.len() == MAX_REASONS {
            self.miss_reasons.remove(0);
        }
        self.miss_reasons.push(reason);
        self.remember(sig);
    }

    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    /// Evicts least recently used programs until at most `capacity` remain,
    /// never `keep` (the one just traced). Slots still being traced hold no
    /// program and are never evicted: they are counted, and the bound
    /// enforced, when their trace completes.
    fn evict(&mut self, capacity: usize, keep: &Arc<Slot>) {
        let mut ready = self.slots.values().filter(|s| s.ready.get().is_some()).count();
        while ready > capacity {
            let victim = self
                .slots
                .iter()
                .filter(|(_, s)| s.ready.get().is_some() && !Arc::ptr_eq(s, keep))
                .min_by_key(|(_, s)| s.last_used.load(Ordering::Relaxed))
                .map(|(k, _)| k.clone());
            let Some(k) = victim else { break };
            self.slots.remove(&k);
            ready -= 1;
        }
    }
}

/// Cache counters.
///
/// Every call that reaches the cache (not a call made while compilation is
/// disabled, nor one inlined into an enclosing trace) counts exactly once,
/// as a hit or as a miss, so `hits + misses` is the number of such calls
/// (including [`crate::Compiled::explain`] and `to_dot`):
/// - a *hit* is a call served by a program it did not trace: one found in
///   the cache, or one that another thread was tracing for the same
///   signature, which the call waited for;
/// - a *miss* is a call that traced `f` itself, or was refused because it
///   would have had to wait for its own trace (a compiled function calling
///   itself, with the same signature, while being traced).
///
/// `traces` counts the successful traces, so `traces == misses` unless some
/// trace failed (`f` returned an error or panicked) or a re-entrant call was
/// refused; each of those is a miss without a trace.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Times `f` was traced successfully.
    pub traces: usize,
    /// Calls served by a program they did not trace (cached, or traced by
    /// another thread while they waited).
    pub hits: usize,
    /// Calls that traced `f` (successfully or not), or were refused as
    /// re-entrant.
    pub misses: usize,
    /// Programs in the cache now; never more than
    /// [`CompileOptions::max_cache_entries`].
    pub entries: usize,
}

/// Bounded cache of executables.
pub struct Cache {
    state: Mutex<State>,
    capacity: usize,
}

const MAX_REASONS: usize = 64;

impl Cache {
    /// An empty cache holding at most `capacity` programs.
    pub fn new(capacity: usize) -> Cache {
        Cache { state: Mutex::new(State::default()), capacity: capacity.max(1) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The cached entry for `sig`, tracing with `trace` on a miss.
    ///
    /// One trace per signature: a call that finds the signature being traced
    /// by another thread waits for that trace. A call that finds it being
    /// traced by its own thread (the traced function calls itself with the
    /// same signature) fails with [`Error::Invalid`] rather than wait for
    /// itself.
    pub fn get_or_trace(
        &self,
        sig: &Signature,
        trace: impl FnOnce() -> Result<Entry>,
        options: &CompileOptions,
    ) -> Result<Arc<Entry>> {
        let slot = {
            let mut st = self.lock();
            let now = st.tick();
            if let Some(slot) = st.slots.get(sig).cloned() {
                slot.last_used.store(now, Ordering::Relaxed);
                if let Some(e) = slot.ready.get() {
                    st.hit(sig);
                    return Ok(Arc::clone(e));
                }
                slot
            } else {
                let slot = Slot::new(now);
                st.slots.insert(sig.clone(), Arc::clone(&slot));
                slot
            }
        };
        if TracingHere::contains(&slot) {
            self.lock().miss(sig);
            return Err(Error::Invalid {
                op: "compile",
                msg: format!(
                    "the compiled function calls itself while being traced, with the same argument signature \
                     ({}); its program does not exist until the trace ends. Call the plain function inside \
                     instead, or call kiln::disable_compile() to run it eagerly and debug",
                    sig.describe()
                ),
            });
        }
        // One trace per key: racing callers wait here for the first one.
        let _guard = slot.tracing.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = slot.ready.get() {
            self.lock().hit(sig);
            return Ok(Arc::clone(e));
        }
        // This call traces (first for the key, or after a failed trace).
        self.lock().miss(sig);
        let traced = {
            let _here = TracingHere::enter(&slot);
            trace()
        };
        let mut st = self.lock();
        match traced {
            Ok(entry) => {
                st.stats.traces += 1;
                let e = Arc::new(entry);
                let _ = slot.ready.set(Arc::clone(&e));
                let now = st.tick();
                slot.last_used.store(now, Ordering::Relaxed);
                // The slot left the map if an earlier trace of the key failed
                // or the cache was cleared meanwhile: put it back unless a
                // newer call put another there.
                st.slots.entry(sig.clone()).or_insert_with(|| Arc::clone(&slot));
                st.evict(self.capacity, &slot);
                if st.stats.traces > options.recompile_warning && !st.warned {
                    st.warned = true;
                    log::warn!(
                        "kiln: a compiled function has been traced {} times (more than {}); last cache miss: {}. \
                         Pass changing values as array arguments, or use shapeless compilation for varying shapes.",
                        st.stats.traces,
                        options.recompile_warning,
                        st.miss_reasons.last().map(String::as_str).unwrap_or("unknown")
                    );
                }
                Ok(e)
            }
            Err(err) => {
                if st.slots.get(sig).is_some_and(|s| Arc::ptr_eq(s, &slot)) {
                    st.slots.remove(sig);
                }
                Err(err)
            }
        }
    }

    /// Counters and the number of live entries.
    pub fn stats(&self) -> CacheStats {
        let st = self.lock();
        CacheStats { entries: st.slots.values().filter(|s| s.ready.get().is_some()).count(), ..st.stats }
    }

    /// The reason of each miss so far (the most recent last, at most 64).
    pub fn miss_reasons(&self) -> Vec<String> {
        self.lock().miss_reasons.clone()
    }

    /// Drops every entry.
    pub fn clear(&self) {
        self.lock().slots.clear();
    }
}
