//! `hangar selftest`: proves that this host can run an aarch64 KVM guest at all.

use std::fmt;

/// What the self-test observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelftestReport {
    pub mmio_addr: u64,
    pub mmio_data: Vec<u8>,
}

impl fmt::Display for SelftestReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut value = [0u8; 8];
        let n = self.mmio_data.len().min(8);
        value[..n].copy_from_slice(&self.mmio_data[..n]);
        write!(
            f,
            "MMIO write: addr={:#010x} len={} value={:#x}",
            self.mmio_addr,
            self.mmio_data.len(),
            u64::from_le_bytes(value)
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SelftestError {
    #[cfg(target_arch = "aarch64")]
    #[error("KVM smoke guest failed")]
    Smoke(#[from] crate::arch::aarch64::smoke::SmokeError),
    #[error("hangar runs aarch64 guests with KVM and needs an aarch64 host (this is {0}); on x86_64 use the bench: `cargo xtask console`")]
    WrongHost(&'static str),
}

/// Runs the smallest real guest: one vCPU storing a value to an MMIO address.
pub fn run() -> Result<SelftestReport, SelftestError> {
    #[cfg(target_arch = "aarch64")]
    {
        let store = crate::arch::aarch64::smoke::run()?;
        Ok(SelftestReport {
            mmio_addr: store.addr,
            mmio_data: store.data,
        })
    }
    #[cfg(not(target_arch = "aarch64"))]
    {
        Err(SelftestError::WrongHost(std::env::consts::ARCH))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_prints_address_width_and_little_endian_value() {
        let report = SelftestReport {
            mmio_addr: 0x0900_0000,
            mmio_data: vec![0x0d, 0xf0, 0xfe, 0xca],
        };
        assert_eq!(
            report.to_string(),
            "MMIO write: addr=0x09000000 len=4 value=0xcafef00d"
        );
    }
}
