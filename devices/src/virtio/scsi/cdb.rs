//! CDB decoding: turns the raw command descriptor block into a typed [`Command`]
//! with every field read through a `zerocopy` struct (no hand-written offsets),
//! and rejects reserved bits and unsupported options with the sense the SCSI
//! standards ask for.
//!
//! Owns: the wire layout of every supported CDB and its field validation.
//! Range checks that need the disk's geometry live in `commands.rs`.

use zerocopy::byteorder::big_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, KnownLayout, Unaligned};

use super::constants::*;
use super::sense::Sense;

/// A decoded, field-validated command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    TestUnitReady,
    RequestSense {
        alloc_len: u8,
    },
    Inquiry {
        evpd: bool,
        page_code: u8,
        alloc_len: u16,
    },
    ModeSense(ModeSense),
    StartStopUnit {
        start: bool,
    },
    PreventAllowMediumRemoval,
    ReadCapacity10,
    ReadCapacity16 {
        alloc_len: u32,
    },
    Read(Transfer),
    Write(Transfer),
    Verify {
        lba: u64,
        blocks: u32,
    },
    SynchronizeCache {
        lba: u64,
        blocks: u32,
    },
    Unmap {
        param_len: u16,
    },
    WriteSame16 {
        lba: u64,
        blocks: u32,
        unmap: bool,
        ndob: bool,
    },
    ReportLuns {
        alloc_len: u32,
    },
    ReportSupportedOpcodes(OpcodeQuery),
}

/// READ or WRITE of any size class.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transfer {
    pub lba: u64,
    pub blocks: u32,
    pub fua: bool,
}

/// MODE SENSE(6) and (10), normalised.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModeSense {
    pub ten_byte: bool,
    pub disable_block_descriptors: bool,
    pub long_lba: bool,
    pub page_control: u8,
    pub page_code: u8,
    pub subpage_code: u8,
    pub alloc_len: u16,
}

/// REPORT SUPPORTED OPERATION CODES request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpcodeQuery {
    pub reporting_options: u8,
    pub opcode: u8,
    pub service_action: u16,
    pub alloc_len: u32,
}

/// Length of the CDB for `opcode`, from its group code (SPC-5 4.2.5.1).
pub fn cdb_len(opcode: u8) -> Option<usize> {
    match opcode >> 5 {
        0 => Some(6),
        1 | 2 => Some(10),
        4 => Some(16),
        5 => Some(12),
        _ => None,
    }
}

#[derive(FromBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct Cdb6 {
    opcode: u8,
    byte1: u8,
    byte2: u8,
    byte3: u8,
    byte4: u8,
    control: u8,
}

#[derive(FromBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct Inquiry {
    opcode: u8,
    flags: u8,
    page_code: u8,
    alloc_len: U16,
    control: u8,
}

/// READ(6) / WRITE(6): 21-bit LBA, 8-bit length where 0 means 256.
#[derive(FromBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct Rw6 {
    opcode: u8,
    lba: [u8; 3],
    length: u8,
    control: u8,
}

/// The common 10-byte shape: READ/WRITE/VERIFY/SYNCHRONIZE CACHE(10), READ CAPACITY(10).
#[derive(FromBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct Lba10 {
    opcode: u8,
    flags: u8,
    lba: U32,
    group: u8,
    length: U16,
    control: u8,
}

#[derive(FromBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct Lba12 {
    opcode: u8,
    flags: u8,
    lba: U32,
    length: U32,
    group: u8,
    control: u8,
}

#[derive(FromBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct Lba16 {
    opcode: u8,
    flags: u8,
    lba: U64,
    length: U32,
    group: u8,
    control: u8,
}

#[derive(FromBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct ModeSense10 {
    opcode: u8,
    flags: u8,
    page: u8,
    subpage: u8,
    reserved: [u8; 3],
    alloc_len: U16,
    control: u8,
}

#[derive(FromBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct Unmap10 {
    opcode: u8,
    flags: u8,
    reserved: [u8; 4],
    group: u8,
    param_len: U16,
    control: u8,
}

/// SERVICE ACTION IN(16).
#[derive(FromBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct ServiceActionIn16 {
    opcode: u8,
    service_action: u8,
    lba: U64,
    alloc_len: U32,
    flags: u8,
    control: u8,
}

#[derive(FromBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct ReportLuns12 {
    opcode: u8,
    reserved1: u8,
    select_report: u8,
    reserved2: [u8; 3],
    alloc_len: U32,
    reserved3: u8,
    control: u8,
}

