//! ARM PrimeCell UART (PL011): the guest's serial console.
//!
//! Owns: the UART's registers, its receive FIFO, its interrupt state and the
//! level of its interrupt line. It does not own where bytes come from or go to:
//! output goes to any `Write`, input is pushed by the VMM with
//! [`Pl011::enqueue_input`] (see [`crate::console`] for the backends).
//!
//! Registers follow the PL011 Technical Reference Manual (ARM DDI 0183): data,
//! receive status/error clear, flags, IrDA low-power, integer and fractional baud
//! rate, line control, control, FIFO level select, interrupt mask, raw and masked
//! status, interrupt clear, DMA control, and the peripheral/PrimeCell ID registers
//! at 0xFE0–0xFFC that Linux's AMBA bus reads to bind its driver. Baud rate, line
//! settings and DMA are stored and read back but change nothing.
//!
//! Model choices:
//! * Transmission is instantaneous: the transmit FIFO is always empty (TXFE set,
//!   BUSY and TXFF clear) and every data write raises the transmit interrupt, which
//!   stays raised until cleared through ICR.
//! * The receive FIFO holds 16 characters (1 when LCR_H.FEN is clear). The receive
//!   interrupt follows the fill level against the IFLS trigger; the receive-timeout
//!   interrupt is raised while the FIFO holds characters below the trigger (real
//!   hardware waits 32 bit periods; a guest cannot tell the difference).
//! * Loopback (CR.LBE) sends transmitted bytes to the receive FIFO instead of the
//!   output; a full FIFO then sets the overrun error (RSR.OE, OE interrupt).
//! * Output blocks: a slow console (a socket nobody reads) stalls the writing
//!   vCPU, as a real UART with flow control would.
//! * Input is never dropped: `enqueue_input` takes only what fits and the VMM keeps
//!   the rest; the `rx_space` callback tells it when the guest has made room.
//!
//! Bad offsets and widths are ignored (reads return zero) with a rate-limited
//! warning. Locking: the VMM holds the UART as `Arc<Mutex<Pl011>>`; the IRQ line and
//! the `rx_space` callback are called with that lock held and must not take it.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::Arc;

use crate::irq::IrqLine;
use crate::mmio::{le_value, put_le_value, MmioDevice, RateLimitedWarn};
use crate::warn_limited;

/// Receive FIFO depth with FIFOs enabled.
pub const FIFO_DEPTH: usize = 16;

const UARTDR: u64 = 0x000;
const UARTRSR: u64 = 0x004;
const UARTFR: u64 = 0x018;
const UARTILPR: u64 = 0x020;
const UARTIBRD: u64 = 0x024;
const UARTFBRD: u64 = 0x028;
const UARTLCR_H: u64 = 0x02C;
const UARTCR: u64 = 0x030;
const UARTIFLS: u64 = 0x034;
const UARTIMSC: u64 = 0x038;
const UARTRIS: u64 = 0x03C;
const UARTMIS: u64 = 0x040;
const UARTICR: u64 = 0x044;
const UARTDMACR: u64 = 0x048;
const ID_FIRST: u64 = 0xFE0;
const ID_LAST: u64 = 0xFFC;

/// Peripheral ID (0xFE0–0xFEC) then PrimeCell ID (0xFF0–0xFFC), one byte per
/// register: part 0x011, designer ARM, revision 1, component class 0xB1.
const ID_REGISTERS: [u8; 8] = [0x11, 0x10, 0x14, 0x00, 0x0D, 0xF0, 0x05, 0xB1];

/// Flag register bits.
pub mod flags {
    /// UART busy transmitting.
    pub const BUSY: u32 = 1 << 3;
    /// Receive FIFO empty.
    pub const RXFE: u32 = 1 << 4;
    /// Transmit FIFO full.
    pub const TXFF: u32 = 1 << 5;
    /// Receive FIFO full.
    pub const RXFF: u32 = 1 << 6;
    /// Transmit FIFO empty.
    pub const TXFE: u32 = 1 << 7;
}

