//! User-space locks: futex waits as the scheduler hooks see them (a task going to sleep inside
//! `futex()` or `futex_waitv()`), the words around the futex read at that moment, and how the
//! wait ended.
//!
//! Only sleeps are seen: an uncontended user lock never enters the kernel, and a wait that
//! returns at once (EAGAIN: the word changed) never sleeps, so neither costs anything here.

/// x86_64 system call numbers the scheduler hook recognises in the sleeping task's saved
/// registers (`pt_regs.orig_ax`).
pub mod syscall {
    pub const FUTEX: u64 = 202;
    pub const FUTEX_WAITV: u64 = 449;
    /// Signal senders: a waiter woken from one was interrupted (EINTR or a restart).
    pub const KILL: u64 = 62;
    pub const TKILL: u64 = 200;
    pub const TGKILL: u64 = 234;
    pub const RT_SIGQUEUEINFO: u64 = 129;
    pub const RT_TGSIGQUEUEINFO: u64 = 297;
    pub const PIDFD_SEND_SIGNAL: u64 = 424;
    pub const EXIT_GROUP: u64 = 231;
}

/// Offsets in x86_64's `struct pt_regs` (uapi layout, stable).
pub mod regs {
    pub const R10: u32 = 56;
    pub const DX: u32 = 96;
    pub const SI: u32 = 104;
    pub const DI: u32 = 112;
    pub const ORIG_AX: u32 = 120;
}

/// futex(2) operations (the low bits of `op`).
pub mod futex_op {
    pub const CMD_MASK: u32 = 0x7f;
    pub const PRIVATE: u32 = 128;
    pub const CLOCK_REALTIME: u32 = 256;
    pub const WAIT: u32 = 0;
    pub const WAKE: u32 = 1;
    pub const REQUEUE: u32 = 3;
    pub const CMP_REQUEUE: u32 = 4;
    pub const WAKE_OP: u32 = 5;
    pub const LOCK_PI: u32 = 6;
    pub const UNLOCK_PI: u32 = 7;
    pub const WAIT_BITSET: u32 = 9;
    pub const WAKE_BITSET: u32 = 10;
    pub const WAIT_REQUEUE_PI: u32 = 11;
    pub const CMP_REQUEUE_PI: u32 = 12;
    pub const LOCK_PI2: u32 = 13;
    /// Not a futex(2) op: the wait is a `futex_waitv()` (its first futex is recorded).
    pub const WAITV: u32 = 0x1000;

    /// Whether `cmd` (masked) makes the caller sleep on the word.
    pub const fn sleeps(cmd: u32) -> bool {
        matches!(
            cmd,
            WAIT | WAIT_BITSET | LOCK_PI | LOCK_PI2 | WAIT_REQUEUE_PI
        )
    }

    /// Whether `cmd` (masked) wakes waiters: a sleeper woken by a task in one was woken.
    pub const fn wakes(cmd: u32) -> bool {
        matches!(
            cmd,
            WAKE | REQUEUE | CMP_REQUEUE | WAKE_OP | UNLOCK_PI | WAKE_BITSET | CMP_REQUEUE_PI
        )
    }
}

/// A PI futex word's owner TID bits (`FUTEX_TID_MASK`).
pub const FUTEX_TID_MASK: u32 = 0x3fff_ffff;

/// 32-bit words read around the futex: `WINDOW_BEFORE` before it, the word itself, and the
/// rest after. Enough for glibc's mutex (`__owner` 8 bytes after the word, `__kind` 16) and
/// its rwlock, whose waiters sleep on words 0, 8 or 12 bytes into the lock while the writer's
/// TID sits 24 bytes in.
pub const WINDOW_WORDS: usize = 12;
pub const WINDOW_BEFORE: usize = 4;

/// How a futex wait ended, as the waker's context shows it (the return value is not seen: no
/// syscall-exit hook, which would slow every system call of the host).
pub mod outcome {
    /// Still waiting (a snapshot of the table).
    pub const WAITING: u8 = 0;
    /// Woken by a task inside a futex wake operation (`waker_tid`).
    pub const WOKEN: u8 = 1;
    /// Woken by a task sending a signal or exiting its group: interrupted.
    pub const SIGNAL: u8 = 2;
    /// Woken by anything else while the wait had a timeout: the timer, most likely.
    pub const TIMEOUT: u8 = 3;
    /// Woken by anything else (no timeout given).
    pub const OTHER: u8 = 4;
}

