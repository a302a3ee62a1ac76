//! Records that cross the ring buffer: one header, one kind enum, one struct per family.

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
    LockWaitBegin = 5,
    LockWaitEnd = 6,
    PageFault = 7,
    UffdWaitBegin = 8,
    UffdWaitEnd = 9,
    UffdIoctlBegin = 10,
    UffdIoctlEnd = 11,
    /// A futex sleep as it began (record mode only: otherwise snapshots find long ones).
    FutexWaitBegin = 12,
    /// A futex sleep that ended, when it was long or in record mode.
    FutexWaitEnd = 13,
}

impl EventKind {
    pub const fn from_u32(v: u32) -> Option<Self> {
        match v {
            1 => Some(Self::MmapLockStart),
            2 => Some(Self::MmapLockAcquire),
            3 => Some(Self::MmapLockRelease),
            4 => Some(Self::TaskExit),
            5 => Some(Self::LockWaitBegin),
            6 => Some(Self::LockWaitEnd),
            7 => Some(Self::PageFault),
            8 => Some(Self::UffdWaitBegin),
            9 => Some(Self::UffdWaitEnd),
            10 => Some(Self::UffdIoctlBegin),
            11 => Some(Self::UffdIoctlEnd),
            12 => Some(Self::FutexWaitBegin),
            13 => Some(Self::FutexWaitEnd),
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
    /// A kernel-mode page fault taken while the task holds a lock faultline knows about.
    pub const UNDER_LOCK: u32 = 1 << 7;
    /// A uffd ioctl by a task not seen serving that context before: it names a handler.
    pub const NEW_HANDLER: u32 = 1 << 8;
    /// A uffd ioctl that failed.
    pub const ERROR: u32 = 1 << 9;
}

/// Lock mode on the wire; decoded into an enum by user space.
pub mod mode {
    pub const READ: u8 = 0;
    pub const WRITE: u8 = 1;
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
    /// `bpf_get_current_cgroup_id()`: the task's cgroup v2 id (the inode number of its cgroup
    /// directory), which names its workload even after the process is gone; 0 when unknown
    /// (a record written on another task's behalf).
    pub cgroup_id: u64,
}
const _: () = assert!(core::mem::size_of::<EventHeader>() == 48);

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
const _: () = assert!(core::mem::size_of::<MmapLockEvent>() == 48 + 24);

/// `sched_process_exit`: the task is gone; its kernel-side state has been dropped.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct TaskExitEvent {
    pub header: EventHeader,
}
const _: () = assert!(core::mem::size_of::<TaskExitEvent>() == 48);

/// `lock:contention_begin` / `_end` of a sleeping lock.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct LockWaitEvent {
    pub header: EventHeader,
    pub lock: u64,
    /// For an end: when the wait began (0 when unknown).
    pub since_ns: u64,
    /// The mm whose `mmap_lock` this is, when it is one (0 otherwise).
    pub mm: u64,
    /// The owner's tid read at contention time (0 when unknown or reader-owned).
    pub owner_tid: u32,
    /// For an end: the wait's return value.
    pub ret: i32,
    /// `lock_type::*`.
    pub lock_type: u8,
    pub _pad: [u8; 7],
}
const _: () = assert!(core::mem::size_of::<LockWaitEvent>() == 48 + 40);

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PageFaultEvent {
    pub header: EventHeader,
    pub addr: u64,
    pub error_code: u64,
    pub user: u8,
    pub _pad: [u8; 7],
}
const _: () = assert!(core::mem::size_of::<PageFaultEvent>() == 48 + 24);

/// userfaultfd waits and ioctls.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct UffdEvent {
    pub header: EventHeader,
    /// The `userfaultfd_ctx`.
    pub ctx: u64,
    /// For a wait: the faulting address.
    pub addr: u64,
    /// For an end: when the wait or ioctl began (0 when unknown).
    pub since_ns: u64,
    /// For an ioctl end: its return value.
    pub ret: i64,
    /// For ioctls: `uffd_op::*`.
    pub op: u8,
    pub _pad: [u8; 7],
}
const _: () = assert!(core::mem::size_of::<UffdEvent>() == 48 + 40);
