//! Host memory: a pool of large freed buffers, and the memory limit. Every
//! backend's host-side data (the CPU backend's arrays, transfers to and from
//! a device) lives in [`Buffer`]s, so the pool and the limit belong to the
//! graph layer, not to a backend.
//!
//! A big output allocated fresh is a new
//! mapping from the OS whose pages fault and are zeroed on first write,
//! which costs as much as the elementwise work itself; instead, buffers of
//! at least [`MIN_BYTES`] are kept when dropped (up to [`MAX_BYTES`] in all)
//! and handed out again for outputs of a similar size, of any dtype with
//! the same element size (storage is bytes: the random bits behind a normal
//! sample, `u32`, become the next `f32` output). Fresh large buffers ask
//! for transparent huge pages.
//!
//! Allocation is fallible: outputs are reserved with
//! `Vec::try_reserve_exact` ([`try_vec`], [`take`]), so a request the
//! allocator refuses, or one above the memory limit ([`set_memory_limit`],
//! or the `KILN_MEMORY_LIMIT` environment variable), is an
//! [`Error::OutOfMemory`] naming the op and the bytes, never an abort.
//! (On a system that overcommits memory, a request the allocator grants
//! may still fail later, when its pages are first written: the limit is the
//! way to bound what kiln asks for.)

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::buffer::Buffer;
use crate::dtype::{DType, Element};
use crate::error::{Error, Result};
use crate::host_vec::HostVec;

/// [`LIMIT`] before the environment has been read.
const UNSET: usize = usize::MAX;
/// [`LIMIT`] when there is no limit.
const UNLIMITED: usize = usize::MAX - 1;
/// The largest single allocation, in bytes.
static LIMIT: AtomicUsize = AtomicUsize::new(UNSET);

/// Sets the most bytes kiln allocates for one array (an output, a copy, a
/// `to_vec`); `None` removes the limit. A larger request fails with
/// [`Error::OutOfMemory`] instead of being made. The default is the
/// `KILN_MEMORY_LIMIT` environment variable (bytes, or with a `K`, `M`,
/// `G` or `T` suffix for binary units) when set, else no limit.
pub fn set_memory_limit(bytes: Option<usize>) {
    LIMIT.store(bytes.map_or(UNLIMITED, |b| b.min(UNLIMITED)), Ordering::Relaxed);
}

/// The limit set by [`set_memory_limit`] or `KILN_MEMORY_LIMIT`.
pub fn memory_limit() -> Option<usize> {
    let mut l = LIMIT.load(Ordering::Relaxed);
    if l == UNSET {
        let env = std::env::var("KILN_MEMORY_LIMIT").ok().and_then(|v| parse_bytes(&v)).unwrap_or(UNLIMITED);
        let _ = LIMIT.compare_exchange(UNSET, env.min(UNLIMITED), Ordering::Relaxed, Ordering::Relaxed);
        l = LIMIT.load(Ordering::Relaxed);
    }
    (l != UNLIMITED).then_some(l)
}

/// `"1024"`, `"64K"`, `"8G"` (binary units) as bytes.
pub(crate) fn parse_bytes(v: &str) -> Option<usize> {
    let v = v.trim();
    let (num, shift) = match v.char_indices().last()? {
        (i, 'k' | 'K') => (&v[..i], 10),
        (i, 'm' | 'M') => (&v[..i], 20),
        (i, 'g' | 'G') => (&v[..i], 30),
        (i, 't' | 'T') => (&v[..i], 40),
        _ => (v, 0),
    };
    num.trim().parse::<usize>().ok()?.checked_mul(1 << shift)
}

/// Checks `bytes` against the memory limit.
pub(crate) fn within_limit(op: &'static str, bytes: usize) -> Result<()> {
    match memory_limit() {
        Some(l) if bytes > l => Err(Error::OutOfMemory { op, bytes }),
        _ => Ok(()),
    }
}

/// An empty vector with room for exactly `n` elements, aligned as kiln
/// aligns its buffers ([`HostVec`]), or [`Error::OutOfMemory`] naming `op`
/// when the allocator refuses or the size is above the memory limit. The
/// fallible counterpart of `Vec::with_capacity` for anything as large as
/// an array.
pub fn try_vec<T: Copy>(op: &'static str, n: usize) -> Result<HostVec<T>> {
    let bytes = n.checked_mul(std::mem::size_of::<T>()).ok_or(Error::OutOfMemory { op, bytes: usize::MAX })?;
    within_limit(op, bytes)?;
    HostVec::try_with_capacity(n).ok_or(Error::OutOfMemory { op, bytes })
}

