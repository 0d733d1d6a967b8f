//! What a writable flash bank needs from the VMM: persistent storage and a way to
//! switch its read-only memory slot (ROMD mode) on and off.
//!
//! Owns: the [`FlashStorage`] and [`RomdControl`] traits and the in-memory test
//! doubles [`MemoryFlashStorage`] and [`RecordingRomd`].

use std::io;
use std::sync::{Arc, Mutex};

/// Persistent backing of a writable bank (the VM's variable store file).
///
/// The VMM implements it with the block layer's synchronous write (a nested poll
/// of the iothread's context). `write_sync` is called from a vCPU thread holding
/// the flash's lock and must return only once the bytes are in the file: the
/// flash reports a program or erase done only after it returned `Ok`.
pub trait FlashStorage: Send {
    /// Bytes of the backing file; writes never reach past this.
    fn size(&self) -> u64;
    /// Writes `data` at byte `offset` of the file and returns when it is there.
    fn write_sync(&self, offset: u64, data: &[u8]) -> io::Result<()>;
}

/// Maps or unmaps a bank's host buffer as a read-only KVM memory slot.
///
/// The flash calls `set_romd(false)` when it leaves read-array mode (reads must
/// trap to the device to see status or query data) and `set_romd(true)` when it
/// returns. It calls it while holding its own lock, on the vCPU thread that wrote
/// the command, before that write returns to the guest; an implementation must not
/// take any device lock.
pub trait RomdControl: Send + Sync {
    /// `true`: map the bank read-only; `false`: remove the slot.
    fn set_romd(&self, mapped: bool);
}

/// Test double for [`FlashStorage`]: a byte vector, with an optional injected
/// failure for every write.
#[derive(Debug, Clone)]
pub struct MemoryFlashStorage {
    inner: Arc<Mutex<MemoryStorageState>>,
}

#[derive(Debug)]
struct MemoryStorageState {
    bytes: Vec<u8>,
    fail_writes: bool,
    writes: usize,
}

impl MemoryFlashStorage {
    /// Storage holding `bytes`; clones share the same bytes.
    pub fn new(bytes: Vec<u8>) -> Self {
        Self {
            inner: Arc::new(Mutex::new(MemoryStorageState {
                bytes,
                fail_writes: false,
                writes: 0,
            })),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, MemoryStorageState> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes every later write fail (`true`) or succeed (`false`).
    pub fn set_fail_writes(&self, fail: bool) {
        self.state().fail_writes = fail;
    }

    /// A copy of the stored bytes.
    pub fn bytes(&self) -> Vec<u8> {
        self.state().bytes.clone()
    }

    /// How many successful writes reached the storage.
    pub fn writes(&self) -> usize {
        self.state().writes
    }
}

impl FlashStorage for MemoryFlashStorage {
    fn size(&self) -> u64 {
        self.state().bytes.len() as u64
    }

    fn write_sync(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut state = self.state();
        if state.fail_writes {
            return Err(io::Error::other("injected write failure"));
        }
        let start = usize::try_from(offset).map_err(|_| io::ErrorKind::InvalidInput)?;
        let end = start
            .checked_add(data.len())
            .filter(|&end| end <= state.bytes.len())
            .ok_or(io::ErrorKind::InvalidInput)?;
        state.bytes[start..end].copy_from_slice(data);
        state.writes += 1;
        Ok(())
    }
}

/// Test double for [`RomdControl`]: records every call.
#[derive(Debug, Default)]
pub struct RecordingRomd {
    calls: Mutex<Vec<bool>>,
}

impl RecordingRomd {
    /// Every `set_romd` argument so far, oldest first.
    pub fn calls(&self) -> Vec<bool> {
        self.calls.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl RomdControl for RecordingRomd {
    fn set_romd(&self, mapped: bool) {
        self.calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(mapped);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_storage_writes_in_bounds_and_rejects_the_rest() {
        let storage = MemoryFlashStorage::new(vec![0; 8]);
        storage.write_sync(2, &[1, 2]).unwrap();
        assert!(storage.write_sync(7, &[1, 2]).is_err());
        assert!(storage.write_sync(u64::MAX, &[1]).is_err());
        storage.set_fail_writes(true);
        assert!(storage.write_sync(0, &[9]).is_err());
        assert_eq!(storage.bytes(), vec![0, 0, 1, 2, 0, 0, 0, 0]);
        assert_eq!(storage.writes(), 1);
    }
}
