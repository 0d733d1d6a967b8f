//! Shared helpers for the block integration tests: images, segments, and the
//! watchdog that turns a hang into a failure with a thread dump and the context trace.
#![allow(dead_code)]

pub mod seed;

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use block::IoVec;
use event_loop::AioContext;

/// A zero-filled image of `len` bytes in `dir` (/var/tmp is a real disk here; /dev/shm
/// is tmpfs, which has no O_DIRECT).
pub fn image_in(dir: &str, len: u64) -> tempfile::NamedTempFile {
    let tmp = tempfile::Builder::new()
        .prefix("hangar-block-")
        .suffix(".img")
        .tempfile_in(dir)
        .expect("creating a test image");
    tmp.as_file().set_len(len).expect("sizing the test image");
    tmp
}

/// A segment over `buf[range]`.
///
/// The caller keeps `buf` alive and untouched until the request using the segment
/// completed (tests move the buffer into the completion callback).
pub fn seg(buf: &mut [u8], start: usize, len: usize) -> IoVec {
    assert!(start + len <= buf.len());
    // SAFETY: in bounds (asserted); the tests keep `buf` alive until completion.
    unsafe { IoVec::new(buf[start..].as_mut_ptr(), len) }
}

/// The first offset in `buf` that is aligned to `align`.
pub fn aligned_start(buf: &[u8], align: usize) -> usize {
    (align - buf.as_ptr() as usize % align) % align
}

/// A progress counter the watchdog watches.
pub type Progress = AtomicU64;

/// Why a watched run failed.
#[derive(Debug)]
pub struct Hang {
    /// Which counter stopped moving.
    pub stalled: String,
    /// Thread dump and context trace at detection time.
    pub report: String,
}

/// How to dump threads when a hang is found.
///
/// No gdb: attaching it to a process with io_uring worker threads (`iou-wrk-*`,
/// which ptrace cannot stop) left both stuck when tried.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum DumpDepth {
    /// /proc summary per thread: name, state, kernel wait channel, syscall.
    Proc,
    /// The /proc summary plus each thread's kernel stack (where it sleeps).
    Backtraces,
}

/// Waits until `finished()`; fails if any counter does not move for `stall`, or the
/// whole run exceeds `limit`. On failure, returns the thread dump and `ctx`'s trace.
pub fn watch(
    ctx: &AioContext,
    counters: &[(&str, &Progress)],
    finished: impl Fn() -> bool,
    stall: Duration,
    limit: Duration,
    depth: DumpDepth,
) -> Result<(), Hang> {
    let start = Instant::now();
    let mut last: Vec<(u64, Instant)> = counters
        .iter()
        .map(|(_, c)| (c.load(Ordering::Relaxed), Instant::now()))
        .collect();
    loop {
        if finished() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
        let now = Instant::now();
        let mut stalled = None;
        for (i, (name, c)) in counters.iter().enumerate() {
            let v = c.load(Ordering::Relaxed);
            if v != last[i].0 {
                last[i] = (v, now);
            } else if now - last[i].1 > stall && !finished() {
                stalled = Some(format!("{name} stuck at {v} for {stall:?}"));
            }
        }
        if stalled.is_none() && now - start > limit && !finished() {
            stalled = Some(format!("run exceeded {limit:?}"));
        }
        if let Some(stalled) = stalled {
            let report = format!(
                "{stalled}\n--- threads ---\n{}\n--- context trace (oldest first) ---\n{}",
                thread_dump(depth),
                ctx.trace_dump()
            );
            return Err(Hang { stalled, report });
        }
    }
}

/// What each thread of this process is doing.
pub fn thread_dump(depth: DumpDepth) -> String {
    let mut out = String::new();
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for task in tasks.flatten() {
            let p = task.path();
            let read = |f: &str| {
                std::fs::read_to_string(p.join(f))
                    .unwrap_or_default()
                    .trim()
                    .to_string()
            };
            let stat = read("stat");
            let state = stat
                .rsplit_once(") ")
                .map(|(_, rest)| rest.chars().next().unwrap_or('?'))
                .unwrap_or('?');
            let _ = writeln!(
                out,
                "tid {:>7} {:<20} state {} wchan {:<24} syscall {}",
                task.file_name().to_string_lossy(),
                read("comm"),
                state,
                read("wchan"),
                read("syscall")
            );
        }
    }
    if depth == DumpDepth::Backtraces {
        if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
            for task in tasks.flatten() {
                let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
                let stack = std::fs::read_to_string(task.path().join("stack"))
                    .unwrap_or_else(|e| format!("(kernel stack unreadable: {e})\n"));
                let _ = writeln!(
                    out,
                    "--- tid {} {} kernel stack:\n{}",
                    task.file_name().to_string_lossy(),
                    comm.trim(),
                    stack.trim_end()
                );
            }
        }
    }
    out
}

/// Aborts the whole test process with a thread dump if dropped later than `limit`
/// after creation: for tests whose body could block forever (sync helpers, drops
/// that drain). Hold it for the length of the test: `let _wd = deadline(..);`.
pub struct Deadline {
    done: Option<std::sync::mpsc::Sender<()>>,
}

/// Starts a [`Deadline`] for the current test.
pub fn deadline(limit: Duration) -> Deadline {
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let test = std::thread::current()
        .name()
        .unwrap_or("unnamed test")
        .to_string();
    std::thread::Builder::new()
        .name("test-deadline".into())
        .spawn(move || {
            if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(limit) {
                eprintln!(
                    "WATCHDOG: {test} still running after {limit:?}; threads:\n{}",
                    thread_dump(DumpDepth::Backtraces)
                );
                std::process::abort();
            }
        })
        .expect("spawning the deadline thread");
    Deadline { done: Some(tx) }
}

impl Drop for Deadline {
    fn drop(&mut self) {
        if let Some(tx) = self.done.take() {
            let _ = tx.send(());
        }
    }
}
