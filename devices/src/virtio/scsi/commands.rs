//! The SCSI disk command set as pure functions: a decoded [`Command`] plus the
//! disk's geometry and state in, an [`Outcome`] out — data-in bytes, GOOD, CHECK
//! CONDITION with sense, or a description of the disk I/O to start.
//!
//! Owns: SPC-5 / SBC-4 behaviour (INQUIRY and VPD pages, mode pages, capacity,
//! unit attention rules, range checks). Never touches guest memory or images.

use super::cdb::{self, Command, ModeSense, OpcodeQuery, Transfer};
use super::constants::*;
use super::disk::{
    DiskGeometry, LunState, MAX_PATTERN_WRITE_BYTES, MAX_UNMAP_BLOCKS, MAX_UNMAP_DESCRIPTORS,
};
use super::sense::Sense;

/// What a command turned into.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Status GOOD, no data.
    Good,
    /// Status GOOD with this data-in (already cut to the allocation length).
    DataIn(Vec<u8>),
    /// CHECK CONDITION with this sense.
    Check(Sense),
    /// Start this disk I/O; its result decides the status.
    Io(IoPlan),
}

/// Disk I/O a command needs, in bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IoPlan {
    /// Read `len` bytes at `offset` into the data-in buffers.
    Read {
        offset: u64,
        len: u64,
    },
    /// Write `len` bytes from the data-out buffers at `offset`.
    Write {
        offset: u64,
        len: u64,
        fua: bool,
    },
    Flush,
    /// Discard each `(offset, len)`.
    Discard(Vec<(u64, u64)>),
    WriteZeroes {
        offset: u64,
        len: u64,
        unmap: bool,
    },
    /// Write `pattern` (one block) repeatedly over `len` bytes at `offset`.
    WritePattern {
        offset: u64,
        len: u64,
        pattern: Vec<u8>,
    },
}

/// Vendor and product strings of standard INQUIRY data.
const VENDOR: &[u8; 8] = b"HANGAR  ";
const PRODUCT: &[u8; 16] = b"VIRTUAL DISK    ";
const REVISION: &[u8; 4] = b"0.1 ";

/// Runs one CDB against a logical unit that exists. `data_out` is the (small)
/// parameter data for commands that take one; READ/WRITE data never passes here.
/// `luns` lists the LUNs of this target for REPORT LUNS.
pub fn execute(
    geometry: &DiskGeometry,
    state: &mut LunState,
    raw_cdb: &[u8],
    data_out: &[u8],
    luns: &[u16],
) -> Outcome {
    let opcode = raw_cdb.first().copied().unwrap_or(0xff);
    // Unit attention is reported to the first command, except the ones that
    // SAM-5 5.14 exempts; REQUEST SENSE returns and clears it.
    if let Some(attention) = state.unit_attention {
        match opcode {
            INQUIRY | REPORT_LUNS => {}
            REQUEST_SENSE => {}
            _ => {
                state.unit_attention = None;
                return Outcome::Check(attention);
            }
        }
    }
    let command = match cdb::parse_cdb(raw_cdb) {
        Ok(command) => command,
        Err(sense) => return Outcome::Check(sense),
    };
    match run(geometry, state, &command, data_out, luns) {
        Ok(outcome) => outcome,
        Err(sense) => Outcome::Check(sense),
    }
}

/// Runs one CDB addressed to a LUN that does not exist on an existing target
/// (SPC-5: INQUIRY answers with peripheral qualifier 3, REPORT LUNS works).
pub fn execute_without_lun(raw_cdb: &[u8], luns: &[u16]) -> Outcome {
    match cdb::parse_cdb(raw_cdb) {
        Ok(Command::Inquiry {
            evpd: false,
            alloc_len,
            ..
        }) => {
            let mut data = standard_inquiry(TYPE_NO_LUN);
            truncate(&mut data, u32::from(alloc_len));
            Outcome::DataIn(data)
        }
        Ok(Command::ReportLuns { alloc_len }) => Outcome::DataIn(report_luns(luns, alloc_len)),
        Ok(Command::RequestSense { alloc_len }) => {
            let mut data = Sense::LUN_NOT_SUPPORTED.to_fixed().to_vec();
            truncate(&mut data, u32::from(alloc_len));
            Outcome::DataIn(data)
        }
        _ => Outcome::Check(Sense::LUN_NOT_SUPPORTED),
    }
}

