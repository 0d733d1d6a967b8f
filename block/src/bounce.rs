//! Aligned bounce buffers for O_DIRECT when the caller's segments are not aligned.

use std::alloc::{alloc_zeroed, dealloc, Layout};

use crate::IoVec;

/// A heap buffer whose address and length are multiples of the O_DIRECT alignment.
pub(crate) struct BounceBuffer {
    ptr: *mut u8,
    layout: Layout,
}

// SAFETY: the buffer is owned memory; moving it to another thread moves ownership.
unsafe impl Send for BounceBuffer {}

impl BounceBuffer {
    /// A zeroed buffer of `len` bytes (rounded up to `align`) aligned to `align`.
    pub(crate) fn new(len: usize, align: usize) -> BounceBuffer {
        let size = len.div_ceil(align).max(1) * align;
        let layout = Layout::from_size_align(size, align).expect("bounce buffer layout");
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc_zeroed(layout) };
        if ptr.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        BounceBuffer { ptr, layout }
    }

    /// The whole buffer as one segment of `len` bytes.
    pub(crate) fn iovec(&self, len: usize) -> IoVec {
        assert!(len <= self.layout.size());
        // SAFETY: the buffer outlives the request: the completion owns it.
        unsafe { IoVec::new(self.ptr, len) }
    }

    /// Copies the caller's segments into the buffer (before a write).
    pub(crate) fn gather(&mut self, iov: &[IoVec]) {
        let mut at = 0;
        for v in iov {
            // SAFETY: `v` is valid for reads by IoVec's contract; the destination
            // range lies inside our allocation (its size is at least the total).
            unsafe {
                std::ptr::copy_nonoverlapping(v.as_ptr(), self.ptr.wrapping_add(at), v.len())
            };
            at += v.len();
        }
    }

    /// Copies the first `len` bytes out into the caller's segments (after a read).
    pub(crate) fn scatter(&self, iov: &[IoVec], len: usize) {
        let mut at = 0;
        for v in iov {
            let n = v.len().min(len - at);
            // SAFETY: `v` is valid for writes by IoVec's contract; the source range
            // lies inside our allocation.
            unsafe { std::ptr::copy_nonoverlapping(self.ptr.wrapping_add(at), v.as_ptr(), n) };
            at += n;
            if at == len {
                break;
            }
        }
    }
}

impl Drop for BounceBuffer {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout, freed once.
        unsafe { dealloc(self.ptr, self.layout) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(buf: &mut [u8]) -> IoVec {
        // SAFETY: every buffer outlives the segments' use in these tests.
        unsafe { IoVec::new(buf.as_mut_ptr(), buf.len()) }
    }

    #[test]
    fn gather_then_scatter_round_trips_unaligned_segments() {
        let mut a = vec![1u8; 100];
        let mut b = vec![2u8; 412];
        let iov = [seg(&mut a), seg(&mut b)];
        let mut bounce = BounceBuffer::new(512, 4096);
        assert_eq!(bounce.iovec(512).as_ptr() as usize % 4096, 0);
        bounce.gather(&iov);
        a.fill(0);
        b.fill(0);
        let iov = [seg(&mut a), seg(&mut b)];
        bounce.scatter(&iov, 512);
        assert!(a.iter().all(|&x| x == 1));
        assert!(b.iter().all(|&x| x == 2));
    }
}
