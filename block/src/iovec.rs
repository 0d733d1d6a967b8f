//! Scatter-gather segments of raw host memory, and the contract that keeps them valid.
//!
//! Devices build these from guest memory (already translated to host addresses), so
//! the block layer never copies data unless O_DIRECT forces a bounce buffer.

/// Most segments one request may carry (the kernel's `IOV_MAX`).
pub const MAX_SEGMENTS: usize = 1024;

/// One segment: `len` bytes of host memory at `ptr`.
///
/// Building one is `unsafe`: the builder promises the memory stays valid (mapped,
/// not freed, and — for reads — not read or written by anyone else) from the moment
/// the request is submitted until its completion callback has started. For writes the
/// memory must not be modified in that window either. The block layer only touches
/// the memory in that window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoVec {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: an IoVec is an address and a length; whoever built it promised (see
// `IoVec::new`) that the memory stays valid for the request, from any thread.
unsafe impl Send for IoVec {}
// SAFETY: as above; sharing the pair gives no access by itself.
unsafe impl Sync for IoVec {}

impl IoVec {
    /// A segment of `len` bytes at `ptr`.
    ///
    /// # Safety
    /// `ptr..ptr+len` must be valid for reads and writes from submission until the
    /// completion callback of every request that uses this segment has started, and
    /// must not be accessed by anyone else meanwhile (see the type's docs).
    pub unsafe fn new(ptr: *mut u8, len: usize) -> IoVec {
        IoVec { ptr, len }
    }

    /// The start address.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr
    }

    /// The length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True for a zero-length segment.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// True if both the address and the length are multiples of `align`.
    pub fn is_aligned(&self, align: usize) -> bool {
        (self.ptr as usize).is_multiple_of(align) && self.len.is_multiple_of(align)
    }

    pub(crate) fn to_libc(self) -> libc::iovec {
        libc::iovec {
            iov_base: self.ptr.cast(),
            iov_len: self.len,
        }
    }
}

/// The total length of a scatter-gather list (saturating: overflow reads as huge).
pub fn total_len(iov: &[IoVec]) -> u64 {
    iov.iter()
        .fold(0u64, |acc, v| acc.saturating_add(v.len() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alignment_checks_address_and_length() {
        let mut buf = vec![0u8; 8192];
        let base = buf.as_mut_ptr();
        let aligned = base.wrapping_add((4096 - base as usize % 4096) % 4096);
        let seg = |ptr, len| {
            // SAFETY: the segments are only inspected, never used for I/O.
            unsafe { IoVec::new(ptr, len) }
        };
        let (a, b, c) = (
            seg(aligned, 4096),
            seg(aligned.wrapping_add(1), 4096),
            seg(aligned, 100),
        );
        assert!(a.is_aligned(512));
        assert!(!b.is_aligned(512));
        assert!(!c.is_aligned(512));
        assert_eq!(total_len(&[a, b, c]), 8292);
    }
}
