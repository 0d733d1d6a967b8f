//! Geometry, identifier codes and the CFI query table of one CFI01 flash bank.
//!
//! Owns: the numbers a guest learns about the flash by asking it (read-ID and
//! CFI-query modes), and the byte-lane arithmetic of a bank built from two
//! interleaved 16-bit chips.
//!
//! The bank is 32 bits wide: byte lanes 0–1 belong to chip 0 and lanes 2–3 to
//! chip 1. Both chips receive every command and answer identically, so a 32-bit
//! status read returns the status byte once per chip (`0x00800080` when ready).
//! In the query and ID modes a chip answers the *word index* `offset / 4` (its own
//! 16-bit address) with an 8-bit value in its low byte. The table layout follows
//! the JEDEC CFI specification (JESD68) and Intel's primary extended query table
//! for the basic command set 0x0001; values describe what this model does.

/// Bytes in one bank: 64 MiB, as QEMU's `virt` machine.
pub const BANK_SIZE: u64 = 64 << 20;
/// Bytes erased by one block-erase command across the whole bank (both chips).
pub const ERASE_BLOCK_SIZE: u64 = 256 << 10;
/// Width of the bank in bytes.
pub const BANK_WIDTH: u64 = 4;
/// Width of one chip in bytes.
pub const CHIP_WIDTH: u64 = 2;
/// Chips interleaved in one bank.
pub const CHIPS: u64 = BANK_WIDTH / CHIP_WIDTH;
/// log2 of the bytes one chip accepts in one buffered write (2 KiB).
const CHIP_WRITE_BUFFER_LOG2: u8 = 11;
/// Bytes one buffered write may cover across the bank (both chips' buffers).
pub const WRITE_BUFFER_SIZE: u64 = (1 << CHIP_WRITE_BUFFER_LOG2) * CHIPS;

/// Manufacturer code answered at word 0 in read-ID mode (Intel).
pub const MANUFACTURER_ID: u8 = 0x89;
/// Device code answered at word 1 in read-ID mode (the code QEMU's `virt` uses).
pub const DEVICE_ID: u8 = 0x18;

const CHIP_SIZE: u64 = BANK_SIZE / CHIPS;
const CHIP_BLOCK_SIZE: u64 = ERASE_BLOCK_SIZE / CHIPS;
const CHIP_BLOCKS: u64 = CHIP_SIZE / CHIP_BLOCK_SIZE;

/// The per-chip CFI query table, indexed by query word address.
pub const QUERY_TABLE: [u8; 0x44] = build_query_table();

const fn build_query_table() -> [u8; 0x44] {
    let mut t = [0u8; 0x44];
    // Query identification string.
    t[0x10] = b'Q';
    t[0x11] = b'R';
    t[0x12] = b'Y';
    // Primary vendor command set: 0x0001, Intel/Sharp extended.
    t[0x13] = 0x01;
    t[0x14] = 0x00;
    // Primary extended query table at word 0x31.
    t[0x15] = 0x31;
    t[0x16] = 0x00;
    // No alternate command set or table (0x17..=0x1A stay zero).
    // Vcc 2.7 V to 3.6 V (BCD volts), no Vpp pin.
    t[0x1B] = 0x27;
    t[0x1C] = 0x36;
    // Typical timeouts: word program 2^4 us, buffer program 2^8 us, block erase
    // 2^10 ms; no whole-chip erase.
    t[0x1F] = 0x04;
    t[0x20] = 0x08;
    t[0x21] = 0x0A;
    t[0x22] = 0x00;
    // Maximum timeouts, as 2^n times the typical ones.
    t[0x23] = 0x04;
    t[0x24] = 0x04;
    t[0x25] = 0x04;
    t[0x26] = 0x00;
    // Chip size 2^n bytes.
    t[0x27] = CHIP_SIZE.trailing_zeros() as u8;
    // Interface: x16 only.
    t[0x28] = 0x01;
    t[0x29] = 0x00;
    // Write buffer 2^n bytes per chip.
    t[0x2A] = CHIP_WRITE_BUFFER_LOG2;
    t[0x2B] = 0x00;
    // One uniform erase block region: (blocks - 1), then block size / 256.
    t[0x2C] = 0x01;
    t[0x2D] = ((CHIP_BLOCKS - 1) & 0xFF) as u8;
    t[0x2E] = ((CHIP_BLOCKS - 1) >> 8) as u8;
    t[0x2F] = ((CHIP_BLOCK_SIZE >> 8) & 0xFF) as u8;
    t[0x30] = (CHIP_BLOCK_SIZE >> 16) as u8;
    // Primary extended query table, version 1.0.
    t[0x31] = b'P';
    t[0x32] = b'R';
    t[0x33] = b'I';
    t[0x34] = b'1';
    t[0x35] = b'0';
    // Optional features (0x36..=0x39) and functions after suspend (0x3A): none.
    // Block status register: lock bit implemented.
    t[0x3B] = 0x01;
    t[0x3C] = 0x00;
    // Optimum Vcc 3.3 V, no Vpp.
    t[0x3D] = 0x33;
    t[0x3E] = 0x00;
    // One protection register field (at ID word 0x80, 2^3 factory and 2^3 user
    // bytes). It is described, not implemented (it reads as zeros), but parsers
    // of version 1.0 tables expect at least one field.
    t[0x3F] = 0x01;
    t[0x40] = 0x80;
    t[0x41] = 0x00;
    t[0x42] = 0x03;
    t[0x43] = 0x03;
    t
}

