//! How many io-wq workers an iothread's io_uring disks may keep, one setting
//! per context.
//!
//! The kernel hands a read or write that cannot be done without blocking to
//! io-wq, a pool of kernel workers that belongs to the submitting thread (not
//! to the ring), by default up to four per CPU. On a memory-backed image
//! (tmpfs) every request goes there (tmpfs has no non-blocking reads, as of
//! Linux 6.18), and the work is a copy that keeps a CPU busy: more workers
//! than CPUs buy nothing, and with idle workers about, nearly every submission
//! wakes one on another CPU. Capping the pool at one worker per CPU saved the
//! virtio-scsi bench 7.5% of its CPU per request on average over eight
//! alternations, at the edge of the noise (docs/virtio-scsi.md, tenth
//! session).
//!
//! A disk that blocks (a real disk with `cache=writeback`, whose reads miss
//! the page cache) needs its workers: with two, QD32 random reads would run at
//! QD2. Because the pool is the iothread's, shared by all its rings, the cap
//! is computed from every io_uring disk of the context: one CPU-count cap
//! while all are memory-backed, the kernel's default as soon as one is not.
//! It is recomputed when a disk's engine is created or dropped and set
//! through every ring of the context (the kernel passes a ring's setting on
//! to every thread that has used the ring, and to a thread's pool when that
//! ring is the first the thread uses).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use event_loop::AioContext;

/// What can set the bounded-worker limit of the io-wq pools behind one ring.
pub(crate) trait WorkerLimit: Send + Sync {
    fn set_bounded_workers(&self, workers: u32) -> std::io::Result<()>;
}

/// One io_uring disk of a context.
struct Member {
    id: u64,
    ring: Weak<dyn WorkerLimit>,
    memory_backed: bool,
}

/// A context's io_uring disks.
struct ContextMembers {
    ctx: Weak<AioContext>,
    members: Vec<Member>,
}

/// Every context's io_uring disks. Global, keyed by a weak reference to the
/// context: the event loop knows nothing of disks, and disks are opened and
/// dropped from any thread. Lock order: this, then a ring's mutex.
static CONTEXTS: Mutex<Vec<ContextMembers>> = Mutex::new(Vec::new());
static NEXT_ID: AtomicU64 = AtomicU64::new(0);

/// The bounded-worker limit for a context whose io_uring disks are
/// `memory_backed` (one flag per disk), on a machine with `cpus` CPUs for us
/// and `online` CPUs in all, for rings of `ring_entries` entries: the
/// kernel's default is `min(ring_entries, 4 * online)`.
pub(crate) fn bounded_limit(
    memory_backed: impl IntoIterator<Item = bool>,
    cpus: u32,
    online: u32,
    ring_entries: u32,
) -> u32 {
    let mut any = false;
    let mut all = true;
    for m in memory_backed {
        any = true;
        all &= m;
    }
    if any && all {
        cpus.max(1)
    } else {
        ring_entries.min(4 * online.max(1))
    }
}

/// An io_uring disk's place in its context's count; dropping it takes the
/// disk out and sets the context's limit again.
pub(crate) struct Membership {
    ctx: Weak<AioContext>,
    id: u64,
    ring_entries: u32,
}

/// Records a new io_uring disk of `ctx` and sets the context's limit again
/// (through the new disk's ring too).
pub(crate) fn join(
    ctx: &Arc<AioContext>,
    ring: Weak<dyn WorkerLimit>,
    memory_backed: bool,
    ring_entries: u32,
) -> Membership {
    let ctx = Arc::downgrade(ctx);
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let mut contexts = CONTEXTS.lock().unwrap_or_else(|p| p.into_inner());
    contexts.retain(|c| c.ctx.strong_count() > 0);
    let index = match contexts.iter().position(|c| Weak::ptr_eq(&c.ctx, &ctx)) {
        Some(i) => i,
        None => {
            contexts.push(ContextMembers {
                ctx: Weak::clone(&ctx),
                members: Vec::new(),
            });
            contexts.len() - 1
        }
    };
    let entry = &mut contexts[index];
    entry.members.push(Member {
        id,
        ring,
        memory_backed,
    });
    apply(entry, ring_entries);
    Membership {
        ctx,
        id,
        ring_entries,
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        let mut contexts = CONTEXTS.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(entry) = contexts
            .iter_mut()
            .find(|c| Weak::ptr_eq(&c.ctx, &self.ctx))
        {
            entry.members.retain(|m| m.id != self.id);
            if !entry.members.is_empty() {
                apply(entry, self.ring_entries);
            }
        }
    }
}

