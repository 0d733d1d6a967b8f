//! Kernels as distributions ship them. `--kernel` takes a plain arm64 `Image`,
//! a gzip- or zstd-compressed one (`vmlinuz` on Ubuntu and others), or an EFI
//! zboot image (Fedora's): a PE executable whose header names a compressed
//! `Image` inside it (the layout of Linux's `drivers/firmware/efi/libstub/zboot-header.S`:
//! "zimg" at offset 4, the payload's offset and size at 8 and 12, the
//! compression's name at 24). A plain `Image` is loaded from its file; the
//! others are unpacked into memory first, never past the footprint their own
//! `Image` header gives nor past the guest's RAM, so a corrupt or hostile file
//! is an error, not an allocation the guest could not use.

use std::fs::File;
use std::io::{Cursor, ErrorKind, Read, Seek, SeekFrom};

use flate2::read::GzDecoder;
use ruzstd::decoding::StreamingDecoder;

use crate::arch::aarch64::direct_boot::{has_image_magic, ImageHeader, IMAGE_HEADER_SIZE};

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
const ZBOOT_TYPE: &[u8; 4] = b"zimg";
/// Offset and length of the compression's NUL-terminated name in a zboot header.
const ZBOOT_COMPRESSION: (usize, usize) = (24, 32);
/// How much of the file [`unpack`] looks at to tell the formats apart.
const SNIFF_LEN: usize = 0x40;

/// Compressed formats recognised only to say what to do with them: magic,
/// name, the command that unpacks them.
const OTHER_COMPRESSIONS: &[(&[u8], &str, &str)] = &[
    (&[0xfd, b'7', b'z', b'X', b'Z', 0], "xz", "xz -d"),
    (&[0x04, 0x22, 0x4d, 0x18], "lz4", "lz4 -d"),
    (b"BZh", "bzip2", "bzip2 -d"),
    (b"\x89LZO", "lzo", "lzop -d"),
    (&[0x5d, 0, 0], "lzma", "unlzma"),
];

/// The command that unpacks a zboot payload, by the compression's name in
/// its header (Linux's `Makefile.zboot` writes `xzkern`, `lzma`, ...).
fn zboot_tool(name: &str) -> &'static str {
    const BY_PREFIX: &[(&str, &str)] = &[
        ("xz", "xz -d"),
        ("lzma", "unlzma"),
        ("lzo", "lzop -d"),
        ("lz4", "lz4 -d"),
        ("bzip2", "bzip2 -d"),
    ];
    BY_PREFIX
        .iter()
        .find(|(prefix, _)| name.starts_with(prefix))
        .map_or("the tool its name gives", |(_, tool)| tool)
}

/// How a kernel file was packed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelFormat {
    Image,
    Gzip,
    Zstd,
    /// EFI zboot with a gzip payload.
    ZbootGzip,
    /// EFI zboot with a zstd payload (`zstd22` in its header).
    ZbootZstd,
}

impl std::fmt::Display for KernelFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            KernelFormat::Image => "Image",
            KernelFormat::Gzip => "gzip",
            KernelFormat::Zstd => "zstd",
            KernelFormat::ZbootGzip => "EFI zboot (gzip)",
            KernelFormat::ZbootZstd => "EFI zboot (zstd)",
        })
    }
}

/// The kernel's bytes, ready for the loader: the file itself, or what was
/// unpacked from it.
#[derive(Debug)]
pub enum KernelBytes {
    File(File),
    Memory(Cursor<Vec<u8>>),
}

/// A kernel file, unpacked if it was packed.
#[derive(Debug)]
pub struct Unpacked {
    pub format: KernelFormat,
    pub bytes: KernelBytes,
    /// The `Image`'s length (unpacked).
    pub len: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("unpacking its {format} data")]
    Unpacking {
        format: KernelFormat,
        #[source]
        source: std::io::Error,
    },
    #[error("unpacks to more than the guest's {limit_mib} MiB of RAM")]
    TooLarge { limit_mib: u64 },
    #[error("unpacks to more than the {image_size} bytes its Image header says it takes")]
    LongerThanHeader { image_size: u64 },
    #[error(
        "an EFI zboot image whose payload ({offset:#x}, {size} bytes) is not inside \
         the file ({len} bytes)"
    )]
    ZbootPayload { offset: u64, size: u64, len: u64 },
    #[error(
        "an EFI zboot image with a {name:?} payload; hangar unpacks gzip and zstd only, \
         so take its {size} bytes at offset {offset} and unpack them with {tool}"
    )]
    ZbootCompression {
        name: String,
        offset: u64,
        size: u64,
        tool: &'static str,
    },
    #[error(
        "{name}-compressed; hangar unpacks gzip and zstd only, so unpack it first with {tool}"
    )]
    OtherCompression {
        name: &'static str,
        tool: &'static str,
    },
}

