//! The `hangar` command line: subcommands, options, and turning errors into
//! one-line messages for people.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::FirmwareChoice;

/// Hangar: a small aarch64 KVM virtual machine monitor that boots UEFI firmware
/// (EDK2/AAVMF for QEMU's `virt` machine) with persistent variables.
#[derive(Debug, Parser)]
#[command(name = "hangar", version, about, long_about = None)]
pub struct Cli {
    /// More log output (-v info, -vv debug, -vvv trace). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Boot UEFI firmware (or, with --kernel, a Linux kernel) in a new VM.
    ///
    /// The firmware's code goes in flash bank 0 (read-only), its variable store
    /// in flash bank 1; variables the firmware writes land in the --vars file and
    /// survive reboots (in place: the guest's reset keeps this process) and
    /// restarts. The guest's power-off ends hangar with status 0.
    ///
    /// Examples:
    ///   hangar run                                 # AAVMF from /usr/share/qemu/firmware
    ///   hangar run --cpus 2 --memory 1G --vars my-vars.fd
    ///   hangar run --firmware CODE.fd --vars VARS.fd --serial file:console.log
    ///   hangar run --kernel Image --initrd initrd.img --cmdline "console=ttyAMA0 root=/dev/sda"
    ///
    /// On the console (stdio on a terminal), Ctrl-A x quits and Ctrl-A Ctrl-A
    /// sends a literal Ctrl-A.
    #[command(verbatim_doc_comment)]
    Run(RunArgs),
    /// Boot-loop reproducer: boot the firmware again and again (each guest
    /// reset starts the next boot in place) and catch the rare hang.
    ///
    /// The guest must reset by itself, e.g. a startup.nsh on a --disk that writes
    /// a variable and runs `reset`. A boot that does not reset within
    /// --boot-timeout is a hang: hangar prints each vCPU's state and the
    /// iothread's event-loop trace, and exits with status 2.
    ///
    /// Example:
    ///   hangar bootloop --boots 200 --boot-timeout 120 --disk path=esp.img --vars v.fd
    #[command(verbatim_doc_comment)]
    Bootloop(BootloopArgs),
    /// Check that this host can run aarch64 KVM guests: runs a five-instruction
    /// guest that stores 0xcafef00d to 0x09000000 and prints the MMIO exit.
    ///
    /// Example: hangar selftest
    Selftest,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Number of vCPUs (secondaries start powered off; the firmware or OS
    /// brings them up with PSCI CPU_ON).
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub cpus: u32,

    /// Guest RAM, with a K/M/G suffix (at least 128M).
    #[arg(long, default_value = "512M", value_name = "SIZE")]
    pub memory: String,

    /// Firmware code image (flash bank 0), or `auto` to find the non-secure-boot
    /// aarch64 UEFI image through QEMU's firmware descriptors
    /// (/etc/qemu/firmware, /usr/share/qemu/firmware). Images shorter than the
    /// 64 MiB bank are padded.
    #[arg(long, default_value = "auto", value_name = "auto|PATH")]
    pub firmware: FirmwareChoice,

    /// This VM's UEFI variable store (flash bank 1). An existing file is used as
    /// is; a missing one is created from the firmware's template (the template
    /// itself is never written). Default: a per-VM file in
    /// $XDG_STATE_HOME/hangar/NAME/VARS.fd.
    #[arg(long, value_name = "PATH")]
    pub vars: Option<PathBuf>,

    /// Where the serial console (PL011) goes: `stdio`, `file:PATH` (output
    /// only) or `unix:PATH` (connect to a listening socket).
    #[arg(
        long,
        default_value = "stdio",
        value_name = "stdio|file:PATH|unix:PATH"
    )]
    pub serial: String,

    /// A disk on the virtio-scsi controller (repeatable):
    /// path=IMG[,readonly=on][,aio=threads|io_uring][,cache=writeback|none][,discard=unmap|ignore]
    #[arg(long, value_name = "path=IMG[,...]")]
    pub disk: Vec<String>,

    /// The VM's name: names its state directory.
    #[arg(long, default_value = "default")]
    pub name: String,

    /// How long the iothread may busy-poll for I/O completions before it sleeps,
    /// in microseconds (QEMU's poll-max-ns). The window adapts: it grows while
    /// completions arrive soon and shrinks to nothing when the VM is idle. Only
    /// aio=io_uring disks are polled; 0 turns polling off (saves CPU on a
    /// crowded host, costs latency). At most 10000.
    #[arg(long, default_value_t = 32, value_name = "MICROSECONDS")]
    pub iothread_poll_max_us: u32,

    /// Boot this Linux kernel directly, without firmware: an arm64 `Image`, plain,
    /// gzip- or zstd-compressed (a vmlinuz) or as an EFI zboot image (gzip or zstd).
    /// There is no flash and no variable store then, and --firmware and --vars are
    /// refused with it.
    #[arg(long, value_name = "IMAGE", conflicts_with_all = ["vars", "firmware"])]
    pub kernel: Option<PathBuf>,

    /// The initramfs for --kernel (loaded into RAM and named in the device tree).
    #[arg(long, value_name = "FILE", requires = "kernel")]
    pub initrd: Option<PathBuf>,

    /// The kernel command line for --kernel. Default: console=ttyAMA0.
    #[arg(long, value_name = "ARGS", requires = "kernel")]
    pub cmdline: Option<String>,
}