/// MAINTENANCE IN / REPORT SUPPORTED OPERATION CODES.
#[derive(FromBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct ReportOpcodes12 {
    opcode: u8,
    service_action: u8,
    options: u8,
    requested_opcode: u8,
    requested_service_action: U16,
    alloc_len: U32,
    reserved: u8,
    control: u8,
}

/// Reads the fixed-size CDB struct `T` from the front of `cdb`.
fn decode<T: FromBytes>(cdb: &[u8]) -> Result<T, Sense> {
    T::read_from_prefix(cdb)
        .map(|(value, _rest)| value)
        .map_err(|_| Sense::INVALID_FIELD_IN_CDB)
}

/// Fails with INVALID FIELD IN CDB at `byte` when `value & reserved_mask != 0`.
fn reserved(value: u8, reserved_mask: u8, byte: u16) -> Result<(), Sense> {
    if value & reserved_mask != 0 {
        Err(Sense::invalid_field_in_cdb(byte))
    } else {
        Ok(())
    }
}

/// The CONTROL byte: NACA (bit 2) asks for ACA, which this device does not support.
fn control(value: u8, len: usize) -> Result<(), Sense> {
    reserved(value, 0x04, (len - 1) as u16)
}

/// Decodes `cdb` (the guest's CDB buffer, at least as long as the command).
pub fn parse_cdb(cdb: &[u8]) -> Result<Command, Sense> {
    let opcode = *cdb.first().ok_or(Sense::INVALID_OPCODE)?;
    let len = cdb_len(opcode).ok_or(Sense::INVALID_OPCODE)?;
    if cdb.len() < len {
        return Err(Sense::invalid_field_in_cdb(0));
    }
    let cdb = &cdb[..len];
    control(cdb[len - 1], len)?;
    match opcode {
        TEST_UNIT_READY => {
            let c: Cdb6 = decode(cdb)?;
            reserved(c.byte1 | c.byte2 | c.byte3 | c.byte4, 0xff, 1)?;
            Ok(Command::TestUnitReady)
        }
        REQUEST_SENSE => {
            let c: Cdb6 = decode(cdb)?;
            // DESC (bit 0) may be set: descriptor format is optional and a device
            // without it returns fixed format (SPC-5 6.39).
            reserved(c.byte1, 0xfe, 1)?;
            reserved(c.byte2 | c.byte3, 0xff, 2)?;
            Ok(Command::RequestSense { alloc_len: c.byte4 })
        }
        INQUIRY => {
            let c: Inquiry = decode(cdb)?;
            reserved(c.flags, 0xfe, 1)?;
            let evpd = c.flags & 1 != 0;
            if !evpd && c.page_code != 0 {
                return Err(Sense::invalid_field_in_cdb(2));
            }
            Ok(Command::Inquiry {
                evpd,
                page_code: c.page_code,
                alloc_len: c.alloc_len.get(),
            })
        }
        MODE_SENSE_6 => {
            let c: Cdb6 = decode(cdb)?;
            reserved(c.byte1, 0xf7, 1)?;
            Ok(Command::ModeSense(ModeSense {
                ten_byte: false,
                disable_block_descriptors: c.byte1 & 0x08 != 0,
                long_lba: false,
                page_control: c.byte2 >> 6,
                page_code: c.byte2 & 0x3f,
                subpage_code: c.byte3,
                alloc_len: u16::from(c.byte4),
            }))
        }
        MODE_SENSE_10 => {
            let c: ModeSense10 = decode(cdb)?;
            reserved(c.flags, 0xe7, 1)?;
            reserved(c.reserved[0] | c.reserved[1] | c.reserved[2], 0xff, 4)?;
            Ok(Command::ModeSense(ModeSense {
                ten_byte: true,
                disable_block_descriptors: c.flags & 0x08 != 0,
                long_lba: c.flags & 0x10 != 0,
                page_control: c.page >> 6,
                page_code: c.page & 0x3f,
                subpage_code: c.subpage,
                alloc_len: c.alloc_len.get(),
            }))
        }
        START_STOP_UNIT => {
            let c: Cdb6 = decode(cdb)?;
            reserved(c.byte1, 0xfe, 1)?;
            reserved(c.byte2, 0xff, 2)?;
            reserved(c.byte3, 0xf0, 3)?;
            // POWER CONDITION (bits 7-4) other than START_VALID, and LOEJ (bit 1)
            // on a non-removable disk, are not supported.
            reserved(c.byte4, 0xf6, 4)?;
            Ok(Command::StartStopUnit {
                start: c.byte4 & 1 != 0,
            })
        }
        PREVENT_ALLOW_MEDIUM_REMOVAL => {
            let c: Cdb6 = decode(cdb)?;
            reserved(c.byte1 | c.byte2 | c.byte3, 0xff, 1)?;
            reserved(c.byte4, 0xfc, 4)?;
            Ok(Command::PreventAllowMediumRemoval)
        }
        READ_CAPACITY_10 => {
            let c: Lba10 = decode(cdb)?;
            reserved(c.flags, 0xff, 1)?;
            // PMI (byte 8 bit 0) is obsolete; the LBA must then be zero.
            if c.lba.get() != 0 {
                return Err(Sense::invalid_field_in_cdb(2));
            }
            reserved(c.group, 0xff, 6)?;
            reserved((c.length.get() & 0xfffe) as u8, 0xff, 7)?;
            Ok(Command::ReadCapacity10)
        }
        SERVICE_ACTION_IN_16 => {
            let c: ServiceActionIn16 = decode(cdb)?;
            if c.service_action & 0x1f != SAI_READ_CAPACITY_16 {
                return Err(Sense::invalid_field_in_cdb(1));
            }
            reserved(c.service_action, 0xe0, 1)?;
            if c.lba.get() != 0 {
                return Err(Sense::invalid_field_in_cdb(2));
            }
            reserved(c.flags, 0xff, 14)?;
            Ok(Command::ReadCapacity16 {
                alloc_len: c.alloc_len.get(),
            })
        }
        READ_6 | WRITE_6 => {
            let c: Rw6 = decode(cdb)?;
            reserved(c.lba[0], 0xe0, 1)?;
            let lba = u64::from(u32::from_be_bytes([0, c.lba[0] & 0x1f, c.lba[1], c.lba[2]]));
            let blocks = if c.length == 0 {
                256
            } else {
                u32::from(c.length)
            };
            let transfer = Transfer {
                lba,
                blocks,
                fua: false,
            };
            Ok(rw(opcode == READ_6, transfer))
        }
        READ_10 | WRITE_10 => {
            let c: Lba10 = decode(cdb)?;
            let fua = rw_flags(c.flags)?;
            reserved(c.group, 0xe0, 6)?;
            let transfer = Transfer {
                lba: u64::from(c.lba.get()),
                blocks: u32::from(c.length.get()),
                fua,
            };
            Ok(rw(opcode == READ_10, transfer))
        }
        READ_12 | WRITE_12 => {
            let c: Lba12 = decode(cdb)?;
            let fua = rw_flags(c.flags)?;
            reserved(c.group, 0xe0, 10)?;
            let transfer = Transfer {
                lba: u64::from(c.lba.get()),
                blocks: c.length.get(),
                fua,
            };
            Ok(rw(opcode == READ_12, transfer))
        }
        READ_16 | WRITE_16 => {
            let c: Lba16 = decode(cdb)?;
            let fua = rw_flags(c.flags)?;
            reserved(c.group, 0xc0, 14)?;
            let transfer = Transfer {
                lba: c.lba.get(),
                blocks: c.length.get(),
                fua,
            };
            Ok(rw(opcode == READ_16, transfer))
        }
        VERIFY_10 => {
            let c: Lba10 = decode(cdb)?;
            verify_flags(c.flags)?;
            reserved(c.group, 0xe0, 6)?;
            Ok(Command::Verify {
                lba: u64::from(c.lba.get()),
                blocks: u32::from(c.length.get()),
            })
        }
        VERIFY_16 => {
            let c: Lba16 = decode(cdb)?;
            verify_flags(c.flags)?;
            reserved(c.group, 0xc0, 14)?;
            Ok(Command::Verify {
                lba: c.lba.get(),
                blocks: c.length.get(),
            })
        }
        SYNCHRONIZE_CACHE_10 => {
            let c: Lba10 = decode(cdb)?;
            // IMMED (bit 1) is honoured by completing after the flush anyway.
            reserved(c.flags, 0xfd, 1)?;
            reserved(c.group, 0xe0, 6)?;
            Ok(Command::SynchronizeCache {
                lba: u64::from(c.lba.get()),
                blocks: u32::from(c.length.get()),
            })
        }
        SYNCHRONIZE_CACHE_16 => {
            let c: Lba16 = decode(cdb)?;
            reserved(c.flags, 0xfd, 1)?;
            reserved(c.group, 0xc0, 14)?;
            Ok(Command::SynchronizeCache {
                lba: c.lba.get(),
                blocks: c.length.get(),
            })
        }
        UNMAP => {
            let c: Unmap10 = decode(cdb)?;
            // ANCHOR (bit 0) is not supported.
            reserved(c.flags, 0xff, 1)?;
            reserved(c.reserved.iter().fold(0, |acc, b| acc | b), 0xff, 2)?;
            reserved(c.group, 0xe0, 6)?;
            Ok(Command::Unmap {
                param_len: c.param_len.get(),
            })
        }
        WRITE_SAME_16 => {
            let c: Lba16 = decode(cdb)?;
            // WRPROTECT (7-5), ANCHOR (2), bit 4 and obsolete bit 1 unsupported;
            // UNMAP (3) and NDOB (0) supported.
            reserved(c.flags, 0xf6, 1)?;
            reserved(c.group, 0xc0, 14)?;
            Ok(Command::WriteSame16 {
                lba: c.lba.get(),
                blocks: c.length.get(),
                unmap: c.flags & 0x08 != 0,
                ndob: c.flags & 0x01 != 0,
            })
        }
        REPORT_LUNS => {
            let c: ReportLuns12 = decode(cdb)?;
            reserved(c.reserved1, 0xff, 1)?;
            // SELECT REPORT 0, 1 and 2 all mean "the logical units we have" here.
            if c.select_report > 2 {
                return Err(Sense::invalid_field_in_cdb(2));
            }
            reserved(c.reserved2[0] | c.reserved2[1] | c.reserved2[2], 0xff, 3)?;
            reserved(c.reserved3, 0xff, 10)?;
            Ok(Command::ReportLuns {
                alloc_len: c.alloc_len.get(),
            })
        }
        MAINTENANCE_IN => {
            let c: ReportOpcodes12 = decode(cdb)?;
            if c.service_action & 0x1f != MI_REPORT_SUPPORTED_OPERATION_CODES {
                return Err(Sense::invalid_field_in_cdb(1));
            }
            reserved(c.service_action, 0xe0, 1)?;
            // RCTD (bit 7, timeouts descriptors) is not supported; options 0..=3.
            reserved(c.options, 0xf8, 2)?;
            if c.options & 0x07 > 3 {
                return Err(Sense::invalid_field_in_cdb(2));
            }
            reserved(c.reserved, 0xff, 10)?;
            Ok(Command::ReportSupportedOpcodes(OpcodeQuery {
                reporting_options: c.options & 0x07,
                opcode: c.requested_opcode,
                service_action: c.requested_service_action.get(),
                alloc_len: c.alloc_len.get(),
            }))
        }
        _ => Err(Sense::INVALID_OPCODE),
    }
}

