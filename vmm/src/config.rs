//! What `hangar run` was asked to do, checked before any VM exists: sizes,
//! firmware files and the variable store. Host-independent, so every check here
//! is unit-tested on any machine.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use block::DiskSpec;
use devices::console::ConsoleSpec;
use firmware::{CodeImage, DescriptorSearch, FirmwareError, Selection, VarStore, VarsLocation};

use crate::arch::aarch64::layout;
use crate::direct_kernel::{CheckedKernel, DirectKernel};

/// `--firmware auto|PATH`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FirmwareChoice {
    /// Found through QEMU's firmware descriptors.
    Auto,
    Path(PathBuf),
}

impl FromStr for FirmwareChoice {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(if s == "auto" {
            FirmwareChoice::Auto
        } else {
            FirmwareChoice::Path(PathBuf::from(s))
        })
    }
}

/// The longest busy-poll window `--iothread-poll-max-us` accepts: beyond it,
/// spinning costs more than the wake-up it saves by orders of magnitude.
pub const MAX_POLL_US: u32 = 10_000;

/// Everything `hangar run` needs, as given on the command line.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub name: String,
    pub cpus: u32,
    pub memory: u64,
    pub firmware: FirmwareChoice,
    pub vars: Option<PathBuf>,
    pub serial: ConsoleSpec,
    pub disks: Vec<DiskSpec>,
    /// The cap of the iothread's busy poll (`--iothread-poll-max-us`).
    pub iothread_poll_max_us: u32,
    /// `--kernel` (with `--initrd`, `--cmdline`): Linux without firmware.
    pub kernel: Option<DirectKernel>,
}

/// What the boot vCPU starts: firmware from flash, or a kernel in RAM.
#[derive(Debug)]
pub enum BootSource {
    Firmware(ResolvedFirmware),
    Kernel(CheckedKernel),
}