#[derive(Debug, Args)]
pub struct BootloopArgs {
    /// How many boots (guest resets) make a successful run.
    #[arg(long, default_value_t = 100, value_name = "N")]
    pub boots: u32,

    /// Seconds one boot may take before it counts as a hang.
    #[arg(long, default_value_t = 300, value_name = "SECS")]
    pub boot_timeout: u64,

    #[command(flatten)]
    pub run: RunArgs,
}

/// Log level from `-v` count; `RUST_LOG` wins when set.
pub fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default))
        .format_timestamp_millis()
        .init();
}

/// An error and its chain of causes on one line.
pub fn format_error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn run_defaults_match_the_documented_contract() {
        let cli = Cli::try_parse_from(["hangar", "run"]).unwrap();
        let Command::Run(args) = cli.command else {
            panic!("not run")
        };
        assert_eq!(args.cpus, 1);
        assert_eq!(args.memory, "512M");
        assert_eq!(args.firmware, FirmwareChoice::Auto);
        assert_eq!(args.serial, "stdio");
        assert!(args.vars.is_none());
    }

    #[test]
    fn unknown_option_is_an_error_naming_it() {
        let err = Cli::try_parse_from(["hangar", "run", "--cpu", "2"]).unwrap_err();
        assert!(err.to_string().contains("--cpu"), "{err}");
    }

    #[test]
    fn kernel_options_go_together_and_exclude_the_firmware_ones() {
        let run = |args: &[&str]| {
            let mut argv = vec!["hangar", "run"];
            argv.extend_from_slice(args);
            Cli::try_parse_from(argv)
        };
        let cli = run(&["--kernel", "Image", "--initrd", "i", "--cmdline", "quiet"]).unwrap();
        let Command::Run(args) = cli.command else {
            panic!("not run")
        };
        assert_eq!(args.kernel, Some(PathBuf::from("Image")));
        assert_eq!(args.initrd, Some(PathBuf::from("i")));
        assert_eq!(args.cmdline.as_deref(), Some("quiet"));
        // The firmware's default does not count as giving it.
        assert_eq!(args.firmware, FirmwareChoice::Auto);

        for (args, named) in [
            (&["--initrd", "i"][..], "--initrd"),
            (&["--cmdline", "quiet"][..], "--cmdline"),
            (&["--kernel", "Image", "--vars", "v.fd"][..], "--vars"),
            (
                &["--kernel", "Image", "--firmware", "c.fd"][..],
                "--firmware",
            ),
        ] {
            let err = run(args).unwrap_err().to_string();
            assert!(err.contains(named), "{args:?}: {err}");
        }
    }
}