fn rw(read: bool, transfer: Transfer) -> Command {
    if read {
        Command::Read(transfer)
    } else {
        Command::Write(transfer)
    }
}

/// Byte 1 of READ/WRITE(10/12/16): RDPROTECT/WRPROTECT (7-5) must be zero (no
/// protection information), DPO (4) is a hint, FUA (3) honoured, bits 2-0
/// (RARC, obsolete FUA_NV, reserved) must be zero.
fn rw_flags(flags: u8) -> Result<bool, Sense> {
    reserved(flags, 0xe7, 1)?;
    Ok(flags & 0x08 != 0)
}

/// Byte 1 of VERIFY(10/16): VRPROTECT must be zero and BYTCHK (2-1) zero: the
/// medium is verified without comparing data.
fn verify_flags(flags: u8) -> Result<(), Sense> {
    reserved(flags, 0xe7, 1)
}

/// Every opcode `parse_cdb` knows, with its service action and CDB length, for
/// REPORT SUPPORTED OPERATION CODES.
pub const SUPPORTED_OPCODES: &[(u8, Option<u8>, u16)] = &[
    (TEST_UNIT_READY, None, 6),
    (REQUEST_SENSE, None, 6),
    (READ_6, None, 6),
    (WRITE_6, None, 6),
    (INQUIRY, None, 6),
    (MODE_SENSE_6, None, 6),
    (START_STOP_UNIT, None, 6),
    (PREVENT_ALLOW_MEDIUM_REMOVAL, None, 6),
    (READ_CAPACITY_10, None, 10),
    (READ_10, None, 10),
    (WRITE_10, None, 10),
    (VERIFY_10, None, 10),
    (SYNCHRONIZE_CACHE_10, None, 10),
    (UNMAP, None, 10),
    (MODE_SENSE_10, None, 10),
    (READ_16, None, 16),
    (WRITE_16, None, 16),
    (VERIFY_16, None, 16),
    (SYNCHRONIZE_CACHE_16, None, 16),
    (WRITE_SAME_16, None, 16),
    (SERVICE_ACTION_IN_16, Some(SAI_READ_CAPACITY_16), 16),
    (REPORT_LUNS, None, 12),
    (
        MAINTENANCE_IN,
        Some(MI_REPORT_SUPPORTED_OPERATION_CODES),
        12,
    ),
    (READ_12, None, 12),
    (WRITE_12, None, 12),
];