/// Interrupt bits, shared by IMSC, RIS, MIS and ICR.
pub mod interrupts {
    /// Receive (FIFO at or above its trigger level).
    pub const RX: u32 = 1 << 4;
    /// Transmit (FIFO at or below its trigger level).
    pub const TX: u32 = 1 << 5;
    /// Receive timeout (characters waiting below the trigger).
    pub const RT: u32 = 1 << 6;
    /// Overrun error.
    pub const OE: u32 = 1 << 10;
    /// Every interrupt bit.
    pub const ALL: u32 = 0x7FF;
}

const LCR_H_FEN: u32 = 1 << 4;
const CR_LBE: u32 = 1 << 7;
const RSR_OVERRUN: u32 = 1 << 3;
const CR_RESET: u32 = 0x300;
const IFLS_RESET: u32 = 0x12;

/// Register state that a reset puts back.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Registers {
    ilpr: u32,
    ibrd: u32,
    fbrd: u32,
    lcr_h: u32,
    cr: u32,
    ifls: u32,
    imsc: u32,
    ris: u32,
    dmacr: u32,
    rsr: u32,
}

impl Default for Registers {
    fn default() -> Self {
        Self {
            ilpr: 0,
            ibrd: 0,
            fbrd: 0,
            lcr_h: 0,
            cr: CR_RESET,
            ifls: IFLS_RESET,
            imsc: 0,
            ris: 0,
            dmacr: 0,
            rsr: 0,
        }
    }
}

#[derive(Debug, Default)]
struct Warnings {
    bad_access: RateLimitedWarn,
    output: RateLimitedWarn,
}

/// One PL011 UART.
pub struct Pl011 {
    regs: Registers,
    rx: VecDeque<u8>,
    /// Set when `enqueue_input` could not take everything; cleared when the
    /// guest makes room and `rx_space` has been called.
    input_waiting: bool,
    irq: Arc<dyn IrqLine>,
    irq_high: bool,
    output: Box<dyn Write + Send>,
    rx_space: Option<Box<dyn Fn() + Send>>,
    warnings: Warnings,
}

impl Pl011 {
    /// A UART in its reset state, writing to `output` and signalling `irq`.
    pub fn new(output: Box<dyn Write + Send>, irq: Arc<dyn IrqLine>) -> Self {
        Self {
            regs: Registers::default(),
            rx: VecDeque::with_capacity(FIFO_DEPTH),
            input_waiting: false,
            irq,
            irq_high: false,
            output,
            rx_space: None,
            warnings: Warnings::default(),
        }
    }

    /// Installs the callback called when the guest frees receive-FIFO space after
    /// [`Pl011::enqueue_input`] could not take everything (e.g. a write to an
    /// eventfd that wakes the VMM's input reader). Called with the UART's lock held.
    pub fn set_rx_space_callback(&mut self, callback: Box<dyn Fn() + Send>) {
        self.rx_space = Some(callback);
    }

    /// Back to the reset state: registers reset, FIFO emptied, line low.
    pub fn reset(&mut self) {
        self.regs = Registers::default();
        self.rx.clear();
        self.update_irq();
        self.notify_rx_space();
    }

    fn depth(&self) -> usize {
        if self.regs.lcr_h & LCR_H_FEN != 0 {
            FIFO_DEPTH
        } else {
            1
        }
    }

    /// Free places in the receive FIFO.
    pub fn input_space(&self) -> usize {
        self.depth().saturating_sub(self.rx.len())
    }

