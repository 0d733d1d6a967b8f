//! aarch64 vCPU set-up: the preferred target with PSCI 0.2; secondaries start
//! powered off and wait for PSCI CPU_ON; the boot vCPU starts at the entry.

use kvm_bindings::{kvm_vcpu_init, KVM_ARM_VCPU_POWER_OFF, KVM_ARM_VCPU_PSCI_0_2};
use kvm_ioctls::{VcpuFd, VmFd};

use super::regs;

#[derive(Debug, thiserror::Error)]
pub enum VcpuInitError {
    #[error("KVM_ARM_PREFERRED_TARGET")]
    PreferredTarget(#[source] kvm_ioctls::Error),
    #[error("KVM_ARM_VCPU_INIT")]
    Init(#[source] kvm_ioctls::Error),
    #[error("setting register {0:#x}")]
    SetReg(u64, #[source] kvm_ioctls::Error),
}

/// Where the boot vCPU starts and what it finds in x0.
#[derive(Debug, Clone, Copy)]
pub struct BootEntry {
    pub pc: u64,
    /// Device tree address (the Linux boot protocol's x0; firmware ignores it).
    pub x0: u64,
}

/// (Re)initialises a vCPU to its reset state.
pub fn init(vm: &VmFd, vcpu: &VcpuFd, index: u64, entry: BootEntry) -> Result<(), VcpuInitError> {
    let mut kvi = kvm_vcpu_init::default();
    vm.get_preferred_target(&mut kvi)
        .map_err(VcpuInitError::PreferredTarget)?;
    kvi.features[0] |= 1 << KVM_ARM_VCPU_PSCI_0_2;
    if index > 0 {
        kvi.features[0] |= 1 << KVM_ARM_VCPU_POWER_OFF;
    }
    vcpu.vcpu_init(&kvi).map_err(VcpuInitError::Init)?;
    if index == 0 {
        // EL1h with D, A, I, F masked: the state firmware and kernels expect.
        let pstate: u64 = 0x3c5;
        for (reg, value) in [
            (regs::PSTATE, pstate),
            (regs::PC, entry.pc),
            (regs::x(0), entry.x0),
        ] {
            vcpu.set_one_reg(reg, &value.to_le_bytes())
                .map_err(|e| VcpuInitError::SetReg(reg, e))?;
        }
    }
    Ok(())
}
