//! Tests of the CFI01 bank: command set, status and query reads, persistence
//! order, failures and hostile sequences.

use super::*;
use crate::pflash::cfi::{DEVICE_ID, MANUFACTURER_ID};

const VARS_OFFSET: u64 = 3 * ERASE_BLOCK_SIZE;

struct Bank {
    flash: Pflash,
    storage: MemoryFlashStorage,
    romd: Arc<RecordingRomd>,
}

/// A writable bank over a 4 MiB store filled with a recognisable pattern.
fn writable_bank() -> Bank {
    let image: Vec<u8> = (0..4u32 << 20).map(|i| (i % 251) as u8).collect();
    let storage = MemoryFlashStorage::new(image.clone());
    let mut flash = Pflash::new(
        "vars",
        &image,
        BankAccess::Writable(Box::new(storage.clone())),
    )
    .unwrap();
    let romd = Arc::new(RecordingRomd::default());
    flash.set_romd_control(romd.clone());
    Bank {
        flash,
        storage,
        romd,
    }
}

fn write32(flash: &mut Pflash, offset: u64, value: u32) {
    flash.write(offset, &value.to_le_bytes());
}

fn read32(flash: &mut Pflash, offset: u64) -> u32 {
    let mut data = [0u8; 4];
    flash.read(offset, &mut data);
    u32::from_le_bytes(data)
}

/// The bank's contents as the guest sees them in read-array mode.
fn array(flash: &mut Pflash, offset: u64, len: usize) -> Vec<u8> {
    let mut data = vec![0; len];
    assert!(flash.read_array(offset, &mut data));
    data
}

#[test]
fn image_is_padded_with_erased_bytes_and_readable_in_array_mode() {
    let mut flash = Pflash::new("code", &[1, 2, 3], BankAccess::ReadOnly).unwrap();
    assert!(flash.romd());
    assert_eq!(read32(&mut flash, 0), 0xFF03_0201);
    assert_eq!(read32(&mut flash, BANK_SIZE - 4), 0xFFFF_FFFF);
    assert_eq!(flash.region().size() as u64, BANK_SIZE);
    assert_eq!(flash.region().as_ptr() as usize % 4096, 0);
}

#[test]
fn oversized_image_or_storage_is_refused() {
    let big = vec![0u8; BANK_SIZE as usize + 1];
    assert!(matches!(
        Pflash::new("code", &big, BankAccess::ReadOnly),
        Err(PflashError::ImageTooLarge { .. })
    ));
    let storage = MemoryFlashStorage::new(big);
    assert!(matches!(
        Pflash::new("vars", &[], BankAccess::Writable(Box::new(storage))),
        Err(PflashError::StorageTooLarge { .. })
    ));
}

#[test]
fn status_reads_replicate_the_ready_byte_per_chip() {
    let mut bank = writable_bank();
    write32(&mut bank.flash, 0, 0x0070_0070);
    assert!(!bank.flash.romd());
    assert_eq!(read32(&mut bank.flash, 0), 0x0080_0080);
    assert_eq!(read32(&mut bank.flash, 0x1234), 0x0080_0080);
    let mut half = [0u8; 2];
    bank.flash.read(0, &mut half);
    assert_eq!(u16::from_le_bytes(half), 0x0080);
    let mut wide = [0u8; 8];
    bank.flash.read(8, &mut wide);
    assert_eq!(u64::from_le_bytes(wide), 0x0080_0080_0080_0080);
}

#[test]
fn romd_control_follows_read_array_mode() {
    let mut bank = writable_bank();
    write32(&mut bank.flash, 0, 0x0098_0098);
    write32(&mut bank.flash, 0, 0x0070_0070);
    write32(&mut bank.flash, 0, 0x00FF_00FF);
    write32(&mut bank.flash, 0, 0x00FF_00FF);
    assert!(bank.flash.romd());
    // Only transitions are reported.
    assert_eq!(bank.romd.calls(), vec![false, true]);
}

