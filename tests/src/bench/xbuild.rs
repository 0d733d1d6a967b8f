//! Cross-building `hangar` as a static aarch64 ELF.
//!
//! The linker and `+crt-static` come from `.cargo/config.toml`; this checks the
//! result really is what the nested machine can run.

use std::path::PathBuf;
use std::process::Command;

use super::{progress, workspace_root, BenchError};

pub const TARGET: &str = "aarch64-unknown-linux-gnu";

/// Builds `hangar` for aarch64 (release) and returns the binary's path.
pub fn build_hangar() -> Result<PathBuf, BenchError> {
    let root = workspace_root();
    progress(format!("cross-building hangar for {TARGET}"));
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = Command::new(cargo);
    build.current_dir(&root).args([
        "build",
        "--quiet",
        "--release",
        "--target",
        TARGET,
        "-p",
        "vmm",
        "--bin",
        "hangar",
    ]);
    super::cmd::run_visible(&mut build)?;
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let binary = target_dir.join(TARGET).join("release/hangar");
    check_static_aarch64(&binary)?;
    Ok(binary)
}

/// Checks the ELF header (machine = AArch64) and that there is no program
/// interpreter (a dynamic binary would not run in the busybox initramfs).
fn check_static_aarch64(path: &PathBuf) -> Result<(), BenchError> {
    let bytes = std::fs::read(path).map_err(BenchError::io(path))?;
    let bad = |why: &str| BenchError::Invalid(format!("{}: {why}", path.display()));
    if bytes.len() < 64 || &bytes[..4] != b"\x7fELF" || bytes[4] != 2 {
        return Err(bad("not a 64-bit ELF file"));
    }
    const EM_AARCH64: u16 = 183;
    if u16::from_le_bytes([bytes[18], bytes[19]]) != EM_AARCH64 {
        return Err(bad("not an AArch64 binary"));
    }
    let phoff = u64::from_le_bytes(bytes[32..40].try_into().expect("8 bytes")) as usize;
    let phentsize = u16::from_le_bytes([bytes[54], bytes[55]]) as usize;
    let phnum = u16::from_le_bytes([bytes[56], bytes[57]]) as usize;
    const PT_INTERP: u32 = 3;
    for i in 0..phnum {
        let at = phoff + i * phentsize;
        let Some(kind) = bytes.get(at..at + 4) else {
            return Err(bad("truncated program headers"));
        };
        if u32::from_le_bytes(kind.try_into().expect("4 bytes")) == PT_INTERP {
            return Err(bad(
                "dynamically linked (want +crt-static, see .cargo/config.toml)",
            ));
        }
    }
    Ok(())
}

/// Builds the test UEFI application (tests/payloads/efi-hello, its own
/// workspace) and returns the `.efi` file.
pub fn build_efi_hello() -> Result<PathBuf, BenchError> {
    let root = workspace_root();
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
        .join("efi-hello");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = Command::new(cargo);
    build
        .current_dir(root.join("tests/payloads/efi-hello"))
        .args([
            "build",
            "--quiet",
            "--release",
            "--target",
            "aarch64-unknown-uefi",
        ])
        .arg("--target-dir")
        .arg(&target_dir);
    super::cmd::run_visible(&mut build)?;
    Ok(target_dir.join("aarch64-unknown-uefi/release/efi-hello.efi"))
}
