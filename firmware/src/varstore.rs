//! Each VM's UEFI variable store: using the one given, or creating it from the
//! firmware's template.
//!
//! Owns: where a VM's store lives and how it comes into being. The rules:
//! * `--vars PATH` that exists: used as it is. It must be a readable, writable,
//!   non-empty regular file of at most one bank, and exactly the template's size
//!   when a template is known.
//! * `--vars PATH` that does not exist: created as a copy of the template (the
//!   template is only ever opened for reading). Its directory must exist.
//! * no `--vars`: `$XDG_STATE_HOME/hangar/<vm-name>/VARS.fd` (or
//!   `~/.local/state/hangar/<vm-name>/VARS.fd`), created the same way on first use.
//!
//! A new store is written to a temporary file in the same directory, synced and
//! renamed into place, so a crash never leaves a half-copied store behind.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use log::info;

use crate::image::{check_file, read_limited};
use crate::FirmwareError;

const WHAT: &str = "variable store";
const TEMPLATE: &str = "variable store template";

/// A variable store ready for flash bank 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VarStore {
    /// The file; the VMM opens it read-write through the block layer.
    pub path: PathBuf,
    /// Its size in bytes.
    pub size: u64,
    /// True if this call created it from the template.
    pub created: bool,
}

/// Where the store should be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VarsLocation {
    /// `--vars PATH`.
    Path(PathBuf),
    /// No `--vars`: `<state_home>/hangar/<vm_name>/VARS.fd`.
    StateDir {
        /// The user's state directory (see [`VarsLocation::state_dir`]).
        state_home: PathBuf,
        /// The VM's name (one path component).
        vm_name: String,
    },
}

