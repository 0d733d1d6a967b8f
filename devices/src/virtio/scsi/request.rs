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

use super::backend::{HostBuf, HostBufs};
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
            if desc.is_write_only() {
                buffers.writable.push(range);
            } else if buffers.writable.is_empty() {
                buffers.readable.push(range);
            } else {
                return Err(RequestError::ReadableAfterWritable);
            }
        }
        Ok(buffers)
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
) -> Result<HostBufs, RequestError> {
    host_bufs_after(mem, ranges, 0, len)
}

/// [`host_bufs`] of the ranges after their first `skip` bytes (what
/// [`skip_bytes`] would leave), without building that list.
pub fn host_bufs_after(
    mem: &GuestMemoryMmap,
    ranges: &[GuestRange],
    mut skip: u64,
    len: u64,
) -> Result<HostBufs, RequestError> {
    let mut bufs = HostBufs::Many(Vec::new());
    let mut push = |buf: HostBuf| match &mut bufs {
        HostBufs::Many(list) if list.is_empty() => bufs = HostBufs::One(buf),
        HostBufs::Many(list) => list.push(buf),
        HostBufs::One(first) => bufs = HostBufs::Many(vec![*first, buf]),
    };
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
            push(HostBuf {
                ptr: slice.ptr_guard_mut().as_ptr(),
                len: slice.len(),
            });
            left -= n;
            continue;
        }
        let mut covered = 0u64;
        for slice in GuestMemoryBackend::get_slices(mem, range.addr, n as usize) {
            let slice = slice.map_err(|_| RequestError::BadAddress(range.addr.raw_value()))?;
            push(HostBuf {
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
