//! The MMIO bus: routes a vCPU's MMIO exit to the device whose range holds the
//! address.
//!
//! Locking: the bus itself is immutable once the machine is built (shared as
//! `Arc<MmioBus>`, no lock). Each device sits behind its own mutex, which a vCPU
//! thread takes for exactly one access, and never across `KVM_RUN`. A device's
//! access may take the iothread context's lock after its own (the pflash's
//! synchronous write does); nothing takes a device lock while holding the
//! context lock except the device's own iothread handlers, which never hold
//! another device's lock. So the order is: device -> context.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use devices::mmio::{MmioDevice, RateLimitedWarn};
use devices::warn_limited;

pub type SharedDevice = Arc<Mutex<dyn MmioDevice + Send>>;

struct Entry {
    size: u64,
    name: &'static str,
    device: SharedDevice,
}

#[derive(Debug, thiserror::Error)]
#[error("MMIO range {name} at {base:#x}+{size:#x} overlaps {other}")]
pub struct OverlapError {
    name: &'static str,
    base: u64,
    size: u64,
    other: &'static str,
}

#[derive(Default)]
pub struct MmioBus {
    /// Keyed by base address; ranges never overlap.
    devices: BTreeMap<u64, Entry>,
    unmapped: RateLimitedWarn,
}

impl MmioBus {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(
        &mut self,
        name: &'static str,
        base: u64,
        size: u64,
        device: SharedDevice,
    ) -> Result<(), OverlapError> {
        let end = base + size;
        let clash = self
            .devices
            .range(..end)
            .next_back()
            .filter(|(&b, e)| b + e.size > base);
        if let Some((_, other)) = clash {
            return Err(OverlapError {
                name,
                base,
                size,
                other: other.name,
            });
        }
        self.devices.insert(base, Entry { size, name, device });
        Ok(())
    }

    fn find(&self, addr: u64, len: usize) -> Option<(u64, &Entry)> {
        let (&base, entry) = self.devices.range(..=addr).next_back()?;
        let end = addr.checked_add(len as u64)?;
        (end <= base + entry.size).then_some((base, entry))
    }

    /// A guest read; an address no device claims reads as zeros (logged,
    /// rate-limited) and the guest runs on.
    pub fn read(&self, addr: u64, data: &mut [u8]) {
        match self.find(addr, data.len()) {
            Some((base, entry)) => lock(&entry.device).read(addr - base, data),
            None => {
                data.fill(0);
                warn_limited!(
                    self.unmapped,
                    "guest read of {} bytes at unmapped address {addr:#x}",
                    data.len()
                );
            }
        }
    }

    /// A guest write; an address no device claims is ignored (logged).
    pub fn write(&self, addr: u64, data: &[u8]) {
        match self.find(addr, data.len()) {
            Some((base, entry)) => lock(&entry.device).write(addr - base, data),
            None => warn_limited!(
                self.unmapped,
                "guest write of {} bytes at unmapped address {addr:#x} ignored",
                data.len()
            ),
        }
    }

    /// How many accesses hit no device.
    pub fn unmapped_accesses(&self) -> u64 {
        self.unmapped.count()
    }
}

/// A poisoned device lock means a device panicked mid-access; its state is
/// still the best we have, and the guest deserves to run on.
fn lock(device: &SharedDevice) -> std::sync::MutexGuard<'_, dyn MmioDevice + Send + 'static> {
    device.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder {
        writes: Vec<(u64, Vec<u8>)>,
    }

    impl MmioDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8 + 1);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.writes.push((offset, data.to_vec()));
        }
    }

    #[test]
    fn access_is_routed_with_offset_from_device_base() {
        let dev = Arc::new(Mutex::new(Recorder::default()));
        let mut bus = MmioBus::new();
        bus.insert("rec", 0x1000, 0x100, dev.clone()).unwrap();
        bus.write(0x1010, &[1, 2, 3, 4]);
        let mut data = [0u8; 4];
        bus.read(0x1004, &mut data);
        assert_eq!(data, [5; 4]);
        assert_eq!(dev.lock().unwrap().writes, vec![(0x10, vec![1, 2, 3, 4])]);
    }

    #[test]
    fn unmapped_and_straddling_accesses_are_counted_not_fatal() {
        let dev = Arc::new(Mutex::new(Recorder::default()));
        let mut bus = MmioBus::new();
        bus.insert("rec", 0x1000, 0x100, dev.clone()).unwrap();
        let mut data = [0xffu8; 8];
        bus.read(0x2000, &mut data);
        assert_eq!(data, [0; 8]);
        bus.write(0x10fc, &[0; 8]); // crosses the end of the device
        bus.write(u64::MAX - 2, &[0; 8]); // address overflow
        assert_eq!(bus.unmapped_accesses(), 3);
        assert!(dev.lock().unwrap().writes.is_empty());
    }

    #[test]
    fn overlapping_ranges_are_refused() {
        let mut bus = MmioBus::new();
        let a = Arc::new(Mutex::new(Recorder::default()));
        bus.insert("a", 0x1000, 0x100, a.clone()).unwrap();
        let err = bus.insert("b", 0x10f0, 0x100, a.clone()).unwrap_err();
        assert!(err.to_string().contains("overlaps a"));
        bus.insert("c", 0x1100, 0x100, a).unwrap();
    }
}