#[test]
fn cfi_query_returns_the_table_replicated() {
    let mut bank = writable_bank();
    write32(&mut bank.flash, 0x55 * 4, 0x0098_0098);
    let q = |flash: &mut Pflash, word: u64| read32(flash, word * BANK_WIDTH);
    assert_eq!(q(&mut bank.flash, 0x10), 0x0051_0051);
    assert_eq!(q(&mut bank.flash, 0x11), 0x0052_0052);
    assert_eq!(q(&mut bank.flash, 0x12), 0x0059_0059);
    assert_eq!(q(&mut bank.flash, 0x13), 0x0001_0001);
    assert_eq!(q(&mut bank.flash, 0x27), 0x0019_0019);
    assert_eq!(q(&mut bank.flash, 0x2C), 0x0001_0001);
    assert_eq!(q(&mut bank.flash, 0x2D), 0x00FF_00FF);
    assert_eq!(q(&mut bank.flash, 0x30), 0x0002_0002);
    assert_eq!(q(&mut bank.flash, 0x1000), 0);
}

#[test]
fn read_id_returns_manufacturer_device_and_unlocked_blocks() {
    let mut bank = writable_bank();
    write32(&mut bank.flash, 0, 0x0090_0090);
    let expected_manufacturer = u32::from(MANUFACTURER_ID) * 0x0001_0001;
    assert_eq!(read32(&mut bank.flash, 0), expected_manufacturer);
    assert_eq!(
        read32(&mut bank.flash, 4),
        u32::from(DEVICE_ID) * 0x0001_0001
    );
    assert_eq!(read32(&mut bank.flash, ERASE_BLOCK_SIZE + 8), 0);
}

#[test]
fn block_erase_persists_then_fills_with_ones() {
    let mut bank = writable_bank();
    let inside = VARS_OFFSET + 0x100;
    write32(&mut bank.flash, inside, 0x0020_0020);
    write32(&mut bank.flash, inside, 0x00D0_00D0);
    assert_eq!(read32(&mut bank.flash, 0), 0x0080_0080);
    let block = VARS_OFFSET as usize..(VARS_OFFSET + ERASE_BLOCK_SIZE) as usize;
    assert!(bank.storage.bytes()[block.clone()]
        .iter()
        .all(|&b| b == 0xFF));
    assert!(
        array(&mut bank.flash, VARS_OFFSET, ERASE_BLOCK_SIZE as usize)
            .iter()
            .all(|&b| b == 0xFF)
    );
    // The neighbours are untouched.
    assert_eq!(bank.storage.bytes()[block.end], (block.end % 251) as u8);
    assert_eq!(
        bank.storage.bytes()[block.start - 1],
        ((block.start - 1) % 251) as u8
    );
}

#[test]
fn single_word_program_persists_then_updates_buffer() {
    let mut bank = writable_bank();
    write32(&mut bank.flash, VARS_OFFSET, 0x0040_0040);
    write32(&mut bank.flash, VARS_OFFSET, 0xDEAD_BEEF);
    assert_eq!(bank.flash.status(), STATUS_READY);
    assert_eq!(read32(&mut bank.flash, VARS_OFFSET), 0x0080_0080);
    write32(&mut bank.flash, 0, 0x00FF_00FF);
    assert_eq!(read32(&mut bank.flash, VARS_OFFSET), 0xDEAD_BEEF);
    let stored = bank.storage.bytes();
    assert_eq!(
        &stored[VARS_OFFSET as usize..][..4],
        &0xDEAD_BEEFu32.to_le_bytes()
    );
    // 0x10 is the alternate program command.
    write32(&mut bank.flash, 8, 0x0010_0010);
    bank.flash.write(8, &[0x42]);
    assert_eq!(bank.storage.bytes()[8], 0x42);
}

#[test]
fn buffered_write_collects_count_words_and_persists_once_on_confirm() {
    let mut bank = writable_bank();
    let start = VARS_OFFSET + 0x40;
    let writes_before = bank.storage.writes();
    write32(&mut bank.flash, start, 0x00E8_00E8);
    // Ready for the count: status reads.
    assert_eq!(read32(&mut bank.flash, start), 0x0080_0080);
    write32(&mut bank.flash, start, 0x0003_0003); // four words
    for i in 0..4u32 {
        write32(
            &mut bank.flash,
            start + u64::from(i) * 4,
            0x1111_1111 * (i + 1),
        );
    }
    // Nothing stored before the confirm.
    assert_eq!(bank.storage.writes(), writes_before);
    write32(&mut bank.flash, start, 0x00D0_00D0);
    assert_eq!(bank.storage.writes(), writes_before + 1);
    assert_eq!(bank.flash.status(), STATUS_READY);
    let expected: Vec<u8> = (1..=4u32)
        .flat_map(|i| (0x1111_1111 * i).to_le_bytes())
        .collect();
    assert_eq!(&bank.storage.bytes()[start as usize..][..16], &expected[..]);
    assert_eq!(array(&mut bank.flash, start, 16), expected);
    // The byte after is unchanged.
    assert_eq!(
        array(&mut bank.flash, start + 16, 1)[0],
        ((start + 16) % 251) as u8
    );
}

