//! What the loader tells the programs: the runtime config (a map, changeable while running) and
//! the values fixed at load time (globals: struct offsets, tracepoint layouts, argument
//! positions), all discovered on the running kernel.

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
    /// The lock profile takes the stack of 1 in this many short contended waits per CPU (0 or
    /// 1: of every one); see `SHORT_WAIT_NS`.
    pub profile_short_every: u32,
    pub _reserved: u32,
}
const _: () = assert!(core::mem::size_of::<Config>() == 32);

/// A contended wait at least this long always gets its stack in the lock profile; shorter
/// ones (spins, mostly, and sleeps woken at once) are sampled (`Config::profile_short_every`).
/// Unwinding a stack costs about what a short wait lasts, and short waits are most of the
/// contended waits on a busy host: sampling them is what keeps the profile cheap.
pub const SHORT_WAIT_NS: u64 = 10_000;

/// The default of `Config::profile_short_every`.
pub const PROFILE_SHORT_EVERY: u32 = 64;

pub mod config_flags {
    /// Stream every event (record mode), not only slow ones.
    pub const RECORD_ALL: u32 = 1 << 0;
    /// The `mmap_lock` acquire/release programs are attached: they own the end of an
    /// `mmap_lock` wait (the acquisition), so the contention program leaves it to them.
    pub const MMAP_LOCK_HOOKS: u32 = 1 << 1;
    /// Full mode: user faults are hooked and every fault is counted per process.
    pub const PER_FAULT: u32 = 1 << 2;
    /// The lock-contention profile keys its aggregates by task too (`faultline contention -t`).
    pub const PROFILE_BY_TASK: u32 = 1 << 3;
    /// The lock-contention profile is off (`--no-lock-profile`): no stack is taken, nothing is
    /// aggregated.
    pub const PROFILE_OFF: u32 = 1 << 4;
    /// User-space lock waits (futex sleeps) are not traced (`--no-user-locks`).
    pub const FUTEX_OFF: u32 = 1 << 5;
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
    /// `offsetof(struct file, f_op)`: which kind of file a descriptor is, so an ioctl on
    /// anything but a userfaultfd is never read as one.
    pub file_f_op: u32,
    /// `offsetof(struct file_operations, poll)`.
    pub fops_poll: u32,
    /// `offsetof(struct task_struct, sighand)`: a contended spinlock at the address it holds
    /// is the waiter's siglock (`siglock` is `sighand_struct`'s first member, checked at
    /// start-up). Zero: siglocks are not recognised.
    pub task_sighand: u32,
    /// `offsetof(struct task_struct, comm)`: the user-lock profile names a woken sleeper by
    /// its comm (the waker writes it). Zero: unnamed.
    pub task_comm: u32,
    /// Text range of `handle_userfault` (from /proc/kallsyms): a sleep with it on the stack is
    /// a userfaultfd wait. Zero: unknown, uffd waits are not detected.
    pub handle_userfault_start: u64,
    pub handle_userfault_end: u64,
    /// Address of `userfaultfd_fops` (/proc/kallsyms, when the kernel lists data symbols): a
    /// file is a userfaultfd exactly when its `f_op` is this. Zero: unknown, `uffd_poll` used.
    pub uffd_fops: u64,
    /// Address of `userfaultfd_poll`: the `poll` of userfaultfd's file operations, which no
    /// other file has (the check the diagnose iterators use too). When both are zero nothing
    /// is taken for a userfaultfd: the ioctl hooks then see none.
    pub uffd_poll: u64,
}
const _: () = assert!(core::mem::size_of::<KernelOffsets>() == 16 * 4 + 32);

/// Field offsets of the classic `syscalls:sys_enter_ioctl` / `sys_exit_ioctl` tracepoints.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SyscallLayout {
    pub ioctl_fd: u32,
    pub ioctl_cmd: u32,
    pub exit_ret: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<SyscallLayout>() == 16);

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
const _: () = assert!(core::mem::size_of::<TracepointLayout>() == 16);
