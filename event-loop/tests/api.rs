//! Functional tests of the public API: BHs, fd handlers, timers, the pool, IoThread.

use std::os::unix::io::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_loop::{now_ns, AioContext, IoThread};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

fn counter() -> (Arc<AtomicUsize>, impl Fn() -> usize) {
    let c = Arc::new(AtomicUsize::new(0));
    let c2 = c.clone();
    (c, move || c2.load(Ordering::SeqCst))
}

#[test]
fn bh_scheduled_twice_runs_once() {
    let ctx = AioContext::new().unwrap();
    let (c, get) = counter();
    let bh = ctx.new_bh("t", move || {
        c.fetch_add(1, Ordering::SeqCst);
    });
    bh.schedule();
    bh.schedule();
    let _g = ctx.acquire();
    assert!(ctx.poll(false));
    assert_eq!(get(), 1);
    assert!(!ctx.poll(false));
    assert_eq!(get(), 1);
}

#[test]
fn cancelled_and_deleted_bhs_do_not_run() {
    let ctx = AioContext::new().unwrap();
    let (c, get) = counter();
    let c2 = c.clone();
    let bh = ctx.new_bh("cancelled", move || {
        c.fetch_add(1, Ordering::SeqCst);
    });
    bh.schedule();
    bh.cancel();
    let bh2 = ctx.new_bh("deleted", move || {
        c2.fetch_add(1, Ordering::SeqCst);
    });
    bh2.schedule();
    drop(bh2);
    let _g = ctx.acquire();
    assert!(!ctx.poll(false));
    assert_eq!(get(), 0);
    bh.schedule();
    assert!(ctx.poll(false));
    assert_eq!(get(), 1);
}

#[test]
fn bh_rescheduling_itself_runs_again_next_poll() {
    let ctx = AioContext::new().unwrap();
    let (c, get) = counter();
    let slot: Arc<Mutex<Option<event_loop::BottomHalf>>> = Arc::new(Mutex::new(None));
    let s2 = slot.clone();
    let bh = ctx.new_bh("again", move || {
        if c.fetch_add(1, Ordering::SeqCst) < 2 {
            s2.lock().unwrap().as_ref().unwrap().schedule();
        }
    });
    *slot.lock().unwrap() = Some(bh.clone());
    bh.schedule();
    let _g = ctx.acquire();
    ctx.poll_while(|| get() < 3);
    assert_eq!(get(), 3);
    assert!(!bh.is_scheduled());
    slot.lock().unwrap().take();
}

#[test]
fn idle_bh_runs_within_the_idle_timeout_without_a_wakeup() {
    let ctx = AioContext::new().unwrap();
    let (c, get) = counter();
    let bh = ctx.new_bh("idle", move || {
        c.fetch_add(1, Ordering::SeqCst);
    });
    bh.schedule_idle();
    assert_eq!(ctx.eventfd_writes(), 0);
    let _g = ctx.acquire();
    let t = Instant::now();
    assert!(ctx.poll(true));
    assert_eq!(get(), 1);
    assert!(t.elapsed() < Duration::from_secs(2));
}

#[test]
fn fd_handlers_added_and_removed_from_inside_handlers() {
    let ctx = AioContext::new().unwrap();
    let a = Arc::new(EventFd::new(EFD_NONBLOCK).unwrap());
    let b = Arc::new(EventFd::new(EFD_NONBLOCK).unwrap());
    let (hits_b, get_b) = counter();
    let (ctx2, a2, b2) = (ctx.clone(), a.clone(), b.clone());
    ctx.set_fd_handler(
        a.as_raw_fd(),
        Some(Box::new(move || {
            let _ = a2.read();
            // Remove ourselves and register b.
            ctx2.remove_fd_handler(a2.as_raw_fd());
            let (b3, h) = (b2.clone(), hits_b.clone());
            ctx2.set_fd_handler(
                b2.as_raw_fd(),
                Some(Box::new(move || {
                    let _ = b3.read();
                    h.fetch_add(1, Ordering::SeqCst);
                })),
                None,
            )
            .unwrap();
        })),
        None,
    )
    .unwrap();
    a.write(1).unwrap();
    b.write(1).unwrap();
    let _g = ctx.acquire();
    assert!(ctx.poll(true));
    ctx.poll_while(|| get_b() == 0);
    a.write(1).unwrap();
    assert!(!ctx.poll(false), "a's handler was removed");
    // Removing b drops the last handler holding a clone of the context.
    ctx.remove_fd_handler(b.as_raw_fd());
}

