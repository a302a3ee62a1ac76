//! Names and capacities both sides must agree on: the loader looks maps and programs up by
//! these names and resizes maps to these capacities, and the eBPF crate declares them with the
//! same identifiers and sizes. `tracer`'s object test checks every name against the built
//! object, so a rename on one side fails the build's tests rather than a production start.

/// Map names (the `static` identifiers in `tracer-ebpf`).
pub mod map {
    pub const CONFIG: &str = "CONFIG";
    pub const TASK_STATE: &str = "TASK_STATE";
    pub const COUNTERS: &str = "COUNTERS";
    pub const HISTOGRAMS: &str = "HISTOGRAMS";
    pub const EVENTS: &str = "EVENTS";
    pub const PROC_FAULTS: &str = "PROC_FAULTS";
    pub const LAST_FAULT: &str = "LAST_FAULT";
    pub const UFFD_ERRORS: &str = "UFFD_ERRORS";
    pub const UFFD_BY_MM: &str = "UFFD_BY_MM";
    pub const UFFD_HANDLERS: &str = "UFFD_HANDLERS";
    pub const UFFD_HANDLER_OF: &str = "UFFD_HANDLER_OF";
    pub const UFFD_ACTIVE: &str = "UFFD_ACTIVE";
    pub const OWNERS: &str = "OWNERS";
    pub const SPIN_WAIT: &str = "SPIN_WAIT";
    pub const DIAG_UFFD_FDS: &str = "DIAG_UFFD_FDS";
    pub const IOCTL_ON_CPU: &str = "IOCTL_ON_CPU";
    pub const LOCK_PROFILE: &str = "LOCK_PROFILE";
    pub const LOCK_STACKS: &str = "LOCK_STACKS";
    pub const STACK_SCRATCH: &str = "STACK_SCRATCH";
    pub const PROFILE_PENDING: &str = "PROFILE_PENDING";
    pub const FUTEX_WAITS: &str = "FUTEX_WAITS";
    pub const FUTEX_TIME: &str = "FUTEX_TIME";
    pub const FUTEX_STACKS: &str = "FUTEX_STACKS";
    pub const FUTEX_SCRATCH: &str = "FUTEX_SCRATCH";
    pub const FUTEX_PROFILE: &str = "FUTEX_PROFILE";
    pub const UFFD_STACK_SCRATCH: &str = "UFFD_STACK_SCRATCH";
    pub const FUTEX_KSTACKS: &str = "FUTEX_KSTACKS";

    /// Every map of the object, for the object test.
    pub const ALL: [&str; 27] = [
        CONFIG,
        TASK_STATE,
        COUNTERS,
        HISTOGRAMS,
        EVENTS,
        PROC_FAULTS,
        LAST_FAULT,
        UFFD_ERRORS,
        UFFD_BY_MM,
        UFFD_HANDLERS,
        UFFD_HANDLER_OF,
        UFFD_ACTIVE,
        OWNERS,
        SPIN_WAIT,
        DIAG_UFFD_FDS,
        IOCTL_ON_CPU,
        LOCK_PROFILE,
        LOCK_STACKS,
        STACK_SCRATCH,
        PROFILE_PENDING,
        FUTEX_WAITS,
        FUTEX_TIME,
        FUTEX_STACKS,
        FUTEX_SCRATCH,
        FUTEX_PROFILE,
        UFFD_STACK_SCRATCH,
        FUTEX_KSTACKS,
    ];
}

/// Globals the loader rewrites before load.
pub mod global {
    pub const OFFSETS: &str = "OFFSETS";
    pub const TP_LAYOUT: &str = "TP_LAYOUT";
    pub const SYSCALL_LAYOUT: &str = "SYSCALL_LAYOUT";
    pub const DIAG_OFFSETS: &str = "DIAG_OFFSETS";
}

