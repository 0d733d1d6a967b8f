//! Thin wrappers over the few syscalls vmm-sys-util does not cover: an absolute
//! CLOCK_MONOTONIC timerfd and the monotonic clock.

use std::fs::File;
use std::io;
use std::os::unix::io::{AsRawFd, FromRawFd, RawFd};

/// Now on CLOCK_MONOTONIC, in nanoseconds.
pub(crate) fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

/// Now on CLOCK_MONOTONIC_COARSE (the last tick: 1-4 ms resolution), in
/// nanoseconds. A few nanoseconds to read where the precise clock costs tens to
/// hundreds inside a VM; for the trace ring, which is written several times per
/// request and read only when a hang is suspected (seconds matter there).
pub(crate) fn coarse_monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC_COARSE)
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; both clocks used here exist
    // since Linux 2.6.32.
    let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
    debug_assert_eq!(rc, 0);
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

/// A non-blocking CLOCK_MONOTONIC timerfd armed with absolute deadlines.
pub(crate) struct AbsTimerFd(File);

impl AbsTimerFd {
    pub(crate) fn new() -> io::Result<Self> {
        // SAFETY: no memory is passed; the result is checked.
        let fd = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_CLOEXEC | libc::TFD_NONBLOCK,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor that we own from here on.
        Ok(AbsTimerFd(unsafe { File::from_raw_fd(fd) }))
    }

    /// Arms at the absolute `deadline_ns`, or disarms with `None`.
    pub(crate) fn set(&self, deadline_ns: Option<u64>) -> io::Result<()> {
        let value = match deadline_ns {
            // An all-zero it_value would disarm; a deadline of 0 is long past anyway.
            Some(d) => libc::timespec {
                tv_sec: (d.max(1) / 1_000_000_000) as libc::time_t,
                tv_nsec: (d.max(1) % 1_000_000_000) as libc::c_long,
            },
            None => libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
        };
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: value,
        };
        // SAFETY: `spec` is a valid itimerspec, the old-value pointer may be null.
        let rc = unsafe {
            libc::timerfd_settime(
                self.0.as_raw_fd(),
                libc::TFD_TIMER_ABSTIME,
                &spec,
                std::ptr::null_mut(),
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Consumes an expiry, if any (non-blocking).
    pub(crate) fn clear(&self) {
        let mut buf = [0u8; 8];
        // SAFETY: reads at most 8 bytes into an 8-byte buffer we own.
        let _ = unsafe { libc::read(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), 8) };
    }
}

impl AsRawFd for AbsTimerFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}
