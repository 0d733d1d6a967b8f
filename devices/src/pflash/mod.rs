//! CFI01 parallel NOR flash: one 64 MiB bank of QEMU's `virt` machine (bank 0
//! holds the firmware code, bank 1 the UEFI variable store).
//!
//! Owns: the bank's contents (a page-aligned host buffer), its command state
//! machine and status register, and the order in which writes reach storage.
//!
//! # What it models
//!
//! A 32-bit bank of two interleaved 16-bit Intel-style chips (see [`cfi`] for the
//! geometry and query table), 256 KiB erase blocks. It follows the Intel "basic
//! command set" (CFI command set 0x0001) as QEMU's `pflash_cfi01` presents it to
//! EDK2's ArmVirtPkg and to Linux's `cfi_cmdset_0001` driver. The command is the
//! low byte of the written value; both chips always act together.
//!
//! | Command | Meaning | Then |
//! |---|---|---|
//! | `0xFF` (`0xF0`) | read array | reads return the bank contents; ROMD on |
//! | `0x70` | read status | reads return the status byte per chip |
//! | `0x50` | clear status | error bits cleared, read mode unchanged |
//! | `0x90` | read identifier | word 0: 0x89, word 1: 0x18, word 2 of a block: lock status 0 |
//! | `0x98` | CFI query | reads return the query table |
//! | `0x40`/`0x10`, data | program the written bytes | persisted, then read status |
//! | `0x20`, `0xD0` | erase the 256 KiB block (fills `0xFF`) | persisted, then read status |
//! | `0xE8`, count, data…, `0xD0` | buffered program of count+1 accesses within one 4 KiB write buffer | persisted, then read status |
//! | `0x60`, `0xD0`/`0x01`/`0x2F` | unlock / lock / lock-down: accepted, never enforced | read status |
//! | `0xB0`, `0xD0` alone | suspend / resume: accepted, nothing is ever in progress | unchanged |
//!
//! A program stores the written bytes as they are (as QEMU does), rather than
//! ANDing them into the old contents as real NOR cells would. Any other command,
//! or a second cycle that does not fit its first, sets both error bits
//! ([`STATUS_PROGRAM_ERROR`] and [`STATUS_ERASE_ERROR`], "command sequence error")
//! and leaves the bank in read-status mode. Operations complete at once: the ready
//! bit [`STATUS_READY`] is always set.
//!
//! # ROMD mode
//!
//! The firmware reads its flash with load-pair instructions, which KVM cannot
//! hand to userspace as MMIO. So the bank's contents live in a host buffer
//! ([`Pflash::region`]) that the VMM maps into the guest as a read-only KVM memory
//! slot while the bank is in read-array mode ([`Pflash::romd`]): reads never exit,
//! writes (commands) do. When a command takes the bank out of read-array mode the
//! device calls [`RomdControl::set_romd`]`(false)` before the write returns, and the
//! VMM removes the slot so that reads reach [`MmioDevice::read`] (status, query
//! data); back in read-array mode it calls `set_romd(true)`. The buffer is changed
//! only in command modes, that is while the slot is unmapped.
//!
//! # Writes and persistence
//!
//! A read-only bank (the code bank) ignores every write with a rate-limited
//! warning. A writable bank writes through [`FlashStorage::write_sync`] *first*;
//! only when that succeeded does the host buffer change. A failed write sets the
//! program (`0x10`) or erase (`0x20`) error bit, leaves the buffer as it was, and
//! the firmware sees the failure in the status register: nothing is reported
//! written that is not in the file. Writes past the end of the storage fail the
//! same way.
//!
//! # Security caveat
//!
//! Any guest code can program and erase the variable bank: lock commands are
//! accepted but not enforced, and there is no secure-world-only access. This model
//! is not a place to keep secrets from the guest, and it must not be used for
//! secure-boot key protection.
//!
//! # Locking
//!
//! The VMM holds the bank as `Arc<Mutex<Pflash>>`; every method runs under that
//! lock. `write_sync` and `set_romd` are called with it held.

pub mod cfi;
mod storage;

pub use storage::{FlashStorage, MemoryFlashStorage, RecordingRomd, RomdControl};

use std::sync::Arc;

use log::{debug, trace};
use vm_memory::{MmapRegion, VolatileMemory};

use crate::mmio::{le_value, MmioDevice, RateLimitedWarn};
use crate::warn_limited;
use cfi::{BANK_SIZE, BANK_WIDTH, ERASE_BLOCK_SIZE, WRITE_BUFFER_SIZE};

/// Status bit 7: the write state machine is ready.
pub const STATUS_READY: u8 = 0x80;
/// Status bit 5: erase failed (with bit 4: command sequence error).
pub const STATUS_ERASE_ERROR: u8 = 0x20;
/// Status bit 4: program failed (with bit 5: command sequence error).
pub const STATUS_PROGRAM_ERROR: u8 = 0x10;

