//! virtio-scsi requests on the wire: walking a descriptor chain into its
//! device-readable and device-writable parts, the request / response / control
//! headers (`zerocopy` structs), LUN addressing, and copying between guest
//! scatter-gather lists and host bytes.
//!
//! Owns: everything that interprets guest-supplied layout. Every guest value is
//! checked here and becomes a [`RequestError`], never a panic.

use std::ops::Deref;

use virtio_queue::DescriptorChain;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory, GuestMemoryBackend, GuestMemoryMmap};
use zerocopy::byteorder::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::backend::HostBuf;
use super::constants::VIRTIO_SCSI_SENSE_MAX_SIZE;

/// Why a request could not be parsed. Each maps to a guest-visible response.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// A device-readable descriptor came after a device-writable one.
    #[error("readable descriptor after a writable one")]
    ReadableAfterWritable,
    /// The readable part is shorter than the request header.
    #[error("request header needs {needed} bytes, chain has {got}")]
    ShortRequest { needed: usize, got: u64 },
    /// The writable part is shorter than the response header.
    #[error("response header needs {needed} bytes, chain has {got}")]
    ShortResponse { needed: usize, got: u64 },
    /// A descriptor points outside guest memory.
    #[error("descriptor outside guest memory at {0:#x}")]
    BadAddress(u64),
    /// The control request type is unknown.
    #[error("unknown control request type {0}")]
    UnknownControlType(u32),
}

/// One guest-physical buffer of a chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestRange {
    pub addr: GuestAddress,
    pub len: u32,
}

/// A chain split by direction.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChainBuffers {
    pub readable: Vec<GuestRange>,
    pub writable: Vec<GuestRange>,
}

/// Total bytes of `ranges`.
pub fn total_len(ranges: &[GuestRange]) -> u64 {
    ranges.iter().map(|r| u64::from(r.len)).sum()
}

impl ChainBuffers {
    /// Walks `chain` (direct or indirect; loops end at the queue size, which the
    /// crate enforces) into its two parts. Readable descriptors must come first.
    pub fn from_chain<M>(chain: DescriptorChain<M>) -> Result<ChainBuffers, RequestError>
    where
        M: Deref,
        M::Target: GuestMemory,
    {
        ChainBuffers::from_chain_into(chain, ChainBuffers::default())
    }

    /// [`ChainBuffers::from_chain`] into the (cleared) vectors of `buffers`,
    /// reusing their allocations.
    pub fn from_chain_into<M>(
        chain: DescriptorChain<M>,
        mut buffers: ChainBuffers,
    ) -> Result<ChainBuffers, RequestError>
    where
        M: Deref,
        M::Target: GuestMemory,
    {
        buffers.readable.clear();
        buffers.writable.clear();
        for desc in chain {
            let range = GuestRange {
                addr: desc.addr(),
                len: desc.len(),
            };
            buffers.push(range, desc.is_write_only())?;
        }
        Ok(buffers)
    }
}

/// Where a split ring's descriptor table is (`QueueT::desc_table` and
/// `QueueT::size`): what [`ChainBuffers::walk_into`] needs from the queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DescTable {
    pub addr: GuestAddress,
    pub size: u16,
}

/// A split-ring descriptor as the driver wrote it (virtio 1.2, 2.7.5).
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct RawDescriptor {
    addr: U64,
    len: U32,
    flags: U16,
    next: U16,
}

const DESC_F_NEXT: u16 = 1;
const DESC_F_WRITE: u16 = 2;
const DESC_F_INDIRECT: u16 = 4;
const DESC_SIZE: u64 = size_of::<RawDescriptor>() as u64;

/// The descriptor at `addr`: one address translation when it lies in one
/// region (always, with one RAM region), else vm-memory's general read.
fn read_descriptor(mem: &GuestMemoryMmap, addr: GuestAddress) -> Option<RawDescriptor> {
    let mut bytes = [0u8; DESC_SIZE as usize];
    match GuestMemoryBackend::get_slice(mem, addr, bytes.len()) {
        Ok(slice) => {
            slice.copy_to(&mut bytes[..]);
        }
        Err(_) => mem.read_slice(&mut bytes, addr).ok()?,
    }
    RawDescriptor::read_from_bytes(&bytes).ok()
}

