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
    LockWaitBegin = 5,
    LockWaitEnd = 6,
    PageFault = 7,
    UffdWaitBegin = 8,
    UffdWaitEnd = 9,
    UffdIoctlBegin = 10,
    UffdIoctlEnd = 11,
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

/// Lock types of `lock:contention_begin`, from its flags.
pub mod lock_type {
    pub const MUTEX: u8 = 0;
    pub const RWSEM_READ: u8 = 1;
    pub const RWSEM_WRITE: u8 = 2;
    pub const SPINLOCK: u8 = 3;
    pub const RWLOCK_READ: u8 = 4;
    pub const RWLOCK_WRITE: u8 = 5;
    pub const OTHER: u8 = 6;
    pub const COUNT: u8 = 7;

    /// `LCB_F_*` flags of `contention_begin`.
    pub const LCB_F_SPIN: u32 = 1 << 0;
    pub const LCB_F_READ: u32 = 1 << 1;
    pub const LCB_F_WRITE: u32 = 1 << 2;
    pub const LCB_F_MUTEX: u32 = 1 << 5;

    pub const fn from_flags(flags: u32) -> u8 {
        let spin = flags & LCB_F_SPIN != 0;
        if flags & LCB_F_MUTEX != 0 {
            MUTEX
        } else if flags & LCB_F_READ != 0 {
            if spin {
                RWLOCK_READ
            } else {
                RWSEM_READ
            }
        } else if flags & LCB_F_WRITE != 0 {
            if spin {
                RWLOCK_WRITE
            } else {
                RWSEM_WRITE
            }
        } else if spin {
            SPINLOCK
        } else {
            OTHER
        }
    }

    /// Sleeping locks: the ones whose waits can last and form waits-for edges.
    pub const fn sleeps(t: u8) -> bool {
        matches!(t, MUTEX | RWSEM_READ | RWSEM_WRITE | OTHER)
    }
}

/// userfaultfd ioctl operations, indexed 0..COUNT, and their `_IOC_NR` (type 0xAA).
pub mod uffd_op {
    pub const API: u8 = 0;
    pub const REGISTER: u8 = 1;
    pub const UNREGISTER: u8 = 2;
    pub const WAKE: u8 = 3;
    pub const COPY: u8 = 4;
    pub const ZEROPAGE: u8 = 5;
    pub const WRITEPROTECT: u8 = 6;
    pub const CONTINUE: u8 = 7;
    pub const POISON: u8 = 8;
    pub const MOVE: u8 = 9;
    pub const COUNT: u8 = 10;
    /// `_IOC_TYPE` of every userfaultfd ioctl.
    pub const IOC_TYPE: u32 = 0xAA;

    /// The op for an ioctl `cmd`, if it is a userfaultfd one.
    pub const fn from_cmd(cmd: u32) -> Option<u8> {
        if (cmd >> 8) & 0xff != IOC_TYPE {
            return None;
        }
        match cmd & 0xff {
            0x3f => Some(API),
            0x00 => Some(REGISTER),
            0x01 => Some(UNREGISTER),
            0x02 => Some(WAKE),
            0x03 => Some(COPY),
            0x04 => Some(ZEROPAGE),
            0x05 => Some(MOVE),
            0x06 => Some(WRITEPROTECT),
            0x07 => Some(CONTINUE),
            0x08 => Some(POISON),
            _ => None,
        }
    }

    /// Errno buckets of the per-op error counters.
    pub const ERRNOS: [i64; 9] = [11, 17, 2, 12, 16, 22, 14, 3, 1];
    pub const ERRNO_NAMES: [&str; 10] = [
        "EAGAIN", "EEXIST", "ENOENT", "ENOMEM", "EBUSY", "EINVAL", "EFAULT", "ESRCH", "EPERM",
        "other",
    ];
    pub const ERRNO_BUCKETS: u32 = 10;

    pub fn errno_bucket(ret: i64) -> u32 {
        let mut i = 0;
        while i < ERRNOS.len() {
            if -ret == ERRNOS[i] {
                return i as u32;
            }
            i += 1;
        }
        ERRNOS.len() as u32
    }
}

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
const _: () = assert!(core::mem::size_of::<LockWaitEvent>() == 40 + 40);

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PageFaultEvent {
    pub header: EventHeader,
    pub addr: u64,
    pub error_code: u64,
    pub user: u8,
    pub _pad: [u8; 7],
}
const _: () = assert!(core::mem::size_of::<PageFaultEvent>() == 40 + 24);

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
const _: () = assert!(core::mem::size_of::<UffdEvent>() == 40 + 40);

/// Per-process page-fault counters, in the per-CPU `PROC_FAULTS` hash keyed by tgid.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcFaults {
    pub user: u64,
    pub kernel: u64,
    /// Kernel-mode faults while holding a lock faultline knows about.
    pub under_lock: u64,
    /// Faults that took `mmap_lock` (the per-VMA lock did not serve them).
    pub mmap_lock: u64,
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
    /// `offsetof(struct task_struct, pid)`.
    pub task_pid: u32,
    /// `offsetof(struct mutex, owner)`.
    pub mutex_owner: u32,
    /// `offsetof(struct rw_semaphore, owner)`.
    pub rwsem_owner: u32,
    /// `offsetof(struct mm_struct, mmap_lock)`.
    pub mm_mmap_lock: u32,
    /// `offsetof(struct task_struct, files)`.
    pub task_files: u32,
    /// `offsetof(struct files_struct, fdt)`.
    pub files_fdt: u32,
    /// `offsetof(struct fdtable, fd)`.
    pub fdt_fd: u32,
    /// `offsetof(struct file, private_data)`.
    pub file_private: u32,
    /// `offsetof(struct userfaultfd_ctx, mm)`.
    pub uffd_ctx_mm: u32,
    /// Text range of `handle_userfault` (from /proc/kallsyms): a sleep with it on the stack is
    /// a userfaultfd wait. Zero: unknown, uffd waits are not detected.
    pub handle_userfault_start: u64,
    pub handle_userfault_end: u64,
}

