//! Booting the nested aarch64 machine under qemu-system-aarch64 and watching its
//! console: the log goes to a file as it arrives, markers become a verdict, and a
//! hard timeout kills the emulator rather than letting a hang stall CI.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::markers::{self, Marker, Outcome, Verdict};
use super::{progress, Bench, BenchError};

/// Memory of the nested machine: the initramfs (two 64 MiB firmware images,
/// a kernel) plus an inner guest of up to 1 GiB.
fn memory() -> String {
    std::env::var("HANGAR_BENCH_MEMORY").unwrap_or_else(|_| "2G".to_string())
}

/// The nested machine's interrupt controller version: 3 unless the scenario's
/// script asks for 2 with a `# bench-machine: gic-version=2` line (a GICv2
/// with the virtualization extensions, whose KVM has no GICv3 emulation, so
/// Hangar takes its GICv2 path). `HANGAR_BENCH_GIC=2` or `=3` overrides it,
/// to run any scenario on either.
fn gic_version(scenario: &str) -> u8 {
    gic_version_with(scenario, std::env::var("HANGAR_BENCH_GIC").ok().as_deref())
}

/// [`gic_version`] with the override given (the environment's, for it).
fn gic_version_with(scenario: &str, override_: Option<&str>) -> u8 {
    match override_ {
        Some("2") => return 2,
        Some("3") => return 3,
        _ => {}
    }
    let script = super::workspace_root().join(format!("tests/scenarios/{scenario}.sh"));
    let asks_v2 = std::fs::read_to_string(script).is_ok_and(|text| {
        text.lines()
            .any(|l| l.trim() == "# bench-machine: gic-version=2")
    });
    if asks_v2 {
        2
    } else {
        3
    }
}

fn machine(scenario: &str) -> String {
    format!(
        "virt,virtualization=on,gic-version={}",
        gic_version(scenario)
    )
}

fn base_command(bench: &Bench, scenario: &str) -> Command {
    let mut qemu = Command::new("qemu-system-aarch64");
    qemu.args([
        "-M",
        &machine(scenario),
        // pauth-impdef: the default QARMA5 pointer authentication is slow to emulate.
        "-cpu",
        "max,pauth-impdef=on",
        "-smp",
        "2",
        "-m",
        &memory(),
        "-display",
        "none",
        "-no-reboot",
        // No network: the default NIC wants an option ROM we do not install.
        "-nic",
        "none",
    ]);
    qemu.arg("-kernel").arg(&bench.kit.kernel);
    qemu.arg("-initrd").arg(&bench.initramfs);
    qemu.arg("-append").arg(format!(
        "console=ttyAMA0 quiet panic=-1 hangar.scenario={scenario}"
    ));
    qemu
}