/// Tells how `file` (`len` bytes) is packed and unpacks it if needed, into at
/// most `limit` bytes. The file's position is left unspecified.
pub fn unpack(mut file: File, len: u64, limit: u64) -> Result<Unpacked, UnpackError> {
    let mut head = Vec::with_capacity(SNIFF_LEN);
    (&mut file).take(SNIFF_LEN as u64).read_to_end(&mut head)?;
    // An Image's first instruction could look like another format's magic.
    if !has_image_magic(&head) {
        let packed = if head.starts_with(&GZIP_MAGIC) {
            Some((KernelFormat::Gzip, 0, len))
        } else if head.starts_with(&ZSTD_MAGIC) {
            Some((KernelFormat::Zstd, 0, len))
        } else if head.starts_with(b"MZ") && head.get(4..8) == Some(ZBOOT_TYPE) {
            Some(zboot_payload(&head, len)?)
        } else {
            None
        };
        if let Some((format, offset, size)) = packed {
            file.seek(SeekFrom::Start(offset))?;
            return unpack_stream(file.take(size), format, limit);
        }
        if let Some((_, name, tool)) = OTHER_COMPRESSIONS
            .iter()
            .find(|(magic, _, _)| head.starts_with(magic))
        {
            return Err(UnpackError::OtherCompression { name, tool });
        }
    }
    file.seek(SeekFrom::Start(0))?;
    Ok(Unpacked {
        format: KernelFormat::Image,
        bytes: KernelBytes::File(file),
        len,
    })
}

/// A zboot image's payload: how it is packed and where it is, checked against
/// the file's length.
fn zboot_payload(head: &[u8], len: u64) -> Result<(KernelFormat, u64, u64), UnpackError> {
    let word = |at: usize| {
        head.get(at..at + 4)
            .map(|b| u64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]])))
            .unwrap_or(0)
    };
    let (offset, size) = (word(8), word(12));
    if size == 0 || offset.checked_add(size).is_none_or(|end| end > len) {
        return Err(UnpackError::ZbootPayload { offset, size, len });
    }
    let (at, max) = ZBOOT_COMPRESSION;
    let name = head.get(at..).unwrap_or_default();
    let name = &name[..name.len().min(max)];
    let name = name.split(|&b| b == 0).next().unwrap_or_default();
    let format = match name {
        b"gzip" => KernelFormat::ZbootGzip,
        // Linux writes `zstd22` (its level); any zstd frame unpacks the same.
        _ if name.starts_with(b"zstd") => KernelFormat::ZbootZstd,
        _ => {
            let name = String::from_utf8_lossy(name).into_owned();
            return Err(UnpackError::ZbootCompression {
                tool: zboot_tool(&name),
                name,
                offset,
                size,
            });
        }
    };
    Ok((format, offset, size))
}

/// Unpacks one gzip stream or zstd frame into at most `limit` bytes, and no
/// further than the footprint its `Image` header gives (a real `Image` is
/// never longer). What does not start with an `Image` header stops after the
/// header's bytes: the caller's header check then refuses it, and nothing
/// more is unpacked.
fn unpack_stream(
    src: impl Read,
    format: KernelFormat,
    limit: u64,
) -> Result<Unpacked, UnpackError> {
    let unpacking = |source| UnpackError::Unpacking { format, source };
    let mut decoder: Box<dyn Read> = match format {
        KernelFormat::Zstd | KernelFormat::ZbootZstd => Box::new(
            StreamingDecoder::new(src)
                .map_err(|e| unpacking(std::io::Error::new(ErrorKind::InvalidData, e)))?,
        ),
        // gzip (`unpack` sends nothing else here).
        _ => Box::new(GzDecoder::new(src)),
    };
    let mut out = Vec::new();
    (&mut decoder)
        .take(IMAGE_HEADER_SIZE as u64)
        .read_to_end(&mut out)
        .map_err(unpacking)?;
    let image_size = match ImageHeader::parse(&out) {
        Ok(header) => header.image_size,
        Err(_) => return Ok(in_memory(format, out)),
    };
    let cap = match image_size {
        0 => limit,
        footprint => footprint.min(limit),
    };
    if image_size != 0 {
        // Most of the footprint is the file (the rest is BSS): spare the doublings.
        out.reserve(usize::try_from(cap.min(128 << 20)).unwrap_or(0));
    }
    (&mut decoder)
        .take((cap + 1).saturating_sub(out.len() as u64))
        .read_to_end(&mut out)
        .map_err(unpacking)?;
    if out.len() as u64 > cap {
        return Err(if cap < limit {
            UnpackError::LongerThanHeader { image_size }
        } else {
            UnpackError::TooLarge {
                limit_mib: limit >> 20,
            }
        });
    }
    Ok(in_memory(format, out))
}