/// Firmware files that passed every check.
#[derive(Debug, Clone)]
pub struct ResolvedFirmware {
    pub code: CodeImage,
    pub vars: VarStore,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--memory {0:?}: expected a size like 512M or 2G")]
    BadSize(String),
    #[error("--memory {given}: at least {min} MiB is needed ({why})")]
    TooLittleMemory {
        given: String,
        min: u64,
        why: &'static str,
    },
    #[error("--cpus {0}: must be between 1 and {max}", max = layout::MAX_VCPUS)]
    BadCpus(u32),
    #[error("--iothread-poll-max-us {0}: must be at most {max} (10 ms)", max = MAX_POLL_US)]
    BadPollMax(u32),
    #[error(transparent)]
    Firmware(#[from] FirmwareError),
    #[error(transparent)]
    Kernel(#[from] crate::direct_kernel::KernelError),
}

/// Parses `512M`, `2G`, `1024K` or a plain byte count.
pub fn parse_size(s: &str) -> Result<u64, ConfigError> {
    let bad = || ConfigError::BadSize(s.to_string());
    let t = s.trim();
    let (digits, shift) = match t.chars().last() {
        Some('K' | 'k') => (&t[..t.len() - 1], 10),
        Some('M' | 'm') => (&t[..t.len() - 1], 20),
        Some('G' | 'g') => (&t[..t.len() - 1], 30),
        Some('T' | 't') => (&t[..t.len() - 1], 40),
        _ => (t, 0),
    };
    let n: u64 = digits.parse().map_err(|_| bad())?;
    n.checked_mul(1u64 << shift)
        .filter(|&v| v > 0)
        .ok_or_else(bad)
}

impl RunConfig {
    /// Checks the machine shape.
    pub fn check_shape(&self, memory_text: &str) -> Result<(), ConfigError> {
        if self.cpus == 0 || u64::from(self.cpus) > layout::MAX_VCPUS {
            return Err(ConfigError::BadCpus(self.cpus));
        }
        if self.iothread_poll_max_us > MAX_POLL_US {
            return Err(ConfigError::BadPollMax(self.iothread_poll_max_us));
        }
        if self.memory < layout::MIN_RAM_SIZE {
            return Err(ConfigError::TooLittleMemory {
                given: memory_text.to_string(),
                min: layout::MIN_RAM_SIZE >> 20,
                why: if self.kernel.is_some() {
                    "a Linux guest needs room too"
                } else {
                    "UEFI firmware needs room"
                },
            });
        }
        Ok(())
    }

    /// Checks what the boot vCPU will start: the kernel files for a direct
    /// boot, else the firmware and the variable store (see `resolve_firmware`).
    pub fn resolve_boot(&self, search: &DescriptorSearch) -> Result<BootSource, ConfigError> {
        match &self.kernel {
            Some(kernel) => Ok(BootSource::Kernel(kernel.check(self.memory)?)),
            None => Ok(BootSource::Firmware(self.resolve_firmware(search)?)),
        }
    }

    /// Finds and checks the firmware and the variable store, creating the store
    /// from the template when it does not exist yet. Never writes the template.
    pub fn resolve_firmware(
        &self,
        search: &DescriptorSearch,
    ) -> Result<ResolvedFirmware, ConfigError> {
        let (code_path, template) = match &self.firmware {
            FirmwareChoice::Auto => {
                let files = search.find(&Selection::default())?;
                log::info!(
                    "firmware: {} ({})",
                    files.code.display(),
                    files.descriptor.display()
                );
                (files.code, files.vars_template)
            }
            FirmwareChoice::Path(path) => (path.clone(), template_for(search, path)),
        };
        let code = CodeImage::check(&code_path)?;
        let location = match &self.vars {
            Some(path) => VarsLocation::Path(path.clone()),
            None => VarsLocation::state_dir(&self.name)?,
        };
        let vars = firmware::prepare_vars(&location, template.as_deref())?;
        Ok(ResolvedFirmware { code, vars })
    }
}

/// The template of the descriptor whose code image is `code`, if any.
fn template_for(search: &DescriptorSearch, code: &Path) -> Option<PathBuf> {
    let wanted = std::fs::canonicalize(code).ok()?;
    let files = search.find(&Selection::default()).ok()?;
    (std::fs::canonicalize(files.code).ok()? == wanted)
        .then_some(files.vars_template)
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_suffixes() {
        assert_eq!(parse_size("512M").unwrap(), 512 << 20);
        assert_eq!(parse_size("2G").unwrap(), 2 << 30);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        for bad in ["", "M", "12Q", "-1G", "0", "99999999999T"] {
            assert!(parse_size(bad).is_err(), "{bad:?} accepted");
        }
    }

    fn config(dir: &Path) -> RunConfig {
        RunConfig {
            name: "t".into(),
            cpus: 1,
            memory: 512 << 20,
            firmware: FirmwareChoice::Path(dir.join("CODE.fd")),
            vars: Some(dir.join("VARS.fd")),
            serial: ConsoleSpec::Stdio,
            disks: vec![],
            iothread_poll_max_us: 32,
            kernel: None,
        }
    }

    #[test]
    fn shape_limits_are_enforced() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = config(dir.path());
        c.cpus = 0;
        assert!(matches!(
            c.check_shape("512M"),
            Err(ConfigError::BadCpus(0))
        ));
        c.cpus = 2;
        c.iothread_poll_max_us = MAX_POLL_US;
        assert!(c.check_shape("512M").is_ok());
        c.iothread_poll_max_us = MAX_POLL_US + 1;
        assert!(matches!(
            c.check_shape("512M"),
            Err(ConfigError::BadPollMax(_))
        ));
        c.iothread_poll_max_us = 0;
        c.memory = 64 << 20;
        let err = c.check_shape("64M").unwrap_err();
        assert!(err.to_string().contains("64M"), "{err}");
    }

    #[test]
    fn explicit_firmware_and_existing_vars_resolve_without_descriptors() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("CODE.fd"), vec![0u8; 4096]).unwrap();
        std::fs::write(dir.path().join("VARS.fd"), vec![0u8; 8192]).unwrap();
        let search = DescriptorSearch::with_dirs(vec![dir.path().join("none")]);
        let fw = config(dir.path()).resolve_firmware(&search).unwrap();
        assert_eq!(fw.code.size, 4096);
        assert_eq!(fw.vars.size, 8192);
        assert!(!fw.vars.created);
    }

    #[test]
    fn empty_or_oversized_firmware_is_refused_and_nothing_changes() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("VARS.fd"), vec![7u8; 8192]).unwrap();
        let search = DescriptorSearch::with_dirs(vec![]);
        std::fs::write(dir.path().join("CODE.fd"), b"").unwrap();
        let err = config(dir.path()).resolve_firmware(&search).unwrap_err();
        assert!(err.to_string().contains("empty"), "{err}");
        let big = std::fs::File::create(dir.path().join("CODE.fd")).unwrap();
        big.set_len(layout::FLASH_BANK_SIZE + 1).unwrap();
        let err = config(dir.path()).resolve_firmware(&search).unwrap_err();
        assert!(err.to_string().contains("more than"), "{err}");
        assert_eq!(
            std::fs::read(dir.path().join("VARS.fd")).unwrap(),
            vec![7u8; 8192]
        );
    }
}
