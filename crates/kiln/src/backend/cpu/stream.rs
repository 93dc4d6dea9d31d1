//! Streaming (non-temporal) stores for large outputs.
//!
//! A kernel that writes an output much larger than the caches gains nothing
//! from leaving it in cache, and an ordinary store first reads each cache
//! line it writes (a read for ownership), so a copy-like kernel moves three
//! bytes for every two it needs. Streaming stores write whole lines straight
//! to memory; but an output that the last-level cache could hold is then
//! read back from memory by the next kernel (or the next call), where
//! ordinary stores would have left it in cache. The fused executor stores
//! its output tiles through [`copy`] when [`streams`] says so, and calls
//! [`fence`] before its task ends so the lines are visible to the threads
//! that read them next.
//!
//! Three rules, each measured on an AMD EPYC (32 MiB L3) and Intel Xeons
//! (300 and 480 MiB L3), alternating the settings, make the first guess;
//! an elementwise kernel past 16 MiB then learns from its own launches
//! which way is faster ([`StoreChoice`]), because no rule of the cache's
//! size held on every machine: a 2-core VM of a Xeon with 480 MiB of L3
//! shares it with its neighbours and streamed `x * 2 + 1` faster from 32
//! MiB, where a 16-core host with 105 MiB wrote 32 MiB 1.5x faster with
//! ordinary stores and 128 MiB 1.7-1.9x faster streamed, and kernels heavy
//! in arithmetic (a gelu) stored ordinarily 1.15-1.2x faster at 128 MiB
//! there, on 16 threads and on 2.
//!
//! - An elementwise kernel streams when the bytes it reads and writes pass
//!   what the last-level cache keeps for the next call ([`streams`]):
//!   three quarters of it ([`stream_min_working_set`]; glibc's `memcpy`
//!   sets its non-temporal threshold from the shared cache's size the same
//!   way), and for a kernel bound by memory rather than arithmetic (fewer
//!   than [`COMPUTE_BOUND_OPS`] vector operations per vector) at most
//!   [`MEMORY_BOUND_MAX_CACHED`]. On the EPYC, `x * 2 + 1` with 8 and 16
//!   MiB read and written ran 2.2x and 1.7x faster with ordinary stores,
//!   `gelu_erf` 1.1x; streaming won from 24 MiB up (1.1-1.3x). On the
//!   Xeon, ordinary stores ran `gelu_erf` 1.2-1.3x faster at every size
//!   its L3 holds (8 to 128 MiB), but `x * 2 + 1` and `x * y + 1` 1.1-1.5x
//!   slower from 32 MiB up, though the L3 holds them too.
//! - A row kernel prefetches an input one row ahead when its rows come
//!   from memory ([`from_memory`]: the input and an output its size pass
//!   what the cache keeps). Layernorm over (1024, 1024) on the EPYC, whose
//!   4 MiB input stays in L3 between calls, ran 1.02-1.27x faster without
//!   the prefetch (four runs, one and two threads), over (4096, 1024)
//!   1.2-1.3x slower; on the Xeon softmax and rmsnorm over 4096x4096 ran
//!   as fast or faster without it (its L3 holds them), on the EPYC 1.5x
//!   slower.
//! - The rows of a row chain or row kernel stream an output when it and an
//!   input of its size pass half the last-level cache, or 40 MiB
//!   ([`rows_stream`]): these two-pass rows keep less of the cache than an
//!   elementwise kernel. On the EPYC that is 16 MiB: ordinary stores made
//!   softmax, layernorm and rmsnorm over 4096x4096 and 4096x1024 1.1-1.8x
//!   slower; streaming made layernorm over (1024, 1024), 8 MiB in all,
//!   1.1-1.9x slower on a two-core Zen 3 EPYC in six alternations of six
//!   (the limit was a quarter of the cache before, from a measurement that
//!   had found the opposite); on the Xeon, 40
//!   MiB ([`ROWS_MAX_CACHED`]): there, over rows of 1024 on two threads,
//!   ordinary stores ran layernorm 1.25x and softmax 1.04x faster over 4096
//!   rows (16 MiB written), were within 8-20% either way over 6144 rows,
//!   and 1.15-1.3x slower over 8192 rows, over 2048x4096 and over
//!   4096x4096 (32 and 64 MiB).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{LazyLock, OnceLock};

