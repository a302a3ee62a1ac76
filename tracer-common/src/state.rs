//! Per-task and per-CPU state the programs keep and user space snapshots.

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
const _: () = assert!(core::mem::size_of::<Hold>() == 24);

/// `TaskState::wait_mm_tgid`: the waiter's own mm.
pub const MM_OWN: u32 = 0;
/// `TaskState::wait_mm_tgid`: whose mm it is is not known.
pub const MM_OWNER_UNKNOWN: u32 = u32::MAX;

/// Per-task kernel state, keyed by tid in `TASK_STATE`: the attempt in flight and the holds.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct TaskState {
    /// mm of the `mmap_lock` attempt in flight, 0 when none.
    pub wait_mm: u64,
    pub wait_since_ns: u64,
    pub wait_mode: u8,
    pub _pad: [u8; 3],
    /// The task's process, so a snapshot of this map names pids without /proc.
    pub tgid: u32,
    /// The contended sleeping lock it waits for (0: none).
    pub lock: u64,
    pub lock_since_ns: u64,
    /// Its owner at contention time (0: unknown). With `lock_owner_reader` set, a hint only:
    /// the last reader to take a reader-owned rwsem, which may have released it since.
    pub lock_owner: u32,
    pub lock_type: u8,
    /// 1 when `lock_owner` is the reader named by a reader-owned rwsem's owner word.
    pub lock_owner_reader: u8,
    pub _pad2: [u8; 2],
    /// The userfaultfd context it waits on in `handle_userfault` (0: none).
    pub uffd_ctx: u64,
    pub uffd_addr: u64,
    pub uffd_since_ns: u64,
    /// The userfaultfd ioctl in flight (0: none).
    pub ioctl_ctx: u64,
    pub ioctl_since_ns: u64,
    pub ioctl_op: u8,
    pub _pad3: [u8; 3],
    /// Whose mm `wait_mm` is, as the contention program found it (the slow path only, so the
    /// fast path pays nothing): `MM_OWN` the task's own, `MM_OWNER_UNKNOWN` not known (an
    /// uncontended attempt of full mode, or no `mm->owner`), else the owner's tgid. A waiter
    /// on another process's `mmap_lock` (reading its /proc/PID/maps, process_vm_readv) must not
    /// make the model take that mm for the waiter's own.
    pub wait_mm_tgid: u32,
    pub holds: [Hold; HOLD_SLOTS],
}
const _: () = assert!(core::mem::size_of::<TaskState>() == 96 + 24 * HOLD_SLOTS);

/// Per-process page-fault counters, in the per-CPU `PROC_FAULTS` hash keyed by tgid (full mode).
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
const _: () = assert!(core::mem::size_of::<ProcFaults>() == 32);

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
const _: () = assert!(core::mem::size_of::<LastFault>() == 32);