    /// Queues guest input; returns how many bytes of `bytes` were taken (the rest
    /// did not fit and must be offered again after the `rx_space` callback).
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        let taken = bytes.len().min(self.input_space());
        self.rx.extend(&bytes[..taken]);
        if taken < bytes.len() {
            self.input_waiting = true;
        }
        if taken > 0 {
            self.update_rx_interrupts();
        }
        taken
    }

    /// The receive trigger level in characters (IFLS bits 5:3).
    fn rx_trigger(&self) -> usize {
        if self.regs.lcr_h & LCR_H_FEN == 0 {
            return 1;
        }
        let eighths = match (self.regs.ifls >> 3) & 7 {
            0 => 1,
            1 => 2,
            2 => 4,
            3 => 6,
            _ => 7,
        };
        FIFO_DEPTH * eighths / 8
    }

    fn update_rx_interrupts(&mut self) {
        let level = self.rx.len();
        self.regs.ris &= !(interrupts::RX | interrupts::RT);
        if level >= self.rx_trigger() {
            self.regs.ris |= interrupts::RX;
        } else if level > 0 {
            self.regs.ris |= interrupts::RT;
        }
        self.update_irq();
    }

    fn update_irq(&mut self) {
        let high = self.regs.ris & self.regs.imsc != 0;
        if high != self.irq_high {
            self.irq_high = high;
            self.irq.set_level(high);
        }
    }

    fn notify_rx_space(&mut self) {
        if self.input_waiting && self.input_space() > 0 {
            self.input_waiting = false;
            if let Some(callback) = &self.rx_space {
                callback();
            }
        }
    }

    fn flags(&self) -> u32 {
        let mut value = flags::TXFE;
        if self.rx.is_empty() {
            value |= flags::RXFE;
        }
        if self.rx.len() >= self.depth() {
            value |= flags::RXFF;
        }
        value
    }

    fn read_data(&mut self) -> u32 {
        let Some(byte) = self.rx.pop_front() else {
            return 0;
        };
        self.update_rx_interrupts();
        self.notify_rx_space();
        u32::from(byte)
    }

    fn transmit(&mut self, byte: u8) {
        if self.regs.cr & CR_LBE != 0 {
            self.loop_back(byte);
            return;
        }
        let result = self
            .output
            .write_all(&[byte])
            .and_then(|()| self.output.flush());
        if let Err(error) = result {
            warn_limited!(
                self.warnings.output,
                "pl011: console output failed: {error}"
            );
        }
        self.regs.ris |= interrupts::TX;
        self.update_irq();
    }

    /// Loopback mode: the transmitted byte is received instead of sent.
    fn loop_back(&mut self, byte: u8) {
        if self.input_space() > 0 {
            self.rx.push_back(byte);
        } else {
            self.regs.rsr |= RSR_OVERRUN;
            self.regs.ris |= interrupts::OE;
        }
        self.regs.ris |= interrupts::TX;
        self.update_rx_interrupts();
    }

    fn read_register(&mut self, reg: u64) -> Option<u32> {
        Some(match reg {
            UARTDR => self.read_data(),
            UARTRSR => self.regs.rsr,
            UARTFR => self.flags(),
            UARTILPR => self.regs.ilpr,
            UARTIBRD => self.regs.ibrd,
            UARTFBRD => self.regs.fbrd,
            UARTLCR_H => self.regs.lcr_h,
            UARTCR => self.regs.cr,
            UARTIFLS => self.regs.ifls,
            UARTIMSC => self.regs.imsc,
            UARTRIS => self.regs.ris,
            UARTMIS => self.regs.ris & self.regs.imsc,
            UARTDMACR => self.regs.dmacr,
            ID_FIRST..=ID_LAST => u32::from(ID_REGISTERS[((reg - ID_FIRST) / 4) as usize]),
            _ => return None,
        })
    }

    fn write_register(&mut self, reg: u64, value: u32) -> bool {
        match reg {
            UARTDR => self.transmit(value as u8),
            UARTRSR => self.regs.rsr = 0,
            UARTILPR => self.regs.ilpr = value & 0xFF,
            UARTIBRD => self.regs.ibrd = value & 0xFFFF,
            UARTFBRD => self.regs.fbrd = value & 0x3F,
            UARTLCR_H => {
                self.regs.lcr_h = value & 0xFF;
                self.update_rx_interrupts();
                self.notify_rx_space();
            }
            UARTCR => self.regs.cr = value & 0xFF87,
            UARTIFLS => {
                self.regs.ifls = value & 0x3F;
                self.update_rx_interrupts();
            }
            UARTIMSC => {
                self.regs.imsc = value & interrupts::ALL;
                self.update_irq();
            }
            UARTICR => {
                self.regs.ris &= !value;
                self.update_irq();
            }
            UARTDMACR => self.regs.dmacr = value & 7,
            _ => return false,
        }
        true
    }
}

