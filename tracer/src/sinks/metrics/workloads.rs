//! Per-process and per-workload families, bounded to the top N plus "other": page-fault gauges
//! (ranked afresh at every scrape: a gauge may move between series) and the folded counters
//! (`fold`: they never go down).

use std::{collections::HashMap, hash::Hash};

use prometheus::proto::{Metric, MetricFamily, MetricType};
use tracer_common::ProcFaults;

use super::{
    encode::{counter, counter_f64, family, gauge},
    MetricsInput, ProcessKey, UserLockMeasure, TOP_PROCESSES, TOP_WORKLOADS,
};

/// The fault gauges of one process or workload: by mode (user, kernel) when per-fault counters
/// split them (full mode), otherwise one "all" series (the kernel's own counts from /proc).
fn fault_gauges(who: &[(&str, &str)], p: &ProcFaults, per_mode: bool) -> Vec<Metric> {
    let with_mode = |mode| {
        let mut pairs = who.to_vec();
        pairs.push(("mode", mode));
        pairs
    };
    if per_mode {
        vec![
            gauge(&with_mode("user"), p.user as f64),
            gauge(&with_mode("kernel"), p.kernel as f64),
        ]
    } else {
        vec![gauge(&with_mode("all"), p.user as f64)]
    }
}

fn add_faults(a: ProcFaults, b: ProcFaults) -> ProcFaults {
    ProcFaults {
        user: a.user + b.user,
        kernel: a.kernel + b.kernel,
        under_lock: a.under_lock + b.under_lock,
        mmap_lock: a.mmap_lock + b.mmap_lock,
    }
}

/// The top `n` names by faults, the rest summed under `other` (always there: the series stay
/// put as processes come and go, and the family is never empty). For gauges only: a counter
/// folded this way would go down (see `fold`).
fn top_faults<N: Clone + Eq + Hash + Ord>(
    n: usize,
    items: &[(N, ProcFaults)],
    other: N,
) -> Vec<(N, ProcFaults)> {
    let mut by_name: HashMap<&N, ProcFaults> = HashMap::new();
    for (name, v) in items {
        let e = by_name.entry(name).or_default();
        *e = add_faults(*e, *v);
    }
    let key = |p: &ProcFaults| p.user + p.kernel;
    let mut sorted: Vec<(&N, ProcFaults)> = by_name.into_iter().collect();
    sorted.sort_by(|a, b| key(&b.1).cmp(&key(&a.1)).then(a.0.cmp(b.0)));
    let mut out: Vec<(N, ProcFaults)> = sorted
        .iter()
        .take(n)
        .map(|(name, v)| ((*name).clone(), *v))
        .collect();
    let rest = sorted
        .iter()
        .skip(n)
        .fold(ProcFaults::default(), |a, (_, v)| add_faults(a, *v));
    out.push((other, rest));
    out
}

pub(super) fn families(m: &MetricsInput) -> Vec<MetricFamily> {
    let per_mode = m.proc_faults_per_mode;
    let faults = top_faults(TOP_PROCESSES, &m.proc_faults, ProcessKey::other());
    let workload_faults = top_faults(TOP_WORKLOADS, &m.faults_by_workload, "other".to_owned());
    let folded = &m.folded;
    vec![
        family(
            "faultline_top_process_page_faults",
            "Page faults of live processes so far, for the top processes by faults (the rest as \"other\"), by mode: user and kernel with --detail full, otherwise \"all\" (the kernel's own minor+major counts from /proc). A gauge: processes come and go.",
            MetricType::GAUGE,
            faults
                .iter()
                .flat_map(|(who, p)| fault_gauges(&who.labels(), p, per_mode))
                .collect(),
        ),
        family(
            "faultline_process_slow_waits_total",
            "Slow lock waits (mmap_lock and kernel locks) seen by the agent, for the top processes (the rest as \"other\"). A process's series counts from when it was first among the top; \"other\" counts everything else, and neither ever goes down.",
            MetricType::COUNTER,
            folded
                .process_slow_waits
                .series()
                .iter()
                .map(|(who, (), v)| counter(&who.labels(), *v))
                .collect(),
        ),
        family(
            "faultline_process_user_lock_waits_total",
            "Lock-shaped futex sleeps that ended (user-space lock waits: pthread mutexes and rwlocks, PI futexes, runtimes' futex locks; not condition variables, barriers or semaphores), for the top processes by futex waiting time (the rest as \"other\"); never going down.",
            MetricType::COUNTER,
            folded
                .process_user_locks
                .series()
                .iter()
                .filter(|(_, m, _)| *m == UserLockMeasure::Waits)
                .map(|(who, _, v)| counter(&who.labels(), *v))
                .collect(),
        ),
        family(
            "faultline_process_user_lock_wait_seconds_total",
            "Time spent in futex sleeps that ended, for the same processes as faultline_process_user_lock_waits_total; never going down.",
            MetricType::COUNTER,
            folded
                .process_user_locks
                .series()
                .iter()
                .filter(|(_, m, _)| *m == UserLockMeasure::WaitNs)
                .map(|(who, _, v)| counter_f64(&who.labels(), *v as f64 / 1e9))
                .collect(),
        ),
        family(
            "faultline_workload_page_faults",
            "Page faults of live processes so far, summed by workload (systemd unit, container, pod; top workloads, the rest as \"other\"), by mode: user and kernel with --detail full, otherwise \"all\" (minor+major from /proc). A gauge: processes come and go.",
            MetricType::GAUGE,
            workload_faults
                .iter()
                .flat_map(|(w, p)| fault_gauges(&[("workload", w)], p, per_mode))
                .collect(),
        ),
        family(
            "faultline_workload_slow_waits_total",
            "Slow lock waits seen by the agent, by workload (top workloads, the rest as \"other\"; never going down, like faultline_process_slow_waits_total).",
            MetricType::COUNTER,
            folded
                .workload_slow_waits
                .series()
                .iter()
                .map(|(w, (), v)| counter(&[("workload", w)], *v))
                .collect(),
        ),
        family(
            "faultline_workload_alerts_total",
            "Alerts raised, by the workload of the task each is about (top workloads, the rest as \"other\"; never going down) and kind.",
            MetricType::COUNTER,
            folded
                .workload_alerts
                .series()
                .iter()
                .map(|(w, kind, n)| counter(&[("workload", w), ("kind", kind.as_str())], *n))
                .collect(),
        ),
    ]
}