#[cfg(test)]
mod tests {
    use super::*;

    fn cdb(bytes: &[u8]) -> Vec<u8> {
        let mut v = bytes.to_vec();
        v.resize(32, 0);
        v
    }

    #[test]
    fn read10_decodes_big_endian_lba_length_and_fua() {
        let c = parse_cdb(&cdb(&[READ_10, 0x08, 0, 0, 0x12, 0x34, 0, 0, 8, 0])).unwrap();
        assert_eq!(
            c,
            Command::Read(Transfer {
                lba: 0x1234,
                blocks: 8,
                fua: true
            })
        );
    }

    #[test]
    fn read6_length_zero_means_256_blocks() {
        let c = parse_cdb(&cdb(&[READ_6, 0x01, 0x02, 0x03, 0, 0])).unwrap();
        assert_eq!(
            c,
            Command::Read(Transfer {
                lba: 0x010203,
                blocks: 256,
                fua: false
            })
        );
    }

    #[test]
    fn write16_decodes_64_bit_lba() {
        let mut raw = [0u8; 16];
        raw[0] = WRITE_16;
        raw[2..10].copy_from_slice(&0x1_0000_0000u64.to_be_bytes());
        raw[10..14].copy_from_slice(&3u32.to_be_bytes());
        let c = parse_cdb(&cdb(&raw)).unwrap();
        assert_eq!(
            c,
            Command::Write(Transfer {
                lba: 0x1_0000_0000,
                blocks: 3,
                fua: false
            })
        );
    }

