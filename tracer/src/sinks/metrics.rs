//! Prometheus exposition of the kernel aggregates and the engine's state.
//!
//! The kernel keeps log2 histograms and per-CPU counters; they are converted here, at scrape
//! time, into Prometheus families (the `prometheus` crate's data model and text encoder), so
//! nothing is double-counted and a scrape costs a few hundred map reads, not a stream.
//! Naming follows Prometheus conventions: prefix `faultline_`, base units, `_total` counters,
//! bounded labels (modes, lock types, ops, errnos, alert kinds, and process names folded into
//! the top N plus "other").

use std::{
    collections::{BTreeMap, HashMap},
    hash::Hash,
};

use prometheus::{
    proto::{Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType},
    Encoder, TextEncoder,
};
use tracer_common::{
    lock_type, uffd_op, Counter as K, Histogram as H, ProcFaults, HIST_BUCKETS, HIST_LOCK_BASE,
    HIST_UFFD_BASE,
};

use faultline_core::workload::Attribution;

use crate::{core::detect::AlertKind, kernel::stats::Log2Hist};

/// Lowest and highest log2 bucket exported: le = 2^(b+1) ns, so 1.02 µs .. 68.7 s. Faster
/// observations land in the first bucket; slower ones count in +Inf only.
const FIRST_BUCKET: usize = 9;
const LAST_BUCKET: usize = 35;
/// Processes named individually in per-process series; the rest are summed as "other".
pub const TOP_PROCESSES: usize = 10;
/// Workloads (systemd units, containers, pods) named individually; the rest are "other".
pub const TOP_WORKLOADS: usize = 10;

