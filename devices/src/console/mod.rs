//! Console backends for the PL011: where guest output goes and where guest input
//! comes from.
//!
//! Owns: opening the backend named by `--serial` (`stdio`, `file:PATH`,
//! `unix:PATH`), the host terminal's mode, and the escape sequence.
//!
//! * `stdio`: output to standard output, input from standard input. Only when
//!   standard input is a terminal is it put in raw mode (no echo, no line editing,
//!   no signals from Ctrl-C), and restored when the [`Console`] is dropped. Input
//!   passes through the [`EscapeFilter`]: `Ctrl-A x` quits, `Ctrl-A Ctrl-A` sends
//!   a Ctrl-A.
//! * `file:PATH`: output to PATH (created or truncated), no input.
//! * `unix:PATH`: connects to a listening Unix stream socket at PATH; output is
//!   sent to it and input read from it, unfiltered.
//!
//! The VMM passes [`Console::output`] to the PL011 and registers
//! [`ConsoleInput::fd`] with its event loop; when readable it calls
//! [`ConsoleInput::read_event`] and pushes the bytes with `Pl011::enqueue_input`;
//! [`InputPump`] does that last part without losing bytes when the FIFO is full.

mod escape;
mod pump;

pub use escape::{EscapeFilter, InputEvent, ESCAPE, QUIT};
pub use pump::{InputPump, PumpOutcome};

use std::fs::File;
use std::io::{self, IsTerminal, Read, Write};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::str::FromStr;

use vmm_sys_util::terminal::Terminal;

/// Errors opening a console backend.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// The `--serial` value is not one of the forms.
    #[error("unknown serial backend {0:?}: expected stdio, file:PATH or unix:PATH")]
    BadSpec(String),
    /// The output file could not be created.
    #[error("cannot create serial output file {path}")]
    CreateFile {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Nobody listens at the socket path.
    #[error("cannot connect to serial socket {path}")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Duplicating the socket for output failed.
    #[error("cannot duplicate the serial socket")]
    CloneSocket(#[source] io::Error),
    /// Standard input could not be duplicated.
    #[error("cannot duplicate standard input")]
    DupStdin(#[source] io::Error),
    /// The terminal refused raw mode.
    #[error("cannot put the terminal in raw mode")]
    RawMode(#[source] vmm_sys_util::errno::Error),
}

/// Where the console goes, as given to `--serial`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsoleSpec {
    /// Standard input and output.
    Stdio,
    /// Output to a file.
    File(PathBuf),
    /// A Unix stream socket to connect to.
    Unix(PathBuf),
}

impl FromStr for ConsoleSpec {
    type Err = ConsoleError;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        if spec == "stdio" {
            return Ok(Self::Stdio);
        }
        let path = |rest: &str| -> Result<PathBuf, ConsoleError> {
            if rest.is_empty() {
                Err(ConsoleError::BadSpec(spec.to_string()))
            } else {
                Ok(PathBuf::from(rest))
            }
        };
        match spec.split_once(':') {
            Some(("file", rest)) => Ok(Self::File(path(rest)?)),
            Some(("unix", rest)) => Ok(Self::Unix(path(rest)?)),
            _ => Err(ConsoleError::BadSpec(spec.to_string())),
        }
    }
}

/// Host input for the guest.
pub struct ConsoleInput {
    source: Box<dyn Read + Send>,
    fd: RawFd,
    filter: Option<EscapeFilter>,
}

impl ConsoleInput {
    /// The descriptor to wait on for readability. For `stdio` it may be a regular
    /// file or `/dev/null` (input redirected), which epoll refuses: then read it
    /// without waiting until `Eof`.
    pub fn fd(&self) -> RawFd {
        self.fd
    }

    /// Reads what is available (one unbuffered `read`, so nothing is left hidden
    /// in a user-space buffer while the descriptor looks idle) and interprets it.
    pub fn read_event(&mut self) -> io::Result<InputEvent> {
        let mut buffer = [0u8; 4096];
        let count = loop {
            match self.source.read(&mut buffer) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => break other?,
            }
        };
        if count == 0 {
            return Ok(InputEvent::Eof);
        }
        Ok(match &mut self.filter {
            Some(filter) => filter.filter(&buffer[..count]),
            None => InputEvent::Bytes(buffer[..count].to_vec()),
        })
    }
}

/// Puts the terminal back in canonical mode when dropped.
struct RawModeGuard;

impl Drop for RawModeGuard {
    fn drop(&mut self) {
        if let Err(error) = io::stdin().lock().set_canon_mode() {
            log::warn!("cannot restore the terminal mode: {error}");
        }
    }
}

/// An open console backend.
pub struct Console {
    output: Option<Box<dyn Write + Send>>,
    input: Option<ConsoleInput>,
    _raw_mode: Option<RawModeGuard>,
}