#[test]
fn write_handler_runs_on_writable_fd() {
    let ctx = AioContext::new().unwrap();
    let e = EventFd::new(EFD_NONBLOCK).unwrap();
    let (c, get) = counter();
    ctx.set_fd_handler(
        e.as_raw_fd(),
        None,
        Some(Box::new(move || {
            c.fetch_add(1, Ordering::SeqCst);
        })),
    )
    .unwrap();
    let _g = ctx.acquire();
    assert!(ctx.poll(true));
    assert_eq!(get(), 1);
    ctx.remove_fd_handler(e.as_raw_fd());
    assert!(!ctx.poll(false));
}

#[test]
fn timers_fire_in_deadline_order_not_before() {
    let ctx = AioContext::new().unwrap();
    let order = Arc::new(Mutex::new(Vec::new()));
    let (o1, o2) = (order.clone(), order.clone());
    let t1 = ctx.new_timer(move || o1.lock().unwrap().push((1, now_ns())));
    let t2 = ctx.new_timer(move || o2.lock().unwrap().push((2, now_ns())));
    let start = now_ns();
    t1.arm_after(Duration::from_millis(30));
    t2.arm_after(Duration::from_millis(10));
    let cancelled = ctx.new_timer(|| panic!("cancelled timer fired"));
    cancelled.arm_after(Duration::from_millis(5));
    cancelled.cancel();
    let _g = ctx.acquire();
    ctx.poll_while(|| order.lock().unwrap().len() < 2);
    let got = order.lock().unwrap().clone();
    assert_eq!(got.iter().map(|x| x.0).collect::<Vec<_>>(), vec![2, 1]);
    assert!(got[0].1 >= start + 10_000_000);
    assert!(got[1].1 >= start + 30_000_000);
    assert!(!t1.is_armed());
}

#[test]
fn arming_a_timer_earlier_wakes_a_sleeping_iothread() {
    let ctx = AioContext::new().unwrap();
    let io = IoThread::spawn("io", ctx.clone()).unwrap();
    let (c, get) = counter();
    let t = ctx.new_timer(move || {
        c.fetch_add(1, Ordering::SeqCst);
    });
    std::thread::sleep(Duration::from_millis(20)); // let it fall asleep
    t.arm_after(Duration::from_millis(5));
    let deadline = Instant::now() + Duration::from_secs(5);
    while get() == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(get(), 1);
    io.stop();
}

#[test]
fn pool_runs_jobs_and_completions_on_the_context() {
    let ctx = AioContext::new().unwrap();
    let pool = ctx.thread_pool();
    pool.set_max_workers(2);
    let results = Arc::new(Mutex::new(Vec::new()));
    for i in 0..20u64 {
        let r = results.clone();
        let c = ctx.clone();
        pool.submit(
            move || i * 2,
            move |v| {
                assert!(c.is_held_by_current_thread());
                r.lock().unwrap().push(v)
            },
        );
    }
    let _g = ctx.acquire();
    ctx.poll_while(|| results.lock().unwrap().len() < 20);
    let mut got = results.lock().unwrap().clone();
    got.sort();
    assert_eq!(got, (0..20).map(|i| i * 2).collect::<Vec<_>>());
    assert!(pool.workers() <= 2);
}

#[test]
fn cancelled_job_never_completes() {
    let ctx = AioContext::new().unwrap();
    let pool = ctx.thread_pool();
    pool.set_max_workers(1);
    let (open_gate, gate) = std::sync::mpsc::channel::<()>();
    let (done, get) = counter();
    let d1 = done.clone();
    let first = pool.submit(
        move || {
            let _ = gate.recv();
        },
        move |_| {
            d1.fetch_add(1, Ordering::SeqCst);
        },
    );
    let d2 = done.clone();
    let second = pool.submit(
        || (),
        move |_| {
            d2.fetch_add(100, Ordering::SeqCst);
        },
    );
    // The single worker is busy (or about to be) with `first`.
    assert!(second.cancel());
    assert!(!second.cancel());
    drop(open_gate);
    let _g = ctx.acquire();
    ctx.poll_while(|| get() == 0);
    assert!(!first.cancel());
    assert!(!ctx.poll(false));
    assert_eq!(get(), 1);
}

