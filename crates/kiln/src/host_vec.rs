//! [`HostVec`]: the storage of a host [`Buffer`](crate::buffer::Buffer), a
//! growable vector of plain elements whose allocation kiln aligns.
//!
//! A `Vec<T>` is aligned to `T` only. The C allocator serves large requests
//! from fresh mappings whose first 16 bytes hold its own header, so every
//! large `Vec<f32>` started 16 bytes past a page boundary: each 64-byte
//! vector load straddled two cache lines, and a block read across a
//! layout (a transpose) touched three lines per row where two hold the
//! data. Buffers kiln allocates itself ([`HostVec::try_with_capacity`],
//! and growth by `push` or `extend`) start on a cache line, and those the
//! pool keeps on a 2 MiB boundary ([`HUGE`]), so that transparent huge
//! pages can back all of them. A vector handed in by a user
//! ([`From<Vec<T>>`]) keeps its allocation and alignment.
//!
//! Elements are [`Copy`] (every dtype's element type is), so nothing is
//! dropped element by element.

use std::alloc::Layout;
use std::fmt;
use std::mem::MaybeUninit;
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;

/// The alignment of every buffer kiln allocates: a cache line.
pub const LINE: usize = 64;

/// Alignment of buffers large enough for the pool
/// ([`MIN_BYTES`](crate::memory::MIN_BYTES)): a transparent huge page, so
/// that one can back the buffer from its first byte. The pool keeps such
/// buffers, so the allocator's cost for the alignment is paid once; smaller
/// ones are aligned to a line only (2 MiB alignment for buffers of 2 to 4
/// MiB, freed and made again on every call, made glibc fault in fresh pages
/// each time: 2-3x the page faults of a run over 20 batch sizes).
pub const HUGE: usize = 2 << 20;

/// A growable vector of `T` with kiln's alignment (see the module docs).
pub struct HostVec<T: Copy> {
    ptr: NonNull<T>,
    len: usize,
    cap: usize,
    /// The alignment the allocation was made with (unused when `cap` is 0).
    align: usize,
}

// SAFETY: a HostVec owns its elements as a Vec does; sending or sharing it
// sends or shares `T`s.
unsafe impl<T: Copy + Send> Send for HostVec<T> {}
// SAFETY: as for Send: `&HostVec` gives only `&T`s.
unsafe impl<T: Copy + Sync> Sync for HostVec<T> {}

/// The alignment kiln gives an allocation of `bytes` bytes of `T`.
fn alignment<T>(bytes: usize) -> usize {
    let a = if bytes >= crate::memory::MIN_BYTES { HUGE } else { LINE };
    a.max(std::mem::align_of::<T>())
}

impl<T: Copy> HostVec<T> {
    /// An empty vector that allocates nothing.
    pub const fn new() -> HostVec<T> {
        HostVec { ptr: NonNull::dangling(), len: 0, cap: 0, align: std::mem::align_of::<T>() }
    }

    /// An empty vector with room for exactly `n` elements, its allocation
    /// aligned to a cache line (to [`HUGE`] when the pool would keep it);
    /// `None` when the size overflows or the allocator refuses.
    pub fn try_with_capacity(n: usize) -> Option<HostVec<T>> {
        let bytes = n.checked_mul(std::mem::size_of::<T>())?;
        if bytes == 0 {
            return Some(HostVec::new());
        }
        let align = alignment::<T>(bytes);
        let layout = Layout::from_size_align(bytes, align).ok()?;
        // SAFETY: the layout's size is not zero (checked above).
        let p = unsafe { std::alloc::alloc(layout) };
        Some(HostVec { ptr: NonNull::new(p.cast::<T>())?, len: 0, cap: n, align })
    }

    /// An aligned copy of `s`; aborts on allocation failure, as `Vec` does
    /// (fallible paths use [`HostVec::try_with_capacity`]).
    pub fn from_slice(s: &[T]) -> HostVec<T> {
        let mut v = HostVec::try_with_capacity(s.len()).unwrap_or_else(|| {
            std::alloc::handle_alloc_error(Layout::array::<T>(s.len()).unwrap_or(Layout::new::<T>()))
        });
        v.extend_from_slice(s);
        v
    }