impl Console {
    /// Opens the backend `spec` names.
    pub fn open(spec: &ConsoleSpec) -> Result<Self, ConsoleError> {
        match spec {
            ConsoleSpec::Stdio => Self::open_stdio(),
            ConsoleSpec::File(path) => {
                let file = File::create(path).map_err(|source| ConsoleError::CreateFile {
                    path: path.clone(),
                    source,
                })?;
                Ok(Self {
                    output: Some(Box::new(file)),
                    input: None,
                    _raw_mode: None,
                })
            }
            ConsoleSpec::Unix(path) => {
                let stream = UnixStream::connect(path).map_err(|source| ConsoleError::Connect {
                    path: path.clone(),
                    source,
                })?;
                let writer = stream.try_clone().map_err(ConsoleError::CloneSocket)?;
                let fd = stream.as_raw_fd();
                Ok(Self {
                    output: Some(Box::new(writer)),
                    input: Some(ConsoleInput {
                        source: Box::new(stream),
                        fd,
                        filter: None,
                    }),
                    _raw_mode: None,
                })
            }
        }
    }

    fn open_stdio() -> Result<Self, ConsoleError> {
        let stdin = io::stdin();
        let raw_mode = if stdin.is_terminal() {
            stdin.lock().set_raw_mode().map_err(ConsoleError::RawMode)?;
            Some(RawModeGuard)
        } else {
            None
        };
        // Read through a duplicate of fd 0 as a plain `File`: `Stdin` buffers, and
        // bytes held in its buffer would be invisible to the poller.
        let unbuffered = File::from(
            stdin
                .as_fd()
                .try_clone_to_owned()
                .map_err(ConsoleError::DupStdin)?,
        );
        let fd = unbuffered.as_raw_fd();
        Ok(Self {
            output: Some(Box::new(io::stdout())),
            input: Some(ConsoleInput {
                source: Box::new(unbuffered),
                fd,
                filter: Some(EscapeFilter::new()),
            }),
            _raw_mode: raw_mode,
        })
    }

    /// The output half, for `Pl011::new` (once; `None` afterwards).
    pub fn take_output(&mut self) -> Option<Box<dyn Write + Send>> {
        self.output.take()
    }

    /// The input half, for the VMM's reader (once; `None` afterwards or if the
    /// backend has no input).
    pub fn take_input(&mut self) -> Option<ConsoleInput> {
        self.input.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    #[test]
    fn specs_parse_and_bad_ones_are_errors() {
        assert_eq!("stdio".parse::<ConsoleSpec>().unwrap(), ConsoleSpec::Stdio);
        assert_eq!(
            "file:/tmp/x.log".parse::<ConsoleSpec>().unwrap(),
            ConsoleSpec::File("/tmp/x.log".into())
        );
        assert_eq!(
            "unix:/run/s".parse::<ConsoleSpec>().unwrap(),
            ConsoleSpec::Unix("/run/s".into())
        );
        for bad in ["", "file:", "tcp:1", "stdio:x", "unix"] {
            assert!(matches!(
                bad.parse::<ConsoleSpec>(),
                Err(ConsoleError::BadSpec(_))
            ));
        }
    }

    #[test]
    fn file_backend_writes_output_and_has_no_input() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("serial.log");
        let mut console = Console::open(&ConsoleSpec::File(path.clone())).unwrap();
        assert!(console.take_input().is_none());
        let mut output = console.take_output().unwrap();
        output.write_all(b"UEFI").unwrap();
        output.flush().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"UEFI");
    }

    #[test]
    fn file_backend_in_missing_directory_is_an_error() {
        let spec = ConsoleSpec::File("/nonexistent-hangar-dir/serial.log".into());
        assert!(matches!(
            Console::open(&spec),
            Err(ConsoleError::CreateFile { .. })
        ));
    }

    #[test]
    fn unix_backend_carries_both_directions_unfiltered() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("serial.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let mut console = Console::open(&ConsoleSpec::Unix(path)).unwrap();
        let (mut peer, _) = listener.accept().unwrap();
        let mut output = console.take_output().unwrap();
        let mut input = console.take_input().unwrap();
        output.write_all(b"Shell> ").unwrap();
        let mut seen = [0u8; 7];
        peer.read_exact(&mut seen).unwrap();
        assert_eq!(&seen, b"Shell> ");
        peer.write_all(b"\x01x").unwrap();
        assert_eq!(
            input.read_event().unwrap(),
            InputEvent::Bytes(b"\x01x".to_vec())
        );
        drop(peer);
        assert_eq!(input.read_event().unwrap(), InputEvent::Eof);
    }

    #[test]
    fn unix_backend_without_listener_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let spec = ConsoleSpec::Unix(dir.path().join("nobody"));
        assert!(matches!(
            Console::open(&spec),
            Err(ConsoleError::Connect { .. })
        ));
    }
}