use crate::backend::cpu::simd_math::{detected_level, Level};
use crate::backend::cpu::team;
use crate::memory::parse_bytes;

/// Inputs of at least this many bytes (larger than a core's L2) are
/// prefetched by the interpreter's and the compiled kernels' runs.
pub const STREAM_MIN_BYTES: usize = 4 << 20;

/// Whether a row chain or row kernel writes an output of `bytes` with
/// streaming stores: when it and an input of its size pass half the
/// last-level cache (two thirds of [`stream_min_working_set`]), or
/// [`ROWS_MAX_CACHED`] (see the module docs).
pub fn rows_stream(bytes: usize) -> bool {
    bytes.saturating_mul(2) > (stream_min_working_set() / 3 * 2).min(ROWS_MAX_CACHED)
}

/// The largest output and input of its size that a row chain or row
/// kernel keeps in cache (writes with ordinary stores), however large the
/// cache ([`rows_stream`]).
pub const ROWS_MAX_CACHED: usize = 40 << 20;

/// Whether rows read in place from an input of `bytes` come from memory
/// rather than the last-level cache between calls: the input and an output
/// of its size pass what the cache keeps ([`stream_min_working_set`]). A
/// row kernel prefetches such an input one row ahead (see the module docs).
pub fn from_memory(bytes: usize) -> bool {
    bytes.saturating_mul(2) > stream_min_working_set()
}

/// Vector operations per vector of output from which an elementwise
/// kernel counts as bound by its arithmetic ([`streams`]): at the 10-20
/// GB/s a core gets from memory here, reading and writing one 64-byte
/// vector takes some 20-40 cycles, as long as 32 vector operations (a
/// gelu has 44-49, `exp` 16, `x * 2 + 1` 2).
pub const COMPUTE_BOUND_OPS: usize = 32;

/// The largest working set that a kernel bound by memory keeps in cache
/// (writes with ordinary stores), however large the cache ([`streams`]).
pub const MEMORY_BOUND_MAX_CACHED: usize = 24 << 20;

/// Whether an elementwise kernel that reads and writes `working_set` bytes
/// in all, computing `vector_ops` vector operations per vector of output,
/// streams its outputs (see the module docs).
pub fn streams(working_set: usize, vector_ops: usize) -> bool {
    let cached = stream_min_working_set();
    working_set > if vector_ops >= COMPUTE_BOUND_OPS { cached } else { cached.min(MEMORY_BOUND_MAX_CACHED) }
}

/// The working set above which elementwise kernels stream: three quarters
/// of the last-level cache ([`last_level_cache_bytes`]), or 24 MiB where
/// its size is unknown; the environment variable `KILN_STREAM_MIN_WORKING_SET`
/// (bytes, read once) or [`set_stream_min_working_set`] overrides it.
pub fn stream_min_working_set() -> usize {
    MIN_WORKING_SET.load(Ordering::Relaxed)
}

static MIN_WORKING_SET: LazyLock<AtomicUsize> = LazyLock::new(|| {
    let cache = last_level_cache_bytes().map_or(24 << 20, |b| b / 4 * 3);
    AtomicUsize::new(env_bytes("KILN_STREAM_MIN_WORKING_SET").unwrap_or(cache))
});

/// Sets [`stream_min_working_set`] for the rest of the process: for
/// measurements.
pub fn set_stream_min_working_set(bytes: usize) {
    MIN_WORKING_SET.store(bytes, Ordering::Relaxed);
}

/// A size in bytes from the environment variable `name` (bytes, or with a
/// `K`, `M` or `G` suffix).
fn env_bytes(name: &str) -> Option<usize> {
    std::env::var(name).ok().and_then(|v| parse_bytes(&v))
}