impl ChainBuffers {
    /// [`ChainBuffers::from_chain_into`] for the chain whose head is `head` in
    /// `table`, reading each descriptor with one address translation instead
    /// of vm-memory's generic object read. The walk follows virtio-queue's
    /// `DescriptorChain` iterator rule for rule, so both see the same chain:
    /// at most `table.size` descriptors (in an indirect table, its entry
    /// count); one level of indirection, the table's length a multiple of 16
    /// and at most 65535 entries; the chain ends, without error, at an index
    /// past the table, at a descriptor that cannot be read, at a bad indirect
    /// descriptor, or where the lengths would pass `u32::MAX`. The tests
    /// compare the two on well-formed and hostile chains.
    pub fn walk_into(
        mem: &GuestMemoryMmap,
        table: DescTable,
        head: u16,
        mut buffers: ChainBuffers,
    ) -> Result<ChainBuffers, RequestError> {
        buffers.readable.clear();
        buffers.writable.clear();
        let mut desc_table = table.addr;
        let mut size = table.size;
        let mut next = head;
        let mut ttl = table.size;
        let mut indirect = false;
        let mut yielded: u32 = 0;
        while ttl > 0 && next < size {
            let Some(addr) = desc_table.checked_add(u64::from(next) * DESC_SIZE) else {
                break;
            };
            let Some(desc) = read_descriptor(mem, addr) else {
                break;
            };
            let (flags, len) = (desc.flags.get(), desc.len.get());
            if flags & DESC_F_INDIRECT != 0 {
                // No nesting; whole descriptors; the entry count fits a u16.
                let entries = len / DESC_SIZE as u32;
                if indirect || len % DESC_SIZE as u32 != 0 || entries > u32::from(u16::MAX) {
                    break;
                }
                desc_table = GuestAddress(desc.addr.get());
                size = entries as u16;
                next = 0;
                ttl = size;
                indirect = true;
                continue;
            }
            let Some(total) = yielded.checked_add(len) else {
                break;
            };
            yielded = total;
            if flags & DESC_F_NEXT != 0 {
                next = desc.next.get();
                ttl -= 1;
            } else {
                ttl = 0;
            }
            buffers.push(
                GuestRange {
                    addr: GuestAddress(desc.addr.get()),
                    len,
                },
                flags & DESC_F_WRITE != 0,
            )?;
        }
        Ok(buffers)
    }

    /// Appends one descriptor's range: readable ones must come first.
    fn push(&mut self, range: GuestRange, write_only: bool) -> Result<(), RequestError> {
        if write_only {
            self.writable.push(range);
        } else if self.writable.is_empty() {
            self.readable.push(range);
        } else {
            return Err(RequestError::ReadableAfterWritable);
        }
        Ok(())
    }
}

/// The ranges of `ranges` after skipping the first `skip` bytes.
pub fn skip_bytes(ranges: &[GuestRange], mut skip: u64) -> Vec<GuestRange> {
    // Empty (no allocation) when `skip` covers everything: a READ's data-out.
    let mut out = Vec::new();
    for range in ranges {
        let len = u64::from(range.len);
        if skip >= len {
            skip -= len;
            continue;
        }
        out.push(GuestRange {
            // Cannot wrap in a way that matters: a bad address fails on access.
            addr: GuestAddress(range.addr.raw_value().wrapping_add(skip)),
            len: (len - skip) as u32,
        });
        skip = 0;
    }
    out
}