/// Program names (the functions in `tracer-ebpf`).
pub mod program {
    pub const MMAP_LOCK_START_BTF: &str = "mmap_lock_start_btf";
    pub const MMAP_LOCK_ACQUIRE_BTF: &str = "mmap_lock_acquire_btf";
    pub const MMAP_LOCK_RELEASE_BTF: &str = "mmap_lock_release_btf";
    /// The same three for the pre-6.14 prototypes, `(mm, memcg_path, write[, success])`.
    pub const MMAP_LOCK_START_BTF_MEMCG: &str = "mmap_lock_start_btf_memcg";
    pub const MMAP_LOCK_ACQUIRE_BTF_MEMCG: &str = "mmap_lock_acquire_btf_memcg";
    pub const MMAP_LOCK_RELEASE_BTF_MEMCG: &str = "mmap_lock_release_btf_memcg";
    pub const MMAP_LOCK_START_TP: &str = "mmap_lock_start_tp";
    pub const MMAP_LOCK_ACQUIRE_TP: &str = "mmap_lock_acquire_tp";
    pub const MMAP_LOCK_RELEASE_TP: &str = "mmap_lock_release_tp";
    pub const TASK_EXIT_BTF: &str = "task_exit_btf";
    /// `sched_process_exit` before it gained `group_dead`: `(task)`.
    pub const TASK_EXIT_BTF_TASK_ONLY: &str = "task_exit_btf_task_only";
    pub const TASK_EXIT_TP: &str = "task_exit_tp";
    pub const CONTENTION_BEGIN_BTF: &str = "contention_begin_btf";
    pub const CONTENTION_END_BTF: &str = "contention_end_btf";
    pub const PAGE_FAULT_USER_BTF: &str = "page_fault_user_btf";
    pub const PAGE_FAULT_KERNEL_BTF: &str = "page_fault_kernel_btf";
    pub const SCHED_SWITCH_BTF: &str = "sched_switch_btf";
    pub const SCHED_WAKING_BTF: &str = "sched_waking_btf";
    pub const SYS_ENTER_IOCTL_TP: &str = "sys_enter_ioctl_tp";
    pub const SYS_EXIT_IOCTL_TP: &str = "sys_exit_ioctl_tp";
    pub const SYS_EXIT_USERFAULTFD_TP: &str = "sys_exit_userfaultfd_tp";
    pub const DIAG_TASKS: &str = "diag_tasks";
    /// The benchmark floor: empty programs on the default mode's hooks while no userfaultfd
    /// exists (the ioctl syscall tracepoints attach only while one does). Where each attaches
    /// is said once, in `tracer`'s `kernel::probes::floor`.
    pub const FLOOR_CONTENTION_BEGIN: &str = "floor_contention_begin";
    pub const FLOOR_CONTENTION_END: &str = "floor_contention_end";
    pub const FLOOR_PAGE_FAULT_KERNEL: &str = "floor_page_fault_kernel";
    pub const FLOOR_SCHED_SWITCH: &str = "floor_sched_switch";
    pub const FLOOR_SCHED_WAKING: &str = "floor_sched_waking";
    pub const FLOOR_TASK_EXIT: &str = "floor_task_exit";
    /// Every floor program, for the object test.
    pub const FLOOR: [&str; 6] = [
        FLOOR_CONTENTION_BEGIN,
        FLOOR_CONTENTION_END,
        FLOOR_PAGE_FAULT_KERNEL,
        FLOOR_SCHED_SWITCH,
        FLOOR_SCHED_WAKING,
        FLOOR_TASK_EXIT,
    ];
    pub const DIAG_FILES: &str = "diag_files";
}

/// Default capacity of `TASK_STATE` (tasks tracked at once; the loader may resize it). 32768 is
/// the default `pid_max`: every task of a default host fits.
pub const TASK_STATE_CAPACITY: u32 = 32768;
/// `PROC_FAULTS` (processes with fault counters, full mode only).
pub const PROC_FAULTS_CAPACITY: u32 = 16384;
/// `FUTEX_TIME`: processes whose futex waiting time is kept (the agent deletes those gone).
pub const FUTEX_TIME_CAPACITY: u32 = 16384;
/// `FUTEX_STACKS`: distinct user and kernel stacks of futex sleeps (~300 bytes each: 2.4 MiB).
pub const FUTEX_STACKS_CAPACITY: u32 = 8192;
/// `FUTEX_PROFILE`: (process, futex, op, stacks) aggregates at most (see
/// `futex_profile_entries`).
pub const FUTEX_PROFILE_CAPACITY: u32 = 16384;
/// The kernel memory the user-lock profile's table may take.
pub const FUTEX_PROFILE_BUDGET: u64 = 4 << 20;

