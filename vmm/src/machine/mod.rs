//! The machine: builds a QEMU-`virt`-shaped aarch64 VM around the devices,
//! runs its vCPU threads, and handles power events.
//!
//! Lifetimes: devices, the iothread and the variable store live as long as the
//! `Machine`; the KVM VM, its guest memory, the GIC and the vCPU threads live for
//! one boot. A PSCI SYSTEM_RESET ends a boot and starts the next one in the same
//! process (devices reset, flash back in read-array mode, device tree copied
//! again; a direct kernel boot loads kernel and initramfs again); SYSTEM_OFF,
//! the console's quit sequence, SIGTERM or SIGINT end the machine after
//! in-flight writes completed and the variable store (if any) is flushed.

mod console;
mod flash;
mod scsi;
mod vm_slot;

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use block::{BlockBackend, BlockOptions};
use devices::console::Console;
use devices::pflash::{BankAccess, Pflash};
use devices::pl011::Pl011;
use devices::pl031::Pl031;
use event_loop::{AioContext, IoThread};
use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{Cap, Kvm};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::arch::aarch64::direct_boot::BootPlan;
use crate::arch::aarch64::{fdt, gic::Gic, layout, vcpu as arch_vcpu};
use crate::bus::MmioBus;
use crate::config::{BootSource, ResolvedFirmware, RunConfig};
use crate::direct_kernel::{CheckedKernel, KernelBytes, KernelError};
use crate::vcpu::{install_kick_handler, VcpuHandle, VmEvent};
use flash::BlockFlashStorage;
use vm_slot::{FlashSlot, KvmIrqLine, VmSlot};

const SLOT_RAM: u32 = 0;
const SLOT_FLASH0: u32 = 1;
const SLOT_FLASH1: u32 = 2;

/// How the machine ended without an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// The guest powered off (PSCI SYSTEM_OFF).
    PowerOff,
    /// The console's quit sequence.
    Quit,
    /// SIGTERM or SIGINT.
    Signal(i32),
    /// The boot loop completed its boots.
    BootLoopDone,
    /// The boot loop's watchdog fired; the report went to stderr.
    Hang,
}

