//! Futex waiting time per process for `/metrics`: the kernel adds up each process's futex
//! sleeps (`FUTEX_TIME`, by tgid); the agent names each process once (its name and cgroup, as
//! the other per-process families do), keeps the totals of processes that exited (and deletes
//! their kernel entries, so the table holds live processes only), and hands cumulative counts
//! by process to the folded counters, which never go down.

use std::collections::HashMap;

use tracer_common::FutexTime;

use crate::{
    kernel::{live::proc_exists, probes::Probes, procfs, workload},
    sinks::metrics::ProcessKey,
};

/// Process names kept; past this many, new ones count as "other" (bounded labels).
const MAX_NAMES: usize = 4096;

#[derive(Default)]
pub struct UserLockTime {
    /// Live processes: tgid → (its name, its last reading).
    live: HashMap<u32, (ProcessKey, FutexTime)>,
    /// Totals of processes gone, by name.
    retired: HashMap<ProcessKey, FutexTime>,
    /// Snapshots since the last refresh.
    tick: u32,
}

/// Refresh every this many snapshots (2 s at the default 250 ms): a walk of a per-CPU table.
const EVERY: u32 = 8;

fn add(a: FutexTime, b: FutexTime) -> FutexTime {
    FutexTime {
        waits: a.waits + b.waits,
        wait_ns: a.wait_ns + b.wait_ns,
    }
}

impl UserLockTime {
    /// Reads the kernel's table when due: names new processes (/proc), retires the ones gone
    /// and deletes their entries. `admits`: the agent's scope.
    pub fn refresh(&mut self, probes: &mut Probes, mut admits: impl FnMut(u32) -> bool) {
        self.tick += 1;
        if self.tick < EVERY {
            return;
        }
        self.tick = 0;
        let Ok(table) = probes.futex_time() else {
            return;
        };
        let mut gone = Vec::new();
        for (tgid, t) in table {
            if !admits(tgid) {
                continue;
            }
            if !proc_exists(tgid) {
                gone.push(tgid);
                let key = self
                    .live
                    .remove(&tgid)
                    .map(|(k, _)| k)
                    .unwrap_or_else(ProcessKey::other);
                self.retire(key, t);
                continue;
            }
            match self.live.get_mut(&tgid) {
                Some((_, last)) => *last = t,
                None => {
                    let key = self.name(tgid);
                    self.live.insert(tgid, (key, t));
                }
            }
        }
        // Processes whose entry went away without being seen gone (never, as the agent alone
        // deletes entries; kept so a live list cannot grow stale).
        self.live.retain(|tgid, _| !gone.contains(tgid));
        if !gone.is_empty() {
            let _ = probes.forget_futex_time(&gone);
        }
    }

    fn name(&self, tgid: u32) -> ProcessKey {
        let known = self.live.len() + self.retired.len();
        if known >= MAX_NAMES {
            return ProcessKey::other();
        }
        let comm = procfs::comm_of(tgid).unwrap_or_else(|| "?".into());
        ProcessKey::new(comm, workload::attribute(tgid).as_deref())
    }

    fn retire(&mut self, key: ProcessKey, t: FutexTime) {
        let key = if self.retired.len() < MAX_NAMES || self.retired.contains_key(&key) {
            key
        } else {
            ProcessKey::other()
        };
        let r = self.retired.entry(key).or_default();
        *r = add(*r, t);
    }

    /// Cumulative (waits, nanoseconds) by process name: live processes' readings plus the
    /// totals of those gone.
    pub fn totals(&self) -> HashMap<ProcessKey, FutexTime> {
        let mut out = self.retired.clone();
        for (key, t) in self.live.values() {
            let e = out.entry(key.clone()).or_default();
            *e = add(*e, *t);
        }
        out
    }

    /// Processes with a live entry.
    pub fn live(&self) -> usize {
        self.live.len()
    }
}