impl MmioDevice for Pl011 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let shift = offset & 3;
        let value = (data.len() <= 4 && shift + data.len() as u64 <= 4)
            .then(|| self.read_register(offset - shift))
            .flatten();
        match value {
            Some(value) => put_le_value(data, u64::from(value) >> (shift * 8)),
            None => {
                warn_limited!(
                    self.warnings.bad_access,
                    "pl011: bad read of {} bytes at {offset:#x}",
                    data.len()
                );
                data.fill(0);
            }
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let value = le_value(data).filter(|_| offset & 3 == 0 && data.len() <= 4);
        let done = value.is_some_and(|value| self.write_register(offset, value as u32));
        if !done {
            warn_limited!(
                self.warnings.bad_access,
                "pl011: bad write of {} bytes at {offset:#x}",
                data.len()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::irq::RecordingIrqLine;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    /// Output shared with the test.
    #[derive(Clone, Default)]
    struct SharedOutput(Arc<Mutex<Vec<u8>>>);

    impl Write for SharedOutput {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn uart() -> (Pl011, SharedOutput, Arc<RecordingIrqLine>) {
        let output = SharedOutput::default();
        let irq = Arc::new(RecordingIrqLine::new());
        let uart = Pl011::new(Box::new(output.clone()), irq.clone());
        (uart, output, irq)
    }

    fn read32(uart: &mut Pl011, offset: u64) -> u32 {
        let mut data = [0u8; 4];
        uart.read(offset, &mut data);
        u32::from_le_bytes(data)
    }

    fn write32(uart: &mut Pl011, offset: u64, value: u32) {
        uart.write(offset, &value.to_le_bytes());
    }

    #[test]
    fn reset_values_match_the_manual() {
        let (mut uart, _, _) = uart();
        assert_eq!(read32(&mut uart, UARTFR), flags::TXFE | flags::RXFE);
        assert_eq!(read32(&mut uart, UARTCR), 0x300);
        assert_eq!(read32(&mut uart, UARTIFLS), 0x12);
        assert_eq!(read32(&mut uart, UARTIMSC), 0);
    }

    #[test]
    fn primecell_id_registers_identify_a_pl011() {
        let (mut uart, _, _) = uart();
        let ids: Vec<u32> = (0..8).map(|i| read32(&mut uart, 0xFE0 + i * 4)).collect();
        assert_eq!(ids, vec![0x11, 0x10, 0x14, 0x00, 0x0D, 0xF0, 0x05, 0xB1]);
    }

    #[test]
    fn data_writes_reach_the_output_and_raise_tx_interrupt() {
        let (mut uart, output, irq) = uart();
        write32(&mut uart, UARTIMSC, interrupts::TX);
        uart.write(UARTDR, b"h");
        write32(&mut uart, UARTDR, u32::from(b'i'));
        assert_eq!(output.0.lock().unwrap().as_slice(), b"hi");
        assert!(irq.is_high());
        assert_eq!(read32(&mut uart, UARTMIS), interrupts::TX);
        write32(&mut uart, UARTICR, interrupts::TX);
        assert!(!irq.is_high());
        assert_eq!(read32(&mut uart, UARTRIS) & interrupts::TX, 0);
    }

    #[test]
    fn fifo_disabled_holds_one_character() {
        let (mut uart, _, _) = uart();
        assert_eq!(uart.enqueue_input(b"ab"), 1);
        assert_ne!(read32(&mut uart, UARTFR) & flags::RXFF, 0);
        assert_eq!(read32(&mut uart, UARTDR), u32::from(b'a'));
        assert_ne!(read32(&mut uart, UARTFR) & flags::RXFE, 0);
    }

    #[test]
    fn fifo_takes_sixteen_and_reports_the_rest_for_later() {
        let (mut uart, _, _) = uart();
        let woken = Arc::new(AtomicUsize::new(0));
        let counter = woken.clone();
        uart.set_rx_space_callback(Box::new(move || {
            counter.fetch_add(1, Ordering::SeqCst);
        }));
        write32(&mut uart, UARTLCR_H, LCR_H_FEN);
        let input: Vec<u8> = (0..20).collect();
        assert_eq!(uart.enqueue_input(&input), 16);
        assert_eq!(read32(&mut uart, UARTFR) & flags::RXFF, flags::RXFF);
        assert_eq!(woken.load(Ordering::SeqCst), 0);
        assert_eq!(read32(&mut uart, UARTDR), 0);
        assert_eq!(woken.load(Ordering::SeqCst), 1);
        assert_eq!(uart.enqueue_input(&input[16..]), 1);
        let drained: Vec<u32> = (0..16).map(|_| read32(&mut uart, UARTDR)).collect();
        assert_eq!(drained, (1..=16).collect::<Vec<u32>>());
        assert_ne!(read32(&mut uart, UARTFR) & flags::RXFE, 0);
    }

    #[test]
    fn rx_interrupt_follows_trigger_level_and_timeout_covers_the_rest() {
        let (mut uart, _, irq) = uart();
        write32(&mut uart, UARTLCR_H, LCR_H_FEN);
        write32(&mut uart, UARTIMSC, interrupts::RX | interrupts::RT);
        // IFLS reset: RX trigger at 1/2 = 8 characters.
        uart.enqueue_input(b"abc");
        assert_eq!(read32(&mut uart, UARTMIS), interrupts::RT);
        assert!(irq.is_high());
        uart.enqueue_input(b"defgh");
        assert_eq!(read32(&mut uart, UARTMIS), interrupts::RX);
        for _ in 0..8 {
            read32(&mut uart, UARTDR);
        }
        assert_eq!(read32(&mut uart, UARTMIS), 0);
        assert!(!irq.is_high());
    }

    #[test]
    fn masked_interrupts_keep_the_line_low() {
        let (mut uart, _, irq) = uart();
        uart.enqueue_input(b"x");
        assert_ne!(read32(&mut uart, UARTRIS), 0);
        assert!(!irq.is_high());
        assert!(irq.levels().is_empty());
    }

    #[test]
    fn registers_read_back_masked_values() {
        let (mut uart, _, _) = uart();
        write32(&mut uart, UARTIBRD, 0x12_0027);
        write32(&mut uart, UARTFBRD, 0xFF);
        write32(&mut uart, UARTCR, 0x301);
        write32(&mut uart, UARTDMACR, 0xFF);
        assert_eq!(read32(&mut uart, UARTIBRD), 0x0027);
        assert_eq!(read32(&mut uart, UARTFBRD), 0x3F);
        assert_eq!(read32(&mut uart, UARTCR), 0x301);
        assert_eq!(read32(&mut uart, UARTDMACR), 7);
    }

    #[test]
    fn narrow_reads_see_the_register_bytes() {
        let (mut uart, _, _) = uart();
        let mut byte = [0u8; 1];
        uart.read(UARTCR + 1, &mut byte);
        assert_eq!(byte, [0x03]);
    }

    #[test]
    fn bad_accesses_are_ignored() {
        let (mut uart, output, irq) = uart();
        let mut data = [0xEEu8; 8];
        uart.read(UARTFR, &mut data);
        assert_eq!(data, [0; 8]);
        let mut data = [0xEEu8; 4];
        uart.read(0x800, &mut data);
        assert_eq!(data, [0; 4]);
        uart.read(u64::MAX, &mut data);
        uart.write(UARTDR + 1, b"x");
        uart.write(UARTDR, &[b'x'; 8]);
        uart.write(0xFE0, &[1, 0, 0, 0]);
        assert!(output.0.lock().unwrap().is_empty());
        assert!(irq.levels().is_empty());
    }

    #[test]
    fn loopback_receives_what_is_sent_and_reports_overrun() {
        let (mut uart, output, _) = uart();
        write32(&mut uart, UARTCR, 0x301 | CR_LBE);
        write32(&mut uart, UARTDR, 0x41);
        assert!(output.0.lock().unwrap().is_empty());
        assert_eq!(read32(&mut uart, UARTFR) & flags::RXFE, 0);
        // FIFO disabled: one place, so the second byte overruns.
        write32(&mut uart, UARTDR, 0x42);
        assert_ne!(read32(&mut uart, UARTRIS) & interrupts::OE, 0);
        assert_eq!(read32(&mut uart, UARTRSR), RSR_OVERRUN);
        assert_eq!(read32(&mut uart, UARTDR), 0x41);
        write32(&mut uart, UARTRSR, 0);
        assert_eq!(read32(&mut uart, UARTRSR), 0);
    }

    #[test]
    fn reset_clears_fifo_and_lowers_the_line() {
        let (mut uart, _, irq) = uart();
        write32(&mut uart, UARTIMSC, interrupts::RT | interrupts::RX);
        uart.enqueue_input(b"z");
        assert!(irq.is_high());
        uart.reset();
        assert!(!irq.is_high());
        assert_eq!(read32(&mut uart, UARTFR), flags::TXFE | flags::RXFE);
    }
}
