//! Wake-up and thread-pool benchmarks, each against a baseline measured in the same run.
//!
//! Run: `cargo bench -p event-loop --bench wakeup` (add `-- --quick` for fewer samples).
//! Prints:
//! 1. cross-thread BH wake-up (schedule on thread A, dispatched by an iothread asleep
//!    in epoll_wait) vs a raw eventfd wake-up (thread B asleep in read(2)), median/p99;
//!    target: median ratio <= 1.5;
//! 2. thread-pool round trip (submit an empty job, completion runs on the context)
//!    vs tokio `spawn_blocking(..).await` round trip; target: ours faster;
//! 3. eventfd writes (syscalls) while scheduling BHs with no sleeper; target 0
//!    (the binary re-runs itself under `strace -c -f` when strace is installed);
//! 4. CPU used by an idle context (iothread + pool workers) over 1 s (getrusage).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use event_loop::{now_ns, AioContext, IoThread};
use vmm_sys_util::eventfd::EventFd;

fn percentile(sorted: &[u64], p: f64) -> u64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Spins for `gap` so that the other thread is asleep in the kernel again.
fn pause(gap: Duration) {
    let end = Instant::now() + gap;
    while Instant::now() < end {
        std::hint::spin_loop();
    }
}

/// One-way wake-up through a raw eventfd: B sleeps in read(2) (or, with
/// `via_epoll`, in epoll_wait then read), A writes.
fn eventfd_floor(samples: usize, gap: Duration, via_epoll: bool) -> Vec<u64> {
    use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
    let efd = Arc::new(EventFd::new(0).unwrap()); // blocking
    let woke_at = Arc::new(AtomicU64::new(0));
    let (e, w) = (efd.clone(), woke_at.clone());
    let b = thread::spawn(move || {
        let ep = Epoll::new().unwrap();
        ep.ctl(
            ControlOperation::Add,
            std::os::unix::io::AsRawFd::as_raw_fd(&*e),
            EpollEvent::new(EventSet::IN, 0),
        )
        .unwrap();
        let mut evs = [EpollEvent::default(); 4];
        for _ in 0..samples {
            if via_epoll {
                let _ = ep.wait(-1, &mut evs);
            }
            let _ = e.read();
            w.store(now_ns(), Ordering::Release);
        }
    });
    let mut lat = Vec::with_capacity(samples);
    for _ in 0..samples {
        pause(gap);
        woke_at.store(0, Ordering::Release);
        let t0 = now_ns();
        efd.write(1).unwrap();
        let t1 = loop {
            let t = woke_at.load(Ordering::Acquire);
            if t != 0 {
                break t;
            }
            std::hint::spin_loop();
        };
        lat.push(t1.saturating_sub(t0));
    }
    b.join().unwrap();
    lat.sort_unstable();
    lat
}

/// One-way BH wake-up: the iothread sleeps in epoll_wait, A schedules.
fn bh_wakeup(samples: usize, gap: Duration) -> (Vec<u64>, u64) {
    let ctx = AioContext::new().unwrap();
    let io = IoThread::spawn("bench-io", ctx.clone()).unwrap();
    let ran_at = Arc::new(AtomicU64::new(0));
    let r = ran_at.clone();
    let bh = ctx.new_bh("bench", move || r.store(now_ns(), Ordering::Release));
    let writes0 = ctx.eventfd_writes();
    let mut lat = Vec::with_capacity(samples);
    for _ in 0..samples {
        pause(gap);
        ran_at.store(0, Ordering::Release);
        let t0 = now_ns();
        bh.schedule();
        let t1 = loop {
            let t = ran_at.load(Ordering::Acquire);
            if t != 0 {
                break t;
            }
            std::hint::spin_loop();
        };
        lat.push(t1.saturating_sub(t0));
    }
    let writes = ctx.eventfd_writes() - writes0;
    io.stop();
    lat.sort_unstable();
    (lat, writes)
}

/// Serial pool round trips from a nested poller: submit, poll until done() ran.
fn pool_round_trip(samples: usize) -> Vec<u64> {
    let ctx = AioContext::new().unwrap();
    let _g = ctx.acquire();
    let pool = ctx.thread_pool();
    let mut lat = Vec::with_capacity(samples);
    for _ in 0..samples {
        let done = Arc::new(AtomicBool::new(false));
        let d = done.clone();
        let t0 = now_ns();
        pool.submit(|| (), move |()| d.store(true, Ordering::Release));
        ctx.poll_while(|| !done.load(Ordering::Acquire));
        lat.push(now_ns() - t0);
    }
    lat.sort_unstable();
    lat
}

fn tokio_round_trip(samples: usize) -> Vec<u64> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .build()
        .unwrap();
    let lat = rt.block_on(async move {
        let mut lat = Vec::with_capacity(samples);
        for _ in 0..samples {
            let t0 = now_ns();
            tokio::task::spawn_blocking(|| ()).await.unwrap();
            lat.push(now_ns() - t0);
        }
        lat
    });
    let mut lat = lat;
    lat.sort_unstable();
    lat
}

/// Schedules and dispatches BHs with no poller asleep; returns eventfd writes.
fn schedule_without_sleeper(n: usize) -> u64 {
    let ctx = AioContext::new().unwrap();
    let bh = ctx.new_bh("no-sleeper", || {});
    let _g = ctx.acquire();
    for _ in 0..n {
        bh.schedule();
        ctx.poll(false);
    }
    ctx.eventfd_writes()
}

