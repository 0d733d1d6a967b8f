//! The KVM smoke test: the smallest real guest. One vCPU runs five instructions
//! that store a 32-bit value to an MMIO address; the exit proves the whole chain
//! (`/dev/kvm`, VM, guest memory, vCPU init with the preferred target, KVM_RUN).

use kvm_bindings::kvm_vcpu_init;
use kvm_ioctls::{Kvm, VcpuExit};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use super::regs;

/// Where the guest program lives (the base of RAM in the `virt` memory map).
pub const RAM_BASE: u64 = 0x4000_0000;
const RAM_SIZE: usize = 0x10_0000;

/// What the guest stores, and where (the PL011's base in the `virt` map).
pub const SMOKE_ADDR: u64 = 0x0900_0000;
pub const SMOKE_VALUE: u32 = 0xcafe_f00d;

/// The observed MMIO exit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MmioStore {
    pub addr: u64,
    pub data: Vec<u8>,
}

/// Errors of the smoke test, each naming the step that failed.
#[derive(Debug, thiserror::Error)]
pub enum SmokeError {
    #[error("opening /dev/kvm")]
    OpenKvm(#[source] kvm_ioctls::Error),
    #[error("creating the VM")]
    CreateVm(#[source] kvm_ioctls::Error),
    #[error("allocating guest memory")]
    Memory(#[source] vm_memory::mmap::FromRangesError),
    #[error("writing the guest program")]
    WriteProgram(#[source] vm_memory::GuestMemoryError),
    #[error("registering guest memory with KVM")]
    MemorySlot(#[source] kvm_ioctls::Error),
    #[error("creating vCPU 0")]
    CreateVcpu(#[source] kvm_ioctls::Error),
    #[error("KVM_ARM_PREFERRED_TARGET")]
    PreferredTarget(#[source] kvm_ioctls::Error),
    #[error("KVM_ARM_VCPU_INIT")]
    VcpuInit(#[source] kvm_ioctls::Error),
    #[error("setting register {0:#x}")]
    SetReg(u64, #[source] kvm_ioctls::Error),
    #[error("KVM_RUN")]
    Run(#[source] kvm_ioctls::Error),
    #[error("unexpected vCPU exit: {0}")]
    UnexpectedExit(String),
}

/// `movz w0,#0xf00d; movk w0,#0xcafe,lsl #16; movz x1,#0x0900,lsl #16; str w0,[x1]; b .`
const PROGRAM: [u32; 5] = [
    0x529e_01a0,
    0x72b9_5fc0,
    0xd2a1_2001,
    0xb900_0020,
    0x1400_0000,
];

/// Runs the smoke guest and returns its first MMIO store.
pub fn run() -> Result<MmioStore, SmokeError> {
    let kvm = Kvm::new().map_err(SmokeError::OpenKvm)?;
    let vm = kvm.create_vm().map_err(SmokeError::CreateVm)?;

    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(RAM_BASE), RAM_SIZE)])
        .map_err(SmokeError::Memory)?;
    let code: Vec<u8> = PROGRAM.iter().flat_map(|i| i.to_le_bytes()).collect();
    mem.write_slice(&code, GuestAddress(RAM_BASE))
        .map_err(SmokeError::WriteProgram)?;
    for (slot, region) in mem.iter().enumerate() {
        let slot_desc = kvm_bindings::kvm_userspace_memory_region {
            slot: slot as u32,
            flags: 0,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: region.as_ptr() as u64,
        };
        // SAFETY: the region is a live mmap owned by `mem`, which outlives `vm`
        // (both are dropped at the end of this function, `vm` first).
        unsafe { vm.set_user_memory_region(slot_desc) }.map_err(SmokeError::MemorySlot)?;
    }

    let mut vcpu = vm.create_vcpu(0).map_err(SmokeError::CreateVcpu)?;
    let mut init = kvm_vcpu_init::default();
    vm.get_preferred_target(&mut init)
        .map_err(SmokeError::PreferredTarget)?;
    vcpu.vcpu_init(&init).map_err(SmokeError::VcpuInit)?;
    vcpu.set_one_reg(regs::PC, &RAM_BASE.to_le_bytes())
        .map_err(|e| SmokeError::SetReg(regs::PC, e))?;

    let exit = vcpu.run().map_err(SmokeError::Run)?;
    let store = match exit {
        VcpuExit::MmioWrite(addr, data) => MmioStore {
            addr,
            data: data.to_vec(),
        },
        other => return Err(SmokeError::UnexpectedExit(format!("{other:?}"))),
    };
    drop(vcpu);
    drop(vm);
    drop(mem);
    Ok(store)
}