#[test]
fn workers_start_lazily_and_idle_ones_retire() {
    let ctx = AioContext::new().unwrap();
    let pool = ctx.thread_pool();
    pool.set_idle_retire(Duration::from_millis(30));
    assert_eq!(pool.workers(), 0, "workers start lazily");
    let (c, get) = counter();
    pool.submit(
        || (),
        move |_| {
            c.fetch_add(1, Ordering::SeqCst);
        },
    );
    assert_eq!(pool.workers(), 1);
    {
        let _g = ctx.acquire();
        ctx.poll_while(|| get() == 0);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while pool.workers() > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(pool.workers(), 0, "idle worker did not retire");
    // A new job starts a new worker.
    let (c2, get2) = counter();
    pool.submit(
        || (),
        move |_| {
            c2.fetch_add(1, Ordering::SeqCst);
        },
    );
    let _g = ctx.acquire();
    ctx.poll_while(|| get2() == 0);
}

#[test]
fn public_types_are_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<AioContext>();
    check::<event_loop::BottomHalf>();
    check::<event_loop::Timer>();
    check::<event_loop::ThreadPool>();
    check::<event_loop::JobHandle>();
    check::<event_loop::Error>();
    fn check_send<T: Send>() {}
    check_send::<IoThread>();
}

#[test]
fn iothread_runs_bhs_scheduled_from_other_threads() {
    let ctx = AioContext::new().unwrap();
    let io = IoThread::spawn("io", ctx.clone()).unwrap();
    let (c, get) = counter();
    let bh = ctx.new_bh("x", move || {
        c.fetch_add(1, Ordering::SeqCst);
    });
    for i in 1..=100 {
        bh.schedule();
        let deadline = Instant::now() + Duration::from_secs(5);
        while get() < i && Instant::now() < deadline {
            std::hint::spin_loop();
        }
        assert_eq!(get(), i);
    }
    io.stop();
    assert!(ctx.trace_dump().contains("BhDispatch(x#"));
}

#[test]
fn scheduling_with_no_sleeper_writes_no_eventfd() {
    let ctx = AioContext::new().unwrap();
    let bh = ctx.new_bh("x", || {});
    for _ in 0..1000 {
        bh.schedule();
        let _g = ctx.acquire();
        ctx.poll(false);
    }
    assert_eq!(ctx.eventfd_writes(), 0);
}