/// Field offsets of the classic `syscalls:sys_enter_ioctl` / `sys_exit_ioctl` tracepoints.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SyscallLayout {
    pub ioctl_fd: u32,
    pub ioctl_cmd: u32,
    pub exit_ret: u32,
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
    /// The contended sleeping lock it waits for (0: none).
    pub lock: u64,
    pub lock_since_ns: u64,
    /// Its owner at contention time (0: unknown).
    pub lock_owner: u32,
    pub lock_type: u8,
    pub _pad2: [u8; 3],
    /// The userfaultfd context it waits on in `handle_userfault` (0: none).
    pub uffd_ctx: u64,
    pub uffd_addr: u64,
    pub uffd_since_ns: u64,
    /// The userfaultfd ioctl in flight (0: none).
    pub ioctl_ctx: u64,
    pub ioctl_since_ns: u64,
    pub ioctl_op: u8,
    pub _pad3: [u8; 7],
    pub holds: [Hold; HOLD_SLOTS],
}
const _: () = assert!(core::mem::size_of::<TaskState>() == 96 + 24 * HOLD_SLOTS);

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
    /// `UFFD_HANDLERS` was full: a handler may go unnamed.
    UffdHandlersFull,
}
pub const COUNTER_COUNT: u32 = Counter::UffdHandlersFull as u32 + 1;

/// Per-CPU `UFFD_ERRORS` is indexed `op * uffd_op::ERRNO_BUCKETS + errno bucket`.
pub const UFFD_ERROR_SLOTS: u32 = uffd_op::COUNT as u32 * uffd_op::ERRNO_BUCKETS;

/// What a CPU's last page fault was, so the fault's later steps on that CPU (taking
/// `mmap_lock`, sleeping in `handle_userfault`) can be tied to it without a per-task lookup on
/// every fault.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct LastFault {
    pub tid: u32,
    pub tgid: u32,
    pub addr: u64,
    pub ts_ns: u64,
    /// 1 once the fault was seen taking `mmap_lock` (counted once).
    pub took_mmap_lock: u8,
    pub user: u8,
    pub _pad: [u8; 6],
}

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

/// Offsets the diagnose iterators need, from BTF at run time.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct DiagOffsets {
    pub task_state: u32,
    pub task_blocker: u32,
    pub task_pid: u32,
    pub task_tgid: u32,
    pub task_mm: u32,
    pub mm_owner: u32,
    pub mm_mmap_lock: u32,
    pub rwsem_count: u32,
    pub rwsem_owner: u32,
    pub rwsem_wait_list: u32,
    pub waiter_task: u32,
    pub waiter_type: u32,
    pub mutex_owner: u32,
    pub file_private: u32,
    pub uffd_ctx_mm: u32,
    pub uffd_fault_pending_wqh: u32,
    pub uffd_fault_wqh: u32,
    pub wqh_head: u32,
    pub wqe_private: u32,
    pub wqe_entry: u32,
}

/// What a diagnose iterator record says.
pub mod diag_kind {
    /// A task with `task_struct.blocker` set: a = blocker word (lock | type), b = the lock's
    /// owner word, c = rwsem count (rwsems only), d = owner tid (0: none or reader-owned).
    pub const BLOCKER: u32 = 1;
    /// An mmap_lock with waiters: tgid = the mm's process, a = mm, b = count, c = owner word,
    /// d = owner tid (0: none or reader-owned).
    pub const MMAP_LOCK: u32 = 2;
    /// One waiter of that mmap_lock: tgid = the mm's process, pos = queue position, a = mm,
    /// c = waiter type (0 write, 1 read), d = waiter tid.
    pub const MMAP_WAITER: u32 = 3;
    /// A userfaultfd descriptor: tid/tgid = the holder, pos = fd, a = context, b = its mm,
    /// c = the mm's owner tgid.
    pub const UFFD_FILE: u32 = 4;
    /// A task waiting on that context: tgid = holder, pos = 0 pending / 1 read by a handler,
    /// a = context, d = waiter tid.
    pub const UFFD_WAITER: u32 = 5;
}

/// `task_struct.blocker` type bits (include/linux/hung_task.h).
pub mod blocker_type {
    pub const MUTEX: u64 = 0;
    pub const SEM: u64 = 1;
    pub const RWSEM_READER: u64 = 2;
    pub const RWSEM_WRITER: u64 = 3;
    pub const MASK: u64 = 3;
}

/// One record of the diagnose iterators (`diag_kind` says what the fields hold).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct DiagRecord {
    pub kind: u32,
    pub tid: u32,
    pub tgid: u32,
    pub pos: u32,
    pub a: u64,
    pub b: u64,
    pub c: u64,
    pub d: u64,
}
const _: () = assert!(core::mem::size_of::<DiagRecord>() == 48);

/// Key of the map of userfaultfd descriptors user space found in /proc.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FdKey {
    pub tgid: u32,
    pub fd: u32,
}

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
    unsafe impl aya::Pod for SyscallLayout {}
    unsafe impl aya::Pod for ProcFaults {}
    unsafe impl aya::Pod for DiagOffsets {}
    unsafe impl aya::Pod for FdKey {}
}
