//! `hangar run --kernel Image [--initrd FILE] [--cmdline ARGS]`: a Linux kernel
//! booted without firmware, checked before any VM exists (the files readable,
//! the kernel an arm64 `Image`, plain or packed (`unpack`), everything
//! fitting in the guest's RAM), so a mistake is a one-line error naming the
//! file. Host-independent and unit-tested everywhere; the machine loads the
//! files at every boot.

mod unpack;

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::arch::aarch64::direct_boot::{self, BootPlan, DirectBootError, ImageHeader};
pub use unpack::{KernelBytes, KernelFormat, UnpackError};

/// The command line when `--cmdline` is not given: the console on the PL011.
pub const DEFAULT_CMDLINE: &str = "console=ttyAMA0";

/// What the command line asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectKernel {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
}

/// A direct kernel boot that passed every check.
#[derive(Debug)]
pub struct CheckedKernel {
    pub spec: DirectKernel,
    /// What the check opened (and unpacked), kept for the first boot.
    first: Mutex<Option<OpenedKernel>>,
}

impl CheckedKernel {
    /// The files for a boot: for the first, those the check opened; for every
    /// later one (a reboot in place), opened and checked again, so a rebuilt
    /// kernel is picked up.
    pub fn open_for_boot(&self, ram_size: u64) -> Result<OpenedKernel, KernelError> {
        let first = self
            .first
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        match first {
            Some(opened) => Ok(opened),
            None => self.spec.open(ram_size),
        }
    }
}

/// The files of a checked direct boot, open: the machine loads from these
/// handles (or what was unpacked from them), so it loads the files it checked
/// (a path replaced meanwhile does not matter; a file rewritten in place is
/// caught by its length).
#[derive(Debug)]
pub struct OpenedKernel {
    pub plan: BootPlan,
    pub kernel: KernelBytes,
    /// How the kernel file was packed.
    pub format: KernelFormat,
    /// The `Image`'s length when it was checked (unpacked).
    pub kernel_len: u64,
    /// The initramfs and its length when it was checked.
    pub initrd: Option<(File, u64)>,
}

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("--kernel {path}")]
    OpenKernel {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("--kernel {path}")]
    Unpack {
        path: PathBuf,
        #[source]
        source: UnpackError,
    },
    #[error("--kernel {path}")]
    BadImage {
        path: PathBuf,
        #[source]
        source: DirectBootError,
    },
    #[error(
        "--kernel {0}: not an arm64 Linux Image (no \"ARM\\x64\" magic at offset 0x38), \
         nor one packed with gzip or zstd or as an EFI zboot image"
    )]
    NotAKernel(PathBuf),
    #[error("--kernel {path}: the Image unpacked from {format}")]
    BadUnpackedImage {
        path: PathBuf,
        format: KernelFormat,
        #[source]
        source: DirectBootError,
    },
    #[error("--initrd {path}")]
    OpenInitrd {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("--initrd {0}: the file is empty")]
    EmptyInitrd(PathBuf),
    #[error("--cmdline: {0}")]
    Cmdline(String),
    #[error("--memory: with --kernel {kernel}")]
    DoesNotFit {
        kernel: PathBuf,
        #[source]
        source: DirectBootError,
    },
}

impl DirectKernel {
    /// Checks the files and the command line and places everything in
    /// `ram_size` bytes of RAM.
    pub fn check(&self, ram_size: u64) -> Result<CheckedKernel, KernelError> {
        let opened = self.open(ram_size)?;
        Ok(CheckedKernel {
            spec: self.clone(),
            first: Mutex::new(Some(opened)),
        })
    }

    /// [`DirectKernel::check`], keeping the files open for loading.
    pub fn open(&self, ram_size: u64) -> Result<OpenedKernel, KernelError> {
        direct_boot::check_cmdline(&self.cmdline).map_err(KernelError::Cmdline)?;
        let open_kernel = |source| KernelError::OpenKernel {
            path: self.kernel.clone(),
            source,
        };
        let file = File::open(&self.kernel).map_err(open_kernel)?;
        let file_len = regular_file_len(&file).map_err(open_kernel)?;
        let unpacked =
            unpack::unpack(file, file_len, ram_size).map_err(|source| KernelError::Unpack {
                path: self.kernel.clone(),
                source,
            })?;
        let (format, kernel_len, mut kernel) = (unpacked.format, unpacked.len, unpacked.bytes);
        let header = read_header(&mut kernel).map_err(open_kernel)?;
        let header = ImageHeader::parse(&header).map_err(|source| match format {
            KernelFormat::Image if source == DirectBootError::NotAnImage => {
                KernelError::NotAKernel(self.kernel.clone())
            }
            KernelFormat::Image => KernelError::BadImage {
                path: self.kernel.clone(),
                source,
            },
            _ => KernelError::BadUnpackedImage {
                path: self.kernel.clone(),
                format,
                source,
            },
        })?;
        let initrd = match &self.initrd {
            None => None,
            Some(path) => Some(open_initrd(path)?),
        };
        let plan = direct_boot::plan(
            ram_size,
            header,
            kernel_len,
            initrd.as_ref().map(|(_, len)| *len),
        )
        .map_err(|source| KernelError::DoesNotFit {
            kernel: self.kernel.clone(),
            source,
        })?;
        Ok(OpenedKernel {
            plan,
            kernel,
            format,
            kernel_len,
            initrd,
        })
    }
}

