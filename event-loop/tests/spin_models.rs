//! Runs the Promela model `docs/spin/event_loop.pml` through spin in CI, so the
//! model cannot drift from the outcomes it claims:
//!
//! * the real algorithm: exhaustive safety search with no invalid end state
//!   (nobody left waiting for a BH that never runs), and the LTL property
//!   `all_work_done` (every scheduled BH is eventually dispatched) holds;
//! * `-DBUG_A` (notify skipped while dispatching), `-DBUG_B` (nested poll clears
//!   the notifier after its scan), `-DBUG_Q` (a lock holder that published
//!   quietly lets the lock go without the release check) and `-DBUG_QW` (only a
//!   pool worker that delivered completions skips it) each fail, with a
//!   counter-example trail.

use std::path::{Path, PathBuf};
use std::process::Command;

const MODEL: &str = "event_loop.pml";

fn model_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../docs/spin")
        .join(MODEL)
}

fn run(dir: &Path, prog: &str, args: &[&str]) -> String {
    let out = Command::new(prog)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| {
            if prog == "spin" {
                panic!("cannot run spin ({e}): apt-get install spin")
            }
            panic!("cannot run {prog}: {e}")
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // pan exits non-zero when it finds errors; callers judge by its report.
    if prog != "./pan_safety" && prog != "./pan_ltl" {
        assert!(out.status.success(), "{prog} {args:?} failed:\n{text}");
    }
    text
}

/// The "errors: N" count of a pan report.
fn errors(report: &str) -> u64 {
    let at = report
        .find("errors: ")
        .unwrap_or_else(|| panic!("no error count in pan's report:\n{report}"));
    report[at + 8..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|n| n.parse().ok())
        .expect("error count")
}

/// Which pan search to run.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Search {
    /// `./pan` built with -DSAFETY -DNOCLAIM: invalid end states.
    Safety,
    /// `./pan -a` with the LTL claim `all_work_done`.
    Ltl,
}

/// spin -a, gcc, then the search, in a temp dir. Returns pan's report and whether
/// a trail was written.
fn check(defines: &[&str], search: Search) -> (String, bool) {
    assert!(
        Command::new("spin").arg("-V").output().is_ok(),
        "spin is not installed: apt-get install spin"
    );
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::copy(model_path(), dir.path().join(MODEL)).expect("copy the model");
    let mut spin_args: Vec<&str> = defines.to_vec();
    spin_args.extend(["-a", MODEL]);
    run(dir.path(), "spin", &spin_args);
    // -O0: pan.c takes longer to optimise than the search gains from it here.
    let report = match search {
        Search::Safety => {
            run(
                dir.path(),
                "gcc",
                &["-O0", "-DSAFETY", "-DNOCLAIM", "-o", "pan_safety", "pan.c"],
            );
            run(dir.path(), "./pan_safety", &["-m100000"])
        }
        Search::Ltl => {
            run(dir.path(), "gcc", &["-O0", "-o", "pan_ltl", "pan.c"]);
            run(dir.path(), "./pan_ltl", &["-a", "-m100000"])
        }
    };
    let trail = dir.path().join(format!("{MODEL}.trail")).exists();
    if trail {
        // Show the counter-example's last steps (for whoever reads the log).
        let mut replay_args: Vec<&str> = defines.to_vec();
        replay_args.extend(["-t", "-p", MODEL]);
        let replay = run(dir.path(), "spin", &replay_args);
        let lines: Vec<&str> = replay.lines().collect();
        eprintln!(
            "{defines:?} {search:?} counter-example (last 30 steps):\n{}",
            lines[lines.len().saturating_sub(30)..].join("\n")
        );
    }
    (report, trail)
}

fn assert_passes(search: Search, must_mention: &[&str]) {
    let (report, trail) = check(&[], search);
    assert_eq!(
        errors(&report),
        0,
        "{search:?} search found errors:\n{report}"
    );
    assert!(
        !report.contains("max search depth too small"),
        "{search:?} search was truncated, not exhaustive:\n{report}"
    );
    for m in must_mention {
        assert!(
            report.contains(m),
            "{search:?}: report lacks {m:?}:\n{report}"
        );
    }
    assert!(!trail, "a trail was written for the real algorithm");
}

#[test]
fn the_real_algorithm_has_no_invalid_end_state() {
    assert_passes(Search::Safety, &["invalid end states\t+"]);
}

#[test]
fn the_real_algorithm_satisfies_all_work_done() {
    assert_passes(
        Search::Ltl,
        &["acceptance   cycles \t+", "never claim         \t+"],
    );
}

fn assert_fails(define: &str) {
    let (safety, trail_safety) = check(&[define], Search::Safety);
    assert!(
        errors(&safety) > 0 && safety.contains("invalid end state"),
        "{define}: safety search should find a stranded waiter:\n{safety}"
    );
    let (ltl, trail_ltl) = check(&[define], Search::Ltl);
    assert!(
        errors(&ltl) > 0 && ltl.contains("acceptance cycle"),
        "{define}: LTL search should find a run where work is never done:\n{ltl}"
    );
    assert!(
        trail_safety && trail_ltl,
        "{define}: no counter-example trail written"
    );
}

#[test]
fn failure_a_skip_notify_while_dispatching_fails_with_a_trail() {
    assert_fails("-DBUG_A");
}

#[test]
fn failure_b_nested_poll_clears_notifier_fails_with_a_trail() {
    assert_fails("-DBUG_B");
}

#[test]
fn failure_q_quiet_publish_without_release_check_fails_with_a_trail() {
    assert_fails("-DBUG_Q");
}

#[test]
fn failure_qw_delivering_worker_without_release_check_fails_with_a_trail() {
    assert_fails("-DBUG_QW");
}
