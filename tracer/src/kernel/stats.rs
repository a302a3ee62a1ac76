//! Kernel-side aggregates (counters, log2 histograms) turned into numbers a human reads.

use std::{fmt, time::Duration};

use tracer_common::{Counter, Histogram, HIST_BUCKETS};

use crate::kernel::probes::{Counters, ProbeError, Probes};

/// One log2 histogram: bucket `b` counts durations in `[2^b, 2^(b+1))` ns (bucket 0 also 0 ns).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Log2Hist(pub [u64; HIST_BUCKETS as usize]);

impl Log2Hist {
    pub fn count(&self) -> u64 {
        self.0.iter().sum()
    }

    /// Upper bound of the bucket holding quantile `q` (0..=1); `None` when empty. Log2 buckets
    /// make this exact to a factor of two, which is what a summary line needs.
    pub fn quantile_upper_bound(&self, q: f64) -> Option<Duration> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (b, n) in self.0.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(Duration::from_nanos(
                    1u64.checked_shl(b as u32 + 1).unwrap_or(u64::MAX),
                ));
            }
        }
        None
    }

    pub fn since(&self, earlier: &Log2Hist) -> Log2Hist {
        let mut out = [0u64; HIST_BUCKETS as usize];
        for (i, o) in out.iter_mut().enumerate() {
            *o = self.0[i].saturating_sub(earlier.0[i]);
        }
        Log2Hist(out)
    }
}

/// Turns on the kernel's per-program run-time statistics for as long as the returned fd is
/// held (undone when it closes). Counting costs two clock reads on every run of every program.
pub fn enable_run_time() -> Result<std::os::fd::OwnedFd, aya::sys::SyscallError> {
    aya::sys::enable_stats(aya::sys::Stats::RunTime)
}

/// Counters and histograms at one moment.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub counters: Counters,
    pub hists: Vec<Log2Hist>,
}

impl Snapshot {
    pub fn hist(&self, h: Histogram) -> Log2Hist {
        self.hists
            .get(h as usize)
            .cloned()
            .unwrap_or(Log2Hist([0; HIST_BUCKETS as usize]))
    }

    pub fn since(&self, earlier: &Snapshot) -> Snapshot {
        Snapshot {
            counters: self.counters.since(&earlier.counters),
            hists: self
                .hists
                .iter()
                .zip(&earlier.hists)
                .map(|(a, b)| a.since(b))
                .collect(),
        }
    }

    /// Events the kernel could not deliver.
    pub fn lost(&self) -> u64 {
        self.counters.get(Counter::RingbufFull)
    }
}

/// Reads the kernel's counters and histograms now.
pub fn snapshot(probes: &Probes) -> Result<Snapshot, ProbeError> {
    Ok(Snapshot {
        counters: probes.counters()?,
        hists: probes.histograms()?.into_iter().map(Log2Hist).collect(),
    })
}

fn fmt_q(h: &Log2Hist, q: f64) -> String {
    match h.quantile_upper_bound(q) {
        Some(d) => format!("<{}", humantime::format_duration(round(d))),
        None => "-".into(),
    }
}

/// Drops sub-microsecond noise so `format_duration` prints "4ms 194us" rather than nanoseconds.
fn round(d: Duration) -> Duration {
    if d >= Duration::from_micros(1) {
        Duration::from_micros(d.as_micros() as u64)
    } else {
        d
    }
}

/// One summary line over an interval.
pub struct Summary<'a>(pub &'a Snapshot);

impl fmt::Display for Summary<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.0;
        let c = |k| s.counters.get(k);
        let wr = s.hist(Histogram::WaitRead);
        let ww = s.hist(Histogram::WaitWrite);
        write!(
            f,
            "mmap_lock: acquired read={} write={} failed={} | wait p99 read {} write {} | slow waits={} long holds={} recursive reads={} | unmatched releases={} | lost={} untracked tasks={}",
            c(Counter::AcquireRead),
            c(Counter::AcquireWrite),
            c(Counter::FailedRead) + c(Counter::FailedWrite),
            fmt_q(&wr, 0.99),
            fmt_q(&ww, 0.99),
            c(Counter::SlowWait),
            c(Counter::LongHold),
            c(Counter::RecursiveRead),
            c(Counter::UnmatchedRelease),
            c(Counter::RingbufFull),
            c(Counter::TaskStateFull) + c(Counter::HoldSlotsFull),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_report_the_upper_bound_of_their_bucket() {
        let mut b = [0u64; HIST_BUCKETS as usize];
        b[10] = 99; // ~1 µs
        b[20] = 1; // ~1 ms
        let h = Log2Hist(b);
        assert_eq!(
            h.quantile_upper_bound(0.5),
            Some(Duration::from_nanos(2048))
        );
        assert_eq!(
            h.quantile_upper_bound(0.99),
            Some(Duration::from_nanos(2048))
        );
        assert_eq!(
            h.quantile_upper_bound(1.0),
            Some(Duration::from_nanos(1 << 21))
        );
        assert_eq!(
            Log2Hist([0; HIST_BUCKETS as usize]).quantile_upper_bound(0.5),
            None
        );
    }

    #[test]
    fn the_top_bucket_does_not_overflow() {
        let mut b = [0u64; HIST_BUCKETS as usize];
        b[63] = 1;
        assert_eq!(
            Log2Hist(b).quantile_upper_bound(1.0),
            Some(Duration::from_nanos(u64::MAX))
        );
    }
}