#[test]
fn buffered_write_larger_than_the_buffer_is_a_sequence_error() {
    let mut bank = writable_bank();
    write32(&mut bank.flash, VARS_OFFSET, 0x00E8_00E8);
    write32(&mut bank.flash, VARS_OFFSET, 0x0400_0400); // 1025 words
    assert_eq!(
        bank.flash.status(),
        STATUS_READY | STATUS_PROGRAM_ERROR | STATUS_ERASE_ERROR
    );
    // Clear status restores ready.
    write32(&mut bank.flash, 0, 0x0050_0050);
    assert_eq!(bank.flash.status(), STATUS_READY);
}

#[test]
fn buffered_data_outside_the_window_aborts_without_writing() {
    let mut bank = writable_bank();
    let before = bank.storage.bytes();
    write32(&mut bank.flash, VARS_OFFSET, 0x00E8_00E8);
    write32(&mut bank.flash, VARS_OFFSET, 0x0001_0001);
    write32(&mut bank.flash, VARS_OFFSET, 0xAAAA_AAAA);
    write32(
        &mut bank.flash,
        VARS_OFFSET + WRITE_BUFFER_SIZE,
        0xBBBB_BBBB,
    );
    assert_ne!(bank.flash.status() & STATUS_PROGRAM_ERROR, 0);
    write32(&mut bank.flash, VARS_OFFSET, 0x00D0_00D0);
    assert_eq!(bank.storage.bytes(), before);
}

#[test]
fn buffered_write_without_confirm_is_discarded() {
    let mut bank = writable_bank();
    let before = bank.storage.bytes();
    write32(&mut bank.flash, VARS_OFFSET, 0x00E8_00E8);
    write32(&mut bank.flash, VARS_OFFSET, 0);
    write32(&mut bank.flash, VARS_OFFSET, 0x1234_5678);
    write32(&mut bank.flash, VARS_OFFSET, 0x00FF_00FF); // not 0xD0
    assert_eq!(
        bank.flash.status() & (STATUS_PROGRAM_ERROR | STATUS_ERASE_ERROR),
        STATUS_PROGRAM_ERROR | STATUS_ERASE_ERROR
    );
    assert_eq!(bank.storage.bytes(), before);
    write32(&mut bank.flash, 0, 0x00FF_00FF);
    assert_eq!(
        array(&mut bank.flash, VARS_OFFSET, 4),
        before[VARS_OFFSET as usize..][..4]
    );
}

#[test]
fn failed_program_sets_program_error_and_leaves_buffer_unchanged() {
    let mut bank = writable_bank();
    let before = array(&mut bank.flash, VARS_OFFSET, 4);
    bank.storage.set_fail_writes(true);
    write32(&mut bank.flash, VARS_OFFSET, 0x0040_0040);
    write32(&mut bank.flash, VARS_OFFSET, 0);
    assert_eq!(read32(&mut bank.flash, 0), 0x0090_0090);
    write32(&mut bank.flash, 0, 0x00FF_00FF);
    assert_eq!(array(&mut bank.flash, VARS_OFFSET, 4), before);
}

#[test]
fn failed_erase_and_buffer_set_their_error_bits() {
    let mut bank = writable_bank();
    let before = bank.storage.bytes();
    bank.storage.set_fail_writes(true);
    write32(&mut bank.flash, VARS_OFFSET, 0x0020_0020);
    write32(&mut bank.flash, VARS_OFFSET, 0x00D0_00D0);
    assert_eq!(bank.flash.status(), STATUS_READY | STATUS_ERASE_ERROR);
    write32(&mut bank.flash, 0, 0x0050_0050);
    write32(&mut bank.flash, VARS_OFFSET, 0x00E8_00E8);
    write32(&mut bank.flash, VARS_OFFSET, 0);
    write32(&mut bank.flash, VARS_OFFSET, 0);
    write32(&mut bank.flash, VARS_OFFSET, 0x00D0_00D0);
    assert_eq!(bank.flash.status(), STATUS_READY | STATUS_PROGRAM_ERROR);
    write32(&mut bank.flash, 0, 0x00FF_00FF);
    let len = ERASE_BLOCK_SIZE as usize;
    assert_eq!(
        array(&mut bank.flash, VARS_OFFSET, len),
        before[VARS_OFFSET as usize..][..len]
    );
}