/// Copies the first `buf.len()` bytes of `ranges` into `buf`.
pub fn read_from(
    mem: &GuestMemoryMmap,
    ranges: &[GuestRange],
    buf: &mut [u8],
) -> Result<(), RequestError> {
    let mut done = 0;
    for range in ranges {
        if done == buf.len() {
            break;
        }
        let n = (range.len as usize).min(buf.len() - done);
        let dst = &mut buf[done..done + n];
        // Fast path: the range lies in one region (always, with one RAM
        // region): one translation, none of `read_slice`'s per-region walk.
        match GuestMemoryBackend::get_slice(mem, range.addr, n) {
            Ok(slice) => {
                slice.copy_to(dst);
            }
            Err(_) => mem
                .read_slice(dst, range.addr)
                .map_err(|_| RequestError::BadAddress(range.addr.raw_value()))?,
        }
        done += n;
    }
    if done < buf.len() {
        return Err(RequestError::ShortRequest {
            needed: buf.len(),
            got: done as u64,
        });
    }
    Ok(())
}

/// Copies `data` into the front of `ranges`; returns the bytes written (less
/// than `data.len()` if the ranges are shorter).
pub fn write_to(
    mem: &GuestMemoryMmap,
    ranges: &[GuestRange],
    data: &[u8],
) -> Result<usize, RequestError> {
    let mut done = 0;
    for range in ranges {
        if done == data.len() {
            break;
        }
        let n = (range.len as usize).min(data.len() - done);
        let src = &data[done..done + n];
        // Fast path as in `read_from`.
        match GuestMemoryBackend::get_slice(mem, range.addr, n) {
            Ok(slice) => slice.copy_from(src),
            Err(_) => mem
                .write_slice(src, range.addr)
                .map_err(|_| RequestError::BadAddress(range.addr.raw_value()))?,
        }
        done += n;
    }
    Ok(done)
}

/// Host addresses of the first `len` bytes of `ranges`, for zero-copy I/O.
/// A range crossing guest memory regions becomes several buffers.
pub fn host_bufs(
    mem: &GuestMemoryMmap,
    ranges: &[GuestRange],
    len: u64,
) -> Result<Vec<HostBuf>, RequestError> {
    host_bufs_after(mem, ranges, 0, len)
}

/// [`host_bufs`] of the ranges after their first `skip` bytes (what
/// [`skip_bytes`] would leave), without building that list.
pub fn host_bufs_after(
    mem: &GuestMemoryMmap,
    ranges: &[GuestRange],
    mut skip: u64,
    len: u64,
) -> Result<Vec<HostBuf>, RequestError> {
    let mut bufs = Vec::with_capacity(ranges.len().min(4));
    let mut left = len;
    for range in ranges {
        if left == 0 {
            break;
        }
        let range_len = u64::from(range.len);
        if skip >= range_len {
            skip -= range_len;
            continue;
        }
        // Cannot wrap in a way that matters: a bad address fails on access.
        let range = GuestRange {
            addr: GuestAddress(range.addr.raw_value().wrapping_add(skip)),
            len: (range_len - skip) as u32,
        };
        skip = 0;
        let n = u64::from(range.len).min(left);
        // Fast path: the range lies in one region (always, with one RAM region).
        if let Ok(slice) = GuestMemoryBackend::get_slice(mem, range.addr, n as usize) {
            bufs.push(HostBuf {
                ptr: slice.ptr_guard_mut().as_ptr(),
                len: slice.len(),
            });
            left -= n;
            continue;
        }
        let mut covered = 0u64;
        for slice in GuestMemoryBackend::get_slices(mem, range.addr, n as usize) {
            let slice = slice.map_err(|_| RequestError::BadAddress(range.addr.raw_value()))?;
            bufs.push(HostBuf {
                ptr: slice.ptr_guard_mut().as_ptr(),
                len: slice.len(),
            });
            covered += slice.len() as u64;
        }
        if covered != n {
            return Err(RequestError::BadAddress(range.addr.raw_value()));
        }
        left -= n;
    }
    Ok(bufs)
}

/// `virtio_scsi_cmd_req` without its CDB (which follows, `cdb_size` bytes).
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct CmdRequestHeader {
    pub lun: [u8; 8],
    pub id: U64,
    pub task_attr: u8,
    pub prio: u8,
    pub crn: u8,
}

