//! Interrupt lines from platform devices to the interrupt controller.
//!
//! Owns: the [`IrqLine`] trait. The VMM implements it with `KVM_IRQ_LINE` on the
//! in-kernel GIC (SPI number fixed when the device is built); tests use
//! [`RecordingIrqLine`], which keeps every level it was given.
//!
//! A device calls `set_level` while holding its own lock; implementations must
//! therefore never take a device lock themselves.

use std::sync::Mutex;

/// A level-triggered interrupt line.
pub trait IrqLine: Send + Sync {
    /// Drives the line high (asserted) or low.
    fn set_level(&self, high: bool);
}

/// Test double: records every level set, in order.
#[derive(Debug, Default)]
pub struct RecordingIrqLine {
    levels: Mutex<Vec<bool>>,
}

impl RecordingIrqLine {
    /// A line that has never been driven.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every level set so far, oldest first.
    pub fn levels(&self) -> Vec<bool> {
        self.levels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The last level set, or `false` (low) if never driven.
    pub fn is_high(&self) -> bool {
        self.levels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .last()
            .copied()
            .unwrap_or(false)
    }
}

impl IrqLine for RecordingIrqLine {
    fn set_level(&self, high: bool) {
        self.levels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(high);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recording_line_keeps_levels_in_order() {
        let line = RecordingIrqLine::new();
        assert!(!line.is_high());
        line.set_level(true);
        line.set_level(false);
        line.set_level(true);
        assert_eq!(line.levels(), vec![true, false, true]);
        assert!(line.is_high());
    }
}