/// The boot-loop reproducer's policy: count resets as completed boots, stop
/// after `boots`, and call a boot that does not reset within `boot_timeout` a hang.
#[derive(Debug, Clone, Copy)]
pub struct BootLoop {
    pub boots: u32,
    pub boot_timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum MachineError {
    #[error("opening /dev/kvm")]
    OpenKvm(#[source] kvm_ioctls::Error),
    #[error("creating the KVM VM")]
    CreateVm(#[source] kvm_ioctls::Error),
    #[error("allocating {0} MiB of guest memory")]
    Memory(u64, #[source] vm_memory::mmap::FromRangesError),
    #[error("registering memory slot {0}")]
    MemorySlot(u32, #[source] kvm_ioctls::Error),
    #[error("creating vCPU {0}")]
    CreateVcpu(u64, #[source] kvm_ioctls::Error),
    #[error("--cpus {asked}: this host's KVM runs at most {max} vCPUs in a VM")]
    TooManyVcpus { asked: u64, max: u64 },
    #[error("initialising vCPU {0}")]
    InitVcpu(u64, #[source] arch_vcpu::VcpuInitError),
    #[error("starting vCPU thread {0}")]
    SpawnVcpu(u64, #[source] std::io::Error),
    #[error("creating the interrupt controller")]
    Gic(#[from] crate::arch::aarch64::gic::GicError),
    #[error(transparent)]
    Fdt(#[from] fdt::FdtError),
    #[error("writing the device tree to guest memory")]
    WriteFdt(#[source] vm_memory::GuestMemoryError),
    #[error("reading /dev/urandom for the kernel's seeds")]
    Seeds(#[source] std::io::Error),
    #[error("starting the iothread")]
    IoThread(#[source] event_loop::Error),
    #[error("reading firmware")]
    Firmware(#[from] firmware::FirmwareError),
    #[error("opening variable store {path}")]
    OpenVars {
        path: std::path::PathBuf,
        #[source]
        source: block::BlockError,
    },
    #[error("creating flash bank {0}")]
    Flash(&'static str, #[source] devices::pflash::PflashError),
    #[error("opening the serial console")]
    Console(#[from] devices::console::ConsoleError),
    #[error("installing signal handlers")]
    Signals(#[source] vmm_sys_util::errno::Error),
    #[error("vCPU {vcpu}: {message}")]
    VcpuFailed { vcpu: u64, message: String },
    #[error("MMIO layout")]
    Bus(#[from] crate::bus::OverlapError),
    #[error(transparent)]
    Scsi(#[from] scsi::ScsiError),
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error("--kernel {path}: loading it")]
    LoadKernel {
        path: std::path::PathBuf,
        #[source]
        source: linux_loader::loader::Error,
    },
    #[error("--kernel {0}: the file changed while it was being loaded")]
    KernelChanged(std::path::PathBuf),
    #[error("--initrd {path}: loading it")]
    LoadInitrd {
        path: std::path::PathBuf,
        #[source]
        source: vm_memory::GuestMemoryError,
    },
}

/// The first SIGTERM/SIGINT received (0 = none).
static TERMINATE: AtomicI32 = AtomicI32::new(0);

extern "C" fn handle_terminate(sig: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // Async-signal-safe: one atomic store, read by the machine's wait loop.
    let _ = TERMINATE.compare_exchange(0, sig, Ordering::SeqCst, Ordering::SeqCst);
}

/// A firmware boot's two CFI flash banks and the variable store behind bank 1.
struct FlashBanks {
    flash0: Arc<Mutex<Pflash>>,
    flash0_slot: Arc<FlashSlot>,
    flash1: Arc<Mutex<Pflash>>,
    flash1_slot: Arc<FlashSlot>,
    vars: Arc<BlockBackend>,
}

impl FlashBanks {
    /// Bank 0 holds the firmware's code (read-only), bank 1 the variable
    /// store, whose writes reach the --vars file through the block layer on
    /// `ctx`.
    fn new(
        fw: &ResolvedFirmware,
        ctx: &Arc<AioContext>,
        vm: &VmSlot,
    ) -> Result<FlashBanks, MachineError> {
        let code = fw.code.read()?;
        let mut flash0 = Pflash::new("flash0", &code, BankAccess::ReadOnly)
            .map_err(|e| MachineError::Flash("0 (code)", e))?;
        let vars = Arc::new(
            BlockBackend::open(&fw.vars.path, &BlockOptions::default(), Arc::clone(ctx)).map_err(
                |source| MachineError::OpenVars {
                    path: fw.vars.path.clone(),
                    source,
                },
            )?,
        );
        let mut image = vec![0u8; fw.vars.size as usize];
        vars.pread(0, &mut image)
            .map_err(|source| MachineError::OpenVars {
                path: fw.vars.path.clone(),
                source,
            })?;
        let storage = BlockFlashStorage {
            backend: Arc::clone(&vars),
        };
        let mut flash1 = Pflash::new("flash1", &image, BankAccess::Writable(Box::new(storage)))
            .map_err(|e| MachineError::Flash("1 (vars)", e))?;

        let flash0_slot = Arc::new(FlashSlot {
            vm: vm.clone(),
            slot: SLOT_FLASH0,
            guest_addr: layout::FLASH0_BASE,
            region: flash0.region(),
        });
        let flash1_slot = Arc::new(FlashSlot {
            vm: vm.clone(),
            slot: SLOT_FLASH1,
            guest_addr: layout::FLASH1_BASE,
            region: flash1.region(),
        });
        flash0.set_romd_control(flash0_slot.clone());
        flash1.set_romd_control(flash1_slot.clone());

        Ok(FlashBanks {
            flash0: Arc::new(Mutex::new(flash0)),
            flash0_slot,
            flash1: Arc::new(Mutex::new(flash1)),
            flash1_slot,
            vars,
        })
    }
}

pub struct Machine {
    cfg: RunConfig,
    kvm: Kvm,
    iothread: Option<IoThread>,
    vm: VmSlot,
    /// None for a direct kernel boot, which has no firmware.
    flash: Option<FlashBanks>,
    /// The kernel loaded at every boot (a direct kernel boot).
    kernel: Option<CheckedKernel>,
    uart: Arc<Mutex<Pl011>>,
    rtc: Arc<Mutex<Pl031>>,
    scsi: Option<scsi::ScsiController>,
    /// Guest RAM lives as long as the machine: devices doing DMA keep a handle,
    /// and a reboot in place keeps its contents (as real hardware would).
    mem: GuestMemoryMmap,
    events_tx: Sender<VmEvent>,
    events_rx: Receiver<VmEvent>,
    /// Keeps the terminal in raw mode while the machine lives.
    _console: Console,
    pub boots: u32,
    /// How long each boot took, in order.
    pub boot_times: Vec<Duration>,
    boot_loop: Option<BootLoop>,
}

impl Machine {
    /// Builds devices and the iothread; no VM exists yet.
    pub fn new(cfg: RunConfig, boot: BootSource) -> Result<Machine, MachineError> {
        let kvm = Kvm::new().map_err(MachineError::OpenKvm)?;
        let ctx = AioContext::new().map_err(MachineError::IoThread)?;
        ctx.set_poll_max(Duration::from_micros(cfg.iothread_poll_max_us.into()));
        let iothread =
            IoThread::spawn("iothread", Arc::clone(&ctx)).map_err(MachineError::IoThread)?;
        let vm = VmSlot::default();

        let (flash, kernel) = match boot {
            BootSource::Firmware(fw) => (Some(FlashBanks::new(&fw, &ctx, &vm)?), None),
            BootSource::Kernel(kernel) => (None, Some(kernel)),
        };

        let mut console = Console::open(&cfg.serial)?;
        let output = console
            .take_output()
            .unwrap_or_else(|| Box::new(std::io::sink()));
        let uart_irq = Arc::new(KvmIrqLine {
            vm: vm.clone(),
            spi: layout::UART_SPI,
        });
        let uart = Arc::new(Mutex::new(Pl011::new(output, uart_irq)));
        let (events_tx, events_rx) = mpsc::channel();
        if let Some(input) = console.take_input() {
            console::attach_input(&ctx, input, Arc::clone(&uart), events_tx.clone())
                .map_err(MachineError::IoThread)?;
        }

        let mem = GuestMemoryMmap::<()>::from_ranges(&[(
            GuestAddress(layout::RAM_BASE),
            cfg.memory as usize,
        )])
        .map_err(|e| MachineError::Memory(cfg.memory >> 20, e))?;
        let scsi = scsi::ScsiController::create(&cfg.disks, &ctx, &mem, cfg.cpus)?;

        install_kick_handler().map_err(MachineError::Signals)?;
        for sig in [libc::SIGTERM, libc::SIGINT] {
            vmm_sys_util::signal::register_signal_handler(sig, handle_terminate)
                .map_err(MachineError::Signals)?;
        }

        Ok(Machine {
            cfg,
            kvm,
            iothread: Some(iothread),
            vm,
            flash,
            kernel,
            uart,
            rtc: Arc::new(Mutex::new(Pl031::new())),
            scsi,
            mem,
            events_tx,
            events_rx,
            _console: console,
            boots: 0,
            boot_times: Vec::new(),
            boot_loop: None,
        })
    }

    /// Turns `run` into the boot-loop reproducer.
    pub fn set_boot_loop(&mut self, policy: BootLoop) {
        self.boot_loop = Some(policy);
    }

    /// Boots until the guest powers off, the user quits, or a signal arrives.
    pub fn run(&mut self) -> Result<Exit, MachineError> {
        let result = loop {
            self.boots += 1;
            let started = Instant::now();
            log::info!("boot {} starting", self.boots);
            let event = match self.boot_once() {
                Ok(event) => event,
                Err(e) => break Err(e),
            };
            let took = started.elapsed();
            self.boot_times.push(took);
            log::info!(
                "boot {} ended after {:.1}s: {event:?}",
                self.boots,
                took.as_secs_f64()
            );
            match event {
                VmEvent::Reset => {
                    if let Some(policy) = self.boot_loop {
                        eprintln!(
                            "hangar bootloop: boot {}/{} reset after {:.1}s",
                            self.boots,
                            policy.boots,
                            took.as_secs_f64()
                        );
                        if self.boots >= policy.boots {
                            break Ok(Exit::BootLoopDone);
                        }
                    }
                    self.flush_vars();
                    self.reset_devices();
                }
                VmEvent::Hang => break Ok(Exit::Hang),
                VmEvent::PowerOff => break Ok(Exit::PowerOff),
                VmEvent::Quit => break Ok(Exit::Quit),
                VmEvent::Terminate(sig) => break Ok(Exit::Signal(sig)),
                VmEvent::Fatal { vcpu, message } => {
                    break Err(MachineError::VcpuFailed { vcpu, message })
                }
            }
        };
        self.flush_vars();
        result
    }

    /// In-flight writes complete, then fdatasync: the store is durable.
    fn flush_vars(&self) {
        let Some(flash) = &self.flash else { return };
        flash.vars.drain();
        if let Err(e) = flash.vars.flush() {
            log::error!(
                "flushing variable store {}: {e}",
                flash.vars.path().display()
            );
        }
    }

    fn reset_devices(&self) {
        if let Some(flash) = &self.flash {
            lock(&flash.flash0).reset();
            lock(&flash.flash1).reset();
        }
        lock(&self.uart).reset();
        if let Some(scsi) = &self.scsi {
            scsi.reset();
        }
    }

    fn boot_once(&mut self) -> Result<VmEvent, MachineError> {
        let cpus = u64::from(self.cfg.cpus);
        let vm = Arc::new(self.kvm.create_vm().map_err(MachineError::CreateVm)?);
        // The limit is the VM's (on arm64 it follows the host's GIC: 8 with a
        // GICv2); asked up front, it is a clear error instead of EINVAL from
        // the first vCPU too many.
        let max = u64::try_from(vm.check_extension_int(Cap::MaxVcpus)).unwrap_or(0);
        if max > 0 && cpus > max {
            return Err(MachineError::TooManyVcpus { asked: cpus, max });
        }
        let mem = self.mem.clone();
        for region in mem.iter() {
            let desc = kvm_userspace_memory_region {
                slot: SLOT_RAM,
                flags: 0,
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: region.as_ptr() as u64,
            };
            // SAFETY: the machine owns the guest memory for its whole life and
            // every VM (with its vCPUs) is dropped at the end of this function.
            unsafe { vm.set_user_memory_region(desc) }
                .map_err(|e| MachineError::MemorySlot(SLOT_RAM, e))?;
        }
        self.vm.set(Some(Arc::clone(&vm)));
        let result = self.run_vm(&vm, &mem, cpus);
        self.vm.set(None);
        drop(vm);
        drop(mem);
        result
    }

    fn run_vm(
        &mut self,
        vm: &Arc<kvm_ioctls::VmFd>,
        mem: &GuestMemoryMmap,
        cpus: u64,
    ) -> Result<VmEvent, MachineError> {
        if let Some(flash) = &self.flash {
            let romd0 = lock(&flash.flash0).romd();
            let romd1 = lock(&flash.flash1).romd();
            flash
                .flash0_slot
                .map(romd0)
                .map_err(|e| MachineError::MemorySlot(SLOT_FLASH0, e))?;
            flash
                .flash1_slot
                .map(romd1)
                .map_err(|e| MachineError::MemorySlot(SLOT_FLASH1, e))?;
        }
        // The firmware starts at the base of flash and finds the device tree
        // at the base of RAM; a kernel is given the tree's address in x0.
        let plan = match &self.kernel {
            Some(kernel) => Some(load_kernel(kernel, mem, self.cfg.memory)?),
            None => None,
        };
        let entry = match &plan {
            Some(plan) => arch_vcpu::BootEntry {
                pc: plan.kernel_entry,
                x0: plan.fdt,
            },
            None => arch_vcpu::BootEntry {
                pc: layout::FLASH0_BASE,
                x0: layout::RAM_BASE,
            },
        };
        let mut vcpus = Vec::new();
        for index in 0..cpus {
            let vcpu = vm
                .create_vcpu(index)
                .map_err(|e| MachineError::CreateVcpu(index, e))?;
            arch_vcpu::init(vm, &vcpu, index, entry)
                .map_err(|e| MachineError::InitVcpu(index, e))?;
            vcpus.push(vcpu);
        }
        let gic = Gic::create(vm, cpus)?;
        if let Some(scsi) = &self.scsi {
            scsi.attach(vm)?;
        }

        let blob = fdt::build(&fdt::FdtConfig {
            vcpus: self.cfg.cpus,
            ram_size: self.cfg.memory,
            gic: gic.version,
            virtio_mmio: u32::from(self.scsi.is_some()),
            flash: self.flash.is_some(),
            bootargs: self.kernel.as_ref().map(|k| k.spec.cmdline.clone()),
            initrd: plan.and_then(|plan| plan.initrd),
            seeds: self.kernel.as_ref().map(|_| boot_seeds()).transpose()?,
        })?;
        mem.write_slice(&blob, GuestAddress(entry.x0))
            .map_err(MachineError::WriteFdt)?;

        let bus = Arc::new(self.build_bus()?);
        let stop = Arc::new(AtomicBool::new(false));
        let mut handles = Vec::new();
        let mut spawn_error = None;
        for (index, vcpu) in vcpus.into_iter().enumerate() {
            match VcpuHandle::spawn(
                index as u64,
                vcpu,
                Arc::clone(&bus),
                Arc::clone(&stop),
                self.events_tx.clone(),
            ) {
                Ok(h) => handles.push(h),
                Err(e) => {
                    spawn_error = Some(MachineError::SpawnVcpu(index as u64, e));
                    break;
                }
            }
        }
        let event = match spawn_error {
            Some(e) => Err(e),
            None => Ok(self.wait_for_event()),
        };
        if let Ok(VmEvent::Hang) = event {
            self.report_hang(&handles);
        }
        // Flag, then kick: see crate::vcpu.
        stop.store(true, Ordering::SeqCst);
        for h in &handles {
            h.kick();
        }
        for h in handles {
            h.join();
        }
        while self.events_rx.try_recv().is_ok() {}
        drop(gic);
        event
    }

    fn wait_for_event(&self) -> VmEvent {
        let deadline = self.boot_loop.map(|p| Instant::now() + p.boot_timeout);
        loop {
            match self.events_rx.recv_timeout(Duration::from_millis(50)) {
                Ok(event) => return event,
                Err(RecvTimeoutError::Timeout) => {
                    let sig = TERMINATE.load(Ordering::SeqCst);
                    if sig != 0 {
                        return VmEvent::Terminate(sig);
                    }
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        return VmEvent::Hang;
                    }
                }
                Err(RecvTimeoutError::Disconnected) => unreachable!("machine holds a sender"),
            }
        }
    }

    /// What a person needs to diagnose a hang: each vCPU's state and the
    /// iothread context's trace ring (notify sent/skipped, BH schedule/dispatch,
    /// poll enter/exit), printed before the vCPUs are stopped.
    fn report_hang(&self, vcpus: &[VcpuHandle]) {
        let timeout = self.boot_loop.map(|p| p.boot_timeout).unwrap_or_default();
        eprintln!(
            "hangar bootloop: HANG: boot {} did not reset within {}s",
            self.boots,
            timeout.as_secs()
        );
        for vcpu in vcpus {
            eprintln!("  vcpu{}: {}", vcpu.index, vcpu.status.describe());
        }
        if let Some(flash) = &self.flash {
            eprintln!(
                "  variable store: {} request(s) in flight",
                flash.vars.in_flight()
            );
        }
        if let Some(iothread) = &self.iothread {
            eprintln!("--- iothread context trace (newest last) ---");
            eprintln!("{}", iothread.context().trace_dump());
        }
    }

    fn build_bus(&self) -> Result<MmioBus, MachineError> {
        let mut bus = MmioBus::new();
        if let Some(flash) = &self.flash {
            bus.insert(
                "flash0",
                layout::FLASH0_BASE,
                layout::FLASH_BANK_SIZE,
                flash.flash0.clone(),
            )?;
            bus.insert(
                "flash1",
                layout::FLASH1_BASE,
                layout::FLASH_BANK_SIZE,
                flash.flash1.clone(),
            )?;
        }
        bus.insert(
            "pl011",
            layout::UART_BASE,
            layout::UART_SIZE,
            self.uart.clone(),
        )?;
        bus.insert(
            "pl031",
            layout::RTC_BASE,
            layout::RTC_SIZE,
            self.rtc.clone(),
        )?;
        if let Some(scsi) = &self.scsi {
            bus.insert(
                "virtio-scsi",
                scsi.base(),
                scsi.size(),
                scsi.transport.clone(),
            )?;
        }
        Ok(bus)
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        if let Some(iothread) = self.iothread.take() {
            iothread.stop();
        }
    }
}

/// A direct boot's `/chosen` seeds, fresh from the host kernel's random pool.
fn boot_seeds() -> Result<fdt::BootSeeds, MachineError> {
    use std::io::Read;
    let mut bytes = [0u8; 8 + fdt::RNG_SEED_LEN];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut urandom| urandom.read_exact(&mut bytes))
        .map_err(MachineError::Seeds)?;
    let (kaslr, rng) = bytes.split_at(8);
    Ok(fdt::BootSeeds {
        kaslr: u64::from_le_bytes(kaslr.try_into().expect("8 bytes")),
        rng: rng.try_into().expect("RNG_SEED_LEN bytes"),
    })
}

/// Loads a direct boot's kernel and initramfs into guest RAM and returns where
/// everything went. The first boot loads what the command line's check
/// opened; every later one opens and checks the files again (a rebuilt kernel
/// is picked up at the guest's reboot). Either way it loads from the handles
/// that were checked.
fn load_kernel(
    kernel: &CheckedKernel,
    mem: &GuestMemoryMmap,
    ram_size: u64,
) -> Result<BootPlan, MachineError> {
    use linux_loader::loader::{pe::PE, KernelLoader};

    let mut opened = kernel.open_for_boot(ram_size)?;
    let plan = opened.plan;
    let path = &kernel.spec.kernel;
    let base = Some(GuestAddress(plan.kernel_base));
    let loaded = match &mut opened.kernel {
        KernelBytes::File(file) => PE::load(mem, base, file, None),
        KernelBytes::Memory(unpacked) => PE::load(mem, base, unpacked, None),
    }
    .map_err(|source| MachineError::LoadKernel {
        path: path.clone(),
        source,
    })?;
    // The loader reads the whole file as long as it is by then: a file
    // rewritten in place since the check could overrun its planned room.
    if loaded.kernel_load.0 != plan.kernel_entry
        || loaded.kernel_end != plan.kernel_entry + opened.kernel_len
    {
        return Err(MachineError::KernelChanged(path.clone()));
    }
    if let (Some((start, _)), Some((mut file, len)), Some(initrd)) =
        (plan.initrd, opened.initrd.take(), &kernel.spec.initrd)
    {
        // Exactly the planned length; a file cut short since is an error.
        mem.read_exact_volatile_from(GuestAddress(start), &mut file, len as usize)
            .map_err(|source| MachineError::LoadInitrd {
                path: initrd.clone(),
                source,
            })?;
    }
    log::info!(
        "direct boot: kernel ({}) at {:#x}..{:#x}, initramfs {:x?}, device tree at {:#x}",
        opened.format,
        plan.kernel_entry,
        plan.kernel_end,
        plan.initrd,
        plan.fdt
    );
    Ok(plan)
}

fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
