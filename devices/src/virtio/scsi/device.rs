//! The virtio-scsi controller: config space, queue service on the iothread,
//! command dispatch to the emulated disks, task management, the event queue,
//! and completion of asynchronous disk I/O.
//!
//! Owns: [`VirtioScsi`] and the per-controller state behind its lock.
//!
//! # Threads and locks
//!
//! * The vCPU thread calls the [`VirtioDevice`] methods (config access,
//!   activation, reset) while holding the transport's bus lock.
//! * Queue kicks are fd handlers on the iothread's `AioContext`; disk
//!   completions run there too (or in a nested poll on that context, or on the
//!   pool worker that did the I/O when it found the context lock free). Both take
//!   the controller lock, [`Shared::state`], for their whole (short, non-blocking)
//!   run and never submit disk I/O while holding it.
//! * Lock order: bus lock -> context lock -> controller lock. Handlers run with
//!   the context lock held and take only the controller lock. `reset` takes the
//!   context lock (a nested poll draining in-flight I/O) with the controller lock
//!   *released*.

use std::collections::VecDeque;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use event_loop::{AioContext, BottomHalf};
use log::{debug, trace, warn};
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::mmio::RateLimitedWarn;
use crate::warn_limited;

use super::backend::{BackendError, BackendRequest, HostBuf, HostBufs, IoCompletion, ScsiBackend};
use super::commands::{self, IoPlan, Outcome};
use super::constants::*;
use super::disk::{DiskGeometry, LunState, ScsiDiskConfig};
use super::in_flight::{InFlight, InFlightTable, Slot};
use super::request::{
    self, parse_control_request, parse_lun, ChainBuffers, ControlRequest, GuestRange, RequestError,
    CMD_REQUEST_HEADER_SIZE, CMD_RESPONSE_HEADER_SIZE,
};
use super::sense::Sense;
use crate::virtio::device::{ActivateError, VirtioDevice, VirtioInterrupt, INTERRUPT_USED_RING};

/// Queue indices: control, event, then request queues.
pub const CONTROL_QUEUE: usize = 0;
pub const EVENT_QUEUE: usize = 1;
pub const FIRST_REQUEST_QUEUE: usize = 2;
/// Largest data-out copied for a non-READ/WRITE command (UNMAP parameter lists,
/// WRITE SAME's block): the 16-bit parameter list length bounds it.
const MAX_PARAMETER_DATA: usize = 64 * 1024;
/// Range lists kept for reuse (two per command being parsed or at the disk),
/// and the largest capacity worth keeping.
const MAX_SPARE_RANGE_LISTS: usize = 512;
const MAX_SPARE_RANGE_CAPACITY: usize = 16;
/// Events kept while the driver has no event buffer posted; older ones are
/// dropped and reported with VIRTIO_SCSI_T_EVENTS_MISSED.
const MAX_PENDING_EVENTS: usize = 16;
/// With at least this many requests of a queue at the disk, the device stops
/// asking for kicks (EVENT_IDX avail_event left behind) and instead looks for
/// new requests whenever one completes: one wake-up per batch instead of two.
const POLL_MIN_IN_FLIGHT: usize = 4;
/// A stack buffer for a command's request header that fits the default CDB
/// size (a larger configured size uses the maximum).
const SMALL_CMD_REQUEST_SIZE: usize =
    CMD_REQUEST_HEADER_SIZE + VIRTIO_SCSI_CDB_DEFAULT_SIZE as usize;

static GUEST_ERRORS: RateLimitedWarn = RateLimitedWarn::new();
static IO_ERRORS: RateLimitedWarn = RateLimitedWarn::new();

/// Controller settings (what the VMM chooses; the guest sees them in config space).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VirtioScsiConfig {
    /// Request queues; the VMM passes the vCPU count.
    pub num_request_queues: u16,
    /// Size of every virtqueue (a power of two).
    pub queue_size: u16,
    /// Largest target number the guest may address.
    pub max_target: u16,
    /// Largest LUN the guest may address.
    pub max_lun: u32,
    /// Commands the guest may queue per LUN.
    pub cmd_per_lun: u32,
    /// Largest transfer, in 512-byte sectors.
    pub max_sectors: u32,
}

impl Default for VirtioScsiConfig {
    fn default() -> Self {
        VirtioScsiConfig {
            num_request_queues: 1,
            queue_size: 256,
            max_target: 255,
            max_lun: 16383,
            cmd_per_lun: 128,
            max_sectors: 0xffff,
        }
    }
}

impl VirtioScsiConfig {
    /// The defaults with `max_target` and `max_lun` cut down to the highest
    /// target and LUN `disks` use, so a driver that probes every address up
    /// to the limits ends its scan on the last disk.
    ///
    /// Firmware needs this: EDK2's ScsiBusDxe up to edk2-stable202211 (the
    /// AAVMF/OVMF of Debian 12) walks (target, LUN) in order — LUN first, at
    /// most 8 LUNs and 32 targets — and abandons the whole scan at the first
    /// address where it finds no device. With the 255/16383 defaults, disks
    /// at targets 0 and 1 (LUN 0) stop the scan at 0:1 and target 1 is never
    /// seen. With these limits every disk comes before the first hole as long
    /// as the disks fill targets (and LUNs) from 0 without gaps.
    pub fn fitted_to(disks: &[ScsiDiskConfig]) -> VirtioScsiConfig {
        VirtioScsiConfig {
            max_target: disks.iter().map(|d| u16::from(d.target)).max().unwrap_or(0),
            max_lun: disks.iter().map(|d| u32::from(d.lun)).max().unwrap_or(0),
            ..VirtioScsiConfig::default()
        }
    }
}