/// The size in bytes of the first CPU's last-level cache (one instance,
/// shared by the cores on it), read once from Linux's
/// `/sys/devices/system/cpu/cpu0/cache`; `None` where that is not there.
pub fn last_level_cache_bytes() -> Option<usize> {
    static LLC: OnceLock<Option<usize>> = OnceLock::new();
    *LLC.get_or_init(|| data_caches().into_iter().max().map(|(_, bytes)| bytes))
}

/// The size in bytes of the first CPU's level-2 cache (each core's own on
/// the x86 CPUs of today), read once as [`last_level_cache_bytes`] is;
/// `None` where Linux does not say.
pub fn l2_cache_bytes() -> Option<usize> {
    static L2: OnceLock<Option<usize>> = OnceLock::new();
    *L2.get_or_init(|| data_caches().into_iter().find(|&(level, _)| level == 2).map(|(_, bytes)| bytes))
}

/// The data (or unified) caches of the first CPU: level and bytes.
fn data_caches() -> Vec<(u32, usize)> {
    let Ok(dir) = std::fs::read_dir("/sys/devices/system/cpu/cpu0/cache") else { return vec![] };
    let read = |p: &std::path::Path, f: &str| std::fs::read_to_string(p.join(f)).ok();
    dir.flatten()
        .filter_map(|e| {
            let p = e.path();
            let level: u32 = read(&p, "level")?.trim().parse().ok()?;
            let kind = read(&p, "type")?;
            (kind.trim() != "Instruction").then_some(())?;
            Some((level, parse_bytes(&read(&p, "size")?)?))
        })
        .collect()
}

/// Working sets from which a group learns how to store its outputs
/// ([`StoreChoice`]), where the cache is larger than the static rule's
/// threshold (smaller ones store as [`streams`] says): 16 MiB, where
/// streaming stores ran `x * 2 + 1` 1.35-2x slower on the 16-core host
/// (8 and 16 threads) and the EPYC, and no faster on two of the host's
/// cores.
pub const LEARN_MIN_BYTES: usize = 16 << 20;

/// Launches in a run of one way while a group learns its stores, the
/// first of them not timed ([`StoreChoice`]).
pub const RUN: u32 = 4;

/// Launches of one size class that a group runs to learn its stores:
/// three runs in each way, alternately ([`StoreChoice`]).
pub const TRIALS: u32 = 6 * RUN;

/// How much faster the other way's best time must be for a group to
/// keep it rather than the static rule's guess, in percent.
pub const MARGIN: u32 = 5;

/// Size classes a group learns at most (powers of two of the working set).
const CLASSES: usize = 16;

/// How a group stores its outputs, learned from the times of its own
/// launches: whether streaming stores beat ordinary ones depends on how much
/// of the last-level cache the process really has (a VM with two of a
/// socket's cores shares its cache with other tenants; a host with 16 cores
/// reads its cache many times faster than memory), and on how much
/// arithmetic hides the stores. The static rule ([`streams`]) is the guess;
/// a group that launches at a working set above [`learn_min_working_set`]
/// runs its next [`TRIALS`] launches of that size class (a power of two)
/// in runs of [`RUN`], the guess and the other way alternately, times all
/// but the first of each run (which hands over the cache's state: an
/// output written past the cache leaves the next one's lines in memory),
/// and keeps the other way only when its best time beats the guess's by
/// [`MARGIN`] percent. Each size class learns on its own, for each number
/// of threads (more cores read the cache faster); clones of a group made
/// after its first such launch share what it learned (an eager op's
/// group, made per call, allocates nothing for it and keeps the guess).
/// The stores never change a result's bits.
#[derive(Clone, Debug, Default)]
pub struct StoreChoice(OnceLock<std::sync::Arc<std::sync::Mutex<smallvec::SmallVec<[Learning; 2]>>>>);

/// What a group learned, or is learning, about one size class.
#[derive(Clone, Copy, Debug)]
struct Learning {
    /// The size class ([`class`]).
    class: u32,
    /// The static rule's way for this class.
    guess: bool,
    /// Launches handed a trial so far.
    issued: u32,
    /// Timed trials reported so far.
    timed: u32,
    /// The best timed trial, in nanoseconds: the guess's way, the other.
    best: [u64; 2],
    /// The way kept, once every trial has reported.
    kept: Option<bool>,
}

