//! Aggregates kept in the kernel: counters and log2 histograms, both per CPU.

use crate::{lock::lock_type, uffd::uffd_op};

/// Indexes of the per-CPU `COUNTERS` array. Also the error type of every program's `try_*`
/// function: a failure is counted once, at the entry point.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    AcquireRead = 0,
    AcquireWrite,
    FailedRead,
    FailedWrite,
    ReleaseRead,
    ReleaseWrite,
    Downgrade,
    RecursiveRead,
    /// A release with no matching hold for the current task.
    UnmatchedRelease,
    /// An acquisition without a `start_locking` before it (attached mid-attempt).
    UnmatchedAcquire,
    /// `TASK_STATE` was full: a task could not be tracked.
    TaskStateFull,
    /// All `HOLD_SLOTS` were in use.
    HoldSlotsFull,
    /// The ring buffer had no room: an event was lost.
    RingbufFull,
    SlowWait,
    LongHold,
    TaskExit,
    /// A kernel read (`bpf_probe_read_kernel`) failed.
    ReadError,
    /// Sleeping-lock contentions.
    LockContended,
    /// Contended sleeping locks whose wait reached the wait threshold.
    LockSlowWait,
    PageFaultUser,
    PageFaultKernel,
    /// Kernel-mode faults taken while holding a known lock.
    FaultUnderLock,
    /// Faults that took `mmap_lock`.
    FaultMmapLock,
    /// `PROC_FAULTS` was full.
    ProcFaultsFull,
    UffdIoctl,
    UffdIoctlError,
    /// userfaultfd() calls that returned a descriptor.
    UffdCreated,
    UffdWaitBegin,
    UffdWaitEnd,
    /// `UFFD_HANDLERS` or `UFFD_BY_MM` was full: a handler or context may go unnamed.
    UffdHandlersFull,
    /// The `CONFIG` entry was missing (never written by the loader).
    NoConfig,
    /// `OWNERS` was full: a lock owner is not remembered.
    OwnersFull,
    /// Contended `mmap_lock` waits (the slow path of an `mmap_lock` acquisition).
    MmapLockContended,
    /// Contended waits aggregated into the lock profile.
    ProfileWaits,
    /// `LOCK_PROFILE` was full: a wait was not aggregated (dropped from the profile).
    ProfileFull,
    /// The waiter's stack could not be captured: aggregated under `NO_STACK`.
    ProfileNoStack,
    /// `LOCK_STACKS` was full: a new stack was not stored, its wait aggregated under `NO_STACK`.
    ProfileStacksFull,
    /// Two different stacks had the same hash: the later one's wait went under `NO_STACK`.
    ProfileStackCollision,
    /// A profile table was busy (its bucket lock held by the run this one interrupted): the
    /// wait was dropped from the profile, or kept without its stack.
    ProfileBusy,
    /// Futex sleeps seen (a task going to sleep inside futex() or futex_waitv()).
    FutexWaits,
    /// `FUTEX_WAITS` was full: a futex sleep was not tracked.
    FutexWaitsFull,
    /// `FUTEX_TIME` was full: a process's futex waiting time was not added.
    FutexTimeFull,
    /// A futex sleep's stack could not be captured or stored (`FUTEX_STACKS` full, a busy
    /// scratch buffer, or a hash shared by two stacks): it counts under no stack.
    FutexNoStack,
    /// `FUTEX_PROFILE` was full: a sleep was not added to the user-lock profile.
    FutexProfileFull,
}
pub const COUNTER_COUNT: u32 = Counter::FutexProfileFull as u32 + 1;

/// Per-CPU `UFFD_ERRORS` is indexed `op * uffd_op::ERRNO_BUCKETS + errno bucket`.
pub const UFFD_ERROR_SLOTS: u32 = uffd_op::COUNT as u32 * uffd_op::ERRNO_BUCKETS;

/// Histograms kept in the kernel, `HIST_BUCKETS` log2 buckets each, in one per-CPU array indexed
/// `hist * HIST_BUCKETS + bucket`. Bucket `b` counts durations `d` (ns) with `ilog2(d) == b`
/// (`d == 0` in bucket 0).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Histogram {
    WaitRead = 0,
    WaitWrite,
    HoldRead,
    HoldWrite,
}
/// The mmap_lock histograms, then one per `lock_type` (contention waits), then one per
/// `uffd_op` (ioctl latency).
pub const HIST_LOCK_BASE: u32 = Histogram::HoldWrite as u32 + 1;
pub const HIST_UFFD_BASE: u32 = HIST_LOCK_BASE + lock_type::COUNT as u32;
pub const HIST_COUNT: u32 = HIST_UFFD_BASE + uffd_op::COUNT as u32;
pub const HIST_BUCKETS: u32 = 64;
