//! The vCPU thread: a state machine around `KVM_RUN`.
//!
//! States: `Running` (in or around KVM_RUN, handling exits) and `Finished`
//! (the thread returns). A vCPU leaves `Running` when the guest asks for a power
//! event (PSCI SYSTEM_OFF / SYSTEM_RESET arrive as KVM system events), when an
//! exit cannot be handled, or when the machine asks it to stop.
//!
//! # Kicking a vCPU out of KVM_RUN
//!
//! Flag, fence, signal: [`VcpuHandle::kick`] sets the machine's stop flag and
//! sends [`kick_signal`] to the thread. The handler sets `kvm_run.immediate_exit`
//! through a thread-local pointer, so a signal that lands just *before* the
//! thread enters KVM_RUN still makes KVM_RUN return `EINTR` at once; the thread
//! then sees the flag and finishes. The handler is async-signal-safe: it only
//! reads a thread-local `Cell` (with `try_with`, so it cannot panic during thread
//! teardown) and performs one volatile store.

use std::cell::Cell;
use std::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::thread::JoinHandle;

use kvm_bindings::{kvm_run, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN};
use kvm_ioctls::{VcpuExit, VcpuFd};
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use crate::bus::MmioBus;

/// Why the machine (not just one vCPU) must stop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmEvent {
    PowerOff,
    Reset,
    /// The console's quit sequence.
    Quit,
    /// SIGTERM or SIGINT arrived.
    Terminate(i32),
    /// The boot-loop watchdog fired: no reset within the boot timeout.
    Hang,
    /// A vCPU hit an error or an exit it cannot handle.
    Fatal {
        vcpu: u64,
        message: String,
    },
}

thread_local! {
    /// This thread's `kvm_run`, for the kick signal handler. Null when no vCPU runs here.
    static KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

/// The real-time signal used to kick vCPU threads.
pub fn kick_signal() -> i32 {
    SIGRTMIN()
}

extern "C" fn handle_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let _ = KVM_RUN.try_with(|run| {
        let run = run.get();
        if !run.is_null() {
            // SAFETY: `run` points at this thread's mmapped kvm_run, set by
            // `VcpuThread::run` before the first KVM_RUN and cleared before the
            // VcpuFd (and so the mapping) is dropped, on this same thread.
            let flag = unsafe { std::ptr::addr_of_mut!((*run).immediate_exit) };
            // SAFETY: `flag` points into that live mapping (see above); a
            // volatile byte store is what KVM_RUN reads on entry.
            unsafe { flag.write_volatile(1) };
        }
    });
    // Pairs with nothing in memory: it keeps the store before KVM_RUN re-reads it.
    fence(Ordering::SeqCst);
}

/// Installs the kick handler once per process.
pub fn install_kick_handler() -> Result<(), vmm_sys_util::errno::Error> {
    register_signal_handler(kick_signal(), handle_kick)
}

/// What a vCPU thread is doing, for the hang report. Relaxed atomics: these
/// order nothing, they are read only to describe the threads.
#[derive(Debug, Default)]
pub struct VcpuStatus {
    in_kvm_run: AtomicBool,
    exits: AtomicU64,
    last_mmio: AtomicU64,
}

impl VcpuStatus {
    /// One line: where the thread is and how many exits it handled.
    pub fn describe(&self) -> String {
        format!(
            "{}, {} exits, last MMIO access at {:#x}",
            if self.in_kvm_run.load(Ordering::Relaxed) {
                "in KVM_RUN"
            } else {
                "in the VMM (handling an exit)"
            },
            self.exits.load(Ordering::Relaxed),
            self.last_mmio.load(Ordering::Relaxed)
        )
    }
}

/// A running vCPU thread.
pub struct VcpuHandle {
    pub index: u64,
    pub status: Arc<VcpuStatus>,
    thread: JoinHandle<()>,
}

impl VcpuHandle {
    /// Spawns the thread that runs `vcpu` until the machine stops.
    pub fn spawn(
        index: u64,
        vcpu: VcpuFd,
        bus: Arc<MmioBus>,
        stop: Arc<AtomicBool>,
        events: Sender<VmEvent>,
    ) -> std::io::Result<VcpuHandle> {
        let status = Arc::new(VcpuStatus::default());
        let thread_status = Arc::clone(&status);
        let thread = std::thread::Builder::new()
            .name(format!("vcpu{index}"))
            .spawn(move || {
                let mut t = VcpuThread {
                    index,
                    vcpu,
                    bus,
                    stop,
                    events,
                    status: thread_status,
                };
                t.run();
            })?;
        Ok(VcpuHandle {
            index,
            status,
            thread,
        })
    }

    /// Makes the thread leave KVM_RUN soon; the caller has set the stop flag.
    pub fn kick(&self) {
        if let Err(e) = self.thread.kill(kick_signal()) {
            log::debug!("kicking vcpu{}: {e} (already finished?)", self.index);
        }
    }

    pub fn join(self) {
        if self.thread.join().is_err() {
            log::error!("vcpu{} thread panicked", self.index);
        }
    }
}

struct VcpuThread {
    index: u64,
    vcpu: VcpuFd,
    bus: Arc<MmioBus>,
    stop: Arc<AtomicBool>,
    events: Sender<VmEvent>,
    status: Arc<VcpuStatus>,
}

/// What one exit means for the run loop.
enum Next {
    Continue,
    Finish(Option<VmEvent>),
}

impl VcpuThread {
    fn run(&mut self) {
        KVM_RUN.with(|p| p.set(self.vcpu.get_kvm_run() as *mut kvm_run));
        loop {
            // Pairs with the SeqCst store in `Machine::stop_vcpus` before the kick.
            if self.stop.load(Ordering::SeqCst) {
                break;
            }
            match self.step() {
                Next::Continue => {}
                Next::Finish(event) => {
                    if let Some(event) = event {
                        let _ = self.events.send(event);
                    }
                    break;
                }
            }
        }
        KVM_RUN.with(|p| p.set(std::ptr::null_mut()));
    }

    fn step(&mut self) -> Next {
        self.status.in_kvm_run.store(true, Ordering::Relaxed);
        let exit = self.vcpu.run();
        self.status.in_kvm_run.store(false, Ordering::Relaxed);
        self.status.exits.fetch_add(1, Ordering::Relaxed);
        match exit {
            Ok(VcpuExit::MmioRead(addr, data)) => {
                self.status.last_mmio.store(addr, Ordering::Relaxed);
                self.bus.read(addr, data);
                Next::Continue
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                self.status.last_mmio.store(addr, Ordering::Relaxed);
                self.bus.write(addr, data);
                Next::Continue
            }
            Ok(VcpuExit::SystemEvent(kind, _)) => match kind {
                KVM_SYSTEM_EVENT_SHUTDOWN => Next::Finish(Some(VmEvent::PowerOff)),
                KVM_SYSTEM_EVENT_RESET => Next::Finish(Some(VmEvent::Reset)),
                other => Next::Finish(Some(self.fatal(format!("system event {other}")))),
            },
            Ok(VcpuExit::Hlt) => Next::Continue,
            Ok(other) => {
                let message = format!("unexpected exit {other:?}");
                Next::Finish(Some(self.fatal(message)))
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                self.vcpu.set_kvm_immediate_exit(0);
                Next::Continue
            }
            Err(e) => Next::Finish(Some(self.fatal(format!("KVM_RUN failed: {e}")))),
        }
    }

    fn fatal(&self, message: String) -> VmEvent {
        VmEvent::Fatal {
            vcpu: self.index,
            message,
        }
    }
}
