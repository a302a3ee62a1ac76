//! Per-process page faults for `/metrics`, cached and refreshed at most every `REFRESH`, with
//! the /proc reads done off the agent's lock.
//!
//! Naming the processes that fault the most means reading /proc: every process's stat (unless
//! the probes count faults per process, full mode), then the cgroup and name of the top ones.
//! That is tens of milliseconds on a busy host. Done under the agent's lock on every scrape, a
//! client scraping in a loop would hold the lock most of the time, and the ring-buffer consumer
//! needs it for every record. So one refresh serves every scrape for `REFRESH` (a Prometheus
//! scrape interval is 15 s or more: two scrapes that close see the same gauges), only one runs
//! at a time, and none of it holds the agent's lock (the kernel's per-process map, walked at
//! most once per `REFRESH`, is read on a handle of its own).

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use tracer_common::ProcFaults;

use crate::{
    kernel::{live, procfs, scope::ScopeFilter, workload},
    sinks::metrics::{ProcessKey, TOP_PROCESSES},
};

/// How long one refresh serves scrapes.
pub const REFRESH: Duration = Duration::from_secs(2);

/// Names only the processes that can make the top N: the rest are "other" without a /proc read.
const NAMED_PROCESSES: usize = 3 * TOP_PROCESSES;

/// Per-process faults: (process, faults) and (workload, faults), the largest named first.
pub type FaultLists = (Vec<(ProcessKey, ProcFaults)>, Vec<(String, ProcFaults)>);

/// What the kernel's per-process fault map holds, read when a refresh is due: its counters
/// (used in full mode) and its number of entries (always exported).
pub struct KernelFaults {
    pub faults: Vec<(u32, ProcFaults)>,
    pub per_fault: bool,
}

#[derive(Clone)]
pub struct Refreshed {
    pub lists: FaultLists,
    /// Entries of the kernel's per-process fault map.
    pub entries: usize,
}

pub struct ProcessFaults {
    /// This cache's own scope filter: admitting a process reads /proc (in `netns` scope), which
    /// the agent's own filter would do under the lock.
    scope: Mutex<ScopeFilter>,
    last: Mutex<Option<(Instant, Refreshed)>>,
    /// Held by the one refresh in progress; other scrapes wait for it (off the agent's lock)
    /// and take its result.
    refreshing: Mutex<()>,
}

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Plain data: a panic elsewhere leaves it usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl ProcessFaults {
    pub fn new(scope: ScopeFilter) -> Self {
        Self {
            scope: Mutex::new(scope),
            last: Mutex::new(None),
            refreshing: Mutex::new(()),
        }
    }

    fn fresh(&self) -> Option<Refreshed> {
        locked(&self.last)
            .as_ref()
            .filter(|(at, _)| at.elapsed() < REFRESH)
            .map(|(_, r)| r.clone())
    }

    /// The faults as of at most `REFRESH` ago. `read_kernel` reads the kernel's map; it runs
    /// only when a refresh is due. Never call this holding the agent's lock: it may wait for
    /// another scrape's refresh.
    pub fn get(
        &self,
        read_kernel: impl FnOnce() -> Result<KernelFaults, String>,
    ) -> Result<Refreshed, String> {
        if let Some(r) = self.fresh() {
            return Ok(r);
        }
        let _one = locked(&self.refreshing);
        // Refreshed by another scrape while this one waited.
        if let Some(r) = self.fresh() {
            return Ok(r);
        }
        let kernel = read_kernel()?;
        let r = self.refresh(kernel);
        *locked(&self.last) = Some((Instant::now(), r.clone()));
        Ok(r)
    }

    /// Ranks and names the processes: /proc reads, off the agent's lock.
    fn refresh(&self, kernel: KernelFaults) -> Refreshed {
        let entries = kernel.faults.len();
        // Per-fault counters exist in full mode only; otherwise the kernel's own per-process
        // counts (minor + major faults, /proc) stand in, with the mode label saying so.
        let mut faults: Vec<(u32, Option<String>, ProcFaults)> = if kernel.per_fault {
            kernel
                .faults
                .into_iter()
                .map(|(p, f)| (p, None, f))
                .collect()
        } else {
            procfs::process_faults()
                .into_iter()
                .map(|(pid, comm, minor, major)| {
                    let f = ProcFaults {
                        user: minor + major,
                        ..ProcFaults::default()
                    };
                    (pid, Some(comm), f)
                })
                .collect()
        };
        {
            let mut scope = locked(&self.scope);
            if !scope.is_host() {
                faults.retain(|(pid, _, _)| scope.admits(*pid));
            }
        }
        faults.sort_by_key(|(_, _, f)| std::cmp::Reverse(f.user + f.kernel));
        let lists = faults
            .into_iter()
            .enumerate()
            .map(|(i, (pid, comm, f))| {
                if i < NAMED_PROCESSES {
                    let attribution = workload::attribute(pid);
                    let comm = comm
                        .or_else(|| live::identify(pid).and_then(|(_, comm)| comm))
                        .unwrap_or_else(|| "?".into());
                    let key = ProcessKey::new(comm, attribution.as_deref());
                    let workload = key.workload.clone();
                    ((key, f), (workload, f))
                } else {
                    ((ProcessKey::other(), f), ("other".into(), f))
                }
            })
            .unzip();
        Refreshed { lists, entries }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::scope::Scope;
    use std::cell::Cell;

    fn kernel(faults: Vec<(u32, ProcFaults)>) -> KernelFaults {
        KernelFaults {
            faults,
            per_fault: true,
        }
    }

    #[test]
    fn one_refresh_serves_scrapes_until_it_is_due_again() {
        let cache = ProcessFaults::new(ScopeFilter::new(Scope::Host).expect("host scope"));
        let reads = Cell::new(0);
        let me = std::process::id();
        let f = |user| ProcFaults {
            user,
            ..ProcFaults::default()
        };
        let read = |n| {
            reads.set(reads.get() + 1);
            Ok(kernel(vec![(me, f(n)), (u32::MAX - 1, f(1))]))
        };
        let first = cache.get(|| read(7)).expect("first");
        assert_eq!(reads.get(), 1);
        assert_eq!(first.entries, 2);
        // Largest first, named from /proc (this process exists); a pid that does not is "?".
        assert_eq!(first.lists.0[0].1.user, 7);
        assert_ne!(first.lists.0[0].0.process, "?");
        assert_eq!(first.lists.0[1].0.process, "?");
        // Within REFRESH: the same result, no kernel read.
        let second = cache.get(|| read(9)).expect("second");
        assert_eq!(reads.get(), 1, "a fresh result is not read again");
        assert_eq!(second.lists.0[0].1.user, 7);
        // Past it: read again.
        if let Some((at, _)) = locked(&cache.last).as_mut() {
            *at = at
                .checked_sub(REFRESH)
                .expect("the host is up longer than REFRESH");
        }
        let third = cache.get(|| read(9)).expect("third");
        assert_eq!(reads.get(), 2);
        assert_eq!(third.lists.0[0].1.user, 9);
    }

    #[test]
    fn a_failed_kernel_read_is_reported_and_not_cached() {
        let cache = ProcessFaults::new(ScopeFilter::new(Scope::Host).expect("host scope"));
        assert!(cache.get(|| Err("map gone".into())).is_err());
        let ok = cache.get(|| Ok(kernel(vec![]))).expect("retried");
        assert_eq!(ok.entries, 0);
    }
}