/// For kernels that allocate deep inside (reductions): checks that `bytes`
/// could be allocated now, before the kernel starts, so that a refused
/// request is an [`Error::OutOfMemory`] rather than an abort. Above
/// [`MAX_BYTES`] the allocator is asked (and the memory given back at
/// once, unwritten); below it only the limit is checked.
pub fn check_alloc(op: &'static str, bytes: usize) -> Result<()> {
    within_limit(op, bytes)?;
    if bytes > MAX_BYTES {
        // (Through `black_box`: the compiler may otherwise drop an
        // allocation that is freed unused, and with it the refusal.)
        drop(std::hint::black_box(try_vec::<u8>(op, bytes)?));
    }
    Ok(())
}

/// Buffers smaller than this are left to the allocator.
pub const MIN_BYTES: usize = 4 << 20;
/// At most this many bytes are kept.
pub const MAX_BYTES: usize = 512 << 20;
/// At most this many buffers are kept.
const MAX_ENTRIES: usize = 16;

static POOL: Mutex<Vec<Buffer>> = Mutex::new(Vec::new());

fn capacity_bytes(b: &Buffer) -> usize {
    crate::with_buffer!(b, v => v.capacity() * std::mem::size_of_val(&v.first().copied().unwrap_or_default()))
}

/// An empty buffer of `dtype` with room for at least `n` elements: a pooled
/// one when a large enough one of the dtype is kept, else a fresh one, or
/// [`Error::OutOfMemory`] naming `op` (see [`try_vec`]).
pub fn take(op: &'static str, dtype: DType, n: usize) -> Result<Buffer> {
    let bytes = n.saturating_mul(dtype.size());
    within_limit(op, bytes)?;
    if bytes >= MIN_BYTES {
        let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
        // The smallest kept buffer that fits, and wastes at most half.
        let best = pool
            .iter()
            .enumerate()
            .filter(|(_, b)| b.dtype().size() == dtype.size())
            .map(|(i, b)| (i, capacity_bytes(b)))
            .filter(|&(_, c)| c >= bytes && c <= bytes + bytes / 2)
            .min_by_key(|&(_, c)| c)
            .map(|(i, _)| i);
        if let Some(i) = best {
            let found = pool.swap_remove(i);
            drop(pool);
            return Ok(retype(found, dtype));
        }
    }
    let mut b = crate::with_dtype!(dtype, T => Buffer::from_vec(try_vec::<T>(op, n)?));
    if bytes >= MIN_BYTES {
        crate::with_buffer!(&mut b, v => advise_huge_pages(v.as_mut_ptr().cast::<u8>(), bytes));
    }
    Ok(b)
}

/// [`take`] as a vector of `T`: an empty vector with room for at least `n`
/// elements, pooled when a large enough buffer of `T`'s element size is
/// kept. For kernels that build their output as a `Vec` (matrix products,
/// gathers): a large output from the pool has its pages in place, where a
/// fresh one faults in and zeroes every page on first write (about 5% of a
/// 1024^3 `f32` product's time).
pub fn take_vec<T: Element>(op: &'static str, n: usize) -> Result<HostVec<T>> {
    Ok(T::into_host(take(op, T::DTYPE, n)?).expect("take returns a buffer of the dtype asked for"))
}

/// Called when a buffer is dropped: keeps its storage if it is large and
/// the pool has room (evicting the oldest buffers when it is full).
pub fn give(b: &mut Buffer) {
    let bytes = capacity_bytes(b);
    if !(MIN_BYTES..=MAX_BYTES).contains(&bytes) {
        return;
    }
    let mut kept = std::mem::replace(b, Buffer::Bool(HostVec::new()));
    crate::with_buffer!(&mut kept, v => v.clear());
    let mut evicted = vec![];
    {
        let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
        pool.push(kept);
        let mut total: usize = pool.iter().map(capacity_bytes).sum();
        while total > MAX_BYTES || pool.len() > MAX_ENTRIES {
            let old = pool.remove(0);
            total -= capacity_bytes(&old);
            evicted.push(old);
        }
    }
    // Dropped outside the lock, with their storage released first so that
    // their own drop does not come back here.
    for mut old in evicted {
        crate::with_buffer!(&mut old, v => drop(std::mem::take(v)));
    }
}

