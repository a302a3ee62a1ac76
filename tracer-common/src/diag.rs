//! What the diagnose iterators (`iter/task`, `iter/task_file`) exchange with user space.

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
    /// `offsetof(struct file, f_op)` and `offsetof(struct file_operations, poll)`: a file whose
    /// `f_op->poll` is `uffd_poll` is a userfaultfd, found without user space naming it.
    pub file_f_op: u32,
    pub fops_poll: u32,
    /// Address of `userfaultfd_poll` (kallsyms); 0: files are matched by `DIAG_UFFD_FDS` only.
    pub uffd_poll: u64,
}
const _: () = assert!(core::mem::size_of::<DiagOffsets>() == 22 * 4 + 8);

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
const _: () = assert!(core::mem::size_of::<FdKey>() == 8);
