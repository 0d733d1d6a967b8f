//! virtio-scsi 4 KiB random-read IOPS at queue depth 32 against `fio` on the
//! same file with the matching engine.
//!
//! A mock guest driver (the `test-utils` harness) keeps 32 READ(10)s in flight
//! on one request queue, served by an iothread through the block layer; it
//! sleeps on the irqfd like a guest waiting for its interrupt. The image lives in
//! /dev/shm. For each engine the bench prints requests/s, fio's IOPS and the ratio
//! (target: at least 0.85).
//!
//! Requests/s swing a lot on a shared 2-core box; CPU time per request swings
//! less, so every run also prints it: for the device, the iothread's and the
//! mock driver's CPU per request and the whole process's (which adds the io-wq
//! workers doing the reads); for fio, its job thread's (usr+sys from its report)
//! and the whole fio process's (getrusage of children, io-wq included, ramp and
//! setup spread over the measured I/Os, so a slight overestimate). CPU per
//! request still moves with the load (under contention batches shrink and cost
//! more per request). Each device run also prints the mean number of requests
//! at the disk (time-weighted, from the controller's `ScsiStats`; the driver
//! keeps 32 outstanding, the rest sit in its used/avail rings or with the
//! driver) and the chains found per avail-ring pass. With
//! `SCSI_BENCH_ALLOCS=1` the device runs also count heap allocations per
//! request (whole process): exact, unlike timings, but the shared counter
//! slows the run, so leave it off when timing.
//!
//! Run: `cargo bench -p devices --bench scsi_iops` (env `SCSI_BENCH_SECS`,
//! default 3; `SCSI_BENCH_ROUNDS`, default 5, alternating device and fio and
//! keeping the best of each; `SCSI_BENCH_ENGINES`, default `io_uring,threads`;
//! `SCSI_BENCH_POLL_MAX_US` caps the iothread's busy poll, 0 turns it off).
//! Next to the best-of ratio the bench prints the median of the rounds' own
//! ratios (each device run against the fio run right after it), which a single
//! disturbed run moves less.

use std::alloc::{GlobalAlloc, Layout, System};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use block::{AioMode, BlockBackend, BlockOptions};
use devices::virtio::scsi::{ScsiDiskConfig, ScsiStats, VirtioScsi, VirtioScsiConfig};
use devices::virtio::testing::{lun_bytes, Buf, MockDriver, REQUEST_SIZE, RESPONSE_SIZE};
use devices::virtio::MmioTransport;
use event_loop::{AioContext, IoThread};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

/// The system allocator, counting allocations while `COUNT_ALLOCS` is set.
struct CountingAlloc;

static COUNT_ALLOCS: AtomicBool = AtomicBool::new(false);
static ALLOCS: AtomicU64 = AtomicU64::new(0);

