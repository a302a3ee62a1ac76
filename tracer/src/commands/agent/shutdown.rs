//! Stopping: the probes are detached first, so no new record is written; then the ring buffer
//! is drained to empty, within a bound; then a last snapshot confirms or drops what a loss left
//! open. A second SIGTERM or SIGINT during the drain ends it at once.

use std::time::{Duration, Instant};

use crate::kernel::stream::MAX_BATCH;

/// The smallest record the kernel writes (the 48-byte header alone) plus the ring buffer's own
/// 8-byte header: a full ring buffer holds at most `bytes / SMALLEST_RECORD` records.
const SMALLEST_RECORD: usize = 48 + 8;

/// How long a drain may take: a stop must stay prompt (systemd, a terminal's Ctrl-C) even
/// when the ring buffer is full and the model slow to take it.
pub const DRAIN_TIME: Duration = Duration::from_secs(2);

/// When a drain stops.
#[derive(Clone, Copy, Debug)]
pub struct DrainBound {
    pub time: Duration,
    /// Batches (of `MAX_BATCH` records at most): more than a full ring buffer holds, so that
    /// hitting it means records still come in (the probes were not detached).
    pub batches: usize,
}

impl DrainBound {
    /// The bound for a ring buffer of `ring_bytes`.
    pub fn for_ring(ring_bytes: u32) -> Self {
        Self {
            time: DRAIN_TIME,
            batches: (ring_bytes as usize / SMALLEST_RECORD).div_ceil(MAX_BATCH) + 1,
        }
    }
}

/// Why a drain ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DrainEnd {
    /// The ring buffer was empty: every record was read.
    Empty,
    /// `DrainBound::time` passed first; what is left is lost.
    TimeBound,
    /// `DrainBound::batches` were read and records kept coming.
    BatchBound,
    /// A second stop request came.
    Interrupted,
}

#[derive(Clone, Copy, Debug)]
pub struct Drained {
    pub records: usize,
    pub end: DrainEnd,
    pub took: Duration,
}

/// Calls `batch` (which hands over at most one batch of records and says how many) until it
/// finds the buffer empty, the bound is reached, or `interrupted` says a second stop request
/// came, whichever first. `interrupted` is asked before each batch, so a second signal never
/// waits for more than one batch. Synchronous: the drain is all work and no waiting, and the
/// signal is counted by a handler of its own (`kernel::stop_requests`).
pub fn drain(
    mut batch: impl FnMut() -> usize,
    bound: DrainBound,
    interrupted: impl Fn() -> bool,
) -> Drained {
    let started = Instant::now();
    let mut records = 0;
    let mut batches = 0;
    let end = loop {
        if started.elapsed() >= bound.time {
            break DrainEnd::TimeBound;
        }
        if batches >= bound.batches {
            break DrainEnd::BatchBound;
        }
        if interrupted() {
            break DrainEnd::Interrupted;
        }
        let n = batch();
        batches += 1;
        records += n;
        // Empty only when a call finds nothing: a short batch may have raced a program that was
        // still finishing its record as it was detached.
        if n == 0 {
            break DrainEnd::Empty;
        }
    };
    Drained {
        records,
        end,
        took: started.elapsed(),
    }
}

impl std::fmt::Display for Drained {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let took = humantime::format_duration(Duration::from_millis(self.took.as_millis() as u64));
        let why = match self.end {
            DrainEnd::Empty => "the ring buffer is empty",
            DrainEnd::TimeBound => "stopped at the time bound, records left unread",
            DrainEnd::BatchBound => "stopped at the batch bound, records kept coming",
            DrainEnd::Interrupted => "interrupted by a second stop request",
        };
        write!(f, "drained {} records in {took}: {why}", self.records)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOOSE: DrainBound = DrainBound {
        time: Duration::from_secs(60),
        batches: 1000,
    };

    #[test]
    fn a_drain_reads_batches_until_one_finds_the_buffer_empty() {
        let mut left = 3 * MAX_BATCH + 7;
        let got = drain(
            || {
                let n = left.min(MAX_BATCH);
                left -= n;
                n
            },
            LOOSE,
            || false,
        );
        assert_eq!(got.end, DrainEnd::Empty);
        assert_eq!(got.records, 3 * MAX_BATCH + 7, "every record read");
    }

    #[test]
    fn a_source_that_never_empties_stops_at_the_batch_bound() {
        let bound = DrainBound::for_ring(4 << 20);
        let got = drain(|| MAX_BATCH, bound, || false);
        assert_eq!(got.end, DrainEnd::BatchBound);
        assert_eq!(got.records, bound.batches * MAX_BATCH);
        assert!(
            bound.batches * MAX_BATCH > (4 << 20) / SMALLEST_RECORD,
            "the bound holds a full ring buffer: {bound:?}"
        );
    }

    #[test]
    fn a_slow_drain_stops_at_the_time_bound() {
        let bound = DrainBound {
            time: Duration::from_millis(50),
            batches: usize::MAX,
        };
        let got = drain(
            || {
                std::thread::sleep(Duration::from_millis(10));
                1
            },
            bound,
            || false,
        );
        assert_eq!(got.end, DrainEnd::TimeBound);
        assert!(got.took < Duration::from_secs(1), "{got:?}");
    }

    #[test]
    fn a_second_stop_request_ends_the_drain_before_the_next_batch() {
        // The request comes while the second batch is read.
        let calls = std::cell::Cell::new(0);
        let got = drain(
            || {
                calls.set(calls.get() + 1);
                MAX_BATCH
            },
            LOOSE,
            || calls.get() >= 2,
        );
        assert_eq!(got.end, DrainEnd::Interrupted);
        assert_eq!(calls.get(), 2, "no batch read after the request");
        assert_eq!(got.records, 2 * MAX_BATCH);
    }
}