fn run(
    g: &DiskGeometry,
    state: &mut LunState,
    command: &Command,
    data_out: &[u8],
    luns: &[u16],
) -> Result<Outcome, Sense> {
    let media_access = matches!(
        command,
        Command::Read(_)
            | Command::Write(_)
            | Command::Verify { .. }
            | Command::SynchronizeCache { .. }
            | Command::Unmap { .. }
            | Command::WriteSame16 { .. }
            | Command::TestUnitReady
    );
    if media_access && state.stopped {
        return Err(Sense::NOT_READY_INIT_REQUIRED);
    }
    Ok(match command {
        Command::TestUnitReady | Command::PreventAllowMediumRemoval => Outcome::Good,
        Command::RequestSense { alloc_len } => {
            let sense = state.unit_attention.take().unwrap_or(Sense::NO_SENSE);
            let mut data = sense.to_fixed().to_vec();
            truncate(&mut data, u32::from(*alloc_len));
            Outcome::DataIn(data)
        }
        Command::Inquiry {
            evpd,
            page_code,
            alloc_len,
        } => {
            let mut data = if *evpd {
                vpd_page(g, *page_code)?
            } else {
                standard_inquiry(TYPE_DISK)
            };
            truncate(&mut data, u32::from(*alloc_len));
            Outcome::DataIn(data)
        }
        Command::ModeSense(request) => Outcome::DataIn(mode_sense(g, request)?),
        Command::StartStopUnit { start } => {
            state.stopped = !start;
            Outcome::Good
        }
        Command::ReadCapacity10 => {
            let last = g.blocks.saturating_sub(1).min(u64::from(u32::MAX)) as u32;
            let mut data = last.to_be_bytes().to_vec();
            data.extend_from_slice(&g.block_size.to_be_bytes());
            Outcome::DataIn(data)
        }
        Command::ReadCapacity16 { alloc_len } => {
            let mut data = vec![0u8; 32];
            data[0..8].copy_from_slice(&g.blocks.saturating_sub(1).to_be_bytes());
            data[8..12].copy_from_slice(&g.block_size.to_be_bytes());
            // Byte 14: LBPME (bit 7) when thin provisioning is exposed.
            if g.discard {
                data[14] = 0x80;
            }
            truncate(&mut data, *alloc_len);
            Outcome::DataIn(data)
        }
        Command::Read(t) => {
            let (offset, len) = transfer_bytes(g, t)?;
            if len == 0 {
                Outcome::Good
            } else {
                Outcome::Io(IoPlan::Read { offset, len })
            }
        }
        Command::Write(t) => {
            if g.read_only {
                return Err(Sense::WRITE_PROTECTED);
            }
            let (offset, len) = transfer_bytes(g, t)?;
            if len == 0 {
                Outcome::Good
            } else {
                Outcome::Io(IoPlan::Write {
                    offset,
                    len,
                    fua: t.fua,
                })
            }
        }
        Command::Verify { lba, blocks } => {
            g.check_range(*lba, u64::from(*blocks))?;
            Outcome::Good
        }
        Command::SynchronizeCache { lba, blocks } => {
            // Zero blocks means "to the end of the medium".
            g.check_range(*lba, u64::from(*blocks))?;
            Outcome::Io(IoPlan::Flush)
        }
        Command::Unmap { param_len } => unmap(g, *param_len, data_out)?,
        Command::WriteSame16 {
            lba,
            blocks,
            unmap,
            ndob,
        } => write_same(g, *lba, *blocks, *unmap, *ndob, data_out)?,
        Command::ReportLuns { alloc_len } => Outcome::DataIn(report_luns(luns, *alloc_len)),
        Command::ReportSupportedOpcodes(query) => {
            Outcome::DataIn(report_supported_opcodes(g, query)?)
        }
    })
}

/// Cuts `data` to the allocation length.
fn truncate(data: &mut Vec<u8>, alloc_len: u32) {
    data.truncate(usize::try_from(alloc_len).unwrap_or(usize::MAX));
}

fn transfer_bytes(g: &DiskGeometry, t: &Transfer) -> Result<(u64, u64), Sense> {
    g.check_range(t.lba, u64::from(t.blocks))?;
    if t.blocks > g.max_transfer_blocks {
        // SBC-4 5.x: a transfer over MAXIMUM TRANSFER LENGTH is an invalid field.
        return Err(Sense::INVALID_FIELD_IN_CDB);
    }
    let block_size = u64::from(g.block_size);
    Ok((t.lba * block_size, u64::from(t.blocks) * block_size))
}

fn standard_inquiry(peripheral: u8) -> Vec<u8> {
    let mut data = vec![0u8; 36];
    data[0] = peripheral;
    data[2] = SPC_VERSION_SPC5;
    // Response data format 2, HISUP (bit 4).
    data[3] = 0x12;
    data[4] = (data.len() - 5) as u8;
    // CMDQUE: tagged command queuing.
    data[7] = 0x02;
    data[8..16].copy_from_slice(VENDOR);
    data[16..32].copy_from_slice(PRODUCT);
    data[32..36].copy_from_slice(REVISION);
    data
}

/// A VPD page with its 4-byte header.
fn vpd(page: u8, body: &[u8]) -> Vec<u8> {
    let mut data = vec![TYPE_DISK, page];
    data.extend_from_slice(&(body.len() as u16).to_be_bytes());
    data.extend_from_slice(body);
    data
}

fn vpd_page(g: &DiskGeometry, page_code: u8) -> Result<Vec<u8>, Sense> {
    Ok(match page_code {
        VPD_SUPPORTED_PAGES => vpd(
            page_code,
            &[
                VPD_SUPPORTED_PAGES,
                VPD_UNIT_SERIAL_NUMBER,
                VPD_DEVICE_IDENTIFICATION,
                VPD_BLOCK_LIMITS,
                VPD_BLOCK_DEVICE_CHARACTERISTICS,
                VPD_LOGICAL_BLOCK_PROVISIONING,
            ],
        ),
        VPD_UNIT_SERIAL_NUMBER => vpd(page_code, g.serial.as_bytes()),
        VPD_DEVICE_IDENTIFICATION => {
            let mut body = Vec::new();
            // NAA designator: code set 1 (binary), association 0 (LU), type 3 (NAA).
            body.extend_from_slice(&[0x01, 0x03, 0x00, 0x08]);
            body.extend_from_slice(&g.naa_identifier().to_be_bytes());
            // T10 vendor ID designator: code set 2 (ASCII), type 1.
            let mut t10 = VENDOR.to_vec();
            t10.extend_from_slice(g.serial.as_bytes());
            body.extend_from_slice(&[0x02, 0x01, 0x00, t10.len() as u8]);
            body.extend_from_slice(&t10);
            vpd(page_code, &body)
        }
        VPD_BLOCK_LIMITS => {
            let mut body = vec![0u8; 0x3c];
            // Byte offsets below are of the full page (body index = page - 4).
            // WSNZ: WRITE SAME with zero blocks is not supported.
            body[0] = 0x01;
            body[4..8].copy_from_slice(&g.max_transfer_blocks.to_be_bytes());
            body[8..12].copy_from_slice(&g.max_transfer_blocks.to_be_bytes());
            if g.discard {
                body[16..20].copy_from_slice(&MAX_UNMAP_BLOCKS.to_be_bytes());
                body[20..24].copy_from_slice(&MAX_UNMAP_DESCRIPTORS.to_be_bytes());
                // Optimal unmap granularity: one block.
                body[24..28].copy_from_slice(&1u32.to_be_bytes());
            }
            body[32..40].copy_from_slice(&u64::from(MAX_UNMAP_BLOCKS).to_be_bytes());
            vpd(page_code, &body)
        }
        VPD_BLOCK_DEVICE_CHARACTERISTICS => {
            let mut body = vec![0u8; 0x3c];
            // Medium rotation rate 1: non-rotating (solid state).
            body[0..2].copy_from_slice(&1u16.to_be_bytes());
            vpd(page_code, &body)
        }
        VPD_LOGICAL_BLOCK_PROVISIONING => {
            let mut body = vec![0u8; 4];
            if g.discard {
                // LBPU (UNMAP) and LBPWS (WRITE SAME(16) with UNMAP); thin provisioned.
                body[1] = 0xc0;
                body[2] = 0x02;
            }
            vpd(page_code, &body)
        }
        _ => return Err(Sense::invalid_field_in_cdb(2)),
    })
}

