//! Test-only fault knobs (feature `fault-knobs`) recreating known protocol bugs.

/// A known way the wake-up protocol failed in the field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// (a) `notify` skips the eventfd write while some thread is dispatching.
    SkipNotifyWhileDispatching,
    /// (b) a nested poll clears the notifier eventfd that was meant for another poller.
    NestedPollClearsNotifier,
    /// (c) the full fences between "announce sleeper"/"check work" and
    /// "make pending"/"read sleepers" are weakened to release/acquire.
    NoFullFence,
    /// (q) a lock holder that published quietly (`ThreadPool::run_inline`) lets
    /// the lock go without the release check, so nobody is woken for work no
    /// scan took: the "the holder will see it" shortcut without its guarantee.
    QuietReleaseSkipsWake,
}
