//! Lock types of `lock:contention_begin`, from its flags.

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
    /// Real-time (PREEMPT_RT) locks and percpu rwsems: their owner field differs.
    pub const LCB_F_RT: u32 = 1 << 3;
    pub const LCB_F_PERCPU: u32 = 1 << 4;
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