/// Errors building a bank.
#[derive(Debug, thiserror::Error)]
pub enum PflashError {
    /// The image does not fit in one bank.
    #[error("flash image of {len} bytes is larger than the {BANK_SIZE}-byte bank")]
    ImageTooLarge {
        /// Length of the image given.
        len: u64,
    },
    /// The storage is larger than one bank.
    #[error("flash storage of {len} bytes is larger than the {BANK_SIZE}-byte bank")]
    StorageTooLarge {
        /// Size the storage reported.
        len: u64,
    },
    /// The host buffer could not be allocated.
    #[error("cannot allocate the flash bank's host buffer")]
    Allocate(#[source] vm_memory::mmap::MmapRegionError),
}

/// Who may change the bank.
pub enum BankAccess {
    /// Guest writes are ignored (the firmware code bank).
    ReadOnly,
    /// Guest programs and erases go to this storage first.
    Writable(Box<dyn FlashStorage>),
}

/// Where the command state machine is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Mode {
    ReadArray,
    ReadStatus,
    ReadId,
    Query,
    /// After 0x40/0x10: the next write is data.
    ProgramSetup,
    /// After 0x20: the next write must be 0xD0.
    EraseSetup,
    /// After 0x60: the next write is 0xD0, 0x01 or 0x2F.
    LockSetup,
    /// After 0xE8: the next write is the count.
    BufferCount {
        start: u64,
    },
    /// Collecting `remaining` more data accesses.
    BufferData {
        staged: StagedWrite,
        remaining: u64,
    },
    /// All data in; the next write must be 0xD0.
    BufferConfirm {
        staged: StagedWrite,
    },
}

/// Data of a buffered write, collected before anything is persisted.
#[derive(Debug, Clone, PartialEq, Eq)]
struct StagedWrite {
    /// Bank offset of `bytes[0]`: the write-buffer window holding the start address.
    window_start: u64,
    /// The window's contents with the data written so far laid over them.
    bytes: Vec<u8>,
    /// Window-relative range touched so far.
    dirty: Option<(usize, usize)>,
}

/// Rate limiters, one per kind of guest mistake.
#[derive(Debug, Default)]
struct Warnings {
    read_only_write: RateLimitedWarn,
    bad_access: RateLimitedWarn,
    bad_command: RateLimitedWarn,
    storage_failure: RateLimitedWarn,
}

/// One CFI01 flash bank.
pub struct Pflash {
    name: String,
    region: Arc<MmapRegion>,
    access: BankAccess,
    mode: Mode,
    status: u8,
    romd_control: Option<Arc<dyn RomdControl>>,
    warnings: Warnings,
}

impl Pflash {
    /// A bank named `name` (for logs) holding `image`, padded with `0xFF` (erased
    /// flash) to [`BANK_SIZE`]. For a writable bank, `image` should be the
    /// storage's current contents.
    pub fn new(name: &str, image: &[u8], access: BankAccess) -> Result<Self, PflashError> {
        let len = image.len() as u64;
        if len > BANK_SIZE {
            return Err(PflashError::ImageTooLarge { len });
        }
        if let BankAccess::Writable(storage) = &access {
            if storage.size() > BANK_SIZE {
                return Err(PflashError::StorageTooLarge {
                    len: storage.size(),
                });
            }
        }
        let region = MmapRegion::new(BANK_SIZE as usize).map_err(PflashError::Allocate)?;
        let whole = region
            .get_slice(0, BANK_SIZE as usize)
            .expect("a new region holds the whole bank");
        whole.copy_from(image);
        // Erased flash reads as ones; fill the rest a chunk at a time.
        let erased = [0xFFu8; 64 << 10];
        let mut at = image.len();
        while at < BANK_SIZE as usize {
            let rest = whole.offset(at).expect("offset stays inside the bank");
            at += rest.len().min(erased.len());
            rest.copy_from(&erased);
        }
        Ok(Self {
            name: name.to_string(),
            region: Arc::new(region),
            access,
            mode: Mode::ReadArray,
            status: STATUS_READY,
            romd_control: None,
            warnings: Warnings::default(),
        })
    }

    /// The host buffer holding the bank's contents, [`BANK_SIZE`] bytes,
    /// page-aligned; map it read-only into the guest while [`Pflash::romd`].
    pub fn region(&self) -> Arc<MmapRegion> {
        Arc::clone(&self.region)
    }

    /// Installs the callback told about every ROMD change from now on.
    pub fn set_romd_control(&mut self, control: Arc<dyn RomdControl>) {
        self.romd_control = Some(control);
    }

    /// True while the bank is in read-array mode: its buffer may be mapped.
    pub fn romd(&self) -> bool {
        self.mode == Mode::ReadArray
    }