    #[test]
    fn read12_decodes_32_bit_length() {
        let mut raw = [0u8; 12];
        raw[0] = READ_12;
        raw[2..6].copy_from_slice(&7u32.to_be_bytes());
        raw[6..10].copy_from_slice(&0x10000u32.to_be_bytes());
        let c = parse_cdb(&cdb(&raw)).unwrap();
        assert_eq!(
            c,
            Command::Read(Transfer {
                lba: 7,
                blocks: 0x10000,
                fua: false
            })
        );
    }

    #[test]
    fn rdprotect_is_an_invalid_field_at_byte_1() {
        let err = parse_cdb(&cdb(&[READ_10, 0x20, 0, 0, 0, 0, 0, 0, 1, 0])).unwrap_err();
        assert_eq!(err, Sense::invalid_field_in_cdb(1));
    }

    #[test]
    fn naca_in_control_byte_is_rejected() {
        let err = parse_cdb(&cdb(&[TEST_UNIT_READY, 0, 0, 0, 0, 0x04])).unwrap_err();
        assert_eq!(err, Sense::invalid_field_in_cdb(5));
    }

    #[test]
    fn test_unit_ready_reserved_bytes_rejected() {
        let err = parse_cdb(&cdb(&[TEST_UNIT_READY, 0, 0, 1, 0, 0])).unwrap_err();
        assert_eq!(err.asc, 0x24);
    }

    #[test]
    fn unknown_opcode_is_invalid_opcode() {
        assert_eq!(parse_cdb(&cdb(&[0x02])).unwrap_err(), Sense::INVALID_OPCODE);
        assert_eq!(parse_cdb(&cdb(&[0xc0])).unwrap_err(), Sense::INVALID_OPCODE);
        assert_eq!(parse_cdb(&[]).unwrap_err(), Sense::INVALID_OPCODE);
    }

    #[test]
    fn truncated_cdb_buffer_is_invalid_field() {
        let err = parse_cdb(&[READ_16, 0, 0, 0]).unwrap_err();
        assert_eq!(err, Sense::invalid_field_in_cdb(0));
    }

