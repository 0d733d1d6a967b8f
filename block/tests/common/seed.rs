//! The seed scenario: the shape of the original hang.
//!
//! An iothread runs the context and serves a stream of async 4 KiB reads and writes
//! (a virtio-scsi disk). A "vCPU" thread does synchronous writes through nested
//! polls on the same context, shaped like firmware updating a flash variable store:
//! many small writes and, every so often, a 256 KiB erase-sized one. Every few writes
//! the vCPU waits — without polling, as a guest spinning in KVM_RUN would — for the
//! disk stream to make progress. A lost wake-up of the iothread therefore stalls
//! both, exactly as in the field, and the watchdog reports it.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use block::{AioMode, BlockBackend, BlockOptions, WriteMode};
use event_loop::{AioContext, IoThread};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::{image_in, seg, watch, DumpDepth, Hang};

const DISK_REGION: u64 = 16 << 20;
const VARSTORE: u64 = 4 << 20;
const ERASE: usize = 256 << 10;

/// Knobs of one run.
pub struct SeedConfig {
    pub aio: AioMode,
    pub sync_writes: u64,
    pub async_depth: usize,
    /// The vCPU waits for disk progress after this many writes.
    pub wait_every: u64,
    /// Watchdog: a counter stuck this long is a hang.
    pub stall: Duration,
    pub limit: Duration,
    pub depth: DumpDepth,
    /// Called with the context before the run (the positive control turns a fault on).
    pub setup: fn(&Arc<AioContext>),
}

/// Counters of a finished run.
#[derive(Debug)]
pub struct SeedStats {
    pub sync_writes: u64,
    pub async_requests: u64,
    /// The slowest synchronous write, whole (lock wait included).
    pub slowest_sync_write: Duration,
    /// The longest wait for the context lock before a synchronous write.
    pub longest_lock_wait: Duration,
}

struct Pump {
    backend: Arc<BlockBackend>,
    rng: Mutex<SmallRng>,
    stop: AtomicBool,
    in_flight: AtomicUsize,
    done: AtomicU64,
    errors: Mutex<Vec<String>>,
}

impl Pump {
    /// Issues one async request; its completion issues the next (on the context).
    fn issue(self: &Arc<Self>) {
        if self.stop.load(Ordering::Acquire) {
            return;
        }
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        let (offset, write) = {
            let mut rng = self.rng.lock().unwrap();
            (
                rng.random_range(0..DISK_REGION / 4096) * 4096,
                rng.random_bool(0.5),
            )
        };
        let mut buf = vec![0x3cu8; 4096];
        let iov = vec![seg(&mut buf, 0, 4096)];
        let me = Arc::clone(self);
        let done = move |r: block::IoResult| {
            drop(buf);
            if let Err(e) = r {
                me.errors.lock().unwrap().push(e.to_string());
            }
            me.done.fetch_add(1, Ordering::Relaxed);
            me.in_flight.fetch_sub(1, Ordering::AcqRel);
            me.issue();
        };
        if write {
            self.backend
                .aio_writev(offset, iov, WriteMode::Normal, done);
        } else {
            self.backend.aio_readv(offset, iov, done);
        }
    }
}