static LEARNED: AtomicUsize = AtomicUsize::new(0);

/// Size classes that groups have learned how to store so far in this
/// process ([`StoreChoice`]): for tests and diagnostics.
pub fn learned() -> usize {
    LEARNED.load(Ordering::Relaxed)
}

/// How one launch stores its outputs ([`StoreChoice::choose`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stores {
    /// Whether its outputs are written with streaming stores.
    pub stream: bool,
    /// The size class and the trial's number, when the launch is a timed
    /// trial whose time goes back through [`StoreChoice::report`].
    timed: Option<(u32, u32)>,
}

impl Stores {
    /// Whether the launch's time is to be reported.
    pub fn timed(&self) -> bool {
        self.timed.is_some()
    }
}

/// The working set above which groups learn how to store:
/// [`LEARN_MIN_BYTES`], or [`stream_min_working_set`] where that is
/// smaller (a small cache, or a limit lowered by tests).
pub fn learn_min_working_set() -> usize {
    stream_min_working_set().min(LEARN_MIN_BYTES)
}

/// The size class of a launch reading and writing `working_set` bytes on
/// `threads` threads: the bits of both.
fn class(working_set: usize, threads: usize) -> u32 {
    let threads = u32::try_from(threads).unwrap_or(u32::MAX).min(u32::MAX >> 8);
    threads << 8 | (usize::BITS - working_set.leading_zeros())
}

/// Whether trial `i` of a class runs the other way than the guess: runs
/// of [`RUN`] launches, the guess's first.
fn the_other_way(i: u32) -> bool {
    (i / RUN) % 2 == 1
}

impl StoreChoice {
    /// How a launch reading and writing `working_set` bytes stores its
    /// outputs, given the static rule's `guess` for it.
    pub fn choose(&self, working_set: usize, guess: bool) -> Stores {
        let plain = Stores { stream: guess, timed: None };
        if working_set <= learn_min_working_set() {
            return plain;
        }
        let class = class(working_set, team::threads());
        let mut all = self.0.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
        let l = match all.iter().position(|l| l.class == class) {
            Some(i) => &mut all[i],
            None if all.len() < CLASSES => {
                all.push(Learning { class, guess, issued: 0, timed: 0, best: [u64::MAX; 2], kept: None });
                all.last_mut().expect("just pushed")
            }
            None => return plain,
        };
        if let Some(kept) = l.kept {
            return Stores { stream: kept, timed: None };
        }
        if l.issued >= TRIALS {
            // Every trial handed out, some not yet reported (launches from
            // several threads): the guess meanwhile.
            return Stores { stream: l.guess, timed: None };
        }
        let i = l.issued;
        l.issued += 1;
        Stores { stream: l.guess != the_other_way(i), timed: (i % RUN != 0).then_some((class, i)) }
    }

