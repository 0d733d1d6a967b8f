//! Packing the nested machine's initramfs (zstd-compressed newc cpio): busybox,
//! the `/init` that runs one scenario, the scenarios, `hangar`, the AAVMF
//! firmware with QEMU's descriptors (so `--firmware auto` finds it), and the
//! scenarios' disk images (the inner Linux guest's kernel and initramfs live
//! on one of them, see `disk_images`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::cpio::CpioWriter;
use super::disk_images;
use super::guest_kit::GuestKit;
use super::{progress, workspace_root, BenchError};

/// Firmware files copied in, at the same paths as on the host.
const FIRMWARE_FILES: &[&str] = &[
    "/usr/share/AAVMF/AAVMF_CODE.fd",
    "/usr/share/AAVMF/AAVMF_VARS.fd",
    "/usr/share/qemu/firmware/60-edk2-aarch64.json",
];

/// Builds `<work>/initramfs.zst` and returns its path.
pub fn build(kit: &GuestKit, hangar: &Path, work: &Path) -> Result<PathBuf, BenchError> {
    std::fs::create_dir_all(work).map_err(BenchError::io(work))?;
    let out_path = work.join("initramfs.zst");
    progress(format!("packing {}", out_path.display()));

    super::prereq::require_program("zstd", "zstd")?;
    let out_file = std::fs::File::create(&out_path).map_err(BenchError::io(&out_path))?;
    let mut zstd = Command::new("zstd")
        .args(["-q", "-3", "-T0", "-c"])
        .stdin(Stdio::piped())
        .stdout(out_file)
        .spawn()
        .map_err(|source| BenchError::Spawn {
            command: "zstd".into(),
            source,
        })?;
    let stdin = zstd.stdin.take().expect("piped stdin");
    let mut cpio = CpioWriter::new(std::io::BufWriter::with_capacity(1 << 20, stdin));
    let io = |e| BenchError::io(&out_path)(e);

    for dir in [
        "bin",
        "sbin",
        "dev",
        "proc",
        "sys",
        "tmp",
        "run",
        "var",
        "etc",
        "usr",
        "usr/bin",
        "usr/sbin",
        "usr/share",
        "usr/share/AAVMF",
        "usr/share/qemu",
        "usr/share/qemu/firmware",
        "scenarios",
    ] {
        cpio.dir(dir).map_err(io)?;
    }
    add_file(&mut cpio, "bin/busybox", 0o755, &kit.busybox)?;
    cpio.symlink("bin/sh", "busybox").map_err(io)?;
    add_file(&mut cpio, "bin/hangar", 0o755, hangar)?;

    let scenarios = workspace_root().join("tests/scenarios");
    add_file(&mut cpio, "init", 0o755, &scenarios.join("init.sh"))?;
    for entry in std::fs::read_dir(&scenarios).map_err(BenchError::io(&scenarios))? {
        let path = entry.map_err(BenchError::io(&scenarios))?.path();
        if let Some(name) = path.file_name().and_then(|n| n.to_str()) {
            if name.ends_with(".sh") {
                add_file(&mut cpio, &format!("scenarios/{name}"), 0o755, &path)?;
            }
        }
    }

    for file in FIRMWARE_FILES {
        let path = Path::new(file);
        if !path.exists() {
            return Err(BenchError::MissingPrerequisite {
                what: file.to_string(),
                how: "apt-get install -t bookworm-backports qemu-efi-aarch64".into(),
            });
        }
        add_file(&mut cpio, file.trim_start_matches('/'), 0o644, path)?;
    }

    cpio.dir("disks").map_err(io)?;
    for (name, image) in disk_images::build(work, kit)? {
        add_file(&mut cpio, &format!("disks/{name}"), 0o644, &image)?;
    }

    let writer = cpio.finish().map_err(io)?;
    let mut stdin = writer.into_inner().map_err(|e| io(e.into_error()))?;
    stdin.flush().map_err(io)?;
    drop(stdin);
    let status = zstd.wait().map_err(io)?;
    if !status.success() {
        return Err(BenchError::Command {
            command: "zstd".into(),
            detail: status.to_string(),
        });
    }
    Ok(out_path)
}

fn add_file<W: Write>(
    cpio: &mut CpioWriter<W>,
    name: &str,
    mode: u32,
    src: &Path,
) -> Result<(), BenchError> {
    let data = std::fs::read(src).map_err(BenchError::io(src))?;
    cpio.file(name, mode, &data).map_err(BenchError::io(src))
}
