//! KVM one-reg identifiers for the aarch64 core registers Hangar sets.
//!
//! A core register's id is `KVM_REG_ARM64 | KVM_REG_SIZE_U64 | KVM_REG_ARM_CORE`
//! plus its offset in `struct kvm_regs` counted in 32-bit words
//! (Documentation/virt/kvm/api.rst, "ARM64 registers").

const KVM_REG_ARM64: u64 = 0x6000_0000_0000_0000;
const KVM_REG_SIZE_U64: u64 = 0x0030_0000_0000_0000;
const KVM_REG_ARM_CORE: u64 = 0x0010 << 16;

/// `struct kvm_regs` begins with `user_pt_regs { regs[31], sp, pc, pstate }`.
const fn core_reg(byte_offset: u64) -> u64 {
    KVM_REG_ARM64 | KVM_REG_SIZE_U64 | KVM_REG_ARM_CORE | (byte_offset / 4)
}

/// General-purpose register `x<n>`, n in 0..=30.
pub const fn x(n: u64) -> u64 {
    core_reg(n * 8)
}

/// The program counter.
pub const PC: u64 = core_reg(32 * 8);

/// PSTATE (SPSR-like layout: mode, DAIF mask bits).
pub const PSTATE: u64 = core_reg(33 * 8);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_match_the_kernel_abi() {
        // Values the Linux uapi produces for these registers.
        assert_eq!(x(0), 0x6030_0000_0010_0000);
        assert_eq!(PC, 0x6030_0000_0010_0040);
        assert_eq!(PSTATE, 0x6030_0000_0010_0042);
    }
}
