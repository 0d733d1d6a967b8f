//! The `hangar` command line: subcommands, options, and turning errors into
//! one-line messages for people.

use clap::{Parser, Subcommand};

/// Hangar: a small aarch64 KVM virtual machine monitor that boots UEFI firmware.
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
    /// Check that this host can run aarch64 KVM guests: runs a five-instruction
    /// guest that stores 0xcafef00d to 0x09000000 and prints the MMIO exit.
    ///
    /// Example: hangar selftest
    Selftest,
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

/// Prints an error and its chain of causes on one line.
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
