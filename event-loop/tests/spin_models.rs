//! Runs the Promela model `docs/spin/event_loop.pml` through spin in CI, so the
//! model cannot drift from the outcomes it claims:
//!
//! * the real algorithm: exhaustive safety search with no invalid end state
//!   (nobody left waiting for a BH that never runs), and the LTL property
//!   `all_work_done` (every scheduled BH is eventually dispatched) holds;
//! * `-DBUG_A` (notify skipped while dispatching) and `-DBUG_B` (nested poll clears
//!   the notifier after its scan) both fail, with a counter-example trail.

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

struct Verdict {
    safety: String,
    ltl: String,
    trail: bool,
}

/// spin -a, gcc, ./pan (safety: invalid end states) and ./pan -a (LTL), in a temp dir.
fn check(defines: &[&str]) -> Verdict {
    assert!(
        Path::new("/usr/bin/spin").exists() || Command::new("spin").arg("-V").output().is_ok(),
        "spin is not installed: apt-get install spin"
    );
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::copy(model_path(), dir.path().join(MODEL)).expect("copy the model");
    let mut spin_args: Vec<&str> = defines.to_vec();
    spin_args.extend(["-a", MODEL]);
    run(dir.path(), "spin", &spin_args);
    run(
        dir.path(),
        "gcc",
        &["-O0", "-DSAFETY", "-DNOCLAIM", "-o", "pan_safety", "pan.c"],
    );
    let safety = run(dir.path(), "./pan_safety", &["-m100000"]);
    let trail_path = dir.path().join(format!("{MODEL}.trail"));
    let mut trail = trail_path.exists();
    let _ = std::fs::remove_file(&trail_path);
    run(dir.path(), "gcc", &["-O0", "-o", "pan_ltl", "pan.c"]);
    let ltl = run(dir.path(), "./pan_ltl", &["-a", "-m100000"]);
    trail |= trail_path.exists();
    if trail {
        // Show the counter-example's last steps (for whoever reads the log).
        let mut replay_args: Vec<&str> = defines.to_vec();
        replay_args.extend(["-t", "-p", MODEL]);
        let replay = run(dir.path(), "spin", &replay_args);
        let lines: Vec<&str> = replay.lines().collect();
        eprintln!(
            "{defines:?} counter-example (last 30 steps):\n{}",
            lines[lines.len().saturating_sub(30)..].join("\n")
        );
    }
    Verdict { safety, ltl, trail }
}

#[test]
fn the_real_algorithm_passes_exhaustive_search() {
    let v = check(&[]);
    for (what, report) in [("safety", &v.safety), ("ltl all_work_done", &v.ltl)] {
        assert_eq!(errors(report), 0, "{what} search found errors:\n{report}");
        assert!(
            !report.contains("max search depth too small"),
            "{what} search was truncated, not exhaustive:\n{report}"
        );
    }
    assert!(v.safety.contains("invalid end states\t+"), "{}", v.safety);
    assert!(v.ltl.contains("acceptance   cycles \t+"), "{}", v.ltl);
    assert!(v.ltl.contains("never claim         \t+"), "{}", v.ltl);
    assert!(!v.trail, "a trail was written for the real algorithm");
}

fn assert_fails(define: &str) {
    let v = check(&[define]);
    assert!(
        errors(&v.safety) > 0 && v.safety.contains("invalid end state"),
        "{define}: safety search should find a stranded waiter:\n{}",
        v.safety
    );
    assert!(
        errors(&v.ltl) > 0 && v.ltl.contains("acceptance cycle"),
        "{define}: LTL search should find a run where work is never done:\n{}",
        v.ltl
    );
    assert!(v.trail, "{define}: no counter-example trail written");
}

#[test]
fn failure_a_skip_notify_while_dispatching_fails_with_a_trail() {
    assert_fails("-DBUG_A");
}

#[test]
fn failure_b_nested_poll_clears_notifier_fails_with_a_trail() {
    assert_fails("-DBUG_B");
}