/// Why a controller cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum ScsiSetupError {
    #[error("two disks at target {target} LUN {lun}")]
    DuplicateLun { target: u8, lun: u16 },
    #[error("disk at target {target} LUN {lun} is beyond max_target/max_lun")]
    AddressOutOfRange { target: u8, lun: u16 },
    #[error("invalid controller setting: {0}")]
    InvalidConfig(&'static str),
    #[error("cannot create a queue kick eventfd")]
    KickEventFd(#[source] std::io::Error),
}

/// One attached disk.
struct Lun {
    target: u8,
    lun: u16,
    geometry: DiskGeometry,
    state: LunState,
}

/// The disk requests of one command: nearly always one (no list to allocate).
enum Requests {
    One(BackendRequest),
    Many(Vec<BackendRequest>),
}

/// Disk requests to start once the controller lock is dropped.
struct Submission {
    /// Index into [`Shared::backends`] (and `ScsiState::luns`).
    lun_index: usize,
    requests: Requests,
    /// The command's entry in `ScsiState::in_flight`.
    slot: Slot,
    /// Host memory some requests point into (WRITE SAME pattern).
    bounce: Option<Vec<u8>>,
}

/// A task management function waiting for earlier requests to finish.
struct PendingTmf {
    head: u16,
    writable: Vec<GuestRange>,
    /// Answer once no request with a smaller sequence number is in flight.
    wait_below: u64,
    response: u8,
    epoch: u64,
}

/// A command response to write.
struct Reply {
    response: u8,
    status: u8,
    resid: u64,
    sense: Option<Sense>,
    data_written: u64,
}

/// Everything the iothread and the vCPU share, behind one lock.
struct ScsiState {
    /// Shared so a pass over a ring can hold it beside `&mut self` without
    /// cloning the region list (an allocation).
    mem: Arc<GuestMemoryMmap>,
    queues: Vec<Option<Queue>>,
    luns: Vec<Lun>,
    max_target: u16,
    max_lun: u32,
    cdb_size: usize,
    sense_size: usize,
    /// The driver's writes to sense_size and cdb_size, byte by byte; the
    /// sizes follow whenever these are within bounds.
    config_shadow: [u32; 2],
    /// Bumped on reset: completions of an older epoch leave the rings alone.
    epoch: u64,
    next_seq: u64,
    /// Commands at the disk; a completion names its command's slot.
    in_flight: InFlightTable,
    /// Emptied range lists of finished commands, for the next chains' buffers
    /// (saves two allocations per command).
    spare_ranges: Vec<Vec<GuestRange>>,
    pending_tmfs: Vec<PendingTmf>,
    pending_events: VecDeque<[u8; VIRTIO_SCSI_EVENT_SIZE as usize]>,
    events_dropped: bool,
    /// A ring was found broken; nothing is served until reset.
    broken: bool,
    /// Per queue: requests at the disk.
    queue_in_flight: Vec<usize>,
    /// Per queue: of those, the ones that may take long (flush, discard,
    /// write-zeroes): while any is in flight, kicks are never suppressed, so
    /// other requests of the queue do not wait behind it.
    queue_slow_in_flight: Vec<usize>,
    /// Per queue: kicks are suppressed; completions look for new requests.
    polling: Vec<bool>,
    /// Per queue: used entries added since the last interrupt decision.
    needs_notify: Vec<bool>,
    /// Per queue: the bottom half that finishes a batch of completions
    /// (interrupt once, then look for new requests when polling).
    completion_bhs: Vec<Option<BottomHalf>>,
    /// The request queues' list of popped chains, kept between passes.
    spare_chains: Vec<(u16, Result<ChainBuffers, RequestError>)>,
    interrupt: Arc<VirtioInterrupt>,
    /// Counters for benchmarks and diagnostics (plain adds under the lock).
    stats: ScsiStats,
    /// When the in-flight count was last sampled (coarse clock, ns), and its
    /// value then.
    depth_sampled: Option<(u64, u64)>,
}

/// Request-queue counters since the controller was created (see
/// [`VirtioScsi::stats_reader`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScsiStats {
    /// Commands handed to a disk backend.
    pub submitted: u64,
    /// Sum over those submissions of the requests of their queue at the disk
    /// right after each one (divide by `submitted`: mean in-flight depth
    /// seen by a new request).
    pub depth_sum: u64,
    /// Passes over an available ring that found at least one chain.
    pub batches: u64,
    /// Chains popped by those passes.
    pub chains: u64,
    /// Nanoseconds observed, and the integral over them of the commands at
    /// the disk (divide: time-weighted mean in-flight depth). Sampled when a
    /// batch of completions is finished and after each pass over a request
    /// queue, the low and high points of the count, on the coarse clock
    /// (1-4 ms ticks: meaningful over many ticks, not for one batch).
    pub depth_ns: u64,
    pub depth_area: u64,
}

/// Reads a controller's [`ScsiStats`] (also after the controller moved into
/// its transport).
#[derive(Clone)]
pub struct ScsiStatsReader(Weak<Shared>);

impl ScsiStatsReader {
    /// The counters now; `None` once the controller is gone.
    pub fn read(&self) -> Option<ScsiStats> {
        Some(self.0.upgrade()?.lock().stats)
    }
}

