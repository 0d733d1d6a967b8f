//! The raw format: the file is the disk. Opening, locking, and what the file can do
//! (size, block sizes, O_DIRECT alignment, hole punching).
//!
//! This file knows nothing about engines; engines get the fd and the geometry.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::os::unix::io::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};

use crate::bounce::BounceBuffer;
use crate::lock::lock_image;
use crate::options::{BlockOptions, CacheMode};
use crate::BlockError;

/// `_IOR(0x12, 114, u64)`: size of a block device in bytes.
const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;
/// `_IO(0x12, 123)`: physical block size of a block device.
const BLKPBSZGET: libc::c_ulong = 0x127b;

/// An open, locked raw image.
#[derive(Debug)]
pub(crate) struct RawFile {
    file: File,
    path: PathBuf,
    size: u64,
    /// Offsets and lengths of requests must be multiples of this (1 without O_DIRECT).
    request_align: u64,
    /// Buffer addresses and segment lengths must be multiples of this (1 without O_DIRECT).
    mem_align: usize,
    logical_block_size: u32,
    physical_block_size: u32,
    discard_supported: bool,
    direct: bool,
    /// The file system keeps the data in memory only (tmpfs, ramfs, hugetlbfs).
    memory_backed: bool,
}

impl RawFile {
    /// Opens and locks `path` as `options` say.
    pub(crate) fn open(path: &Path, options: &BlockOptions) -> Result<RawFile, BlockError> {
        let direct = options.cache == CacheMode::None;
        let mut open = OpenOptions::new();
        open.read(true).write(!options.readonly);
        if direct {
            open.custom_flags(libc::O_DIRECT);
        }
        let file = open.open(path).map_err(|source| BlockError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        lock_image(&file, path, options.readonly)?;
        let query = |source: io::Error| BlockError::Query {
            path: path.to_path_buf(),
            source,
        };
        let meta = file.metadata().map_err(query)?;
        let is_blockdev = meta.file_type().is_block_device();
        if !is_blockdev && !meta.is_file() {
            return Err(BlockError::NotAnImage {
                path: path.to_path_buf(),
            });
        }
        let fd = file.as_raw_fd();
        let (size, physical) = if is_blockdev {
            (
                ioctl_u64(fd, BLKGETSIZE64).map_err(query)?,
                ioctl_int(fd, BLKPBSZGET).map_err(query)? as u32,
            )
        } else {
            use std::os::unix::fs::MetadataExt;
            (meta.len(), (meta.blksize() as u32).clamp(512, 65536))
        };
        let (request_align, mem_align) = if direct {
            let align = if is_blockdev {
                ioctl_int(fd, libc::BLKSSZGET as libc::c_ulong).map_err(query)? as u64
            } else {
                probe_direct_alignment(fd)
            };
            (align, align as usize)
        } else {
            (1, 1)
        };
        let logical = (request_align as u32).max(512);
        let discard_supported = !options.readonly && (is_blockdev || probe_punch_hole(fd, size));
        let memory_backed = !is_blockdev && is_memory_file_system(fd);
        log::debug!(
            "opened {}: {size} bytes, logical {logical}, physical {physical}, direct {direct}, \
             discard {discard_supported}",
            path.display()
        );
        Ok(RawFile {
            file,
            path: path.to_path_buf(),
            size,
            request_align,
            mem_align,
            logical_block_size: logical,
            physical_block_size: physical.max(logical),
            discard_supported,
            direct,
            memory_backed,
        })
    }

    pub(crate) fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
    pub(crate) fn size(&self) -> u64 {
        self.size
    }
    pub(crate) fn request_align(&self) -> u64 {
        self.request_align
    }
    pub(crate) fn mem_align(&self) -> usize {
        self.mem_align
    }
    pub(crate) fn logical_block_size(&self) -> u32 {
        self.logical_block_size
    }
    pub(crate) fn physical_block_size(&self) -> u32 {
        self.physical_block_size
    }
    pub(crate) fn discard_supported(&self) -> bool {
        self.discard_supported
    }
    pub(crate) fn is_direct(&self) -> bool {
        self.direct
    }
    /// Whether reads and writes are memory copies that never wait for a device
    /// (unless the host swaps the file's pages out).
    pub(crate) fn is_memory_backed(&self) -> bool {
        self.memory_backed
    }
}

/// Whether `fd` lives on a file system without backing storage. An error counts
/// as "no": the file is then treated like any other.
fn is_memory_file_system(fd: RawFd) -> bool {
    const TMPFS_MAGIC: u32 = 0x0102_1994;
    const RAMFS_MAGIC: u32 = 0x8584_58f6;
    const HUGETLBFS_MAGIC: u32 = 0x9584_58f6;
    let mut st = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: fstatfs fills the statfs buffer, which outlives the call.
    let ret = unsafe { libc::fstatfs(fd, st.as_mut_ptr()) };
    if ret != 0 {
        return false;
    }
    // SAFETY: fstatfs returned 0, so it initialised the buffer.
    let st = unsafe { st.assume_init() };
    // `f_type`'s integer type differs between libcs and targets; the magic
    // numbers are 32-bit.
    let f_type = st.f_type as u32;
    [TMPFS_MAGIC, RAMFS_MAGIC, HUGETLBFS_MAGIC].contains(&f_type)
}

fn ioctl_u64(fd: RawFd, request: libc::c_ulong) -> io::Result<u64> {
    let mut value: u64 = 0;
    // SAFETY: the ioctl writes one u64 into `value`, which outlives the call.
    let ret = unsafe { libc::ioctl(fd, request as _, &mut value) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(value)
}

fn ioctl_int(fd: RawFd, request: libc::c_ulong) -> io::Result<i32> {
    let mut value: libc::c_int = 0;
    // SAFETY: the ioctl writes one int into `value`, which outlives the call.
    let ret = unsafe { libc::ioctl(fd, request as _, &mut value) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(value)
}

/// The smallest request size an O_DIRECT read accepts (EINVAL means "too small").
fn probe_direct_alignment(fd: RawFd) -> u64 {
    let buf = BounceBuffer::new(4096, 4096);
    for align in [512u64, 1024, 2048, 4096] {
        let v = buf.iovec(align as usize);
        // SAFETY: reads at most `align` bytes into our own aligned buffer.
        let ret = unsafe { libc::pread(fd, v.as_ptr().cast(), v.len(), 0) };
        if ret >= 0 || io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL) {
            return align;
        }
    }
    4096
}

/// Whether the file system can punch holes: punching past the end is a no-op that
/// still reports EOPNOTSUPP where holes are not supported.
fn probe_punch_hole(fd: RawFd, size: u64) -> bool {
    let past_end = size.div_ceil(65536) * 65536 + 65536;
    // SAFETY: fallocate on our fd; KEEP_SIZE past the end changes no data.
    let ret = unsafe {
        libc::fallocate(
            fd,
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            past_end as libc::off_t,
            4096,
        )
    };
    ret == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::options::DiscardMode;

    fn image(len: u64) -> tempfile::NamedTempFile {
        let tmp = tempfile::NamedTempFile::new_in("/var/tmp").unwrap();
        tmp.as_file().set_len(len).unwrap();
        tmp
    }

    #[test]
    fn writeback_geometry_is_byte_granular() {
        let tmp = image(1 << 20);
        let raw = RawFile::open(tmp.path(), &BlockOptions::default()).unwrap();
        assert_eq!(raw.size(), 1 << 20);
        assert_eq!(raw.request_align(), 1);
        assert_eq!(raw.logical_block_size(), 512);
        assert!(raw.physical_block_size() >= 512);
        assert!(raw.discard_supported(), "ext4 /var/tmp punches holes");
    }

    #[test]
    fn tmpfs_is_memory_backed_and_ext4_is_not() {
        let disk = image(4096);
        let raw = RawFile::open(disk.path(), &BlockOptions::default()).unwrap();
        assert!(!raw.is_memory_backed(), "/var/tmp is ext4 here");
        let shm = tempfile::NamedTempFile::new_in("/dev/shm").unwrap();
        shm.as_file().set_len(4096).unwrap();
        let raw = RawFile::open(shm.path(), &BlockOptions::default()).unwrap();
        assert!(raw.is_memory_backed());
    }

    #[test]
    fn direct_probe_finds_a_sector_alignment() {
        let tmp = image(1 << 20);
        let options = BlockOptions {
            cache: CacheMode::None,
            discard: DiscardMode::Unmap,
            ..Default::default()
        };
        let raw = RawFile::open(tmp.path(), &options).unwrap();
        assert!(raw.is_direct());
        assert!([512, 1024, 2048, 4096].contains(&raw.request_align()));
        assert_eq!(raw.mem_align() as u64, raw.request_align());
    }

    #[test]
    fn readonly_has_no_discard() {
        let tmp = image(4096);
        let options = BlockOptions {
            readonly: true,
            ..Default::default()
        };
        let raw = RawFile::open(tmp.path(), &options).unwrap();
        assert!(!raw.discard_supported());
    }

    #[test]
    fn a_directory_is_not_an_image() {
        let dir = tempfile::tempdir().unwrap();
        let options = BlockOptions {
            readonly: true,
            ..Default::default()
        };
        let err = RawFile::open(dir.path(), &options).unwrap_err();
        assert!(matches!(err, BlockError::NotAnImage { .. }), "{err:?}");
    }

    #[test]
    fn a_missing_file_is_an_open_error() {
        let err =
            RawFile::open(Path::new("/nonexistent/x.img"), &BlockOptions::default()).unwrap_err();
        assert!(matches!(err, BlockError::Open { .. }));
    }
}
