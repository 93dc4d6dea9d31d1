//! Row sinks: full-size outputs filled block of rows by block of rows by
//! parallel tasks (the row-chunked execution of a chain of kernels writes
//! its results through these, see [`row_chain`](crate::backend::cpu::row_chain)).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::buffer::Buffer;
use crate::dtype::DType;

/// An output of `rows * row_len` elements written in disjoint row blocks.
pub struct RowSink {
    buf: Buffer,
    ptr: *mut u8,
    row_len: usize,
    rows: usize,
    len: usize,
    /// Rows claimed by a write, one bit a row (64 to a word, so a claim of
    /// many rows takes one atomic operation per 64 rows): a row is never
    /// written twice.
    claimed: Vec<AtomicU64>,
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
        let claimed = (0..rows.div_ceil(64)).map(|_| AtomicU64::new(0)).collect();
        Ok(RowSink { buf, ptr, row_len, rows, len, claimed, written: AtomicUsize::new(0) })
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
        let end = row0.checked_add(rows).filter(|&e| e <= self.rows);
        let end = end.unwrap_or_else(|| panic!("row sink: rows {row0}.. out of range"));
        let mut r = row0;
        while r < end {
            // The bits of rows `r..` up to the end of `r`'s word or of the claim.
            let (word, bit) = (r / 64, r % 64);
            let count = (64 - bit).min(end - r);
            let mask = (u64::MAX >> (64 - count)) << bit;
            let before = self.claimed[word].fetch_or(mask, Ordering::Relaxed);
            assert!(before & mask == 0, "row sink: a row written twice");
            r += count;
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
        Some(std::mem::replace(&mut self.buf, Buffer::F32(crate::host_vec::HostVec::new())))
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Claims `rows` rows from `row0` and writes `row + 0.5` to each element.
    fn fill(sink: &RowSink, row0: usize, rows: usize) {
        let c = sink.claim(row0, rows);
        let row_len = sink.row_len;
        let vals: Vec<f32> = (0..rows * row_len).map(|i| (row0 + i / row_len) as f32 + 0.5).collect();
        RowSink::copy_in(&vals, &c);
        c.written();
    }

    #[test]
    fn claims_across_words_fill_every_row_once() {
        let sink = RowSink::new(DType::F32, 200, 3).unwrap();
        // Claims that start and end inside words, span whole words, and
        // cover one row.
        for (row0, rows) in [(0, 1), (1, 62), (63, 2), (65, 70), (135, 64), (199, 1)] {
            fill(&sink, row0, rows);
        }
        let buf = sink.finish().expect("every row written");
        let Buffer::F32(got) = &buf else { panic!("an f32 buffer") };
        assert_eq!(got.len(), 600);
        for (i, v) in got.iter().enumerate() {
            assert_eq!(*v, (i / 3) as f32 + 0.5, "element {i}");
        }
    }

    #[test]
    fn an_unwritten_row_leaves_no_buffer() {
        let sink = RowSink::new(DType::F32, 130, 2).unwrap();
        fill(&sink, 0, 64);
        fill(&sink, 65, 65);
        assert!(sink.finish().is_none(), "row 64 was never written");
    }

    #[test]
    #[should_panic(expected = "a row written twice")]
    fn a_row_claimed_twice_panics() {
        let sink = RowSink::new(DType::F32, 130, 2).unwrap();
        let _a = sink.claim(10, 60);
        let _b = sink.claim(69, 2);
    }

    #[test]
    #[should_panic(expected = "out of range")]
    fn rows_past_the_end_panic() {
        let sink = RowSink::new(DType::F32, 130, 2).unwrap();
        let _a = sink.claim(100, 31);
    }
}