/// What handlers and completion callbacks hold.
struct Shared {
    state: Mutex<ScsiState>,
    /// Each LUN's backend, in `ScsiState::luns` order. Fixed at creation, so
    /// submissions use it without the lock and without an `Arc` clone each.
    backends: Vec<Arc<dyn ScsiBackend>>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, ScsiState> {
        // A poisoned lock means a handler panicked; the state is still the best we have.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The virtio-scsi controller.
///
/// ```text
/// let scsi = VirtioScsi::new(config, disks, ctx, mem, irqfd)?;
/// let transport = MmioTransport::new(Box::new(scsi));
/// ```
/// The VMM registers `transport.queue_kick_fds()` as KVM_IOEVENTFDs and the
/// irqfd with KVM_IRQFD, and puts the transport on its MMIO bus.
pub struct VirtioScsi {
    config: VirtioScsiConfig,
    queue_sizes: Vec<u16>,
    kick_fds: Vec<EventFd>,
    registered: Vec<usize>,
    ctx: Arc<AioContext>,
    shared: Arc<Shared>,
    interrupt: Arc<VirtioInterrupt>,
}

impl VirtioScsi {
    /// A controller with `disks`, served on `ctx` (the iothread's context),
    /// accessing `mem`, interrupting through `irqfd`.
    pub fn new(
        config: VirtioScsiConfig,
        disks: Vec<ScsiDiskConfig>,
        ctx: Arc<AioContext>,
        mem: GuestMemoryMmap,
        irqfd: EventFd,
    ) -> Result<VirtioScsi, ScsiSetupError> {
        if config.num_request_queues == 0 {
            return Err(ScsiSetupError::InvalidConfig("num_request_queues is 0"));
        }
        if !config.queue_size.is_power_of_two() || config.queue_size < 4 {
            return Err(ScsiSetupError::InvalidConfig(
                "queue_size must be a power of two >= 4",
            ));
        }
        if config.max_lun > 16383 || config.max_target > 255 {
            return Err(ScsiSetupError::InvalidConfig(
                "max_lun <= 16383, max_target <= 255",
            ));
        }
        let max_transfer_sectors = config.max_sectors.max(8);
        let mut luns: Vec<Lun> = Vec::with_capacity(disks.len());
        let mut backends: Vec<Arc<dyn ScsiBackend>> = Vec::with_capacity(disks.len());
        for disk in disks {
            if u16::from(disk.target) > config.max_target || u32::from(disk.lun) > config.max_lun {
                return Err(ScsiSetupError::AddressOutOfRange {
                    target: disk.target,
                    lun: disk.lun,
                });
            }
            if luns
                .iter()
                .any(|l| l.target == disk.target && l.lun == disk.lun)
            {
                return Err(ScsiSetupError::DuplicateLun {
                    target: disk.target,
                    lun: disk.lun,
                });
            }
            let block_size = disk.backend.block_size().max(512);
            let max_transfer_blocks =
                ((u64::from(max_transfer_sectors) * 512) / u64::from(block_size)).max(1) as u32;
            luns.push(Lun {
                target: disk.target,
                lun: disk.lun,
                geometry: DiskGeometry::from_config(&disk, max_transfer_blocks),
                state: LunState::after_reset(),
            });
            backends.push(disk.backend);
        }
        let queue_count = FIRST_REQUEST_QUEUE + usize::from(config.num_request_queues);
        let kick_fds = (0..queue_count)
            .map(|_| EventFd::new(EFD_NONBLOCK).map_err(ScsiSetupError::KickEventFd))
            .collect::<Result<Vec<_>, _>>()?;
        let interrupt = Arc::new(VirtioInterrupt::new(irqfd));
        let state = ScsiState {
            mem: Arc::new(mem),
            queues: Vec::new(),
            luns,
            max_target: config.max_target,
            max_lun: config.max_lun,
            cdb_size: VIRTIO_SCSI_CDB_DEFAULT_SIZE as usize,
            sense_size: VIRTIO_SCSI_SENSE_DEFAULT_SIZE as usize,
            config_shadow: [VIRTIO_SCSI_SENSE_DEFAULT_SIZE, VIRTIO_SCSI_CDB_DEFAULT_SIZE],
            epoch: 0,
            next_seq: 0,
            in_flight: InFlightTable::default(),
            spare_ranges: Vec::new(),
            pending_tmfs: Vec::new(),
            pending_events: VecDeque::new(),
            events_dropped: false,
            broken: false,
            queue_in_flight: vec![0; FIRST_REQUEST_QUEUE + usize::from(config.num_request_queues)],
            queue_slow_in_flight: vec![
                0;
                FIRST_REQUEST_QUEUE + usize::from(config.num_request_queues)
            ],
            polling: vec![false; FIRST_REQUEST_QUEUE + usize::from(config.num_request_queues)],
            needs_notify: vec![false; FIRST_REQUEST_QUEUE + usize::from(config.num_request_queues)],
            completion_bhs: Vec::new(),
            spare_chains: Vec::new(),
            interrupt: Arc::clone(&interrupt),
            stats: ScsiStats::default(),
            depth_sampled: None,
        };
        Ok(VirtioScsi {
            config,
            queue_sizes: vec![config.queue_size; queue_count],
            kick_fds,
            registered: Vec::new(),
            ctx,
            shared: Arc::new(Shared {
                state: Mutex::new(state),
                backends,
            }),
            interrupt,
        })
    }

    /// A reader of this controller's request-queue counters.
    pub fn stats_reader(&self) -> ScsiStatsReader {
        ScsiStatsReader(Arc::downgrade(&self.shared))
    }

    /// The config space as bytes (virtio 1.2 5.6.4), little-endian.
    fn config_bytes(&self) -> [u8; 36] {
        let state = self.shared.lock();
        let mut bytes = [0u8; 36];
        let put32 = |bytes: &mut [u8; 36], offset: usize, value: u32| {
            bytes[offset..offset + 4].copy_from_slice(&value.to_le_bytes())
        };
        put32(&mut bytes, 0, u32::from(self.config.num_request_queues));
        put32(&mut bytes, 4, u32::from(self.config.queue_size) - 2);
        put32(&mut bytes, 8, self.config.max_sectors);
        put32(&mut bytes, 12, self.config.cmd_per_lun);
        put32(&mut bytes, 16, VIRTIO_SCSI_EVENT_SIZE);
        put32(&mut bytes, 20, state.sense_size as u32);
        put32(&mut bytes, 24, state.cdb_size as u32);
        // max_channel (u16 at 28) is 0.
        bytes[30..32].copy_from_slice(&self.config.max_target.to_le_bytes());
        put32(&mut bytes, 32, self.config.max_lun);
        bytes
    }

    /// A handle that queues events for the driver from any thread (for
    /// hot-unplug and tests); it stays valid after the device moved into its
    /// transport.
    pub fn event_sender(&self) -> Result<ScsiEventSender, ScsiSetupError> {
        Ok(ScsiEventSender {
            shared: Arc::clone(&self.shared),
            kick: self.kick_fds[EVENT_QUEUE]
                .try_clone()
                .map_err(ScsiSetupError::KickEventFd)?,
        })
    }

    fn unregister_kicks(&mut self) {
        for index in self.registered.drain(..) {
            self.ctx.remove_fd_handler(self.kick_fds[index].as_raw_fd());
        }
    }
}

impl VirtioDevice for VirtioScsi {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_SCSI
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn device_features(&self) -> u64 {
        // No INOUT, HOTPLUG, CHANGE or T10_PI.
        0
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let bytes = self.config_bytes();
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = usize::try_from(offset)
                .ok()
                .and_then(|o| o.checked_add(i))
                .and_then(|o| bytes.get(o))
                .copied()
                .unwrap_or(0);
        }
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // Only sense_size (20) and cdb_size (24) are driver-writable. Any width
        // is accepted: EDK2's virtio-mmio library writes config space a byte
        // at a time. Bytes land in a shadow of the field; the field takes the
        // shadow's value whenever it is within bounds.
        let mut state = self.shared.lock();
        for (i, &byte) in data.iter().enumerate() {
            let Some(at) = offset.checked_add(i as u64) else {
                break;
            };
            let (field, shift) = match at {
                20..=23 => (0, (at - 20) * 8),
                24..=27 => (1, (at - 24) * 8),
                _ => {
                    warn_limited!(
                        GUEST_ERRORS,
                        "virtio-scsi: config write at {at:#x} (read-only) ignored"
                    );
                    continue;
                }
            };
            let shadow = &mut state.config_shadow[field];
            *shadow = (*shadow & !(0xff << shift)) | (u32::from(byte) << shift);
        }
        let [sense, cdb] = state.config_shadow;
        if sense <= VIRTIO_SCSI_SENSE_MAX_SIZE {
            state.sense_size = sense as usize;
        }
        if cdb <= VIRTIO_SCSI_CDB_MAX_SIZE {
            state.cdb_size = cdb as usize;
        }
        if sense > VIRTIO_SCSI_SENSE_MAX_SIZE || cdb > VIRTIO_SCSI_CDB_MAX_SIZE {
            warn_limited!(
                GUEST_ERRORS,
                "virtio-scsi: sense_size {sense:#x} / cdb_size {cdb:#x} out of bounds; kept {} / {}",
                state.sense_size,
                state.cdb_size
            );
        }
    }

    fn activate(
        &mut self,
        _features: u64,
        queues: Vec<Option<Queue>>,
    ) -> Result<(), ActivateError> {
        {
            let mut state = self.shared.lock();
            for (index, queue) in queues.iter().enumerate() {
                if let Some(queue) = queue {
                    if !queue.is_valid(&*state.mem) {
                        return Err(ActivateError::InvalidQueue { index });
                    }
                }
            }
            state.queues = queues;
            state.broken = false;
            // No BH of the new set is scheduled yet (see `complete_io`).
            state.needs_notify.fill(false);
            let count = state.queues.len();
            state.completion_bhs = (0..count)
                .map(|index| {
                    (index >= FIRST_REQUEST_QUEUE).then(|| {
                        // Weak: the state owns the BH, the BH must not own the state.
                        let weak: Weak<Shared> = Arc::downgrade(&self.shared);
                        // The BH's own list of submissions, reused every batch.
                        let mut submissions = Vec::new();
                        self.ctx.new_bh("virtio-scsi-completions", move || {
                            if let Some(shared) = weak.upgrade() {
                                finish_completions(&shared, index, &mut submissions);
                            }
                        })
                    })
                })
                .collect();
        }
        let ready: Vec<usize> = {
            let state = self.shared.lock();
            (0..state.queues.len())
                .filter(|&i| state.queues[i].is_some())
                .collect()
        };
        for index in ready {
            let kick =
                self.kick_fds[index]
                    .try_clone()
                    .map_err(|e| ActivateError::RegisterKick {
                        index,
                        source: event_loop::Error::EventFdCreate(e),
                    })?;
            let shared = Arc::clone(&self.shared);
            // The handler's own list of submissions, reused every kick.
            let mut submissions = Vec::new();
            let handler = Box::new(move || {
                // Drain the counter first: a kick arriving while we serve the
                // queue re-arms the fd and we run again.
                let _ = kick.read();
                handle_kick(&shared, index, &mut submissions);
            });
            self.ctx
                .set_fd_handler(self.kick_fds[index].as_raw_fd(), Some(handler), None)
                .map_err(|source| ActivateError::RegisterKick { index, source })?;
            self.registered.push(index);
        }
        debug!(
            "virtio-scsi: activated with {} kick handlers",
            self.registered.len()
        );
        Ok(())
    }

    fn reset(&mut self) {
        self.unregister_kicks();
        {
            let mut state = self.shared.lock();
            state.epoch += 1;
            state.queues.clear();
            state.completion_bhs.clear();
            state.polling.fill(false);
            state.needs_notify.fill(false);
            state.pending_tmfs.clear();
            state.pending_events.clear();
            state.events_dropped = false;
            state.broken = false;
            state.cdb_size = VIRTIO_SCSI_CDB_DEFAULT_SIZE as usize;
            state.sense_size = VIRTIO_SCSI_SENSE_DEFAULT_SIZE as usize;
            state.config_shadow = [VIRTIO_SCSI_SENSE_DEFAULT_SIZE, VIRTIO_SCSI_CDB_DEFAULT_SIZE];
            for lun in &mut state.luns {
                lun.state = LunState::after_reset();
            }
        }
        // Drain: no disk I/O may touch guest memory after the driver sees reset.
        // Nested poll on the iothread's context, controller lock released.
        let shared = Arc::clone(&self.shared);
        let _guard = self.ctx.acquire();
        self.ctx.poll_while(|| !shared.lock().in_flight.is_empty());
    }

    fn queue_kick_fds(&self) -> &[EventFd] {
        &self.kick_fds
    }

    fn interrupt(&self) -> &VirtioInterrupt {
        &self.interrupt
    }
}

impl Drop for VirtioScsi {
    fn drop(&mut self) {
        self.unregister_kicks();
    }
}

/// Queues events on a controller's event queue (see [`VirtioScsi::event_sender`]).
pub struct ScsiEventSender {
    shared: Arc<Shared>,
    kick: EventFd,
}

impl ScsiEventSender {
    /// Queues an event (e.g. VIRTIO_SCSI_T_TRANSPORT_RESET on hot-unplug).
    /// Delivered on the iothread when the driver has an event buffer posted;
    /// when more than 16 wait, the oldest are dropped and the next event
    /// delivered carries VIRTIO_SCSI_T_EVENTS_MISSED. Events pending at a
    /// device reset are discarded with it.
    pub fn post(&self, event: u32, target: u8, lun: u16, reason: u32) {
        let mut bytes = [0u8; VIRTIO_SCSI_EVENT_SIZE as usize];
        bytes[0..4].copy_from_slice(&event.to_le_bytes());
        bytes[4] = 1;
        bytes[5] = target;
        bytes[6] = 0x40 | ((lun >> 8) as u8 & 0x3f);
        bytes[7] = lun as u8;
        bytes[12..16].copy_from_slice(&reason.to_le_bytes());
        let mut state = self.shared.lock();
        state.pending_events.push_back(bytes);
        while state.pending_events.len() > MAX_PENDING_EVENTS {
            state.pending_events.pop_front();
            state.events_dropped = true;
        }
        drop(state);
        // Deliver on the iothread, like every other queue operation.
        if let Err(e) = self.kick.write(1) {
            warn!("virtio-scsi: cannot kick the event queue: {e}");
        }
    }
}

/// A kick on queue `index` (iothread, context lock held).
/// `submissions` is the caller's scratch list (empty; left empty).
fn handle_kick(shared: &Arc<Shared>, index: usize, submissions: &mut Vec<Submission>) {
    {
        let mut state = shared.lock();
        match index {
            CONTROL_QUEUE => state.serve_control_queue(),
            EVENT_QUEUE => state.deliver_events(),
            _ => state.serve_request_queue(index, submissions),
        }
    }
    for submission in submissions.drain(..) {
        start_io(shared, submission);
    }
}

/// After a batch of completions on request queue `index` (a BH of the context): one
/// interrupt decision for the batch, then, if kicks are suppressed, new requests.
/// `submissions` as for [`handle_kick`].
fn finish_completions(shared: &Arc<Shared>, index: usize, submissions: &mut Vec<Submission>) {
    {
        let mut state = shared.lock();
        state.sample_depth();
        if std::mem::take(&mut state.needs_notify[index]) {
            state.notify_if_needed(index);
        }
        if state.polling.get(index).copied().unwrap_or(false) {
            state.serve_request_queue(index, submissions);
        }
    }
    for submission in submissions.drain(..) {
        start_io(shared, submission);
    }
}

/// Starts a submission's disk requests (no controller lock held: the backend may
/// complete inline). Several requests (UNMAP ranges) complete the command once.
fn start_io(shared: &Arc<Shared>, submission: Submission) {
    let Submission {
        lun_index,
        requests,
        slot,
        bounce,
    } = submission;
    let backend = &shared.backends[lun_index];
    let requests = match requests {
        Requests::One(request) if bounce.is_none() => {
            // The common case (READ/WRITE/flush): one request, no join needed,
            // and no box for the completion.
            let done = IoCompletion::command(CommandCompletion {
                shared: Arc::clone(shared),
                slot,
            });
            // SAFETY: as below — the buffers point into guest memory that stays
            // mapped and owned by the device until `complete_io` returns the chain.
            unsafe { backend.submit(request, done) };
            return;
        }
        Requests::Many(mut many) if many.len() == 1 && bounce.is_none() => {
            let done = IoCompletion::command(CommandCompletion {
                shared: Arc::clone(shared),
                slot,
            });
            if let Some(request) = many.pop() {
                // SAFETY: as below.
                unsafe { backend.submit(request, done) };
            }
            return;
        }
        Requests::One(request) => vec![request],
        Requests::Many(many) => many,
    };
    let parts = requests.len();
    let join = Arc::new(Mutex::new(Join {
        left: parts,
        result: Ok(0),
        slot: Some(slot),
        _bounce: bounce,
    }));
    for request in requests {
        let shared = Arc::clone(shared);
        let join = Arc::clone(&join);
        let done = IoCompletion::new(move |result: Result<usize, BackendError>| {
            let finished = {
                let mut join = join.lock().unwrap_or_else(|e| e.into_inner());
                join.left -= 1;
                match (&mut join.result, result) {
                    (Ok(total), Ok(n)) => *total += n,
                    (Ok(_), Err(e)) => join.result = Err(e),
                    (Err(_), _) => {}
                }
                if join.left == 0 {
                    join.slot.take().map(|slot| (slot, join.result.clone()))
                } else {
                    None
                }
            };
            if let Some((slot, result)) = finished {
                shared.lock().complete_io(slot, result);
            }
        });
        // SAFETY: every HostBuf points into guest memory (kept mapped: the
        // controller state holds the `GuestMemoryMmap` for as long as the
        // device exists, and reset drains in-flight I/O before returning) or
        // into the `bounce` buffer owned by `join`, which the completion keeps
        // alive until the last part has completed. The driver gave these
        // buffers to the device until we put the chain in the used ring, which
        // only happens in `complete_io`, after this request completed.
        unsafe { backend.submit(request, done) };
    }
}

/// The completion of a command's single disk request: finishes the command.
pub(super) struct CommandCompletion {
    shared: Arc<Shared>,
    slot: Slot,
}

impl CommandCompletion {
    pub(super) fn run(self, result: Result<usize, BackendError>) {
        self.shared.lock().complete_io(self.slot, result);
    }
}

/// Collects the parts of one command's I/O.
struct Join {
    left: usize,
    result: Result<usize, BackendError>,
    /// The command, until the last part has completed.
    slot: Option<Slot>,
    _bounce: Option<Vec<u8>>,
}

impl ScsiState {
    /// Accounts the in-flight count since the last sample and samples it now.
    ///
    /// The coarse clock (the last tick, 1-4 ms) costs a few ns where the
    /// precise one costs tens to hundreds inside a VM, on a path that runs
    /// for every queue pass and completion batch. It is still fair for a mean
    /// over seconds: the error of each interval is under one tick and does not
    /// favour any depth, so it averages out.
    fn sample_depth(&mut self) {
        let now = event_loop::coarse_now_ns();
        if let Some((then, depth)) = self.depth_sampled {
            let ns = now.saturating_sub(then);
            self.stats.depth_ns += ns;
            self.stats.depth_area += ns * depth;
        }
        self.depth_sampled = Some((now, self.in_flight.len() as u64));
    }