fn count_alloc() {
    if COUNT_ALLOCS.load(Ordering::Relaxed) {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: every call is forwarded unchanged to the system allocator.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count_alloc();
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count_alloc();
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count_alloc();
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

const IMAGE: &str = "/dev/shm/hangar-scsi-bench.img";
const IMAGE_SIZE: u64 = 256 << 20;
const QUEUE_DEPTH: usize = 32;
const BLOCK: u32 = 4096;
const QUEUE: usize = 2;

struct Slot {
    request: GuestAddress,
    response: GuestAddress,
    data: GuestAddress,
}

fn make_image() {
    use std::io::Write;
    let mut file = std::fs::File::create(IMAGE).expect("create image in /dev/shm");
    let mut rng = SmallRng::seed_from_u64(1);
    let mut chunk = vec![0u8; 1 << 20];
    for _ in 0..IMAGE_SIZE >> 20 {
        rng.fill(&mut chunk[..]);
        file.write_all(&chunk).expect("write image");
    }
    file.sync_all().expect("sync image");
}

fn write_request(driver: &MockDriver, slot: &Slot, tag: u64, lba: u32) {
    let mut header = [0u8; REQUEST_SIZE as usize];
    header[0..8].copy_from_slice(&lun_bytes(0, 0));
    header[8..16].copy_from_slice(&tag.to_le_bytes());
    let cdb = &mut header[19..29];
    cdb[0] = 0x28;
    cdb[2..6].copy_from_slice(&lba.to_be_bytes());
    cdb[7..9].copy_from_slice(&((BLOCK / 512) as u16).to_be_bytes());
    driver
        .mem
        .write_slice(&header, slot.request)
        .expect("request");
}

fn chain(slot: &Slot) -> [Buf; 3] {
    [
        Buf {
            addr: slot.request,
            len: REQUEST_SIZE,
            writable: false,
        },
        Buf {
            addr: slot.response,
            len: RESPONSE_SIZE,
            writable: true,
        },
        Buf {
            addr: slot.data,
            len: BLOCK,
            writable: true,
        },
    ]
}

/// Sleeps until the device signals the irqfd, like a guest waiting for its
/// interrupt: one blocking read (the bench's irqfd is a blocking eventfd; the
/// device only writes it, which never blocks). The caller has checked
/// [`MockDriver::used_pending`] after publishing `used_event`, so no interrupt
/// can be missed.
fn wait_irq(irq: &EventFd) {
    let _ = irq.read();
}

/// The thread ids of this process.
fn task_ids() -> Vec<u32> {
    std::fs::read_dir("/proc/self/task")
        .map(|dir| {
            dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// CPU time of thread `tid` of this process, in ns (schedstat: time on a CPU).
fn thread_cpu_ns(tid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat")).ok()?;
    text.split_whitespace().next()?.parse().ok()
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to fill.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// CPU time of every child that was waited for (usr+sys), in ns.
fn children_cpu_ns() -> u64 {
    // SAFETY: all-zero is a valid rusage.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid rusage to fill.
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as u64 * 1_000_000_000 + t.tv_usec as u64 * 1000;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// CPU time per request, in µs: iothread, driver, whole process.
#[derive(Clone, Copy, Default)]
struct DeviceCpu {
    iothread: f64,
    driver: f64,
    process: f64,
    /// Mean requests of the queue at the disk seen by each new request.
    depth: f64,
}

/// CPU time per I/O, in µs: fio's job thread, whole fio process.
#[derive(Clone, Copy, Default)]
struct FioCpu {
    job: f64,
    total: f64,
}

fn run_device(aio: AioMode, secs: u64) -> (f64, DeviceCpu) {
    let ctx = AioContext::new().expect("context");
    if let Some(us) = std::env::var("SCSI_BENCH_POLL_MAX_US")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        ctx.set_poll_max(Duration::from_micros(us));
    }
    let before: Vec<u32> = task_ids();
    let iothread = IoThread::spawn("bench-iothread", Arc::clone(&ctx)).expect("iothread");
    let options = BlockOptions {
        aio,
        ..BlockOptions::default()
    };
    let backend = Arc::new(BlockBackend::open(IMAGE, &options, Arc::clone(&ctx)).expect("open"));
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 64 << 20)]).expect("memory");
    // Blocking, unlike a VMM's: the driver thread sleeps in `read` on it.
    let irqfd = EventFd::new(0).expect("irqfd");
    let irq = irqfd.try_clone().expect("irqfd");
    let device = VirtioScsi::new(
        VirtioScsiConfig {
            queue_size: 256,
            ..Default::default()
        },
        vec![ScsiDiskConfig {
            target: 0,
            lun: 0,
            serial: "bench".into(),
            backend,
        }],
        Arc::clone(&ctx),
        mem.clone(),
        irqfd,
    )
    .expect("device");
    let stats = device.stats_reader();
    let driver_irq = irq.try_clone().expect("irq");
    let mut driver = MockDriver::new(mem, MmioTransport::new(Box::new(device)), irq);
    assert_eq!(driver.init(3, 256, true), 0xf);

    // Data buffers first, back to back from the page-aligned start of the
    // driver's area, so each is page-aligned, as a guest's block I/O pages are
    // (and fio's buffers). Between the headers they landed at other offsets in
    // their page, and the kernel's 4 KiB copy into a destination a little past
    // a page boundary runs slower (its loads alias its own recent stores).
    let data: Vec<GuestAddress> = (0..QUEUE_DEPTH)
        .map(|_| driver.alloc(u64::from(BLOCK)))
        .collect();
    assert!(data.iter().all(|a| a.0 % u64::from(BLOCK) == 0));
    let slots: Vec<Slot> = data
        .into_iter()
        .map(|data| Slot {
            request: driver.alloc(u64::from(REQUEST_SIZE)),
            response: driver.alloc(u64::from(RESPONSE_SIZE)),
            data,
        })
        .collect();
    let blocks = (IMAGE_SIZE / u64::from(BLOCK)) as u32;
    let mut rng = SmallRng::seed_from_u64(7);
    let mut head_slot = vec![usize::MAX; 256];

    // The power-on unit attention.
    write_request(&driver, &slots[0], 0, 0);
    let h = driver.add_chain(QUEUE, &chain(&slots[0])).expect("chain");
    driver.kick(QUEUE);
    let _ = h;
    driver.wait_used(QUEUE, 1, Duration::from_secs(5));

    let mut tag = 1u64;
    let mut submit = |driver: &mut MockDriver, slot_index: usize, head_slot: &mut Vec<usize>| {
        let lba = rng.random_range(0..blocks) * (BLOCK / 512);
        write_request(driver, &slots[slot_index], tag, lba);
        tag += 1;
        let head = driver
            .add_chain(QUEUE, &chain(&slots[slot_index]))
            .expect("descriptors");
        head_slot[usize::from(head)] = slot_index;
    };
    for i in 0..QUEUE_DEPTH {
        submit(&mut driver, i, &mut head_slot);
    }
    driver.kick(QUEUE);

    let mut done = 0u64;
    let mut errors = 0u64;
    let mut waits = 0u64;
    let mut rounds = 0u64;
    let mut kicks = 0u64;
    let warmup = Instant::now() + Duration::from_millis(300);
    let mut start = None;
    // CPU times (iothread, driver, process) at the start of the measured window.
    let cpu_now = |iothread_tid: Option<u32>| {
        (
            iothread_tid.and_then(thread_cpu_ns).unwrap_or(0),
            clock_ns(libc::CLOCK_THREAD_CPUTIME_ID),
            clock_ns(libc::CLOCK_PROCESS_CPUTIME_ID),
        )
    };
    let mut cpu_start = (0, 0, 0);
    let mut allocs_start = 0;
    let mut stats_start = ScsiStats::default();
    // The iothread names itself once running: looked up when the window starts.
    let mut iothread_tid = None;
    let end = Instant::now() + Duration::from_millis(300) + Duration::from_secs(secs);
    let mut used = Vec::with_capacity(QUEUE_DEPTH);
    // The driver blocks on the irqfd without a timeout: should the device ever
    // lose an interrupt, fail loudly instead of hanging.
    let progress = Arc::new(AtomicU64::new(0));
    let finished = Arc::new(AtomicBool::new(false));
    {
        let (progress, finished) = (Arc::clone(&progress), Arc::clone(&finished));
        // Detached: it notices `finished` within 10 s and ends.
        std::thread::spawn(move || {
            let mut last = u64::MAX;
            while !finished.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_secs(10));
                let now = progress.load(Ordering::Relaxed);
                if now == last && !finished.load(Ordering::Relaxed) {
                    eprintln!(
                        "scsi_iops: no completion for 10 s ({now} rounds done): the mock \
                         driver is waiting for an interrupt the device never sent"
                    );
                    std::process::exit(2);
                }
                last = now;
            }
        });
    }
    loop {
        driver.take_used_into(QUEUE, &mut used);
        if used.is_empty() {
            if driver.used_pending(QUEUE) {
                continue;
            }
            wait_irq(&driver_irq);
            waits += 1;
            continue;
        }
        rounds += 1;
        progress.store(rounds, Ordering::Relaxed);
        for &(head, len) in &used {
            if len != RESPONSE_SIZE + BLOCK {
                errors += 1;
            }
            let slot = head_slot[usize::from(head)];
            submit(&mut driver, slot, &mut head_slot);
        }
        if driver.kick_if_needed(QUEUE) {
            kicks += 1;
        }
        let now = Instant::now();
        if start.is_none() && now >= warmup {
            start = Some((now, done));
            iothread_tid = task_ids().into_iter().find(|tid| {
                !before.contains(tid)
                    && std::fs::read_to_string(format!("/proc/self/task/{tid}/comm"))
                        .is_ok_and(|c| c.trim() == "bench-iothread")
            });
            cpu_start = cpu_now(iothread_tid);
            allocs_start = ALLOCS.load(Ordering::Relaxed);
            stats_start = stats.read().unwrap_or_default();
        }
        done += used.len() as u64;
        if now >= end {
            break;
        }
    }
    finished.store(true, Ordering::Relaxed);
    let cpu_end = cpu_now(iothread_tid);
    let stats_end = stats.read().unwrap_or_default();
    let allocs = ALLOCS.load(Ordering::Relaxed) - allocs_start;
    if iothread_tid.is_none() {
        eprintln!("  (iothread not found in /proc/self/task: its CPU reads as 0)");
    }
    let (t0, d0) = start.expect("warm-up finished");
    let rate = (done - d0) as f64 / t0.elapsed().as_secs_f64();
    let per_req = |a: u64, b: u64| (b.saturating_sub(a)) as f64 / 1000.0 / (done - d0) as f64;
    let cpu = DeviceCpu {
        iothread: per_req(cpu_start.0, cpu_end.0),
        driver: per_req(cpu_start.1, cpu_end.1),
        process: per_req(cpu_start.2, cpu_end.2),
        depth: (stats_end.depth_area - stats_start.depth_area) as f64
            / (stats_end.depth_ns - stats_start.depth_ns).max(1) as f64,
    };
    let depth_at_submit = (stats_end.depth_sum - stats_start.depth_sum) as f64
        / (stats_end.submitted - stats_start.submitted).max(1) as f64;
    let chains_per_batch = (stats_end.chains - stats_start.chains) as f64
        / (stats_end.batches - stats_start.batches).max(1) as f64;
    eprintln!(
        "  (device run: {rate:.0} req/s; mean in-flight depth {:.1} (seen by a new request {depth_at_submit:.1}), {chains_per_batch:.1} requests per avail-ring pass; CPU/req: iothread {:.2} us, driver {:.2} us, process {:.2} us (rest, mostly io-wq: {:.2} us); driver: {:.1} completions per round, {:.2} interrupt waits and {:.2} kicks per round)",
        cpu.depth,
        cpu.iothread,
        cpu.driver,
        cpu.process,
        cpu.process - cpu.iothread - cpu.driver,
        done as f64 / rounds as f64,
        waits as f64 / rounds as f64,
        kicks as f64 / rounds as f64
    );
    if COUNT_ALLOCS.load(Ordering::Relaxed) {
        eprintln!(
            "  (heap allocations per request, whole process: {:.2})",
            allocs as f64 / (done - d0) as f64
        );
    }
    assert_eq!(errors, 0, "failed requests during the bench");
    // Let the in-flight requests finish before tearing down.
    driver.wait_used(QUEUE, QUEUE_DEPTH, Duration::from_secs(5));
    drop(driver);
    iothread.stop();
    (rate, cpu)
}

fn run_fio(engine: &str, secs: u64) -> Option<(f64, FioCpu)> {
    let children_before = children_cpu_ns();
    let output = Command::new("/usr/bin/fio")
        .args([
            "--name=scsi-bench",
            &format!("--filename={IMAGE}"),
            "--rw=randread",
            "--bs=4k",
            &format!("--iodepth={QUEUE_DEPTH}"),
            &format!("--ioengine={engine}"),
            "--direct=0",
            "--time_based",
            "--ramp_time=0.3",
            &format!("--runtime={secs}"),
            &format!("--size={IMAGE_SIZE}"),
            "--output-format=terse",
            "--terse-version=3",
        ])
        .output()
        .ok()?;
    if !output.status.success() {
        eprintln!("fio failed: {}", String::from_utf8_lossy(&output.stderr));
        return None;
    }
    let children = children_cpu_ns() - children_before;
    // Terse v3 (1-based): field 8 is read IOPS, 9 the read runtime in ms, 88 and
    // 89 the job's usr and sys CPU in percent of its runtime.
    let text = String::from_utf8_lossy(&output.stdout);
    let fields: Vec<&str> = text
        .lines()
        .find(|l| l.starts_with("3;"))?
        .split(';')
        .collect();
    let field = |n: usize| -> Option<f64> { fields.get(n - 1)?.trim_end_matches('%').parse().ok() };
    let iops = field(8)?;
    let runtime_s = field(9)? / 1000.0;
    let ios = iops * runtime_s;
    let job_cpu_s = (field(88)? + field(89)?) / 100.0 * runtime_s;
    let cpu = FioCpu {
        job: job_cpu_s * 1e6 / ios,
        total: children as f64 / 1000.0 / ios,
    };
    eprintln!(
        "  (fio run: {iops:.0} IOPS; CPU/io: job thread {:.2} us, whole fio {:.2} us (with io-wq, ramp and setup))",
        cpu.job, cpu.total
    );
    Some((iops, cpu))
}

fn main() {
    let secs: u64 = std::env::var("SCSI_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let rounds: usize = std::env::var("SCSI_BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let engines = std::env::var("SCSI_BENCH_ENGINES").unwrap_or_else(|_| "io_uring,threads".into());
    COUNT_ALLOCS.store(
        std::env::var("SCSI_BENCH_ALLOCS").is_ok_and(|v| v == "1"),
        Ordering::Relaxed,
    );
    make_image();
    println!("virtio-scsi 4 KiB random read, QD{QUEUE_DEPTH}, one request queue on an iothread, image {IMAGE}");
    for engine in engines.split(',') {
        let (aio, fio_engine) = match engine {
            "io_uring" => (AioMode::IoUring, "io_uring"),
            // glibc POSIX AIO serves requests from a thread pool, as aio=threads does.
            "threads" => (AioMode::Threads, "posixaio"),
            other => {
                eprintln!("unknown engine {other}");
                continue;
            }
        };
        // Alternate the two sides and keep the best of each: the machine is
        // shared, and a transient burst of other work should not pick the winner.
        let mut devices = Vec::new();
        let mut fios = Vec::new();
        // Each round's device/fio ratio (only rounds where fio ran).
        let mut paired = Vec::new();
        let mut device_cpus = Vec::new();
        let mut fio_cpus = Vec::new();
        for _ in 0..rounds {
            let (rate, cpu) = run_device(aio, secs);
            devices.push(rate);
            device_cpus.push(cpu);
            if let Some((fio, cpu)) = run_fio(fio_engine, secs) {
                paired.push(rate / fio);
                fios.push(fio);
                fio_cpus.push(cpu);
            }
        }
        // Medians: CPU per request is steady, a median ignores the odd disturbed run.
        let median = |mut v: Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v.get(v.len() / 2).copied().unwrap_or(0.0)
        };
        let dev_median = |f: fn(&DeviceCpu) -> f64| median(device_cpus.iter().map(f).collect());
        println!(
            "aio={engine:<8} CPU/req (median of {rounds}): iothread {:.2} us, driver {:.2} us, device process {:.2} us; mean in-flight depth {:.1}",
            dev_median(|c| c.iothread),
            dev_median(|c| c.driver),
            dev_median(|c| c.process),
            dev_median(|c| c.depth)
        );
        if !fio_cpus.is_empty() {
            println!(
                "aio={engine:<8} CPU/io  (median of {}): fio job thread {:.2} us, whole fio {:.2} us",
                fio_cpus.len(),
                median(fio_cpus.iter().map(|c| c.job).collect()),
                median(fio_cpus.iter().map(|c| c.total).collect())
            );
        }
        let best = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
        let device = best(&devices);
        let samples = |v: &[f64]| {
            v.iter()
                .map(|x| format!("{x:.0}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        if fios.is_empty() {
            println!("aio={engine:<8} device {device:>10.0} req/s   fio unavailable");
        } else {
            let fio = best(&fios);
            println!(
                "aio={engine:<8} device {device:>10.0} req/s   fio({fio_engine}) {fio:>10.0} IOPS   ratio {:.2}x   (best of {rounds}; device [{}], fio [{}])",
                device / fio,
                samples(&devices),
                samples(&fios)
            );
            let ratios = paired
                .iter()
                .map(|r| format!("{r:.2}"))
                .collect::<Vec<_>>()
                .join(" ");
            println!(
                "aio={engine:<8} paired ratio (each device run / the fio run after it): median {:.2}x   [{ratios}]",
                median(paired.clone())
            );
        }
    }
    let _ = std::fs::remove_file(IMAGE);
}