    /// Reports the time of a launch that `choose` made a timed trial;
    /// settles the class once every timed trial is in.
    pub fn report(&self, s: Stores, time: std::time::Duration) {
        let (Some((class, i)), Some(all)) = (s.timed, self.0.get()) else { return };
        let mut all = all.lock().unwrap_or_else(|e| e.into_inner());
        let Some(l) = all.iter_mut().find(|l| l.class == class) else { return };
        let other = usize::from(the_other_way(i));
        l.best[other] = l.best[other].min(u64::try_from(time.as_nanos()).unwrap_or(u64::MAX));
        l.timed += 1;
        if l.timed == TRIALS / RUN * (RUN - 1) {
            // The other way only when it is faster by the margin.
            let switch = u128::from(l.best[1]) * 100 < u128::from(l.best[0]) * u128::from(100 - MARGIN);
            l.kept = Some(l.guess != switch);
            LEARNED.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The way kept for working sets of `working_set`'s size class, once learned.
    pub fn kept(&self, working_set: usize) -> Option<bool> {
        let class = class(working_set, team::threads());
        let all = self.0.get()?.lock().unwrap_or_else(|e| e.into_inner());
        all.iter().find(|l| l.class == class).and_then(|l| l.kept)
    }
}

/// Copies `bytes` bytes from `src` to `dst` with streaming stores where the
/// CPU has them (the unaligned head and tail with ordinary stores).
///
/// # Safety
/// `src` must be valid for reading and `dst` for writing `bytes` bytes, and
/// the two ranges must not overlap.
pub unsafe fn copy(dst: *mut u8, src: *const u8, bytes: usize) {
    match detected_level() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX-512F; the caller's contract covers the ranges.
        Level::Avx512 => unsafe { x86::copy512(dst, src, bytes) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX2; the caller's contract covers the ranges.
        Level::Avx2 => unsafe { x86::copy256(dst, src, bytes) },
        // SAFETY: the caller's contract.
        _ => unsafe { std::ptr::copy_nonoverlapping(src, dst, bytes) },
    }
}

/// Orders this thread's streaming stores before its later stores (and so
/// before the synchronization that hands the output to another thread).
pub fn fence() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: SFENCE is part of SSE, which every x86-64 CPU has.
    unsafe {
        std::arch::x86_64::_mm_sfence()
    }
}

/// Asks the CPU to start loading elements `range` of `buf` into cache (the
/// next tile of an input read in place from memory, while this tile is
/// computed: a kernel with long per-element work, such as `tanh`, keeps
/// too few loads in flight to stream from memory on its own).
pub fn prefetch(buf: &crate::buffer::Buffer, range: std::ops::Range<usize>) {
    #[cfg(target_arch = "x86_64")]
    crate::with_buffer!(buf, v => {
        let (lo, hi) = (range.start.min(v.len()), range.end.min(v.len()));
        let bytes = std::mem::size_of_val(&v[lo..hi]);
        let base = v[lo..hi].as_ptr().cast::<i8>();
        for b in (0..bytes).step_by(64) {
            // SAFETY: PREFETCHT0 is part of SSE (every x86-64 CPU); the
            // address is inside `v`, and a prefetch is only a hint.
            unsafe { std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(base.add(b)) };
        }
    });
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (buf, range);
}

/// Asks the CPU to start loading the cache line `bytes` past `at`. Only a
/// hint: the address is never dereferenced, so it may lie past the end of
/// the allocation `at` points into.
#[inline(always)]
pub fn prefetch_ahead(at: *const u8, bytes: usize) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: PREFETCHT0 is part of SSE (every x86-64 CPU) and never faults,
    // whatever the address; `wrapping_add` computes it without a claim that
    // it is in bounds.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(at.wrapping_add(bytes).cast())
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (at, bytes);
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// Bytes to copy with ordinary stores before `dst` reaches alignment `a`.
    fn head(dst: *mut u8, bytes: usize, a: usize) -> usize {
        ((a - dst as usize % a) % a).min(bytes)
    }

    /// Copies with ordinary stores up to `w`-byte alignment of `dst`, then
    /// `w` bytes at a time with `line(dst + i, src + i)`, then the tail.
    ///
    /// # Safety
    /// As [`super::copy`]; `line` must write exactly `w` bytes at an aligned `dst`.
    #[inline(always)]
    unsafe fn copy_lines(dst: *mut u8, src: *const u8, bytes: usize, w: usize, line: impl Fn(*mut u8, *const u8)) {
        let h = head(dst, bytes, w);
        // SAFETY: `h <= bytes`, inside both ranges, which do not overlap.
        unsafe { std::ptr::copy_nonoverlapping(src, dst, h) };
        let mut i = h;
        while i + w <= bytes {
            // SAFETY: `i + w <= bytes`, and `dst + i` is `w`-aligned (past the head).
            line(unsafe { dst.add(i) }, unsafe { src.add(i) });
            i += w;
        }
        // SAFETY: the tail `i..bytes` is inside both ranges.
        unsafe { std::ptr::copy_nonoverlapping(src.add(i), dst.add(i), bytes - i) };
    }

