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

#[test]
fn a_check_that_keeps_saying_yes_starves_no_other_fd_or_timer() {
    let ctx = AioContext::new().unwrap();
    ctx.set_poll_max(Duration::from_micros(32));
    // Always "ready", never readable: each pass runs it and finds nothing.
    let stuck = EventFd::new(EFD_NONBLOCK).unwrap();
    let stuck_runs = Arc::new(AtomicUsize::new(0));
    let s = stuck_runs.clone();
    ctx.set_fd_handler_polled(
        stuck.as_raw_fd(),
        Box::new(move || {
            s.fetch_add(1, Ordering::Relaxed);
        }),
        Arc::new(|| true),
    )
    .unwrap();
    // A plain fd (a queue kick) and a timer, served only through the kernel.
    let kick = Arc::new(EventFd::new(EFD_NONBLOCK).unwrap());
    let kicks = Arc::new(AtomicUsize::new(0));
    let (k, n) = (kick.clone(), kicks.clone());
    ctx.set_fd_handler(
        kick.as_raw_fd(),
        Some(Box::new(move || {
            if k.read().is_ok() {
                n.fetch_add(1, Ordering::AcqRel);
            }
        })),
        None,
    )
    .unwrap();
    let fired = Arc::new(AtomicBool::new(false));
    let f = fired.clone();
    let timer = ctx.new_timer(move || f.store(true, Ordering::Release));
    let iothread = IoThread::spawn("busy-poll-starve", ctx.clone()).unwrap();
    // Nudge the loop (short waits grow the window) until the spin keeps
    // finding the stuck check.
    let start = Instant::now();
    while stuck_runs.load(Ordering::Relaxed) < 1000 && start.elapsed() < Duration::from_secs(10) {
        ctx.notify();
        std::thread::sleep(Duration::from_micros(5));
    }
    assert!(
        stuck_runs.load(Ordering::Relaxed) >= 1000,
        "the spin never started"
    );
    timer.arm_after(Duration::from_millis(5));
    let start = Instant::now();
    for i in 1..=20 {
        kick.write(1).unwrap();
        while kicks.load(Ordering::Acquire) < i && start.elapsed() < Duration::from_secs(10) {
            std::thread::yield_now();
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !fired.load(Ordering::Acquire) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    iothread.stop();
    ctx.remove_fd_handler(stuck.as_raw_fd());
    ctx.remove_fd_handler(kick.as_raw_fd());
    assert_eq!(
        kicks.load(Ordering::Acquire),
        20,
        "queue kicks were starved"
    );
    assert!(fired.load(Ordering::Acquire), "the timer was starved");
}
