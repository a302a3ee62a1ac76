//! userfaultfd families: ioctls (count, latency, errors by op and errno), contexts created, and
//! faults that waited for a handler.

use prometheus::proto::{MetricFamily, MetricType};
use tracer_common::{uffd_op, Counter as K, HIST_UFFD_BASE};

use super::{
    encode::{counter, family, histogram, plain_counters},
    MetricsInput,
};

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

pub(super) fn families(m: &MetricsInput) -> Vec<MetricFamily> {
    let c = |k: K| m.counter(k);
    let mut f = plain_counters(&[
        ("faultline_uffd_ioctls_total", "userfaultfd ioctls.", c(K::UffdIoctl)),
        ("faultline_uffd_created_total", "userfaultfd() calls that returned a descriptor, while the userfaultfd ioctl hooks were attached (faultline_uffd_ioctl_hooks_attached).", c(K::UffdCreated)),
        ("faultline_uffd_waits_total", "Faults that slept waiting for a userfaultfd handler.", c(K::UffdWaitBegin)),
    ]);
    f.push(family(
        "faultline_uffd_ioctl_seconds",
        "userfaultfd ioctl latency, by op (log2 buckets; sum estimated).",
        MetricType::HISTOGRAM,
        UFFD_OPS
            .iter()
            .map(|(o, name)| histogram(&[("op", name)], &m.hist(HIST_UFFD_BASE + *o as u32)))
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
    f
}
