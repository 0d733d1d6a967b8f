//! FAT disk images for the firmware scenarios, made on the host with
//! dosfstools and mtools (no mounting, no root needed): an EFI system partition
//! holding `startup.nsh`, a second data disk, the boot-loop payload's disk, a
//! disk whose `\\EFI\\BOOT\\BOOTAA64.EFI` is the test UEFI application, and
//! one that boots the inner Linux guest (kernel, initramfs and the
//! `startup.nsh` that starts the kernel's EFI stub); and that kernel and
//! initramfs as plain files, for a direct kernel boot, with the kernel also
//! packed as distributions ship it (gzip, EFI zboot with zstd).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::cpio::CpioWriter;
use super::guest_kit::GuestKit;
use super::{cmd, workspace_root, BenchError};

/// Modules the inner Linux guest loads for its virtio-scsi disks, in
/// dependency order (relative to `lib/modules/<release>/kernel`); Debian
/// builds them all as modules.
pub const INNER_GUEST_MODULES: &[&str] = &[
    "drivers/virtio/virtio_mmio.ko",
    "drivers/scsi/scsi_common.ko",
    "drivers/scsi/scsi_mod.ko",
    "drivers/scsi/virtio_scsi.ko",
    // sd_mod needs t10-pi (protection information), which needs these.
    "crypto/crct10dif_common.ko",
    "lib/crc-t10dif.ko",
    "lib/crc64.ko",
    "lib/crc64-rocksoft.ko",
    "block/t10-pi.ko",
    "drivers/scsi/sd_mod.ko",
    // For the EFI variables the guest writes (linux-efivars-under-io).
    "fs/efivarfs/efivarfs.ko",
];

/// Builds the images in `work` and returns `(name in /disks, path)` pairs.
pub fn build(work: &Path, kit: &GuestKit) -> Result<Vec<(String, PathBuf)>, BenchError> {
    super::prereq::require_program("mkfs.vfat", "dosfstools")?;
    super::prereq::require_program("mcopy", "mtools")?;
    let payloads = workspace_root().join("tests/payloads");
    let esp = fat_image(work, "esp.img", 32, "HANGARESP")?;
    mcopy(&esp, &payloads.join("startup.nsh"), "::/startup.nsh")?;
    let data = fat_image(work, "data.img", 16, "HANGARDATA")?;
    mcopy(&data, &payloads.join("startup.nsh"), "::/README.nsh")?;
    let bootloop = fat_image(work, "bootloop.img", 16, "HANGARLOOP")?;
    let script = work.join("bootloop-startup.nsh");
    std::fs::write(&script, firmware::payload::bootloop_startup_nsh(16))
        .map_err(BenchError::io(&script))?;
    mcopy(&bootloop, &script, "::/startup.nsh")?;
    let efiapp = fat_image(work, "efiapp.img", 16, "HANGAREFI")?;
    let app = super::xbuild::build_efi_hello()?;
    mmd(&efiapp, "::/EFI")?;
    mmd(&efiapp, "::/EFI/BOOT")?;
    mcopy(&efiapp, &app, "::/EFI/BOOT/BOOTAA64.EFI")?;
    let linux = linux_boot_disk(work, kit, &payloads)?;
    let (gzip, zboot) = packed_kernels(work, &kit.kernel)?;
    Ok(vec![
        ("linux.img".into(), linux),
        // The same kernel and initramfs as files, for `--kernel` (linux-direct).
        ("linux-Image".into(), kit.kernel.clone()),
        ("linux-Image.gz".into(), gzip),
        ("linux-zboot.efi".into(), zboot),
        ("linux-initrd.cpio".into(), work.join("linux-initrd.cpio")),
        ("efiapp.img".into(), efiapp),
        ("esp.img".into(), esp),
        ("data.img".into(), data),
        ("bootloop.img".into(), bootloop),
    ])
}

