//! The guest software the nested machine boots: Debian's arm64 kernel (also used
//! as the inner guest's kernel) with its modules, and busybox-static.
//!
//! Fetched with `apt-get download` into the cache, one folder per package
//! version, so a fresh clone reuses them and a new Debian kernel is picked up.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::cmd;
use super::{progress, BenchError};

#[derive(Debug, Clone)]
pub struct GuestKit {
    /// Uncompressed arm64 `Image` (Debian ships it as /boot/vmlinuz-*).
    pub kernel: PathBuf,
    /// `lib/modules/<release>` of that kernel.
    pub modules: PathBuf,
    /// The kernel release string, e.g. `6.1.0-56-arm64`.
    pub release: String,
    /// Static aarch64 busybox.
    pub busybox: PathBuf,
}

impl GuestKit {
    /// Returns the cached kit, downloading what is missing.
    pub fn fetch(cache: &Path) -> Result<GuestKit, BenchError> {
        let kernel_pkg = current_kernel_package()?;
        let kernel_dir = fetch_package(cache, &kernel_pkg)?;
        let release = kernel_pkg
            .strip_prefix("linux-image-")
            .unwrap_or(&kernel_pkg)
            .to_string();
        let kernel = kernel_dir.join(format!("boot/vmlinuz-{release}"));
        let modules = kernel_dir.join(format!("lib/modules/{release}"));
        let busybox = fetch_package(cache, "busybox-static")?.join("bin/busybox");
        for path in [&kernel, &modules, &busybox] {
            if !path.exists() {
                return Err(BenchError::Invalid(format!(
                    "{} is missing from its unpacked package (delete {} to fetch again)",
                    path.display(),
                    cache.display()
                )));
            }
        }
        Ok(GuestKit {
            kernel,
            modules,
            release,
            busybox,
        })
    }
}

/// `linux-image-arm64` is a metapackage depending on the current kernel.
fn current_kernel_package() -> Result<String, BenchError> {
    let out = cmd::stdout(Command::new("apt-cache").args(["depends", "linux-image-arm64:arm64"]))?;
    out.lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .map(|d| d.trim_end_matches(":arm64").to_string())
        .find(|d| d.starts_with("linux-image-") && d.ends_with("-arm64"))
        .ok_or_else(|| {
            BenchError::Invalid(format!(
                "cannot tell the current arm64 kernel from `apt-cache depends linux-image-arm64:arm64`:\n{out}"
            ))
        })
}

fn candidate_version(package: &str) -> Result<String, BenchError> {
    let out = cmd::stdout(Command::new("apt-cache").args(["policy", &format!("{package}:arm64")]))?;
    out.lines()
        .filter_map(|l| l.trim().strip_prefix("Candidate: "))
        .map(str::to_string)
        .find(|v| v != "(none)")
        .ok_or_else(|| BenchError::MissingPrerequisite {
            what: format!("{package}:arm64 in the apt lists"),
            how: "run `apt-get update` after `dpkg --add-architecture arm64`".into(),
        })
}

/// Downloads and unpacks one arm64 package into `cache/<name>/<version>/`.
fn fetch_package(cache: &Path, package: &str) -> Result<PathBuf, BenchError> {
    let version = candidate_version(package)?;
    let dir = cache.join(package).join(version.replace(':', "_"));
    if dir.join(".complete").exists() {
        return Ok(dir);
    }
    progress(format!(
        "downloading {package}:arm64 {version} into {}",
        dir.display()
    ));
    let staging = cache.join(format!(".staging-{package}"));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging).map_err(BenchError::io(&staging))?;
    cmd::output(
        Command::new("apt-get")
            .args(["-q", "download", &format!("{package}:arm64={version}")])
            .current_dir(&staging),
    )?;
    let deb = std::fs::read_dir(&staging)
        .map_err(BenchError::io(&staging))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .ok_or_else(|| {
            BenchError::Invalid(format!(
                "apt-get download left no .deb in {}",
                staging.display()
            ))
        })?;
    let unpacked = staging.join("root");
    cmd::output(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked))?;
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.parent().expect("has parent")).map_err(BenchError::io(&dir))?;
    std::fs::rename(&unpacked, &dir).map_err(BenchError::io(&dir))?;
    std::fs::write(dir.join(".complete"), &version).map_err(BenchError::io(&dir))?;
    let _ = std::fs::remove_dir_all(&staging);
    Ok(dir)
}
