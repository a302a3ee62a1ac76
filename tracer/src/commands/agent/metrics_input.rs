//! What a scrape shows: the model's blocked tasks and the agent's own counts folded so that none
//! goes down, copied under the agent's lock (no /proc read, no map walk there); the probes'
//! aggregate maps read after it on their own handles; per-process faults from a cache refreshed
//! off the lock (`process_faults`).

use std::{collections::BTreeMap, sync::Mutex};

use crate::{
    core::model::Blocked,
    kernel::probes::Detail,
    sinks::metrics::{FoldedCounters, MetricsInput, SeriesMemory},
};

use super::{
    process_faults::KernelFaults,
    state::{lock, AgentState},
    telemetry::Telemetry,
};

/// The agent's cumulative counts, folded into the series a scrape shows (the path every scrape
/// takes; see `metrics::fold` for why it keeps a memory).
pub fn folded_counters(
    series: &mut SeriesMemory,
    telemetry: &Telemetry,
    user_locks: &std::collections::HashMap<
        crate::sinks::metrics::ProcessKey,
        tracer_common::FutexTime,
    >,
    alerts_by_workload: &BTreeMap<(String, crate::core::detect::AlertKind), u64>,
) -> FoldedCounters {
    series.fold(
        &telemetry.slow_waits_by_process,
        user_locks,
        &telemetry.slow_waits_by_workload,
        alerts_by_workload,
    )
}

/// Blocked tasks of the model, by what they wait on (every kind present, zero or not).
fn blocked(st: &AgentState) -> BTreeMap<&'static str, u64> {
    let mut blocked: BTreeMap<&'static str, u64> =
        ["mmap_lock", "kernel_lock", "uffd", "user_lock"]
            .iter()
            .map(|k| (*k, 0))
            .collect();
    let model = st.feed.engine().model();
    for tid in &model.blocked {
        let kind = match model.task(*tid).and_then(|t| t.blocked.as_ref()) {
            Some(Blocked::MmapLock { .. }) => "mmap_lock",
            Some(Blocked::KernelLock { .. }) => "kernel_lock",
            Some(Blocked::Uffd { .. }) => "uffd",
            Some(Blocked::UserLock { .. }) => "user_lock",
            None => continue,
        };
        *blocked.entry(kind).or_default() += 1;
    }
    blocked
}

/// What is copied under the lock: the model's counts and the agent's own, and the programs'
/// statistics (one small read per program); no /proc, and none of the aggregate maps' lookups.
fn under_lock(st: &mut AgentState) -> MetricsInput {
    let model = st.feed.engine().model();
    let model_entries = [
        ("tasks", model.tasks.len()),
        ("mm_locks", model.mm_locks.len()),
        ("uffds", model.uffds.len()),
    ];
    let user_locks = st.user_lock_time.totals();
    let folded = folded_counters(
        &mut st.series,
        &st.telemetry,
        &user_locks,
        st.sink.counts_by_workload(),
    );
    MetricsInput {
        version: env!("CARGO_PKG_VERSION"),
        kernel: st.kernel_release.clone(),
        counters: Vec::new(),
        hists: Vec::new(),
        uffd_errors: Vec::new(),
        proc_faults: Vec::new(),
        proc_faults_per_mode: st.probes.detail() == Detail::Full,
        task_entries: st.task_entries,
        task_entries_reclaimed: st.reclaimer.reclaimed(),
        task_capacity: st.probes.max_tasks(),
        proc_fault_entries: 0,
        programs: st.probes.program_stats(),
        alerts: st.sink.counts().clone(),
        blocked: blocked(st),
        events_received: st.telemetry.events_received,
        decode_errors: st.telemetry.decode_errors,
        model_entries,
        tasks_state_unknown: st.feed.unknown().len(),
        alerts_refuted: st.feed.suppressed(),
        uffd_ioctl_hooks: st.probes.ioctl_hooks_attached(),
        faults_by_workload: Vec::new(),
        folded,
        api_refused: [("render", 0), ("scrape", 0)],
        features: st
            .features
            .iter()
            .map(|a| (a.feature.name(), a.available()))
            .collect(),
        lock_profile: None,
        user_lock_entries: (
            st.futex_entries,
            st.probes.max_tasks(),
            st.user_lock_time.live(),
        ),
    }
}

/// A scrape: the snapshot under the lock, then the aggregate maps on their own handles, then
/// the cached per-process faults (`process_faults`), all of it after the lock.
pub fn metrics_input(shared: &Mutex<AgentState>) -> Result<MetricsInput, String> {
    let (mut m, aggregates, cache, profile) = {
        let mut st = lock(shared);
        (
            under_lock(&mut st),
            st.aggregates.clone(),
            st.process_faults.clone(),
            st.lock_profile.clone(),
        )
    };
    m.lock_profile = profile.scrape()?;
    let e = |e: crate::kernel::probes::ProbeError| e.to_string();
    m.counters = aggregates.counters().map_err(e)?.0;
    m.hists = aggregates.histograms().map_err(e)?;
    m.uffd_errors = aggregates.uffd_errors().map_err(e)?;
    let faults = cache.get(|| {
        Ok(KernelFaults {
            faults: aggregates.proc_faults.read(),
            per_fault: m.proc_faults_per_mode,
        })
    })?;
    let (proc_faults, by_workload) = faults.lists;
    m.proc_faults = proc_faults;
    m.faults_by_workload = by_workload;
    m.proc_fault_entries = faults.entries;
    Ok(m)
}
