//! The iothread's busy poll: a read handler whose readiness check says yes runs
//! although its fd never becomes readable, and only while polling is on.

use std::os::unix::io::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use event_loop::{AioContext, IoThread};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Registers a polled handler on an eventfd nobody writes, raises its readiness
/// flag, and nudges the iothread with notifies (short waits, which grow the
/// window) until the handler has run or `give_up` has passed. Returns how many
/// times the handler ran.
fn run_until_polled(poll_max: Duration, give_up: Duration) -> usize {
    let ctx = AioContext::new().unwrap();
    ctx.set_poll_max(poll_max);
    let fd = EventFd::new(EFD_NONBLOCK).unwrap();
    let work = Arc::new(AtomicBool::new(false));
    let ran = Arc::new(AtomicUsize::new(0));
    let (w, r) = (work.clone(), ran.clone());
    ctx.set_fd_handler_polled(
        fd.as_raw_fd(),
        Box::new(move || {
            if w.swap(false, Ordering::AcqRel) {
                r.fetch_add(1, Ordering::AcqRel);
            }
        }),
        {
            let w = work.clone();
            Arc::new(move || w.load(Ordering::Acquire))
        },
    )
    .unwrap();
    let iothread = IoThread::spawn("busy-poll-test", ctx.clone()).unwrap();
    work.store(true, Ordering::Release);
    let start = Instant::now();
    while ran.load(Ordering::Acquire) == 0 && start.elapsed() < give_up {
        ctx.notify();
        std::thread::sleep(Duration::from_micros(5));
    }
    iothread.stop();
    ctx.remove_fd_handler(fd.as_raw_fd());
    ran.load(Ordering::Acquire)
}

#[test]
fn a_ready_check_runs_its_handler_without_the_fd_becoming_readable() {
    let ran = run_until_polled(Duration::from_micros(32), Duration::from_secs(10));
    assert_eq!(ran, 1, "the busy poll never ran the ready handler");
}

#[test]
fn with_polling_off_the_handler_waits_for_its_fd() {
    let ran = run_until_polled(Duration::ZERO, Duration::from_millis(300));
    assert_eq!(
        ran, 0,
        "a handler ran with polling off and its fd never readable"
    );
}