fn in_memory(format: KernelFormat, bytes: Vec<u8>) -> Unpacked {
    Unpacked {
        format,
        len: bytes.len() as u64,
        bytes: KernelBytes::Memory(Cursor::new(bytes)),
    }
}

impl Read for KernelBytes {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            KernelBytes::File(f) => f.read(buf),
            KernelBytes::Memory(c) => c.read(buf),
        }
    }
}

impl Seek for KernelBytes {
    fn seek(&mut self, pos: SeekFrom) -> std::io::Result<u64> {
        match self {
            KernelBytes::File(f) => f.seek(pos),
            KernelBytes::Memory(c) => c.seek(pos),
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use flate2::write::GzEncoder;
    use flate2::Compression;
    use std::io::Write;

    pub(in crate::direct_kernel) fn gzip(data: &[u8]) -> Vec<u8> {
        let mut enc = GzEncoder::new(Vec::new(), Compression::fast());
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    fn zstd(data: &[u8]) -> Vec<u8> {
        ruzstd::encoding::compress_to_vec(data, ruzstd::encoding::CompressionLevel::Fastest)
    }

    /// A zboot image: the header, padding, then `payload`.
    fn zboot(payload: &[u8], compression: &str) -> Vec<u8> {
        let offset = 0x200u32;
        let mut img = vec![0u8; offset as usize];
        img[0..2].copy_from_slice(b"MZ");
        img[4..8].copy_from_slice(b"zimg");
        img[8..12].copy_from_slice(&offset.to_le_bytes());
        img[12..16].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        img[24..24 + compression.len()].copy_from_slice(compression.as_bytes());
        img.extend_from_slice(payload);
        // What follows the payload in a real zboot image (the decompressor).
        img.extend_from_slice(&[0xaa; 300]);
        img
    }

    fn run(bytes: &[u8], limit: u64) -> Result<(KernelFormat, Vec<u8>), UnpackError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        std::fs::write(&path, bytes).unwrap();
        let u = unpack(File::open(&path).unwrap(), bytes.len() as u64, limit)?;
        let mut out = Vec::new();
        match u.bytes {
            KernelBytes::File(mut f) => f.read_to_end(&mut out).unwrap(),
            KernelBytes::Memory(mut c) => c.read_to_end(&mut out).unwrap(),
        };
        assert_eq!(u.len, out.len() as u64);
        Ok((u.format, out))
    }

    /// An `Image` (text_offset 0, `image_size` as given) of `len` bytes whose
    /// first bytes are `start`, as its first instruction could be.
    fn image(start: &[u8], image_size: u64, len: usize) -> Vec<u8> {
        let mut k: Vec<u8> = (0..len as u32).map(|i| (i % 251) as u8).collect();
        k[..start.len()].copy_from_slice(start);
        k[0x08..0x10].fill(0);
        k[0x10..0x18].copy_from_slice(&image_size.to_le_bytes());
        k[0x38..0x3c].copy_from_slice(b"ARM\x64");
        k
    }

    fn kernel() -> Vec<u8> {
        image(b"MZ", 1 << 20, 400_000)
    }

    #[test]
    fn each_format_yields_the_same_image() {
        let k = kernel();
        assert_eq!(run(&k, 1 << 30).unwrap(), (KernelFormat::Image, k.clone()));
        assert_eq!(
            run(&gzip(&k), 1 << 30).unwrap(),
            (KernelFormat::Gzip, k.clone())
        );
        assert_eq!(
            run(&zboot(&gzip(&k), "gzip"), 1 << 30).unwrap(),
            (KernelFormat::ZbootGzip, k.clone())
        );
        assert_eq!(
            run(&zstd(&k), 1 << 30).unwrap(),
            (KernelFormat::Zstd, k.clone())
        );
        assert_eq!(
            run(&zboot(&zstd(&k), "zstd22"), 1 << 30).unwrap(),
            (KernelFormat::ZbootZstd, k)
        );
    }

    #[test]
    fn a_file_with_the_image_magic_is_an_image_whatever_it_starts_with() {
        for start in [
            &GZIP_MAGIC[..],
            b"MZ\0\0zimg",
            &[0x28, 0xb5, 0x2f, 0xfd],
            &[0x5d, 0, 0],
        ] {
            let k = image(start, 1 << 20, 4096);
            assert_eq!(run(&k, 1 << 30).unwrap(), (KernelFormat::Image, k));
        }
    }

    #[test]
    fn unpacking_stops_at_the_guest_ram_or_the_headers_footprint() {
        // Exactly the limit is fine; a byte more is not.
        let k = image(b"MZ", 0, 3 << 20);
        assert_eq!(run(&gzip(&k), 3 << 20).unwrap().1, k);
        let err = run(&gzip(&k), (3 << 20) - 1).unwrap_err();
        assert!(
            matches!(err, UnpackError::TooLarge { limit_mib: 2 }),
            "{err}"
        );
        // A header that gives its footprint caps the unpacking below the RAM.
        let k = image(b"MZ", 100_000, 100_001);
        let err = run(&gzip(&k), 1 << 30).unwrap_err();
        assert!(
            matches!(
                err,
                UnpackError::LongerThanHeader {
                    image_size: 100_000
                }
            ),
            "{err}"
        );
        assert_eq!(run(&gzip(&k[..100_000]), 1 << 30).unwrap().1, k[..100_000]);
    }

    #[test]
    fn what_does_not_unpack_to_an_image_stops_after_its_first_bytes() {
        // Gigabytes of zeros would compress to a few MiB; only the header's
        // worth is unpacked before the Image check refuses it.
        let (format, bytes) = run(&gzip(&vec![0u8; 8 << 20]), 1 << 30).unwrap();
        assert_eq!(format, KernelFormat::Gzip);
        assert_eq!(bytes.len(), IMAGE_HEADER_SIZE);
    }

    #[test]
    fn broken_or_foreign_packing_is_an_error_that_says_what() {
        let k = kernel();
        let unpacking = |e: &UnpackError, packed: KernelFormat| matches!(e, UnpackError::Unpacking { format, .. } if *format == packed);
        let mut cut = gzip(&k);
        cut.truncate(cut.len() / 2);
        let err = run(&cut, 1 << 30).unwrap_err();
        assert!(unpacking(&err, KernelFormat::Gzip), "{err}");

        let mut flipped = gzip(&k);
        let mid = flipped.len() / 2;
        flipped[mid] ^= 0xff;
        let err = run(&flipped, 1 << 30).unwrap_err();
        assert!(unpacking(&err, KernelFormat::Gzip), "{err}");

        let err = run(&zboot(&gzip(&k), "xzkern"), 1 << 30).unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("an EFI zboot image with a \"xzkern\" payload")
                && text.contains("at offset 512")
                && text.ends_with("unpack them with xz -d"),
            "{text}"
        );

        // A zstd frame cut short, and one that is not zstd past its magic.
        let mut cut = zstd(&k);
        cut.truncate(cut.len() / 2);
        let err = run(&cut, 1 << 30).unwrap_err();
        assert!(unpacking(&err, KernelFormat::Zstd), "{err}");
        let mut junk = ZSTD_MAGIC.to_vec();
        junk.extend_from_slice(&[0xff; 1000]);
        let err = run(&junk, 1 << 30).unwrap_err();
        assert!(unpacking(&err, KernelFormat::Zstd), "{err}");

        let mut outside = zboot(&gzip(&k), "gzip");
        outside[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        let err = run(&outside, 1 << 30).unwrap_err();
        assert!(matches!(err, UnpackError::ZbootPayload { .. }), "{err}");
        outside[12..16].copy_from_slice(&0u32.to_le_bytes());
        assert!(matches!(
            run(&outside, 1 << 30).unwrap_err(),
            UnpackError::ZbootPayload { size: 0, .. }
        ));

        let mut xz = vec![0xfd, b'7', b'z', b'X', b'Z', 0];
        xz.extend_from_slice(&[7u8; 1000]);
        let err = run(&xz, 1 << 30).unwrap_err().to_string();
        assert!(
            err.contains("xz-compressed") && err.ends_with("with xz -d"),
            "{err}"
        );
    }

    #[test]
    fn short_files_are_images_for_the_header_check_to_refuse() {
        // Fewer bytes than the sniffer reads: not packed; the Image check decides.
        assert_eq!(run(b"MZ", 1 << 30).unwrap().0, KernelFormat::Image);
        assert_eq!(run(b"", 1 << 30).unwrap().0, KernelFormat::Image);
    }
}
