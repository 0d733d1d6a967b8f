//! Installing the bench's prerequisites, idempotently, saying what and why.
//!
//! Debian packages per docs/bench.md (QEMU from bookworm-backports, because the
//! image's qemu-utils comes from there and conflicts with bookworm's QEMU), the
//! arm64 dpkg architecture (for `apt-get download` of guest packages) and the
//! Rust aarch64 target. Nothing is installed when everything is present.

use std::path::Path;
use std::process::Command;

use super::cmd;
use super::{progress, BenchError};

/// One Debian package the bench needs.
struct Package {
    name: &'static str,
    backports: bool,
    why: &'static str,
}

const PACKAGES: &[Package] = &[
    Package {
        name: "qemu-system-arm",
        backports: true,
        why: "emulates the aarch64 host (qemu-system-aarch64)",
    },
    Package {
        name: "qemu-efi-aarch64",
        backports: true,
        why: "AAVMF UEFI firmware and its descriptors",
    },
    Package {
        name: "gcc-aarch64-linux-gnu",
        backports: false,
        why: "links the static aarch64 hangar",
    },
    Package {
        name: "libc6-dev-arm64-cross",
        backports: false,
        why: "aarch64 C library for static linking",
    },
    Package {
        name: "zstd",
        backports: false,
        why: "compresses the initramfs",
    },
    Package {
        name: "mtools",
        backports: false,
        why: "builds FAT disk images without mounting",
    },
    Package {
        name: "dosfstools",
        backports: false,
        why: "formats FAT disk images",
    },
    Package {
        name: "device-tree-compiler",
        backports: false,
        why: "decodes device trees for comparison",
    },
    Package {
        name: "spin",
        backports: false,
        why: "model-checks the event-loop wake-up protocol",
    },
    Package {
        name: "fio",
        backports: false,
        why: "baseline for the block and SCSI benchmarks",
    },
];

const SOURCES: &str = "/etc/apt/sources.list.d/debian.sources";
const RUST_TARGET: &str = "aarch64-unknown-linux-gnu";
/// For the UEFI application the firmware tests boot from a disk.
const RUST_UEFI_TARGET: &str = "aarch64-unknown-uefi";

fn is_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${db:Status-Status}", package])
        .output()
        .map(|o| o.status.success() && o.stdout == b"installed")
        .unwrap_or(false)
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Makes sure every prerequisite is present, installing what is missing.
pub fn ensure() -> Result<(), BenchError> {
    if !cmd::on_path("apt-get") || !cmd::on_path("dpkg-query") {
        return Err(BenchError::MissingPrerequisite {
            what: "a Debian system (apt-get, dpkg-query)".into(),
            how: "the bench installs its packages with apt; on other systems install the packages listed in docs/bench.md by hand".into(),
        });
    }
    let missing: Vec<&Package> = PACKAGES.iter().filter(|p| !is_installed(p.name)).collect();
    let need_arm64 = !foreign_architectures()?.iter().any(|a| a == "arm64");
    if (!missing.is_empty() || need_arm64) && !is_root() {
        let names: Vec<&str> = missing.iter().map(|p| p.name).collect();
        return Err(BenchError::MissingPrerequisite {
            what: format!("Debian packages {names:?} and/or the arm64 dpkg architecture"),
            how: "run the bench as root once (it installs them), or see docs/bench.md".into(),
        });
    }
    if need_arm64 {
        progress("adding dpkg architecture arm64 (to download the guest kernel and busybox)");
        cmd::output(Command::new("dpkg").args(["--add-architecture", "arm64"]))?;
    }
    if !missing.is_empty() {
        if missing.iter().any(|p| p.backports) {
            enable_backports()?;
        }
        progress("apt-get update");
        cmd::run_visible(Command::new("apt-get").args(["-q", "update"]))?;
        for group in [true, false] {
            let names: Vec<&str> = missing
                .iter()
                .filter(|p| p.backports == group)
                .map(|p| p.name)
                .collect();
            if names.is_empty() {
                continue;
            }
            for p in missing.iter().filter(|p| p.backports == group) {
                progress(format!("installing {} ({})", p.name, p.why));
            }
            let mut apt = Command::new("apt-get");
            apt.env("DEBIAN_FRONTEND", "noninteractive").args([
                "-q",
                "-y",
                "--no-install-recommends",
                "install",
            ]);
            if group {
                apt.args(["-t", "bookworm-backports"]);
            }
            apt.args(&names);
            cmd::run_visible(&mut apt).map_err(|e| BenchError::MissingPrerequisite {
                what: names.join(", "),
                how: format!("apt-get could not install it ({e})"),
            })?;
        }
    } else if need_arm64 {
        cmd::run_visible(Command::new("apt-get").args(["-q", "update"]))?;
    }
    ensure_rust_target()
}

