//! ARM PrimeCell real-time clock (PL031): wall-clock seconds for the guest.
//!
//! Owns: the MMIO face of the RTC. The register model (data, match, load,
//! control, interrupt registers and the PrimeCell IDs) is vm-superio's `Rtc`;
//! this file adapts it to [`MmioDevice`]: 32-bit registers, narrower reads see
//! the register's bytes, anything else is ignored with a rate-limited warning.
//! The alarm (match) interrupt is not implemented by vm-superio, so the device
//! has no interrupt line; neither EDK2 nor Linux needs it to keep time.

use vm_superio::rtc_pl031::NoEvents;
use vm_superio::Rtc;

use crate::mmio::{le_value, put_le_value, MmioDevice, RateLimitedWarn};
use crate::warn_limited;

/// Bytes of register space (one 4 KiB page).
pub const PL031_SIZE: u64 = 0x1000;

/// One PL031 RTC.
pub struct Pl031 {
    rtc: Rtc<NoEvents>,
    bad_access: RateLimitedWarn,
}

impl Default for Pl031 {
    fn default() -> Self {
        Self::new()
    }
}

impl Pl031 {
    /// An RTC counting host wall-clock seconds since the Unix epoch.
    pub fn new() -> Self {
        Self {
            rtc: Rtc::new(),
            bad_access: RateLimitedWarn::new(),
        }
    }

    fn register_offset(offset: u64, len: usize) -> Option<u16> {
        let shift = offset & 3;
        let fits = len <= 4 && shift + len as u64 <= 4 && offset < PL031_SIZE;
        fits.then(|| (offset - shift) as u16)
    }
}

impl MmioDevice for Pl031 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let Some(register) = Self::register_offset(offset, data.len()) else {
            warn_limited!(
                self.bad_access,
                "pl031: bad read of {} bytes at {offset:#x}",
                data.len()
            );
            data.fill(0);
            return;
        };
        let mut word = [0u8; 4];
        self.rtc.read(register, &mut word);
        put_le_value(
            data,
            u64::from(u32::from_le_bytes(word)) >> ((offset & 3) * 8),
        );
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match le_value(data).filter(|_| data.len() == 4 && offset & 3 == 0 && offset < PL031_SIZE) {
            Some(value) => self.rtc.write(offset as u16, &(value as u32).to_le_bytes()),
            None => warn_limited!(
                self.bad_access,
                "pl031: bad write of {} bytes at {offset:#x}",
                data.len()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{SystemTime, UNIX_EPOCH};

    fn read32(rtc: &mut Pl031, offset: u64) -> u32 {
        let mut data = [0u8; 4];
        rtc.read(offset, &mut data);
        u32::from_le_bytes(data)
    }

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    #[test]
    fn data_register_counts_wall_clock_seconds() {
        let mut rtc = Pl031::new();
        let seconds = u64::from(read32(&mut rtc, 0));
        assert!(seconds.abs_diff(now()) <= 2, "{seconds} vs {}", now());
    }

    #[test]
    fn load_register_sets_the_time() {
        let mut rtc = Pl031::new();
        rtc.write(0x8, &1_000_000u32.to_le_bytes());
        let seconds = read32(&mut rtc, 0);
        assert!((1_000_000..1_000_003).contains(&seconds));
    }

    #[test]
    fn primecell_ids_identify_a_pl031() {
        let mut rtc = Pl031::new();
        let ids: Vec<u32> = (0..8).map(|i| read32(&mut rtc, 0xFE0 + i * 4)).collect();
        assert_eq!(ids, vec![0x31, 0x10, 0x04, 0x00, 0x0D, 0xF0, 0x05, 0xB1]);
    }

    #[test]
    fn bad_accesses_are_ignored() {
        let mut rtc = Pl031::new();
        let mut wide = [0xEEu8; 8];
        rtc.read(0, &mut wide);
        assert_eq!(wide, [0; 8]);
        let mut word = [0xEEu8; 4];
        rtc.read(u64::MAX - 1, &mut word);
        assert_eq!(word, [0; 4]);
        rtc.write(0x8, &[1, 2]);
        rtc.write(0x9, &[0; 4]);
        rtc.write(u64::MAX, &[0; 4]);
        let seconds = u64::from(read32(&mut rtc, 0));
        assert!(seconds.abs_diff(now()) <= 2);
    }
}
