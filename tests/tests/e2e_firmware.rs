//! End-to-end: stock AAVMF boots in hangar under nested KVM.

use std::time::Duration;

use hangar_tests::bench;

fn ms(verdict: &bench::Verdict, key: &str) -> u64 {
    verdict
        .value(key)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in the verdict\n{}", verdict.explain()))
}

/// Boots `scenario` to the shell and powers off; `gic` is the interrupt
/// controller hangar must have made ("3", or "2" on a GICv2-only host).
fn shell_and_power_off(scenario: &str, cpus: &str, gic: &str) -> bench::Verdict {
    let verdict = bench::expect_pass(scenario, Duration::from_secs(480));
    assert_eq!(verdict.value("cpus"), Some(cpus));
    assert_eq!(verdict.value("gic"), Some(gic), "{}", verdict.explain());
    assert_eq!(
        verdict.value("exit_status"),
        Some("0"),
        "{}",
        verdict.explain()
    );
    let (total, countdown) = (ms(&verdict, "to_shell_ms"), ms(&verdict, "countdown_ms"));
    assert!(countdown < total);
    eprintln!(
        "{scenario}: UEFI shell after {:.1}s ({:.1}s firmware + {:.1}s firmware countdown)",
        total as f64 / 1000.0,
        (total - countdown) as f64 / 1000.0,
        countdown as f64 / 1000.0
    );
    // The firmware writes to its read-only code bank: logged, ignored, VM runs on.
    assert!(
        ms(&verdict, "readonly_writes_logged") >= 1,
        "{}",
        verdict.explain()
    );
    verdict
}

#[test]
fn aavmf_reaches_uefi_shell_with_one_vcpu_and_reset_s_exits_zero() {
    shell_and_power_off("uefi-shell", "1", "3");
}

#[test]
fn aavmf_reaches_uefi_shell_with_two_vcpus() {
    shell_and_power_off("uefi-shell-2cpu", "2", "3");
}

/// The nested machine has a GICv2, so its KVM cannot emulate a GICv3: hangar
/// falls back to a GICv2, with its device-tree nodes and the timer's CPU mask.
/// Asked for 9 vCPUs there, it stops with a one-line error naming the limit.
#[test]
fn aavmf_reaches_uefi_shell_with_two_vcpus_on_a_gicv2_host() {
    let verdict = shell_and_power_off("uefi-shell-gicv2", "2", "2");
    assert_eq!(
        verdict.value("too_many_vcpus_status"),
        Some("1"),
        "{}",
        verdict.explain()
    );
}

#[test]
fn nv_variable_survives_reset_in_place_and_process_restart() {
    let verdict = bench::expect_pass("uefi-vars", Duration::from_secs(720));
    assert_eq!(verdict.value("restart_status"), Some("0"));
}

#[test]
fn aavmf_runs_startup_nsh_from_a_virtio_scsi_disk_and_powers_off() {
    let verdict = bench::expect_pass("uefi-disk", Duration::from_secs(480));
    assert_eq!(verdict.value("exit_status"), Some("0"));
    assert_eq!(verdict.value("second_disk_visible"), Some("yes"));
    assert!(ms(&verdict, "filesystems") >= 1, "{}", verdict.explain());
}

#[test]
fn bootloop_counts_resets_and_reports_a_hang_with_trace() {
    let verdict = bench::expect_pass("bootloop", Duration::from_secs(900));
    assert_eq!(
        verdict.value("boots_completed"),
        Some("3"),
        "{}",
        verdict.explain()
    );
    assert_eq!(
        verdict.value("hang_exit"),
        Some("2"),
        "{}",
        verdict.explain()
    );
}

#[test]
fn aavmf_boots_bootaa64_efi_from_a_virtio_scsi_disk() {
    let verdict = bench::expect_pass("uefi-efi-app", Duration::from_secs(480));
    assert_eq!(
        verdict.value("exit_status"),
        Some("0"),
        "{}",
        verdict.explain()
    );
}
