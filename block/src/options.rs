//! Backend options and the `key=value,...` parser for `--disk` style option lists.
//!
//! Keys understood here: `path`, `format=raw`, `readonly=on|off`,
//! `cache=writeback|none`, `aio=threads|io_uring`, `discard=unmap|ignore`.
//! A comma inside a value is written `,,` (as QEMU does). Callers with keys of their
//! own (devices, vmm) split with [`split_option_list`] and hand the block keys to
//! [`BlockOptions::set`], which names the bad key or value in its error.

use std::path::PathBuf;
use std::str::FromStr;

use crate::BlockError;

/// The image format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ImageFormat {
    /// The file is the disk, byte for byte.
    #[default]
    Raw,
}

/// How the host page cache is used.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CacheMode {
    /// Through the host page cache; durability needs a flush (fdatasync).
    #[default]
    Writeback,
    /// O_DIRECT: bypasses the host page cache. Offsets and lengths must be aligned to
    /// the logical block size; unaligned buffers go through aligned bounce buffers.
    None,
}

/// Which engine performs the I/O.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AioMode {
    /// Blocking syscalls on the context's worker thread pool.
    #[default]
    Threads,
    /// An io_uring ring whose completions arrive through an eventfd on the context.
    IoUring,
}

/// What a discard request does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DiscardMode {
    /// Discards succeed without touching the file.
    #[default]
    Ignore,
    /// Discards punch holes in the file (space is given back; reads return zeroes).
    Unmap,
}

/// Everything that decides how an image is opened and served.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockOptions {
    /// The image format.
    pub format: ImageFormat,
    /// Refuse every modifying request and open the file read-only.
    pub readonly: bool,
    /// Host page cache use.
    pub cache: CacheMode,
    /// The I/O engine.
    pub aio: AioMode,
    /// Discard behaviour.
    pub discard: DiscardMode,
}

/// An image path with its options, as parsed from `path=IMG,key=value,...`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskSpec {
    /// The image file.
    pub path: PathBuf,
    /// How to open and serve it.
    pub options: BlockOptions,
}

fn bad(key: &str, value: &str, expected: &'static str) -> BlockError {
    BlockError::BadOptionValue {
        key: key.to_string(),
        value: value.to_string(),
        expected,
    }
}

/// Parses `on|off|true|false|yes|no` for `key`.
pub fn parse_bool(key: &str, value: &str) -> Result<bool, BlockError> {
    match value {
        "on" | "true" | "yes" => Ok(true),
        "off" | "false" | "no" => Ok(false),
        _ => Err(bad(key, value, "on or off")),
    }
}

impl FromStr for ImageFormat {
    type Err = BlockError;
    fn from_str(s: &str) -> Result<Self, BlockError> {
        match s {
            "raw" => Ok(ImageFormat::Raw),
            _ => Err(bad("format", s, "raw")),
        }
    }
}

impl FromStr for CacheMode {
    type Err = BlockError;
    fn from_str(s: &str) -> Result<Self, BlockError> {
        match s {
            "writeback" => Ok(CacheMode::Writeback),
            "none" => Ok(CacheMode::None),
            _ => Err(bad("cache", s, "writeback or none")),
        }
    }
}

impl FromStr for AioMode {
    type Err = BlockError;
    fn from_str(s: &str) -> Result<Self, BlockError> {
        match s {
            "threads" => Ok(AioMode::Threads),
            "io_uring" => Ok(AioMode::IoUring),
            _ => Err(bad("aio", s, "threads or io_uring")),
        }
    }
}

impl FromStr for DiscardMode {
    type Err = BlockError;
    fn from_str(s: &str) -> Result<Self, BlockError> {
        match s {
            "unmap" | "on" => Ok(DiscardMode::Unmap),
            "ignore" | "off" => Ok(DiscardMode::Ignore),
            _ => Err(bad("discard", s, "unmap or ignore")),
        }
    }
}

impl BlockOptions {
    /// The block-layer keys `set` understands (`path` is handled by [`DiskSpec`]).
    pub const KEYS: [&'static str; 5] = ["format", "readonly", "cache", "aio", "discard"];

    /// Applies one `key=value`. Unknown keys are an error naming the key.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), BlockError> {
        match key {
            "format" => self.format = value.parse()?,
            "readonly" => self.readonly = parse_bool(key, value)?,
            "cache" => self.cache = value.parse()?,
            "aio" => self.aio = value.parse()?,
            "discard" => self.discard = value.parse()?,
            _ => {
                return Err(BlockError::UnknownOption {
                    key: key.to_string(),
                })
            }
        }
        Ok(())
    }
}

