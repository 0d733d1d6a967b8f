//! Running host commands with errors that quote the command and its stderr.

use std::process::{Command, Output, Stdio};

use super::BenchError;

/// Renders a command for messages.
pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        s.push(' ');
        s.push_str(&arg.to_string_lossy());
    }
    s
}

/// Runs `cmd` to completion, capturing its output; non-zero exit is an error
/// carrying the last lines of stderr.
pub fn output(cmd: &mut Command) -> Result<Output, BenchError> {
    let command = describe(cmd);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|source| BenchError::Spawn {
            command: command.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(BenchError::Command {
            command,
            detail: format!("{}; stderr: {}", out.status, tail(&out.stderr, 12)),
        });
    }
    Ok(out)
}

/// Runs `cmd` with its output shown to the user (long installs and builds).
pub fn run_visible(cmd: &mut Command) -> Result<(), BenchError> {
    let command = describe(cmd);
    let status = cmd
        .stdin(Stdio::null())
        .status()
        .map_err(|source| BenchError::Spawn {
            command: command.clone(),
            source,
        })?;
    if !status.success() {
        return Err(BenchError::Command {
            command,
            detail: format!("{status} (its output is above)"),
        });
    }
    Ok(())
}

/// Standard output as trimmed text.
pub fn stdout(cmd: &mut Command) -> Result<String, BenchError> {
    let out = output(cmd)?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The last `lines` lines of some output, for error messages.
pub fn tail(bytes: &[u8], lines: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Whether a program is on PATH.
pub fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
        .unwrap_or(false)
}
