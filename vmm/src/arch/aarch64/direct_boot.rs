//! Booting a Linux kernel `Image` without firmware (`hangar run --kernel`): the
//! arm64 boot protocol's facts (Linux, Documentation/arch/arm64/booting.rst)
//! and where the kernel, the initramfs and the device tree go in guest RAM.
//! Plain data, checked on any host; the loading itself (linux-loader's `PE`
//! loader) happens in the machine.
//!
//! ```text
//!  RAM_BASE (2 MiB aligned)
//!  + text_offset  kernel Image, then its BSS up to image_size
//!                 ... free ...
//!                 initramfs (page aligned, as high as it fits)
//!  last 2 MiB     device tree (its own 2 MiB block, as the protocol asks)
//!  RAM end
//! ```

use super::layout::{FDT_MAX_SIZE, RAM_BASE};

/// The header's size: the fields read here all lie within it.
pub const IMAGE_HEADER_SIZE: usize = 64;

/// "ARM\x64", little-endian, at offset 0x38.
const IMAGE_MAGIC: u32 = 0x644d_5241;
const MAGIC_OFFSET: usize = 0x38;
const TEXT_OFFSET_OFFSET: usize = 0x08;
const IMAGE_SIZE_OFFSET: usize = 0x10;

/// Kernels before 3.17 leave `image_size` zero and expect this `text_offset`.
const LEGACY_TEXT_OFFSET: u64 = 0x8_0000;

/// The kernel's base must be 2 MiB aligned; the device tree must not share a
/// 2 MiB block with anything mapped otherwise.
const BLOCK_2M: u64 = 2 << 20;
const PAGE: u64 = 4096;

/// An initramfs must lie within a 1 GiB aligned window of at most 32 GiB that
/// also covers the kernel: with RAM starting at 1 GiB, below 32 GiB is enough.
const INITRD_LIMIT: u64 = 32 << 30;

/// The arm64 kernel's command-line buffer (`COMMAND_LINE_SIZE`), with its NUL.
pub const CMDLINE_MAX: usize = 2048;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DirectBootError {
    #[error("not an arm64 Linux Image (no \"ARM\\x64\" magic at offset 0x38)")]
    NotAnImage,
    #[error("the Image header is {0} bytes long, shorter than the {IMAGE_HEADER_SIZE} it must be")]
    ShortHeader(usize),
    #[error("the Image's text_offset {0:#x} is not below 2 MiB")]
    BadTextOffset(u64),
    #[error(
        "the kernel ({kernel_mib} MiB with its BSS), initramfs ({initrd_mib} MiB) and \
         device tree (2 MiB) do not fit in {ram_mib} MiB of RAM"
    )]
    DoesNotFit {
        kernel_mib: u64,
        initrd_mib: u64,
        ram_mib: u64,
    },
}

/// What the boot needs from an `Image` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageHeader {
    /// Where the Image goes above a 2 MiB aligned base.
    pub text_offset: u64,
    /// The memory the kernel takes from its load address, BSS included; zero
    /// for kernels that predate the field.
    pub image_size: u64,
}

/// Whether `bytes`, a file's start, carry an `Image`'s magic.
pub fn has_image_magic(bytes: &[u8]) -> bool {
    bytes.get(MAGIC_OFFSET..MAGIC_OFFSET + 4) == Some(IMAGE_MAGIC.to_le_bytes().as_slice())
}

impl ImageHeader {
    /// Reads the header from the first [`IMAGE_HEADER_SIZE`] bytes of the file.
    pub fn parse(bytes: &[u8]) -> Result<ImageHeader, DirectBootError> {
        if bytes.len() < IMAGE_HEADER_SIZE {
            return Err(DirectBootError::ShortHeader(bytes.len()));
        }
        let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap());
        if !has_image_magic(bytes) {
            return Err(DirectBootError::NotAnImage);
        }
        let image_size = u64_at(IMAGE_SIZE_OFFSET);
        let text_offset = if image_size == 0 {
            LEGACY_TEXT_OFFSET
        } else {
            u64_at(TEXT_OFFSET_OFFSET)
        };
        if text_offset >= BLOCK_2M {
            return Err(DirectBootError::BadTextOffset(text_offset));
        }
        Ok(ImageHeader {
            text_offset,
            image_size,
        })
    }
}

/// Guest physical addresses for one direct boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootPlan {
    /// The 2 MiB aligned base the loader is given (the Image lands at
    /// `kernel_base + text_offset`, which is also the entry point).
    pub kernel_base: u64,
    pub kernel_entry: u64,
    /// First byte past the kernel's footprint (file or `image_size`, whichever
    /// is larger).
    pub kernel_end: u64,
    /// Start and length of the initramfs, if there is one.
    pub initrd: Option<(u64, u64)>,
    /// Where the device tree goes (x0 at entry).
    pub fdt: u64,
}

