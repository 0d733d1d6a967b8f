//! `cargo xtask`: the aarch64 bench and project tasks (see docs/bench.md).

use std::process::{Command, ExitCode};
use std::time::Duration;

use clap::{Parser, Subcommand};
use hangar_tests::bench::{self, Bench, BenchError};

/// Runs Hangar (an aarch64 KVM VMM) on this machine: directly on an aarch64
/// host with /dev/kvm, or inside a nested aarch64 machine (QEMU with EL2) on
/// x86_64. Installs what it needs (Debian packages, the Rust aarch64 target)
/// and caches guest software in ~/.cache/hangar (HANGAR_CACHE overrides).
#[derive(Debug, Parser)]
#[command(name = "cargo xtask", about, long_about)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// The main job: Hangar boots UEFI firmware (AAVMF) to the UEFI shell.
    ///
    /// On an aarch64 host with /dev/kvm: runs `hangar run` here. Elsewhere:
    /// inside the nested aarch64 machine — on a terminal you get the firmware's
    /// console (`reset -s` in the shell powers off, Ctrl-A x quits hangar);
    /// without one, the boot is scripted and timed.
    Boot {
        /// Hard timeout in seconds.
        #[arg(long, default_value_t = 600)]
        timeout: u64,
    },
    /// Install prerequisites, fetch guest software, cross-build, pack the
    /// initramfs; print how long each phase took.
    Setup,
    /// Boot the nested machine and run one scenario from tests/scenarios/.
    ///
    /// Example: cargo xtask scenario kvm-mmio
    Scenario {
        /// Scenario name (a file tests/scenarios/NAME.sh).
        name: String,
        /// Hard timeout in seconds.
        #[arg(long, default_value_t = 600)]
        timeout: u64,
        /// Echo the nested console while it runs.
        #[arg(long)]
        echo: bool,
    },
    /// Put this terminal on the nested machine's console (a shell with
    /// `hangar` on PATH). Ctrl-] x stops the emulator.
    Console {
        /// Scenario to run instead of the shell.
        #[arg(default_value = "console")]
        scenario: String,
    },
    /// Boot-time figure: Hangar (nested KVM) to the UEFI shell next to the host's
    /// QEMU (TCG) booting the same AAVMF, measured in one run.
    BootTimes,
    /// Run every test: prepare the bench, then `cargo test --workspace`
    /// (native tests, model checks and the nested end-to-end scenarios).
    Test,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.task) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("cargo xtask: {}", bench::error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

fn run(task: Task) -> Result<ExitCode, BenchError> {
    match task {
        Task::Setup => {
            let bench = Bench::prepare()?;
            for (phase, took) in &bench.timings {
                println!("{phase:<28} {:>7.1}s", took.as_secs_f64());
            }
            println!("initramfs: {}", bench.initramfs.display());
            Ok(ExitCode::SUCCESS)
        }
        Task::Boot { timeout } => boot(timeout),
        Task::Scenario {
            name,
            timeout,
            echo,
        } => scenario(&name, timeout, echo),
        Task::Console { scenario } => {
            let bench = Bench::prepare()?;
            let status = bench.interactive(&scenario)?;
            Ok(exit_code(status.success()))
        }
        Task::BootTimes => boot_times(),
        Task::Test => {
            Bench::prepare()?;
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let status = Command::new(cargo)
                .current_dir(bench::workspace_root())
                .args(["test", "--workspace", "--no-fail-fast"])
                .status()
                .map_err(|source| BenchError::Spawn {
                    command: "cargo test".into(),
                    source,
                })?;
            Ok(exit_code(status.success()))
        }
    }
}

fn boot_times() -> Result<ExitCode, BenchError> {
    let bench = Bench::prepare()?;
    let verdict = bench.run_scenario("uefi-shell", Duration::from_secs(480))?;
    if !verdict.passed() {
        eprintln!("{}", verdict.explain());
        return Ok(ExitCode::FAILURE);
    }
    let ms = |k: &str| -> f64 {
        verdict
            .value(k)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
            / 1000.0
    };
    let qemu = bench::reference::qemu_tcg_to_shell(Duration::from_secs(300))?;
    let (h_total, h_countdown) = (ms("to_shell_ms"), ms("countdown_ms"));
    let q_total = qemu.to_shell.as_secs_f64();
    let q_countdown = (qemu.to_shell - qemu.to_countdown).as_secs_f64();
    println!("AAVMF to the UEFI shell prompt (fresh variable store, 1 vCPU, 512 MiB):");
    println!(
        "  hangar, nested KVM:   {h_total:6.1}s = {:5.1}s firmware + {h_countdown:4.1}s firmware countdown",
        h_total - h_countdown
    );
    println!(
        "  host QEMU, TCG:       {q_total:6.1}s = {:5.1}s firmware + {q_countdown:4.1}s firmware countdown",
        q_total - q_countdown
    );
    println!(
        "  ratio hangar/QEMU (firmware part): {:.2}x",
        (h_total - h_countdown) / (q_total - q_countdown)
    );
    Ok(ExitCode::SUCCESS)
}

fn boot(timeout: u64) -> Result<ExitCode, BenchError> {
    use std::io::IsTerminal;
    if cfg!(target_arch = "aarch64") && std::path::Path::new("/dev/kvm").exists() {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(cargo)
            .current_dir(bench::workspace_root())
            .args([
                "run",
                "--release",
                "-p",
                "vmm",
                "--bin",
                "hangar",
                "--",
                "run",
            ])
            .status()
            .map_err(|source| BenchError::Spawn {
                command: "cargo run hangar".into(),
                source,
            })?;
        return Ok(exit_code(status.success()));
    }
    if std::io::stdin().is_terminal() && std::io::stdout().is_terminal() {
        let bench = Bench::prepare()?;
        let status = bench.interactive("boot-interactive")?;
        return Ok(exit_code(status.success()));
    }
    scenario("boot", timeout, true)
}

fn scenario(name: &str, timeout: u64, echo: bool) -> Result<ExitCode, BenchError> {
    if echo {
        std::env::set_var("HANGAR_BENCH_ECHO", "1");
    }
    let bench = Bench::prepare()?;
    let verdict = bench.run_scenario(name, Duration::from_secs(timeout))?;
    if let Some(t) = verdict.outer_boot {
        println!(
            "outer boot (emulator start to scenario): {:.1}s",
            t.as_secs_f64()
        );
    }
    for (k, v) in &verdict.values {
        println!("{k} = {v}");
    }
    if verdict.passed() {
        println!(
            "scenario `{name}` passed in {:.1}s (log: {})",
            verdict.total.as_secs_f64(),
            verdict.log.display()
        );
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("{}", verdict.explain());
        Ok(ExitCode::FAILURE)
    }
}

fn exit_code(success: bool) -> ExitCode {
    if success {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
