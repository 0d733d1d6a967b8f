//! FAT disk images for the firmware scenarios, made on the host with
//! dosfstools and mtools (no mounting, no root needed): an EFI system partition
//! holding `startup.nsh`, a second data disk, the boot-loop payload's disk, and
//! a disk whose `\\EFI\\BOOT\\BOOTAA64.EFI` is the test UEFI application.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{cmd, workspace_root, BenchError};

/// Builds the images in `work` and returns `(name in /disks, path)` pairs.
pub fn build(work: &Path) -> Result<Vec<(String, PathBuf)>, BenchError> {
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
    Ok(vec![
        ("efiapp.img".into(), efiapp),
        ("esp.img".into(), esp),
        ("data.img".into(), data),
        ("bootloop.img".into(), bootloop),
    ])
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