/// `virtio_scsi_cmd_resp` without its sense buffer (`sense_size` bytes follow).
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct CmdResponseHeader {
    pub sense_len: U32,
    pub resid: U32,
    pub status_qualifier: U16,
    pub status: u8,
    pub response: u8,
}

pub const CMD_REQUEST_HEADER_SIZE: usize = size_of::<CmdRequestHeader>();
pub const CMD_RESPONSE_HEADER_SIZE: usize = size_of::<CmdResponseHeader>();

/// A parsed command request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CmdRequest {
    pub lun: [u8; 8],
    pub id: u64,
    pub cdb: Vec<u8>,
}

/// Parses the command request header from `bytes` (at least 19 + `cdb_size`).
pub fn parse_cmd_request(bytes: &[u8], cdb_size: usize) -> Result<CmdRequest, RequestError> {
    let cmd = parse_cmd_request_ref(bytes, cdb_size)?;
    Ok(CmdRequest {
        lun: cmd.lun,
        id: cmd.id,
        cdb: cmd.cdb.to_vec(),
    })
}

/// [`CmdRequest`] borrowing its CDB from the parsed bytes (no allocation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CmdRequestRef<'a> {
    pub lun: [u8; 8],
    pub id: u64,
    pub cdb: &'a [u8],
}

/// [`parse_cmd_request`] without copying the CDB.
pub fn parse_cmd_request_ref(
    bytes: &[u8],
    cdb_size: usize,
) -> Result<CmdRequestRef<'_>, RequestError> {
    let needed = CMD_REQUEST_HEADER_SIZE + cdb_size;
    let short = RequestError::ShortRequest {
        needed,
        got: bytes.len() as u64,
    };
    let (header, rest) = CmdRequestHeader::read_from_prefix(bytes).map_err(|_| short.clone())?;
    let cdb = rest.get(..cdb_size).ok_or(short)?;
    Ok(CmdRequestRef {
        lun: header.lun,
        id: header.id.get(),
        cdb,
    })
}

/// The response header plus sense, ready to copy into the writable part.
pub fn encode_cmd_response(
    response: u8,
    status: u8,
    resid: u32,
    sense: &[u8],
    sense_size: usize,
) -> Vec<u8> {
    let mut bytes = [0u8; MAX_CMD_RESPONSE_SIZE];
    encode_cmd_response_into(&mut bytes, response, status, resid, sense, sense_size).to_vec()
}

/// Largest command response: the header and the largest sense buffer.
pub const MAX_CMD_RESPONSE_SIZE: usize =
    CMD_RESPONSE_HEADER_SIZE + VIRTIO_SCSI_SENSE_MAX_SIZE as usize;

/// [`encode_cmd_response`] into `out` (no allocation); returns the response,
/// `CMD_RESPONSE_HEADER_SIZE + sense_size` bytes (`sense_size` is capped at
/// `VIRTIO_SCSI_SENSE_MAX_SIZE`).
pub fn encode_cmd_response_into<'a>(
    out: &'a mut [u8; MAX_CMD_RESPONSE_SIZE],
    response: u8,
    status: u8,
    resid: u32,
    sense: &[u8],
    sense_size: usize,
) -> &'a [u8] {
    let sense_size = sense_size.min(VIRTIO_SCSI_SENSE_MAX_SIZE as usize);
    let sense_len = sense.len().min(sense_size);
    let header = CmdResponseHeader {
        sense_len: U32::new(sense_len as u32),
        resid: U32::new(resid),
        status_qualifier: U16::new(0),
        status,
        response,
    };
    let end = CMD_RESPONSE_HEADER_SIZE + sense_size;
    out[..CMD_RESPONSE_HEADER_SIZE].copy_from_slice(header.as_bytes());
    out[CMD_RESPONSE_HEADER_SIZE..CMD_RESPONSE_HEADER_SIZE + sense_len]
        .copy_from_slice(&sense[..sense_len]);
    out[CMD_RESPONSE_HEADER_SIZE + sense_len..end].fill(0);
    &out[..end]
}