/// The empty `b`'s storage as a buffer of `dtype`, whose elements have the
/// size of `b`'s (the allocation, aligned to a line, moves as is).
fn retype(mut b: Buffer, dtype: DType) -> Buffer {
    if b.dtype() == dtype {
        return b;
    }
    crate::with_buffer!(&mut b, v => {
        let v = std::mem::take(v);
        crate::with_dtype!(dtype, T => Buffer::from_vec(v.retype::<T>()))
    })
}

/// Asks the C allocator (glibc) to keep up to `bytes` of freed memory for
/// reuse instead of returning it to the OS, and to serve allocations below
/// 32 MiB from that heap rather than from fresh mappings.
///
/// For hosts that free arrays in batches, such as R, whose garbage collector
/// frees every dead array at once: glibc then finds the top of its heap
/// free and returns it to the OS, so each output made after a collection is
/// fresh memory whose pages fault in and are zeroed. From R, the seed's
/// `matmul_add` (32 KiB outputs) faulted 12 pages per call with the
/// defaults and under 2 with this. [`release_memory`] gives the kept memory back.
pub fn retain_freed_memory(bytes: usize) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn mallopt(param: std::ffi::c_int, value: std::ffi::c_int) -> std::ffi::c_int;
        }
        const M_TRIM_THRESHOLD: std::ffi::c_int = -1;
        const M_MMAP_THRESHOLD: std::ffi::c_int = -3;
        let bytes = std::ffi::c_int::try_from(bytes).unwrap_or(std::ffi::c_int::MAX);
        // SAFETY: mallopt only changes glibc's allocation policy (when to
        // trim the heap, when to map large blocks); it is thread-safe and
        // never invalidates or moves an existing allocation.
        unsafe {
            mallopt(M_TRIM_THRESHOLD, bytes);
            mallopt(M_MMAP_THRESHOLD, 32 << 20);
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = bytes;
}

/// Returns the free memory at the top of glibc's heap to the OS.
fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn malloc_trim(pad: usize) -> std::ffi::c_int;
        }
        // SAFETY: malloc_trim releases only free memory of the allocator's
        // own heaps; it is thread-safe and touches no live allocation.
        unsafe { malloc_trim(0) };
    }
}

/// Frees the memory kiln keeps for reuse: the large buffers of arrays that
/// were dropped, the free memory of the C allocator's heap (see
/// [`retain_freed_memory`]), and on each GPU in use the freed blocks kept
/// for arrays of their size. Returns the bytes of buffers freed; live
/// arrays are not touched.
pub fn release_memory() -> usize {
    release() + crate::backend::release_backends()
}

/// The pool's part of [`release_memory`]: empties the pool (and trims the
/// C heap); returns the bytes freed.
pub fn release() -> usize {
    let kept: Vec<Buffer> = std::mem::take(&mut *POOL.lock().unwrap_or_else(|e| e.into_inner()));
    let bytes = kept.iter().map(capacity_bytes).sum();
    // Their storage is released first, so that their own drop does not
    // come back to the pool.
    for mut b in kept {
        crate::with_buffer!(&mut b, v => drop(std::mem::take(v)));
    }
    trim_heap();
    bytes
}

/// Bytes currently kept (for tests).
pub fn kept_bytes() -> usize {
    POOL.lock().unwrap_or_else(|e| e.into_inner()).iter().map(capacity_bytes).sum()
}