/// The first [`direct_boot::IMAGE_HEADER_SIZE`] bytes (fewer if the kernel is
/// shorter), leaving the position at the start for the loader.
fn read_header(kernel: &mut KernelBytes) -> std::io::Result<Vec<u8>> {
    let mut header = Vec::with_capacity(direct_boot::IMAGE_HEADER_SIZE);
    kernel
        .take(direct_boot::IMAGE_HEADER_SIZE as u64)
        .read_to_end(&mut header)?;
    kernel.seek(SeekFrom::Start(0))?;
    Ok(header)
}

fn open_initrd(path: &Path) -> Result<(File, u64), KernelError> {
    let open = |source| KernelError::OpenInitrd {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(open)?;
    match regular_file_len(&file).map_err(open)? {
        0 => Err(KernelError::EmptyInitrd(path.to_path_buf())),
        len => Ok((file, len)),
    }
}

/// The length of a regular file; a directory or device is an error.
fn regular_file_len(file: &File) -> std::io::Result<u64> {
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    Ok(meta.len())
}

#[cfg(test)]
mod tests {
    use super::unpack::tests::gzip;
    use super::*;
    use crate::cli::format_error_chain;

    /// A file with an arm64 Image header (text_offset 0, image_size
    /// `image_size`), `len` bytes long.
    fn fake_image(path: &Path, image_size: u64, len: usize) {
        let mut bytes = vec![0u8; len.max(64)];
        bytes[0x10..0x18].copy_from_slice(&image_size.to_le_bytes());
        bytes[0x38..0x3c].copy_from_slice(b"ARMd");
        std::fs::write(path, bytes).unwrap();
    }

    fn spec(dir: &Path) -> DirectKernel {
        DirectKernel {
            kernel: dir.join("Image"),
            initrd: Some(dir.join("initrd")),
            cmdline: DEFAULT_CMDLINE.into(),
        }
    }

    #[test]
    fn a_good_kernel_and_initrd_are_placed() {
        let dir = tempfile::tempdir().unwrap();
        fake_image(&dir.path().join("Image"), 8 << 20, 1 << 20);
        std::fs::write(dir.path().join("initrd"), vec![1u8; 5000]).unwrap();
        let plan = spec(dir.path()).open(256 << 20).unwrap().plan;
        let (start, len) = plan.initrd.unwrap();
        assert_eq!(len, 5000);
        assert!(start >= plan.kernel_end);
        assert!(start + len <= plan.fdt);
    }

    #[test]
    fn each_bad_input_names_its_option_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let message = |s: &DirectKernel, ram| format_error_chain(&s.check(ram).unwrap_err());

        let missing = message(&spec(dir.path()), 256 << 20);
        assert!(
            missing.starts_with("--kernel ") && missing.contains("Image"),
            "{missing}"
        );

        let kernel_named = |m: &str| {
            m.starts_with(&format!(
                "--kernel {}: ",
                dir.path().join("Image").display()
            ))
        };
        let initrd_named =
            |m: &str| m.starts_with(&format!("--initrd {}", dir.path().join("initrd").display()));

        std::fs::write(dir.path().join("Image"), vec![b'M', b'Z', 8, 0, 0, 0]).unwrap();
        let short = message(&spec(dir.path()), 256 << 20);
        assert!(kernel_named(&short) && short.contains("shorter"), "{short}");

        std::fs::write(dir.path().join("Image"), vec![0x1f, 0x8b, 8, 0, 0, 0]).unwrap();
        let cut = message(&spec(dir.path()), 256 << 20);
        assert!(
            kernel_named(&cut) && cut.contains(": unpacking its gzip data: "),
            "{cut}"
        );

        std::fs::write(dir.path().join("Image"), gzip(&[0x1f; 4096])).unwrap();
        let packed_junk = message(&spec(dir.path()), 256 << 20);
        assert!(
            kernel_named(&packed_junk)
                && packed_junk.ends_with(
                    "the Image unpacked from gzip: not an arm64 Linux Image \
                     (no \"ARM\\x64\" magic at offset 0x38)"
                ),
            "{packed_junk}"
        );

        let mut old_kernel = vec![0u8; 3 << 20]; // image_size 0: capped by RAM only
        old_kernel[0x38..0x3c].copy_from_slice(b"ARMd");
        std::fs::write(dir.path().join("Image"), gzip(&old_kernel)).unwrap();
        let bomb = message(&spec(dir.path()), 2 << 20);
        assert!(
            kernel_named(&bomb) && bomb.contains("more than the guest's 2 MiB of RAM"),
            "{bomb}"
        );

        std::fs::write(dir.path().join("Image"), vec![0x1f; 4096]).unwrap();
        let junk = message(&spec(dir.path()), 256 << 20);
        assert!(
            kernel_named(&junk)
                && junk.contains("not an arm64 Linux Image")
                && junk.ends_with("nor one packed with gzip or zstd or as an EFI zboot image"),
            "{junk}"
        );

        fake_image(&dir.path().join("Image"), 8 << 20, 4096);
        let no_initrd = message(&spec(dir.path()), 256 << 20);
        assert!(initrd_named(&no_initrd), "{no_initrd}");

        std::fs::write(dir.path().join("initrd"), b"").unwrap();
        let empty = message(&spec(dir.path()), 256 << 20);
        assert!(initrd_named(&empty) && empty.contains("empty"), "{empty}");

        std::fs::write(dir.path().join("initrd"), vec![1u8; 4096]).unwrap();
        fake_image(&dir.path().join("Image"), 300 << 20, 4096);
        let too_big = message(&spec(dir.path()), 256 << 20);
        assert!(
            too_big.starts_with("--memory: with --kernel ")
                && too_big.contains("Image")
                && too_big.contains("256 MiB"),
            "{too_big}"
        );

        let mut bad_cmdline = spec(dir.path());
        bad_cmdline.cmdline = "a\0b".into();
        assert!(message(&bad_cmdline, 256 << 20).starts_with("--cmdline: "));

        let mut directory = spec(dir.path());
        directory.kernel = dir.path().to_path_buf();
        let not_a_file = message(&directory, 256 << 20);
        assert!(
            not_a_file.starts_with("--kernel ") && not_a_file.contains("not a regular file"),
            "{not_a_file}"
        );
    }

    #[test]
    fn a_gzip_kernel_is_placed_by_its_unpacked_header() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("Image");
        fake_image(&image, 8 << 20, 1 << 20);
        let plain = std::fs::read(&image).unwrap();
        let plain_plan = spec(dir.path());
        std::fs::write(dir.path().join("initrd"), vec![1u8; 5000]).unwrap();
        let expected = plain_plan.open(256 << 20).unwrap().plan;
        std::fs::write(&image, gzip(&plain)).unwrap();
        let mut opened = spec(dir.path()).open(256 << 20).unwrap();
        assert_eq!(opened.format, KernelFormat::Gzip);
        assert_eq!(opened.kernel_len, plain.len() as u64);
        assert_eq!(opened.plan, expected);
        let KernelBytes::Memory(unpacked) = &mut opened.kernel else {
            panic!("a gzip kernel is loaded from memory");
        };
        // The loader reads from the start.
        assert_eq!(unpacked.position(), 0);
        assert_eq!(unpacked.get_ref(), &plain);
    }

    #[test]
    fn the_first_boot_loads_what_the_check_opened_and_later_ones_open_again() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("Image");
        fake_image(&image, 8 << 20, 1 << 20);
        std::fs::write(dir.path().join("initrd"), vec![1u8; 5000]).unwrap();
        let checked = spec(dir.path()).check(256 << 20).unwrap();
        // Replaced after the check: the first boot still has the checked file;
        // a reboot finds the new one.
        let plain = std::fs::read(&image).unwrap();
        let new = dir.path().join("Image.new");
        std::fs::write(&new, gzip(&plain)).unwrap();
        std::fs::rename(&new, &image).unwrap();
        let first = checked.open_for_boot(256 << 20).unwrap();
        assert_eq!(first.format, KernelFormat::Image);
        let again = checked.open_for_boot(256 << 20).unwrap();
        assert_eq!(again.format, KernelFormat::Gzip);
        assert_eq!(again.kernel_len, plain.len() as u64);
    }

    #[test]
    fn no_initrd_is_fine() {
        let dir = tempfile::tempdir().unwrap();
        fake_image(&dir.path().join("Image"), 8 << 20, 4096);
        let mut s = spec(dir.path());
        s.initrd = None;
        assert_eq!(s.open(128 << 20).unwrap().plan.initrd, None);
    }
}