/// The 16-bit value a chip answers at `word` in CFI-query mode.
pub fn query_word(word: u64) -> u16 {
    usize::try_from(word)
        .ok()
        .and_then(|i| QUERY_TABLE.get(i))
        .map_or(0, |&b| u16::from(b))
}

/// The 16-bit value a chip answers at `word` in read-ID mode: manufacturer at 0,
/// device at 1, and at word 2 of each erase block the block's lock status
/// (always 0: unlocked).
pub fn id_word(word: u64) -> u16 {
    match word {
        0 => u16::from(MANUFACTURER_ID),
        1 => u16::from(DEVICE_ID),
        _ => 0,
    }
}

/// Fills `data` as a read at bank byte `offset` whose every chip answers
/// `per_chip(word_index)` with a 16-bit value (replicated across both chips).
pub fn fill_replicated(offset: u64, data: &mut [u8], per_chip: impl Fn(u64) -> u16) {
    for (i, byte) in data.iter_mut().enumerate() {
        let at = offset.saturating_add(i as u64);
        let word = per_chip(at / BANK_WIDTH).to_le_bytes();
        *byte = word[(at % CHIP_WIDTH) as usize];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_table_describes_the_bank() {
        assert_eq!(&QUERY_TABLE[0x10..0x13], b"QRY");
        assert_eq!((QUERY_TABLE[0x13], QUERY_TABLE[0x14]), (0x01, 0x00));
        // 2^25 = 32 MiB per chip, two chips = 64 MiB.
        assert_eq!(1u64 << QUERY_TABLE[0x27], BANK_SIZE / 2);
        assert_eq!(QUERY_TABLE[0x2C], 1);
        let blocks = u64::from(QUERY_TABLE[0x2D]) + (u64::from(QUERY_TABLE[0x2E]) << 8) + 1;
        let block_size = (u64::from(QUERY_TABLE[0x2F]) + (u64::from(QUERY_TABLE[0x30]) << 8)) * 256;
        assert_eq!(blocks * block_size, BANK_SIZE / 2);
        // Two chips' blocks side by side make one 256 KiB bank block.
        assert_eq!(block_size * CHIPS, ERASE_BLOCK_SIZE);
        assert_eq!(&QUERY_TABLE[0x31..0x34], b"PRI");
        assert_eq!((1u64 << QUERY_TABLE[0x2A]) * CHIPS, WRITE_BUFFER_SIZE);
    }

    #[test]
    fn replicated_reads_repeat_each_chip_answer() {
        let mut word = [0u8; 4];
        fill_replicated(0x10 * BANK_WIDTH, &mut word, query_word);
        assert_eq!(u32::from_le_bytes(word), 0x0051_0051);
        let mut wide = [0u8; 8];
        fill_replicated(0, &mut wide, id_word);
        // Word 0 on both chips, then word 1 on both chips.
        assert_eq!(u64::from_le_bytes(wide), 0x0018_0018_0089_0089);
    }

    #[test]
    fn words_past_the_table_read_zero() {
        assert_eq!(query_word(0x43), 3);
        assert_eq!(query_word(0x44), 0);
        assert_eq!(query_word(u64::MAX), 0);
    }
}
