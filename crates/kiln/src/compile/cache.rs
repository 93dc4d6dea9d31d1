//! The bounded cache of compiled programs: hashed lookup by signature, LRU
//! eviction, counters, miss reasons, one trace per key even when calls race,
//! and no entry left behind by a failed trace.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use crate::compile::executable::Executable;
use crate::compile::signature::Signature;
use crate::compile::CompileOptions;
use crate::error::Result;

/// A cached compiled program.
pub struct Entry {
    /// The executable.
    pub exe: Executable,
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
    ready: OnceLock<Arc<Entry>>,
    tracing: Mutex<()>,
    last_used: AtomicU64,
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
}

/// Cache counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Times `f` was traced.
    pub traces: usize,
    /// Calls served by a cached program.
    pub hits: usize,
    /// Calls that found no cached program.
    pub misses: usize,
    /// Programs in the cache now.
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
    pub fn get_or_trace(
        &self,
        sig: &Signature,
        trace: impl FnOnce() -> Result<Entry>,
        options: &CompileOptions,
    ) -> Result<Arc<Entry>> {
        let slot = {
            let mut st = self.lock();
            st.clock += 1;
            let now = st.clock;
            if let Some(slot) = st.slots.get(sig).cloned() {
                slot.last_used.store(now, Ordering::Relaxed);
                if let Some(e) = slot.ready.get() {
                    st.stats.hits += 1;
                    st.remember(sig);
                    return Ok(Arc::clone(e));
                }
                slot
            } else {
                let reason = sig.miss_reason(st.last_sig.as_ref());
                st.stats.misses += 1;
                if st.miss_reasons.len() == MAX_REASONS {
                    st.miss_reasons.remove(0);
                }
                st.miss_reasons.push(reason);
                if st.slots.len() >= self.capacity {
                    let victim = st
                        .slots
                        .iter()
                        .filter(|(_, s)| s.ready.get().is_some())
                        .min_by_key(|(_, s)| s.last_used.load(Ordering::Relaxed))
                        .map(|(k, _)| k.clone());
                    if let Some(k) = victim {
                        st.slots.remove(&k);
                    }
                }
                let slot =
                    Arc::new(Slot { ready: OnceLock::new(), tracing: Mutex::new(()), last_used: AtomicU64::new(now) });
                st.slots.insert(sig.clone(), Arc::clone(&slot));
                slot
            }
        };
        // One trace per key: racing callers wait here for the first one.
        let _guard = slot.tracing.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = slot.ready.get() {
            let mut st = self.lock();
            st.remember(sig);
            return Ok(Arc::clone(e));
        }
        let traced = trace();
        let mut st = self.lock();
        st.remember(sig);
        match traced {
            Ok(entry) => {
                st.stats.traces += 1;
                let e = Arc::new(entry);
                let _ = slot.ready.set(Arc::clone(&e));
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