/// A LUN address as virtio-scsi encodes it: byte 0 is 1, byte 1 the target,
/// bytes 2-3 the LUN in SAM single-level format (peripheral or flat space),
/// bytes 4-7 zero. `None` for anything else.
pub fn parse_lun(lun: &[u8; 8]) -> Option<(u8, u16)> {
    if lun[0] != 1 || lun[4..].iter().any(|&b| b != 0) {
        return None;
    }
    let method = lun[2] >> 6;
    let number = (u16::from(lun[2] & 0x3f) << 8) | u16::from(lun[3]);
    match method {
        // Peripheral device addressing: bus 0 only.
        0 if lun[2] == 0 => Some((lun[1], number)),
        // Flat space addressing.
        1 => Some((lun[1], number)),
        _ => None,
    }
}

/// `virtio_scsi_ctrl_tmf_req`.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct TmfRequest {
    pub kind: U32,
    pub subtype: U32,
    pub lun: [u8; 8],
    pub id: U64,
}

/// `virtio_scsi_ctrl_an_req`.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct AnRequest {
    pub kind: U32,
    pub lun: [u8; 8],
    pub event_requested: U32,
}

/// `virtio_scsi_ctrl_an_resp`.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct AnResponse {
    pub event_actual: U32,
    pub response: u8,
}

/// A parsed control-queue request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ControlRequest {
    Tmf {
        subtype: u32,
        lun: [u8; 8],
        id: u64,
    },
    /// AN query (`subscribe == false`) or subscribe.
    AsyncNotify {
        subscribe: bool,
        lun: [u8; 8],
        event_requested: u32,
    },
}

impl ControlRequest {
    /// Size of the response this request expects.
    pub fn response_size(&self) -> usize {
        match self {
            ControlRequest::Tmf { .. } => 1,
            ControlRequest::AsyncNotify { .. } => size_of::<AnResponse>(),
        }
    }
}