    #[test]
    fn inquiry_page_code_without_evpd_is_rejected() {
        let err = parse_cdb(&cdb(&[INQUIRY, 0, 0x80, 0, 36, 0])).unwrap_err();
        assert_eq!(err, Sense::invalid_field_in_cdb(2));
        let ok = parse_cdb(&cdb(&[INQUIRY, 1, 0x80, 0, 36, 0])).unwrap();
        assert_eq!(
            ok,
            Command::Inquiry {
                evpd: true,
                page_code: 0x80,
                alloc_len: 36
            }
        );
    }

    #[test]
    fn inquiry_cmddt_bit_is_rejected() {
        let err = parse_cdb(&cdb(&[INQUIRY, 2, 0, 0, 36, 0])).unwrap_err();
        assert_eq!(err, Sense::invalid_field_in_cdb(1));
    }

    #[test]
    fn mode_sense10_decodes_llbaa_dbd_and_page() {
        let c = parse_cdb(&cdb(&[
            MODE_SENSE_10,
            0x18,
            0x48,
            0,
            0,
            0,
            0,
            0x01,
            0x00,
            0,
        ]))
        .unwrap();
        assert_eq!(
            c,
            Command::ModeSense(ModeSense {
                ten_byte: true,
                disable_block_descriptors: true,
                long_lba: true,
                page_control: 1,
                page_code: 0x08,
                subpage_code: 0,
                alloc_len: 256
            })
        );
    }

    #[test]
    fn read_capacity16_needs_its_service_action() {
        let mut raw = [0u8; 16];
        raw[0] = SERVICE_ACTION_IN_16;
        raw[1] = 0x11;
        assert_eq!(
            parse_cdb(&cdb(&raw)).unwrap_err(),
            Sense::invalid_field_in_cdb(1)
        );
        raw[1] = 0x10;
        raw[13] = 32;
        assert_eq!(
            parse_cdb(&cdb(&raw)).unwrap(),
            Command::ReadCapacity16 { alloc_len: 32 }
        );
    }

    #[test]
    fn verify_with_bytchk_is_rejected() {
        let err = parse_cdb(&cdb(&[VERIFY_10, 0x02, 0, 0, 0, 0, 0, 0, 1, 0])).unwrap_err();
        assert_eq!(err, Sense::invalid_field_in_cdb(1));
    }

    #[test]
    fn write_same16_flags() {
        let mut raw = [0u8; 16];
        raw[0] = WRITE_SAME_16;
        raw[1] = 0x09;
        raw[13] = 4;
        assert_eq!(
            parse_cdb(&cdb(&raw)).unwrap(),
            Command::WriteSame16 {
                lba: 0,
                blocks: 4,
                unmap: true,
                ndob: true
            }
        );
        raw[1] = 0x04; // ANCHOR
        assert_eq!(
            parse_cdb(&cdb(&raw)).unwrap_err(),
            Sense::invalid_field_in_cdb(1)
        );
    }

    #[test]
    fn unmap_anchor_is_rejected() {
        let err = parse_cdb(&cdb(&[UNMAP, 1, 0, 0, 0, 0, 0, 0, 24, 0])).unwrap_err();
        assert_eq!(err, Sense::invalid_field_in_cdb(1));
    }

    #[test]
    fn start_stop_loej_is_rejected() {
        assert_eq!(
            parse_cdb(&cdb(&[START_STOP_UNIT, 0, 0, 0, 0x02, 0])).unwrap_err(),
            Sense::invalid_field_in_cdb(4)
        );
        assert_eq!(
            parse_cdb(&cdb(&[START_STOP_UNIT, 0, 0, 0, 0x01, 0])).unwrap(),
            Command::StartStopUnit { start: true }
        );
    }

    #[test]
    fn report_opcodes_rctd_is_rejected() {
        let mut raw = [0u8; 12];
        raw[0] = MAINTENANCE_IN;
        raw[1] = MI_REPORT_SUPPORTED_OPERATION_CODES;
        raw[2] = 0x80;
        assert_eq!(
            parse_cdb(&cdb(&raw)).unwrap_err(),
            Sense::invalid_field_in_cdb(2)
        );
    }

    #[test]
    fn every_supported_opcode_has_a_cdb_length_matching_its_group() {
        for &(opcode, _, len) in SUPPORTED_OPCODES {
            assert_eq!(
                cdb_len(opcode),
                Some(usize::from(len)),
                "opcode {opcode:#x}"
            );
        }
    }
}
