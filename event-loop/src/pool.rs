//! The worker thread pool whose completions run on the context.

/// Worker threads running blocking jobs; `done` callbacks run on the context in the
/// pool's completion BH.
pub struct ThreadPool {
    _todo: (),
}

/// A handle to one submitted job.
pub struct JobHandle {
    _todo: (),
}

impl ThreadPool {
    /// Runs `work` on a worker thread; `done(result)` later runs on the context (in the
    /// pool's completion BH). Any thread.
    pub fn submit<R: Send + 'static>(
        &self,
        _work: impl FnOnce() -> R + Send + 'static,
        _done: impl FnOnce(R) + Send + 'static,
    ) -> JobHandle {
        todo!()
    }

    /// Sets the maximum number of worker threads (at least 1).
    pub fn set_max_workers(&self, _n: usize) {
        todo!()
    }
}

impl JobHandle {
    /// Cancels the job if it has not started: returns true and `done` is never called.
    /// Returns false if it already started (then `done` runs as usual).
    pub fn cancel(&self) -> bool {
        todo!()
    }
}
