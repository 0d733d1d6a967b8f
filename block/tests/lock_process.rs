//! Locking across processes: a forked child takes the image lock and our open
//! must be refused. Alone in its own test binary on purpose: a forked child
//! inherits every open file of the parent, so beside other tests it would keep
//! *their* images' locks alive until it exits and make them fail spuriously.

mod common;

use block::{BlockBackend, BlockError, BlockOptions};
use common::image_in;
use event_loop::AioContext;

const MIB: u64 = 1 << 20;

/// A real second process takes the image lock (fork; the child only makes
/// async-signal-safe syscalls), and our open must be refused with `Locked`.
#[test]
fn image_locked_by_another_process_is_refused() {
    let _wd = common::deadline(std::time::Duration::from_secs(30));
    let img = image_in("/var/tmp", MIB);
    let path = std::ffi::CString::new(img.path().to_str().unwrap()).unwrap();
    let mut ready = [0i32; 2];
    let mut release = [0i32; 2];
    // SAFETY: pipe() fills two fds into arrays we own.
    assert_eq!(unsafe { libc::pipe(ready.as_mut_ptr()) }, 0);
    // SAFETY: as above.
    assert_eq!(unsafe { libc::pipe(release.as_mut_ptr()) }, 0);
    // SAFETY: the child calls only async-signal-safe functions, then _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        // SAFETY: open/fcntl/write/read/_exit are async-signal-safe; pointers are valid.
        #[allow(clippy::multiple_unsafe_ops_per_block)]
        unsafe {
            // Close our copy of the write end, or the read below never sees EOF.
            libc::close(release[1]);
            let fd = libc::open(path.as_ptr(), libc::O_RDWR);
            let mut fl: libc::flock = std::mem::zeroed();
            fl.l_type = libc::F_WRLCK as libc::c_short;
            fl.l_whence = libc::SEEK_SET as libc::c_short;
            fl.l_start = 0x7fff_0000;
            fl.l_len = 1;
            let ok = fd >= 0 && libc::fcntl(fd, libc::F_OFD_SETLK, &fl) == 0;
            let byte = [ok as u8];
            libc::write(ready[1], byte.as_ptr().cast(), 1);
            let mut b = [0u8; 1];
            libc::read(release[0], b.as_mut_ptr().cast(), 1);
            libc::_exit(0);
        }
    }
    let mut byte = [0u8; 1];
    // SAFETY: reading one byte into our buffer.
    let n = unsafe { libc::read(ready[0], byte.as_mut_ptr().cast(), 1) };
    assert_eq!(n, 1);
    assert_eq!(byte[0], 1, "child took the lock");
    let ctx = AioContext::new().unwrap();
    let err = BlockBackend::open(img.path(), &BlockOptions::default(), ctx.clone()).err();
    // SAFETY: closing the release pipe lets the child exit; waitpid reaps it.
    #[allow(clippy::multiple_unsafe_ops_per_block)]
    unsafe {
        libc::close(release[1]);
        libc::waitpid(pid, std::ptr::null_mut(), 0);
    }
    match err {
        Some(e @ BlockError::Locked { .. }) => {
            assert!(e.to_string().contains("locked"), "{e}");
        }
        other => panic!("expected Locked, got {other:?}"),
    }
    BlockBackend::open(img.path(), &BlockOptions::default(), ctx)
        .expect("lock released when the other process exits");
}