/// `FUTEX_PROFILE`'s capacity on a host of `cpus` possible CPUs: each key costs about 100 bytes
/// plus 16 per CPU, so with many CPUs it shrinks to stay within `FUTEX_PROFILE_BUDGET` (never
/// under 1024).
pub const fn futex_profile_entries(cpus: u32) -> u32 {
    let fits = FUTEX_PROFILE_BUDGET / (100 + 16 * cpus as u64);
    if fits >= FUTEX_PROFILE_CAPACITY as u64 {
        FUTEX_PROFILE_CAPACITY
    } else if fits < 1024 {
        1024
    } else {
        fits as u32
    }
}
/// `UFFD_BY_MM` and `UFFD_HANDLERS`: far more userfaultfd users than any host has.
pub const UFFD_CAPACITY: u32 = 4096;
/// `OWNERS`: owners of contended sleeping locks at one time.
pub const OWNERS_CAPACITY: u32 = 4096;
/// `LOCK_PROFILE`: (lock, stack, cgroup, comm, type) aggregates at once by default (the loader
/// sizes it from `--profile-entries`), on hosts of up to 16 CPUs. Per-CPU values: each key
/// costs about 100 bytes plus 32 per CPU, so with more CPUs the default shrinks to keep the
/// table within `LOCK_PROFILE_BUDGET` (see `lock_profile_default_entries`).
pub const LOCK_PROFILE_CAPACITY: u32 = 16384;
/// The kernel memory the aggregate table may take at its default size.
pub const LOCK_PROFILE_BUDGET: u64 = 12 << 20;

/// `LOCK_PROFILE`'s default capacity on a host of `cpus` possible CPUs: `LOCK_PROFILE_CAPACITY`,
/// or fewer so the table stays within `LOCK_PROFILE_BUDGET` (never under 1024).
pub const fn lock_profile_default_entries(cpus: u32) -> u32 {
    let per_key = 100 + 32 * cpus as u64;
    let fits = LOCK_PROFILE_BUDGET / per_key;
    if fits >= LOCK_PROFILE_CAPACITY as u64 {
        LOCK_PROFILE_CAPACITY
    } else if fits < 1024 {
        1024
    } else {
        fits as u32
    }
}
/// `LOCK_STACKS`: distinct waiter stacks by default (`--profile-stacks`). ~180 bytes each:
/// 1.5 MiB.
pub const LOCK_STACKS_CAPACITY: u32 = 8192;
/// `DIAG_UFFD_FDS`: userfaultfd descriptors diagnose passes in.
pub const DIAG_UFFD_FDS_CAPACITY: u32 = 1024;
/// Default size of the `EVENTS` ring buffer in bytes (a power of two, a multiple of the page).
/// 4 MiB holds ~65k records: seconds of a busy host in record mode.
pub const EVENTS_BYTES: u32 = 4 << 20;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_profile_table_shrinks_with_many_cpus_to_stay_within_its_budget() {
        assert_eq!(lock_profile_default_entries(2), LOCK_PROFILE_CAPACITY);
        assert_eq!(lock_profile_default_entries(16), LOCK_PROFILE_CAPACITY);
        let n = lock_profile_default_entries(128);
        assert!((1024..LOCK_PROFILE_CAPACITY).contains(&n), "{n}");
        assert!(u64::from(n) * (100 + 32 * 128) <= LOCK_PROFILE_BUDGET);
        assert_eq!(lock_profile_default_entries(100_000), 1024);
    }
}