#[test]
fn adding_a_handler_for_a_ready_fd_wakes_a_sleeping_iothread() {
    let ctx = AioContext::new().unwrap();
    let io = IoThread::spawn("io", ctx.clone()).unwrap();
    std::thread::sleep(Duration::from_millis(20)); // let it fall asleep
    let e = Arc::new(EventFd::new(EFD_NONBLOCK).unwrap());
    e.write(1).unwrap();
    let (c, get) = counter();
    let e2 = e.clone();
    ctx.set_fd_handler(
        e.as_raw_fd(),
        Some(Box::new(move || {
            let _ = e2.read();
            c.fetch_add(1, Ordering::SeqCst);
        })),
        None,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while get() == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(get(), 1);
    ctx.remove_fd_handler(e.as_raw_fd());
    io.stop();
}

#[test]
fn nested_poller_and_iothread_both_asleep_are_served() {
    // Both pollers block in epoll_wait on the same context; a BH scheduled from a
    // third thread must run (on either of them).
    let ctx = AioContext::new().unwrap();
    let io = IoThread::spawn("io", ctx.clone()).unwrap();
    let (c, get) = counter();
    let bh = ctx.new_bh("third-party", move || {
        c.fetch_add(1, Ordering::SeqCst);
    });
    let scheduler = std::thread::spawn(move || {
        for _ in 0..50 {
            std::thread::sleep(Duration::from_millis(1));
            bh.schedule();
        }
        bh
    });
    let _g = ctx.acquire();
    let deadline = Instant::now() + Duration::from_secs(10);
    ctx.poll_while(|| get() < 10 && Instant::now() < deadline);
    assert!(get() >= 10, "only {} BH runs", get());
    drop(_g);
    let bh = scheduler.join().unwrap();
    drop(bh);
    io.stop();
}

/// Waits (bounded) until the context has `n` announced sleepers.
fn wait_for_sleepers(ctx: &AioContext, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while ctx.sleepers() < n {
        assert!(Instant::now() < deadline, "no poller went to sleep");
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn inline_job_is_delivered_by_the_holders_poll_without_waking_the_iothread() {
    let ctx = AioContext::new().unwrap();
    let io = IoThread::spawn("io", ctx.clone()).unwrap();
    wait_for_sleepers(&ctx, 1);
    let writes = ctx.eventfd_writes();
    let (c, n) = counter();
    let ran_on = Arc::new(Mutex::new(None));
    let r = ran_on.clone();
    let guard = ctx.acquire();
    ctx.thread_pool().run_inline(
        &guard,
        move || *r.lock().unwrap() = Some(std::thread::current().id()),
        move |()| {
            c.fetch_add(1, Ordering::SeqCst);
        },
    );
    assert_eq!(*ran_on.lock().unwrap(), Some(std::thread::current().id()));
    assert_eq!(
        n(),
        0,
        "completions run on the context, not inside run_inline"
    );
    ctx.poll_while(|| n() == 0);
    drop(guard);
    assert_eq!(
        ctx.eventfd_writes(),
        writes,
        "the sleeping iothread was woken"
    );
    assert_eq!(ctx.thread_pool().workers(), 0);
    io.stop();
}

#[test]
fn inline_job_left_unpolled_wakes_the_iothread_at_release() {
    let ctx = AioContext::new().unwrap();
    let io = IoThread::spawn("io", ctx.clone()).unwrap();
    wait_for_sleepers(&ctx, 1);
    let writes = ctx.eventfd_writes();
    let (c, n) = counter();
    {
        let outer = ctx.acquire();
        let inner = ctx.acquire();
        ctx.thread_pool().run_inline(
            &inner,
            || (),
            move |()| {
                c.fetch_add(1, Ordering::SeqCst);
            },
        );
        // Leaving an inner level does not publish: the holder may still poll.
        drop(inner);
        assert_eq!(ctx.eventfd_writes(), writes);
        // Letting the lock go without polling must hand the work to the sleeper.
        drop(outer);
    }
    assert_eq!(ctx.eventfd_writes(), writes + 1);
    let deadline = Instant::now() + Duration::from_secs(5);
    while n() == 0 {
        assert!(
            Instant::now() < deadline,
            "the iothread never ran the completion:\n{}",
            ctx.trace_dump()
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    io.stop();
}

/// Runs `f` on its own thread; fails (with the trace) if it has not finished in
/// 5 s instead of hanging the test run.
fn within_5s(ctx: &Arc<AioContext>, f: impl FnOnce() + Send + 'static) {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        f();
        let _ = tx.send(());
    });
    if rx.recv_timeout(Duration::from_secs(5)).is_err() {
        panic!("hung; trace:\n{}", ctx.trace_dump());
    }
}

#[test]
fn a_bh_may_wait_in_a_nested_poll_for_a_bh_later_in_its_own_batch() {
    let ctx = AioContext::new().unwrap();
    let (c, n) = counter();
    let later = ctx.new_bh("later", move || {
        c.fetch_add(1, Ordering::SeqCst);
    });
    let (c2, n2) = (ctx.clone(), Arc::new(n));
    let n3 = n2.clone();
    let first = ctx.new_bh("first", move || {
        // `later` was scheduled after us: it is in the batch being run, not in
        // the queue. The nested poll must run it rather than sleep forever.
        let _g = c2.acquire();
        c2.poll_while(|| n3() == 0);
    });
    first.schedule();
    later.schedule();
    let c3 = ctx.clone();
    within_5s(&ctx, move || {
        let _g = c3.acquire();
        c3.poll(false);
    });
    assert_eq!(n2(), 1, "the later BH ran once, inside the nested poll");
    drop(first); // its closure holds a context clone
}

#[test]
fn a_bh_may_wait_for_an_inline_pool_job_while_the_completion_bh_is_in_its_batch() {
    // The synchronous block path called from a BH callback, with the pool's
    // completion BH already pending behind that callback in the same batch: the
    // inline job's quiet schedule finds it pending and publishes nothing.
    let ctx = AioContext::new().unwrap();
    let (c2, inline_done) = (ctx.clone(), Arc::new(AtomicUsize::new(0)));
    let idn = inline_done.clone();
    let caller = ctx.new_bh("sync-caller", move || {
        let g = c2.acquire();
        let d = idn.clone();
        c2.thread_pool().run_inline(
            &g,
            || (),
            move |()| {
                d.fetch_add(1, Ordering::SeqCst);
            },
        );
        c2.poll_while(|| idn.load(Ordering::SeqCst) == 0);
    });
    caller.schedule();
    // Then a worker finishes a job: the completion BH queues behind the caller.
    let pool_done = Arc::new(AtomicUsize::new(0));
    let pd = pool_done.clone();
    ctx.thread_pool().submit(
        || (),
        move |()| {
            pd.fetch_add(1, Ordering::SeqCst);
        },
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while !ctx
        .trace_dump()
        .contains("BhSchedule(thread-pool-completion")
    {
        assert!(Instant::now() < deadline, "the worker never completed");
        std::thread::sleep(Duration::from_millis(1));
    }
    let c3 = ctx.clone();
    within_5s(&ctx, move || {
        let _g = c3.acquire();
        c3.poll(false);
    });
    assert_eq!(inline_done.load(Ordering::SeqCst), 1);
    assert_eq!(
        pool_done.load(Ordering::SeqCst),
        1,
        "delivered in the same pass"
    );
    drop(caller);
}

/// One link of an endless chain of inline jobs, each completion starting the next
/// (a device whose every request runs inline on the iothread).
fn inline_chain(ctx: Arc<AioContext>, links: Arc<AtomicUsize>, stop: Arc<AtomicBool>) {
    let guard = ctx.acquire();
    let next = ctx.clone();
    ctx.thread_pool().run_inline(
        &guard,
        || (),
        move |()| {
            links.fetch_add(1, Ordering::SeqCst);
            if !stop.load(Ordering::SeqCst) {
                inline_chain(next, links, stop);
            }
        },
    );
}

/// The iothread skips asking the kernel for fd events while its own dispatches
/// leave quiet work (inline requests), but only for a bounded number of passes:
/// under an endless chain of inline jobs an fd handler still runs, promptly.
#[test]
fn endless_inline_work_does_not_starve_fd_handlers() {
    let ctx = AioContext::new().unwrap();
    let io = IoThread::spawn("io", ctx.clone()).unwrap();
    let (links, stop) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicBool::new(false)),
    );
    inline_chain(ctx.clone(), links.clone(), stop.clone());
    let deadline = Instant::now() + Duration::from_secs(5);
    while links.load(Ordering::SeqCst) < 1000 {
        assert!(
            Instant::now() < deadline,
            "the chain never ran on the iothread"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    let kick = Arc::new(EventFd::new(EFD_NONBLOCK).unwrap());
    let (hits, get_hits) = counter();
    let k = kick.clone();
    ctx.set_fd_handler(
        kick.as_raw_fd(),
        Some(Box::new(move || {
            let _ = k.read();
            hits.fetch_add(1, Ordering::SeqCst);
        })),
        None,
    )
    .unwrap();
    for round in 1..=20 {
        kick.write(1).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while get_hits() < round {
            assert!(
                Instant::now() < deadline,
                "fd handler starved by inline work (round {round}):\n{}",
                ctx.trace_dump()
            );
            std::thread::yield_now();
        }
    }
    let before = links.load(Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(20));
    assert!(links.load(Ordering::SeqCst) > before, "the chain stopped");
    stop.store(true, Ordering::SeqCst);
    ctx.remove_fd_handler(kick.as_raw_fd());
    io.stop();
}

/// A completion that is not a closure: what the block layer boxes once per
/// request, its result stored inside.
struct Recorded {
    id: usize,
    log: Arc<Mutex<Vec<usize>>>,
    ctx: Arc<AioContext>,
}

impl event_loop::Task for Recorded {
    fn run(self: Box<Self>) {
        assert!(
            self.ctx.is_held_by_current_thread(),
            "a completion runs with the context lock held"
        );
        self.log.lock().unwrap().push(self.id);
    }
}

#[test]
fn a_task_returned_by_a_pool_job_runs_on_the_context() {
    let ctx = AioContext::new().unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let (l, c) = (log.clone(), ctx.clone());
    ctx.thread_pool().submit_task(move || {
        Box::new(Recorded {
            id: 7,
            log: l,
            ctx: c,
        })
    });
    let _g = ctx.acquire();
    let deadline = Instant::now() + Duration::from_secs(5);
    while log.lock().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "the task never ran");
        ctx.poll(false);
        std::thread::yield_now();
    }
    assert_eq!(*log.lock().unwrap(), [7]);
}

#[test]
fn queued_completions_run_once_each_in_order_in_the_holders_next_poll() {
    let ctx = AioContext::new().unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let g = ctx.acquire();
    let pool = ctx.thread_pool();
    let task = |id| -> Box<dyn event_loop::Task> {
        Box::new(Recorded {
            id,
            log: log.clone(),
            ctx: ctx.clone(),
        })
    };
    pool.queue_completions(&g, vec![task(1), task(2)]);
    assert!(log.lock().unwrap().is_empty(), "queued, not run");
    assert!(ctx.poll(false));
    assert_eq!(*log.lock().unwrap(), [1, 2]);
    pool.queue_completion(&g, task(3));
    assert!(ctx.poll(false));
    assert_eq!(*log.lock().unwrap(), [1, 2, 3]);
    assert!(!ctx.poll(false), "nothing left pending");
    // Nothing queued: nothing scheduled, so the next poll makes no progress.
    pool.queue_completions(&g, Vec::new());
    assert!(!ctx.poll(false));
    assert_eq!(log.lock().unwrap().len(), 3);
    drop(g);
}

#[test]
fn a_bh_after_a_caught_panic_in_a_nested_dispatch_still_runs_in_the_same_pass() {
    // A lone BH (no slice of its own) whose callback polls, catching a panic
    // of the first BH of the nested batch: the rest of that batch stays in
    // the nested slices, and the outer pass must still run it (scheduled
    // quietly, nothing would wake the iothread for it).
    let ctx = AioContext::new().unwrap();
    let c_ran = Arc::new(AtomicUsize::new(0));
    let cr = c_ran.clone();
    let c = ctx.new_bh("c", move || {
        cr.fetch_add(1, Ordering::SeqCst);
    });
    let b = ctx.new_bh("b", || panic!("b panics on purpose (test)"));
    let ctx2 = ctx.clone();
    let a = ctx.new_bh("a", move || {
        let g = ctx2.acquire();
        b.schedule_quiet(&g);
        c.schedule_quiet(&g);
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| ctx2.poll(false)));
    });
    let g = ctx.acquire();
    a.schedule_quiet(&g);
    ctx.poll(false);
    assert_eq!(c_ran.load(Ordering::SeqCst), 1, "c ran in the same pass");
    drop(g);
    drop(a); // its closure holds a context clone
}

