//! The aarch64 bench: from a bare x86_64 Debian machine to a scenario's verdict.
//!
//! `Bench::prepare` does the slow, cached parts once (prerequisites, guest
//! kernel and busybox, the static aarch64 `hangar`, the initramfs);
//! `Bench::run_scenario` boots the nested machine and judges one scenario.

mod cmd;
mod cpio;
pub mod disk_images;
pub mod error;
pub mod guest_kit;
pub mod initramfs;
pub mod lock;
pub mod markers;
pub mod prereq;
pub mod qemu;
pub mod reference;
pub mod xbuild;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use error::BenchError;
pub use markers::{Outcome, Verdict};

/// Where the bench keeps what survives a fresh clone: downloaded packages keyed
/// by version. `HANGAR_CACHE` overrides; default `~/.cache/hangar`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("HANGAR_CACHE") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    Path::new(&home).join(".cache/hangar")
}

/// The workspace root (this crate lives in `<root>/tests`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests crate sits inside the workspace")
        .to_path_buf()
}

/// Where one run's initramfs and logs go (`target/bench`).
pub fn work_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
        .join("bench")
}

/// A prepared bench: everything needed to boot scenarios.
#[derive(Debug, Clone)]
pub struct Bench {
    pub kit: guest_kit::GuestKit,
    pub hangar: PathBuf,
    pub initramfs: PathBuf,
    pub timings: Vec<(String, Duration)>,
}

/// Says what the bench is doing, on stderr, so long steps are never silent.
pub fn progress(msg: impl AsRef<str>) {
    eprintln!("hangar-bench: {}", msg.as_ref());
}

impl Bench {
    /// Installs prerequisites, fetches guest software, cross-builds `hangar` and
    /// packs the initramfs. Idempotent and cached; serialised across processes.
    pub fn prepare() -> Result<Bench, BenchError> {
        let _lock = lock::BenchLock::acquire("prepare")?;
        let mut timings = Vec::new();
        let t = Instant::now();
        prereq::ensure()?;
        timings.push(("prerequisites".to_string(), t.elapsed()));

        let t = Instant::now();
        let kit = guest_kit::GuestKit::fetch(&cache_dir())?;
        timings.push(("guest kernel and busybox".to_string(), t.elapsed()));

        let t = Instant::now();
        let hangar = xbuild::build_hangar()?;
        timings.push(("cross-build hangar".to_string(), t.elapsed()));

        let t = Instant::now();
        let initramfs = initramfs::build(&kit, &hangar, &work_dir())?;
        timings.push(("initramfs".to_string(), t.elapsed()));

        Ok(Bench {
            kit,
            hangar,
            initramfs,
            timings,
        })
    }

    /// Boots the nested machine, runs `scenario` inside and judges it.
    pub fn run_scenario(&self, scenario: &str, timeout: Duration) -> Result<Verdict, BenchError> {
        let _lock = lock::BenchLock::acquire("boot")?;
        let log = work_dir().join("logs").join(format!("{scenario}.log"));
        qemu::run_scenario(self, scenario, timeout, &log)
    }

    /// Boots the nested machine with the console on this terminal.
    pub fn interactive(&self, scenario: &str) -> Result<std::process::ExitStatus, BenchError> {
        let _lock = lock::BenchLock::acquire("boot")?;
        qemu::interactive(self, scenario)
    }
}

/// The bench prepared once per test process; a failure to prepare fails every
/// end-to-end test with the reason (never a skip).
pub fn shared() -> &'static Bench {
    static BENCH: std::sync::OnceLock<Result<Bench, String>> = std::sync::OnceLock::new();
    match BENCH.get_or_init(|| Bench::prepare().map_err(|e| error_chain(&e))) {
        Ok(bench) => bench,
        Err(e) => panic!("the aarch64 bench could not be prepared: {e}"),
    }
}

/// Runs a scenario on the shared bench and panics with the explanation (failing
/// step and log tail) unless it passed.
pub fn expect_pass(scenario: &str, timeout: Duration) -> Verdict {
    let verdict = shared()
        .run_scenario(scenario, timeout)
        .unwrap_or_else(|e| panic!("bench error in scenario `{scenario}`: {}", error_chain(&e)));
    assert!(verdict.passed(), "{}", verdict.explain());
    verdict
}

/// An error and its causes on one line.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}