/// Places kernel, initramfs and device tree in `ram_size` bytes of RAM at
/// `RAM_BASE`, or says why they do not fit.
pub fn plan(
    ram_size: u64,
    header: ImageHeader,
    kernel_file_len: u64,
    initrd_len: Option<u64>,
) -> Result<BootPlan, DirectBootError> {
    let kernel_base = RAM_BASE;
    let kernel_entry = kernel_base + header.text_offset;
    let footprint = kernel_file_len.max(header.image_size);
    let does_not_fit = || DirectBootError::DoesNotFit {
        kernel_mib: footprint.div_ceil(1 << 20),
        initrd_mib: initrd_len.unwrap_or(0).div_ceil(1 << 20),
        ram_mib: ram_size >> 20,
    };
    let ram_end = RAM_BASE.checked_add(ram_size).ok_or_else(does_not_fit)?;
    let kernel_end = kernel_entry
        .checked_add(footprint)
        .ok_or_else(does_not_fit)?;
    // The device tree's 2 MiB block is the last whole one of RAM.
    let fdt = (ram_end / BLOCK_2M)
        .checked_sub(1)
        .map(|b| b * BLOCK_2M)
        .filter(|&fdt| fdt >= kernel_end && fdt + FDT_MAX_SIZE as u64 <= ram_end)
        .ok_or_else(does_not_fit)?;
    let initrd = match initrd_len {
        None => None,
        Some(len) => {
            let top = fdt.min(INITRD_LIMIT);
            let start = top
                .checked_sub(len)
                .map(|s| s / PAGE * PAGE)
                .filter(|&s| s >= kernel_end.div_ceil(PAGE) * PAGE)
                .ok_or_else(does_not_fit)?;
            Some((start, len))
        }
    };
    Ok(BootPlan {
        kernel_base,
        kernel_entry,
        kernel_end,
        initrd,
        fdt,
    })
}