/// Asks Linux to back a large, fresh allocation with transparent huge
/// pages: its pages fault on first write, and 2 MiB pages fault 512 times
/// less often than 4 KiB ones.
#[cfg(target_os = "linux")]
pub(crate) fn advise_huge_pages(ptr: *mut u8, bytes: usize) {
    const MADV_HUGEPAGE: i32 = 14;
    const HUGE: usize = 1 << 21;
    extern "C" {
        fn madvise(addr: *mut std::ffi::c_void, len: usize, advice: i32) -> i32;
    }
    let start = (ptr as usize).next_multiple_of(HUGE);
    let end = (ptr as usize + bytes) & !(HUGE - 1);
    if end > start {
        // SAFETY: `start..end` lies inside the allocation of `bytes` bytes at
        // `ptr` (page-aligned, as madvise requires). MADV_HUGEPAGE is advice
        // about how the kernel backs the range: it never changes its contents
        // or validity, and a failure (e.g. THP disabled) only leaves 4 KiB pages.
        unsafe { madvise(start as *mut std::ffi::c_void, end - start, MADV_HUGEPAGE) };
    }
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn advise_huge_pages(_: *mut u8, _: usize) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_buffers_are_reused_for_dtypes_of_their_element_size() {
        // u32 buffers this large appear in no other unit test, so the
        // storage comes back here even with tests running in parallel.
        let n = MIN_BYTES / 2 + 12_345; // 8 MiB of u32
        let mut b = take("test", DType::U32, n).unwrap();
        let Buffer::U32(v) = &mut b else { panic!("a u32 buffer") };
        v.resize(n, 7);
        let ptr = v.as_ptr() as usize;
        drop(b);
        let again = take("test", DType::U32, n - 10).unwrap();
        let Buffer::U32(v) = &again else { panic!("a u32 buffer") };
        assert_eq!(v.as_ptr() as usize, ptr, "the dropped storage is reused");
        assert_eq!(v.len(), 0, "a pooled buffer comes back empty");
        assert!(v.capacity() >= n);
        drop(again);
        // Another dtype of 4-byte elements gets the storage (no element is
        // read: it comes back empty), then gives it back when dropped.
        let other = take("test", DType::I32, n).unwrap();
        let Buffer::I32(w) = &other else { panic!("an i32 buffer") };
        assert_eq!((w.as_ptr() as usize, w.len()), (ptr, 0), "same element size: the storage is reused");
        assert!(w.capacity() >= n);
        drop(other);
        // Kernels that build a Vec (matrix products, gathers) get it too.
        let vec = take_vec::<u32>("test", n).unwrap();
        assert_eq!((vec.as_ptr() as usize, vec.len()), (ptr, 0), "take_vec reuses the storage");
        drop(Buffer::from_vec(vec));
        // Other element sizes, or a size it would waste more than half of, never get it.
        let wide = take("test", DType::I64, n / 2).unwrap();
        let Buffer::I64(w) = &wide else { panic!("an i64 buffer") };
        assert_ne!(w.as_ptr() as usize, ptr);
        let half = take("test", DType::F16, n * 2).unwrap();
        let Buffer::F16(h) = &half else { panic!("an f16 buffer") };
        assert_ne!(h.as_ptr() as usize, ptr);
        let tiny_fit = take("test", DType::U32, n * 3 / 5).unwrap(); // pooled size, but 8 MiB would waste too much
        let Buffer::U32(t) = &tiny_fit else { panic!("a u32 buffer") };
        assert_ne!(t.as_ptr() as usize, ptr);
        assert!(kept_bytes() <= MAX_BYTES);
    }

    #[test]
    fn memory_limit_parses_units() {
        assert_eq!(parse_bytes("1024"), Some(1024));
        assert_eq!(parse_bytes("64K"), Some(64 << 10));
        assert_eq!(parse_bytes(" 8g "), Some(8 << 30));
        assert_eq!(parse_bytes("x"), None);
        assert_eq!(parse_bytes(""), None);
    }

    #[test]
    fn buffers_start_on_a_line_pooled_or_fresh_of_any_dtype() {
        for (dtype, n) in [(DType::F32, 3usize), (DType::F64, 1000), (DType::F32, 3 << 20), (DType::U8, 5 << 20)] {
            let mut b = take("probe", dtype, n).expect("allocates");
            let at = crate::with_buffer!(&b, v => v.as_ptr() as usize);
            assert_eq!(at % crate::host_vec::LINE, 0, "{dtype:?} x {n}");
            if n * dtype.size() >= MIN_BYTES {
                assert_eq!(at % crate::host_vec::HUGE, 0, "{dtype:?} x {n}");
            }
            give(&mut b);
        }
        // A buffer taken as another dtype of a given-back one's size (the
        // same storage, retyped, unless a test beside this one took it
        // first: the pool is shared) keeps the pool's alignment.
        let mut b = take("probe", DType::U32, 6 << 20).expect("allocates");
        give(&mut b);
        let f = take("probe", DType::F32, 6 << 20).expect("allocates");
        let again = crate::with_buffer!(&f, v => v.as_ptr() as usize);
        assert_eq!(again % crate::host_vec::HUGE, 0);
    }

    #[test]
    fn refused_allocations_are_errors() {
        // More than any allocator grants (and more than isize::MAX bytes).
        let e = try_vec::<u64>("probe", usize::MAX / 8).unwrap_err();
        assert!(matches!(e, Error::OutOfMemory { op: "probe", .. }), "{e}");
        assert!(try_vec::<u8>("probe", 1 << 62).is_err());
        assert!(check_alloc("probe", 1 << 62).is_err());
        assert!(take("probe", DType::F32, 1 << 61).is_err());
        assert_eq!(try_vec::<u8>("probe", 16).unwrap().capacity(), 16);
    }
}