#[test]
fn writes_past_the_storage_end_fail_visibly() {
    let mut bank = writable_bank();
    let beyond = 8 << 20;
    write32(&mut bank.flash, beyond, 0x0040_0040);
    write32(&mut bank.flash, beyond, 0);
    assert_eq!(bank.flash.status(), STATUS_READY | STATUS_PROGRAM_ERROR);
    write32(&mut bank.flash, 0, 0x00FF_00FF);
    assert_eq!(read32(&mut bank.flash, beyond), 0xFFFF_FFFF);
}

#[test]
fn lock_and_unlock_are_accepted() {
    let mut bank = writable_bank();
    for confirm in [0x00D0_00D0, 0x0001_0001, 0x002F_002F] {
        write32(&mut bank.flash, VARS_OFFSET, 0x0060_0060);
        write32(&mut bank.flash, VARS_OFFSET, confirm);
        assert_eq!(bank.flash.status(), STATUS_READY);
    }
    write32(&mut bank.flash, VARS_OFFSET, 0x0060_0060);
    write32(&mut bank.flash, VARS_OFFSET, 0x0033_0033);
    assert_ne!(bank.flash.status() & STATUS_ERASE_ERROR, 0);
}

#[test]
fn erase_without_confirm_is_a_sequence_error_and_erases_nothing() {
    let mut bank = writable_bank();
    let before = bank.storage.bytes();
    write32(&mut bank.flash, VARS_OFFSET, 0x0020_0020);
    write32(&mut bank.flash, VARS_OFFSET, 0x00FF_00FF);
    assert_eq!(
        bank.flash.status(),
        STATUS_READY | STATUS_PROGRAM_ERROR | STATUS_ERASE_ERROR
    );
    assert_eq!(bank.storage.bytes(), before);
}

#[test]
fn read_only_bank_ignores_every_write() {
    let image = vec![0x5A; 4096];
    let mut flash = Pflash::new("code", &image, BankAccess::ReadOnly).unwrap();
    let romd = Arc::new(RecordingRomd::default());
    flash.set_romd_control(romd.clone());
    for value in [0x0070_0070u32, 0x0040_0040, 0, 0x0020_0020, 0x00D0_00D0] {
        write32(&mut flash, 0, value);
    }
    assert!(flash.romd());
    assert!(romd.calls().is_empty());
    assert_eq!(read32(&mut flash, 0), 0x5A5A_5A5A);
}

#[test]
fn reset_returns_to_read_array_with_clean_status() {
    let mut bank = writable_bank();
    write32(&mut bank.flash, 0, 0x0012_0012); // unknown command
    assert!(!bank.flash.romd());
    bank.flash.reset();
    assert!(bank.flash.romd());
    assert_eq!(bank.flash.status(), STATUS_READY);
    assert_eq!(bank.romd.calls(), vec![false, true]);
}

#[test]
fn bad_offsets_and_widths_are_ignored() {
    let mut bank = writable_bank();
    let before = bank.storage.bytes();
    let mut three = [0xEE; 3];
    bank.flash.read(0, &mut three);
    assert_eq!(three, [0; 3]);
    let mut past = [0xEE; 4];
    bank.flash.read(BANK_SIZE - 2, &mut past);
    assert_eq!(past, [0; 4]);
    bank.flash.read(u64::MAX, &mut past);
    assert_eq!(past, [0; 4]);
    bank.flash.write(u64::MAX - 1, &[0x40, 0, 0, 0]);
    bank.flash.write(0, &[0x40, 0, 0]);
    assert!(bank.flash.romd());
    assert_eq!(bank.storage.bytes(), before);
}