/// The kernel gzip-compressed (a `vmlinuz` as Ubuntu ships it) and wrapped as
/// an EFI zboot image with a zstd payload (as Fedora ships it): the zboot
/// header's fields that a loader reads (Linux's `zboot-header.S`: "MZ",
/// "zimg", the payload's offset and size, the compression's name) in front of
/// the zstd frame. The PE headers and the EFI decompressor that a real one
/// also carries are left out: hangar does not run them.
fn packed_kernels(work: &Path, kernel: &Path) -> Result<(PathBuf, PathBuf), BenchError> {
    use flate2::{write::GzEncoder, Compression};
    const PAYLOAD_AT: u32 = 0x1000;
    let image = std::fs::read(kernel).map_err(BenchError::io(kernel))?;
    let gz_path = work.join("linux-Image.gz");
    let mut enc = GzEncoder::new(Vec::new(), Compression::fast());
    let gz = enc
        .write_all(&image)
        .and_then(|()| enc.finish())
        .map_err(BenchError::io(&gz_path))?;
    std::fs::write(&gz_path, &gz).map_err(BenchError::io(&gz_path))?;
    let zst = ruzstd::encoding::compress_to_vec(
        image.as_slice(),
        ruzstd::encoding::CompressionLevel::Fastest,
    );
    let mut zboot = vec![0u8; PAYLOAD_AT as usize];
    zboot[0..2].copy_from_slice(b"MZ");
    zboot[4..8].copy_from_slice(b"zimg");
    zboot[8..12].copy_from_slice(&PAYLOAD_AT.to_le_bytes());
    zboot[12..16].copy_from_slice(&(zst.len() as u32).to_le_bytes());
    zboot[24..30].copy_from_slice(b"zstd22");
    zboot.extend_from_slice(&zst);
    let zboot_path = work.join("linux-zboot.efi");
    std::fs::write(&zboot_path, zboot).map_err(BenchError::io(&zboot_path))?;
    Ok((gz_path, zboot_path))
}

/// The linux-* scenarios' boot disk: the kernel (an EFI application through
/// its EFI stub) as `\\Image`, the inner guest's initramfs as `\\initrd`, and
/// a `startup.nsh` that starts one with the other.
fn linux_boot_disk(work: &Path, kit: &GuestKit, payloads: &Path) -> Result<PathBuf, BenchError> {
    let initrd = work.join("linux-initrd.cpio");
    inner_initramfs(kit, &payloads.join("linux-init.sh"), &initrd)?;
    let size = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| m.len())
            .map_err(BenchError::io(p))
    };
    // Room for both files and the FAT's own tables.
    let mib = ((size(&kit.kernel)? + size(&initrd)?) >> 20) + 8;
    let image = fat_image(work, "linux.img", mib as u32, "HANGARLINUX")?;
    mcopy(&image, &kit.kernel, "::/Image")?;
    mcopy(&image, &initrd, "::/initrd")?;
    mcopy(
        &image,
        &payloads.join("linux-startup.nsh"),
        "::/startup.nsh",
    )?;
    Ok(image)
}

/// The inner guest's initramfs (newc cpio, uncompressed): busybox, `init`
/// and the modules of [`INNER_GUEST_MODULES`] flat in `/lib/modules`.
fn inner_initramfs(kit: &GuestKit, init: &Path, out: &Path) -> Result<(), BenchError> {
    let file = std::fs::File::create(out).map_err(BenchError::io(out))?;
    let mut cpio = CpioWriter::new(std::io::BufWriter::new(file));
    let io = |e| BenchError::io(out)(e);
    for dir in ["bin", "dev", "proc", "sys", "tmp", "lib", "lib/modules"] {
        cpio.dir(dir).map_err(io)?;
    }
    let read = |p: &Path| std::fs::read(p).map_err(BenchError::io(p));
    cpio.file("bin/busybox", 0o755, &read(&kit.busybox)?)
        .map_err(io)?;
    cpio.file("init", 0o755, &read(init)?).map_err(io)?;
    for module in INNER_GUEST_MODULES {
        let src = kit.modules.join("kernel").join(module);
        let name = Path::new(module)
            .file_name()
            .expect("a module path names a file")
            .to_string_lossy();
        cpio.file(&format!("lib/modules/{name}"), 0o644, &read(&src)?)
            .map_err(io)?;
    }
    let mut writer = cpio.finish().map_err(io)?;
    writer.flush().map_err(io)
}

fn fat_image(work: &Path, name: &str, mib: u32, label: &str) -> Result<PathBuf, BenchError> {
    let path = work.join(name);
    let _ = std::fs::remove_file(&path);
    cmd::output(
        Command::new("mkfs.vfat")
            .args(["-C", "-n", label])
            .arg(&path)
            .arg((mib * 1024).to_string()),
    )?;
    Ok(path)
}

fn mmd(image: &Path, dir: &str) -> Result<(), BenchError> {
    cmd::output(Command::new("mmd").arg("-i").arg(image).arg(dir)).map(|_| ())
}

fn mcopy(image: &Path, file: &Path, dest: &str) -> Result<(), BenchError> {
    cmd::output(
        Command::new("mcopy")
            .arg("-o")
            .arg("-i")
            .arg(image)
            .arg(file)
            .arg(dest),
    )
    .map(|_| ())
}
