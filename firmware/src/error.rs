//! The firmware crate's one error type: every variant names the file and the
//! problem, so the binary can print it as a one-line message.

use std::io;
use std::path::PathBuf;

/// Why a firmware image or variable store cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum FirmwareError {
    /// A descriptor directory exists but cannot be listed.
    #[error("cannot list firmware descriptors in {path}")]
    ListDescriptors {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// No descriptor offers a usable image for this machine.
    #[error("no QEMU firmware descriptor in {searched} offers {architecture} UEFI flash firmware for machine {machine}")]
    NoDescriptor {
        /// The directories searched, joined for the message.
        searched: String,
        /// The architecture asked for.
        architecture: String,
        /// The machine asked for.
        machine: String,
    },
    /// A file does not exist.
    #[error("{what} {path} does not exist")]
    Missing {
        /// "firmware image", "variable store", ...
        what: &'static str,
        /// The file.
        path: PathBuf,
    },
    /// A path names something other than a regular file.
    #[error("{what} {path} is not a regular file")]
    NotAFile {
        /// What the file was meant to be.
        what: &'static str,
        /// The path.
        path: PathBuf,
    },
    /// A file cannot be opened for reading (or its mode forbids it).
    #[error("{what} {path} is not readable")]
    Unreadable {
        /// What the file was meant to be.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A variable store cannot be opened for writing (or its mode forbids it).
    #[error("{what} {path} is not writable")]
    ReadOnly {
        /// What the file was meant to be.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A file is empty.
    #[error("{what} {path} is empty")]
    Empty {
        /// What the file was meant to be.
        what: &'static str,
        /// The file.
        path: PathBuf,
    },
    /// A file is larger than a flash bank.
    #[error("{what} {path} is {size} bytes, more than the {limit}-byte flash bank")]
    TooLarge {
        /// What the file was meant to be.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// The bank size.
        limit: u64,
    },
    /// A variable store's size differs from its template's.
    #[error("variable store {path} is {size} bytes but its template {template} is {template_size} bytes")]
    SizeMismatch {
        /// The store.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// The template.
        template: PathBuf,
        /// The template's size.
        template_size: u64,
    },
    /// The store given is the shared template itself.
    #[error("variable store {path} is the shared template {template}; give a per-VM --vars path (it will be created from the template)")]
    VarsIsTemplate {
        /// The store given.
        path: PathBuf,
        /// The template.
        template: PathBuf,
    },
    /// A new variable store was asked for but no template is known.
    #[error("variable store {path} does not exist and no template is known to create it from (give --firmware auto or an existing --vars)")]
    NoTemplate {
        /// The store that would have been created.
        path: PathBuf,
    },
    /// The directory of a new variable store does not exist.
    #[error("cannot create variable store {path}: directory {directory} does not exist")]
    MissingDirectory {
        /// The store.
        path: PathBuf,
        /// Its parent directory.
        directory: PathBuf,
    },
    /// Creating, copying or syncing a new store failed.
    #[error("cannot create variable store {path}")]
    CreateVars {
        /// The store.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The per-VM state directory cannot be made.
    #[error("cannot create state directory {path}")]
    StateDirectory {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Neither `XDG_STATE_HOME` nor `HOME` is set.
    #[error(
        "cannot choose a state directory: neither XDG_STATE_HOME nor HOME is set (give --vars)"
    )]
    NoStateHome,
    /// A VM name that cannot be a directory name.
    #[error("VM name {0:?} cannot name a state directory (use letters, digits, '-', '_', '.')")]
    BadVmName(String),
    /// Reading a file's contents failed.
    #[error("cannot read {what} {path}")]
    Read {
        /// What the file was meant to be.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}