/// Computes the context's limit from its disks and sets it through each of
/// their rings (a call per ring: disks come and go rarely).
fn apply(entry: &mut ContextMembers, ring_entries: u32) {
    entry.members.retain(|m| m.ring.strong_count() > 0);
    let limit = bounded_limit(
        entry.members.iter().map(|m| m.memory_backed),
        available_cpus(),
        online_cpus(),
        ring_entries,
    );
    log::debug!("block: io_uring: io-wq bounded workers per iothread: {limit}");
    for member in &entry.members {
        if let Some(ring) = member.ring.upgrade() {
            if let Err(e) = ring.set_bounded_workers(limit) {
                // A kernel without the call keeps its default.
                log::debug!("block: io_uring: setting io-wq's worker limit to {limit}: {e}");
            }
        }
    }
}

/// CPUs this process may run on.
fn available_cpus() -> u32 {
    std::thread::available_parallelism()
        .map(|n| u32::try_from(n.get()).unwrap_or(u32::MAX))
        .unwrap_or(1)
}

/// CPUs online (the kernel's default limit counts these).
fn online_cpus() -> u32 {
    // SAFETY: sysconf only reads a system value.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    u32::try_from(n).ok().filter(|&n| n > 0).unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;
    use std::sync::atomic::Ordering::SeqCst;

    #[test]
    fn all_memory_backed_caps_at_the_cpus_else_the_kernel_default() {
        assert_eq!(bounded_limit([true], 2, 2, 128), 2);
        assert_eq!(bounded_limit([true, true], 8, 16, 128), 8);
        assert_eq!(bounded_limit([true, false], 2, 2, 128), 8);
        assert_eq!(bounded_limit([false], 64, 64, 128), 128);
        assert_eq!(bounded_limit(std::iter::empty(), 2, 2, 128), 8);
        assert_eq!(bounded_limit([true], 0, 0, 128), 1);
    }

    /// Records the last limit set through it.
    struct Recorder(AtomicU32);

    impl WorkerLimit for Recorder {
        fn set_bounded_workers(&self, workers: u32) -> std::io::Result<()> {
            self.0.store(workers, SeqCst);
            Ok(())
        }
    }

    #[test]
    fn a_disk_that_blocks_lifts_the_cap_for_the_whole_context_and_its_leaving_restores_it() {
        let ctx = AioContext::new().unwrap();
        let other_ctx = AioContext::new().unwrap();
        let cap = available_cpus();
        let default = 128u32.min(4 * online_cpus());
        assert_ne!(cap, default, "the test needs the two to differ");
        let weak = |r: &Arc<Recorder>| Arc::downgrade(r) as Weak<dyn WorkerLimit>;

        let tmpfs = Arc::new(Recorder(AtomicU32::new(0)));
        let _tmpfs_member = join(&ctx, weak(&tmpfs), true, 128);
        assert_eq!(tmpfs.0.load(SeqCst), cap);

        // Another context's disk does not count.
        let elsewhere = Arc::new(Recorder(AtomicU32::new(0)));
        let _elsewhere_member = join(&other_ctx, weak(&elsewhere), false, 128);
        assert_eq!(tmpfs.0.load(SeqCst), cap);
        assert_eq!(elsewhere.0.load(SeqCst), default);

        let disk = Arc::new(Recorder(AtomicU32::new(0)));
        let disk_member = join(&ctx, weak(&disk), false, 128);
        assert_eq!(tmpfs.0.load(SeqCst), default);
        assert_eq!(disk.0.load(SeqCst), default);

        // The leaving disk's ring may still be alive while it leaves.
        drop(disk_member);
        assert_eq!(tmpfs.0.load(SeqCst), cap);
        drop(disk);
    }
}
