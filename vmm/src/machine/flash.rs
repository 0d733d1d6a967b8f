//! The two CFI flash banks: code (read-only) and variables, whose writes go to
//! the block layer's *synchronous* write — a nested poll of the iothread's
//! context on the vCPU thread, deliberately the shape of the original hang.

use std::io;
use std::sync::Arc;

use block::BlockBackend;
use devices::pflash::FlashStorage;

/// The variable store file behind bank 1.
pub struct BlockFlashStorage {
    pub backend: Arc<BlockBackend>,
}

impl FlashStorage for BlockFlashStorage {
    fn size(&self) -> u64 {
        self.backend.size()
    }

    fn write_sync(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        // Nested poll on the iothread's context (block::sync takes its lock).
        match self.backend.pwrite(offset, data) {
            Ok(n) if n == data.len() => Ok(()),
            Ok(n) => Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("short write: {n} of {} bytes", data.len()),
            )),
            Err(e) => Err(io::Error::other(e)),
        }
    }
}
