//! SCSI numbers: operation codes, status bytes, sense keys and additional sense
//! codes (SPC-5 / SBC-4), VPD and mode page codes, and the virtio-scsi wire
//! constants that are not in `virtio-bindings`.
//!
//! Owns: every magic number of the SCSI layer, named once.

// ---- Operation codes (SPC-5 and SBC-4) ----
pub const TEST_UNIT_READY: u8 = 0x00;
pub const REQUEST_SENSE: u8 = 0x03;
pub const READ_6: u8 = 0x08;
pub const WRITE_6: u8 = 0x0a;
pub const INQUIRY: u8 = 0x12;
pub const MODE_SELECT_6: u8 = 0x15;
pub const MODE_SENSE_6: u8 = 0x1a;
pub const START_STOP_UNIT: u8 = 0x1b;
pub const PREVENT_ALLOW_MEDIUM_REMOVAL: u8 = 0x1e;
pub const READ_CAPACITY_10: u8 = 0x25;
pub const READ_10: u8 = 0x28;
pub const WRITE_10: u8 = 0x2a;
pub const VERIFY_10: u8 = 0x2f;
pub const SYNCHRONIZE_CACHE_10: u8 = 0x35;
pub const UNMAP: u8 = 0x42;
pub const MODE_SENSE_10: u8 = 0x5a;
pub const READ_16: u8 = 0x88;
pub const WRITE_16: u8 = 0x8a;
pub const VERIFY_16: u8 = 0x8f;
pub const SYNCHRONIZE_CACHE_16: u8 = 0x91;
pub const WRITE_SAME_16: u8 = 0x93;
/// SERVICE ACTION IN(16); service action 0x10 is READ CAPACITY(16).
pub const SERVICE_ACTION_IN_16: u8 = 0x9e;
pub const SAI_READ_CAPACITY_16: u8 = 0x10;
pub const REPORT_LUNS: u8 = 0xa0;
/// MAINTENANCE IN; service action 0x0c is REPORT SUPPORTED OPERATION CODES.
pub const MAINTENANCE_IN: u8 = 0xa3;
pub const MI_REPORT_SUPPORTED_OPERATION_CODES: u8 = 0x0c;
pub const READ_12: u8 = 0xa8;
pub const WRITE_12: u8 = 0xaa;

// ---- Status bytes (SAM-5) ----
pub const STATUS_GOOD: u8 = 0x00;
pub const STATUS_CHECK_CONDITION: u8 = 0x02;

// ---- Sense keys ----
pub const SENSE_KEY_NO_SENSE: u8 = 0x0;
pub const SENSE_KEY_NOT_READY: u8 = 0x2;
pub const SENSE_KEY_MEDIUM_ERROR: u8 = 0x3;
pub const SENSE_KEY_HARDWARE_ERROR: u8 = 0x4;
pub const SENSE_KEY_ILLEGAL_REQUEST: u8 = 0x5;
pub const SENSE_KEY_UNIT_ATTENTION: u8 = 0x6;
pub const SENSE_KEY_DATA_PROTECT: u8 = 0x7;
pub const SENSE_KEY_ABORTED_COMMAND: u8 = 0xb;

/// Fixed-format sense, current error (SPC-5 4.4.3), with the VALID bit clear.
pub const SENSE_RESPONSE_CODE_FIXED_CURRENT: u8 = 0x70;
/// Length of the fixed-format sense data this device produces.
pub const FIXED_SENSE_LEN: usize = 18;

// ---- Device type and versions ----
/// Peripheral device type 0: direct access block device.
pub const TYPE_DISK: u8 = 0x00;
/// Peripheral qualifier 3, type 0x1f: no logical unit at this LUN.
pub const TYPE_NO_LUN: u8 = 0x7f;
/// INQUIRY VERSION: SPC-5.
pub const SPC_VERSION_SPC5: u8 = 0x07;

// ---- VPD pages ----
pub const VPD_SUPPORTED_PAGES: u8 = 0x00;
pub const VPD_UNIT_SERIAL_NUMBER: u8 = 0x80;
pub const VPD_DEVICE_IDENTIFICATION: u8 = 0x83;
pub const VPD_BLOCK_LIMITS: u8 = 0xb0;
pub const VPD_BLOCK_DEVICE_CHARACTERISTICS: u8 = 0xb1;
pub const VPD_LOGICAL_BLOCK_PROVISIONING: u8 = 0xb2;

// ---- Mode pages ----
pub const MODE_PAGE_CACHING: u8 = 0x08;
pub const MODE_PAGE_CONTROL: u8 = 0x0a;
pub const MODE_PAGE_ALL: u8 = 0x3f;

// ---- virtio-scsi ----
/// Type field of a control-queue request (little-endian u32 at offset 0).
pub const VIRTIO_SCSI_T_TMF: u32 = 0;
pub const VIRTIO_SCSI_T_AN_QUERY: u32 = 1;
pub const VIRTIO_SCSI_T_AN_SUBSCRIBE: u32 = 2;
pub const VIRTIO_SCSI_T_TMF_ABORT_TASK: u32 = 0;
pub const VIRTIO_SCSI_T_TMF_ABORT_TASK_SET: u32 = 1;
pub const VIRTIO_SCSI_T_TMF_CLEAR_ACA: u32 = 2;
pub const VIRTIO_SCSI_T_TMF_CLEAR_TASK_SET: u32 = 3;
pub const VIRTIO_SCSI_T_TMF_I_T_NEXUS_RESET: u32 = 4;
pub const VIRTIO_SCSI_T_TMF_LOGICAL_UNIT_RESET: u32 = 5;
pub const VIRTIO_SCSI_T_TMF_QUERY_TASK: u32 = 6;
pub const VIRTIO_SCSI_T_TMF_QUERY_TASK_SET: u32 = 7;
/// Response codes of the virtio-scsi request and control headers.
pub const VIRTIO_SCSI_S_OK: u8 = 0;
pub const VIRTIO_SCSI_S_OVERRUN: u8 = 1;
pub const VIRTIO_SCSI_S_BAD_TARGET: u8 = 3;
pub const VIRTIO_SCSI_S_FAILURE: u8 = 9;
pub const VIRTIO_SCSI_S_FUNCTION_SUCCEEDED: u8 = 10;
pub const VIRTIO_SCSI_S_FUNCTION_REJECTED: u8 = 11;
pub const VIRTIO_SCSI_S_INCORRECT_LUN: u8 = 12;
/// Event queue: "events were dropped" flag ORed into the event type.
pub const VIRTIO_SCSI_T_EVENTS_MISSED: u32 = 0x8000_0000;
pub const VIRTIO_SCSI_T_NO_EVENT: u32 = 0;
/// Size of one `virtio_scsi_event` (event u32, lun[8], reason u32).
pub const VIRTIO_SCSI_EVENT_SIZE: u32 = 16;
/// Default and maximum sizes of the CDB and sense fields (virtio 1.2 5.6.4).
pub const VIRTIO_SCSI_CDB_DEFAULT_SIZE: u32 = 32;
pub const VIRTIO_SCSI_SENSE_DEFAULT_SIZE: u32 = 96;
/// Largest CDB / sense sizes the driver may write into config that we accept.
pub const VIRTIO_SCSI_CDB_MAX_SIZE: u32 = 256;
pub const VIRTIO_SCSI_SENSE_MAX_SIZE: u32 = 256;
/// Device ID of virtio-scsi (virtio 1.2 5).
pub const VIRTIO_ID_SCSI: u32 = 8;