    fn mark_broken(&mut self, why: &str) {
        warn_limited!(GUEST_ERRORS, "virtio-scsi: {why}; device needs reset");
        self.broken = true;
        self.interrupt.set_needs_reset();
    }

    /// Pops every available chain of queue `index`, with notifications off while
    /// the ring is drained (EVENT_IDX: avail_event).
    fn pop_chains(&mut self, index: usize) -> Vec<(u16, Result<ChainBuffers, RequestError>)> {
        let mem = Arc::clone(&self.mem);
        let mut chains = Vec::new();
        loop {
            let Some(Some(queue)) = self.queues.get_mut(index) else {
                return chains;
            };
            if queue.disable_notification(&*mem).is_err() {
                self.mark_broken("cannot write the used ring flags");
                return chains;
            }
            match queue.iter(&*mem) {
                Ok(iter) => {
                    for chain in iter {
                        let head = chain.head_index();
                        chains.push((head, ChainBuffers::from_chain(chain)));
                    }
                }
                Err(e) => {
                    self.mark_broken(&format!("available ring of queue {index} is broken: {e}"));
                    return chains;
                }
            }
            match queue.enable_notification(&*mem) {
                Ok(true) => continue,
                Ok(false) => return chains,
                Err(_) => {
                    self.mark_broken("cannot re-enable notifications");
                    return chains;
                }
            }
        }
    }

