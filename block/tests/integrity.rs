//! Data integrity under many concurrent requests: random reads, writes (some FUA),
//! discards, write-zeroes and flushes, up to 32 in flight, driven from completion
//! callbacks on an iothread, checked against an in-memory model of the image — for
//! both engines and both cache modes (cache=none on a real disk under /var/tmp).
//!
//! In-flight requests never overlap (a per-sector busy map), so the model is exact:
//! a read must return the model's bytes, and after the run the file must equal it.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use block::{
    AioMode, BlockBackend, BlockOptions, CacheMode, DiscardMode, IoVec, WriteMode, ZeroMode,
};
use common::{aligned_start, image_in, seg, watch, DumpDepth};
use event_loop::{AioContext, IoThread};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const IMAGE: u64 = 8 << 20;
const DEPTH: usize = 32;
/// Requests per run (the long tmpfs run issues more).
const REQUESTS: u64 = 3000;

struct State {
    rng: SmallRng,
    model: Vec<u8>,
    busy: Vec<bool>,
    issued: u64,
    in_flight: usize,
    failures: Vec<String>,
}

struct Driver {
    backend: BlockBackend,
    unit: u64,
    state: Mutex<State>,
    completed: AtomicU64,
    requests: u64,
}

enum Kind {
    Read,
    Write(WriteMode),
    Discard,
    Zeroes(ZeroMode),
    Flush,
}

impl Driver {
    /// Issues requests until DEPTH are in flight or `requests` were issued.
    fn pump(self: &Arc<Self>) {
        loop {
            let mut st = self.state.lock().unwrap();
            if st.in_flight >= DEPTH || st.issued >= self.requests {
                return;
            }
            let kind = match st.rng.random_range(0..100) {
                0..40 => Kind::Read,
                40..70 => Kind::Write(WriteMode::Normal),
                70..80 => Kind::Write(WriteMode::Fua),
                80..88 => Kind::Discard,
                88..94 => Kind::Zeroes(ZeroMode::Allocate),
                94..98 => Kind::Zeroes(ZeroMode::MayUnmap),
                _ => Kind::Flush,
            };
            let units = IMAGE / self.unit;
            let n = st.rng.random_range(1..=32u64.min(units));
            let first = st.rng.random_range(0..=units - n);
            let (s, e) = (first as usize, (first + n) as usize);
            if !matches!(kind, Kind::Flush) && st.busy[s..e].iter().any(|&b| b) {
                if st.in_flight == 0 {
                    continue;
                }
                return; // try again when something completes
            }
            if !matches!(kind, Kind::Flush) {
                st.busy[s..e].iter_mut().for_each(|b| *b = true);
            }
            st.issued += 1;
            st.in_flight += 1;
            let offset = first * self.unit;
            let len = (n * self.unit) as usize;
            // Buffer layout: aligned or deliberately misaligned, 1-4 segments.
            let misalign = st.rng.random_bool(0.3);
            let mut buf = vec![0u8; len + 8192];
            let mut start = aligned_start(&buf, 4096);
            if misalign {
                start += st.rng.random_range(1..64);
            }
            let splits = st.rng.random_range(0..4);
            let mut cuts: Vec<usize> = (0..splits)
                .map(|_| {
                    let c = st.rng.random_range(0..len);
                    if misalign {
                        c
                    } else {
                        c / 512 * 512
                    }
                })
                .collect();
            cuts.push(0);
            cuts.push(len);
            cuts.sort_unstable();
            cuts.dedup();
            if let Kind::Write(_) = kind {
                st.rng.fill(&mut buf[start..start + len]);
            }
            drop(st);
            let iov: Vec<IoVec> = cuts
                .windows(2)
                .map(|w| seg(&mut buf, start + w[0], w[1] - w[0]))
                .collect();
            let me = Arc::clone(self);
            let range = (s, e);
            match kind {
                Kind::Read => self.backend.aio_readv(offset, iov, move |r| {
                    let data = buf[start..start + len].to_vec();
                    me.finish("read", range, offset, r.map(|_| Some(data)), None)
                }),
                Kind::Write(mode) => self.backend.aio_writev(offset, iov, mode, move |r| {
                    let data = buf[start..start + len].to_vec();
                    me.finish("write", range, offset, r.map(|_| None), Some(data))
                }),
                Kind::Discard => self.backend.aio_discard(offset, len as u64, move |r| {
                    me.finish(
                        "discard",
                        range,
                        offset,
                        r.map(|_| None),
                        Some(vec![0; len]),
                    )
                }),
                Kind::Zeroes(mode) => {
                    self.backend
                        .aio_write_zeroes(offset, len as u64, mode, move |r| {
                            me.finish("zeroes", range, offset, r.map(|_| None), Some(vec![0; len]))
                        })
                }
                Kind::Flush => self
                    .backend
                    .aio_flush(move |r| me.finish("flush", (0, 0), 0, r.map(|_| None), None)),
            }
        }
    }

