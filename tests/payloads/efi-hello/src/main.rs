//! `\EFI\BOOT\BOOTAA64.EFI` for Hangar's firmware tests: says hello through the
//! UEFI console and asks the firmware to shut the machine down, so the VMM
//! exits with status 0. Table offsets follow the UEFI specification (2.x):
//! the system table's ConOut at 64 and RuntimeServices at 88; OutputString is
//! the second member of the text output protocol; ResetSystem is at 104 in the
//! runtime services table.

#![no_std]
#![no_main]

use core::ffi::c_void;

type OutputString = extern "efiapi" fn(this: *mut c_void, text: *const u16) -> usize;
type ResetSystem =
    extern "efiapi" fn(kind: u32, status: usize, size: usize, data: *const c_void) -> !;

const EFI_RESET_SHUTDOWN: u32 = 2;
const GREETING: &str = "HANGAR-EFI-APP: hello from BOOTAA64.EFI\r\n";

/// Reads the pointer at `base + offset`.
///
/// # Safety
/// `base + offset` must be a readable, aligned pointer slot of a firmware table.
unsafe fn field(base: *const u8, offset: usize) -> *const u8 {
    // SAFETY: the caller guarantees the slot is valid.
    unsafe { *(base.add(offset) as *const *const u8) }
}

#[no_mangle]
pub extern "efiapi" fn efi_main(_image: *mut c_void, system_table: *const u8) -> usize {
    let mut text = [0u16; 64];
    for (slot, byte) in text.iter_mut().zip(GREETING.bytes()) {
        *slot = u16::from(byte);
    }
    // SAFETY: the firmware passes a valid system table; the offsets are the
    // specification's, and the function pointers are the firmware's own.
    unsafe {
        let con_out = field(system_table, 64);
        let output: OutputString = core::mem::transmute(field(con_out, 8));
        output(con_out as *mut c_void, text.as_ptr());
        let runtime = field(system_table, 88);
        let reset: ResetSystem = core::mem::transmute(field(runtime, 104));
        reset(EFI_RESET_SHUTDOWN, 0, 0, core::ptr::null())
    }
}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    loop {}
}
