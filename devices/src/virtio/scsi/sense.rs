//! Sense data: the (key, ASC, ASCQ) triples this device reports and their
//! fixed-format encoding (SPC-5 4.4.3).
//!
//! Owns: which condition maps to which sense triple. Every CHECK CONDITION the
//! disk emulation returns is built from one of the constructors below.

use super::constants::*;

/// One sense condition. `field_pointer` is the sense-key-specific field for
/// ILLEGAL REQUEST: which CDB (or parameter list) byte was wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sense {
    pub key: u8,
    pub asc: u8,
    pub ascq: u8,
    pub field_pointer: Option<FieldPointer>,
}

/// Sense-key-specific field pointer (SPC-5 4.4.2.4.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FieldPointer {
    /// True when the bad byte is in the CDB, false when in the parameter data.
    pub in_cdb: bool,
    pub byte: u16,
}

impl Sense {
    const fn new(key: u8, asc: u8, ascq: u8) -> Sense {
        Sense {
            key,
            asc,
            ascq,
            field_pointer: None,
        }
    }

    /// No sense: what REQUEST SENSE reports when nothing is pending.
    pub const NO_SENSE: Sense = Sense::new(SENSE_KEY_NO_SENSE, 0x00, 0x00);
    /// ILLEGAL REQUEST / INVALID COMMAND OPERATION CODE (20h/00h).
    pub const INVALID_OPCODE: Sense = Sense::new(SENSE_KEY_ILLEGAL_REQUEST, 0x20, 0x00);
    /// ILLEGAL REQUEST / LOGICAL BLOCK ADDRESS OUT OF RANGE (21h/00h).
    pub const LBA_OUT_OF_RANGE: Sense = Sense::new(SENSE_KEY_ILLEGAL_REQUEST, 0x21, 0x00);
    /// ILLEGAL REQUEST / INVALID FIELD IN CDB (24h/00h) without a pointer.
    pub const INVALID_FIELD_IN_CDB: Sense = Sense::new(SENSE_KEY_ILLEGAL_REQUEST, 0x24, 0x00);
    /// ILLEGAL REQUEST / PARAMETER LIST LENGTH ERROR (1Ah/00h).
    pub const PARAMETER_LIST_LENGTH_ERROR: Sense =
        Sense::new(SENSE_KEY_ILLEGAL_REQUEST, 0x1a, 0x00);
    /// ILLEGAL REQUEST / LOGICAL UNIT NOT SUPPORTED (25h/00h).
    pub const LUN_NOT_SUPPORTED: Sense = Sense::new(SENSE_KEY_ILLEGAL_REQUEST, 0x25, 0x00);
    /// DATA PROTECT / WRITE PROTECTED (27h/00h).
    pub const WRITE_PROTECTED: Sense = Sense::new(SENSE_KEY_DATA_PROTECT, 0x27, 0x00);
    /// MEDIUM ERROR / UNRECOVERED READ ERROR (11h/00h).
    pub const READ_ERROR: Sense = Sense::new(SENSE_KEY_MEDIUM_ERROR, 0x11, 0x00);
    /// MEDIUM ERROR / WRITE ERROR (0Ch/00h).
    pub const WRITE_ERROR: Sense = Sense::new(SENSE_KEY_MEDIUM_ERROR, 0x0c, 0x00);
    /// MEDIUM ERROR / NO ADDITIONAL SENSE (used for failed flush or unmap).
    pub const MEDIUM_ERROR: Sense = Sense::new(SENSE_KEY_MEDIUM_ERROR, 0x00, 0x00);
    /// NOT READY / MEDIUM NOT PRESENT (3Ah/00h): the disk was stopped.
    pub const MEDIUM_NOT_PRESENT: Sense = Sense::new(SENSE_KEY_NOT_READY, 0x3a, 0x00);
    /// UNIT ATTENTION / POWER ON, RESET, OR BUS DEVICE RESET OCCURRED (29h/00h).
    pub const RESET_OCCURRED: Sense = Sense::new(SENSE_KEY_UNIT_ATTENTION, 0x29, 0x00);
    /// NOT READY / LOGICAL UNIT NOT READY, INITIALIZING COMMAND REQUIRED (04h/02h):
    /// the unit was stopped with START STOP UNIT.
    pub const NOT_READY_INIT_REQUIRED: Sense = Sense::new(SENSE_KEY_NOT_READY, 0x04, 0x02);
    /// ILLEGAL REQUEST / SAVING PARAMETERS NOT SUPPORTED (39h/00h).
    pub const SAVING_NOT_SUPPORTED: Sense = Sense::new(SENSE_KEY_ILLEGAL_REQUEST, 0x39, 0x00);
    /// ABORTED COMMAND / NO ADDITIONAL SENSE: the command was aborted by a TMF.
    pub const ABORTED: Sense = Sense::new(SENSE_KEY_ABORTED_COMMAND, 0x00, 0x00);