    /// Checks a read against the model, or applies a completed modification to it.
    fn finish(
        self: &Arc<Self>,
        what: &str,
        (s, e): (usize, usize),
        offset: u64,
        result: Result<Option<Vec<u8>>, block::BlockError>,
        new_contents: Option<Vec<u8>>,
    ) {
        {
            let mut st = self.state.lock().unwrap();
            let o = offset as usize;
            match result {
                Err(err) => st.failures.push(format!("{what} at {offset}: {err}")),
                Ok(Some(read)) => {
                    if read[..] != st.model[o..o + read.len()] {
                        st.failures
                            .push(format!("read at {offset} returned stale data"));
                    }
                }
                Ok(None) => {
                    if let Some(data) = new_contents {
                        st.model[o..o + data.len()].copy_from_slice(&data);
                    }
                }
            }
            st.busy[s..e].iter_mut().for_each(|b| *b = false);
            st.in_flight -= 1;
        }
        self.completed.fetch_add(1, Ordering::Relaxed);
        self.pump();
    }
}

fn run(dir: &str, aio: AioMode, cache: CacheMode) {
    run_n(dir, aio, cache, REQUESTS);
}

fn run_n(dir: &str, aio: AioMode, cache: CacheMode, requests: u64) {
    let img = image_in(dir, IMAGE);
    let ctx = AioContext::new().unwrap();
    let options = BlockOptions {
        aio,
        cache,
        discard: DiscardMode::Unmap,
        ..Default::default()
    };
    let backend = BlockBackend::open(img.path(), &options, ctx.clone()).unwrap();
    assert!(
        backend.supports_discard(),
        "discards must punch holes for this model"
    );
    let unit = backend.request_alignment().max(512);
    let driver = Arc::new(Driver {
        backend,
        unit,
        state: Mutex::new(State {
            rng: SmallRng::seed_from_u64(0x5eed ^ aio as u64 ^ ((cache as u64) << 8)),
            model: vec![0; IMAGE as usize],
            busy: vec![false; (IMAGE / unit) as usize],
            issued: 0,
            in_flight: 0,
            failures: Vec::new(),
        }),
        completed: AtomicU64::new(0),
        requests,
    });
    let iothread = IoThread::spawn("integrity-io", ctx.clone()).unwrap();
    {
        let _g = ctx.acquire();
        driver.pump();
    }
    let result = watch(
        &ctx,
        &[("completed requests", &driver.completed)],
        || driver.completed.load(Ordering::Relaxed) >= requests,
        Duration::from_secs(10),
        Duration::from_secs(60),
        DumpDepth::Backtraces,
    );
    if let Err(hang) = result {
        panic!("{dir} aio={aio:?} cache={cache:?} hung: {}", hang.report);
    }
    iothread.stop();
    let st = driver.state.lock().unwrap();
    assert!(st.failures.is_empty(), "failures: {:#?}", st.failures);
    assert_eq!(st.in_flight, 0);
    let file = std::fs::read(img.path()).unwrap();
    assert_eq!(file.len(), st.model.len());
    let first_diff = file.iter().zip(&st.model).position(|(a, b)| a != b);
    assert_eq!(first_diff, None, "file differs from the model");
}

#[test]
fn threads_writeback_on_disk() {
    run("/var/tmp", AioMode::Threads, CacheMode::Writeback);
}

#[test]
fn io_uring_writeback_on_disk() {
    run("/var/tmp", AioMode::IoUring, CacheMode::Writeback);
}

#[test]
fn threads_cache_none_on_disk() {
    run("/var/tmp", AioMode::Threads, CacheMode::None);
}

#[test]
fn io_uring_cache_none_on_disk() {
    run("/var/tmp", AioMode::IoUring, CacheMode::None);
}

#[test]
fn io_uring_writeback_on_tmpfs() {
    run("/dev/shm", AioMode::IoUring, CacheMode::Writeback);
}

/// aio=threads on tmpfs: reads, writes and flushes (at most 16 KiB here) run
/// inline on the iothread while discards and write-zeroes go to workers, mixed
/// in one run.
#[test]
fn threads_writeback_on_tmpfs() {
    run("/dev/shm", AioMode::Threads, CacheMode::Writeback);
}

/// The same, long enough for the copier that shares a deep tmpfs queue with the
/// iothread (docs/block.md) to start, run through many dispatches and stop
/// many times, racing the share BH for the same queue.
#[test]
fn threads_writeback_on_tmpfs_long() {
    run_n("/dev/shm", AioMode::Threads, CacheMode::Writeback, 40_000);
}