fn cpu_ns() -> u64 {
    let mut ru = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes one rusage into the valid, zeroed buffer we pass.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, ru.as_mut_ptr()) };
    assert_eq!(rc, 0);
    // SAFETY: getrusage succeeded, so it initialised the struct.
    let ru = unsafe { ru.assume_init() };
    let tv = |t: libc::timeval| t.tv_sec as u64 * 1_000_000_000 + t.tv_usec as u64 * 1000;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn us(ns: u64) -> String {
    format!("{:.1}us", ns as f64 / 1000.0)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--schedule-only") {
        // Under strace: only the no-sleeper scheduling loop.
        let w = schedule_without_sleeper(100_000);
        println!("eventfd writes: {w}");
        return;
    }
    if args.iter().any(|a| a == "--pool-split") {
        let ctx = AioContext::new().unwrap();
        let _g = ctx.acquire();
        let pool = ctx.thread_pool();
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for _ in 0..10_000 {
            let done = Arc::new(AtomicU64::new(0));
            let d = done.clone();
            let t0 = now_ns();
            pool.submit(now_ns, move |t| d.store(t, Ordering::Release));
            ctx.poll_while(|| done.load(Ordering::Acquire) == 0);
            let t2 = now_ns();
            let t1 = done.load(Ordering::Acquire);
            a.push(t1 - t0);
            b.push(t2 - t1);
        }
        a.sort_unstable();
        b.sort_unstable();
        println!(
            "submit->job start median {} ; job->done on ctx median {}",
            us(percentile(&a, 0.5)),
            us(percentile(&b, 0.5))
        );
        return;
    }
    if args.iter().any(|a| a == "--pool-only") {
        let l = pool_round_trip(10_000);
        println!("pool median {}", us(percentile(&l, 0.5)));
        return;
    }
    let quick = args.iter().any(|a| a == "--quick");
    let samples = if quick { 2_000 } else { 20_000 };
    let gap = Duration::from_micros(50);

    println!("== 1. cross-thread wake-up (one way, sleeper in the kernel), {samples} samples");
    let floor_read = eventfd_floor(samples, gap, false);
    let floor_epoll = eventfd_floor(samples, gap, true);
    let (bh, writes) = bh_wakeup(samples, gap);
    println!(
        "raw eventfd, B in read(2)      : median {} p99 {}",
        us(percentile(&floor_read, 0.5)),
        us(percentile(&floor_read, 0.99))
    );
    println!(
        "raw eventfd, B in epoll_wait(2): median {} p99 {}",
        us(percentile(&floor_epoll, 0.5)),
        us(percentile(&floor_epoll, 0.99))
    );
    // The floor is whichever raw variant was faster at the median.
    let floor = if percentile(&floor_read, 0.5) <= percentile(&floor_epoll, 0.5) {
        floor_read
    } else {
        floor_epoll
    };
    let (fm, f99) = (percentile(&floor, 0.5), percentile(&floor, 0.99));
    let (bm, b99) = (percentile(&bh, 0.5), percentile(&bh, 0.99));
    println!(
        "floor (faster raw)             : median {} p99 {}",
        us(fm),
        us(f99)
    );
    println!(
        "BH schedule -> dispatch         : median {} p99 {} ({writes} eventfd writes)",
        us(bm),
        us(b99)
    );
    println!(
        "ratio median {:.2}x (target <= 1.5x), p99 {:.2}x",
        bm as f64 / fm as f64,
        b99 as f64 / f99 as f64
    );

    let rt_samples = samples / 2;
    println!("\n== 2. thread-pool round trip, {rt_samples} serial jobs");
    let ours = pool_round_trip(rt_samples);
    let tok = tokio_round_trip(rt_samples);
    let (om, o99) = (percentile(&ours, 0.5), percentile(&ours, 0.99));
    let (tm, t99) = (percentile(&tok, 0.5), percentile(&tok, 0.99));
    println!("event-loop pool        : median {} p99 {}", us(om), us(o99));

    println!("tokio spawn_blocking   : median {} p99 {}", us(tm), us(t99));
    println!(
        "ratio ours/tokio median {:.2}x (target < 1.0x), p99 {:.2}x",
        om as f64 / tm as f64,
        o99 as f64 / t99 as f64
    );

    println!("\n== 3. syscalls when scheduling a BH with no sleeper");
    let n = 100_000;
    let w = schedule_without_sleeper(n);
    println!("{n} schedule+dispatch: {w} eventfd writes (target 0)");
    let exe = std::env::current_exe().unwrap();
    match std::process::Command::new("strace")
        .args(["-f", "-c", "-e", "trace=write,read,epoll_wait,futex"])
        .arg(&exe)
        .arg("--schedule-only")
        .output()
    {
        Ok(out) if out.status.success() => {
            let text = String::from_utf8_lossy(&out.stderr);
            println!("strace -c -f of that loop (write/read/epoll_wait/futex):");
            for l in text.lines() {
                println!("  {l}");
            }
        }
        _ => println!("(strace not available; counter above only)"),
    }

    println!("\n== 4. idle context CPU over 1 s");
    let ctx = AioContext::new().unwrap();
    let io = IoThread::spawn("idle-io", ctx.clone()).unwrap();
    // Start a worker too so idle workers are part of the measurement.
    {
        let done = Arc::new(AtomicBool::new(false));
        let d = done.clone();
        let _g = ctx.acquire();
        ctx.thread_pool()
            .submit(|| (), move |()| d.store(true, Ordering::Release));
        ctx.poll_while(|| !done.load(Ordering::Acquire));
    }
    thread::sleep(Duration::from_millis(50));
    let c0 = cpu_ns();
    let t0 = Instant::now();
    thread::sleep(Duration::from_secs(1));
    let used = cpu_ns() - c0;
    println!(
        "process CPU while idle for {:.2} s: {} ({:.4}% of one core)",
        t0.elapsed().as_secs_f64(),
        us(used),
        used as f64 / t0.elapsed().as_nanos() as f64 * 100.0
    );
    io.stop();
}
