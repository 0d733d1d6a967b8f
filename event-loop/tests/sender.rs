//! `CompletionSender` on a dead context: in a test binary of its own, because
//! it counts the process's open eventfds and timerfds, which tests running in
//! parallel would change.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use event_loop::{AioContext, Task};

/// Eventfds and timerfds this process has open.
fn context_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .filter(|e| {
            std::fs::read_link(e.path()).is_ok_and(|l| {
                let l = l.to_string_lossy();
                l.contains("[eventfd]") || l.contains("[timerfd]")
            })
        })
        .count()
}

struct Flagged(Arc<AtomicBool>, Arc<AtomicBool>);

impl Task for Flagged {
    fn run(self: Box<Self>) {
        self.0.store(true, Ordering::SeqCst);
    }
}

impl Drop for Flagged {
    fn drop(&mut self) {
        self.1.store(true, Ordering::SeqCst);
    }
}

/// Completions handed to a sender whose context is gone are dropped at once,
/// never run, and leave no fd of the context behind (a BH scheduled on a dead
/// context's list would keep it in a reference cycle).
#[test]
fn a_sender_of_a_dropped_context_drops_its_completions_and_leaks_nothing() {
    let before = context_fds();
    let ctx = AioContext::new().unwrap();
    let sender = ctx.thread_pool().completion_sender();
    assert!(context_fds() > before, "the context owns fds");
    drop(ctx);
    let (ran, dropped) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    sender.queue_completions_later(vec![Box::new(Flagged(ran.clone(), dropped.clone()))]);
    assert!(dropped.load(Ordering::SeqCst), "kept instead of dropped");
    assert!(!ran.load(Ordering::SeqCst));
    drop(sender);
    assert_eq!(context_fds(), before, "the dead context's fds stayed open");
}
