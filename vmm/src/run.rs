//! `hangar run`: from command-line arguments to a running machine.

use block::DiskSpec;
use devices::console::ConsoleSpec;
use firmware::DescriptorSearch;

use std::time::Duration;

use crate::cli::{BootloopArgs, RunArgs};
use crate::config::{parse_size, BootSource, ConfigError, RunConfig};
use crate::direct_kernel::{DirectKernel, DEFAULT_CMDLINE};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("--serial")]
    Serial(#[source] devices::console::ConsoleError),
    #[error("--disk {spec:?}")]
    Disk {
        spec: String,
        #[source]
        source: block::BlockError,
    },
    #[error("bootloop: {0}")]
    BootLoop(&'static str),
    #[error("hangar runs aarch64 guests with KVM and needs an aarch64 host (this is {0}); on x86_64 use the bench: `cargo xtask console`")]
    WrongHost(&'static str),
    #[cfg(target_arch = "aarch64")]
    #[error(transparent)]
    Machine(#[from] crate::machine::MachineError),
}

/// Parses and checks everything given on the command line.
pub fn config_from_args(args: &RunArgs) -> Result<RunConfig, RunError> {
    let memory = parse_size(&args.memory)?;
    let serial: ConsoleSpec = args.serial.parse().map_err(RunError::Serial)?;
    let disks = args
        .disk
        .iter()
        .map(|spec| {
            spec.parse::<DiskSpec>().map_err(|source| RunError::Disk {
                spec: spec.clone(),
                source,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let cfg = RunConfig {
        name: args.name.clone(),
        cpus: args.cpus,
        memory,
        firmware: args.firmware.clone(),
        vars: args.vars.clone(),
        serial,
        disks,
        iothread_poll_max_us: args.iothread_poll_max_us,
        kernel: args.kernel.as_ref().map(|kernel| DirectKernel {
            kernel: kernel.clone(),
            initrd: args.initrd.clone(),
            cmdline: args
                .cmdline
                .clone()
                .unwrap_or_else(|| DEFAULT_CMDLINE.to_string()),
        }),
    };
    cfg.check_shape(&args.memory)?;
    Ok(cfg)
}

/// Runs the VM to its end; returns the process exit status.
pub fn run(args: &RunArgs) -> Result<u8, RunError> {
    let cfg = config_from_args(args)?;
    let boot = cfg.resolve_boot(&DescriptorSearch::system())?;
    if let BootSource::Firmware(fw) = &boot {
        if fw.vars.created {
            eprintln!("hangar: created variable store {}", fw.vars.path.display());
        }
    }
    start(cfg, boot, None)
}

/// The boot-loop reproducer; exit status 0 (all boots reset), 2 (hang).
pub fn bootloop(args: &BootloopArgs) -> Result<u8, RunError> {
    if args.boots == 0 || args.boot_timeout == 0 {
        return Err(RunError::BootLoop(
            "--boots and --boot-timeout must be at least 1",
        ));
    }
    let cfg = config_from_args(&args.run)?;
    let boot = cfg.resolve_boot(&DescriptorSearch::system())?;
    start(
        cfg,
        boot,
        Some((args.boots, Duration::from_secs(args.boot_timeout))),
    )
}

#[cfg(target_arch = "aarch64")]
fn start(
    cfg: RunConfig,
    boot: BootSource,
    boot_loop: Option<(u32, Duration)>,
) -> Result<u8, RunError> {
    use crate::machine::{BootLoop, Exit, Machine};
    let mut machine = Machine::new(cfg, boot)?;
    if let Some((boots, boot_timeout)) = boot_loop {
        machine.set_boot_loop(BootLoop {
            boots,
            boot_timeout,
        });
    }
    let exit = machine.run()?;
    log::info!("machine ended: {exit:?} after {} boot(s)", machine.boots);
    match exit {
        Exit::PowerOff if boot_loop.is_some() => Err(RunError::BootLoop(
            "the guest powered off instead of resetting; a boot-loop payload must reset",
        )),
        Exit::PowerOff | Exit::Quit | Exit::Signal(_) => Ok(0),
        Exit::BootLoopDone => {
            let mut times: Vec<f64> = machine.boot_times.iter().map(|t| t.as_secs_f64()).collect();
            times.sort_by(f64::total_cmp);
            println!(
                "hangar bootloop: {} boots, no hang; per boot min {:.1}s, median {:.1}s, max {:.1}s",
                times.len(),
                times[0],
                times[times.len() / 2],
                times[times.len() - 1]
            );
            Ok(0)
        }
        Exit::Hang => Ok(2),
    }
}

#[cfg(not(target_arch = "aarch64"))]
fn start(
    _cfg: RunConfig,
    _boot: BootSource,
    _boot_loop: Option<(u32, Duration)>,
) -> Result<u8, RunError> {
    Err(RunError::WrongHost(std::env::consts::ARCH))
}