/// The caching page (08h): WCE set — writes are cached until SYNCHRONIZE CACHE
/// or FUA, which is what the block layer gives.
fn caching_page(changeable: bool) -> Vec<u8> {
    let mut page = vec![0u8; 20];
    page[0] = MODE_PAGE_CACHING;
    page[1] = 0x12;
    if !changeable {
        page[2] = 0x04;
    }
    page
}

/// The control page (0Ah): unrestricted reordering, descriptor sense off.
fn control_page(changeable: bool) -> Vec<u8> {
    let mut page = vec![0u8; 12];
    page[0] = MODE_PAGE_CONTROL;
    page[1] = 0x0a;
    if !changeable {
        // QUEUE ALGORITHM MODIFIER 1: unrestricted reordering allowed.
        page[3] = 0x10;
    }
    page
}

fn mode_sense(g: &DiskGeometry, request: &ModeSense) -> Result<Vec<u8>, Sense> {
    // Page control 3 (saved values) is not supported.
    if request.page_control == 3 {
        return Err(Sense::SAVING_NOT_SUPPORTED);
    }
    let changeable = request.page_control == 1;
    let pages = match (request.page_code, request.subpage_code) {
        (MODE_PAGE_CACHING, 0) => caching_page(changeable),
        (MODE_PAGE_CONTROL, 0) => control_page(changeable),
        (MODE_PAGE_ALL, 0) | (MODE_PAGE_ALL, 0xff) => {
            let mut all = caching_page(changeable);
            all.extend(control_page(changeable));
            all
        }
        (MODE_PAGE_CACHING | MODE_PAGE_CONTROL | MODE_PAGE_ALL, _) => {
            return Err(Sense::invalid_field_in_cdb(3))
        }
        _ => return Err(Sense::invalid_field_in_cdb(2)),
    };
    // Device-specific parameter: WP (bit 7) for read-only, DPOFUA (bit 4).
    let device_specific = if g.read_only { 0x80 } else { 0 } | 0x10;
    let long_lba = request.ten_byte && request.long_lba;
    let descriptor = if request.disable_block_descriptors {
        Vec::new()
    } else if long_lba {
        let mut d = vec![0u8; 16];
        d[0..8].copy_from_slice(&g.blocks.to_be_bytes());
        d[12..16].copy_from_slice(&g.block_size.to_be_bytes());
        d
    } else {
        let mut d = vec![0u8; 8];
        let blocks = g.blocks.min(0x00ff_ffff) as u32;
        d[1..4].copy_from_slice(&blocks.to_be_bytes()[1..]);
        d[5..8].copy_from_slice(&g.block_size.to_be_bytes()[1..]);
        d
    };
    let mut data = if request.ten_byte {
        let mut header = vec![0u8; 8];
        header[3] = device_specific;
        header[4] = u8::from(long_lba && !descriptor.is_empty());
        header[6..8].copy_from_slice(&(descriptor.len() as u16).to_be_bytes());
        header
    } else {
        vec![0, 0, device_specific, descriptor.len() as u8]
    };
    data.extend(descriptor);
    data.extend(pages);
    // MODE DATA LENGTH excludes itself.
    if request.ten_byte {
        let len = (data.len() - 2) as u16;
        data[0..2].copy_from_slice(&len.to_be_bytes());
    } else {
        data[0] = (data.len() - 1) as u8;
    }
    truncate(&mut data, u32::from(request.alloc_len));
    Ok(data)
}

/// REPORT LUNS parameter data: single-level LUNs, peripheral (< 256) or flat space.
pub fn report_luns(luns: &[u16], alloc_len: u32) -> Vec<u8> {
    let mut data = vec![0u8; 8];
    data[0..4].copy_from_slice(&((luns.len() * 8) as u32).to_be_bytes());
    for &lun in luns {
        let mut entry = [0u8; 8];
        if lun < 256 {
            entry[1] = lun as u8;
        } else {
            entry[0] = 0x40 | ((lun >> 8) as u8 & 0x3f);
            entry[1] = lun as u8;
        }
        data.extend_from_slice(&entry);
    }
    truncate(&mut data, alloc_len);
    data
}

