//! Kernels as distributions ship them. `--kernel` takes a plain arm64 `Image`,
//! a gzip-compressed one (`vmlinuz` on Ubuntu and others), or an EFI zboot
//! image (Fedora's): a PE executable whose header names a compressed `Image`
//! inside it (the layout of Linux's `drivers/firmware/efi/libstub/zboot-header.S`:
//! "zimg" at offset 4, the payload's offset and size at 8 and 12, the
//! compression's name at 24). A plain `Image` is loaded from its file; the
//! others are unpacked into memory first, at most as much as the guest's RAM,
//! so a corrupt or hostile file is an error and never a host-sized allocation.

use std::fs::File;
use std::io::{Cursor, Read, Seek, SeekFrom};

use flate2::read::GzDecoder;

use crate::arch::aarch64::direct_boot::has_image_magic;

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const ZBOOT_TYPE: &[u8; 4] = b"zimg";
/// Offset and length of the compression's NUL-terminated name in a zboot header.
const ZBOOT_COMPRESSION: (usize, usize) = (24, 32);
/// How much of the file [`unpack`] looks at to tell the formats apart.
const SNIFF_LEN: usize = 0x40;

/// Compressed formats recognised only to say what to do with them.
const OTHER_COMPRESSIONS: &[(&[u8], &str, &str)] = &[
    (&[0x28, 0xb5, 0x2f, 0xfd], "zstd", "zstd -d"),
    (&[0xfd, b'7', b'z', b'X', b'Z', 0], "xz", "xz -d"),
    (&[0x04, 0x22, 0x4d, 0x18], "lz4", "lz4 -d"),
    (b"BZh", "bzip2", "bzip2 -d"),
];

/// How a kernel file was packed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelFormat {
    Image,
    Gzip,
    /// EFI zboot with a gzip payload.
    ZbootGzip,
}

impl std::fmt::Display for KernelFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            KernelFormat::Image => "Image",
            KernelFormat::Gzip => "gzip",
            KernelFormat::ZbootGzip => "EFI zboot (gzip)",
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
    #[error("the {format} data is corrupt")]
    Corrupt {
        format: KernelFormat,
        #[source]
        source: std::io::Error,
    },
    #[error("unpacks to more than the guest's {limit_mib} MiB of RAM")]
    TooLarge { limit_mib: u64 },
    #[error(
        "an EFI zboot image whose payload ({offset:#x}, {size} bytes) is not inside \
         the file ({len} bytes)"
    )]
    ZbootPayload { offset: u64, size: u64, len: u64 },
    #[error("an EFI zboot image compressed with {0:?}; hangar unpacks gzip only")]
    ZbootCompression(String),
    #[error("{name}-compressed; hangar unpacks gzip only: unpack it first ({tool})")]
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
    let image = has_image_magic(&head);
    if !image && head.starts_with(&GZIP_MAGIC) {
        file.seek(SeekFrom::Start(0))?;
        return gunzip(file.take(len), KernelFormat::Gzip, limit);
    }
    if !image && head.starts_with(b"MZ") && head.get(4..8) == Some(ZBOOT_TYPE) {
        let (offset, size) = zboot_payload(&head, len)?;
        file.seek(SeekFrom::Start(offset))?;
        return gunzip(file.take(size), KernelFormat::ZbootGzip, limit);
    }
    if let Some((_, name, tool)) = OTHER_COMPRESSIONS
        .iter()
        .find(|(magic, _, _)| !image && head.starts_with(magic))
    {
        return Err(UnpackError::OtherCompression { name, tool });
    }
    file.seek(SeekFrom::Start(0))?;
    Ok(Unpacked {
        format: KernelFormat::Image,
        bytes: KernelBytes::File(file),
        len,
    })
}

/// Where a zboot image's payload is, checked against the file's length and
/// its compression.
fn zboot_payload(head: &[u8], len: u64) -> Result<(u64, u64), UnpackError> {
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
    if name != b"gzip" {
        return Err(UnpackError::ZbootCompression(
            String::from_utf8_lossy(name).into_owned(),
        ));
    }
    Ok((offset, size))
}