#[test]
fn hostile_random_sequences_never_panic_and_keep_buffer_equal_to_storage() {
    use rand::{rngs::SmallRng, Rng, SeedableRng};
    let mut bank = writable_bank();
    let mut rng = SmallRng::seed_from_u64(0x5EED);
    let commands = [
        0xFFu32, 0x70, 0x50, 0x90, 0x98, 0x40, 0x10, 0x20, 0x60, 0xE8, 0xD0, 0x01,
    ];
    for round in 0..20_000 {
        bank.storage.set_fail_writes(round % 97 == 0);
        let offset = if rng.random_bool(0.9) {
            VARS_OFFSET + rng.random_range(0..2 * WRITE_BUFFER_SIZE)
        } else {
            rng.random()
        };
        let value: u64 = if rng.random_bool(0.6) {
            u64::from(commands[rng.random_range(0..commands.len())])
        } else {
            rng.random_range(0..8)
        };
        let width = [1usize, 2, 4, 8, 3][rng.random_range(0..5)];
        if rng.random_bool(0.7) {
            bank.flash
                .write(offset, &value.to_le_bytes()[..width.min(8)]);
        } else {
            let mut data = vec![0; width];
            bank.flash.read(offset, &mut data);
        }
    }
    // Whatever happened, the guest-visible contents are what storage holds.
    let stored = bank.storage.bytes();
    assert_eq!(array(&mut bank.flash, 0, stored.len()), stored);
    bank.flash.reset();
    assert!(bank.flash.romd());
}

/// The sequences EDK2's VirtNorFlashDxe issues, with its addressing: commands to
/// the block or word address, status read at the bank base, buffered-program
/// confirm at the bank base, and read-array at the end.
#[test]
fn firmware_driver_sequences_work_end_to_end() {
    let mut bank = writable_bank();
    let block = 5 * ERASE_BLOCK_SIZE;
    let dual = |cmd: u32| (cmd << 16) | cmd;

    // Is the block locked? Read-ID at block + word 2.
    write32(&mut bank.flash, block + 8, dual(0x90));
    assert_eq!(read32(&mut bank.flash, block + 8) & 0x0001_0001, 0);

    // Erase, poll status at the base, back to read array.
    write32(&mut bank.flash, block, dual(0x20));
    write32(&mut bank.flash, block, dual(0xD0));
    write32(&mut bank.flash, 0, dual(0x70));
    assert_eq!(read32(&mut bank.flash, 0) & 0x0080_0080, 0x0080_0080);
    write32(&mut bank.flash, 0, dual(0xFF));

    // Buffered program of 32 words (128 bytes), confirm sent to the base.
    let target = block + 0x80;
    write32(&mut bank.flash, target, dual(0xE8));
    assert_eq!(read32(&mut bank.flash, target) & 0x80, 0x80);
    write32(&mut bank.flash, target, dual(31));
    for word in 0..32u64 {
        write32(
            &mut bank.flash,
            target + word * 4,
            0xC0DE_0000 | word as u32,
        );
    }
    write32(&mut bank.flash, 0, dual(0xD0));
    write32(&mut bank.flash, 0, dual(0x70));
    let status = read32(&mut bank.flash, 0);
    assert_eq!(status & 0x0030_0030, 0, "no error bits: {status:#x}");
    write32(&mut bank.flash, 0, dual(0x50));
    write32(&mut bank.flash, 0, dual(0xFF));

    // Single word program of a word that only clears bits.
    write32(&mut bank.flash, block + 4, dual(0x40));
    write32(&mut bank.flash, block + 4, 0x1234_5678);
    write32(&mut bank.flash, 0, dual(0x70));
    assert_eq!(read32(&mut bank.flash, 0), 0x0080_0080);
    write32(&mut bank.flash, 0, dual(0x50));
    write32(&mut bank.flash, 0, dual(0xFF));

    assert!(bank.flash.romd());
    assert_eq!(read32(&mut bank.flash, block), 0xFFFF_FFFF);
    assert_eq!(read32(&mut bank.flash, block + 4), 0x1234_5678);
    assert_eq!(read32(&mut bank.flash, target + 31 * 4), 0xC0DE_001F);
    let stored = bank.storage.bytes();
    assert_eq!(
        &stored[(target + 4) as usize..][..4],
        &0xC0DE_0001u32.to_le_bytes()
    );
    // ROMD went off and on once for ID-then-erase (the driver sends no read-array
    // in between), once for the buffered program, once for the word program.
    assert_eq!(bank.romd.calls(), [false, true].repeat(3));
}
