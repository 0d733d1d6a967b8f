//! QEMU firmware descriptor files: reading them and choosing one.
//!
//! Owns: the JSON schema subset Hangar reads (QEMU's `docs/interop/firmware.json`),
//! the search order of descriptor directories, and the selection rules.
//!
//! Search order, as QEMU documents it: descriptors are looked up in
//! `/usr/share/qemu/firmware`, then `/etc/qemu/firmware`, then
//! `$XDG_CONFIG_HOME/qemu/firmware` (`~/.config/qemu/firmware`). A file in a later
//! directory replaces the file of the same name in an earlier one, and an empty
//! file hides it. The remaining files are considered in order of file name; the
//! first one that fits wins (the `NN-` prefixes set the priority).
//!
//! A descriptor fits when its interface types include `uefi`, a target names the
//! architecture and a machine glob matching the machine (a glob `virt-*` also
//! matches the bare `virt`), its mapping is a `flash` device in `split` mode with
//! `raw` images, and it has none of the excluded features (by default
//! `secure-boot` and `enrolled-keys`). Files that cannot be parsed are skipped with
//! a warning, as QEMU's own consumers do.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use log::{debug, warn};
use serde::Deserialize;

use crate::FirmwareError;

/// The parts of a descriptor Hangar reads; unknown fields are ignored.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub struct Descriptor {
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// Firmware interfaces, e.g. `uefi`, `bios`.
    #[serde(default)]
    pub interface_types: Vec<String>,
    /// How the firmware is loaded.
    pub mapping: Mapping,
    /// Architectures and machines it runs on.
    #[serde(default)]
    pub targets: Vec<Target>,
    /// Features such as `secure-boot`, `enrolled-keys`, `verbose-static`.
    #[serde(default)]
    pub features: Vec<String>,
}

/// A descriptor's `mapping` object.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub struct Mapping {
    /// `flash`, `kernel` or `memory`.
    pub device: String,
    /// For flash: `split` (default), `combined` or `stateless`.
    #[serde(default)]
    pub mode: Option<String>,
    /// The code image.
    #[serde(default)]
    pub executable: Option<FlashFile>,
    /// The variable store template (split mode).
    #[serde(default)]
    pub nvram_template: Option<FlashFile>,
}

/// A file named by a mapping.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct FlashFile {
    /// Absolute path of the image.
    pub filename: PathBuf,
    /// Image format; `raw` when absent.
    #[serde(default)]
    pub format: Option<String>,
}

/// One entry of `targets`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Target {
    /// e.g. `aarch64`.
    pub architecture: String,
    /// Machine-type globs, e.g. `virt-*`.
    #[serde(default)]
    pub machines: Vec<String>,
}

/// What to look for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    /// Guest architecture, `aarch64`.
    pub architecture: String,
    /// Machine type, `virt`.
    pub machine: String,
    /// Descriptors with any of these features are skipped.
    pub excluded_features: Vec<String>,
}

impl Default for Selection {
    /// aarch64 `virt`, without secure boot.
    fn default() -> Self {
        Self {
            architecture: "aarch64".to_string(),
            machine: "virt".to_string(),
            excluded_features: vec!["secure-boot".to_string(), "enrolled-keys".to_string()],
        }
    }
}

/// The images a chosen descriptor names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirmwareFiles {
    /// The descriptor file chosen.
    pub descriptor: PathBuf,
    /// Its description.
    pub description: String,
    /// The code image (flash bank 0).
    pub code: PathBuf,
    /// The variable store template (for flash bank 1), if the descriptor has one.
    pub vars_template: Option<PathBuf>,
}

/// Descriptor directories, lowest priority first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DescriptorSearch {
    dirs: Vec<PathBuf>,
}