    /// # Safety
    /// AVX-512F is available; the ranges are as in [`super::copy`].
    #[target_feature(enable = "avx512f")]
    pub unsafe fn copy512(dst: *mut u8, src: *const u8, bytes: usize) {
        // SAFETY: each line is 64 bytes inside the ranges, `d` 64-byte
        // aligned as the streaming store requires; the load is unaligned.
        unsafe { copy_lines(dst, src, bytes, 64, |d, s| _mm512_stream_si512(d.cast(), _mm512_loadu_si512(s.cast()))) }
    }

    /// # Safety
    /// AVX2 is available; the ranges are as in [`super::copy`].
    #[target_feature(enable = "avx2")]
    pub unsafe fn copy256(dst: *mut u8, src: *const u8, bytes: usize) {
        // Whole cache lines, two stores each: a streaming store of part of
        // a line leaves the CPU to write that part alone (rows of 64
        // elements a half line off alignment, as a transpose of 4104
        // columns writes them, took 2x as long as aligned rows).
        // SAFETY: each line is 64 bytes inside the ranges, `d` 64-byte
        // aligned (so both halves are 32-byte aligned, as the streaming
        // store requires); the loads are unaligned.
        unsafe {
            copy_lines(dst, src, bytes, 64, |d, s| {
                _mm256_stream_si256(d.cast(), _mm256_loadu_si256(s.cast()));
                _mm256_stream_si256(d.add(32).cast(), _mm256_loadu_si256(s.add(32).cast()));
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernels_bound_by_memory_stream_sooner_than_those_bound_by_arithmetic() {
        let cached = super::stream_min_working_set();
        let memory_max = cached.min(super::MEMORY_BOUND_MAX_CACHED);
        for ops in [1, 2, super::COMPUTE_BOUND_OPS - 1] {
            assert!(!super::streams(memory_max, ops), "{ops} ops, at the limit: ordinary stores");
            assert!(super::streams(memory_max + 1, ops), "{ops} ops, past it: streamed");
        }
        for ops in [super::COMPUTE_BOUND_OPS, 49] {
            assert!(!super::streams(cached, ops), "{ops} ops keep all the cache holds");
            assert!(super::streams(cached + 1, ops), "{ops} ops, past the cache: streamed");
        }
        assert!(!super::streams(64 << 10, 1), "small kernels never stream");
    }

    #[test]
    fn rows_come_from_memory_past_what_the_cache_keeps() {
        let cached = super::stream_min_working_set();
        assert!(!super::from_memory(cached / 2), "an input and an output of its size fit");
        assert!(super::from_memory(cached / 2 + 1), "one byte more does not");
        assert!(super::from_memory(usize::MAX), "no overflow");
    }

    #[test]
    fn cache_sizes_parse_as_sysfs_writes_them() {
        // Sysfs writes sizes as the memory limit's parser reads them.
        assert_eq!(super::parse_bytes("32768K\n"), Some(32 << 20));
        assert_eq!(super::parse_bytes("2M"), Some(2 << 20));
        assert_eq!(super::parse_bytes("300M"), Some(300 << 20));
        assert_eq!(super::parse_bytes("4096"), Some(4096));
        assert_eq!(super::parse_bytes("lots"), None);
        assert_eq!(super::parse_bytes(""), None);
        if std::path::Path::new("/sys/devices/system/cpu/cpu0/cache/index0/size").exists() {
            let llc = super::last_level_cache_bytes().expect("Linux names its caches");
            assert!(llc >= 256 << 10, "a last-level cache of {llc} bytes");
        }
    }

    #[test]
    fn copies_every_byte_at_any_alignment_and_length() {
        let src: Vec<u8> = (0..1000u32).map(|i| (i * 7 + 3) as u8).collect();
        for off in [0usize, 1, 3, 16, 31, 33, 63] {
            for len in [0usize, 1, 15, 31, 32, 63, 64, 65, 127, 300, 900] {
                let mut dst = vec![0xAAu8; 1000 + 64];
                // SAFETY: `off + len <= 1000 + 64` and `len <= src.len()`; distinct vectors.
                unsafe { copy(dst.as_mut_ptr().add(off), src.as_ptr(), len) };
                fence();
                assert_eq!(&dst[off..off + len], &src[..len], "offset {off}, length {len}");
                assert!(dst[..off].iter().all(|&b| b == 0xAA), "offset {off}, length {len}: wrote before");
                assert!(dst[off + len..].iter().all(|&b| b == 0xAA), "offset {off}, length {len}: wrote after");
            }
        }
    }

    /// Runs `c`'s trials for a working set of `ws` bytes with the static
    /// rule's `guess`, timing each launch as `time(streams)` nanoseconds;
    /// returns the ways the launches took.
    fn learn(c: &StoreChoice, ws: usize, guess: bool, time: impl Fn(bool) -> u64) -> Vec<bool> {
        (0..TRIALS)
            .map(|_| {
                let s = c.choose(ws, guess);
                c.report(s, std::time::Duration::from_nanos(time(s.stream)));
                s.stream
            })
            .collect()
    }

    #[test]
    fn groups_keep_the_faster_way_to_store_once_timed() {
        let big = learn_min_working_set() * 2;
        // Small launches take the static rule's way, untimed, allocating nothing.
        let c = StoreChoice::default();
        for guess in [false, true] {
            assert_eq!(c.choose(learn_min_working_set(), guess), Stores { stream: guess, timed: None });
        }
        assert!(c.0.get().is_none() && c.kept(big).is_none());
        // Runs of each way, alternately, the guess first; the first launch of each run untimed.
        let ways = learn(&c, big, true, |s| if s { 1000 } else { 900 });
        let want: Vec<bool> = (0..TRIALS).map(|i| (i / RUN).is_multiple_of(2)).collect();
        assert_eq!(ways, want);
        // Ordinary stores were 10% faster: kept, untimed, for the class.
        assert_eq!(c.kept(big), Some(false));
        assert_eq!(c.choose(big + 1, true), Stores { stream: false, timed: None });
        // A clone made after learning shares it; another class learns on its own.
        let twin = c.clone();
        assert_eq!(twin.kept(big), Some(false));
        assert!(twin.kept(big * 2).is_none());
        assert!(twin.choose(big * 2, true).stream, "a new class starts with the guess");
        // A faster other way within the margin: the guess stays.
        let c = StoreChoice::default();
        let ways = learn(&c, big, false, |s| if s { 1000 } else { 990 });
        assert!(!ways[0]);
        assert_eq!(c.kept(big), Some(false), "1% is within the margin: the guess stays");
        let c = StoreChoice::default();
        let launch = std::cell::Cell::new(0u32);
        let ways = learn(&c, big, false, |s| {
            // The first launch of each run (of ordinary stores, here) is
            // misleadingly fast: untimed, it is ignored.
            let i = launch.get();
            launch.set(i + 1);
            match (s, i.is_multiple_of(RUN)) {
                (false, true) => 100,
                (false, false) => 1000,
                (true, _) => 800,
            }
        });
        assert_eq!(ways.iter().filter(|&&w| w).count() as u32, TRIALS / 2);
        assert_eq!(c.kept(big), Some(true), "streams 20% faster, the runs' first launches set aside");
        // Trials handed out but not reported: the guess meanwhile, untimed.
        let c = StoreChoice::default();
        let pending: Vec<Stores> = (0..TRIALS).map(|_| c.choose(big, true)).collect();
        assert_eq!(pending.iter().filter(|s| s.timed()).count() as u32, TRIALS / RUN * (RUN - 1));
        assert_eq!(c.choose(big, true), Stores { stream: true, timed: None });
        assert!(c.kept(big).is_none());
        // Classes: powers of two of the working set, for each thread count.
        let mib = 1 << 20;
        assert_eq!(class(20 * mib, 2), class(24 * mib, 2));
        assert_ne!(class(16 * mib, 2), class(32 * mib, 2));
        assert_ne!(class(20 * mib, 2), class(20 * mib, 16));
        assert_ne!(class(usize::MAX, 1), class(usize::MAX, 2));
    }
}
