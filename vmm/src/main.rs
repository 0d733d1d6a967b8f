use std::process::ExitCode;

use clap::Parser;
use vmm::cli::{format_error_chain, init_logging, Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    match cli.command {
        Command::Run(args) => match vmm::run::run(&args) {
            Ok(code) => ExitCode::from(code),
            Err(e) => {
                eprintln!("hangar: {}", format_error_chain(&e));
                ExitCode::FAILURE
            }
        },
        Command::Bootloop(args) => match vmm::run::bootloop(&args) {
            Ok(code) => ExitCode::from(code),
            Err(e) => {
                eprintln!("hangar: {}", format_error_chain(&e));
                ExitCode::FAILURE
            }
        },
        Command::Selftest => match vmm::selftest::run() {
            Ok(report) => {
                println!("{report}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("hangar: selftest: {}", format_error_chain(&e));
                ExitCode::FAILURE
            }
        },
    }
}