/// Runs the scenario. `Err` carries the watchdog's report; then the threads are
/// left behind (they are stuck) and the caller's process should not reuse them.
pub fn run_seed(cfg: &SeedConfig) -> Result<SeedStats, Hang> {
    let img = image_in("/var/tmp", DISK_REGION + VARSTORE);
    let ctx = AioContext::new().unwrap();
    (cfg.setup)(&ctx);
    let options = BlockOptions {
        aio: cfg.aio,
        ..Default::default()
    };
    let backend = Arc::new(BlockBackend::open(img.path(), &options, ctx.clone()).unwrap());
    let iothread = IoThread::spawn("seed-iothread", ctx.clone()).unwrap();
    let pump = Arc::new(Pump {
        backend: Arc::clone(&backend),
        rng: Mutex::new(SmallRng::seed_from_u64(7)),
        stop: AtomicBool::new(false),
        in_flight: AtomicUsize::new(0),
        done: AtomicU64::new(0),
        errors: Mutex::default(),
    });
    {
        let _g = ctx.acquire();
        for _ in 0..cfg.async_depth {
            pump.issue();
        }
    }

    let sync_done = Arc::new(AtomicU64::new(0));
    let slowest_ns = Arc::new(AtomicU64::new(0));
    let lock_wait_ns = Arc::new(AtomicU64::new(0));
    let abort = Arc::new(AtomicBool::new(false));
    let model = Arc::new(Mutex::new(vec![0u8; VARSTORE as usize]));
    let vcpu = {
        let slowest_ns = Arc::clone(&slowest_ns);
        let lock_wait_ns = Arc::clone(&lock_wait_ns);
        let ctx = ctx.clone();
        let (backend, pump, sync_done, abort, model) = (
            Arc::clone(&backend),
            Arc::clone(&pump),
            Arc::clone(&sync_done),
            Arc::clone(&abort),
            Arc::clone(&model),
        );
        let (n, wait_every) = (cfg.sync_writes, cfg.wait_every);
        thread::Builder::new()
            .name("seed-vcpu".into())
            .spawn(move || -> Result<(), String> {
                let mut rng = SmallRng::seed_from_u64(11);
                for i in 0..n {
                    let (offset, data) = if i % 50 == 49 {
                        let block = rng.random_range(0..VARSTORE / ERASE as u64);
                        (block * ERASE as u64, vec![0xffu8; ERASE])
                    } else {
                        let len = rng.random_range(1..=64usize);
                        let off = rng.random_range(0..VARSTORE - len as u64);
                        let mut d = vec![0u8; len];
                        rng.fill(&mut d[..]);
                        (off, d)
                    };
                    let started = std::time::Instant::now();
                    // Take the lock first (as a vCPU in a device handler would) to
                    // tell the wait for it apart from the write itself.
                    let guard = ctx.acquire();
                    lock_wait_ns.fetch_max(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
                    let n = backend
                        .pwrite(DISK_REGION + offset, &data)
                        .map_err(|e| format!("sync write {i}: {e}"))?;
                    drop(guard);
                    slowest_ns.fetch_max(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
                    assert_eq!(n, data.len());
                    let o = offset as usize;
                    model.lock().unwrap()[o..o + data.len()].copy_from_slice(&data);
                    sync_done.fetch_add(1, Ordering::Relaxed);
                    if i % wait_every == wait_every - 1 {
                        // The guest now waits for its disk: no polling here.
                        let seen = pump.done.load(Ordering::Relaxed);
                        while pump.done.load(Ordering::Relaxed) == seen {
                            if abort.load(Ordering::Relaxed) {
                                return Err("aborted".into());
                            }
                            thread::sleep(Duration::from_micros(50));
                        }
                    }
                }
                Ok(())
            })
            .unwrap()
    };

    let watched = watch(
        &ctx,
        &[("sync writes", &sync_done), ("async requests", &pump.done)],
        || vcpu.is_finished(),
        cfg.stall,
        cfg.limit,
        cfg.depth,
    );
    if let Err(hang) = watched {
        abort.store(true, Ordering::Relaxed);
        // Stuck threads cannot be joined; leave them (and the context) behind.
        std::mem::forget(iothread);
        std::mem::forget(backend);
        std::mem::forget(img);
        return Err(hang);
    }
    vcpu.join().unwrap().expect("vCPU writes succeed");
    pump.stop.store(true, Ordering::Release);
    let drained = watch(
        &ctx,
        &[("async requests", &pump.done)],
        || pump.in_flight.load(Ordering::Acquire) == 0,
        cfg.stall,
        cfg.limit,
        cfg.depth,
    );
    if let Err(hang) = drained {
        std::mem::forget(iothread);
        std::mem::forget(backend);
        std::mem::forget(img);
        return Err(hang);
    }
    iothread.stop();
    let errors = pump.errors.lock().unwrap();
    assert!(errors.is_empty(), "async errors: {errors:?}");
    let file = std::fs::read(img.path()).unwrap();
    let store = &file[DISK_REGION as usize..];
    assert!(
        store == &model.lock().unwrap()[..],
        "a synchronous write reported done is missing from the file"
    );
    Ok(SeedStats {
        sync_writes: sync_done.load(Ordering::Relaxed),
        async_requests: pump.done.load(Ordering::Relaxed),
        slowest_sync_write: Duration::from_nanos(slowest_ns.load(Ordering::Relaxed)),
        longest_lock_wait: Duration::from_nanos(lock_wait_ns.load(Ordering::Relaxed)),
    })
}