impl VarsLocation {
    /// The per-VM location under `$XDG_STATE_HOME` (or `~/.local/state`).
    pub fn state_dir(vm_name: &str) -> Result<Self, FirmwareError> {
        let state_home = std::env::var_os("XDG_STATE_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
            .ok_or(FirmwareError::NoStateHome)?;
        Ok(Self::StateDir {
            state_home,
            vm_name: vm_name.to_string(),
        })
    }
}

/// Finds or creates the store at `location`, copying `template` if it must be
/// created.
pub fn prepare_vars(
    location: &VarsLocation,
    template: Option<&Path>,
) -> Result<VarStore, FirmwareError> {
    let path = match location {
        VarsLocation::Path(path) => path.clone(),
        VarsLocation::StateDir {
            state_home,
            vm_name,
        } => {
            let dir = vm_state_dir(state_home, vm_name)?;
            fs::create_dir_all(&dir).map_err(|source| FirmwareError::StateDirectory {
                path: dir.clone(),
                source,
            })?;
            dir.join("VARS.fd")
        }
    };
    if fs::symlink_metadata(&path).is_ok() {
        return use_existing(path, template);
    }
    let template = template.ok_or_else(|| FirmwareError::NoTemplate { path: path.clone() })?;
    create_from_template(path, template)
}

/// The state directory of `vm_name`: `<state_home>/hangar/<vm_name>`.
pub fn vm_state_dir(state_home: &Path, vm_name: &str) -> Result<PathBuf, FirmwareError> {
    let valid = !vm_name.is_empty()
        && vm_name != "."
        && vm_name != ".."
        && vm_name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !valid {
        return Err(FirmwareError::BadVmName(vm_name.to_string()));
    }
    Ok(state_home.join("hangar").join(vm_name))
}

fn use_existing(path: PathBuf, template: Option<&Path>) -> Result<VarStore, FirmwareError> {
    if let Some(template) = template {
        let same = fs::canonicalize(&path)
            .ok()
            .zip(fs::canonicalize(template).ok())
            .is_some_and(|(a, b)| a == b);
        if same {
            return Err(FirmwareError::VarsIsTemplate {
                path,
                template: template.to_path_buf(),
            });
        }
    }
    let size = check_file(WHAT, &path, true)?;
    if let Some(template) = template {
        // A template that cannot be checked does not block an existing store.
        if let Ok(template_size) = check_file(TEMPLATE, template, false) {
            if template_size != size {
                return Err(FirmwareError::SizeMismatch {
                    path,
                    size,
                    template: template.to_path_buf(),
                    template_size,
                });
            }
        }
    }
    Ok(VarStore {
        path,
        size,
        created: false,
    })
}

fn create_from_template(path: PathBuf, template: &Path) -> Result<VarStore, FirmwareError> {
    let directory = match path.parent() {
        Some(parent) if parent.as_os_str().is_empty() => PathBuf::from("."),
        Some(parent) => parent.to_path_buf(),
        None => PathBuf::from("/"),
    };
    if !directory.is_dir() {
        return Err(FirmwareError::MissingDirectory { path, directory });
    }
    check_file(TEMPLATE, template, false)?;
    let contents = read_limited(TEMPLATE, template)?;
    let create_error = |source| FirmwareError::CreateVars {
        path: path.clone(),
        source,
    };
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "VARS.fd".to_string());
    let temporary = directory.join(format!(".{file_name}.hangar-new"));
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&temporary)?;
        file.write_all(&contents)?;
        file.sync_all()?;
        // Refuse to replace a store that appeared meanwhile.
        fs::hard_link(&temporary, &path)?;
        fs::remove_file(&temporary)?;
        File::open(&directory)?.sync_all()
    })();
    if let Err(source) = result {
        let _ = fs::remove_file(&temporary);
        return Err(create_error(source));
    }
    info!(
        "created variable store {} from {}",
        path.display(),
        template.display()
    );
    Ok(VarStore {
        path,
        size: contents.len() as u64,
        created: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn template(dir: &Path, len: usize) -> PathBuf {
        let path = dir.join("TEMPLATE_VARS.fd");
        let contents: Vec<u8> = (0..len).map(|i| (i % 7) as u8).collect();
        fs::write(&path, contents).unwrap();
        path
    }

    #[test]
    fn missing_store_is_created_from_template_which_stays_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let template = template(dir.path(), 8192);
        fs::set_permissions(&template, fs::Permissions::from_mode(0o444)).unwrap();
        let before = fs::read(&template).unwrap();
        let vars = dir.path().join("vm.fd");
        let store = prepare_vars(&VarsLocation::Path(vars.clone()), Some(&template)).unwrap();
        assert!(store.created);
        assert_eq!(store.size, 8192);
        assert_eq!(fs::read(&vars).unwrap(), before);
        assert_eq!(fs::read(&template).unwrap(), before);
        assert!(!dir.path().join(".vm.fd.hangar-new").exists());
        // Writable even though the template was read-only.
        assert!(!fs::metadata(&vars).unwrap().permissions().readonly());
    }

    #[test]
    fn the_template_itself_is_never_used_as_a_store() {
        let dir = tempfile::tempdir().unwrap();
        let template = template(dir.path(), 4096);
        let link = dir.path().join("link.fd");
        std::os::unix::fs::symlink(&template, &link).unwrap();
        for given in [template.clone(), link] {
            assert!(matches!(
                prepare_vars(&VarsLocation::Path(given), Some(&template)),
                Err(FirmwareError::VarsIsTemplate { .. })
            ));
        }
    }

    #[test]
    fn existing_store_is_used_as_is() {
        let dir = tempfile::tempdir().unwrap();
        let template = template(dir.path(), 4096);
        let vars = dir.path().join("vm.fd");
        fs::write(&vars, vec![0u8; 4096]).unwrap();
        let store = prepare_vars(&VarsLocation::Path(vars.clone()), Some(&template)).unwrap();
        assert!(!store.created);
        assert_eq!(fs::read(&vars).unwrap(), vec![0u8; 4096]);
    }

    #[test]
    fn existing_store_of_the_wrong_size_is_refused_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let template = template(dir.path(), 4096);
        let vars = dir.path().join("vm.fd");
        fs::write(&vars, vec![1u8; 1000]).unwrap();
        let error = prepare_vars(&VarsLocation::Path(vars.clone()), Some(&template)).unwrap_err();
        assert!(matches!(
            error,
            FirmwareError::SizeMismatch {
                size: 1000,
                template_size: 4096,
                ..
            }
        ));
        assert_eq!(fs::read(&vars).unwrap(), vec![1u8; 1000]);
    }

    #[test]
    fn existing_store_without_template_needs_only_sane_size() {
        let dir = tempfile::tempdir().unwrap();
        let vars = dir.path().join("vm.fd");
        fs::write(&vars, vec![0u8; 1000]).unwrap();
        assert_eq!(
            prepare_vars(&VarsLocation::Path(vars.clone()), None)
                .unwrap()
                .size,
            1000
        );
        File::create(&vars)
            .unwrap()
            .set_len(FLASH_LIMIT_PLUS_ONE)
            .unwrap();
        assert!(matches!(
            prepare_vars(&VarsLocation::Path(vars), None),
            Err(FirmwareError::TooLarge { .. })
        ));
    }

    const FLASH_LIMIT_PLUS_ONE: u64 = crate::FLASH_BANK_SIZE + 1;

    #[test]
    fn read_only_existing_store_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let vars = dir.path().join("vm.fd");
        fs::write(&vars, vec![0u8; 4096]).unwrap();
        fs::set_permissions(&vars, fs::Permissions::from_mode(0o444)).unwrap();
        assert!(matches!(
            prepare_vars(&VarsLocation::Path(vars), None),
            Err(FirmwareError::ReadOnly { .. })
        ));
    }

    #[test]
    fn store_in_a_missing_directory_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let template = template(dir.path(), 4096);
        let vars = dir.path().join("no/such/dir/vm.fd");
        let error = prepare_vars(&VarsLocation::Path(vars), Some(&template)).unwrap_err();
        assert!(matches!(error, FirmwareError::MissingDirectory { .. }));
        assert!(error.to_string().contains("no/such/dir"));
        assert!(!dir.path().join("no").exists());
    }

    #[test]
    fn missing_store_without_template_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let vars = dir.path().join("vm.fd");
        assert!(matches!(
            prepare_vars(&VarsLocation::Path(vars.clone()), None),
            Err(FirmwareError::NoTemplate { .. })
        ));
        assert!(!vars.exists());
    }

    #[test]
    fn empty_template_creates_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let template = dir.path().join("EMPTY.fd");
        fs::write(&template, b"").unwrap();
        let vars = dir.path().join("vm.fd");
        assert!(matches!(
            prepare_vars(&VarsLocation::Path(vars.clone()), Some(&template)),
            Err(FirmwareError::Empty { .. })
        ));
        assert!(!vars.exists());
    }

    #[test]
    fn vm_names_must_be_one_plain_component() {
        for bad in ["", ".", "..", "a/b", "../x", "sp ace"] {
            assert!(
                matches!(
                    vm_state_dir(Path::new("/s"), bad),
                    Err(FirmwareError::BadVmName(_))
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn state_dir_store_is_created_once_then_reused() {
        let dir = tempfile::tempdir().unwrap();
        let template = template(dir.path(), 4096);
        let state = dir.path().join("state");
        let location = VarsLocation::StateDir {
            state_home: state.clone(),
            vm_name: "test-vm".to_string(),
        };
        let first = prepare_vars(&location, Some(&template)).unwrap();
        assert_eq!(first.path, state.join("hangar/test-vm/VARS.fd"));
        assert!(first.created);
        fs::write(&first.path, vec![9u8; 4096]).unwrap();
        let second = prepare_vars(&location, Some(&template)).unwrap();
        assert!(!second.created);
        assert_eq!(fs::read(&second.path).unwrap(), vec![9u8; 4096]);
    }
}