    /// INVALID FIELD IN CDB pointing at `byte` of the CDB.
    pub const fn invalid_field_in_cdb(byte: u16) -> Sense {
        Sense {
            field_pointer: Some(FieldPointer { in_cdb: true, byte }),
            ..Sense::INVALID_FIELD_IN_CDB
        }
    }

    /// INVALID FIELD IN PARAMETER LIST (26h/00h) pointing at `byte` of the data.
    pub const fn invalid_field_in_parameter_list(byte: u16) -> Sense {
        Sense {
            field_pointer: Some(FieldPointer {
                in_cdb: false,
                byte,
            }),
            ..Sense::new(SENSE_KEY_ILLEGAL_REQUEST, 0x26, 0x00)
        }
    }

    /// The 18-byte fixed-format sense data for this condition.
    pub fn to_fixed(&self) -> [u8; FIXED_SENSE_LEN] {
        let mut sense = [0u8; FIXED_SENSE_LEN];
        sense[0] = SENSE_RESPONSE_CODE_FIXED_CURRENT;
        sense[2] = self.key & 0x0f;
        // ADDITIONAL SENSE LENGTH: bytes after byte 7.
        sense[7] = (FIXED_SENSE_LEN - 8) as u8;
        sense[12] = self.asc;
        sense[13] = self.ascq;
        if let Some(pointer) = self.field_pointer {
            // SKSV, then C/D (1 = CDB); bit pointer not valid.
            sense[15] = 0x80 | if pointer.in_cdb { 0x40 } else { 0 };
            sense[16..18].copy_from_slice(&pointer.byte.to_be_bytes());
        }
        sense
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_format_carries_key_asc_ascq_and_length() {
        let bytes = Sense::LBA_OUT_OF_RANGE.to_fixed();
        assert_eq!(bytes[0], 0x70);
        assert_eq!(bytes[2], SENSE_KEY_ILLEGAL_REQUEST);
        assert_eq!(bytes[7], 10);
        assert_eq!((bytes[12], bytes[13]), (0x21, 0x00));
        assert_eq!(bytes[15], 0, "no sense-key-specific data without a pointer");
    }

    #[test]
    fn invalid_field_in_cdb_sets_sksv_cd_and_pointer() {
        let bytes = Sense::invalid_field_in_cdb(1).to_fixed();
        assert_eq!((bytes[2], bytes[12]), (SENSE_KEY_ILLEGAL_REQUEST, 0x24));
        assert_eq!(bytes[15], 0xc0);
        assert_eq!(u16::from_be_bytes([bytes[16], bytes[17]]), 1);
    }

    #[test]
    fn parameter_list_pointer_clears_cd_bit() {
        let bytes = Sense::invalid_field_in_parameter_list(8).to_fixed();
        assert_eq!((bytes[12], bytes[15]), (0x26, 0x80));
        assert_eq!(bytes[17], 8);
    }

    #[test]
    fn write_protect_and_unit_attention_keys() {
        assert_eq!(Sense::WRITE_PROTECTED.to_fixed()[2], SENSE_KEY_DATA_PROTECT);
        assert_eq!(
            Sense::RESET_OCCURRED.to_fixed()[2],
            SENSE_KEY_UNIT_ATTENTION
        );
        assert_eq!(Sense::READ_ERROR.to_fixed()[2], SENSE_KEY_MEDIUM_ERROR);
    }
}