    /// The status register (one chip's byte).
    pub fn status(&self) -> u8 {
        self.status
    }

    /// Back to the power-on state: read-array mode, status ready, contents kept.
    pub fn reset(&mut self) {
        self.set_mode(Mode::ReadArray);
        self.status = STATUS_READY;
    }

    /// Copies `data.len()` bytes of the bank from `offset`; false if out of range.
    fn read_array(&self, offset: u64, data: &mut [u8]) -> bool {
        let Some(slice) = usize::try_from(offset)
            .ok()
            .and_then(|at| self.region.get_slice(at, data.len()).ok())
        else {
            return false;
        };
        slice.copy_to(data);
        true
    }

    fn set_mode(&mut self, mode: Mode) {
        let was_romd = self.romd();
        self.mode = mode;
        let now_romd = self.romd();
        if was_romd != now_romd {
            debug!(
                "pflash {}: ROMD {}",
                self.name,
                if now_romd { "on" } else { "off" }
            );
            if let Some(control) = &self.romd_control {
                control.set_romd(now_romd);
            }
        }
    }

    /// A command that does not fit the state: "command sequence error".
    fn sequence_error(&mut self, offset: u64, value: u64) {
        warn_limited!(
            self.warnings.bad_command,
            "pflash {}: invalid command {value:#x} at {offset:#x} in state {}",
            self.name,
            self.mode_name()
        );
        self.status |= STATUS_PROGRAM_ERROR | STATUS_ERASE_ERROR;
        self.set_mode(Mode::ReadStatus);
    }

    fn mode_name(&self) -> &'static str {
        match self.mode {
            Mode::ReadArray => "read-array",
            Mode::ReadStatus => "read-status",
            Mode::ReadId => "read-id",
            Mode::Query => "query",
            Mode::ProgramSetup => "program",
            Mode::EraseSetup => "erase",
            Mode::LockSetup => "lock",
            Mode::BufferCount { .. } => "buffer-count",
            Mode::BufferData { .. } => "buffer-data",
            Mode::BufferConfirm { .. } => "buffer-confirm",
        }
    }

    /// Persists `data` at `offset`, then updates the buffer. On failure the buffer
    /// is unchanged and `error_bit` is set in the status.
    fn commit(&mut self, offset: u64, data: &[u8], error_bit: u8) {
        let BankAccess::Writable(storage) = &self.access else {
            return;
        };
        let end = offset.checked_add(data.len() as u64);
        let result = match end {
            Some(end) if end <= storage.size() => storage.write_sync(offset, data),
            _ => Err(std::io::Error::other("beyond the end of the storage")),
        };
        match result {
            Ok(()) => {
                let slice = usize::try_from(offset)
                    .ok()
                    .and_then(|at| self.region.get_slice(at, data.len()).ok());
                match slice {
                    Some(slice) => slice.copy_from(data),
                    // Unreachable: storage is no larger than the bank.
                    None => self.status |= error_bit,
                }
                trace!(
                    "pflash {}: wrote {} bytes at {offset:#x}",
                    self.name,
                    data.len()
                );
            }
            Err(error) => {
                warn_limited!(
                    self.warnings.storage_failure,
                    "pflash {}: write of {} bytes at {offset:#x} failed, reported to the guest: {error}",
                    self.name,
                    data.len()
                );
                self.status |= error_bit;
            }
        }
    }

    fn erase_block(&mut self, offset: u64) {
        let start = offset - offset % ERASE_BLOCK_SIZE;
        let erased = vec![0xFF; ERASE_BLOCK_SIZE as usize];
        debug!("pflash {}: erase block at {start:#x}", self.name);
        self.commit(start, &erased, STATUS_ERASE_ERROR);
    }

    fn start_buffer(&mut self, start: u64, value: u64) {
        // Both chips get a count; they act together, so chip 0's decides.
        let words = (value & 0xFFFF) + 1;
        if words * BANK_WIDTH > WRITE_BUFFER_SIZE {
            self.sequence_error(start, value);
            return;
        }
        let window_start = start - start % WRITE_BUFFER_SIZE;
        let window_len = WRITE_BUFFER_SIZE.min(BANK_SIZE - window_start) as usize;
        let mut bytes = vec![0; window_len];
        self.read_array(window_start, &mut bytes);
        let staged = StagedWrite {
            window_start,
            bytes,
            dirty: None,
        };
        self.set_mode(Mode::BufferData {
            staged,
            remaining: words,
        });
    }

    fn buffer_data(&mut self, mut staged: StagedWrite, remaining: u64, offset: u64, data: &[u8]) {
        let relative = offset
            .checked_sub(staged.window_start)
            .and_then(|r| usize::try_from(r).ok());
        let range = relative
            .and_then(|r| Some((r, r.checked_add(data.len())?)))
            .filter(|&(_, end)| end <= staged.bytes.len());
        let Some((lo, hi)) = range else {
            // Data outside the buffer window: the whole write is aborted.
            self.sequence_error(offset, le_value(data).unwrap_or(0));
            return;
        };
        staged.bytes[lo..hi].copy_from_slice(data);
        staged.dirty = Some(match staged.dirty {
            Some((a, b)) => (a.min(lo), b.max(hi)),
            None => (lo, hi),
        });
        let remaining = remaining - 1;
        let mode = if remaining == 0 {
            Mode::BufferConfirm { staged }
        } else {
            Mode::BufferData { staged, remaining }
        };
        self.set_mode(mode);
    }

    fn confirm_buffer(&mut self, staged: StagedWrite) {
        self.set_mode(Mode::ReadStatus);
        if let Some((lo, hi)) = staged.dirty {
            let offset = staged.window_start + lo as u64;
            self.commit(offset, &staged.bytes[lo..hi], STATUS_PROGRAM_ERROR);
        }
    }

    /// A write in one of the modes that accept a new command.
    fn command(&mut self, offset: u64, value: u64) {
        match value as u8 {
            0xFF | 0xF0 => self.set_mode(Mode::ReadArray),
            0x70 => self.set_mode(Mode::ReadStatus),
            0x50 => self.status = STATUS_READY,
            0x90 => self.set_mode(Mode::ReadId),
            0x98 => self.set_mode(Mode::Query),
            0x40 | 0x10 => self.set_mode(Mode::ProgramSetup),
            0x20 => self.set_mode(Mode::EraseSetup),
            0x60 => self.set_mode(Mode::LockSetup),
            0xE8 => self.set_mode(Mode::BufferCount { start: offset }),
            // Suspend and resume: nothing is ever in progress.
            0xB0 | 0xD0 => {}
            _ => self.sequence_error(offset, value),
        }
    }
}

