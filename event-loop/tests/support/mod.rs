//! The original-scenario stress harness, shared by `stress.rs` and the benches'
//! tests: an iothread running its loop; a "vCPU" thread doing nested blocking polls
//! that wait for thread-pool completions (whose BH reschedules itself while more
//! remain) and then for a follow-up BH that only the iothread can still run; more
//! threads scheduling BHs and waiting for them. Every thread waits for the work it
//! made, so a lost wake-up shows as global quiet: the watchdog then stops the run
//! and returns a report of each thread's state plus the trace ring, instead of
//! hanging.

#![allow(dead_code)]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use event_loop::{AioContext, BottomHalf, Fault, IoThread};

/// What one stress run is asked to do.
pub struct StressConfig {
    /// A fault knob to turn on (positive controls), or none.
    pub fault: Option<Fault>,
    /// Stop after this long if nothing hangs.
    pub duration: Duration,
    /// No progress for this long is a hang.
    pub quiet_limit: Duration,
    /// Threads scheduling BHs besides the nested poller.
    pub schedulers: usize,
    /// Pool jobs the nested poller submits per nested poll.
    pub jobs_per_poll: usize,
    /// Every other round the nested poller runs one of its jobs itself
    /// (`ThreadPool::run_inline`, the block layer's synchronous path), and every
    /// sixth round it then lets the lock go without polling, leaving that quietly
    /// published completion to the iothread.
    pub inline_jobs: bool,
    /// Registers a polled handler, so the iothread busy-polls between waits
    /// (its check says yes now and then, with nothing to do: stale readiness).
    pub busy_poll: bool,
}

/// How a run ended.
#[derive(Debug)]
pub enum Outcome {
    /// Ran for the whole duration; `iterations` waits completed in total.
    Completed { iterations: u64 },
    /// The watchdog saw no progress; the report says what each thread was doing.
    Hang { after: u64, report: String },
}

/// What a thread is doing, for the hang report.
struct ThreadState {
    name: String,
    doing: Mutex<&'static str>,
    iter: AtomicU64,
}

impl ThreadState {
    fn new(name: &str) -> Arc<Self> {
        Arc::new(ThreadState {
            name: name.to_string(),
            doing: Mutex::new("starting"),
            iter: AtomicU64::new(0),
        })
    }
    fn set(&self, doing: &'static str) {
        *self.doing.lock().unwrap() = doing;
    }
}

/// A BH that counts its runs and unparks the thread waiting for it.
fn counting_bh(ctx: &Arc<AioContext>, name: &'static str) -> (BottomHalf, Arc<AtomicU64>) {
    let runs = Arc::new(AtomicU64::new(0));
    let r = runs.clone();
    let waiter = thread::current();
    let bh = ctx.new_bh(name, move || {
        r.fetch_add(1, Ordering::SeqCst);
        waiter.unpark();
    });
    (bh, runs)
}

fn wait_for(count: &AtomicU64, target: u64, stop: &AtomicBool) {
    while count.load(Ordering::SeqCst) < target && !stop.load(Ordering::SeqCst) {
        thread::park_timeout(Duration::from_millis(20));
    }
}

/// A read handler on an eventfd nobody writes, whose readiness check says yes
/// once in 512 calls: the iothread spins, and now and then runs a full pass for
/// nothing. The handler keeps the fd open (a hung run leaks the context).
fn register_stale_polled_handler(ctx: &Arc<AioContext>) {
    use std::os::unix::io::AsRawFd;
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
    let fd = Arc::new(EventFd::new(EFD_NONBLOCK).expect("eventfd"));
    let keep = fd.clone();
    let calls = AtomicU64::new(0);
    ctx.set_fd_handler_polled(
        fd.as_raw_fd(),
        Box::new(move || {
            let _ = keep.read();
        }),
        Arc::new(move || calls.fetch_add(1, Ordering::Relaxed) % 512 == 511),
    )
    .expect("polled handler");
}