impl DescriptorSearch {
    /// QEMU's documented directories for this user.
    pub fn system() -> Self {
        let mut dirs = vec![
            PathBuf::from("/usr/share/qemu/firmware"),
            PathBuf::from("/etc/qemu/firmware"),
        ];
        let config_home = std::env::var_os("XDG_CONFIG_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")));
        if let Some(config_home) = config_home {
            dirs.push(config_home.join("qemu/firmware"));
        }
        Self { dirs }
    }

    /// Explicit directories, lowest priority first.
    pub fn with_dirs(dirs: Vec<PathBuf>) -> Self {
        Self { dirs }
    }

    /// The directories searched.
    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// The `*.json` files that count, after overriding by name and hiding by
    /// empty files, in order of file name.
    pub fn candidate_files(&self) -> Result<Vec<PathBuf>, FirmwareError> {
        let mut by_name: BTreeMap<String, PathBuf> = BTreeMap::new();
        for dir in &self.dirs {
            let entries = match fs::read_dir(dir) {
                Ok(entries) => entries,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(source) => {
                    return Err(FirmwareError::ListDescriptors {
                        path: dir.clone(),
                        source,
                    })
                }
            };
            for entry in entries.flatten() {
                let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                    continue;
                };
                if name.ends_with(".json") {
                    by_name.insert(name, entry.path());
                }
            }
        }
        Ok(by_name
            .into_values()
            .filter(|path| fs::metadata(path).is_ok_and(|m| m.len() > 0))
            .collect())
    }

    /// The first descriptor that fits `selection`.
    pub fn find(&self, selection: &Selection) -> Result<FirmwareFiles, FirmwareError> {
        for path in self.candidate_files()? {
            let descriptor = match read_descriptor(&path) {
                Ok(descriptor) => descriptor,
                Err(reason) => {
                    warn!("skipping firmware descriptor {}: {reason}", path.display());
                    continue;
                }
            };
            match descriptor.files_for(selection) {
                Ok((code, vars_template)) => {
                    debug!("firmware descriptor {} chosen", path.display());
                    return Ok(FirmwareFiles {
                        descriptor: path,
                        description: descriptor.description,
                        code,
                        vars_template,
                    });
                }
                Err(reason) => debug!("firmware descriptor {} skipped: {reason}", path.display()),
            }
        }
        Err(FirmwareError::NoDescriptor {
            searched: self
                .dirs
                .iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            architecture: selection.architecture.clone(),
            machine: selection.machine.clone(),
        })
    }
}

fn read_descriptor(path: &Path) -> Result<Descriptor, String> {
    let text = fs::read_to_string(path).map_err(|e| e.to_string())?;
    serde_json::from_str(&text).map_err(|e| e.to_string())
}

impl Descriptor {
    /// The code image and template if this descriptor fits, else why not.
    pub fn files_for(&self, selection: &Selection) -> Result<(PathBuf, Option<PathBuf>), String> {
        if !self.interface_types.iter().any(|t| t == "uefi") {
            return Err("not UEFI".into());
        }
        let target_fits = self.targets.iter().any(|target| {
            target.architecture == selection.architecture
                && target
                    .machines
                    .iter()
                    .any(|glob| machine_matches(glob, &selection.machine))
        });
        if !target_fits {
            return Err(format!(
                "no target for {} {}",
                selection.architecture, selection.machine
            ));
        }
        if let Some(feature) = self
            .features
            .iter()
            .find(|f| selection.excluded_features.contains(f))
        {
            return Err(format!("has excluded feature {feature}"));
        }
        let mapping = &self.mapping;
        if mapping.device != "flash" {
            return Err(format!("mapping device is {}, not flash", mapping.device));
        }
        let mode = mapping.mode.as_deref().unwrap_or("split");
        if mode != "split" {
            return Err(format!("flash mode is {mode}, not split"));
        }
        let raw = |file: &FlashFile| file.format.as_deref().unwrap_or("raw") == "raw";
        let code = mapping
            .executable
            .as_ref()
            .ok_or("no executable in the mapping")?;
        if !raw(code) {
            return Err("executable is not raw".into());
        }
        let template = match &mapping.nvram_template {
            Some(template) if !raw(template) => return Err("nvram template is not raw".into()),
            Some(template) => Some(template.filename.clone()),
            None => None,
        };
        Ok((code.filename.clone(), template))
    }
}

