//! Row sinks: full-size outputs filled block of rows by block of rows by
//! parallel tasks (the row-chunked execution of a chain of kernels writes
//! its results through these, see [`row_chain`](crate::backend::cpu::row_chain)).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crate::buffer::Buffer;
use crate::dtype::DType;

/// An output of `rows * row_len` elements written in disjoint row blocks.
pub struct RowSink {
    buf: Buffer,
    ptr: *mut u8,
    row_len: usize,
    len: usize,
    /// Rows claimed by a write: a row is never written twice.
    claimed: Vec<AtomicBool>,
    written: AtomicUsize,
}

// SAFETY: tasks write disjoint row blocks through `ptr` (`write` claims its
// rows first and refuses rows already claimed), and `buf` outlives them (it
// is owned here).
unsafe impl Send for RowSink {}
// SAFETY: as above; `write` takes `&self` but never writes a row twice.
unsafe impl Sync for RowSink {}

impl RowSink {
    /// An unwritten output of `rows` rows of `row_len` elements of `dtype`.
    pub fn new(dtype: DType, rows: usize, row_len: usize) -> crate::Result<RowSink> {
        let len = rows * row_len;
        let mut buf = crate::memory::take("fused", dtype, len)?;
        let ptr = crate::with_buffer!(&mut buf, v => v.as_mut_ptr().cast::<u8>());
        let claimed = (0..rows).map(|_| AtomicBool::new(false)).collect();
        Ok(RowSink { buf, ptr, row_len, len, claimed, written: AtomicUsize::new(0) })
    }

    /// Writes rows `row0..` from `src` (contiguous, of the sink's dtype,
    /// a whole number of rows), from any task.
    ///
    /// # Panics
    /// If the rows fall outside the sink, were written before, or the dtype
    /// or length do not match.
    pub fn write(&self, row0: usize, src: &Buffer) {
        assert_eq!(src.dtype(), self.buf.dtype(), "row sink: dtype");
        let rows = src.len().checked_div(self.row_len).unwrap_or(0);
        assert_eq!(rows * self.row_len, src.len(), "row sink: not a whole number of rows");
        let c = self.claim(row0, rows);
        crate::with_buffer!(src, v => Self::copy_in(v, &c));
        c.written();
    }

    fn copy_in<T: Copy>(v: &[T], c: &Claimed) {
        assert_eq!(v.len(), c.len(), "row sink: claimed length");
        // SAFETY: the claimed rows hold `c.len()` elements of `T` inside the
        // sink's allocation (allocated in `new` for this dtype, checked by
        // `write`), they were claimed by this call alone, and `v` is a
        // different allocation.
        unsafe { std::ptr::copy_nonoverlapping(v.as_ptr(), c.ptr().cast::<T>(), v.len()) };
    }

    /// Claims rows `row0..row0 + rows` for a kernel that writes them in
    /// place (see [`Claimed`]).
    ///
    /// # Panics
    /// If the rows fall outside the sink or were claimed before.
    pub fn claim(&self, row0: usize, rows: usize) -> Claimed<'_> {
        assert!(row0 + rows <= self.claimed.len(), "row sink: rows {row0}.. out of range");
        for c in &self.claimed[row0..row0 + rows] {
            assert!(!c.swap(true, Ordering::Relaxed), "row sink: a row written twice");
        }
        Claimed { sink: self, at: row0 * self.row_len, len: rows * self.row_len }
    }

    /// The filled buffer, or `None` if some row was never written.
    pub fn finish(mut self) -> Option<Buffer> {
        if self.written.load(Ordering::Relaxed) != self.len {
            return None;
        }
        // SAFETY: every one of the `len` elements was written exactly once
        // (disjoint blocks adding up to `len`).
        crate::with_buffer!(&mut self.buf, v => unsafe { v.set_len(self.len) });
        Some(std::mem::replace(&mut self.buf, Buffer::F32(vec![])))
    }
}

/// Rows of a [`RowSink`] claimed by one writer, which fills all of them
/// and then calls [`Claimed::written`].
pub struct Claimed<'a> {
    sink: &'a RowSink,
    at: usize,
    len: usize,
}

impl Claimed<'_> {
    /// The element type the rows hold.
    pub fn dtype(&self) -> DType {
        self.sink.buf.dtype()
    }

    /// Number of elements claimed.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Number of elements of the whole sink (the claimed rows are part of it).
    pub fn sink_len(&self) -> usize {
        self.sink.len
    }

    /// True when no element is claimed.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The first claimed element, for a kernel that writes exactly
    /// [`len`](Claimed::len) elements of [`dtype`](Claimed::dtype) there.
    pub fn ptr(&self) -> *mut u8 {
        // The offset stays inside the sink's allocation (`at + len <= sink.len`).
        self.sink.ptr.wrapping_add(self.at * self.dtype().size())
    }

    /// Records that every claimed element was written.
    pub fn written(self) {
        self.sink.written.fetch_add(self.len, Ordering::Relaxed);
    }
}