/// Runs the scenario once under the watchdog.
pub fn run_stress(cfg: &StressConfig) -> Outcome {
    let ctx = AioContext::new().expect("context");
    if let Some(f) = cfg.fault {
        ctx.set_fault(f, true);
    }
    ctx.thread_pool().set_max_workers(4);
    if cfg.busy_poll {
        register_stale_polled_handler(&ctx);
    }
    let io = IoThread::spawn("stress-iothread", ctx.clone()).expect("iothread");
    let stop = Arc::new(AtomicBool::new(false));
    let progress = Arc::new(AtomicU64::new(0));
    let mut states = Vec::new();
    let mut threads: Vec<JoinHandle<()>> = Vec::new();
    let bh_probes: Arc<Mutex<Vec<(String, BottomHalf)>>> = Arc::default();

    // The vCPU-like thread: nested blocking polls on the iothread's context.
    {
        let st = ThreadState::new("vcpu (nested poller)");
        states.push(st.clone());
        let (ctx, stop, progress, probes) = (
            ctx.clone(),
            stop.clone(),
            progress.clone(),
            bh_probes.clone(),
        );
        let jobs = cfg.jobs_per_poll;
        let inline_jobs = cfg.inline_jobs;
        threads.push(thread::spawn(move || {
            let (followup, followups) = counting_bh(&ctx, "followup");
            probes
                .lock()
                .unwrap()
                .push(("followup".into(), followup.clone()));
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) {
                i += 1;
                st.iter.store(i, Ordering::SeqCst);
                st.set("taking the context lock");
                let guard = ctx.acquire();
                let left = Arc::new(AtomicU64::new(jobs as u64));
                let inline = inline_jobs && i.is_multiple_of(2);
                for j in 0..jobs {
                    let (left, followup) = (left.clone(), followup.clone());
                    let done = move |_| {
                        // The last completion asks for work the iothread must do.
                        if left.fetch_sub(1, Ordering::SeqCst) == 1 {
                            followup.schedule();
                        }
                    };
                    if inline && j == 0 {
                        ctx.thread_pool()
                            .run_inline(&guard, || std::hint::black_box(7u64), done);
                    } else {
                        ctx.thread_pool()
                            .submit(|| std::hint::black_box(7u64), done);
                    }
                }
                if inline && i.is_multiple_of(6) {
                    // The quiet completion is left to the iothread: the release
                    // must wake it.
                    st.set("released the lock right after an inline job");
                } else {
                    st.set("nested poll_while (holding the lock)");
                    ctx.poll_while(|| {
                        left.load(Ordering::SeqCst) > 0 && !stop.load(Ordering::SeqCst)
                    });
                }
                drop(guard);
                st.set("lock released; waiting for the follow-up BH");
                wait_for(&followups, i, &stop);
                progress.fetch_add(1, Ordering::SeqCst);
            }
            st.set("stopped");
        }));
    }

    // Threads scheduling BHs and waiting for them to run.
    for s in 0..cfg.schedulers {
        let st = ThreadState::new(&format!("scheduler {s}"));
        states.push(st.clone());
        let (ctx, stop, progress, probes) = (
            ctx.clone(),
            stop.clone(),
            progress.clone(),
            bh_probes.clone(),
        );
        threads.push(thread::spawn(move || {
            let (bh, runs) = counting_bh(&ctx, "scheduler-bh");
            probes
                .lock()
                .unwrap()
                .push((format!("scheduler {s} bh"), bh.clone()));
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) {
                i += 1;
                st.iter.store(i, Ordering::SeqCst);
                st.set("scheduling its BH");
                bh.schedule();
                st.set("waiting for its BH to run");
                wait_for(&runs, i, &stop);
                progress.fetch_add(1, Ordering::SeqCst);
            }
            st.set("stopped");
        }));
    }

    // The watchdog.
    let start = Instant::now();
    let mut last = 0;
    let mut last_change = Instant::now();
    let outcome = loop {
        thread::sleep(Duration::from_millis(10));
        let p = progress.load(Ordering::SeqCst);
        if p != last {
            last = p;
            last_change = Instant::now();
        }
        if last_change.elapsed() > cfg.quiet_limit {
            break Outcome::Hang {
                after: p,
                report: hang_report(&ctx, &states, &bh_probes, p),
            };
        }
        if start.elapsed() > cfg.duration {
            break Outcome::Completed { iterations: p };
        }
    };

    // Rescue: faults off, then keep notifying until every thread has left.
    stop.store(true, Ordering::SeqCst);
    if let Some(f) = cfg.fault {
        ctx.set_fault(f, false);
    }
    let rescue_deadline = Instant::now() + Duration::from_secs(10);
    while threads.iter().any(|t| !t.is_finished()) {
        assert!(
            Instant::now() < rescue_deadline,
            "stress threads did not stop even after faults were removed"
        );
        ctx.notify();
        for t in &threads {
            t.thread().unpark();
        }
        thread::sleep(Duration::from_millis(1));
    }
    for t in threads {
        t.join().expect("stress thread panicked");
    }
    // Stopping the iothread is watched too: a stuck iothread fails the test.
    let (tx, rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        io.stop();
        let _ = tx.send(());
    });
    if rx.recv_timeout(Duration::from_secs(10)).is_err() {
        panic!(
            "the iothread did not stop within 10 s (stuck in the loop or on the lock); \
             sleepers={}\ntrace:\n{}",
            ctx.sleepers(),
            ctx.trace_dump()
        );
    }
    bh_probes.lock().unwrap().clear();
    outcome
}

fn hang_report(
    ctx: &AioContext,
    states: &[Arc<ThreadState>],
    probes: &Mutex<Vec<(String, BottomHalf)>>,
    progress: u64,
) -> String {
    let mut r = format!(
        "HANG: no progress after {progress} completed waits\n\
         context: sleepers={} eventfd_writes={}\nthreads:\n  iothread: loop (see trace)\n",
        ctx.sleepers(),
        ctx.eventfd_writes()
    );
    for s in states {
        r += &format!(
            "  {}: iteration {}: {}\n",
            s.name,
            s.iter.load(Ordering::SeqCst),
            s.doing.lock().unwrap()
        );
    }
    r += "bottom halves:\n";
    for (name, bh) in probes.lock().unwrap().iter() {
        r += &format!("  {name}: scheduled={}\n", bh.is_scheduled());
    }
    let trace = ctx.trace_dump();
    let lines: Vec<&str> = trace.lines().collect();
    r += "trace ring (last 60 of 1024, newest last):\n";
    for l in &lines[lines.len().saturating_sub(60)..] {
        r += "  ";
        r += l;
        r += "\n";
    }
    r
}
