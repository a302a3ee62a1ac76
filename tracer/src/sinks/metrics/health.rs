//! The agent reporting on itself: build, records received and lost, what the probes could not
//! track, their run time, and how full their bounded maps are.

use prometheus::proto::{MetricFamily, MetricType};
use tracer_common::Counter as K;

use super::{
    encode::{counter, counter_f64, family, gauge, plain_counters},
    MetricsInput,
};

/// Capacity of the kernel's per-process fault map (`PROC_FAULTS`).
const PROC_FAULTS_CAPACITY: f64 = 16384.0;

pub(super) fn families(m: &MetricsInput) -> Vec<MetricFamily> {
    let c = |k: K| m.counter(k);
    let mut f = vec![family(
        "faultline_build_info",
        "faultline's version and the kernel it runs on.",
        MetricType::GAUGE,
        vec![gauge(&[("version", m.version), ("kernel", &m.kernel)], 1.0)],
    )];
    f.extend(plain_counters(&[
        (
            "faultline_events_lost_total",
            "Events dropped in the kernel because the ring buffer was full.",
            c(K::RingbufFull),
        ),
        (
            "faultline_kernel_read_errors_total",
            "Failed kernel memory reads in the probes.",
            c(K::ReadError),
        ),
        (
            "faultline_events_total",
            "Ring-buffer records received by the agent.",
            m.events_received,
        ),
        (
            "faultline_events_undecodable_total",
            "Ring-buffer records that did not decode (skipped).",
            m.decode_errors,
        ),
        (
            "faultline_task_entries_reclaimed_total",
            "Kernel per-task entries deleted by the agent because their task had left the host.",
            m.task_entries_reclaimed,
        ),
    ]));
    f.push(family(
        "faultline_api_requests_refused_total",
        "HTTP API requests answered 503 (Retry-After) because more were being rendered at once than the agent allows, by gate.",
        MetricType::COUNTER,
        m.api_refused
            .iter()
            .map(|(gate, n)| counter(&[("gate", gate)], *n))
            .collect(),
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
            counter(&[("map", "futex_waits")], c(K::FutexWaitsFull)),
            counter(&[("map", "futex_time")], c(K::FutexTimeFull)),
            counter(&[("map", "futex_profile")], c(K::FutexProfileFull)),
        ],
    ));
    f.push(family(
        "faultline_feature_available",
        "1 if a feature that depends on the agent's privileges or the host works, 0 if not (decided at start; the start-up log and `faultline check` say why and what grants it).",
        MetricType::GAUGE,
        m.features
            .iter()
            .map(|(name, ok)| gauge(&[("feature", name)], if *ok { 1.0 } else { 0.0 }))
            .collect(),
    ));
    f.push(family(
        "faultline_uffd_ioctl_hooks_attached",
        "1 while the userfaultfd ioctl hooks (syscall tracepoints, a cost on every system call) are attached: by default only while a userfaultfd exists.",
        MetricType::GAUGE,
        vec![gauge(&[], if m.uffd_ioctl_hooks { 1.0 } else { 0.0 })],
    ));
    f.push(family(
        "faultline_probe_run_seconds_total",
        "CPU time spent in each eBPF program (kernel BPF statistics).",
        MetricType::COUNTER,
        m.programs
            .iter()
            .map(|(p, ns, _)| counter_f64(&[("program", p)], *ns as f64 / 1e9))
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
            gauge(&[("map", "futex_waits")], m.user_lock_entries.0 as f64),
            gauge(&[("map", "futex_time")], m.user_lock_entries.2 as f64),
        ]
        .into_iter()
        .chain(m.lock_profile.iter().flat_map(|p| {
            [
                gauge(&[("map", "lock_profile")], p.entries.0 as f64),
                gauge(&[("map", "lock_stacks")], p.stacks.0 as f64),
            ]
        }))
        .collect(),
    ));
    f.push(family(
        "faultline_map_capacity",
        "Capacity of the probes' bounded maps.",
        MetricType::GAUGE,
        vec![
            gauge(&[("map", "task_state")], f64::from(m.task_capacity)),
            gauge(&[("map", "proc_faults")], PROC_FAULTS_CAPACITY),
            gauge(&[("map", "futex_waits")], f64::from(m.user_lock_entries.1)),
            gauge(
                &[("map", "futex_time")],
                f64::from(tracer_common::names::FUTEX_TIME_CAPACITY),
            ),
        ]
        .into_iter()
        .chain(m.lock_profile.iter().flat_map(|p| {
            [
                gauge(&[("map", "lock_profile")], f64::from(p.entries.1)),
                gauge(&[("map", "lock_stacks")], f64::from(p.stacks.1)),
            ]
        }))
        .collect(),
    ));
    f
}