/// Everything one scrape exposes, gathered by the agent.
pub struct MetricsInput {
    pub version: &'static str,
    pub kernel: String,
    pub counters: Vec<u64>,
    pub hists: Vec<Log2Hist>,
    pub uffd_errors: Vec<u64>,
    /// (process, faults) per live process.
    pub proc_faults: Vec<(ProcessKey, ProcFaults)>,
    /// Whether `proc_faults` splits user and kernel faults (full mode's per-fault counters);
    /// otherwise `user` holds all of a process's faults from /proc (mode "all").
    pub proc_faults_per_mode: bool,
    /// (process, slow waits) observed by the agent.
    pub slow_waits_by_process: Vec<(ProcessKey, u64)>,
    pub task_entries: usize,
    /// Kernel per-task entries deleted because their task was gone from the host.
    pub task_entries_reclaimed: u64,
    pub task_capacity: u32,
    pub proc_fault_entries: usize,
    /// (program, run time ns, run count) from the kernel's BPF statistics.
    pub programs: Vec<(String, u64, u64)>,
    pub alerts: BTreeMap<AlertKind, u64>,
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
    /// (workload label, slow waits) observed by the agent.
    pub slow_waits_by_workload: Vec<(String, u64)>,
    /// Alerts raised, by (workload label, kind).
    pub alerts_by_workload: BTreeMap<(String, AlertKind), u64>,
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

fn labels(pairs: &[(&str, &str)]) -> Vec<LabelPair> {
    pairs
        .iter()
        .map(|(k, v)| {
            let mut l = LabelPair::default();
            l.set_name((*k).to_owned());
            l.set_value((*v).to_owned());
            l
        })
        .collect()
}

fn family(name: &str, help: &str, kind: MetricType, metrics: Vec<Metric>) -> MetricFamily {
    let mut f = MetricFamily::default();
    f.set_name(name.to_owned());
    f.set_help(help.to_owned());
    f.set_field_type(kind);
    f.set_metric(metrics);
    f
}

fn counter(pairs: &[(&str, &str)], v: u64) -> Metric {
    let mut c = Counter::default();
    c.set_value(v as f64);
    let mut m = Metric::from_label(labels(pairs));
    m.set_counter(c);
    m
}

fn gauge(pairs: &[(&str, &str)], v: f64) -> Metric {
    let mut g = Gauge::default();
    g.set_value(v);
    let mut m = Metric::from_label(labels(pairs));
    m.set_gauge(g);
    m
}

/// Cumulative `le` buckets (seconds) from log2 nanosecond buckets. The sum is estimated at each
/// bucket's midpoint (1.5 × its lower bound): the kernel keeps counts, not sums.
fn histogram(pairs: &[(&str, &str)], h: &Log2Hist) -> Metric {
    let mut buckets = Vec::with_capacity(LAST_BUCKET - FIRST_BUCKET + 1);
    let mut cumulative = 0u64;
    let mut sum = 0f64;
    for (b, n) in h.0.iter().enumerate() {
        sum += *n as f64 * 1.5 * (1u64 << b.min(62)) as f64 / 1e9;
        if b <= LAST_BUCKET {
            cumulative += n;
        }
        if (FIRST_BUCKET..=LAST_BUCKET).contains(&b) {
            let mut bucket = Bucket::default();
            bucket.set_upper_bound((1u64 << (b + 1)) as f64 / 1e9);
            bucket.set_cumulative_count(cumulative);
            buckets.push(bucket);
        }
    }
    let mut hist = Histogram::default();
    hist.set_bucket(buckets);
    hist.set_sample_count(h.count());
    hist.set_sample_sum(sum);
    let mut m = Metric::from_label(labels(pairs));
    m.set_histogram(hist);
    m
}

const LOCK_TYPES: [(u8, &str); 7] = [
    (lock_type::MUTEX, "mutex"),
    (lock_type::RWSEM_READ, "rwsem_read"),
    (lock_type::RWSEM_WRITE, "rwsem_write"),
    (lock_type::SPINLOCK, "spinlock"),
    (lock_type::RWLOCK_READ, "rwlock_read"),
    (lock_type::RWLOCK_WRITE, "rwlock_write"),
    (lock_type::OTHER, "other"),
];

const UFFD_OPS: [(u8, &str); 10] = [
    (uffd_op::API, "API"),
    (uffd_op::REGISTER, "REGISTER"),
    (uffd_op::UNREGISTER, "UNREGISTER"),
    (uffd_op::WAKE, "WAKE"),
    (uffd_op::COPY, "COPY"),
    (uffd_op::ZEROPAGE, "ZEROPAGE"),
    (uffd_op::WRITEPROTECT, "WRITEPROTECT"),
    (uffd_op::CONTINUE, "CONTINUE"),
    (uffd_op::POISON, "POISON"),
    (uffd_op::MOVE, "MOVE"),
];

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

/// The top `TOP_PROCESSES` processes by `key`, the rest summed as "other".
fn top_n<T: Copy>(
    items: &[(ProcessKey, T)],
    key: impl Fn(&T) -> u64,
    add: impl Fn(T, T) -> T,
    zero: T,
) -> Vec<(ProcessKey, T)> {
    top_n_of(TOP_PROCESSES, items, key, add, zero, ProcessKey::other())
}

/// The top `n` names by `key`, the rest summed under `other`.
fn top_n_of<N: Clone + Eq + Hash + Ord, T: Copy>(
    n: usize,
    items: &[(N, T)],
    key: impl Fn(&T) -> u64,
    add: impl Fn(T, T) -> T,
    zero: T,
    other: N,
) -> Vec<(N, T)> {
    let mut by_name: HashMap<&N, T> = HashMap::new();
    for (name, v) in items {
        let e = by_name.entry(name).or_insert(zero);
        *e = add(*e, *v);
    }
    let mut sorted: Vec<(&N, T)> = by_name.into_iter().collect();
    sorted.sort_by(|a, b| key(&b.1).cmp(&key(&a.1)).then(a.0.cmp(b.0)));
    let mut out: Vec<(N, T)> = sorted
        .iter()
        .take(n)
        .map(|(name, v)| ((*name).clone(), *v))
        .collect();
    let rest = sorted.iter().skip(n).fold(zero, |a, (_, v)| add(a, *v));
    // "other" is always there: the series stays stable as processes come and go, and the
    // family is never empty.
    out.push((other, rest));
    out
}

pub fn families(m: &MetricsInput) -> Vec<MetricFamily> {
    let c = |k: K| m.counters.get(k as usize).copied().unwrap_or(0);
    let h = |i: u32| {
        m.hists
            .get(i as usize)
            .cloned()
            .unwrap_or(Log2Hist([0; HIST_BUCKETS as usize]))
    };
    let mut f = vec![
        family(
            "faultline_build_info",
            "faultline's version and the kernel it runs on.",
            MetricType::GAUGE,
            vec![gauge(&[("version", m.version), ("kernel", &m.kernel)], 1.0)],
        ),
        family(
            "faultline_mmap_lock_wait_seconds",
            "Time from asking for mmap_lock to getting it, by mode (log2 buckets; sum estimated).",
            MetricType::HISTOGRAM,
            vec![
                histogram(&[("mode", "read")], &h(H::WaitRead as u32)),
                histogram(&[("mode", "write")], &h(H::WaitWrite as u32)),
            ],
        ),
        family(
            "faultline_mmap_lock_hold_seconds",
            "Time mmap_lock was held, by mode (log2 buckets; sum estimated).",
            MetricType::HISTOGRAM,
            vec![
                histogram(&[("mode", "read")], &h(H::HoldRead as u32)),
                histogram(&[("mode", "write")], &h(H::HoldWrite as u32)),
            ],
        ),
        family(
            "faultline_mmap_lock_acquisitions_total",
            "Successful mmap_lock acquisitions, by mode.",
            MetricType::COUNTER,
            vec![
                counter(&[("mode", "read")], c(K::AcquireRead)),
                counter(&[("mode", "write")], c(K::AcquireWrite)),
            ],
        ),
        family(
            "faultline_mmap_lock_failed_total",
            "mmap_lock attempts that failed (trylock, interrupted killable lock), by mode.",
            MetricType::COUNTER,
            vec![
                counter(&[("mode", "read")], c(K::FailedRead)),
                counter(&[("mode", "write")], c(K::FailedWrite)),
            ],
        ),
    ];
    for (name, help, k) in [
        ("faultline_mmap_lock_slow_waits_total", "mmap_lock acquisitions that waited at least the wait threshold.", K::SlowWait),
        ("faultline_mmap_lock_long_holds_total", "mmap_lock holds that lasted at least the hold threshold.", K::LongHold),
        ("faultline_mmap_lock_recursive_reads_total", "Read attempts on an mmap_lock the task already holds for read.", K::RecursiveRead),
        ("faultline_mmap_lock_downgrades_total", "Write holds downgraded to read.", K::Downgrade),
        ("faultline_mmap_lock_unmatched_releases_total", "Releases with no hold known for the releasing task (non-owner release, or a hold older than the agent).", K::UnmatchedRelease),
        ("faultline_lock_contentions_total", "Contended sleeping kernel locks (mutex, rwsem, other).", K::LockContended),
        ("faultline_page_faults_under_lock_total", "Kernel-mode page faults taken while holding an mmap_lock or a contended lock.", K::FaultUnderLock),
        ("faultline_page_faults_mmap_lock_total", "Page faults that had to take mmap_lock (the per-VMA lock did not serve them).", K::FaultMmapLock),
        ("faultline_uffd_ioctls_total", "userfaultfd ioctls.", K::UffdIoctl),
        ("faultline_uffd_created_total", "userfaultfd() calls that returned a descriptor, while the userfaultfd ioctl hooks were attached (faultline_uffd_ioctl_hooks_attached).", K::UffdCreated),
        ("faultline_uffd_waits_total", "Faults that slept waiting for a userfaultfd handler.", K::UffdWaitBegin),
        ("faultline_events_lost_total", "Events dropped in the kernel because the ring buffer was full.", K::RingbufFull),
        ("faultline_kernel_read_errors_total", "Failed kernel memory reads in the probes.", K::ReadError),
    ] {
        f.push(family(name, help, MetricType::COUNTER, vec![counter(&[], c(k))]));
    }
    f.push(family(
        "faultline_page_faults_total",
        "Page faults, by the mode they were taken in.",
        MetricType::COUNTER,
        vec![
            counter(&[("mode", "user")], c(K::PageFaultUser)),
            counter(&[("mode", "kernel")], c(K::PageFaultKernel)),
        ],
    ));
    f.push(family(
        "faultline_untracked_total",
        "Things the probes could not track because a bounded map was full, by map.",
        MetricType::COUNTER,
        vec![
            counter(&[("map", "task_state")], c(K::TaskStateFull)),
            counter(&[("map", "hold_slots")], c(K::HoldSlotsFull)),
            counter(&[("map", "proc_faults")], c(K::ProcFaultsFull)),
            counter(&[("map", "uffd")], c(K::UffdHandlersFull)),
        ],
    ));
    f.push(family(
        "faultline_lock_wait_seconds",
        "Waits on contended kernel locks, by lock type (log2 buckets; sum estimated).",
        MetricType::HISTOGRAM,
        LOCK_TYPES
            .iter()
            .map(|(t, name)| histogram(&[("type", name)], &h(HIST_LOCK_BASE + *t as u32)))
            .collect(),
    ));
    f.push(family(
        "faultline_uffd_ioctl_seconds",
        "userfaultfd ioctl latency, by op (log2 buckets; sum estimated).",
        MetricType::HISTOGRAM,
        UFFD_OPS
            .iter()
            .map(|(o, name)| histogram(&[("op", name)], &h(HIST_UFFD_BASE + *o as u32)))
            .collect(),
    ));
    let mut errors = Vec::new();
    for (o, op) in UFFD_OPS {
        for (e, errno) in uffd_op::ERRNO_NAMES.iter().enumerate() {
            let v = m
                .uffd_errors
                .get(o as usize * uffd_op::ERRNO_BUCKETS as usize + e)
                .copied()
                .unwrap_or(0);
            errors.push(counter(&[("op", op), ("errno", errno)], v));
        }
    }
    f.push(family(
        "faultline_uffd_ioctl_errors_total",
        "Failed userfaultfd ioctls, by op and errno.",
        MetricType::COUNTER,
        errors,
    ));
    let faults = top_n(
        &m.proc_faults,
        |p| p.user + p.kernel,
        |a, b| ProcFaults {
            user: a.user + b.user,
            kernel: a.kernel + b.kernel,
            under_lock: a.under_lock + b.under_lock,
            mmap_lock: a.mmap_lock + b.mmap_lock,
        },
        ProcFaults::default(),
    );
    f.push(family(
        "faultline_top_process_page_faults",
        "Page faults of live processes so far, for the top processes by faults (the rest as \"other\"), by mode: user and kernel with --detail full, otherwise \"all\" (the kernel's own minor+major counts from /proc). A gauge: processes come and go.",
        MetricType::GAUGE,
        faults
            .iter()
            .flat_map(|(who, p)| fault_gauges(&who.labels(), p, m.proc_faults_per_mode))
            .collect(),
    ));
    let waits = top_n(&m.slow_waits_by_process, |v| *v, |a, b| a + b, 0);
    f.push(family(
        "faultline_process_slow_waits_total",
        "Slow lock waits (mmap_lock and kernel locks) seen by the agent, for the top processes (the rest as \"other\").",
        MetricType::COUNTER,
        waits
            .iter()
            .map(|(who, v)| counter(&who.labels(), *v))
            .collect(),
    ));
    f.extend(workload_families(m));
    f.push(family(
        "faultline_blocked_tasks",
        "Tasks the waits-for graph shows blocked now, by what they wait on.",
        MetricType::GAUGE,
        m.blocked
            .iter()
            .map(|(wait, n)| gauge(&[("wait", wait)], *n as f64))
            .collect(),
    ));
    f.push(family(
        "faultline_alerts_total",
        "Alerts raised, by kind.",
        MetricType::COUNTER,
        m.alerts
            .iter()
            .map(|(k, n)| counter(&[("kind", k.as_str())], *n))
            .collect(),
    ));
    f.push(family(
        "faultline_events_total",
        "Ring-buffer records received by the agent.",
        MetricType::COUNTER,
        vec![counter(&[], m.events_received)],
    ));
    f.push(family(
        "faultline_events_undecodable_total",
        "Ring-buffer records that did not decode (skipped).",
        MetricType::COUNTER,
        vec![counter(&[], m.decode_errors)],
    ));
    f.push(family(
        "faultline_model_entries",
        "Entries of the agent's live model (reclaimed as processes exit).",
        MetricType::GAUGE,
        m.model_entries
            .iter()
            .map(|(kind, n)| gauge(&[("kind", kind)], *n as f64))
            .collect(),
    ));
    f.push(family(
        "faultline_uffd_ioctl_hooks_attached",
        "1 while the userfaultfd ioctl hooks (syscall tracepoints, a cost on every system call) are attached: by default only while a userfaultfd exists.",
        MetricType::GAUGE,
        vec![gauge(&[], if m.uffd_ioctl_hooks { 1.0 } else { 0.0 })],
    ));
    f.push(family(
        "faultline_tasks_state_unknown",
        "Tasks whose state may rest on lost events, until the next snapshot confirms it.",
        MetricType::GAUGE,
        vec![gauge(&[], m.tasks_state_unknown as f64)],
    ));
    f.push(family(
        "faultline_alerts_refuted_total",
        "Alerts held after lost events and dropped because the next snapshot refuted them.",
        MetricType::COUNTER,
        vec![counter(&[], m.alerts_refuted)],
    ));
    f.push(family(
        "faultline_probe_run_seconds_total",
        "CPU time spent in each eBPF program (kernel BPF statistics).",
        MetricType::COUNTER,
        m.programs
            .iter()
            .map(|(p, ns, _)| {
                let mut c = Counter::default();
                c.set_value(*ns as f64 / 1e9);
                let mut metric = Metric::from_label(labels(&[("program", p)]));
                metric.set_counter(c);
                metric
            })
            .collect(),
    ));
    f.push(family(
        "faultline_probe_runs_total",
        "Runs of each eBPF program (kernel BPF statistics).",
        MetricType::COUNTER,
        m.programs
            .iter()
            .map(|(p, _, n)| counter(&[("program", p)], *n))
            .collect(),
    ));
    f.push(family(
        "faultline_map_entries",
        "Entries in the probes' bounded maps.",
        MetricType::GAUGE,
        vec![
            gauge(&[("map", "task_state")], m.task_entries as f64),
            gauge(&[("map", "proc_faults")], m.proc_fault_entries as f64),
        ],
    ));
    f.push(family(
        "faultline_task_entries_reclaimed_total",
        "Kernel per-task entries deleted by the agent because their task had left the host.",
        MetricType::COUNTER,
        vec![counter(&[], m.task_entries_reclaimed)],
    ));
    f.push(family(
        "faultline_map_capacity",
        "Capacity of the probes' bounded maps.",
        MetricType::GAUGE,
        vec![
            gauge(&[("map", "task_state")], f64::from(m.task_capacity)),
            gauge(&[("map", "proc_faults")], 16384.0),
        ],
    ));
    f
}

fn add_faults(a: ProcFaults, b: ProcFaults) -> ProcFaults {
    ProcFaults {
        user: a.user + b.user,
        kernel: a.kernel + b.kernel,
        under_lock: a.under_lock + b.under_lock,
        mmap_lock: a.mmap_lock + b.mmap_lock,
    }
}

/// Per-workload series: the top `TOP_WORKLOADS` workloads, the rest as "other" (which is always
/// there, so every family renders on a quiet host and its series stay put).
fn workload_families(m: &MetricsInput) -> Vec<MetricFamily> {
    let faults = top_n_of(
        TOP_WORKLOADS,
        &m.faults_by_workload,
        |p| p.user + p.kernel,
        add_faults,
        ProcFaults::default(),
        "other".to_owned(),
    );
    let waits = top_n_of(
        TOP_WORKLOADS,
        &m.slow_waits_by_workload,
        |v| *v,
        |a, b| a + b,
        0,
        "other".to_owned(),
    );
    // Alerts: the workloads with the most alerts of any kind; each named one gets every kind.
    let totals: Vec<(String, u64)> = m
        .alerts_by_workload
        .iter()
        .map(|((w, _), n)| (w.clone(), *n))
        .collect();
    let top: Vec<String> = top_n_of(
        TOP_WORKLOADS,
        &totals,
        |v| *v,
        |a, b| a + b,
        0,
        "other".to_owned(),
    )
    .into_iter()
    .map(|(w, _)| w)
    .filter(|w| w != "other")
    .collect();
    let mut alerts: BTreeMap<(String, AlertKind), u64> = BTreeMap::new();
    for kind in AlertKind::ALL {
        alerts.insert(("other".into(), kind), 0);
        for w in &top {
            alerts.insert((w.clone(), kind), 0);
        }
    }
    for ((w, kind), n) in &m.alerts_by_workload {
        let w = if top.contains(w) {
            w.clone()
        } else {
            "other".into()
        };
        *alerts.entry((w, *kind)).or_default() += n;
    }
    vec![
        family(
            "faultline_workload_page_faults",
            "Page faults of live processes so far, summed by workload (systemd unit, container, pod; top workloads, the rest as \"other\"), by mode: user and kernel with --detail full, otherwise \"all\" (minor+major from /proc). A gauge: processes come and go.",
            MetricType::GAUGE,
            faults
                .iter()
                .flat_map(|(w, p)| fault_gauges(&[("workload", w)], p, m.proc_faults_per_mode))
                .collect(),
        ),
        family(
            "faultline_workload_slow_waits_total",
            "Slow lock waits seen by the agent, by workload (top workloads, the rest as \"other\").",
            MetricType::COUNTER,
            waits
                .iter()
                .map(|(w, v)| counter(&[("workload", w)], *v))
                .collect(),
        ),
        family(
            "faultline_workload_alerts_total",
            "Alerts raised, by the workload of the task each is about (top workloads, the rest as \"other\") and kind.",
            MetricType::COUNTER,
            alerts
                .iter()
                .map(|((w, kind), n)| counter(&[("workload", w), ("kind", kind.as_str())], *n))
                .collect(),
        ),
    ]
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

#[cfg(test)]
mod tests {
    use super::*;

    fn input() -> MetricsInput {
        let db = Attribution::from_path("/system.slice/db.service");
        let mut hists = vec![Log2Hist([0; HIST_BUCKETS as usize]); 21];
        hists[H::WaitWrite as usize].0[20] = 3; // ~1-2 ms
        hists[H::WaitWrite as usize].0[40] = 1; // ~18 min: beyond the last bucket
        MetricsInput {
            version: "0.1.0",
            kernel: "6.18".into(),
            counters: vec![0; tracer_common::COUNTER_COUNT as usize],
            hists,
            uffd_errors: vec![0; tracer_common::UFFD_ERROR_SLOTS as usize],
            proc_faults: (0..15)
                .map(|i| {
                    (
                        ProcessKey::new(format!("p{i}"), Some(&db)),
                        ProcFaults {
                            user: i,
                            ..Default::default()
                        },
                    )
                })
                .collect(),
            proc_faults_per_mode: true,
            slow_waits_by_process: vec![
                (ProcessKey::new("a".into(), Some(&db)), 2),
                (ProcessKey::new("a".into(), Some(&db)), 3),
                (ProcessKey::new("a".into(), None), 7),
            ],
            task_entries: 1,
            task_entries_reclaimed: 0,
            task_capacity: 32768,
            proc_fault_entries: 15,
            programs: vec![("mmap_lock_start_btf".into(), 1_500_000_000, 10)],
            alerts: AlertKind::ALL.iter().map(|k| (*k, 0)).collect(),
            blocked: BTreeMap::from([("mmap_lock", 2)]),
            events_received: 5,
            decode_errors: 0,
            model_entries: [("tasks", 0), ("mm_locks", 0), ("uffds", 0)],
            tasks_state_unknown: 0,
            alerts_refuted: 0,
            uffd_ioctl_hooks: false,
            faults_by_workload: (0..15)
                .map(|i| {
                    (
                        format!("systemd:s{i}.service"),
                        ProcFaults {
                            user: i,
                            ..Default::default()
                        },
                    )
                })
                .collect(),
            slow_waits_by_workload: vec![("docker:0123456789ab".into(), 4)],
            alerts_by_workload: BTreeMap::from([
                (("pod:u/c".to_string(), AlertKind::Deadlock), 2),
                (("host".to_string(), AlertKind::Stall), 1),
            ]),
        }
    }

    #[test]
    fn workload_series_are_bounded_and_name_the_workload() {
        let text = render(&input()).expect("render");
        let named = text
            .lines()
            .filter(|l| {
                l.starts_with("faultline_workload_page_faults{") && l.contains("mode=\"user\"")
            })
            .count();
        assert_eq!(named, TOP_WORKLOADS + 1, "{text}");
        assert!(
            text.contains("faultline_workload_page_faults{workload=\"other\",mode=\"user\"} 10"),
            "{text}"
        );
        assert!(
            text.contains(
                "faultline_workload_slow_waits_total{workload=\"docker:0123456789ab\"} 4"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "faultline_workload_alerts_total{workload=\"pod:u/c\",kind=\"deadlock\"} 2"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "faultline_workload_alerts_total{workload=\"other\",kind=\"deadlock\"} 0"
            ),
            "{text}"
        );
    }

    #[test]
    fn log2_buckets_become_cumulative_le_buckets_in_seconds() {
        let text = render(&input()).expect("render");
        // 2^21 ns = 0.002097152 s holds the three ~1 ms waits, and so does every bucket above.
        assert!(
            text.contains(
                "faultline_mmap_lock_wait_seconds_bucket{mode=\"write\",le=\"0.002097152\"} 3"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "faultline_mmap_lock_wait_seconds_bucket{mode=\"write\",le=\"68.719476736\"} 3"
            ),
            "{text}"
        );
        assert!(
            text.contains("faultline_mmap_lock_wait_seconds_bucket{mode=\"write\",le=\"+Inf\"} 4"),
            "{text}"
        );
        assert!(
            text.contains("faultline_mmap_lock_wait_seconds_count{mode=\"write\"} 4"),
            "{text}"
        );
    }

    #[test]
    fn a_quiet_host_still_renders_every_family() {
        let mut m = input();
        m.proc_faults.clear();
        m.slow_waits_by_process.clear();
        m.programs.clear();
        let text = render(&m).expect("a scrape of a quiet host renders");
        assert!(
            text.contains(
                "faultline_process_slow_waits_total{process=\"other\",workload=\"other\",cgroup=\"other\"} 0"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "faultline_top_process_page_faults{process=\"other\",workload=\"other\",cgroup=\"other\",mode=\"user\"} 0"
            ),
            "{text}"
        );
    }

    #[test]
    fn per_process_series_are_bounded_to_the_top_n_plus_other() {
        let text = render(&input()).expect("render");
        let procs = text
            .lines()
            .filter(|l| {
                l.starts_with("faultline_top_process_page_faults{") && l.contains("mode=\"user\"")
            })
            .count();
        assert_eq!(procs, TOP_PROCESSES + 1, "{text}");
        // p0..p4 are the smallest: folded into other = 0+1+2+3+4.
        assert!(
            text.contains(
                "faultline_top_process_page_faults{process=\"other\",workload=\"other\",cgroup=\"other\",mode=\"user\"} 10"
            ),
            "{text}"
        );
        // One name in two cgroups is two series, each with its workload and cgroup.
        assert!(
            text.contains(
                "faultline_process_slow_waits_total{process=\"a\",workload=\"systemd:db.service\",cgroup=\"/system.slice/db.service\"} 5"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "faultline_process_slow_waits_total{process=\"a\",workload=\"unknown\",cgroup=\"unknown\"} 7"
            ),
            "{text}"
        );
        assert!(
            text.contains("faultline_probe_run_seconds_total{program=\"mmap_lock_start_btf\"} 1.5"),
            "{text}"
        );
    }
}
