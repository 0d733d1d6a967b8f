//! `hangar run`: from command-line arguments to a running machine.

use block::DiskSpec;
use devices::console::ConsoleSpec;
use firmware::DescriptorSearch;

use crate::cli::RunArgs;
use crate::config::{parse_size, ConfigError, RunConfig};

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
    };
    cfg.check_shape(&args.memory)?;
    Ok(cfg)
}

/// Runs the VM to its end; returns the process exit status.
pub fn run(args: &RunArgs) -> Result<u8, RunError> {
    let cfg = config_from_args(args)?;
    let fw = cfg.resolve_firmware(&DescriptorSearch::system())?;
    if fw.vars.created {
        eprintln!("hangar: created variable store {}", fw.vars.path.display());
    }
    start(cfg, fw)
}

#[cfg(target_arch = "aarch64")]
fn start(cfg: RunConfig, fw: crate::config::ResolvedFirmware) -> Result<u8, RunError> {
    use crate::machine::{Exit, Machine};
    let mut machine = Machine::new(cfg, fw)?;
    let exit = machine.run()?;
    log::info!("machine ended: {exit:?} after {} boot(s)", machine.boots);
    Ok(match exit {
        Exit::PowerOff | Exit::Quit | Exit::Signal(_) => 0,
    })
}

#[cfg(not(target_arch = "aarch64"))]
fn start(_cfg: RunConfig, _fw: crate::config::ResolvedFirmware) -> Result<u8, RunError> {
    Err(RunError::WrongHost(std::env::consts::ARCH))
}
