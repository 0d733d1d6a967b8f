//! End-to-end: the nested aarch64 machine runs `hangar selftest` under real KVM.

use std::time::Duration;

use hangar_tests::bench;

#[test]
fn selftest_guest_store_reaches_vmm_as_mmio_exit() {
    let verdict = bench::expect_pass("kvm-mmio", Duration::from_secs(300));
    assert_eq!(
        verdict.value("mmio_addr"),
        Some("0x09000000"),
        "{}",
        verdict.explain()
    );
    assert_eq!(
        verdict.value("mmio_value"),
        Some("0xcafef00d"),
        "{}",
        verdict.explain()
    );
    assert_eq!(
        verdict.value("mmio_len"),
        Some("4"),
        "{}",
        verdict.explain()
    );
}