    /// Puts `head` in the used ring of `queue` with `len` bytes written.
    fn add_used(&mut self, queue: usize, head: u16, len: u32) {
        let Some(Some(q)) = self.queues.get_mut(queue) else {
            return;
        };
        if let Err(e) = q.add_used(&*self.mem, head, len) {
            self.mark_broken(&format!(
                "cannot add to the used ring of queue {queue}: {e}"
            ));
        }
    }

    /// Raises the used-ring interrupt if the driver asked for it (EVENT_IDX).
    fn notify_if_needed(&mut self, queue: usize) {
        let Some(Some(q)) = self.queues.get_mut(queue) else {
            return;
        };
        match q.needs_notification(&*self.mem) {
            Ok(true) => self.interrupt.raise(INTERRUPT_USED_RING),
            Ok(false) => {}
            Err(_) => self.mark_broken("cannot read used_event"),
        }
    }

    fn find_lun(&self, target: u8, lun: u16) -> Option<usize> {
        self.luns
            .iter()
            .position(|l| l.target == target && l.lun == lun)
    }

    fn target_exists(&self, target: u8) -> bool {
        self.luns.iter().any(|l| l.target == target)
    }

    fn luns_of_target(&self, target: u8) -> Vec<u16> {
        let mut luns: Vec<u16> = self
            .luns
            .iter()
            .filter(|l| l.target == target)
            .map(|l| l.lun)
            .collect();
        luns.sort_unstable();
        luns
    }

    /// Serves the available commands of request queue `index`; the disk I/O to
    /// start (after the lock is dropped) is appended to `submissions`.
    fn serve_request_queue(&mut self, index: usize, submissions: &mut Vec<Submission>) {
        let mut used = false;
        // Kept between passes: no allocation per pass.
        let mut chains = std::mem::take(&mut self.spare_chains);
        let mem = Arc::clone(&self.mem);
        loop {
            if self.broken {
                break;
            }
            self.pop_available(index, &mem, &mut chains);
            if !chains.is_empty() {
                self.stats.batches += 1;
                self.stats.chains += chains.len() as u64;
            }
            for (head, buffers) in chains.drain(..) {
                match buffers {
                    Ok(buffers) => match self.serve_command(index, head, buffers) {
                        Some(submission) => submissions.push(submission),
                        None => used = true,
                    },
                    Err(e) => {
                        warn_limited!(GUEST_ERRORS, "virtio-scsi: bad chain on queue {index}: {e}");
                        self.add_used(index, head, 0);
                        used = true;
                    }
                }
            }
            // Enough requests at the disk: a completion is coming, which looks
            // for new requests; no kick needed until then.
            let in_flight = self.queue_in_flight.get(index).copied().unwrap_or(0);
            let slow = self.queue_slow_in_flight.get(index).copied().unwrap_or(0);
            if in_flight >= POLL_MIN_IN_FLIGHT && slow == 0 {
                self.polling[index] = true;
                break;
            }
            self.polling[index] = false;
            let Some(Some(queue)) = self.queues.get_mut(index) else {
                break;
            };
            match queue.enable_notification(&*mem) {
                Ok(true) => continue,
                Ok(false) => break,
                Err(_) => {
                    self.mark_broken("cannot re-enable notifications");
                    break;
                }
            }
        }
        if used {
            self.notify_if_needed(index);
        }
        self.sample_depth();
        self.spare_chains = chains;
    }

    /// Keeps `ranges`' allocation for a later chain.
    fn recycle_ranges(&mut self, mut ranges: Vec<GuestRange>) {
        if self.spare_ranges.len() < MAX_SPARE_RANGE_LISTS
            && ranges.capacity() > 0
            && ranges.capacity() <= MAX_SPARE_RANGE_CAPACITY
        {
            ranges.clear();
            self.spare_ranges.push(ranges);
        }
    }

    /// Appends the chains available on queue `index` now to `chains`, with kicks suppressed
    /// meanwhile (used flags without EVENT_IDX; with it, by not moving avail_event).
    fn pop_available(
        &mut self,
        index: usize,
        mem: &GuestMemoryMmap,
        chains: &mut Vec<(u16, Result<ChainBuffers, RequestError>)>,
    ) {
        let Some(Some(queue)) = self.queues.get_mut(index) else {
            return;
        };
        if queue.disable_notification(mem).is_err() {
            self.mark_broken("cannot write the used ring flags");
            return;
        }
        let spare = &mut self.spare_ranges;
        match queue.iter(mem) {
            Ok(iter) => {
                for chain in iter {
                    let head = chain.head_index();
                    let buffers = ChainBuffers {
                        readable: spare.pop().unwrap_or_default(),
                        writable: spare.pop().unwrap_or_default(),
                    };
                    chains.push((head, ChainBuffers::from_chain_into(chain, buffers)));
                }
            }
            Err(e) => self.mark_broken(&format!("available ring of queue {index} is broken: {e}")),
        }
    }

    /// Writes a command response at the front of `writable` and returns the chain.
    fn respond(&mut self, queue: usize, head: u16, writable: &[GuestRange], reply: Reply) {
        let Reply {
            response,
            status,
            resid,
            sense,
            data_written,
        } = reply;
        let sense_bytes = sense.map(|s| s.to_fixed());
        let mut buf = [0u8; request::MAX_CMD_RESPONSE_SIZE];
        let bytes = request::encode_cmd_response_into(
            &mut buf,
            response,
            status,
            u32::try_from(resid).unwrap_or(u32::MAX),
            sense_bytes.as_ref().map_or(&[][..], |s| &s[..]),
            self.sense_size,
        );
        let used = match request::write_to(&self.mem, writable, bytes) {
            Ok(n) => n as u64 + data_written,
            Err(e) => {
                warn_limited!(GUEST_ERRORS, "virtio-scsi: cannot write a response: {e}");
                0
            }
        };
        self.add_used(queue, head, u32::try_from(used).unwrap_or(u32::MAX));
    }

