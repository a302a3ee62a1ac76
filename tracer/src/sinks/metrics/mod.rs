//! Prometheus exposition of the kernel aggregates and the engine's state.
//!
//! The kernel keeps log2 histograms and per-CPU counters; they are converted here, at scrape
//! time, into Prometheus families (the `prometheus` crate's data model and text encoder), so
//! nothing is double-counted and a scrape costs a few hundred map reads, not a stream.
//! Naming follows Prometheus conventions: prefix `faultline_`, base units, `_total` counters,
//! bounded labels (modes, lock types, ops, errnos, alert kinds, and process names folded into
//! the top N plus "other").
//!
//! A sink: it renders a finished `MetricsInput` that the agent gathers. The families, by group:
//! `health` (the agent on itself), `locks`, `faults`, `uffd`, `graph` (the engine now),
//! `workloads` (per process and per workload); `fold` keeps the per-process counters from ever
//! going down; `encode` builds families.

mod encode;
mod faults;
pub mod fold;
mod graph;
mod health;
mod locks;
mod uffd;
mod workloads;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use prometheus::{proto::MetricFamily, Encoder, TextEncoder};
use tracer_common::{Counter as K, ProcFaults, HIST_BUCKETS};

use faultline_core::workload::Attribution;

use crate::core::detect::{AlertKind, Confidence};

pub use fold::{
    Folded, FoldedCounters, LockMeasure, LockSeriesMemory, LockSub, SeriesMemory, UserLockMeasure,
};

/// Processes named individually in per-process series; the rest are summed as "other".
pub const TOP_PROCESSES: usize = 10;
/// Workloads (systemd units, containers, pods) named individually; the rest are "other".
pub const TOP_WORKLOADS: usize = 10;

/// One log2 histogram's buckets: bucket `b` counts durations in `[2^b, 2^(b+1))` ns.
pub type Log2Buckets = [u64; HIST_BUCKETS as usize];

/// Everything one scrape exposes, gathered by the agent.
pub struct MetricsInput {
    pub version: &'static str,
    pub kernel: String,
    pub counters: Vec<u64>,
    pub hists: Vec<Log2Buckets>,
    pub uffd_errors: Vec<u64>,
    /// (process, faults) per live process.
    pub proc_faults: Vec<(ProcessKey, ProcFaults)>,
    /// Whether `proc_faults` splits user and kernel faults (full mode's per-fault counters);
    /// otherwise `user` holds all of a process's faults from /proc (mode "all").
    pub proc_faults_per_mode: bool,
    pub task_entries: usize,
    /// Kernel per-task entries deleted because their task was gone from the host.
    pub task_entries_reclaimed: u64,
    pub task_capacity: u32,
    pub proc_fault_entries: usize,
    /// (program, run time ns, run count) from the kernel's BPF statistics.
    pub programs: Vec<(String, u64, u64)>,
    pub alerts: BTreeMap<(AlertKind, Confidence), u64>,
    /// Blocked tasks by what they wait on.
    pub blocked: BTreeMap<&'static str, u64>,
    pub events_received: u64,
    pub decode_errors: u64,
    /// Entries of the live model: tasks, mm lock tables, userfaultfd contexts.
    pub model_entries: [(&'static str, usize); 3],
    /// Tasks whose state is unknown since the last ring-buffer loss, until a snapshot confirms.
    pub tasks_state_unknown: usize,
    /// Alerts held after a loss and dropped because the next snapshot refuted them.
    pub alerts_refuted: u64,
    /// Whether the userfaultfd ioctl hooks are attached now.
    pub uffd_ioctl_hooks: bool,
    /// (workload label, faults) per live process (see `workload::Attribution::label`).
    pub faults_by_workload: Vec<(String, ProcFaults)>,
    /// Slow waits by process and by workload, alerts by workload: folded by the agent's
    /// `SeriesMemory` so that no series goes down.
    pub folded: FoldedCounters,
    /// API requests answered 503 because too many were rendered at once, by gate (`render`,
    /// `scrape`): filled by the HTTP sink, which owns the gates (`render_gate`).
    pub api_refused: [(&'static str, u64); 2],
    /// (feature, available) for the features that depend on privileges, decided at start
    /// (`kernel::privileges`).
    pub features: Vec<(&'static str, bool)>,
    /// The lock profile's series and tables; `None` when the profile is off.
    pub lock_profile: Option<ProfileScrape>,
    /// (futex sleeps in progress in the kernel's table, its capacity, processes with waiting
    /// time in the kernel's table).
    pub user_lock_entries: (usize, u32, usize),
}

/// What a scrape shows of the lock profile.
pub struct ProfileScrape {
    /// Contended kernel-lock waits by lock and type, folded by the agent's `LockSeriesMemory`.
    pub series: Folded<String, LockSub>,
    /// (keys in the kernel's aggregate table, its capacity).
    pub entries: (usize, u32),
    /// (stacks stored, the stack table's capacity).
    pub stacks: (usize, u32),
    /// Idle aggregates the agent moved out of the kernel's table and holds.
    pub aged_out: usize,
}

impl MetricsInput {
    fn counter(&self, k: K) -> u64 {
        self.counters.get(k as usize).copied().unwrap_or(0)
    }

    fn hist(&self, i: u32) -> Log2Buckets {
        self.hists
            .get(i as usize)
            .copied()
            .unwrap_or([0; HIST_BUCKETS as usize])
    }
}

/// A process as the per-process families name it: its name and where it runs (its cgroup v2
/// path and the workload label that path gives, see `workload::Attribution::label`). Processes
/// of one name in one cgroup are one series.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProcessKey {
    pub process: String,
    pub workload: String,
    pub cgroup: String,
}

impl ProcessKey {
    pub fn new(process: String, attribution: Option<&Attribution>) -> Self {
        let (workload, cgroup) = attribution.map_or_else(
            || ("unknown".to_owned(), "unknown".to_owned()),
            |a| (a.label(), a.cgroup.clone()),
        );
        Self {
            process,
            workload,
            cgroup,
        }
    }

    /// What every process outside the top N is summed under.
    pub fn other() -> Self {
        Self {
            process: "other".into(),
            workload: "other".into(),
            cgroup: "other".into(),
        }
    }

    fn labels(&self) -> [(&str, &str); 3] {
        [
            ("process", &self.process),
            ("workload", &self.workload),
            ("cgroup", &self.cgroup),
        ]
    }
}

pub fn families(m: &MetricsInput) -> Vec<MetricFamily> {
    let mut f = health::families(m);
    f.extend(locks::families(m));
    f.extend(faults::families(m));
    f.extend(uffd::families(m));
    f.extend(workloads::families(m));
    f.extend(graph::families(m));
    f
}

/// The text exposition format.
pub fn render(m: &MetricsInput) -> Result<String, prometheus::Error> {
    let mut out = Vec::new();
    // The encoder refuses a family without samples (e.g. no programs loaded yet): leave such
    // a family out rather than fail the scrape.
    let families: Vec<MetricFamily> = families(m)
        .into_iter()
        .filter(|f| !f.get_metric().is_empty())
        .collect();
    TextEncoder::new().encode(&families, &mut out)?;
    String::from_utf8(out).map_err(|e| prometheus::Error::Msg(e.to_string()))
}