fn unmap(g: &DiskGeometry, param_len: u16, data_out: &[u8]) -> Result<Outcome, Sense> {
    if !g.discard {
        return Err(Sense::INVALID_OPCODE);
    }
    if g.read_only {
        return Err(Sense::WRITE_PROTECTED);
    }
    let param_len = usize::from(param_len);
    if param_len == 0 {
        return Ok(Outcome::Good);
    }
    if param_len < 8 || data_out.len() < param_len {
        return Err(Sense::PARAMETER_LIST_LENGTH_ERROR);
    }
    let params = &data_out[..param_len];
    let descriptors_len = usize::from(u16::from_be_bytes([params[2], params[3]]));
    if descriptors_len % 16 != 0 || 8 + descriptors_len > param_len {
        return Err(Sense::invalid_field_in_parameter_list(2));
    }
    let count = descriptors_len / 16;
    if count > MAX_UNMAP_DESCRIPTORS as usize {
        return Err(Sense::invalid_field_in_parameter_list(2));
    }
    let block_size = u64::from(g.block_size);
    let mut ranges = Vec::with_capacity(count);
    for descriptor in params[8..8 + descriptors_len].chunks_exact(16) {
        let lba = u64::from_be_bytes(descriptor[0..8].try_into().unwrap_or_default());
        let blocks = u32::from_be_bytes(descriptor[8..12].try_into().unwrap_or_default());
        g.check_range(lba, u64::from(blocks))?;
        if blocks > MAX_UNMAP_BLOCKS {
            return Err(Sense::invalid_field_in_parameter_list(8));
        }
        if blocks > 0 {
            ranges.push((lba * block_size, u64::from(blocks) * block_size));
        }
    }
    if ranges.is_empty() {
        return Ok(Outcome::Good);
    }
    Ok(Outcome::Io(IoPlan::Discard(ranges)))
}

fn write_same(
    g: &DiskGeometry,
    lba: u64,
    blocks: u32,
    unmap: bool,
    ndob: bool,
    data_out: &[u8],
) -> Result<Outcome, Sense> {
    if g.read_only {
        return Err(Sense::WRITE_PROTECTED);
    }
    if blocks == 0 || blocks > MAX_UNMAP_BLOCKS {
        // WSNZ is set in the block limits page: zero is not "to the end".
        return Err(Sense::invalid_field_in_cdb(10));
    }
    g.check_range(lba, u64::from(blocks))?;
    let block_size = g.block_size as usize;
    let offset = lba * block_size as u64;
    let len = u64::from(blocks) * block_size as u64;
    let zeroes = if ndob {
        true
    } else {
        let pattern = data_out
            .get(..block_size)
            .ok_or(Sense::PARAMETER_LIST_LENGTH_ERROR)?;
        if pattern.iter().any(|&b| b != 0) {
            if len > MAX_PATTERN_WRITE_BYTES {
                return Err(Sense::invalid_field_in_cdb(10));
            }
            return Ok(Outcome::Io(IoPlan::WritePattern {
                offset,
                len,
                pattern: pattern.to_vec(),
            }));
        }
        true
    };
    debug_assert!(zeroes);
    Ok(Outcome::Io(IoPlan::WriteZeroes {
        offset,
        len,
        unmap: unmap && g.discard,
    }))
}

