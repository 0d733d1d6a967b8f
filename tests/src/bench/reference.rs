//! The reference point for boot times: the same AAVMF booted by the host's QEMU
//! (TCG, QEMU's `virt` machine), timed to the UEFI shell prompt in the same run
//! as Hangar's nested boot.

use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::{lock::BenchLock, progress, work_dir, BenchError};

const CODE: &str = "/usr/share/AAVMF/AAVMF_CODE.fd";
const VARS_TEMPLATE: &str = "/usr/share/AAVMF/AAVMF_VARS.fd";

/// Times from emulator start to the boot countdown and to the shell prompt.
#[derive(Debug, Clone, Copy)]
pub struct FirmwareBootTimes {
    pub to_countdown: Duration,
    pub to_shell: Duration,
}

/// Boots AAVMF under host QEMU (TCG) with a fresh variable store.
pub fn qemu_tcg_to_shell(timeout: Duration) -> Result<FirmwareBootTimes, BenchError> {
    let _lock = BenchLock::acquire("boot")?;
    let work = work_dir();
    std::fs::create_dir_all(&work).map_err(BenchError::io(&work))?;
    let vars = work.join("reference-VARS.fd");
    std::fs::copy(VARS_TEMPLATE, &vars).map_err(BenchError::io(&vars))?;
    progress("booting AAVMF under host QEMU (TCG) for reference");
    let mut child = Command::new("qemu-system-aarch64")
        .args([
            "-M",
            "virt",
            "-cpu",
            "max,pauth-impdef=on",
            "-m",
            "512M",
            "-smp",
            "1",
        ])
        .args([
            "-display", "none", "-nic", "none", "-serial", "stdio", "-monitor", "none",
        ])
        .arg("-drive")
        .arg(format!("if=pflash,format=raw,readonly=on,file={CODE}"))
        .arg("-drive")
        .arg(format!("if=pflash,format=raw,file={}", vars.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|source| BenchError::Spawn {
            command: "qemu-system-aarch64".into(),
            source,
        })?;
    let started = Instant::now();
    let mut stdout = child.stdout.take().expect("piped");
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let mut to_countdown = None;
    let result = loop {
        let left = timeout.saturating_sub(started.elapsed());
        match rx.recv_timeout(left) {
            Ok(chunk) => {
                seen.extend_from_slice(&chunk);
                let text = String::from_utf8_lossy(&seen);
                if to_countdown.is_none() && text.contains("startup.nsh") {
                    to_countdown = Some(started.elapsed());
                }
                if text.contains("Shell>") {
                    let to_shell = started.elapsed();
                    break Ok(FirmwareBootTimes {
                        to_countdown: to_countdown.unwrap_or(to_shell),
                        to_shell,
                    });
                }
            }
            Err(_) => {
                break Err(BenchError::Invalid(format!(
                    "host QEMU did not reach the UEFI shell in {}s",
                    timeout.as_secs()
                )))
            }
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    result
}