/// Matches a machine glob; `NAME-*` also matches the bare `NAME`.
pub fn machine_matches(glob: &str, machine: &str) -> bool {
    glob_matches(glob.as_bytes(), machine.as_bytes())
        || glob
            .strip_suffix("-*")
            .is_some_and(|base| glob_matches(base.as_bytes(), machine.as_bytes()))
}

/// Shell-style matching of `*` and `?` (no character classes).
fn glob_matches(pattern: &[u8], text: &[u8]) -> bool {
    // Iterative with one backtrack point: linear enough for short machine names.
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&c) if c == b'?' || c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((star_p, star_t)) => {
                    p = star_p + 1;
                    t = star_t + 1;
                    star = Some((star_p, star_t + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p.min(pattern.len())..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn descriptor_json(code: &str, vars: &str, features: &[&str], machines: &[&str]) -> String {
        serde_json::json!({
            "description": format!("test firmware {code}"),
            "interface-types": ["uefi"],
            "mapping": {
                "device": "flash",
                "executable": {"filename": code, "format": "raw"},
                "nvram-template": {"filename": vars, "format": "raw"}
            },
            "targets": [{"architecture": "aarch64", "machines": machines}],
            "features": features,
            "tags": []
        })
        .to_string()
    }

    fn write(dir: &Path, name: &str, text: &str) {
        fs::create_dir_all(dir).unwrap();
        fs::write(dir.join(name), text).unwrap();
    }

    #[test]
    fn chooses_the_non_secure_boot_descriptor_by_default() {
        let root = tempfile::tempdir().unwrap();
        let share = root.path().join("share");
        write(
            &share,
            "40-secure-enrolled.json",
            &descriptor_json(
                "/fw/ms.fd",
                "/fw/ms-vars.fd",
                &["enrolled-keys", "secure-boot"],
                &["virt-*"],
            ),
        );
        write(
            &share,
            "50-secure.json",
            &descriptor_json("/fw/sb.fd", "/fw/vars.fd", &["secure-boot"], &["virt-*"]),
        );
        write(
            &share,
            "60-plain.json",
            &descriptor_json(
                "/fw/code.fd",
                "/fw/vars.fd",
                &["verbose-static"],
                &["virt-*"],
            ),
        );
        let found = DescriptorSearch::with_dirs(vec![share])
            .find(&Selection::default())
            .unwrap();
        assert_eq!(found.code, PathBuf::from("/fw/code.fd"));
        assert_eq!(found.vars_template, Some(PathBuf::from("/fw/vars.fd")));
        assert!(found.descriptor.ends_with("60-plain.json"));
    }

    #[test]
    fn etc_overrides_share_by_file_name_and_empty_files_hide() {
        let root = tempfile::tempdir().unwrap();
        let share = root.path().join("share");
        let etc = root.path().join("etc");
        write(
            &share,
            "50-a.json",
            &descriptor_json("/share/a.fd", "/v", &[], &["virt-*"]),
        );
        write(
            &share,
            "60-b.json",
            &descriptor_json("/share/b.fd", "/v", &[], &["virt-*"]),
        );
        write(&etc, "50-a.json", "");
        write(
            &etc,
            "60-b.json",
            &descriptor_json("/etc/b.fd", "/v", &[], &["virt-*"]),
        );
        let search = DescriptorSearch::with_dirs(vec![share, etc.clone()]);
        assert_eq!(
            search.candidate_files().unwrap(),
            vec![etc.join("60-b.json")]
        );
        let found = search.find(&Selection::default()).unwrap();
        assert_eq!(found.code, PathBuf::from("/etc/b.fd"));
    }

    #[test]
    fn order_is_by_file_name_across_directories() {
        let root = tempfile::tempdir().unwrap();
        let share = root.path().join("share");
        let etc = root.path().join("etc");
        write(
            &share,
            "10-first.json",
            &descriptor_json("/first.fd", "/v", &[], &["virt-*"]),
        );
        write(
            &etc,
            "20-second.json",
            &descriptor_json("/second.fd", "/v", &[], &["virt-*"]),
        );
        let found = DescriptorSearch::with_dirs(vec![share, etc])
            .find(&Selection::default())
            .unwrap();
        assert_eq!(found.code, PathBuf::from("/first.fd"));
    }

    #[test]
    fn skips_broken_wrong_arch_wrong_mapping_and_non_raw() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("d");
        write(&dir, "10-broken.json", "{ not json");
        write(
            &dir,
            "20-x86.json",
            &descriptor_json("/x86.fd", "/v", &[], &["pc-q35-*"]),
        );
        let mut memory: serde_json::Value =
            serde_json::from_str(&descriptor_json("/mem.fd", "/v", &[], &["virt-*"])).unwrap();
        memory["mapping"] = serde_json::json!({"device": "memory", "filename": "/mem.fd"});
        write(&dir, "30-memory.json", &memory.to_string());
        let mut qcow: serde_json::Value =
            serde_json::from_str(&descriptor_json("/q.fd", "/v", &[], &["virt-*"])).unwrap();
        qcow["mapping"]["executable"]["format"] = "qcow2".into();
        write(&dir, "40-qcow.json", &qcow.to_string());
        let mut stateless: serde_json::Value =
            serde_json::from_str(&descriptor_json("/s.fd", "/v", &[], &["virt-*"])).unwrap();
        stateless["mapping"]["mode"] = "stateless".into();
        write(&dir, "45-stateless.json", &stateless.to_string());
        write(
            &dir,
            "50-good.json",
            &descriptor_json("/good.fd", "/v", &[], &["virt-*"]),
        );
        write(&dir, "readme.txt", "not a descriptor");
        let found = DescriptorSearch::with_dirs(vec![dir])
            .find(&Selection::default())
            .unwrap();
        assert_eq!(found.code, PathBuf::from("/good.fd"));
    }

    #[test]
    fn nothing_suitable_is_a_typed_error_naming_the_dirs() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("d");
        write(
            &dir,
            "50-sb.json",
            &descriptor_json("/sb.fd", "/v", &["secure-boot"], &["virt-*"]),
        );
        let missing = root.path().join("missing");
        let error = DescriptorSearch::with_dirs(vec![dir, missing])
            .find(&Selection::default())
            .unwrap_err();
        assert!(matches!(error, FirmwareError::NoDescriptor { .. }));
        assert!(error.to_string().contains("missing"));
    }

    #[test]
    fn secure_boot_can_be_asked_for() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("d");
        write(
            &dir,
            "50-sb.json",
            &descriptor_json("/sb.fd", "/v", &["secure-boot"], &["virt-*"]),
        );
        let selection = Selection {
            excluded_features: vec![],
            ..Selection::default()
        };
        let found = DescriptorSearch::with_dirs(vec![dir])
            .find(&selection)
            .unwrap();
        assert_eq!(found.code, PathBuf::from("/sb.fd"));
    }

    #[test]
    fn machine_globs() {
        assert!(machine_matches("virt-*", "virt"));
        assert!(machine_matches("virt-*", "virt-9.2"));
        assert!(machine_matches("virt", "virt"));
        assert!(machine_matches("vi?t*", "virt-2.12"));
        assert!(!machine_matches("pc-q35-*", "virt"));
        assert!(!machine_matches("virt-9.*", "virt"));
        assert!(!machine_matches("virtual", "virt"));
        assert!(machine_matches("*", "anything"));
    }

    #[test]
    fn finds_the_installed_aavmf_when_present() {
        // The tests above cover the rules with hand-written descriptors; this one
        // checks the real files, which `cargo xtask setup` (and so CI) installs.
        let share = PathBuf::from("/usr/share/qemu/firmware");
        assert!(
            share.join("60-edk2-aarch64.json").exists(),
            "Debian's qemu-efi-aarch64 is not installed: run `cargo xtask setup` \
             (or apt-get install -t bookworm-backports qemu-efi-aarch64)"
        );
        let found = DescriptorSearch::with_dirs(vec![share])
            .find(&Selection::default())
            .unwrap();
        assert_eq!(found.code, PathBuf::from("/usr/share/AAVMF/AAVMF_CODE.fd"));
        assert_eq!(
            found.vars_template,
            Some(PathBuf::from("/usr/share/AAVMF/AAVMF_VARS.fd"))
        );
    }
}