    /// Serves one command; `Some` when disk I/O must be started.
    fn serve_command(
        &mut self,
        queue: usize,
        head: u16,
        buffers: ChainBuffers,
    ) -> Option<Submission> {
        let response_size = CMD_RESPONSE_HEADER_SIZE + self.sense_size;
        let writable_len = request::total_len(&buffers.writable);
        if writable_len < response_size as u64 {
            warn_limited!(
                GUEST_ERRORS,
                "virtio-scsi: {}",
                RequestError::ShortResponse {
                    needed: response_size,
                    got: writable_len
                }
            );
            self.add_used(queue, head, 0);
            return None;
        }
        // The data-in buffers follow the response header (listed only when
        // needed: READ maps them without building the list).
        let data_in_len = writable_len - response_size as u64;
        let writable = buffers.writable;
        let fail = |this: &mut ScsiState, response: u8| {
            this.respond(
                queue,
                head,
                &writable,
                Reply {
                    response,
                    status: 0,
                    resid: 0,
                    sense: None,
                    data_written: 0,
                },
            );
        };

        let request_size = CMD_REQUEST_HEADER_SIZE + self.cdb_size;
        // cdb_size is bounded by VIRTIO_SCSI_CDB_MAX_SIZE: the header fits on
        // the stack. The default CDB size gets a buffer small enough to be
        // zeroed inline (the largest one cost a memset call per command).
        let mut small = [0u8; SMALL_CMD_REQUEST_SIZE];
        let mut large;
        let header: &mut [u8] = if request_size <= small.len() {
            &mut small[..request_size]
        } else {
            large = [0u8; CMD_REQUEST_HEADER_SIZE + VIRTIO_SCSI_CDB_MAX_SIZE as usize];
            &mut large[..request_size]
        };
        let parsed = request::read_from(&self.mem, &buffers.readable, header)
            .and_then(|()| request::parse_cmd_request_ref(header, self.cdb_size));
        let cmd = match parsed {
            Ok(cmd) => cmd,
            Err(e) => {
                warn_limited!(GUEST_ERRORS, "virtio-scsi: bad request: {e}");
                fail(self, VIRTIO_SCSI_S_FAILURE);
                return None;
            }
        };
        // The data-out buffers follow the header (listed only when needed).
        let data_out_len =
            request::total_len(&buffers.readable).saturating_sub(request_size as u64);
        if data_out_len > 0 && data_in_len > 0 {
            // Bidirectional commands need VIRTIO_SCSI_F_INOUT, which is not offered.
            fail(self, VIRTIO_SCSI_S_FAILURE);
            return None;
        }
        let Some((target, lun)) = parse_lun(&cmd.lun)
            .filter(|&(t, l)| u16::from(t) <= self.max_target && u32::from(l) <= self.max_lun)
        else {
            fail(self, VIRTIO_SCSI_S_BAD_TARGET);
            return None;
        };
        // An attached LUN implies its target: the target scan only without one.
        let lun_index = self.find_lun(target, lun);
        if lun_index.is_none() && !self.target_exists(target) {
            fail(self, VIRTIO_SCSI_S_BAD_TARGET);
            return None;
        }
        let opcode = cmd.cdb.first().copied().unwrap_or(0);
        let luns = if opcode == REPORT_LUNS {
            self.luns_of_target(target)
        } else {
            Vec::new()
        };
        let Some(lun_index) = lun_index else {
            let outcome = commands::execute_without_lun(cmd.cdb, &luns);
            self.finish_inline(
                queue,
                head,
                &writable,
                &request::skip_bytes(&writable, response_size as u64),
                data_in_len.max(data_out_len),
                outcome,
            );
            return None;
        };
        // Parameter data for the commands that take some; READ/WRITE data is
        // never copied.
        let is_write = matches!(opcode, WRITE_6 | WRITE_10 | WRITE_12 | WRITE_16);
        let mut parameters = Vec::new();
        if !is_write && data_out_len > 0 {
            parameters = vec![0u8; data_out_len.min(MAX_PARAMETER_DATA as u64) as usize];
            let data_out = request::skip_bytes(&buffers.readable, request_size as u64);
            if request::read_from(&self.mem, &data_out, &mut parameters).is_err() {
                fail(self, VIRTIO_SCSI_S_FAILURE);
                return None;
            }
        }
        let lun_entry = &mut self.luns[lun_index];
        let outcome = commands::execute(
            &lun_entry.geometry,
            &mut lun_entry.state,
            cmd.cdb,
            &parameters,
            &luns,
        );
        trace!("virtio-scsi: {target}:{lun} opcode {opcode:#04x} -> {outcome:?}");
        let plan = match outcome {
            Outcome::Io(plan) => plan,
            other => {
                self.finish_inline(
                    queue,
                    head,
                    &writable,
                    &request::skip_bytes(&writable, response_size as u64),
                    data_in_len.max(data_out_len),
                    other,
                );
                return None;
            }
        };
        let (requests, transfer, is_read, bounce, error_sense) = match plan {
            IoPlan::Read { offset, len } => {
                if data_in_len < len {
                    fail(self, VIRTIO_SCSI_S_OVERRUN);
                    return None;
                }
                match request::host_bufs_after(&self.mem, &writable, response_size as u64, len) {
                    Ok(bufs) => (
                        Requests::One(BackendRequest::Read { offset, bufs }),
                        len,
                        true,
                        None,
                        Sense::READ_ERROR,
                    ),
                    Err(e) => {
                        warn_limited!(GUEST_ERRORS, "virtio-scsi: read buffer: {e}");
                        fail(self, VIRTIO_SCSI_S_FAILURE);
                        return None;
                    }
                }
            }
            IoPlan::Write { offset, len, fua } => {
                if data_out_len < len {
                    fail(self, VIRTIO_SCSI_S_OVERRUN);
                    return None;
                }
                match request::host_bufs_after(
                    &self.mem,
                    &buffers.readable,
                    request_size as u64,
                    len,
                ) {
                    Ok(bufs) => (
                        Requests::One(BackendRequest::Write { offset, bufs, fua }),
                        len,
                        false,
                        None,
                        Sense::WRITE_ERROR,
                    ),
                    Err(e) => {
                        warn_limited!(GUEST_ERRORS, "virtio-scsi: write buffer: {e}");
                        fail(self, VIRTIO_SCSI_S_FAILURE);
                        return None;
                    }
                }
            }
            IoPlan::Flush => (
                Requests::One(BackendRequest::Flush),
                0,
                false,
                None,
                Sense::WRITE_ERROR,
            ),
            IoPlan::Discard(ranges) => (
                Requests::Many(
                    ranges
                        .into_iter()
                        .map(|(offset, len)| BackendRequest::Discard { offset, len })
                        .collect(),
                ),
                0,
                false,
                None,
                Sense::MEDIUM_ERROR,
            ),
            IoPlan::WriteZeroes { offset, len, unmap } => (
                Requests::One(BackendRequest::WriteZeroes { offset, len, unmap }),
                0,
                false,
                None,
                Sense::WRITE_ERROR,
            ),
            IoPlan::WritePattern {
                offset,
                len,
                pattern,
            } => {
                let mut bounce: Vec<u8> =
                    pattern.iter().copied().cycle().take(len as usize).collect();
                let bufs = HostBufs::One(HostBuf {
                    ptr: bounce.as_mut_ptr(),
                    len: bounce.len(),
                });
                (
                    Requests::One(BackendRequest::Write {
                        offset,
                        bufs,
                        fua: false,
                    }),
                    0,
                    false,
                    Some(bounce),
                    Sense::WRITE_ERROR,
                )
            }
        };
        let seq = self.next_seq;
        self.next_seq += 1;
        let slow = bounce.is_some()
            || !matches!(
                requests,
                Requests::One(BackendRequest::Read { .. } | BackendRequest::Write { .. })
            );
        if let Some(count) = self.queue_in_flight.get_mut(queue) {
            *count += 1;
            self.stats.submitted += 1;
            self.stats.depth_sum += *count as u64;
        }
        if slow {
            if let Some(count) = self.queue_slow_in_flight.get_mut(queue) {
                *count += 1;
            }
        }
        let slot = self.in_flight.insert(InFlight {
            queue,
            head,
            writable,
            buffer_len: if is_read { data_in_len } else { data_out_len },
            transfer,
            is_read,
            error_sense,
            slow,
            seq,
            epoch: self.epoch,
            lun_index,
            tag: cmd.id,
        });
        self.recycle_ranges(buffers.readable);
        Some(Submission {
            lun_index,
            requests,
            slot,
            bounce,
        })
    }