fn report_supported_opcodes(g: &DiskGeometry, query: &OpcodeQuery) -> Result<Vec<u8>, Sense> {
    let supported = |opcode: u8| opcode != UNMAP || g.discard;
    let mut data = Vec::new();
    match query.reporting_options {
        0 => {
            data.extend_from_slice(&[0u8; 4]);
            for &(opcode, service_action, cdb_len) in cdb::SUPPORTED_OPCODES {
                if !supported(opcode) {
                    continue;
                }
                let mut d = [0u8; 8];
                d[0] = opcode;
                if let Some(sa) = service_action {
                    d[3] = sa;
                    d[5] = 0x01; // SERVACTV
                }
                d[6..8].copy_from_slice(&cdb_len.to_be_bytes());
                data.extend_from_slice(&d);
            }
            let len = (data.len() - 4) as u32;
            data[0..4].copy_from_slice(&len.to_be_bytes());
        }
        1..=3 => {
            let entry = cdb::SUPPORTED_OPCODES
                .iter()
                .find(|(opcode, _, _)| *opcode == query.opcode);
            let found = match (query.reporting_options, entry) {
                // Option 1: opcode without service action; one that has SAs is an error.
                (1, Some((_, Some(_), _))) => return Err(Sense::invalid_field_in_cdb(2)),
                (1, Some(&(op, None, len))) => Some((op, len)),
                // Option 2: opcode plus service action; one without SAs is an error.
                (2, Some((_, None, _))) => return Err(Sense::invalid_field_in_cdb(2)),
                (2, Some(&(op, Some(sa), len))) if u16::from(sa) == query.service_action => {
                    Some((op, len))
                }
                // Option 3: either form.
                (3, Some(&(op, None, len))) => Some((op, len)),
                (3, Some(&(op, Some(sa), len))) if u16::from(sa) == query.service_action => {
                    Some((op, len))
                }
                _ => None,
            }
            .filter(|(op, _)| supported(*op));
            match found {
                Some((opcode, cdb_len)) => {
                    // SUPPORT 011b: supported as the standard describes.
                    data.extend_from_slice(&[0, 0x03]);
                    data.extend_from_slice(&cdb_len.to_be_bytes());
                    // CDB usage bitmap: opcode, then every bit usable (a coarse map).
                    let mut usage = vec![0xffu8; usize::from(cdb_len)];
                    usage[0] = opcode;
                    // CONTROL byte: only NACA is checked, vendor bits ignored.
                    usage[usize::from(cdb_len) - 1] = 0x00;
                    data.extend(usage);
                }
                None => data.extend_from_slice(&[0, 0x01, 0, 0]),
            }
        }
        _ => return Err(Sense::invalid_field_in_cdb(2)),
    }
    truncate(&mut data, query.alloc_len);
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geometry() -> DiskGeometry {
        DiskGeometry {
            blocks: 2048,
            block_size: 512,
            read_only: false,
            discard: true,
            serial: "SER123".into(),
            max_transfer_blocks: 1024,
            target: 0,
            lun: 0,
        }
    }

    fn ready() -> LunState {
        LunState::default()
    }

    fn cdb(bytes: &[u8]) -> Vec<u8> {
        let mut v = bytes.to_vec();
        v.resize(32, 0);
        v
    }

    fn run_cdb(g: &DiskGeometry, bytes: &[u8]) -> Outcome {
        execute(g, &mut ready(), &cdb(bytes), &[], &[0])
    }

    fn data(outcome: Outcome) -> Vec<u8> {
        match outcome {
            Outcome::DataIn(d) => d,
            other => panic!("expected data-in, got {other:?}"),
        }
    }

    fn rc16(alloc: u8) -> Vec<u8> {
        let mut raw = vec![0u8; 16];
        raw[0] = SERVICE_ACTION_IN_16;
        raw[1] = SAI_READ_CAPACITY_16;
        raw[13] = alloc;
        raw
    }

    #[test]
    fn test_unit_ready_is_good() {
        assert_eq!(run_cdb(&geometry(), &[TEST_UNIT_READY]), Outcome::Good);
    }

    #[test]
    fn standard_inquiry_reports_disk_spc5_cmdque_and_ids() {
        let d = data(run_cdb(&geometry(), &[INQUIRY, 0, 0, 0, 96, 0]));
        assert_eq!(d.len(), 36);
        assert_eq!(d[0], TYPE_DISK);
        assert_eq!(d[2], 0x07);
        assert_eq!(d[3] & 0x0f, 2);
        assert_eq!(usize::from(d[4]), 31);
        assert_eq!(d[7] & 0x02, 0x02);
        assert_eq!(&d[8..16], b"HANGAR  ");
    }

    #[test]
    fn inquiry_is_cut_to_allocation_length() {
        let d = data(run_cdb(&geometry(), &[INQUIRY, 0, 0, 0, 5, 0]));
        assert_eq!(d.len(), 5);
    }

    #[test]
    fn vpd_supported_pages_lists_all_six() {
        let d = data(run_cdb(&geometry(), &[INQUIRY, 1, 0x00, 0, 255, 0]));
        assert_eq!(d[1], 0x00);
        assert_eq!(&d[4..], &[0x00, 0x80, 0x83, 0xb0, 0xb1, 0xb2]);
        assert_eq!(u16::from_be_bytes([d[2], d[3]]), 6);
    }

    #[test]
    fn vpd_serial_number() {
        let d = data(run_cdb(&geometry(), &[INQUIRY, 1, 0x80, 0, 255, 0]));
        assert_eq!(&d[4..], b"SER123");
    }

    #[test]
    fn vpd_device_identification_has_naa_and_t10_designators() {
        let d = data(run_cdb(&geometry(), &[INQUIRY, 1, 0x83, 0, 255, 0]));
        assert_eq!(&d[4..8], &[0x01, 0x03, 0x00, 0x08]);
        assert_eq!(d[8] >> 4, 0x3, "locally assigned NAA");
        assert_eq!(&d[16..18], &[0x02, 0x01]);
        assert_eq!(&d[20..28], b"HANGAR  ");
        assert_eq!(u16::from_be_bytes([d[2], d[3]]) as usize, d.len() - 4);
    }

    #[test]
    fn vpd_block_limits_reports_transfer_and_unmap_limits() {
        let d = data(run_cdb(&geometry(), &[INQUIRY, 1, 0xb0, 0, 255, 0]));
        assert_eq!(d.len(), 64);
        assert_eq!(u32::from_be_bytes(d[8..12].try_into().unwrap()), 1024);
        assert_eq!(
            u32::from_be_bytes(d[20..24].try_into().unwrap()),
            MAX_UNMAP_BLOCKS
        );
        assert_eq!(
            u32::from_be_bytes(d[24..28].try_into().unwrap()),
            MAX_UNMAP_DESCRIPTORS
        );
        let mut no_discard = geometry();
        no_discard.discard = false;
        let d = data(run_cdb(&no_discard, &[INQUIRY, 1, 0xb0, 0, 255, 0]));
        assert_eq!(u32::from_be_bytes(d[20..24].try_into().unwrap()), 0);
    }

    #[test]
    fn vpd_block_characteristics_says_non_rotating() {
        let d = data(run_cdb(&geometry(), &[INQUIRY, 1, 0xb1, 0, 255, 0]));
        assert_eq!(u16::from_be_bytes([d[4], d[5]]), 1);
    }

    #[test]
    fn vpd_provisioning_follows_discard() {
        let d = data(run_cdb(&geometry(), &[INQUIRY, 1, 0xb2, 0, 255, 0]));
        assert_eq!(d[5] & 0xc0, 0xc0);
        let mut no_discard = geometry();
        no_discard.discard = false;
        let d = data(run_cdb(&no_discard, &[INQUIRY, 1, 0xb2, 0, 255, 0]));
        assert_eq!(d[5], 0);
    }

    #[test]
    fn unknown_vpd_page_is_invalid_field_byte_2() {
        assert_eq!(
            run_cdb(&geometry(), &[INQUIRY, 1, 0x99, 0, 255, 0]),
            Outcome::Check(Sense::invalid_field_in_cdb(2))
        );
    }

    #[test]
    fn read_capacity_10_and_16() {
        let d = data(run_cdb(
            &geometry(),
            &[READ_CAPACITY_10, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        ));
        assert_eq!(u32::from_be_bytes(d[0..4].try_into().unwrap()), 2047);
        assert_eq!(u32::from_be_bytes(d[4..8].try_into().unwrap()), 512);
        let d = data(run_cdb(&geometry(), &rc16(32)));
        assert_eq!(u64::from_be_bytes(d[0..8].try_into().unwrap()), 2047);
        assert_eq!(d[14] & 0x80, 0x80, "LBPME with discard");
    }

    #[test]
    fn read_capacity_10_saturates_for_huge_disks() {
        let mut g = geometry();
        g.blocks = 1 << 40;
        let d = data(run_cdb(&g, &[READ_CAPACITY_10, 0, 0, 0, 0, 0, 0, 0, 0, 0]));
        assert_eq!(u32::from_be_bytes(d[0..4].try_into().unwrap()), u32::MAX);
    }

    #[test]
    fn mode_sense6_caching_page_with_block_descriptor() {
        let d = data(run_cdb(&geometry(), &[MODE_SENSE_6, 0, 0x08, 0, 255, 0]));
        assert_eq!(usize::from(d[0]), d.len() - 1);
        assert_eq!(d[2] & 0x80, 0, "writable: no WP");
        assert_eq!(d[3], 8);
        assert_eq!(u32::from_be_bytes([0, d[5], d[6], d[7]]), 2048);
        assert_eq!(u32::from_be_bytes([0, d[9], d[10], d[11]]), 512);
        assert_eq!(d[12], 0x08);
        assert_eq!(d[13], 0x12);
        assert_eq!(d[14] & 0x04, 0x04, "WCE");
    }

    #[test]
    fn mode_sense_sets_wp_for_read_only() {
        let mut g = geometry();
        g.read_only = true;
        let d = data(run_cdb(&g, &[MODE_SENSE_6, 0x08, 0x3f, 0, 255, 0]));
        assert_eq!(d[2] & 0x80, 0x80);
        assert_eq!(d[3], 0, "DBD: no block descriptor");
        assert_eq!(d[4], 0x08);
        assert_eq!(d[24], 0x0a, "control page follows caching page");
    }

    #[test]
    fn mode_sense10_long_lba_descriptor() {
        let d = data(run_cdb(
            &geometry(),
            &[MODE_SENSE_10, 0x10, 0x0a, 0, 0, 0, 0, 0, 255, 0],
        ));
        assert_eq!(u16::from_be_bytes([d[0], d[1]]) as usize, d.len() - 2);
        assert_eq!(d[4], 1, "LONGLBA");
        assert_eq!(u16::from_be_bytes([d[6], d[7]]), 16);
        assert_eq!(u64::from_be_bytes(d[8..16].try_into().unwrap()), 2048);
        assert_eq!(d[24], 0x0a);
    }

    #[test]
    fn mode_sense_saved_values_and_unknown_pages_fail() {
        assert_eq!(
            run_cdb(&geometry(), &[MODE_SENSE_6, 0, 0xc8, 0, 255, 0]),
            Outcome::Check(Sense::SAVING_NOT_SUPPORTED)
        );
        assert_eq!(
            run_cdb(&geometry(), &[MODE_SENSE_6, 0, 0x1c, 0, 255, 0]),
            Outcome::Check(Sense::invalid_field_in_cdb(2))
        );
        assert_eq!(
            run_cdb(&geometry(), &[MODE_SENSE_6, 0, 0x08, 1, 255, 0]),
            Outcome::Check(Sense::invalid_field_in_cdb(3))
        );
    }

    #[test]
    fn mode_sense_changeable_values_are_zero() {
        let d = data(run_cdb(&geometry(), &[MODE_SENSE_6, 0x08, 0x48, 0, 255, 0]));
        assert_eq!(d[4], 0x08);
        assert!(d[6..].iter().all(|&b| b == 0));
    }

    #[test]
    fn read_becomes_io_plan_in_bytes() {
        assert_eq!(
            run_cdb(&geometry(), &[READ_10, 0, 0, 0, 0, 10, 0, 0, 4, 0]),
            Outcome::Io(IoPlan::Read {
                offset: 5120,
                len: 2048
            })
        );
    }

    #[test]
    fn write_with_fua_becomes_fua_write() {
        assert_eq!(
            run_cdb(&geometry(), &[WRITE_10, 0x08, 0, 0, 0, 1, 0, 0, 1, 0]),
            Outcome::Io(IoPlan::Write {
                offset: 512,
                len: 512,
                fua: true
            })
        );
    }

    #[test]
    fn zero_length_transfer_is_good_without_io() {
        assert_eq!(
            run_cdb(&geometry(), &[READ_10, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            Outcome::Good
        );
    }

    #[test]
    fn read_past_the_end_is_lba_out_of_range() {
        assert_eq!(
            run_cdb(&geometry(), &[READ_10, 0, 0, 0, 0x07, 0xff, 0, 0, 2, 0]),
            Outcome::Check(Sense::LBA_OUT_OF_RANGE)
        );
        let mut raw = vec![0u8; 16];
        raw[0] = READ_16;
        raw[2..10].copy_from_slice(&u64::MAX.to_be_bytes());
        raw[13] = 1;
        assert_eq!(
            run_cdb(&geometry(), &raw),
            Outcome::Check(Sense::LBA_OUT_OF_RANGE)
        );
    }

    #[test]
    fn transfer_over_max_is_invalid_field() {
        assert_eq!(
            run_cdb(&geometry(), &[READ_10, 0, 0, 0, 0, 0, 0, 0x04, 0x01, 0]),
            Outcome::Check(Sense::INVALID_FIELD_IN_CDB)
        );
    }

    #[test]
    fn write_to_read_only_is_write_protected() {
        let mut g = geometry();
        g.read_only = true;
        assert_eq!(
            run_cdb(&g, &[WRITE_6, 0, 0, 0, 1, 0]),
            Outcome::Check(Sense::WRITE_PROTECTED)
        );
        let mut ws = vec![0u8; 16];
        ws[0] = WRITE_SAME_16;
        ws[1] = 0x09;
        ws[13] = 1;
        assert_eq!(run_cdb(&g, &ws), Outcome::Check(Sense::WRITE_PROTECTED));
    }

    #[test]
    fn verify_checks_range_only() {
        assert_eq!(
            run_cdb(&geometry(), &[VERIFY_10, 0, 0, 0, 0, 0, 0, 0, 8, 0]),
            Outcome::Good
        );
        assert_eq!(
            run_cdb(&geometry(), &[VERIFY_10, 0, 0, 0, 0x08, 0, 0, 0, 1, 0]),
            Outcome::Check(Sense::LBA_OUT_OF_RANGE)
        );
    }

    #[test]
    fn synchronize_cache_flushes() {
        assert_eq!(
            run_cdb(
                &geometry(),
                &[SYNCHRONIZE_CACHE_10, 0, 0, 0, 0, 0, 0, 0, 0, 0]
            ),
            Outcome::Io(IoPlan::Flush)
        );
        let mut raw = vec![0u8; 16];
        raw[0] = SYNCHRONIZE_CACHE_16;
        assert_eq!(run_cdb(&geometry(), &raw), Outcome::Io(IoPlan::Flush));
    }

    fn unmap_params(descriptors: &[(u64, u32)]) -> Vec<u8> {
        let mut p = vec![0u8; 8];
        p[0..2].copy_from_slice(&((6 + descriptors.len() * 16) as u16).to_be_bytes());
        p[2..4].copy_from_slice(&((descriptors.len() * 16) as u16).to_be_bytes());
        for (lba, blocks) in descriptors {
            p.extend_from_slice(&lba.to_be_bytes());
            p.extend_from_slice(&blocks.to_be_bytes());
            p.extend_from_slice(&[0; 4]);
        }
        p
    }

    fn unmap_cdb(len: usize) -> Vec<u8> {
        let l = (len as u16).to_be_bytes();
        cdb(&[UNMAP, 0, 0, 0, 0, 0, 0, l[0], l[1], 0])
    }

    #[test]
    fn unmap_turns_descriptors_into_discards() {
        let p = unmap_params(&[(0, 8), (100, 0), (16, 1)]);
        let out = execute(&geometry(), &mut ready(), &unmap_cdb(p.len()), &p, &[0]);
        assert_eq!(
            out,
            Outcome::Io(IoPlan::Discard(vec![(0, 4096), (8192, 512)]))
        );
    }

    #[test]
    fn unmap_errors() {
        let g = geometry();
        let p = unmap_params(&[(2047, 2)]);
        assert_eq!(
            execute(&g, &mut ready(), &unmap_cdb(p.len()), &p, &[0]),
            Outcome::Check(Sense::LBA_OUT_OF_RANGE)
        );
        assert_eq!(
            execute(&g, &mut ready(), &unmap_cdb(4), &p, &[0]),
            Outcome::Check(Sense::PARAMETER_LIST_LENGTH_ERROR)
        );
        assert_eq!(
            execute(&g, &mut ready(), &unmap_cdb(p.len() + 16), &p, &[0]),
            Outcome::Check(Sense::PARAMETER_LIST_LENGTH_ERROR)
        );
        let mut bad = unmap_params(&[(0, 1)]);
        bad[3] = 15;
        assert_eq!(
            execute(&g, &mut ready(), &unmap_cdb(bad.len()), &bad, &[0]),
            Outcome::Check(Sense::invalid_field_in_parameter_list(2))
        );
        let mut no_discard = geometry();
        no_discard.discard = false;
        assert_eq!(
            execute(&no_discard, &mut ready(), &unmap_cdb(p.len()), &p, &[0]),
            Outcome::Check(Sense::INVALID_OPCODE)
        );
    }

    fn write_same_cdb(flags: u8, lba: u64, blocks: u32) -> Vec<u8> {
        let mut raw = vec![0u8; 16];
        raw[0] = WRITE_SAME_16;
        raw[1] = flags;
        raw[2..10].copy_from_slice(&lba.to_be_bytes());
        raw[10..14].copy_from_slice(&blocks.to_be_bytes());
        cdb(&raw)
    }

    #[test]
    fn write_same_unmap_with_zero_block_becomes_unmapping_write_zeroes() {
        let out = execute(
            &geometry(),
            &mut ready(),
            &write_same_cdb(0x08, 2, 4),
            &[0u8; 512],
            &[0],
        );
        assert_eq!(
            out,
            Outcome::Io(IoPlan::WriteZeroes {
                offset: 1024,
                len: 2048,
                unmap: true
            })
        );
        let mut no_discard = geometry();
        no_discard.discard = false;
        let out = execute(
            &no_discard,
            &mut ready(),
            &write_same_cdb(0x09, 0, 1),
            &[],
            &[0],
        );
        assert_eq!(
            out,
            Outcome::Io(IoPlan::WriteZeroes {
                offset: 0,
                len: 512,
                unmap: false
            })
        );
    }

    #[test]
    fn write_same_with_pattern_and_errors() {
        let g = geometry();
        let out = execute(
            &g,
            &mut ready(),
            &write_same_cdb(0, 0, 2),
            &[7u8; 512],
            &[0],
        );
        assert_eq!(
            out,
            Outcome::Io(IoPlan::WritePattern {
                offset: 0,
                len: 1024,
                pattern: vec![7u8; 512]
            })
        );
        assert_eq!(
            execute(
                &g,
                &mut ready(),
                &write_same_cdb(0, 0, 2),
                &[7u8; 100],
                &[0]
            ),
            Outcome::Check(Sense::PARAMETER_LIST_LENGTH_ERROR)
        );
        assert_eq!(
            execute(&g, &mut ready(), &write_same_cdb(0x01, 0, 0), &[], &[0]),
            Outcome::Check(Sense::invalid_field_in_cdb(10))
        );
    }

    #[test]
    fn start_stop_unit_gates_media_access() {
        let g = geometry();
        let mut state = ready();
        let stop = cdb(&[START_STOP_UNIT, 0, 0, 0, 0, 0]);
        assert_eq!(execute(&g, &mut state, &stop, &[], &[0]), Outcome::Good);
        assert!(state.stopped);
        let read = cdb(&[READ_10, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
        assert_eq!(
            execute(&g, &mut state, &read, &[], &[0]),
            Outcome::Check(Sense::NOT_READY_INIT_REQUIRED)
        );
        let start = cdb(&[START_STOP_UNIT, 0, 0, 0, 1, 0]);
        assert_eq!(execute(&g, &mut state, &start, &[], &[0]), Outcome::Good);
        assert!(matches!(
            execute(&g, &mut state, &read, &[], &[0]),
            Outcome::Io(_)
        ));
    }

    #[test]
    fn prevent_allow_is_accepted() {
        assert_eq!(
            run_cdb(&geometry(), &[PREVENT_ALLOW_MEDIUM_REMOVAL, 0, 0, 0, 1, 0]),
            Outcome::Good
        );
    }

    #[test]
    fn unit_attention_is_reported_once_except_to_inquiry() {
        let g = geometry();
        let mut state = LunState::after_reset();
        let inquiry = cdb(&[INQUIRY, 0, 0, 0, 36, 0]);
        assert!(matches!(
            execute(&g, &mut state, &inquiry, &[], &[0]),
            Outcome::DataIn(_)
        ));
        let tur = cdb(&[TEST_UNIT_READY]);
        assert_eq!(
            execute(&g, &mut state, &tur, &[], &[0]),
            Outcome::Check(Sense::RESET_OCCURRED)
        );
        assert_eq!(execute(&g, &mut state, &tur, &[], &[0]), Outcome::Good);
    }

    #[test]
    fn request_sense_returns_and_clears_unit_attention() {
        let g = geometry();
        let mut state = LunState::after_reset();
        let rs = cdb(&[REQUEST_SENSE, 0, 0, 0, 252, 0]);
        let d = data(execute(&g, &mut state, &rs, &[], &[0]));
        assert_eq!(d.len(), 18);
        assert_eq!((d[2], d[12]), (SENSE_KEY_UNIT_ATTENTION, 0x29));
        let d = data(execute(&g, &mut state, &rs, &[], &[0]));
        assert_eq!((d[2], d[12]), (SENSE_KEY_NO_SENSE, 0));
    }

    #[test]
    fn report_luns_lists_peripheral_and_flat_luns() {
        let d = report_luns(&[0, 3, 300], 1024);
        assert_eq!(u32::from_be_bytes(d[0..4].try_into().unwrap()), 24);
        assert_eq!(&d[8..10], &[0, 0]);
        assert_eq!(&d[16..18], &[0, 3]);
        assert_eq!(&d[24..26], &[0x41, 44]);
        assert_eq!(report_luns(&[0, 1], 12).len(), 12);
    }

    #[test]
    fn missing_lun_answers_inquiry_with_qualifier_3() {
        let d = data(execute_without_lun(&cdb(&[INQUIRY, 0, 0, 0, 36, 0]), &[0]));
        assert_eq!(d[0], 0x7f);
        assert_eq!(
            execute_without_lun(&cdb(&[TEST_UNIT_READY]), &[0]),
            Outcome::Check(Sense::LUN_NOT_SUPPORTED)
        );
        let d = data(execute_without_lun(
            &cdb(&[REPORT_LUNS, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0]),
            &[0],
        ));
        assert_eq!(u32::from_be_bytes(d[0..4].try_into().unwrap()), 8);
    }

    #[test]
    fn report_supported_opcodes_all_and_one() {
        let g = geometry();
        let mut raw = vec![0u8; 12];
        raw[0] = MAINTENANCE_IN;
        raw[1] = MI_REPORT_SUPPORTED_OPERATION_CODES;
        raw[9] = 255;
        raw[8] = 1;
        let d = data(run_cdb(&g, &raw));
        let len = u32::from_be_bytes(d[0..4].try_into().unwrap()) as usize;
        assert_eq!(len, cdb::SUPPORTED_OPCODES.len() * 8);
        assert!(d[4..].chunks(8).any(|c| c[0] == READ_16 && c[7] == 16));
        assert!(d[4..]
            .chunks(8)
            .any(|c| c[0] == SERVICE_ACTION_IN_16 && c[3] == 0x10 && c[5] & 1 == 1));

        raw[2] = 1;
        raw[3] = READ_10;
        let d = data(run_cdb(&g, &raw));
        assert_eq!(d[1] & 0x07, 3);
        assert_eq!(u16::from_be_bytes([d[2], d[3]]), 10);
        assert_eq!(d[4], READ_10);

        raw[3] = 0x02;
        let d = data(run_cdb(&g, &raw));
        assert_eq!(d[1] & 0x07, 1, "not supported");

        raw[3] = SERVICE_ACTION_IN_16;
        assert_eq!(
            run_cdb(&g, &raw),
            Outcome::Check(Sense::invalid_field_in_cdb(2))
        );
        raw[2] = 2;
        raw[5] = 0x10;
        let d = data(run_cdb(&g, &raw));
        assert_eq!(d[1] & 0x07, 3);
    }

    #[test]
    fn invalid_opcode_sense() {
        assert_eq!(
            run_cdb(&geometry(), &[0x02]),
            Outcome::Check(Sense::INVALID_OPCODE)
        );
    }
}
