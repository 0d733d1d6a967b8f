//! The seed scenario without faults: synchronous nested-poll writes from a vCPU-like
//! thread while the iothread serves async requests on the same context must never
//! hang (watchdog with thread dump) and must leave every write in the file.

mod common;

use std::time::Duration;

use block::AioMode;
use common::seed::{run_seed, SeedConfig};
use common::DumpDepth;

fn config(aio: AioMode) -> SeedConfig {
    SeedConfig {
        aio,
        sync_writes: 2000,
        async_depth: 16,
        wait_every: 4,
        // Generous: under a saturated iothread the vCPU has been seen waiting over
        // 4 s for the context lock (the lock is not fair); a lost wake-up stalls
        // forever, so 15 s still tells the two apart.
        stall: Duration::from_secs(15),
        limit: Duration::from_secs(90),
        depth: DumpDepth::Backtraces,
        setup: |_| {},
    }
}

fn check(aio: AioMode) {
    check_with(aio, |_| {});
}

fn check_with(aio: AioMode, setup: fn(&std::sync::Arc<event_loop::AioContext>)) {
    let cfg = SeedConfig {
        setup,
        ..config(aio)
    };
    match run_seed(&cfg) {
        Ok(stats) => {
            assert_eq!(stats.sync_writes, 2000);
            assert!(stats.async_requests > 0);
            eprintln!("aio={aio:?}: {stats:?}");
        }
        Err(hang) => panic!("aio={aio:?} hung: {}", hang.report),
    }
}

#[test]
fn nested_poll_writes_with_busy_iothread_threads() {
    check(AioMode::Threads);
}

/// QEMU's shape, where every thread-pool completion goes through the
/// completion BH and the notifier (the positive controls' configuration).
#[test]
fn nested_poll_writes_with_busy_iothread_threads_completions_by_bh_only() {
    check_with(AioMode::Threads, |ctx| {
        ctx.thread_pool().set_workers_deliver(false)
    });
}

#[test]
fn nested_poll_writes_with_busy_iothread_io_uring() {
    check(AioMode::IoUring);
}