/// Unpacks one gzip stream into at most `limit` bytes.
fn gunzip(src: impl Read, format: KernelFormat, limit: u64) -> Result<Unpacked, UnpackError> {
    let mut out = Vec::new();
    GzDecoder::new(src)
        .take(limit.saturating_add(1))
        .read_to_end(&mut out)
        .map_err(|source| UnpackError::Corrupt { format, source })?;
    let len = out.len() as u64;
    if len > limit {
        return Err(UnpackError::TooLarge {
            limit_mib: limit >> 20,
        });
    }
    Ok(Unpacked {
        format,
        bytes: KernelBytes::Memory(Cursor::new(out)),
        len,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::write::GzEncoder;
    use flate2::Compression;
    use std::io::Write;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut enc = GzEncoder::new(Vec::new(), Compression::fast());
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
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

    /// An Image-shaped blob (the magic at 0x38) whose first bytes look like
    /// zstd's magic, as an instruction could.
    fn kernel() -> Vec<u8> {
        let mut k: Vec<u8> = (0..100_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        k[0..4].copy_from_slice(&[0x28, 0xb5, 0x2f, 0xfd]);
        k[0x38..0x3c].copy_from_slice(b"ARM\x64");
        k
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
            (KernelFormat::ZbootGzip, k)
        );
    }

    #[test]
    fn unpacking_stops_at_the_limit() {
        let k = kernel();
        let exact = k.len() as u64;
        assert_eq!(run(&gzip(&k), exact).unwrap().1.len() as u64, exact);
        let err = run(&gzip(&vec![0u8; 3 << 20]), 2 << 20).unwrap_err();
        assert!(
            matches!(err, UnpackError::TooLarge { limit_mib: 2 }),
            "{err}"
        );
    }

    #[test]
    fn broken_or_foreign_packing_is_an_error_that_says_what() {
        let k = kernel();
        let mut cut = gzip(&k);
        cut.truncate(cut.len() / 2);
        let err = run(&cut, 1 << 30).unwrap_err();
        assert!(
            matches!(
                err,
                UnpackError::Corrupt {
                    format: KernelFormat::Gzip,
                    ..
                }
            ),
            "{err}"
        );

        let mut flipped = gzip(&k);
        let mid = flipped.len() / 2;
        flipped[mid] ^= 0xff;
        assert!(run(&flipped, 1 << 30).is_err());

        let err = run(&zboot(&gzip(&k), "zstd"), 1 << 30).unwrap_err();
        assert_eq!(
            err.to_string(),
            "an EFI zboot image compressed with \"zstd\"; hangar unpacks gzip only"
        );

        let mut outside = zboot(&gzip(&k), "gzip");
        outside[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        let err = run(&outside, 1 << 30).unwrap_err();
        assert!(matches!(err, UnpackError::ZbootPayload { .. }), "{err}");
        outside[12..16].copy_from_slice(&0u32.to_le_bytes());
        assert!(matches!(
            run(&outside, 1 << 30).unwrap_err(),
            UnpackError::ZbootPayload { size: 0, .. }
        ));

        let mut zstd = vec![0x28, 0xb5, 0x2f, 0xfd];
        zstd.extend_from_slice(&[7u8; 1000]);
        let err = run(&zstd, 1 << 30).unwrap_err();
        assert!(err.to_string().contains("zstd-compressed") && err.to_string().contains("zstd -d"));
    }

    #[test]
    fn short_files_are_images_for_the_header_check_to_refuse() {
        // Fewer bytes than the sniffer reads: not packed; the Image check decides.
        assert_eq!(run(b"MZ", 1 << 30).unwrap().0, KernelFormat::Image);
        assert_eq!(run(b"", 1 << 30).unwrap().0, KernelFormat::Image);
    }
}
