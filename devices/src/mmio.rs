//! The MMIO device contract between the VMM's bus and every platform device.
//!
//! Owns: the [`MmioDevice`] trait and the access-width helpers devices share, plus
//! [`RateLimitedWarn`], the counter that keeps a hostile guest from flooding the log.
//!
//! The VMM bus holds each device as `Arc<Mutex<dyn MmioDevice + Send>>`, takes the
//! device's lock for exactly one access and never holds it across `KVM_RUN`.
//! Offsets are relative to the device's base address. Accesses may be 1, 2, 4 or 8
//! bytes wide; a device answers an offset or width it does not implement with a
//! rate-limited `warn!` and ignores the write or returns zeros. It never panics.

use std::sync::atomic::{AtomicU64, Ordering};

/// A device on the MMIO bus.
pub trait MmioDevice {
    /// Guest read of `data.len()` bytes at `offset` from the device base. The device
    /// fills all of `data` (zeros for anything it does not implement).
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Guest write of `data` at `offset` from the device base.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// Reads a little-endian value of 1, 2, 4 or 8 bytes; `None` for any other width.
pub fn le_value(data: &[u8]) -> Option<u64> {
    match data.len() {
        1 | 2 | 4 | 8 => {
            let mut bytes = [0u8; 8];
            bytes[..data.len()].copy_from_slice(data);
            Some(u64::from_le_bytes(bytes))
        }
        _ => None,
    }
}

/// Stores the low `data.len()` bytes of `value` little-endian into `data`
/// (any width up to 8; longer buffers get zeros past the eighth byte).
pub fn put_le_value(data: &mut [u8], value: u64) {
    let bytes = value.to_le_bytes();
    for (i, byte) in data.iter_mut().enumerate() {
        *byte = bytes.get(i).copied().unwrap_or(0);
    }
}

/// Counts occurrences of one kind of guest misbehaviour and says which of them
/// deserve a log line: the first 10, then every 1024th. Cheap and lock-free, so a
/// device can keep one per kind of warning as a plain field or a `static`.
#[derive(Debug, Default)]
pub struct RateLimitedWarn {
    count: AtomicU64,
}

impl RateLimitedWarn {
    /// A counter that has seen nothing yet.
    pub const fn new() -> Self {
        Self {
            count: AtomicU64::new(0),
        }
    }

    /// Records one occurrence; true if this one should be logged.
    pub fn should_log(&self) -> bool {
        // Relaxed: the counter orders nothing else, it only thins the log.
        let seen = self.count.fetch_add(1, Ordering::Relaxed);
        seen < 10 || seen & 1023 == 0
    }

    /// How many occurrences have been recorded (logged or not).
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

/// `warn!` through a [`RateLimitedWarn`] counter: logs only when the counter says so.
#[macro_export]
macro_rules! warn_limited {
    ($limiter:expr, $($arg:tt)+) => {
        if $limiter.should_log() {
            log::warn!("{} (seen {} times)", format_args!($($arg)+), $limiter.count());
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn le_value_accepts_only_natural_widths() {
        assert_eq!(le_value(&[0x34, 0x12]), Some(0x1234));
        assert_eq!(
            le_value(&[1, 0, 0, 0, 0, 0, 0, 0x80]),
            Some(0x8000_0000_0000_0001)
        );
        assert_eq!(le_value(&[1, 2, 3]), None);
        assert_eq!(le_value(&[]), None);
    }

    #[test]
    fn put_le_value_truncates_and_zero_fills() {
        let mut two = [0u8; 2];
        put_le_value(&mut two, 0xAABBCCDD);
        assert_eq!(two, [0xDD, 0xCC]);
        let mut ten = [0xFFu8; 10];
        put_le_value(&mut ten, 1);
        assert_eq!(ten, [1, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn platform_devices_fit_the_bus_slot_type() {
        use std::sync::{Arc, Mutex};
        let rtc: Arc<Mutex<dyn MmioDevice + Send>> =
            Arc::new(Mutex::new(crate::pl031::Pl031::new()));
        let uart: Arc<Mutex<dyn MmioDevice + Send>> =
            Arc::new(Mutex::new(crate::pl011::Pl011::new(
                Box::new(std::io::sink()),
                Arc::new(crate::irq::RecordingIrqLine::new()),
            )));
        let flash: Arc<Mutex<dyn MmioDevice + Send>> = Arc::new(Mutex::new(
            crate::pflash::Pflash::new("code", &[0xAB; 4], crate::pflash::BankAccess::ReadOnly)
                .unwrap(),
        ));
        let mut word = [0u8; 4];
        flash.lock().unwrap().read(0, &mut word);
        assert_eq!(word, [0xAB; 4]);
        uart.lock().unwrap().read(0xFE0, &mut word);
        assert_eq!(word, [0x11, 0, 0, 0]);
        rtc.lock().unwrap().read(0xFE0, &mut word);
        assert_eq!(word, [0x31, 0, 0, 0]);
    }

    #[test]
    fn rate_limiter_logs_first_ten_then_sparsely() {
        let limiter = RateLimitedWarn::new();
        let logged = (0..5000).filter(|_| limiter.should_log()).count();
        // 0..10, then 1024, 2048, 3072, 4096.
        assert_eq!(logged, 14);
        assert_eq!(limiter.count(), 5000);
    }
}
