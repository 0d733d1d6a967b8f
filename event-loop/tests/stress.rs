//! Stress tests of the original hang scenario, with positive controls: each fault
//! knob re-creates a known failure and the same stress test must detect it. The
//! nested poller also runs some jobs inline (the block layer's synchronous path),
//! sometimes letting the lock go right after, which failure (q) breaks.

mod support;

use std::time::Duration;

use event_loop::Fault;
use support::{run_stress, Outcome, StressConfig};

fn config(fault: Option<Fault>, duration: Duration) -> StressConfig {
    StressConfig {
        fault,
        duration,
        quiet_limit: Duration::from_millis(1500),
        schedulers: 2,
        jobs_per_poll: 3,
        inline_jobs: true,
        busy_poll: false,
    }
}

/// Runs `cfg` (no fault) and fails on a hang or on too few waits to mean anything.
fn expect_no_hang(cfg: StressConfig, what: &str) {
    let secs = cfg.duration.as_secs_f64();
    match run_stress(&cfg) {
        Outcome::Completed { iterations } => {
            eprintln!("stress ({what}): {iterations} completed waits in {secs} s, no hang");
            assert!(
                iterations > 1000,
                "too few iterations ({iterations}) to mean anything"
            );
        }
        Outcome::Hang { report, .. } => panic!("lost wake-up ({what}):\n{report}"),
    }
}

#[test]
fn original_scenario_never_hangs() {
    expect_no_hang(config(None, Duration::from_secs(4)), "real protocol");
}

/// The same with the iothread busy-polling between its waits (a polled handler
/// registered): the spin's non-blocking polls and its full passes for stale
/// readiness lose no wake-up either.
#[test]
fn original_scenario_with_a_busy_polling_iothread_never_hangs() {
    let cfg = StressConfig {
        busy_poll: true,
        ..config(None, Duration::from_secs(4))
    };
    expect_no_hang(cfg, "busy-polling iothread");
}

/// The configuration that catches failure (q), on the real protocol.
#[test]
fn inline_jobs_without_other_traffic_never_hang() {
    let cfg = StressConfig {
        schedulers: 0,
        ..config(None, Duration::from_secs(3))
    };
    expect_no_hang(cfg, "inline jobs, no other traffic");
}

fn expect_hang(fault: Fault, evidence: &str) {
    expect_hang_in(config(Some(fault), Duration::from_secs(20)), evidence);
}

fn expect_hang_in(cfg: StressConfig, evidence: &str) {
    let fault = cfg.fault.expect("a positive control needs a fault");
    match run_stress(&cfg) {
        Outcome::Hang { after, report } => {
            eprintln!("{fault:?}: hang detected after {after} waits\n{report}");
            assert!(
                report.contains(evidence),
                "hang found but the trace lacks {evidence:?}:\n{report}"
            );
        }
        Outcome::Completed { iterations } => panic!(
            "positive control {fault:?} ran {iterations} waits without the watchdog firing: \
             the stress test cannot detect this failure"
        ),
    }
}

#[test]
fn positive_control_a_skip_notify_while_dispatching_hangs() {
    // Evidence: a notify skipped (arg -1) because someone was dispatching.
    expect_hang(Fault::SkipNotifyWhileDispatching, "NotifySkipped(-1)");
}

#[test]
fn positive_control_q_release_without_waking_for_quiet_work_hangs() {
    // Without scheduler threads: their BHs wake the iothread often enough to run
    // the stranded completion by chance, which hides the bug.
    let cfg = StressConfig {
        schedulers: 0,
        ..config(Some(Fault::QuietReleaseSkipsWake), Duration::from_secs(20))
    };
    // Evidence: a release that skipped its wake-up (arg -3).
    expect_hang_in(cfg, "NotifySkipped(-3)");
}

/// Failure (a) is still caught with the iothread busy-polling: the spin ends
/// and the thread sleeps once the window shrinks, so a lost wake-up still
/// strands the work (the spin does not hide the bug from this test).
#[test]
fn positive_control_a_with_a_busy_polling_iothread_hangs() {
    let cfg = StressConfig {
        busy_poll: true,
        ..config(
            Some(Fault::SkipNotifyWhileDispatching),
            Duration::from_secs(20),
        )
    };
    expect_hang_in(cfg, "NotifySkipped(-1)");
}

#[test]
fn positive_control_b_nested_poll_clearing_the_notifier_hangs() {
    expect_hang(Fault::NestedPollClearsNotifier, "NotifierCleared");
}