/// One task's futex sleep in `FUTEX_WAITS` (keyed by tid), from the sched_switch that put it
/// to sleep until the wake-up that ends it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct FutexWait {
    pub uaddr: u64,
    pub since_ns: u64,
    pub tgid: u32,
    /// The futex op (`futex_op::WAITV` for `futex_waitv`).
    pub op: u32,
    /// The value the caller expected (futex(2)'s `val`).
    pub val: u32,
    /// `futex_waitv`: how many futexes; 1 otherwise.
    pub nr: u32,
    /// The words around the futex (`WINDOW_BEFORE` before it); see `window_ok`.
    pub window: [u32; WINDOW_WORDS],
    /// Bit 0: the words before the futex were read; bit 1: the futex and the words after it.
    pub window_ok: u8,
    /// 1 when the call gave a timeout.
    pub timed: u8,
    pub _pad: [u8; 6],
    /// The hash of the sleeper's user stack in `FUTEX_STACKS` (`NO_FUTEX_STACK`: none).
    pub ustack: u64,
    /// The hash of its kernel stack in `FUTEX_STACKS`.
    pub kstack: u64,
}
const _: () = assert!(core::mem::size_of::<FutexWait>() == 32 + 4 * WINDOW_WORDS + 8 + 16);

/// Frames kept per futex-sleep stack, leaf first (user stacks are deeper than the kernel's).
pub const FUTEX_STACK_DEPTH: usize = 32;

/// No stack (not captured, the table full, or a hash shared by two stacks).
pub const NO_FUTEX_STACK: u64 = 0;

/// A stack's frames, leaf first; unused slots are 0.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FutexStack {
    pub ips: [u64; FUTEX_STACK_DEPTH],
}

/// The hash of a futex stack's frames (FNV-1a over the words, never `NO_FUTEX_STACK`), the
/// same on both sides. `user` makes a user and a kernel stack of equal words differ.
pub fn futex_stack_hash(ips: &[u64; FUTEX_STACK_DEPTH], user: bool) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ u64::from(user);
    let mut i = 0;
    while i < FUTEX_STACK_DEPTH {
        h ^= ips[i];
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    if h == NO_FUTEX_STACK {
        1
    } else {
        h
    }
}

/// The user-lock profile's key (`FUTEX_PROFILE`): every futex sleep that ended, by process,
/// futex word, operation and the sleeper's user and kernel stacks.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FutexProfileKey {
    pub uaddr: u64,
    pub ustack: u64,
    pub kstack: u64,
    pub tgid: u32,
    /// The futex op (`futex_op::WAITV` for futex_waitv).
    pub op: u32,
    /// The value the sleeper expected: with the op, what kind of word it is (glibc's mutex
    /// waiters expect 2).
    pub val: u32,
    pub _pad: u32,
    pub comm: [u8; 16],
}
const _: () = assert!(core::mem::size_of::<FutexProfileKey>() == 56);

/// What a key's sleeps add up to on one CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FutexProfileValue {
    pub count: u64,
    pub total_ns: u64,
}
const _: () = assert!(core::mem::size_of::<FutexProfileValue>() == 16);

/// `FutexWait::window_ok` bits.
pub mod window_ok {
    pub const BEFORE: u8 = 1 << 0;
    pub const AFTER: u8 = 1 << 1;
}

/// A futex wait's record: the wait as it began (record mode) or as it ended.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct FutexEvent {
    pub header: crate::EventHeader,
    pub wait: FutexWait,
    /// The task whose wake-up ended it (0: none, or a wake-up from interrupt context).
    pub waker_tid: u32,
    /// `outcome::*`.
    pub outcome: u8,
    pub _pad: [u8; 3],
}
const _: () =
    assert!(core::mem::size_of::<FutexEvent>() == 48 + core::mem::size_of::<FutexWait>() + 8);

/// Futex waiting time of one process, in the per-CPU `FUTEX_TIME` hash keyed by tgid: every
/// futex sleep that ended, whatever it waited for.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct FutexTime {
    pub waits: u64,
    pub wait_ns: u64,
}
const _: () = assert!(core::mem::size_of::<FutexTime>() == 16);