    /// Completes a command that needed no disk I/O.
    fn finish_inline(
        &mut self,
        queue: usize,
        head: u16,
        writable: &[GuestRange],
        data_in: &[GuestRange],
        buffer_len: u64,
        outcome: Outcome,
    ) {
        match outcome {
            Outcome::Good => self.respond(
                queue,
                head,
                writable,
                Reply {
                    response: VIRTIO_SCSI_S_OK,
                    status: STATUS_GOOD,
                    resid: buffer_len,
                    sense: None,
                    data_written: 0,
                },
            ),
            Outcome::DataIn(data) => match request::write_to(&self.mem, data_in, &data) {
                Ok(written) => self.respond(
                    queue,
                    head,
                    writable,
                    Reply {
                        response: VIRTIO_SCSI_S_OK,
                        status: STATUS_GOOD,
                        resid: buffer_len - written as u64,
                        sense: None,
                        data_written: written as u64,
                    },
                ),
                Err(e) => {
                    warn_limited!(GUEST_ERRORS, "virtio-scsi: data-in buffer: {e}");
                    self.respond(
                        queue,
                        head,
                        writable,
                        Reply {
                            response: VIRTIO_SCSI_S_FAILURE,
                            status: 0,
                            resid: 0,
                            sense: None,
                            data_written: 0,
                        },
                    )
                }
            },
            Outcome::Check(sense) => self.respond(
                queue,
                head,
                writable,
                Reply {
                    response: VIRTIO_SCSI_S_OK,
                    status: STATUS_CHECK_CONDITION,
                    resid: buffer_len,
                    sense: Some(sense),
                    data_written: 0,
                },
            ),
            Outcome::Io(_) => unreachable_io(),
        }
    }

    /// A disk request finished (context lock held: the iothread, a nested poller,
    /// or the pool worker that did the I/O).
    fn complete_io(&mut self, slot: Slot, result: Result<usize, BackendError>) {
        let Some(pending) = self.in_flight.remove(slot) else {
            // Each command's completion runs once and only it frees the slot.
            warn!("virtio-scsi: internal error: completion of an empty in-flight slot");
            return;
        };
        if let Some(count) = self.queue_in_flight.get_mut(pending.queue) {
            *count = count.saturating_sub(1);
        }
        if pending.slow {
            if let Some(count) = self.queue_slow_in_flight.get_mut(pending.queue) {
                *count = count.saturating_sub(1);
            }
        }
        if pending.epoch == self.epoch {
            let ok = match &result {
                Ok(n) => pending.transfer == 0 || *n as u64 == pending.transfer,
                Err(_) => false,
            };
            if ok {
                let written = if pending.is_read { pending.transfer } else { 0 };
                self.respond(
                    pending.queue,
                    pending.head,
                    &pending.writable,
                    Reply {
                        response: VIRTIO_SCSI_S_OK,
                        status: STATUS_GOOD,
                        resid: pending.buffer_len - pending.transfer,
                        sense: None,
                        data_written: written,
                    },
                );
            } else {
                // An I/O error always reaches the guest as CHECK CONDITION.
                match &result {
                    Err(e) => warn_limited!(IO_ERRORS, "virtio-scsi: disk I/O failed: {e}"),
                    Ok(n) => warn_limited!(
                        IO_ERRORS,
                        "virtio-scsi: short transfer {n} of {}",
                        pending.transfer
                    ),
                }
                self.respond(
                    pending.queue,
                    pending.head,
                    &pending.writable,
                    Reply {
                        response: VIRTIO_SCSI_S_OK,
                        status: STATUS_CHECK_CONDITION,
                        resid: pending.buffer_len,
                        sense: Some(pending.error_sense),
                        data_written: 0,
                    },
                );
            }
            // The interrupt decision and the look for new requests happen once
            // per batch of completions, in the queue's bottom half.
            // `needs_notify` already set means the BH is scheduled and has not
            // run yet (it clears the flag first, and reset clears both): the
            // batch's later completions need not schedule it again.
            match self.completion_bhs.get(pending.queue) {
                Some(Some(bh)) => {
                    if !std::mem::replace(&mut self.needs_notify[pending.queue], true) {
                        bh.schedule();
                    }
                }
                _ => self.notify_if_needed(pending.queue),
            }
        }
        self.recycle_ranges(pending.writable);
        self.answer_ready_tmfs();
    }

    fn serve_control_queue(&mut self) {
        if self.broken {
            return;
        }
        let chains = self.pop_chains(CONTROL_QUEUE);
        let mut used = false;
        for (head, buffers) in chains {
            let buffers = match buffers {
                Ok(b) => b,
                Err(e) => {
                    warn_limited!(GUEST_ERRORS, "virtio-scsi: bad control chain: {e}");
                    self.add_used(CONTROL_QUEUE, head, 0);
                    used = true;
                    continue;
                }
            };
            let readable_len = request::total_len(&buffers.readable).min(64) as usize;
            let mut bytes = vec![0u8; readable_len];
            let parsed = request::read_from(&self.mem, &buffers.readable, &mut bytes)
                .and_then(|()| parse_control_request(&bytes));
            let request = match parsed {
                Ok(r) => r,
                Err(e) => {
                    warn_limited!(GUEST_ERRORS, "virtio-scsi: bad control request: {e}");
                    self.add_used(CONTROL_QUEUE, head, 0);
                    used = true;
                    continue;
                }
            };
            if request::total_len(&buffers.writable) < request.response_size() as u64 {
                warn_limited!(
                    GUEST_ERRORS,
                    "virtio-scsi: control response buffer too short"
                );
                self.add_used(CONTROL_QUEUE, head, 0);
                used = true;
                continue;
            }
            match request {
                ControlRequest::Tmf { subtype, lun, id } => {
                    if let Some(response) =
                        self.task_management(subtype, &lun, id, head, &buffers.writable)
                    {
                        self.write_control_response(head, &buffers.writable, &[response]);
                        used = true;
                    }
                }
                ControlRequest::AsyncNotify { lun, .. } => {
                    // No asynchronous notification events are supported: answer
                    // with an empty event set.
                    let response = match parse_lun(&lun) {
                        Some((target, _)) if self.target_exists(target) => VIRTIO_SCSI_S_OK,
                        _ => VIRTIO_SCSI_S_BAD_TARGET,
                    };
                    let mut bytes = [0u8; 5];
                    bytes[4] = response;
                    self.write_control_response(head, &buffers.writable, &bytes);
                    used = true;
                }
            }
        }
        if used {
            self.notify_if_needed(CONTROL_QUEUE);
        }
    }