    /// The layout the allocation was made with (`cap` > 0).
    fn layout(&self) -> Layout {
        Layout::from_size_align(self.cap * std::mem::size_of::<T>(), self.align).expect("made from this layout")
    }

    /// Number of elements.
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when it holds no elements.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Elements it has room for without reallocating.
    #[inline]
    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// The elements as a slice.
    #[inline]
    pub fn as_slice(&self) -> &[T] {
        self
    }

    /// The elements as a mutable slice.
    #[inline]
    pub fn as_mut_slice(&mut self) -> &mut [T] {
        self
    }

    /// The alignment of its allocation, in bytes.
    pub fn alignment(&self) -> usize {
        self.align
    }

    /// Sets the length.
    ///
    /// # Safety
    /// `len <= capacity()`, and the elements `0..len` are initialized.
    #[inline]
    pub unsafe fn set_len(&mut self, len: usize) {
        debug_assert!(len <= self.cap);
        self.len = len;
    }

    /// The room past the elements, as uninitialized elements.
    #[inline]
    pub fn spare_capacity_mut(&mut self) -> &mut [MaybeUninit<T>] {
        // SAFETY: the allocation holds `cap` elements; those from `len` on
        // are handed out as possibly uninitialized, and none of them is
        // reachable through `self` while the borrow lives.
        unsafe {
            std::slice::from_raw_parts_mut(
                self.ptr.as_ptr().add(self.len).cast::<MaybeUninit<T>>(),
                self.cap - self.len,
            )
        }
    }

