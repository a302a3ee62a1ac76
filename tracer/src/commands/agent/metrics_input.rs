//! What a scrape shows, gathered under the agent's lock: the probes' maps, per-process faults
//! (the probes' in full mode, /proc's otherwise), the model's blocked tasks, and the agent's
//! own counts folded so that none goes down.

use std::collections::BTreeMap;

use tracer_common::ProcFaults;

use crate::{
    core::model::Blocked,
    kernel::{live, probes::Detail, procfs, stats, workload},
    sinks::metrics::{FoldedCounters, MetricsInput, ProcessKey, SeriesMemory, TOP_PROCESSES},
};

use super::{state::AgentState, telemetry::Telemetry};

/// Names only the processes that can make the top N: the rest are "other" without a /proc read.
const NAMED_PROCESSES: usize = 3 * TOP_PROCESSES;

/// The agent's cumulative counts, folded into the series a scrape shows (the path every scrape
/// takes; see `metrics::fold` for why it keeps a memory).
pub fn folded_counters(
    series: &mut SeriesMemory,
    telemetry: &Telemetry,
    alerts_by_workload: &BTreeMap<(String, crate::core::detect::AlertKind), u64>,
) -> FoldedCounters {
    series.fold(
        &telemetry.slow_waits_by_process,
        &telemetry.slow_waits_by_workload,
        alerts_by_workload,
    )
}

/// Per-process faults: (process, faults) and (workload, faults), the largest named first.
type FaultLists = (Vec<(ProcessKey, ProcFaults)>, Vec<(String, ProcFaults)>);

fn process_faults(st: &mut AgentState, per_fault: bool) -> Result<(FaultLists, usize), String> {
    let kernel_faults = st.probes.proc_faults().map_err(|e| e.to_string())?;
    let entries = kernel_faults.len();
    // Per-fault counters exist in full mode only; otherwise the kernel's own per-process
    // counts (minor + major faults, /proc) stand in, with the mode label saying so.
    let mut faults: Vec<(u32, Option<String>, ProcFaults)> = if per_fault {
        kernel_faults
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
    if !st.scope.is_host() {
        faults.retain(|(pid, _, _)| st.scope.admits(*pid));
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
    Ok((lists, entries))
}

/// Blocked tasks of the model, by what they wait on (every kind present, zero or not).
fn blocked(st: &AgentState) -> BTreeMap<&'static str, u64> {
    let mut blocked: BTreeMap<&'static str, u64> = ["mmap_lock", "kernel_lock", "uffd"]
        .iter()
        .map(|k| (*k, 0))
        .collect();
    let model = st.feed.engine().model();
    for tid in &model.blocked {
        let kind = match model.task(*tid).and_then(|t| t.blocked.as_ref()) {
            Some(Blocked::MmapLock { .. }) => "mmap_lock",
            Some(Blocked::KernelLock { .. }) => "kernel_lock",
            Some(Blocked::Uffd { .. }) => "uffd",
            None => continue,
        };
        *blocked.entry(kind).or_default() += 1;
    }
    blocked
}

pub fn metrics_input(st: &mut AgentState) -> Result<MetricsInput, String> {
    let snap = stats::snapshot(&st.probes).map_err(|e| e.to_string())?;
    let per_fault = st.probes.detail() == Detail::Full;
    let ((proc_faults, faults_by_workload), proc_fault_entries) = process_faults(st, per_fault)?;
    let model = st.feed.engine().model();
    let model_entries = [
        ("tasks", model.tasks.len()),
        ("mm_locks", model.mm_locks.len()),
        ("uffds", model.uffds.len()),
    ];
    let folded = folded_counters(&mut st.series, &st.telemetry, st.sink.counts_by_workload());
    Ok(MetricsInput {
        version: env!("CARGO_PKG_VERSION"),
        kernel: st.kernel_release.clone(),
        counters: snap.counters.0.clone(),
        hists: snap.hists.iter().map(|h| h.0).collect(),
        uffd_errors: st.probes.uffd_errors().map_err(|e| e.to_string())?,
        proc_faults,
        proc_faults_per_mode: per_fault,
        task_entries: st.task_entries,
        task_entries_reclaimed: st.reclaimer.reclaimed(),
        task_capacity: st.probes.max_tasks(),
        proc_fault_entries,
        programs: st.probes.program_stats(),
        alerts: st.sink.counts().clone(),
        blocked: blocked(st),
        events_received: st.telemetry.events_received,
        decode_errors: st.telemetry.decode_errors,
        model_entries,
        tasks_state_unknown: st.feed.unknown().len(),
        alerts_refuted: st.feed.suppressed(),
        uffd_ioctl_hooks: st.probes.ioctl_hooks_attached(),
        faults_by_workload,
        folded,
    })
}