    fn write_control_response(&mut self, head: u16, writable: &[GuestRange], bytes: &[u8]) {
        let len = match request::write_to(&self.mem, writable, bytes) {
            Ok(n) => n as u32,
            Err(e) => {
                warn_limited!(GUEST_ERRORS, "virtio-scsi: control response: {e}");
                0
            }
        };
        self.add_used(CONTROL_QUEUE, head, len);
    }

    /// Runs a TMF. `Some(response)` to answer now; `None` when the answer waits
    /// for in-flight requests (queued in `pending_tmfs`).
    fn task_management(
        &mut self,
        subtype: u32,
        lun: &[u8; 8],
        id: u64,
        head: u16,
        writable: &[GuestRange],
    ) -> Option<u8> {
        let Some((target, lun)) = parse_lun(lun) else {
            return Some(VIRTIO_SCSI_S_BAD_TARGET);
        };
        if !self.target_exists(target) {
            return Some(VIRTIO_SCSI_S_BAD_TARGET);
        }
        let lun_index = self.find_lun(target, lun);
        let on_lun = |f: &InFlight| Some(f.lun_index) == lun_index;
        let (wait_below, response) = match subtype {
            VIRTIO_SCSI_T_TMF_ABORT_TASK => {
                // Requests cannot be cancelled once at the disk: wait for the
                // task to complete, then report the function complete.
                let task = self
                    .in_flight
                    .iter()
                    .filter(|f| on_lun(f) && f.tag == id)
                    .map(|f| f.seq)
                    .min();
                (task.map(|seq| seq + 1), VIRTIO_SCSI_S_OK)
            }
            VIRTIO_SCSI_T_TMF_ABORT_TASK_SET | VIRTIO_SCSI_T_TMF_CLEAR_TASK_SET => {
                lun_index?;
                (Some(self.next_seq), VIRTIO_SCSI_S_OK)
            }
            VIRTIO_SCSI_T_TMF_LOGICAL_UNIT_RESET => {
                let Some(index) = lun_index else {
                    return Some(VIRTIO_SCSI_S_INCORRECT_LUN);
                };
                self.luns[index].state = LunState::after_reset();
                (Some(self.next_seq), VIRTIO_SCSI_S_OK)
            }
            VIRTIO_SCSI_T_TMF_I_T_NEXUS_RESET => {
                for l in self.luns.iter_mut().filter(|l| l.target == target) {
                    l.state = LunState::after_reset();
                }
                (Some(self.next_seq), VIRTIO_SCSI_S_OK)
            }
            VIRTIO_SCSI_T_TMF_QUERY_TASK => {
                let found = self.in_flight.iter().any(|f| on_lun(f) && f.tag == id);
                (
                    None,
                    if found {
                        VIRTIO_SCSI_S_FUNCTION_SUCCEEDED
                    } else {
                        VIRTIO_SCSI_S_OK
                    },
                )
            }
            VIRTIO_SCSI_T_TMF_QUERY_TASK_SET => {
                let found = self.in_flight.iter().any(on_lun);
                (
                    None,
                    if found {
                        VIRTIO_SCSI_S_FUNCTION_SUCCEEDED
                    } else {
                        VIRTIO_SCSI_S_OK
                    },
                )
            }
            _ => (None, VIRTIO_SCSI_S_FUNCTION_REJECTED),
        };
        let lun_missing = lun_index.is_none()
            && matches!(
                subtype,
                VIRTIO_SCSI_T_TMF_ABORT_TASK
                    | VIRTIO_SCSI_T_TMF_QUERY_TASK
                    | VIRTIO_SCSI_T_TMF_QUERY_TASK_SET
            );
        if lun_missing {
            return Some(VIRTIO_SCSI_S_INCORRECT_LUN);
        }
        match wait_below {
            Some(bound) if self.in_flight.oldest_seq().is_some_and(|min| min < bound) => {
                self.pending_tmfs.push(PendingTmf {
                    head,
                    writable: writable.to_vec(),
                    wait_below: bound,
                    response,
                    epoch: self.epoch,
                });
                None
            }
            _ => Some(response),
        }
    }

    /// Answers the TMFs whose awaited requests have all completed.
    fn answer_ready_tmfs(&mut self) {
        if self.pending_tmfs.is_empty() {
            return;
        }
        let oldest = self.in_flight.oldest_seq().unwrap_or(u64::MAX);
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.pending_tmfs)
            .into_iter()
            .partition(|t| oldest >= t.wait_below);
        self.pending_tmfs = waiting;
        let mut answered = false;
        for tmf in ready {
            if tmf.epoch == self.epoch {
                self.write_control_response(tmf.head, &tmf.writable, &[tmf.response]);
                answered = true;
            }
        }
        if answered {
            self.notify_if_needed(CONTROL_QUEUE);
        }
    }

    /// Fills posted event buffers with pending events (and the missed flag).
    fn deliver_events(&mut self) {
        if self.broken || !matches!(self.queues.get(EVENT_QUEUE), Some(Some(_))) {
            return;
        }
        if self.pending_events.is_empty() && !self.events_dropped {
            return;
        }
        let mem = Arc::clone(&self.mem);
        let mut used = false;
        while !self.pending_events.is_empty() || self.events_dropped {
            let Some(Some(queue)) = self.queues.get_mut(EVENT_QUEUE) else {
                break;
            };
            let chain = match queue.iter(&*mem) {
                Ok(mut iter) => iter.next(),
                Err(e) => {
                    self.mark_broken(&format!("event queue broken: {e}"));
                    return;
                }
            };
            let Some(chain) = chain else {
                // No buffer: keep the events (bounded by post_event).
                break;
            };
            let head = chain.head_index();
            let writable = match ChainBuffers::from_chain(chain) {
                Ok(b) if request::total_len(&b.writable) >= u64::from(VIRTIO_SCSI_EVENT_SIZE) => {
                    b.writable
                }
                _ => {
                    warn_limited!(GUEST_ERRORS, "virtio-scsi: unusable event buffer");
                    self.add_used(EVENT_QUEUE, head, 0);
                    used = true;
                    continue;
                }
            };
            let mut event = self.pending_events.pop_front().unwrap_or_else(|| {
                let mut none = [0u8; VIRTIO_SCSI_EVENT_SIZE as usize];
                none[0..4].copy_from_slice(&VIRTIO_SCSI_T_NO_EVENT.to_le_bytes());
                none
            });
            if self.events_dropped {
                let kind = u32::from_le_bytes([event[0], event[1], event[2], event[3]])
                    | VIRTIO_SCSI_T_EVENTS_MISSED;
                event[0..4].copy_from_slice(&kind.to_le_bytes());
                self.events_dropped = false;
            }
            let len = request::write_to(&self.mem, &writable, &event).unwrap_or(0) as u32;
            self.add_used(EVENT_QUEUE, head, len);
            used = true;
        }
        if used {
            self.notify_if_needed(EVENT_QUEUE);
        }
    }
}

fn unreachable_io() {
    // `finish_inline` is only called with outcomes that need no I/O.
    warn!("virtio-scsi: internal error: I/O outcome completed inline");
}