fn foreign_architectures() -> Result<Vec<String>, BenchError> {
    let out = cmd::stdout(Command::new("dpkg").arg("--print-foreign-architectures"))?;
    Ok(out.lines().map(str::to_string).collect())
}

/// Adds bookworm-backports to the Suites of the existing main-archive entry,
/// reusing whatever mirror the machine is configured with.
fn enable_backports() -> Result<(), BenchError> {
    let path = Path::new(SOURCES);
    let text = std::fs::read_to_string(path).map_err(|e| BenchError::MissingPrerequisite {
        what: "bookworm-backports apt source".into(),
        how: format!("cannot read {SOURCES} ({e}); add bookworm-backports to your apt sources"),
    })?;
    if text.contains("bookworm-backports") {
        return Ok(());
    }
    let needle = "Suites: bookworm bookworm-updates\n";
    if !text.contains(needle) {
        return Err(BenchError::MissingPrerequisite {
            what: "bookworm-backports apt source".into(),
            how: format!("{SOURCES} has no `{}` line to extend; add bookworm-backports to your apt sources by hand", needle.trim()),
        });
    }
    progress(format!(
        "enabling bookworm-backports in {SOURCES} (QEMU 10 comes from there)"
    ));
    let updated = text.replacen(
        needle,
        "Suites: bookworm bookworm-updates bookworm-backports\n",
        1,
    );
    std::fs::write(path, updated).map_err(BenchError::io(path))
}

fn ensure_rust_target() -> Result<(), BenchError> {
    if !cmd::on_path("rustup") {
        return Err(BenchError::MissingPrerequisite {
            what: format!("rustup (for the {RUST_TARGET} target)"),
            how: "install Rust with rustup".into(),
        });
    }
    let installed = cmd::stdout(Command::new("rustup").args(["target", "list", "--installed"]))?;
    for (target, why) in [
        (RUST_TARGET, "to cross-build hangar"),
        (RUST_UEFI_TARGET, "to build the test UEFI application"),
    ] {
        if installed.lines().any(|l| l.trim() == target) {
            continue;
        }
        progress(format!("rustup target add {target} ({why})"));
        cmd::run_visible(Command::new("rustup").args(["target", "add", target]))?;
    }
    Ok(())
}

/// Fails with one line naming `program` and the package that provides it,
/// rather than a bare "No such file or directory" from a spawn.
pub fn require_program(program: &str, package: &str) -> Result<(), BenchError> {
    if cmd::on_path(program) {
        return Ok(());
    }
    Err(BenchError::MissingPrerequisite {
        what: format!("`{program}` (Debian package {package})"),
        how: format!(
            "run `cargo xtask setup` as root to install it, or `apt-get install {package}`"
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_program_is_one_line_naming_it_and_its_package() {
        let err = require_program("hangar-no-such-program", "qemu-system-arm").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("hangar-no-such-program"), "{msg}");
        assert!(msg.contains("qemu-system-arm"), "{msg}");
        assert!(msg.contains("apt-get install"), "{msg}");
        assert!(!msg.contains('\n'), "{msg}");
    }

    #[test]
    fn a_present_program_passes() {
        require_program("sh", "dash").unwrap();
    }
}