/// Boots, runs `scenario`, and returns the verdict (a failed scenario is a
/// verdict, not an error; errors are for a bench that could not run at all).
pub fn run_scenario(
    bench: &Bench,
    scenario: &str,
    timeout: Duration,
    log_path: &Path,
) -> Result<Verdict, BenchError> {
    if let Some(dir) = log_path.parent() {
        std::fs::create_dir_all(dir).map_err(BenchError::io(dir))?;
    }
    let mut log = BufWriter::new(File::create(log_path).map_err(BenchError::io(log_path))?);
    let echo = std::env::var_os("HANGAR_BENCH_ECHO").is_some();

    let mut qemu = base_command(bench, scenario);
    qemu.args(["-serial", "stdio", "-monitor", "none"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    progress(format!(
        "booting scenario `{scenario}` (timeout {}s, log {})",
        timeout.as_secs(),
        log_path.display()
    ));
    super::prereq::require_program("qemu-system-aarch64", "qemu-system-arm")?;
    let started = Instant::now();
    let mut child = qemu.spawn().map_err(|source| BenchError::Spawn {
        command: "qemu-system-aarch64".into(),
        source,
    })?;
    let lines = spawn_line_reader(&mut child);

    let mut step = "outer boot".to_string();
    let mut outcome = None;
    let mut values = Vec::new();
    let mut outer_boot = None;
    let mut tail: Vec<String> = Vec::new();
    let deadline = started + timeout;
    // After a verdict the machine powers off by itself; give it a moment.
    let mut grace_deadline = None;

    loop {
        let wait_until = grace_deadline.unwrap_or(deadline);
        let now = Instant::now();
        if now >= wait_until {
            break;
        }
        match lines.recv_timeout(wait_until - now) {
            Ok(line) => {
                let _ = writeln!(log, "{line}");
                if echo {
                    eprintln!("  | {line}");
                }
                tail.push(line.clone());
                if tail.len() > 40 {
                    tail.remove(0);
                }
                match markers::parse(&line) {
                    Some(Marker::Scenario(_)) => outer_boot = Some(started.elapsed()),
                    Some(Marker::Step(s)) => step = s,
                    Some(Marker::Value(k, v)) => values.push((k, v)),
                    Some(Marker::Fail(s, reason)) if outcome.is_none() => {
                        outcome = Some(Outcome::Fail { step: s, reason });
                        grace_deadline = Some(Instant::now() + Duration::from_secs(10));
                    }
                    Some(Marker::Pass(_)) if outcome.is_none() => {
                        outcome = Some(Outcome::Pass);
                        grace_deadline = Some(Instant::now() + Duration::from_secs(10));
                    }
                    _ => {}
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => break,
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let total = started.elapsed();
    let timed_out = outcome.is_none() && Instant::now() >= deadline;
    let _ = child.kill();
    let status = child.wait().ok();
    let stderr = read_stderr(&mut child);
    if !stderr.trim().is_empty() {
        let _ = writeln!(log, "--- qemu stderr ---\n{stderr}");
        tail.push(format!("[qemu stderr] {}", stderr.trim()));
    }
    let _ = log.flush();

    let outcome = match outcome {
        Some(o) => o,
        None if timed_out => Outcome::Timeout { step },
        None => {
            let _ = status;
            Outcome::NoVerdict { step }
        }
    };
    Ok(Verdict {
        scenario: scenario.to_string(),
        outcome,
        values,
        log: log_path.to_path_buf(),
        log_tail: tail.join("\n"),
        outer_boot,
        total,
    })
}

/// Boots with the nested console on this terminal. `Ctrl-] x` kills the
/// emulator (QEMU's escape is moved off Ctrl-A, which Hangar's console uses).
pub fn interactive(bench: &Bench, scenario: &str) -> Result<ExitStatus, BenchError> {
    let mut qemu = base_command(bench, scenario);
    qemu.args([
        "-chardev",
        "stdio,id=con,mux=on,signal=off",
        "-serial",
        "chardev:con",
        "-mon",
        "chardev=con,mode=readline",
        "-echr",
        "29",
    ]);
    super::prereq::require_program("qemu-system-aarch64", "qemu-system-arm")?;
    progress("nested console: Ctrl-] x stops the emulator, Ctrl-] h lists its keys");
    qemu.status().map_err(|source| BenchError::Spawn {
        command: "qemu-system-aarch64".into(),
        source,
    })
}

/// Reads the console byte stream into lines on a thread (the emulator's output
/// is not line-buffered and uses CRLF).
fn spawn_line_reader(child: &mut Child) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    let mut stdout = child.stdout.take().expect("piped stdout");
    std::thread::Builder::new()
        .name("bench-console".into())
        .spawn(move || {
            let mut buf = [0u8; 4096];
            let mut line = Vec::new();
            loop {
                match stdout.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        for &b in &buf[..n] {
                            if b == b'\n' {
                                let text = String::from_utf8_lossy(&line)
                                    .trim_end_matches('\r')
                                    .to_string();
                                if tx.send(text).is_err() {
                                    return;
                                }
                                line.clear();
                            } else {
                                line.push(b);
                            }
                        }
                    }
                }
            }
            if !line.is_empty() {
                let _ = tx.send(String::from_utf8_lossy(&line).to_string());
            }
        })
        .expect("spawn console reader");
    rx
}

fn read_stderr(child: &mut Child) -> String {
    let mut s = String::new();
    if let Some(mut err) = child.stderr.take() {
        let _ = err.read_to_string(&mut s);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::gic_version_with;

    #[test]
    fn a_scenario_gets_a_gicv2_only_by_its_directive_or_the_override() {
        assert_eq!(gic_version_with("uefi-shell-gicv2", None), 2);
        assert_eq!(gic_version_with("uefi-shell", None), 3);
        assert_eq!(gic_version_with("no-such-scenario", None), 3);
        assert_eq!(gic_version_with("uefi-shell", Some("2")), 2);
        assert_eq!(gic_version_with("uefi-shell-gicv2", Some("3")), 3);
    }
}