/// Splits `a=1,b=x,,y` into `[("a","1"), ("b","x,y")]`. `,,` is a literal comma.
/// An item without `=` is an error naming it.
pub fn split_option_list(list: &str) -> Result<Vec<(String, String)>, BlockError> {
    let mut items = Vec::new();
    let mut current = String::new();
    let mut chars = list.chars().peekable();
    while let Some(c) = chars.next() {
        if c == ',' {
            if chars.peek() == Some(&',') {
                chars.next();
                current.push(',');
                continue;
            }
            items.push(std::mem::take(&mut current));
        } else {
            current.push(c);
        }
    }
    items.push(current);
    items
        .into_iter()
        .filter(|item| !item.is_empty())
        .map(|item| match item.split_once('=') {
            Some((key, value)) => Ok((key.to_string(), value.to_string())),
            None => Err(bad(&item, "", "key=value")),
        })
        .collect()
}

impl FromStr for DiskSpec {
    type Err = BlockError;

    /// Parses `path=IMG,readonly=on,aio=io_uring,cache=none,discard=unmap`.
    fn from_str(list: &str) -> Result<Self, BlockError> {
        let mut path = None;
        let mut options = BlockOptions::default();
        for (key, value) in split_option_list(list)? {
            if key == "path" || key == "file" {
                if value.is_empty() {
                    return Err(bad(&key, &value, "a file path"));
                }
                path = Some(PathBuf::from(value));
            } else {
                options.set(&key, &value)?;
            }
        }
        Ok(DiskSpec {
            path: path.ok_or(BlockError::MissingPath)?,
            options,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_option_list_parses() {
        let spec: DiskSpec =
            "path=/var/tmp/a.img,readonly=on,aio=io_uring,cache=none,discard=unmap"
                .parse()
                .unwrap();
        assert_eq!(spec.path, PathBuf::from("/var/tmp/a.img"));
        assert_eq!(
            spec.options,
            BlockOptions {
                format: ImageFormat::Raw,
                readonly: true,
                cache: CacheMode::None,
                aio: AioMode::IoUring,
                discard: DiscardMode::Unmap,
            }
        );
    }

    #[test]
    fn defaults_are_writeback_threads_ignore() {
        let spec: DiskSpec = "path=x.img".parse().unwrap();
        assert_eq!(spec.options, BlockOptions::default());
        assert_eq!(spec.options.cache, CacheMode::Writeback);
        assert_eq!(spec.options.aio, AioMode::Threads);
        assert!(!spec.options.readonly);
    }

    #[test]
    fn double_comma_is_a_literal_comma() {
        let spec: DiskSpec = "path=a,,b.img,aio=threads".parse().unwrap();
        assert_eq!(spec.path, PathBuf::from("a,b.img"));
    }

    #[test]
    fn bad_value_names_key_and_value() {
        let err = "path=x,cache=unsafe".parse::<DiskSpec>().unwrap_err();
        match &err {
            BlockError::BadOptionValue { key, value, .. } => {
                assert_eq!(key, "cache");
                assert_eq!(value, "unsafe");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(err.to_string().contains("cache") && err.to_string().contains("unsafe"));
    }

    #[test]
    fn unknown_key_is_named() {
        let err = "path=x,bogus=1".parse::<DiskSpec>().unwrap_err();
        assert!(matches!(err, BlockError::UnknownOption { ref key } if key == "bogus"));
    }

    #[test]
    fn missing_path_is_an_error() {
        assert!(matches!(
            "readonly=on".parse::<DiskSpec>(),
            Err(BlockError::MissingPath)
        ));
    }

    #[test]
    fn item_without_equals_is_an_error() {
        let err = "path=x,readonly".parse::<DiskSpec>().unwrap_err();
        assert!(matches!(err, BlockError::BadOptionValue { ref key, .. } if key == "readonly"));
    }

    #[test]
    fn readonly_accepts_boolean_spellings() {
        let mut o = BlockOptions::default();
        o.set("readonly", "yes").unwrap();
        assert!(o.readonly);
        o.set("readonly", "off").unwrap();
        assert!(!o.readonly);
        assert!(o.set("readonly", "maybe").is_err());
    }
}