impl MmioDevice for Pflash {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let in_bank = offset
            .checked_add(data.len() as u64)
            .is_some_and(|end| end <= BANK_SIZE);
        if !in_bank || le_value(data).is_none() {
            warn_limited!(
                self.warnings.bad_access,
                "pflash {}: bad read of {} bytes at {offset:#x}",
                self.name,
                data.len()
            );
            data.fill(0);
            return;
        }
        match self.mode {
            Mode::ReadArray => {
                self.read_array(offset, data);
            }
            Mode::ReadId => cfi::fill_replicated(offset, data, cfi::id_word),
            Mode::Query => cfi::fill_replicated(offset, data, cfi::query_word),
            _ => {
                let status = u16::from(self.status);
                cfi::fill_replicated(offset, data, |_| status);
            }
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let in_bank = offset
            .checked_add(data.len() as u64)
            .is_some_and(|end| end <= BANK_SIZE);
        let Some(value) = le_value(data).filter(|_| in_bank) else {
            warn_limited!(
                self.warnings.bad_access,
                "pflash {}: bad write of {} bytes at {offset:#x}",
                self.name,
                data.len()
            );
            return;
        };
        if matches!(self.access, BankAccess::ReadOnly) {
            warn_limited!(
                self.warnings.read_only_write,
                "pflash {}: guest wrote {value:#x} at {offset:#x} of a read-only bank; ignored",
                self.name
            );
            return;
        }
        trace!(
            "pflash {}: write {value:#x} at {offset:#x} in {}",
            self.name,
            self.mode_name()
        );
        match std::mem::replace(&mut self.mode, Mode::ReadStatus) {
            mode @ (Mode::ReadArray | Mode::ReadStatus | Mode::ReadId | Mode::Query) => {
                // Put the old mode back without a ROMD transition, then decode.
                self.mode = mode;
                self.command(offset, value);
            }
            Mode::ProgramSetup => {
                self.set_mode(Mode::ReadStatus);
                self.commit(offset, data, STATUS_PROGRAM_ERROR);
            }
            Mode::EraseSetup => {
                self.set_mode(Mode::ReadStatus);
                if value as u8 == 0xD0 {
                    self.erase_block(offset);
                } else {
                    self.sequence_error(offset, value);
                }
            }
            Mode::LockSetup => {
                self.set_mode(Mode::ReadStatus);
                if !matches!(value as u8, 0xD0 | 0x01 | 0x2F) {
                    self.sequence_error(offset, value);
                }
            }
            Mode::BufferCount { start } => self.start_buffer(start, value),
            Mode::BufferData { staged, remaining } => {
                self.buffer_data(staged, remaining, offset, data)
            }
            Mode::BufferConfirm { staged } => {
                if value as u8 == 0xD0 {
                    self.confirm_buffer(staged);
                } else {
                    self.sequence_error(offset, value);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
