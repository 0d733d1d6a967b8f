//! Moving host input into the PL011 without losing any: the glue the VMM's
//! iothread runs when the console input is readable or the UART has made room.
//!
//! Owns: the bytes read from the host but not yet taken by the guest's FIFO.
//!
//! Use: register [`ConsoleInput::fd`] with the event loop while
//! [`InputPump::wants_input`] is true and call [`InputPump::on_readable`] when it
//! is readable; make the UART's rx-space callback wake the iothread, which calls
//! [`InputPump::on_space`]. While bytes are pending the pump reads nothing more,
//! so a level-triggered poller must stop watching the fd until `wants_input`.

use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Mutex};

use super::{ConsoleInput, InputEvent};
use crate::pl011::Pl011;

/// What the VMM should do after a pump call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PumpOutcome {
    /// Keep going.
    Continue,
    /// The user typed the quit escape: shut the VM down.
    Quit,
    /// The input ended: stop watching it (the VM runs on).
    Eof,
}

/// Host input waiting for the guest.
pub struct InputPump {
    input: ConsoleInput,
    uart: Arc<Mutex<Pl011>>,
    pending: VecDeque<u8>,
}

impl InputPump {
    /// A pump from `input` into `uart`.
    pub fn new(input: ConsoleInput, uart: Arc<Mutex<Pl011>>) -> Self {
        Self {
            input,
            uart,
            pending: VecDeque::new(),
        }
    }

    /// The input's descriptor (see [`ConsoleInput::fd`]).
    pub fn fd(&self) -> std::os::fd::RawFd {
        self.input.fd()
    }

    /// True when nothing is pending, so reading more input is useful.
    pub fn wants_input(&self) -> bool {
        self.pending.is_empty()
    }

    /// Bytes read but not yet in the FIFO.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// The input is readable: read once, hand what fits to the UART.
    pub fn on_readable(&mut self) -> io::Result<PumpOutcome> {
        if !self.wants_input() {
            self.on_space();
            return Ok(PumpOutcome::Continue);
        }
        let (bytes, outcome) = match self.input.read_event()? {
            InputEvent::Bytes(bytes) => (bytes, PumpOutcome::Continue),
            InputEvent::Quit(bytes) => (bytes, PumpOutcome::Quit),
            InputEvent::Eof => (Vec::new(), PumpOutcome::Eof),
        };
        self.pending.extend(bytes);
        self.on_space();
        Ok(outcome)
    }

    /// The UART made room: offer the pending bytes again.
    pub fn on_space(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let bytes = self.pending.make_contiguous();
        let taken = self
            .uart
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .enqueue_input(bytes);
        self.pending.drain(..taken);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::irq::RecordingIrqLine;
    use crate::mmio::MmioDevice;
    use std::io::Write;
    use std::os::unix::net::UnixStream;

    fn pump_over_socket() -> (InputPump, UnixStream, Arc<Mutex<Pl011>>) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&ours);
        let input = ConsoleInput {
            source: Box::new(ours),
            fd,
            filter: Some(super::super::EscapeFilter::new()),
        };
        let uart = Arc::new(Mutex::new(Pl011::new(
            Box::new(io::sink()),
            Arc::new(RecordingIrqLine::new()),
        )));
        (InputPump::new(input, uart.clone()), theirs, uart)
    }

    fn read_char(uart: &Arc<Mutex<Pl011>>) -> u8 {
        let mut data = [0u8; 4];
        uart.lock().unwrap().read(0, &mut data);
        data[0]
    }

    #[test]
    fn input_beyond_the_fifo_waits_and_none_is_lost() {
        let (mut pump, mut host, uart) = pump_over_socket();
        host.write_all(b"hello").unwrap();
        assert_eq!(pump.on_readable().unwrap(), PumpOutcome::Continue);
        // FIFO disabled after reset: one character fits.
        assert_eq!(pump.pending(), 4);
        assert!(!pump.wants_input());
        let mut received = Vec::new();
        for _ in 0..5 {
            received.push(read_char(&uart));
            pump.on_space();
        }
        assert_eq!(received, b"hello");
        assert!(pump.wants_input());
    }

    #[test]
    fn quit_escape_delivers_preceding_bytes_then_quits() {
        let (mut pump, mut host, uart) = pump_over_socket();
        host.write_all(b"q\x01x").unwrap();
        assert_eq!(pump.on_readable().unwrap(), PumpOutcome::Quit);
        assert_eq!(read_char(&uart), b'q');
    }

    #[test]
    fn hang_up_is_eof() {
        let (mut pump, host, _) = pump_over_socket();
        drop(host);
        assert_eq!(pump.on_readable().unwrap(), PumpOutcome::Eof);
    }
}
