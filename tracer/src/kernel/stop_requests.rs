//! Counting stop requests (SIGTERM, SIGINT) exactly, whatever the async runtime is doing.
//!
//! The first request is awaited through tokio's signals, as everything else the commands wait
//! for. The second one ("stop now, skip the drain") cannot be: tokio hands a signal to a task
//! only when its driver runs, and it folds every signal that came since the last `recv` into
//! one. A drain that keeps a worker busy (record's main loop on a full ring buffer, the agent's
//! synchronous drain) delays the driver, so two requests 300 ms apart became one, and the drain
//! ran to its 10 s bound (seen in CI). A handler of our own counts every delivery as it happens.

use std::sync::{
    atomic::{AtomicUsize, Ordering},
    Arc,
};

use thiserror::Error;

#[derive(Debug, Error)]
#[error("installing a handler for signal {signal}")]
pub struct InstallError {
    signal: libc::c_int,
    #[source]
    source: std::io::Error,
}

/// How many stop requests came since `install`.
#[derive(Clone, Debug)]
pub struct StopRequests {
    count: Arc<AtomicUsize>,
}

impl StopRequests {
    /// Counts SIGTERM and SIGINT from now on. The process keeps its other handlers for them
    /// (tokio's among them): the registry runs every action registered for a signal.
    pub fn install() -> Result<Self, InstallError> {
        let count = Arc::new(AtomicUsize::new(0));
        for signal in [libc::SIGTERM, libc::SIGINT] {
            let c = count.clone();
            // SAFETY: the action only increments an atomic integer, which is lock-free and
            // allocation-free, so it is async-signal-safe; it captures only an `Arc` it owns,
            // which outlives every delivery (the registration is never removed).
            unsafe {
                signal_hook_registry::register(signal, move || _ = c.fetch_add(1, Ordering::SeqCst))
            }
            .map_err(|source| InstallError { signal, source })?;
        }
        Ok(Self { count })
    }

    /// How many came so far.
    pub fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    /// True once a second one came (or more): the user wants out now.
    pub fn again(&self) -> bool {
        self.count() >= 2
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_request_is_counted_even_when_nobody_looks_in_between() {
        let stops = StopRequests::install().expect("install");
        // tokio's handler is there too in the commands; a second action must not hide ours.
        let _tokio_like = unsafe { signal_hook_registry::register(libc::SIGINT, || {}) };
        assert_eq!(stops.count(), 0);
        // SAFETY: raise delivers to this thread, synchronously, before it returns.
        unsafe {
            libc::raise(libc::SIGINT);
            libc::raise(libc::SIGTERM);
        }
        assert_eq!(stops.count(), 2, "two requests, two counts");
        assert!(stops.again());
    }
}