#[test]
fn completions_queued_later_from_another_thread_wake_the_sleeping_iothread() {
    let ctx = AioContext::new().unwrap();
    let io = IoThread::spawn("io", ctx.clone()).unwrap();
    wait_for_sleepers(&ctx, 1);
    let writes = ctx.eventfd_writes();
    let log = Arc::new(Mutex::new(Vec::new()));
    let task = |id| -> Box<dyn event_loop::Task> {
        Box::new(Recorded {
            id,
            log: log.clone(),
            ctx: ctx.clone(),
        })
    };
    let batch = vec![task(1), task(2), task(3)];
    // A thread without the context lock, as a block-layer copier is.
    let sender = ctx.thread_pool().completion_sender();
    std::thread::spawn(move || sender.queue_completions_later(batch))
        .join()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while log.lock().unwrap().len() < 3 {
        assert!(
            Instant::now() < deadline,
            "the sleeping iothread never ran them: {:?}",
            log.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(*log.lock().unwrap(), [1, 2, 3], "once each, in order");
    assert!(ctx.eventfd_writes() > writes, "the iothread was woken");
    // An empty batch schedules nothing: the iothread stays asleep.
    wait_for_sleepers(&ctx, 1);
    let writes = ctx.eventfd_writes();
    ctx.thread_pool()
        .completion_sender()
        .queue_completions_later(Vec::new());
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(ctx.eventfd_writes(), writes);
    io.stop();
}
