//! Wire types shared by faultline's eBPF programs and its user space.
//!
//! Everything here is `#[repr(C)]` with explicit padding, so the kernel side and user space agree
//! on layout without a serialisation step. User space converts these once, at the edge, into its
//! own domain `Event`; nothing past the decoder sees these types.
#![no_std]

/// Length of `task_struct.comm`, including the terminating NUL.
pub const TASK_COMM_LEN: usize = 16;

/// One kind enum for every record that crosses the ring buffer.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    MmapLockStart = 1,
    MmapLockAcquire = 2,
    MmapLockRelease = 3,
    TaskExit = 4,
}

impl EventKind {
    pub const fn from_u32(v: u32) -> Option<Self> {
        match v {
            1 => Some(Self::MmapLockStart),
            2 => Some(Self::MmapLockAcquire),
            3 => Some(Self::MmapLockRelease),
            4 => Some(Self::TaskExit),
            _ => None,
        }
    }
}

/// Why a record was sent to user space; several may hold at once (a bit set in `EventHeader.flags`).
pub mod reason {
    /// Record mode: every event is streamed.
    pub const RECORD: u32 = 1 << 0;
    /// An acquisition that waited at least the wait threshold (`since_ns` holds the start).
    pub const SLOW_WAIT: u32 = 1 << 1;
    /// A release after a hold of at least the hold threshold (`since_ns` holds the acquisition).
    pub const LONG_HOLD: u32 = 1 << 2;
    /// A release the kernel side could not match to a hold of this task: a non-owner release
    /// (`mmap_read_unlock_non_owner`, possibly from irq context) or a hold taken before the
    /// programs were attached.
    pub const UNMATCHED: u32 = 1 << 3;
    /// An `acquire_returned(write = false)` while the task held the lock for write.
    pub const DOWNGRADE: u32 = 1 << 4;
    /// A read acquisition on an mm whose lock this task already holds for read.
    pub const RECURSIVE: u32 = 1 << 5;
    /// The end (release, downgrade) of a hold whose acquisition user space was told about, so
    /// its picture of who holds what never goes stale.
    pub const FOLLOW_UP: u32 = 1 << 6;
}

/// Fixed header of every ring-buffer record.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct EventHeader {
    /// An `EventKind` as u32 (kept raw so a corrupt record cannot become an invalid enum).
    pub kind: u32,
    /// `reason::*` bits.
    pub flags: u32,
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC nanoseconds.
    pub ts_ns: u64,
    pub tid: u32,
    pub tgid: u32,
    pub comm: [u8; TASK_COMM_LEN],
}
const _: () = assert!(core::mem::size_of::<EventHeader>() == 40);

/// Lock mode on the wire; decoded into an enum by user space.
pub mod mode {
    pub const READ: u8 = 0;
    pub const WRITE: u8 = 1;
}

/// `mmap_lock_start_locking`, `mmap_lock_acquire_returned` and `mmap_lock_released`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct MmapLockEvent {
    pub header: EventHeader,
    /// Kernel address of the `mm_struct`; an identity, never dereferenced by user space.
    pub mm: u64,
    /// For an acquisition: when the attempt started (0 when unknown). For a release: when the
    /// hold began (0 when unknown).
    pub since_ns: u64,
    /// tgid of the process owning `mm` when that is not the caller's own process; 0 otherwise or
    /// when it cannot be read (`mm->owner` needs CONFIG_MEMCG).
    pub mm_tgid: u32,
    /// `mode::READ` or `mode::WRITE`.
    pub mode: u8,
    /// `acquire_returned`'s success; 1 for the other kinds.
    pub success: u8,
    pub _pad: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<MmapLockEvent>() == 64);

/// `sched_process_exit`: the task is gone; its kernel-side state has been dropped.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct TaskExitEvent {
    pub header: EventHeader,
}

/// Runtime configuration, written by the loader into the single entry of the `CONFIG` array and
/// changeable while the programs run.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Config {
    /// The agent's own tgid: its events are dropped in the kernel.
    pub self_tgid: u32,
    /// `config_flags::*`.
    pub flags: u32,
    /// Acquisitions that waited at least this long are streamed.
    pub wait_threshold_ns: u64,
    /// Holds at least this long are streamed at release.
    pub hold_threshold_ns: u64,
}
const _: () = assert!(core::mem::size_of::<Config>() == 24);

pub mod config_flags {
    /// Stream every event (record mode), not only slow ones.
    pub const RECORD_ALL: u32 = 1 << 0;
}

/// Kernel struct offsets read from BTF at start-up and set as globals before load; zero means
/// "unknown" and disables what needs it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct KernelOffsets {
    /// `offsetof(struct task_struct, mm)`.
    pub task_mm: u32,
    /// `offsetof(struct task_struct, tgid)`.
    pub task_tgid: u32,
    /// `offsetof(struct mm_struct, owner)` (CONFIG_MEMCG only).
    pub mm_owner: u32,
    pub _pad: u32,
}

/// Field offsets of the classic `mmap_lock:*` tracepoints, read from tracefs `format` files when
/// the `tp_btf` programs cannot attach.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct TracepointLayout {
    pub mm: u32,
    pub write: u32,
    pub success: u32,
    pub _pad: u32,
}

/// Most `mmap_lock`s one task holds at once that the kernel side tracks: its own mm plus foreign
/// ones taken by process_vm_readv, /proc/PID/mem, UFFDIO_COPY and the like. A fifth is counted in
/// `Counter::HoldSlotsFull` and its release then shows as unmatched.
pub const HOLD_SLOTS: usize = 4;

/// One `mmap_lock` hold of a task. `mm == 0` marks a free slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Hold {
    pub mm: u64,
    pub since_ns: u64,
    pub mode: u8,
    /// Number of nested read holds (recursive read), at least 1 for a used slot.
    pub depth: u8,
    /// 1 when the acquisition was streamed: its end is streamed too (`reason::FOLLOW_UP`).
    pub streamed: u8,
    pub _pad: [u8; 5],
}

/// Per-task kernel state, keyed by tid in `TASK_STATE`: the attempt in flight and the holds.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct TaskState {
    /// mm of the attempt in flight, 0 when none.
    pub wait_mm: u64,
    pub wait_since_ns: u64,
    pub wait_mode: u8,
    pub _pad: [u8; 3],
    /// The task's process, so a snapshot of this map names pids without /proc.
    pub tgid: u32,
    pub holds: [Hold; HOLD_SLOTS],
}
const _: () = assert!(core::mem::size_of::<TaskState>() == 24 + 24 * HOLD_SLOTS);

/// Indexes of the per-CPU `COUNTERS` array.
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
}
pub const COUNTER_COUNT: u32 = Counter::ReadError as u32 + 1;

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
pub const HIST_COUNT: u32 = Histogram::HoldWrite as u32 + 1;
pub const HIST_BUCKETS: u32 = 64;

#[cfg(feature = "user")]
mod user {
    use super::*;
    // SAFETY: all of these are repr(C), made only of integers and integer arrays, and have no
    // implicit padding (checked by the size assertions above).
    unsafe impl aya::Pod for Config {}
    unsafe impl aya::Pod for KernelOffsets {}
    unsafe impl aya::Pod for TracepointLayout {}
    unsafe impl aya::Pod for TaskState {}
    unsafe impl aya::Pod for Hold {}
}
