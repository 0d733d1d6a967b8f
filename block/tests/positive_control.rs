//! Positive control: with the event loop's lost-wake-up knob switched on, the seed
//! scenario must hang and the watchdog must say so (with its dump). If this test
//! passes while `nested_poll` passes too, the watchdog and the scenario are able to
//! see the bug that `nested_poll` shows absent.
//!
//! Its own test binary: the hung threads are left behind when the test returns.
//!
//! Only aio=threads: its completions come back through the pool's completion BH and
//! the context notifier, which is where these knobs break the protocol. io_uring
//! completions arrive through the engine's own eventfd (an fd handler, level
//! triggered), which the notifier knobs do not touch.

mod common;

use std::time::{Duration, Instant};

use block::AioMode;
use common::seed::{run_seed, SeedConfig};
use common::DumpDepth;
use event_loop::Fault;

fn detects(aio: AioMode, setup: fn(&std::sync::Arc<event_loop::AioContext>)) {
    let start = Instant::now();
    let mut runs = 0;
    while start.elapsed() < Duration::from_secs(25) {
        runs += 1;
        let cfg = SeedConfig {
            aio,
            sync_writes: 20_000,
            async_depth: 16,
            wait_every: 4,
            stall: Duration::from_secs(1),
            limit: Duration::from_secs(20),
            depth: DumpDepth::Backtraces,
            setup,
        };
        match run_seed(&cfg) {
            Err(hang) => {
                eprintln!("aio={aio:?}: hang detected in run {runs}: {}", hang.stalled);
                eprintln!(
                    "{}",
                    hang.report.lines().take(40).collect::<Vec<_>>().join("\n")
                );
                assert!(hang.report.contains("--- threads ---"));
                assert!(
                    hang.report.contains("seed-iothread"),
                    "dump names the iothread"
                );
                return;
            }
            Ok(stats) => eprintln!("aio={aio:?}: run {runs} finished without a hang: {stats:?}"),
        }
    }
    panic!("aio={aio:?}: the lost wake-up was not detected in {runs} runs");
}

// Workers deliver nothing themselves here: a worker that finds the lock free
// runs every pending BH, the ones whose wake-up the knob lost included, and so
// would rescue the iothread (see `ThreadPool::set_workers_deliver`).

#[test]
fn watchdog_detects_skipped_notify_while_dispatching() {
    detects(AioMode::Threads, |ctx| {
        ctx.set_fault(Fault::SkipNotifyWhileDispatching, true);
        ctx.thread_pool().set_workers_deliver(false);
    });
}

#[test]
fn watchdog_detects_nested_poll_eating_the_notifier() {
    detects(AioMode::Threads, |ctx| {
        ctx.set_fault(Fault::NestedPollClearsNotifier, true);
        ctx.thread_pool().set_workers_deliver(false);
    });
}
