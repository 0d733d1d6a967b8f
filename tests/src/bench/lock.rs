//! One nested machine at a time: with two host cores a second emulator makes
//! every figure 2-4x slower, so boots (and preparation) take a file lock that
//! serialises test threads and separate processes alike.

use std::fs::File;
use std::os::fd::AsRawFd;

use super::{cache_dir, progress, BenchError};

pub struct BenchLock {
    _file: File,
}

impl BenchLock {
    pub fn acquire(what: &str) -> Result<BenchLock, BenchError> {
        let dir = cache_dir();
        std::fs::create_dir_all(&dir).map_err(BenchError::io(&dir))?;
        let path = dir.join(format!("{what}.lock"));
        let file = File::create(&path).map_err(BenchError::io(&path))?;
        // SAFETY: flock on an fd we own; no memory is involved.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            progress(format!(
                "waiting for another bench run ({})",
                path.display()
            ));
            // SAFETY: as above; blocking variant.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
                return Err(BenchError::io(&path)(std::io::Error::last_os_error()));
            }
        }
        Ok(BenchLock { _file: file })
    }
}
