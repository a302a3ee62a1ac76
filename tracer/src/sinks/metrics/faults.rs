//! Host-wide page-fault families: by the mode they were taken in, under a lock, and through
//! `mmap_lock`. (Per process and per workload: `workloads`.)

use prometheus::proto::{MetricFamily, MetricType};
use tracer_common::Counter as K;

use super::{
    encode::{counter, family, plain_counters},
    MetricsInput,
};

pub(super) fn families(m: &MetricsInput) -> Vec<MetricFamily> {
    let c = |k: K| m.counter(k);
    let mut f = plain_counters(&[
        (
            "faultline_page_faults_under_lock_total",
            "Kernel-mode page faults taken while holding an mmap_lock or a contended lock.",
            c(K::FaultUnderLock),
        ),
        (
            "faultline_page_faults_mmap_lock_total",
            "Page faults that had to take mmap_lock (the per-VMA lock did not serve them).",
            c(K::FaultMmapLock),
        ),
    ]);
    f.push(family(
        "faultline_page_faults_total",
        "Page faults, by the mode they were taken in.",
        MetricType::COUNTER,
        vec![
            counter(&[("mode", "user")], c(K::PageFaultUser)),
            counter(&[("mode", "kernel")], c(K::PageFaultKernel)),
        ],
    ));
    f
}