/// Parses a control-queue request from its readable bytes.
pub fn parse_control_request(bytes: &[u8]) -> Result<ControlRequest, RequestError> {
    let short = |needed| RequestError::ShortRequest {
        needed,
        got: bytes.len() as u64,
    };
    let kind = U32::read_from_prefix(bytes).map_err(|_| short(4))?.0.get();
    match kind {
        super::constants::VIRTIO_SCSI_T_TMF => {
            let (req, _) =
                TmfRequest::read_from_prefix(bytes).map_err(|_| short(size_of::<TmfRequest>()))?;
            Ok(ControlRequest::Tmf {
                subtype: req.subtype.get(),
                lun: req.lun,
                id: req.id.get(),
            })
        }
        super::constants::VIRTIO_SCSI_T_AN_QUERY | super::constants::VIRTIO_SCSI_T_AN_SUBSCRIBE => {
            let (req, _) =
                AnRequest::read_from_prefix(bytes).map_err(|_| short(size_of::<AnRequest>()))?;
            Ok(ControlRequest::AsyncNotify {
                subscribe: kind == super::constants::VIRTIO_SCSI_T_AN_SUBSCRIBE,
                lun: req.lun,
                event_requested: req.event_requested.get(),
            })
        }
        other => Err(RequestError::UnknownControlType(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_sizes_match_the_spec() {
        assert_eq!(CMD_REQUEST_HEADER_SIZE, 19);
        assert_eq!(CMD_RESPONSE_HEADER_SIZE, 12);
        assert_eq!(size_of::<TmfRequest>(), 24);
        assert_eq!(size_of::<AnRequest>(), 16);
        assert_eq!(size_of::<AnResponse>(), 5);
    }

    #[test]
    fn parses_command_request_with_configured_cdb_size() {
        let mut bytes = vec![1, 2, 0x40, 5, 0, 0, 0, 0];
        bytes.extend_from_slice(&0x1122u64.to_le_bytes());
        bytes.extend_from_slice(&[0, 0, 0]);
        bytes.extend_from_slice(&[0x28; 16]);
        let req = parse_cmd_request(&bytes, 16).unwrap();
        assert_eq!(req.id, 0x1122);
        assert_eq!(req.cdb.len(), 16);
        assert_eq!(parse_lun(&req.lun), Some((2, 5)));
        assert!(matches!(
            parse_cmd_request(&bytes, 32),
            Err(RequestError::ShortRequest { needed: 51, .. })
        ));
    }

    #[test]
    fn lun_forms() {
        assert_eq!(parse_lun(&[1, 0, 0, 0, 0, 0, 0, 0]), Some((0, 0)));
        assert_eq!(parse_lun(&[1, 3, 0, 7, 0, 0, 0, 0]), Some((3, 7)));
        assert_eq!(parse_lun(&[1, 0, 0x41, 0x2c, 0, 0, 0, 0]), Some((0, 300)));
        assert_eq!(
            parse_lun(&[0, 0, 0, 0, 0, 0, 0, 0]),
            None,
            "byte 0 must be 1"
        );
        assert_eq!(
            parse_lun(&[1, 0, 0x80, 0, 0, 0, 0, 0]),
            None,
            "LUN method 2"
        );
        assert_eq!(parse_lun(&[1, 0, 0x01, 0, 0, 0, 0, 0]), None, "bus != 0");
        assert_eq!(parse_lun(&[1, 0, 0, 0, 0, 1, 0, 0]), None, "second level");
    }

    #[test]
    fn response_encoding_cuts_sense_to_sense_size() {
        let r = encode_cmd_response(0, 2, 7, &[0x70; 18], 8);
        assert_eq!(r.len(), 20);
        assert_eq!(u32::from_le_bytes(r[0..4].try_into().unwrap()), 8);
        assert_eq!(u32::from_le_bytes(r[4..8].try_into().unwrap()), 7);
        assert_eq!((r[10], r[11]), (2, 0));
        let r = encode_cmd_response(3, 0, 0, &[], 96);
        assert_eq!(r.len(), 108);
        assert_eq!(r[11], 3);
    }

    #[test]
    fn control_requests() {
        let mut tmf = vec![0u8; 24];
        tmf[4] = 5;
        tmf[8] = 1;
        tmf[16] = 9;
        assert_eq!(
            parse_control_request(&tmf).unwrap(),
            ControlRequest::Tmf {
                subtype: 5,
                lun: [1, 0, 0, 0, 0, 0, 0, 0],
                id: 9
            }
        );
        assert!(parse_control_request(&tmf[..20]).is_err());
        let mut an = vec![0u8; 16];
        an[0] = 2;
        an[12] = 0x10;
        assert_eq!(
            parse_control_request(&an).unwrap(),
            ControlRequest::AsyncNotify {
                subscribe: true,
                lun: [0; 8],
                event_requested: 0x10
            }
        );
        assert_eq!(
            parse_control_request(&[7, 0, 0, 0]),
            Err(RequestError::UnknownControlType(7))
        );
        assert!(parse_control_request(&[]).is_err());
    }

    #[test]
    fn skip_bytes_splits_ranges() {
        let ranges = [
            GuestRange {
                addr: GuestAddress(0x1000),
                len: 10,
            },
            GuestRange {
                addr: GuestAddress(0x2000),
                len: 10,
            },
        ];
        assert_eq!(
            skip_bytes(&ranges, 12),
            vec![GuestRange {
                addr: GuestAddress(0x2002),
                len: 8
            }]
        );
        assert_eq!(skip_bytes(&ranges, 10).len(), 1);
        assert!(skip_bytes(&ranges, 25).is_empty());
    }

    #[test]
    fn guest_copies_and_host_bufs() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let ranges = [
            GuestRange {
                addr: GuestAddress(0x100),
                len: 3,
            },
            GuestRange {
                addr: GuestAddress(0x200),
                len: 5,
            },
        ];
        assert_eq!(write_to(&mem, &ranges, &[1, 2, 3, 4, 5, 6]).unwrap(), 6);
        let mut back = [0u8; 6];
        read_from(&mem, &ranges, &mut back).unwrap();
        assert_eq!(back, [1, 2, 3, 4, 5, 6]);
        let bufs = host_bufs(&mem, &ranges, 8).unwrap();
        assert_eq!(bufs.iter().map(|b| b.len).sum::<usize>(), 8);
        let outside = [GuestRange {
            addr: GuestAddress(0xfff0),
            len: 0x20,
        }];
        assert!(host_bufs(&mem, &outside, 0x20).is_err());
        assert!(write_to(&mem, &outside, &[0; 0x20]).is_err());
        let mut big = [0u8; 9];
        assert!(read_from(&mem, &ranges, &mut big).is_err());
    }

    /// A descriptor: address, length, flags, next.
    type Desc = (u64, u32, u16, u16);
    /// A named case: the ring's table, other tables by address, the head.
    type WalkCase<'a> = (&'a str, Vec<Desc>, Vec<(u64, &'a [Desc])>, u16);

    /// virtio-queue's chain and `walk_into` for `head` after writing
    /// `descs` at 0x1000 and each `extra` table at its address.
    fn both_walks(
        mem: &GuestMemoryMmap,
        descs: &[Desc],
        extra: &[(u64, &[Desc])],
        head: u16,
    ) -> (
        Result<ChainBuffers, RequestError>,
        Result<ChainBuffers, RequestError>,
    ) {
        use virtio_queue::{Queue, QueueOwnedT, QueueT};
        let put = |at: u64, list: &[Desc]| {
            for (i, &(addr, len, flags, next)) in list.iter().enumerate() {
                let raw = RawDescriptor {
                    addr: U64::new(addr),
                    len: U32::new(len),
                    flags: U16::new(flags),
                    next: U16::new(next),
                };
                mem.write_slice(raw.as_bytes(), GuestAddress(at + 16 * i as u64))
                    .unwrap();
            }
        };
        put(0x1000, descs);
        for &(at, list) in extra {
            put(at, list);
        }
        let mut queue = Queue::new(8).unwrap();
        queue.set_desc_table_address(Some(0x1000), Some(0));
        queue.set_avail_ring_address(Some(0x2000), Some(0));
        queue.set_used_ring_address(Some(0x3000), Some(0));
        queue.set_ready(true);
        mem.write_obj(1u16, GuestAddress(0x2002)).unwrap();
        mem.write_obj(head, GuestAddress(0x2004)).unwrap();
        let table = DescTable {
            addr: GuestAddress(queue.desc_table()),
            size: queue.size(),
        };
        let chain = queue.iter(mem).unwrap().next().unwrap();
        let theirs = ChainBuffers::from_chain(chain);
        let ours = ChainBuffers::walk_into(mem, table, head, ChainBuffers::default());
        (theirs, ours)
    }

    #[test]
    fn walk_into_sees_the_chains_virtio_queue_sees() {
        const N: u16 = DESC_F_NEXT;
        const W: u16 = DESC_F_WRITE;
        const I: u16 = DESC_F_INDIRECT;
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let table: &[Desc] = &[(0x8000, 48, I, 0)];
        let nested: &[Desc] = &[(0x4000, 19, N, 1), (0x8000, 48, I, 0)];
        let three: &[Desc] = &[
            (0x4000, 51, N, 1),
            (0x5000, 108, W | N, 2),
            (0x6000, 4096, W, 0),
        ];
        let looping: &[Desc] = &[(0x4000, 8, N, 1), (0x4100, 8, N, 0)];
        let cases: Vec<WalkCase> = vec![
            ("request, response, data", three.to_vec(), vec![], 0),
            ("loop ends at the queue size", looping.to_vec(), vec![], 0),
            ("next past the table", vec![(0x4000, 8, N, 9)], vec![], 0),
            ("head past the table", three.to_vec(), vec![], 9),
            (
                "readable after writable",
                vec![(0x5000, 8, W | N, 1), (0x4000, 8, 0, 0)],
                vec![],
                0,
            ),
            ("indirect", table.to_vec(), vec![(0x8000, three)], 0),
            (
                "indirect with a loop",
                table.to_vec(),
                vec![(0x8000, looping)],
                0,
            ),
            ("nested indirect", table.to_vec(), vec![(0x8000, nested)], 0),
            (
                "indirect length not whole",
                vec![(0x8000, 40, I, 0)],
                vec![(0x8000, three)],
                0,
            ),
            ("empty indirect table", vec![(0x8000, 0, I, 0)], vec![], 0),
            (
                "indirect table outside memory",
                vec![(0xfff8, 48, I, 0)],
                vec![],
                0,
            ),
            (
                "indirect with next set",
                vec![(0x8000, 48, I | N, 1), (0x4000, 8, 0, 0)],
                vec![(0x8000, three)],
                0,
            ),
            (
                "lengths past u32::MAX",
                vec![(0x4000, u32::MAX, N, 1), (0x4100, 2, W, 0)],
                vec![],
                0,
            ),
        ];
        for (name, descs, extra, head) in cases {
            mem.write_slice(&[0u8; 0x200], GuestAddress(0x1000))
                .unwrap();
            mem.write_slice(&[0u8; 0x200], GuestAddress(0x8000))
                .unwrap();

            let (theirs, ours) = both_walks(&mem, &descs, &extra, head);

            assert_eq!(ours, theirs, "{name}");
        }
    }

    #[test]
    fn walk_into_matches_virtio_queue_on_random_tables() {
        // Small flags, indices and lengths so that loops, indirection,
        // out-of-range indices and overflowing lengths all occur.
        let mem = GuestMemoryMmap::<()>::from_ranges(&[
            (GuestAddress(0), 0x1008),
            (GuestAddress(0x1008), 0xeff8),
        ])
        .unwrap();
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move |bound: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % bound
        };
        for round in 0..2000 {
            let mut pick = |_| {
                let addr = [0x4000, 0x8000, 0xfff8, 0x1_0000][next(4) as usize];
                let len = [0, 16, 40, 48, 0x1000, u32::MAX][next(6) as usize];
                (addr, len, next(8) as u16, next(10) as u16)
            };
            let descs: Vec<_> = (0..8).map(&mut pick).collect();
            let indirect: Vec<_> = (0..3).map(&mut pick).collect();
            let head = next(10) as u16;

            let (theirs, ours) = both_walks(&mem, &descs, &[(0x8000, &indirect)], head);

            assert_eq!(
                ours, theirs,
                "round {round}: {descs:x?} {indirect:x?} head {head}"
            );
        }
    }

    #[test]
    fn host_bufs_split_a_range_crossing_two_regions() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[
            (GuestAddress(0), 0x1000),
            (GuestAddress(0x1000), 0x1000),
        ])
        .unwrap();
        let ranges = [GuestRange {
            addr: GuestAddress(0xf00),
            len: 0x200,
        }];
        let bytes: Vec<u8> = (0..0x200u32).map(|i| i as u8).collect();
        assert_eq!(write_to(&mem, &ranges, &bytes).unwrap(), 0x200);
        let mut back = vec![0u8; 0x200];
        read_from(&mem, &ranges, &mut back).unwrap();
        assert_eq!(back, bytes, "copies across the region boundary");
        let bufs = host_bufs(&mem, &ranges, 0x200).unwrap();
        assert_eq!(bufs.len(), 2);
        assert_eq!((bufs[0].len, bufs[1].len), (0x100, 0x100));
        let gap = GuestMemoryMmap::<()>::from_ranges(&[
            (GuestAddress(0), 0x1000),
            (GuestAddress(0x2000), 0x1000),
        ])
        .unwrap();
        assert!(
            host_bufs(&gap, &ranges, 0x200).is_err(),
            "hole between regions"
        );
        assert!(write_to(&gap, &ranges, &bytes).is_err());
        assert!(read_from(&gap, &ranges, &mut back).is_err());
    }
}
