//! The kernel lock-contention profile: every contended wait the contention programs see ends in
//! one aggregate, keyed by lock × waiter kernel stack × cgroup × lock type (× task when asked),
//! holding count, total and max wait. Stacks are stored once each, under a hash of their
//! frames; a hash that names two different stacks is detected and counted, never merged.

/// Kernel frames kept per stack, leaf first. Deep enough to pass the locking functions and the
/// tracing trampoline and reach the contending caller and a few of its callers.
pub const PROFILE_STACK_DEPTH: usize = 16;

/// `ProfileKey::stack` when the waiter's stack is not known (not captured, its slot full, or a
/// hash collision): its waits still count, under the lock.
pub const NO_STACK: u64 = 0;

/// A profile key. `task` is zero unless `config_flags::PROFILE_BY_TASK` asks for it (the
/// one-shot `faultline contention -t`): an always-on agent would multiply its entries by tasks.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ProfileKey {
    /// The lock's kernel address.
    pub lock: u64,
    /// The hash of the waiter's stack in `LOCK_STACKS`, or `NO_STACK`.
    pub stack: u64,
    /// The waiter's cgroup v2 id.
    pub cgroup: u64,
    /// The waiter's tid, with `PROFILE_BY_TASK`; else 0.
    pub task: u32,
    /// The waiter's process, with `PROFILE_BY_TASK`; else 0 (a filter by pid must not depend
    /// on the process still living when the profile is read).
    pub tgid: u32,
    /// The waiter's comm (NUL-padded): a low-cardinality label every profile carries, so a
    /// flame graph can say which program waits without keying by task.
    pub comm: [u8; 16],
    /// `lock_type::*`.
    pub lock_type: u8,
    /// `well_known::*`: what the contention program knows the lock to be.
    pub well_known: u8,
    /// `stack_sampling::*`: how the waits of this key got (or did not get) their stack.
    pub stack_sampling: u8,
    pub _pad: [u8; 5],
}

/// How a key's waits got their stack (`ProfileKey::stack_sampling`).
pub mod stack_sampling {
    /// Every wait's stack was taken (waits of `SHORT_WAIT_NS` or more).
    pub const ALWAYS: u8 = 0;
    /// Short waits whose stack was taken as the 1 in `profile_short_every`.
    pub const SAMPLED: u8 = 1;
    /// Short waits whose stack was not taken (`stack` is `NO_STACK`): user space splits them
    /// over the sampled stacks of the same lock.
    pub const SKIPPED: u8 = 2;
}

/// Locks the contention program recognises by where they live (`ProfileKey::well_known`).
pub mod well_known {
    /// Nothing known beyond the address.
    pub const NONE: u8 = 0;
    /// The waiter's own `sighand->siglock` (shared by its thread group): the value's
    /// `mm_tgid` holds the waiter's process.
    pub const SIGLOCK: u8 = 1;
}
const _: () = assert!(core::mem::size_of::<ProfileKey>() == 56);

/// What a key's waits add up to, on one CPU (`LOCK_PROFILE` is a per-CPU hash: plain adds).
/// User space adds the CPUs' counts and totals, keeps the longest wait, and the `owner` and
/// `mm_tgid` of the CPU that counted most (each CPU keeps its last).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProfileValue {
    pub count: u64,
    pub total_ns: u64,
    pub max_ns: u64,
    /// The owner at the last wait (tid): a mutex's or a write-held rwsem's; 0 when unknown or
    /// reader-owned.
    pub owner: u32,
    /// For an `mmap_lock`, the tgid of the process whose lock it is (`u32::MAX`: unknown);
    /// for a siglock (`well_known::SIGLOCK`), the waiter's process; 0 for any other lock.
    pub mm_tgid: u32,
}
const _: () = assert!(core::mem::size_of::<ProfileValue>() == 32);

/// A CPU's batch of short waits without a stack that all had one key (`PROFILE_PENDING`):
/// added to the batch while the CPU's next such wait has the same key (the common case on a
/// hot lock: no hash-map operation at all), written to `LOCK_PROFILE` when a wait of another
/// key comes. User space reads the batches too, after the table (see the user-side reader).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProfilePending {
    pub key: ProfileKey,
    /// `count` 0: no batch.
    pub value: ProfileValue,
    /// Short waits seen on this CPU: which ones take their stack (1 in `profile_short_every`).
    pub short_waits: u64,
    /// The task whose waits the batch holds: a next short wait by the same task on the same
    /// lock has the same key (its cgroup and comm are the task's), so it is added without
    /// building the key.
    pub tid: u32,
    /// Twice the batches this CPU has written to the table, odd while one is being written: a
    /// reader that sees it even and unchanged across its walk of the table knows the batch it
    /// read was not (also) in the table.
    pub flushes: u32,
}
const _: () = assert!(core::mem::size_of::<ProfilePending>() == 56 + 32 + 16);

/// A stack's frames, leaf first; unused slots are 0.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StackFrames {
    pub ips: [u64; PROFILE_STACK_DEPTH],
}
const _: () = assert!(core::mem::size_of::<StackFrames>() == 8 * PROFILE_STACK_DEPTH);

/// The hash of a stack's frames (FNV-1a over the words, never `NO_STACK`). The eBPF side and
/// user space compute the same value; user space checks every stored stack against it.
pub fn stack_hash(ips: &[u64; PROFILE_STACK_DEPTH]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < PROFILE_STACK_DEPTH {
        h ^= ips[i];
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    if h == NO_STACK {
        1
    } else {
        h
    }
}