/// Checks a kernel command line for the device tree's `bootargs`: no NUL
/// (it ends the string there) and within the kernel's buffer.
pub fn check_cmdline(cmdline: &str) -> Result<(), String> {
    if cmdline.contains('\0') {
        return Err("contains a NUL byte".into());
    }
    if cmdline.len() >= CMDLINE_MAX {
        return Err(format!(
            "is {} bytes long; the arm64 kernel takes at most {}",
            cmdline.len(),
            CMDLINE_MAX - 1
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header_bytes(text_offset: u64, image_size: u64, magic: u32) -> Vec<u8> {
        let mut h = vec![0u8; IMAGE_HEADER_SIZE];
        h[0..4].copy_from_slice(b"MZ@\xfa");
        h[TEXT_OFFSET_OFFSET..TEXT_OFFSET_OFFSET + 8].copy_from_slice(&text_offset.to_le_bytes());
        h[IMAGE_SIZE_OFFSET..IMAGE_SIZE_OFFSET + 8].copy_from_slice(&image_size.to_le_bytes());
        h[MAGIC_OFFSET..MAGIC_OFFSET + 4].copy_from_slice(&magic.to_le_bytes());
        h
    }

    #[test]
    fn a_modern_header_gives_its_offset_and_size() {
        let h = ImageHeader::parse(&header_bytes(0, 40 << 20, IMAGE_MAGIC)).unwrap();
        assert_eq!(
            h,
            ImageHeader {
                text_offset: 0,
                image_size: 40 << 20
            }
        );
    }

    #[test]
    fn a_header_without_image_size_gets_the_legacy_offset() {
        let h = ImageHeader::parse(&header_bytes(0x1234, 0, IMAGE_MAGIC)).unwrap();
        assert_eq!(h.text_offset, LEGACY_TEXT_OFFSET);
    }

    #[test]
    fn files_that_are_not_images_are_refused() {
        assert_eq!(
            ImageHeader::parse(&header_bytes(0, 1 << 20, 0x0088_b1f8)),
            Err(DirectBootError::NotAnImage)
        );
        // gzip's magic at the start, as a compressed vmlinuz has.
        let mut gz = vec![0u8; IMAGE_HEADER_SIZE];
        gz[0..2].copy_from_slice(&[0x1f, 0x8b]);
        assert_eq!(ImageHeader::parse(&gz), Err(DirectBootError::NotAnImage));
        assert_eq!(
            ImageHeader::parse(&[0u8; 10]),
            Err(DirectBootError::ShortHeader(10))
        );
        assert_eq!(
            ImageHeader::parse(&header_bytes(3 << 20, 1 << 20, IMAGE_MAGIC)),
            Err(DirectBootError::BadTextOffset(3 << 20))
        );
    }

    #[test]
    fn the_plan_keeps_kernel_initrd_and_tree_apart_and_aligned() {
        let header = ImageHeader {
            text_offset: 0,
            image_size: 40 << 20,
        };
        let p = plan(512 << 20, header, 33 << 20, Some(2_647_948)).unwrap();
        assert_eq!(p.kernel_base, RAM_BASE);
        assert_eq!(p.kernel_base % BLOCK_2M, 0);
        assert_eq!(p.kernel_entry, RAM_BASE);
        // image_size (BSS included) counts, not just the file.
        assert_eq!(p.kernel_end, RAM_BASE + (40 << 20));
        assert_eq!(p.fdt, RAM_BASE + (510 << 20));
        assert_eq!(p.fdt % BLOCK_2M, 0);
        let (start, len) = p.initrd.unwrap();
        assert_eq!(len, 2_647_948);
        assert_eq!(start % PAGE, 0);
        assert!(start >= p.kernel_end);
        assert!(start + len <= p.fdt);
    }

    #[test]
    fn the_initrd_stays_below_32_gib_with_more_ram() {
        let header = ImageHeader {
            text_offset: 0,
            image_size: 40 << 20,
        };
        let p = plan(64 << 30, header, 33 << 20, Some(100 << 20)).unwrap();
        let (start, len) = p.initrd.unwrap();
        assert!(start + len <= INITRD_LIMIT);
        assert_eq!(p.fdt, RAM_BASE + (64 << 30) - BLOCK_2M);
    }

    #[test]
    fn what_does_not_fit_is_an_error_with_the_sizes() {
        let header = ImageHeader {
            text_offset: 0,
            image_size: 40 << 20,
        };
        let err = plan(128 << 20, header, 33 << 20, Some(100 << 20)).unwrap_err();
        assert_eq!(
            err,
            DirectBootError::DoesNotFit {
                kernel_mib: 40,
                initrd_mib: 100,
                ram_mib: 128
            }
        );
        assert!(err.to_string().contains("128 MiB"), "{err}");
        // The kernel alone too big for RAM.
        assert!(plan(128 << 20, header, 200 << 20, None).is_err());
    }

    #[test]
    fn text_offset_moves_entry_and_end() {
        let header = ImageHeader {
            text_offset: 0x8_0000,
            image_size: 10 << 20,
        };
        let p = plan(256 << 20, header, 4 << 20, None).unwrap();
        assert_eq!(p.kernel_base, RAM_BASE);
        assert_eq!(p.kernel_entry, RAM_BASE + 0x8_0000);
        assert_eq!(p.kernel_end, RAM_BASE + 0x8_0000 + (10 << 20));
    }

    #[test]
    fn the_edges_of_fitting_are_exact() {
        let ram = 128u64 << 20;
        let fdt = RAM_BASE + ram - BLOCK_2M;
        // A kernel that ends right at the device tree's block fits; a byte
        // more does not.
        let kernel = |size| ImageHeader {
            text_offset: 0,
            image_size: size,
        };
        assert_eq!(
            plan(ram, kernel(fdt - RAM_BASE), 4096, None).unwrap().fdt,
            fdt
        );
        assert!(plan(ram, kernel(fdt - RAM_BASE + 1), 4096, None).is_err());
        // An initramfs that fills the gap between kernel and tree exactly fits,
        // one page more does not.
        let k = kernel(64 << 20);
        let gap = fdt - (RAM_BASE + (64 << 20));
        let p = plan(ram, k, 4096, Some(gap)).unwrap();
        assert_eq!(p.initrd, Some((RAM_BASE + (64 << 20), gap)));
        assert!(plan(ram, k, 4096, Some(gap + PAGE)).is_err());
    }

    #[test]
    fn ram_that_is_not_whole_2m_blocks_keeps_the_tree_inside() {
        let header = ImageHeader {
            text_offset: 0,
            image_size: 8 << 20,
        };
        let ram = (200 << 20) + 12345;
        let p = plan(ram, header, 4096, None).unwrap();
        assert_eq!(p.fdt % BLOCK_2M, 0);
        assert!(p.fdt + BLOCK_2M <= RAM_BASE + ram);
        assert!(p.fdt + 2 * BLOCK_2M > RAM_BASE + ram);
    }

    #[test]
    fn sizes_that_overflow_do_not_fit() {
        let header = ImageHeader {
            text_offset: 0,
            image_size: 8 << 20,
        };
        assert!(plan(u64::MAX, header, 4096, None).is_err());
        let huge = ImageHeader {
            text_offset: 0,
            image_size: u64::MAX - 10,
        };
        assert!(plan(256 << 20, huge, 4096, None).is_err());
    }

    #[test]
    fn command_lines_with_nul_or_too_long_are_refused() {
        assert!(check_cmdline("console=ttyAMA0 rdinit=/init").is_ok());
        assert!(check_cmdline("a\0b").is_err());
        assert!(check_cmdline(&"x".repeat(CMDLINE_MAX)).is_err());
        assert!(check_cmdline(&"x".repeat(CMDLINE_MAX - 1)).is_ok());
    }
}
