//! Lock families: `mmap_lock` waits, holds and acquisitions, and contended kernel locks.

use prometheus::proto::{MetricFamily, MetricType};
use tracer_common::{lock_type, Counter as K, Histogram as H, HIST_LOCK_BASE};

use super::{
    encode::{counter, counter_f64, family, gauge, histogram, plain_counters},
    LockMeasure, MetricsInput,
};

const LOCK_TYPES: [(u8, &str); 7] = [
    (lock_type::MUTEX, "mutex"),
    (lock_type::RWSEM_READ, "rwsem_read"),
    (lock_type::RWSEM_WRITE, "rwsem_write"),
    (lock_type::SPINLOCK, "spinlock"),
    (lock_type::RWLOCK_READ, "rwlock_read"),
    (lock_type::RWLOCK_WRITE, "rwlock_write"),
    (lock_type::OTHER, "other"),
];

pub(super) fn families(m: &MetricsInput) -> Vec<MetricFamily> {
    let c = |k: K| m.counter(k);
    let mut f = vec![
        family(
            "faultline_mmap_lock_wait_seconds",
            "Time from asking for mmap_lock to getting it, by mode (log2 buckets; sum estimated).",
            MetricType::HISTOGRAM,
            vec![
                histogram(&[("mode", "read")], &m.hist(H::WaitRead as u32)),
                histogram(&[("mode", "write")], &m.hist(H::WaitWrite as u32)),
            ],
        ),
        family(
            "faultline_mmap_lock_hold_seconds",
            "Time mmap_lock was held, by mode (log2 buckets; sum estimated).",
            MetricType::HISTOGRAM,
            vec![
                histogram(&[("mode", "read")], &m.hist(H::HoldRead as u32)),
                histogram(&[("mode", "write")], &m.hist(H::HoldWrite as u32)),
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
    f.extend(plain_counters(&[
        ("faultline_mmap_lock_slow_waits_total", "mmap_lock acquisitions that waited at least the wait threshold.", c(K::SlowWait)),
        ("faultline_mmap_lock_long_holds_total", "mmap_lock holds that lasted at least the hold threshold.", c(K::LongHold)),
        ("faultline_mmap_lock_recursive_reads_total", "Read attempts on an mmap_lock the task already holds for read.", c(K::RecursiveRead)),
        ("faultline_mmap_lock_downgrades_total", "Write holds downgraded to read.", c(K::Downgrade)),
        ("faultline_mmap_lock_unmatched_releases_total", "Releases with no hold known for the releasing task (non-owner release, or a hold older than the agent).", c(K::UnmatchedRelease)),
    ]));
    f.extend(lock_series(m));
    f.extend(plain_counters(&[
        ("faultline_user_lock_sleeps_total", "Lock-shaped futex sleeps seen (a task going to sleep inside futex() on a PI futex, or expecting what a lock waiter expects: pthread mutexes and rwlocks, runtimes' futex locks; condition variables, barriers and semaphores are not followed).", c(K::FutexWaits)),
        ("faultline_user_lock_stacks_missed_total", "Futex sleeps whose user or kernel stack could not be captured or stored (they count in the user-lock profile without it).", c(K::FutexNoStack)),
    ]));
    f.push(family(
        "faultline_lock_wait_seconds",
        "Waits on contended kernel locks, by lock type (log2 buckets; sum estimated).",
        MetricType::HISTOGRAM,
        LOCK_TYPES
            .iter()
            .map(|(t, name)| histogram(&[("type", name)], &m.hist(HIST_LOCK_BASE + *t as u32)))
            .collect(),
    ));
    f
}

/// The lock profile as counters: contentions and wait time by lock (the top locks by wait time,
/// the rest as "other") and type, then what the profile saw and dropped. Absent with the
/// profile off (`--no-lock-profile`): nothing counts by lock then.
fn lock_series(m: &MetricsInput) -> Vec<MetricFamily> {
    let Some(folded) = m.lock_profile.as_ref().map(|p| &p.series) else {
        return Vec::new();
    };
    let series = |want: LockMeasure| {
        folded
            .series()
            .iter()
            .filter(move |(_, (_, measure), _)| *measure == want)
    };
    let c = |k: K| m.counter(k);
    let mut f = vec![
        family(
            "faultline_lock_contentions_total",
            "Contended kernel-lock waits (sleeping and spinning), by lock (the top locks by wait time, the rest as \"other\"; a lock known only by where it is taken is \"caller:FUNCTION\") and type. A lock's series counts from when it was first among the top; none ever goes down.",
            MetricType::COUNTER,
            series(LockMeasure::Contentions)
                .map(|(lock, (t, _), n)| counter(&[("lock", lock), ("type", t)], *n))
                .collect(),
        ),
        family(
            "faultline_lock_wait_seconds_total",
            "Time spent waiting on contended kernel locks, by lock and type (the same series as faultline_lock_contentions_total).",
            MetricType::COUNTER,
            series(LockMeasure::WaitNs)
                .map(|(lock, (t, _), ns)| {
                    counter_f64(&[("lock", lock), ("type", t)], *ns as f64 / 1e9)
                })
                .collect(),
        ),
    ];
    f.extend(plain_counters(&[(
        "faultline_lock_profile_waits_total",
        "Contended kernel-lock waits the lock profile saw (kept or dropped).",
        c(K::ProfileWaits),
    )]));
    if let Some(p) = &m.lock_profile {
        f.push(family(
            "faultline_lock_profile_aged_out",
            "Lock-profile aggregates idle for --profile-idle-after, moved out of the kernel's table into the agent's memory (still in every profile).",
            MetricType::GAUGE,
            vec![gauge(&[], p.aged_out as f64)],
        ));
    }
    f.push(family(
        "faultline_lock_profile_dropped_total",
        "Waits the lock profile could not keep whole, by cause: table_full (dropped), busy (dropped or kept without a stack), no_stack, stacks_full, stack_collision (kept without a stack).",
        MetricType::COUNTER,
        [
            ("table_full", K::ProfileFull),
            ("busy", K::ProfileBusy),
            ("no_stack", K::ProfileNoStack),
            ("stacks_full", K::ProfileStacksFull),
            ("stack_collision", K::ProfileStackCollision),
        ]
        .iter()
        .map(|(cause, k)| counter(&[("cause", cause)], c(*k)))
        .collect(),
    ));
    f
}