    /// Removes every element (keeping the allocation).
    #[inline]
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Shortens it to `len` elements (no effect when it is shorter).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Makes room for `more` elements past the length, reallocating (with
    /// the same rule of alignment) when needed; aborts when the allocator
    /// refuses, as `Vec` does.
    pub fn reserve(&mut self, more: usize) {
        if !self.grow(more, true) {
            let bytes = self.len.saturating_add(more).saturating_mul(std::mem::size_of::<T>());
            std::alloc::handle_alloc_error(Layout::from_size_align(bytes, LINE).unwrap_or(Layout::new::<T>()));
        }
    }

    /// Makes room for exactly `more` elements past the length, or
    /// [`Error::OutOfMemory`](crate::Error::OutOfMemory) naming `op` when the
    /// allocator refuses (the vector is then unchanged).
    pub fn try_reserve_exact(&mut self, more: usize, op: &'static str) -> crate::Result<()> {
        if self.grow(more, false) {
            return Ok(());
        }
        let bytes = self.len.saturating_add(more).saturating_mul(std::mem::size_of::<T>());
        Err(crate::Error::OutOfMemory { op, bytes })
    }

    /// Room for `more` elements past the length (at least doubling the
    /// capacity when `amortized`); false when the allocator refuses.
    fn grow(&mut self, more: usize, amortized: bool) -> bool {
        let Some(need) = self.len.checked_add(more) else { return false };
        if need <= self.cap {
            return true;
        }
        let cap = if amortized { need.max(self.cap * 2).max(4) } else { need };
        let Some(mut grown) = HostVec::try_with_capacity(cap) else { return false };
        grown.extend_from_slice(self);
        *self = grown;
        true
    }

    /// Sets the length to `len`, filling new elements with `x`.
    pub fn resize(&mut self, len: usize, x: T) {
        if len <= self.len {
            self.len = len;
            return;
        }
        let more = len - self.len;
        self.reserve(more);
        for slot in &mut self.spare_capacity_mut()[..more] {
            slot.write(x);
        }
        self.len = len;
    }

    /// Appends one element.
    #[inline]
    pub fn push(&mut self, x: T) {
        if self.len == self.cap {
            self.reserve(1);
        }
        // SAFETY: `len < cap` after the reserve, so the slot is inside the allocation.
        unsafe { self.ptr.as_ptr().add(self.len).write(x) };
        self.len += 1;
    }

    /// Appends the elements of `s`.
    pub fn extend_from_slice(&mut self, s: &[T]) {
        if self.cap - self.len < s.len() {
            self.reserve(s.len());
        }
        // SAFETY: the reserve made room for `s.len()` elements from `len`,
        // and `s` cannot overlap them (they are past the initialized part
        // that any borrow of `self` could reach).
        unsafe { std::ptr::copy_nonoverlapping(s.as_ptr(), self.ptr.as_ptr().add(self.len), s.len()) };
        self.len += s.len();
    }

    /// The elements as a `Vec`: its own allocation when that has `T`'s
    /// alignment (a vector handed in), else a copy.
    pub fn into_vec(self) -> Vec<T> {
        if self.align != std::mem::align_of::<T>() || self.cap == 0 {
            return self.to_vec();
        }
        let me = std::mem::ManuallyDrop::new(self);
        // SAFETY: an allocation with `T`'s alignment comes from a Vec<T>
        // (`From<Vec<T>>`, the only way to make one), with the layout of
        // `cap` elements of `T` from the global allocator, as
        // from_raw_parts requires; `len <= cap` elements are initialized.
        // `me` is never dropped, so the allocation keeps one owner.
        unsafe { Vec::from_raw_parts(me.ptr.as_ptr(), me.len, me.cap) }
    }

    /// The empty `self`'s allocation as a vector of `U`, an element type of
    /// the same size and at most the same alignment.
    pub fn retype<U: Copy>(self) -> HostVec<U> {
        assert!(
            self.is_empty()
                && std::mem::size_of::<U>() == std::mem::size_of::<T>()
                && std::mem::align_of::<U>() <= self.align,
            "retype: an empty vector, to an element of the same size"
        );
        let me = std::mem::ManuallyDrop::new(self);
        // The allocation (size `cap * size_of::<T>()`, alignment `align`)
        // moves as is: its layout is the same one counted in `U`s.
        HostVec { ptr: me.ptr.cast::<U>(), len: 0, cap: me.cap, align: me.align }
    }
}

impl<T: Copy> Drop for HostVec<T> {
    fn drop(&mut self) {
        if self.cap > 0 && std::mem::size_of::<T>() > 0 {
            // SAFETY: the allocation was made with this layout, by the
            // global allocator (try_with_capacity, or a Vec's).
            unsafe { std::alloc::dealloc(self.ptr.as_ptr().cast::<u8>(), self.layout()) };
        }
    }
}

impl<T: Copy> Default for HostVec<T> {
    fn default() -> HostVec<T> {
        HostVec::new()
    }
}

impl<T: Copy> Deref for HostVec<T> {
    type Target = [T];
    #[inline]
    fn deref(&self) -> &[T] {
        // SAFETY: `ptr` is valid for `len` initialized elements (dangling
        // and aligned when `len` is 0).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl<T: Copy> DerefMut for HostVec<T> {
    #[inline]
    fn deref_mut(&mut self) -> &mut [T] {
        // SAFETY: as in `deref`, borrowed uniquely through `&mut self`.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl<T: Copy> From<Vec<T>> for HostVec<T> {
    /// Takes over the vector's allocation (no copy), with its alignment.
    fn from(v: Vec<T>) -> HostVec<T> {
        let mut v = std::mem::ManuallyDrop::new(v);
        let (len, cap) = (v.len(), v.capacity());
        if cap == 0 || std::mem::size_of::<T>() == 0 {
            return HostVec::new();
        }
        // The allocation is the Vec's: `cap` elements of `T` with `T`'s
        // alignment, which is the layout Drop gives back.
        let ptr = NonNull::new(v.as_mut_ptr()).expect("a Vec's pointer is not null");
        HostVec { ptr, len, cap, align: std::mem::align_of::<T>() }
    }
}

impl<T: Copy> Clone for HostVec<T> {
    fn clone(&self) -> HostVec<T> {
        HostVec::from_slice(self)
    }
}

impl<T: Copy + fmt::Debug> fmt::Debug for HostVec<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

impl<T: Copy + PartialEq> PartialEq for HostVec<T> {
    fn eq(&self, other: &HostVec<T>) -> bool {
        **self == **other
    }
}

impl<T: Copy> Extend<T> for HostVec<T> {
    fn extend<I: IntoIterator<Item = T>>(&mut self, iter: I) {
        let iter = iter.into_iter();
        self.reserve(iter.size_hint().0);
        for x in iter {
            self.push(x);
        }
    }
}

impl<T: Copy> FromIterator<T> for HostVec<T> {
    fn from_iter<I: IntoIterator<Item = T>>(iter: I) -> HostVec<T> {
        let mut v = HostVec::new();
        v.extend(iter);
        v
    }
}

impl<'a, T: Copy> IntoIterator for &'a HostVec<T> {
    type Item = &'a T;
    type IntoIter = std::slice::Iter<'a, T>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl<'a, T: Copy> IntoIterator for &'a mut HostVec<T> {
    type Item = &'a mut T;
    type IntoIter = std::slice::IterMut<'a, T>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter_mut()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kiln_allocations_start_on_a_line_and_large_ones_on_a_huge_page() {
        for n in [1usize, 3, 16, 1000, 1 << 16, 1 << 20] {
            let v = HostVec::<f32>::try_with_capacity(n).expect("allocates");
            assert_eq!(v.as_ptr() as usize % LINE, 0, "{n} elements");
            assert_eq!(v.capacity(), n);
            if n * 4 >= crate::memory::MIN_BYTES {
                assert_eq!(v.as_ptr() as usize % HUGE, 0, "{n} elements");
            }
        }
        let b = HostVec::<u8>::try_with_capacity(5).expect("allocates");
        assert_eq!(b.as_ptr() as usize % LINE, 0);
        assert!(HostVec::<f64>::try_with_capacity(usize::MAX / 4).is_none());
    }

    #[test]
    fn behaves_as_a_vec() {
        let mut v = HostVec::<i32>::new();
        assert!(v.is_empty());
        for i in 0..100 {
            v.push(i);
        }
        v.extend_from_slice(&[7, 8]);
        v.extend([9, 10]);
        assert_eq!(v.len(), 104);
        assert_eq!(v.as_ptr() as usize % LINE, 0, "growth keeps the alignment");
        assert_eq!(&v[..3], &[0, 1, 2]);
        assert_eq!(&v[100..], &[7, 8, 9, 10]);
        let c = v.clone();
        assert_eq!(c, v);
        v.truncate(2);
        assert_eq!(&*v, &[0, 1]);
        assert_ne!(c, v);
        let spare = v.spare_capacity_mut().len();
        assert_eq!(spare, v.capacity() - 2);
        v.clear();
        assert!(v.is_empty());
        let w: HostVec<u32> = v.retype();
        assert_eq!(w.len(), 0);
        assert!(w.capacity() >= 104);
    }

    #[test]
    fn vectors_move_in_and_out_without_copies_when_they_can() {
        let v = vec![1.5f64, 2.5, 3.5];
        let p = v.as_ptr();
        let h = HostVec::from(v);
        assert_eq!(h.as_ptr(), p, "a Vec's allocation is taken over");
        assert_eq!(h.alignment(), std::mem::align_of::<f64>());
        let back = h.into_vec();
        assert_eq!(back.as_ptr(), p, "and given back");
        assert_eq!(back, vec![1.5, 2.5, 3.5]);
        let mut a = HostVec::<f64>::try_with_capacity(3).expect("allocates");
        a.extend_from_slice(&back);
        assert_eq!(a.into_vec(), back, "an aligned allocation is copied out");
        assert!(HostVec::from(Vec::<u8>::new()).is_empty());
    }
}
