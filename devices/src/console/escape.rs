//! The console's escape sequence: `Ctrl-A x` quits, `Ctrl-A Ctrl-A` sends one
//! `Ctrl-A` to the guest, `Ctrl-A` followed by anything else sends both bytes.
//!
//! Owns: the byte-by-byte filter between the host terminal and the guest UART.

/// The escape byte, Ctrl-A.
pub const ESCAPE: u8 = 0x01;
/// The byte that quits after [`ESCAPE`].
pub const QUIT: u8 = b'x';

/// What a chunk of host input means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InputEvent {
    /// Bytes for the guest (possibly empty).
    Bytes(Vec<u8>),
    /// The user typed the quit sequence; these bytes came before it.
    Quit(Vec<u8>),
    /// The input reached end of file (hang-up); nothing more will come.
    Eof,
}

/// Removes escape sequences from host input, remembering a pending escape byte
/// across chunks.
#[derive(Debug, Default)]
pub struct EscapeFilter {
    pending_escape: bool,
}

impl EscapeFilter {
    /// A filter with no escape pending.
    pub fn new() -> Self {
        Self::default()
    }

    /// Filters one chunk of host input.
    pub fn filter(&mut self, input: &[u8]) -> InputEvent {
        let mut out = Vec::with_capacity(input.len());
        for &byte in input {
            if self.pending_escape {
                self.pending_escape = false;
                match byte {
                    QUIT => return InputEvent::Quit(out),
                    ESCAPE => out.push(ESCAPE),
                    other => out.extend([ESCAPE, other]),
                }
            } else if byte == ESCAPE {
                self.pending_escape = true;
            } else {
                out.push(byte);
            }
        }
        InputEvent::Bytes(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_bytes_pass_through() {
        let mut filter = EscapeFilter::new();
        assert_eq!(filter.filter(b"ls\r"), InputEvent::Bytes(b"ls\r".to_vec()));
    }

    #[test]
    fn ctrl_a_x_quits_even_across_chunks() {
        let mut filter = EscapeFilter::new();
        assert_eq!(filter.filter(b"ab\x01"), InputEvent::Bytes(b"ab".to_vec()));
        assert_eq!(filter.filter(b"xzz"), InputEvent::Quit(Vec::new()));
        let mut filter = EscapeFilter::new();
        assert_eq!(filter.filter(b"q\x01x"), InputEvent::Quit(b"q".to_vec()));
    }

    #[test]
    fn doubled_escape_sends_one_and_other_pairs_pass() {
        let mut filter = EscapeFilter::new();
        assert_eq!(filter.filter(b"\x01\x01"), InputEvent::Bytes(vec![ESCAPE]));
        assert_eq!(
            filter.filter(b"\x01c"),
            InputEvent::Bytes(vec![ESCAPE, b'c'])
        );
    }
}
