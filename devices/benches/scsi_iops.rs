//! virtio-scsi 4 KiB random-read IOPS at queue depth 32 against `fio` on the
//! same file with the matching engine.
//!
//! A mock guest driver (the `test-utils` harness) keeps 32 READ(10)s in flight
//! on one request queue, served by an iothread through the block layer; it
//! sleeps on the irqfd like a guest waiting for its interrupt. The image lives in
//! /dev/shm. For each engine the bench prints requests/s, fio's IOPS and the ratio
//! (target: at least 0.85).
//!
//! Run: `cargo bench -p devices --bench scsi_iops` (env `SCSI_BENCH_SECS`,
//! default 3; `SCSI_BENCH_ROUNDS`, default 3, alternating device and fio and
//! keeping the best of each; `SCSI_BENCH_ENGINES`, default `io_uring,threads`).

use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use block::{AioMode, BlockBackend, BlockOptions};
use devices::virtio::scsi::{ScsiDiskConfig, VirtioScsi, VirtioScsiConfig};
use devices::virtio::testing::{lun_bytes, Buf, MockDriver, REQUEST_SIZE, RESPONSE_SIZE};
use devices::virtio::MmioTransport;
use event_loop::{AioContext, IoThread};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

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

/// Waits for the irqfd (or 100 ms) like a guest waiting for its interrupt.
fn wait_irq(irq: &EventFd) {
    let mut pfd = libc::pollfd {
        fd: irq.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    unsafe { libc::poll(&mut pfd, 1, 100) };
    let _ = irq.read();
}

fn run_device(aio: AioMode, secs: u64) -> f64 {
    let ctx = AioContext::new().expect("context");
    let iothread = IoThread::spawn("bench-iothread", Arc::clone(&ctx)).expect("iothread");
    let options = BlockOptions {
        aio,
        ..BlockOptions::default()
    };
    let backend = Arc::new(BlockBackend::open(IMAGE, &options, Arc::clone(&ctx)).expect("open"));
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 64 << 20)]).expect("memory");
    let irqfd = EventFd::new(EFD_NONBLOCK).expect("irqfd");
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
    let driver_irq = irq.try_clone().expect("irq");
    let mut driver = MockDriver::new(mem, MmioTransport::new(Box::new(device)), irq);
    assert_eq!(driver.init(3, 256, true), 0xf);

    let slots: Vec<Slot> = (0..QUEUE_DEPTH)
        .map(|_| Slot {
            request: driver.alloc(u64::from(REQUEST_SIZE)),
            response: driver.alloc(u64::from(RESPONSE_SIZE)),
            data: driver.alloc(u64::from(BLOCK)),
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
    let end = Instant::now() + Duration::from_millis(300) + Duration::from_secs(secs);
    loop {
        let used = driver.take_used(QUEUE);
        if used.is_empty() {
            wait_irq(&driver_irq);
            waits += 1;
            continue;
        }
        rounds += 1;
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
        }
        done += used.len() as u64;
        if now >= end {
            break;
        }
    }
    let (t0, d0) = start.expect("warm-up finished");
    let rate = (done - d0) as f64 / t0.elapsed().as_secs_f64();
    eprintln!(
        "  (device run: {rate:.0} req/s; driver: {:.1} completions per round, {:.2} interrupt waits and {:.2} kicks per round)",
        done as f64 / rounds as f64,
        waits as f64 / rounds as f64,
        kicks as f64 / rounds as f64
    );
    assert_eq!(errors, 0, "failed requests during the bench");
    // Let the in-flight requests finish before tearing down.
    driver.wait_used(QUEUE, QUEUE_DEPTH, Duration::from_secs(5));
    drop(driver);
    iothread.stop();
    rate
}

fn run_fio(engine: &str, secs: u64) -> Option<f64> {
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
    // Terse v3: field 8 (1-based) is read IOPS.
    let text = String::from_utf8_lossy(&output.stdout);
    text.lines()
        .find(|l| l.starts_with("3;"))?
        .split(';')
        .nth(7)?
        .parse()
        .ok()
}

fn main() {
    let secs: u64 = std::env::var("SCSI_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let rounds: usize = std::env::var("SCSI_BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let engines = std::env::var("SCSI_BENCH_ENGINES").unwrap_or_else(|_| "io_uring,threads".into());
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
        for _ in 0..rounds {
            devices.push(run_device(aio, secs));
            if let Some(fio) = run_fio(fio_engine, secs) {
                fios.push(fio);
            }
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
        }
    }
    let _ = std::fs::remove_file(IMAGE);
}
