//! `lock:contention_begin/end`: waits on kernel locks, typed from their flags, with the owner
//! read at contention time (mutex owner, writer-owned rwsem owner).
//!
//! Spinning locks (spinlocks, rwlocks) only feed histograms: their waits are short, never sleep,
//! and would flood the ring buffer. Sleeping locks get per-task state, so a snapshot shows who
//! waits on whom right now, and stream when slow (or always in record mode).

use aya_ebpf::{
    helpers::bpf_ktime_get_ns,
    macros::map,
    maps::{HashMap, PerCpuArray},
};
use tracer_common::{lock_type, reason, Counter, EventKind, LockWaitEvent, HIST_LOCK_BASE};

use crate::{
    maps::{count, header, observe_at, offsets, output, read_at, task_tid, TASK_STATE},
    mmap_lock::{record_flag, task_state, traced},
};

/// `contention_begin` flags that mark percpu rwsems and rt locks, whose owner field differs.
const LCB_F_RT: u32 = 1 << 3;
const LCB_F_PERCPU: u32 = 1 << 4;

/// A spinning wait in flight on this CPU: (lock, type, since). Spinners do not migrate.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SpinWait {
    lock: u64,
    since_ns: u64,
    lock_type: u8,
    _pad: [u8; 7],
}

#[map]
static SPIN_WAIT: PerCpuArray<SpinWait> = PerCpuArray::with_max_entries(1, 0);

/// Tasks named owner of a contended sleeping lock → that lock, until a waiter's wait ends (the
/// lock moved on). 4096 owners; when full the newest owner is not recorded, so a fault it takes
/// under that lock is not flagged.
#[map]
static OWNERS: HashMap<u32, u64> = HashMap::with_max_entries(4096, 0);

/// An exiting task owns nothing.
pub fn forget_owner(tid: u32) {
    let _ = OWNERS.remove(tid);
}

/// Whether `tid` owns a contended sleeping lock right now, as far as waiters told us.
pub fn owns_contended_lock(tid: u32) -> bool {
    // SAFETY: a plain read of a map value.
    unsafe { OWNERS.get(tid) }.is_some()
}

/// The tid owning `lock` right now, when the lock records one (0 otherwise).
fn owner_of(lock: u64, t: u8, flags: u32) -> u32 {
    if flags & (LCB_F_RT | LCB_F_PERCPU) != 0 {
        return 0;
    }
    let off = offsets();
    let owner_field = match t {
        // `owner` is the first member of struct mutex: offset 0 is a real offset here.
        lock_type::MUTEX if off.task_pid != 0 => off.mutex_owner,
        lock_type::RWSEM_READ | lock_type::RWSEM_WRITE if off.task_pid != 0 => off.rwsem_owner,
        _ => return 0,
    };
    let Some(owner) = read_at::<u64>(lock, owner_field) else {
        return 0;
    };
    // rwsem: bit 0 set means reader-owned, and readers are not recorded there.
    if t != lock_type::MUTEX && owner & 1 != 0 {
        return 0;
    }
    // The low bits of both owner words are flags; the rest is the task_struct pointer.
    task_tid(owner & !0x7)
}

pub fn on_begin(lock: u64, flags: u32) {
    let t = if flags & (LCB_F_RT | LCB_F_PERCPU) != 0 && flags & lock_type::LCB_F_SPIN == 0 {
        lock_type::OTHER
    } else {
        lock_type::from_flags(flags)
    };
    let now = unsafe { bpf_ktime_get_ns() };
    if !lock_type::sleeps(t) {
        if let Some(slot) = SPIN_WAIT.get_ptr_mut(0) {
            // SAFETY: per-CPU slot.
            unsafe {
                *slot = SpinWait {
                    lock,
                    since_ns: now,
                    lock_type: t,
                    _pad: [0; 7],
                }
            };
        }
        return;
    }
    let Some((cfg, tid, tgid)) = traced() else {
        return;
    };
    let Some(state) = task_state(tid, tgid) else {
        return;
    };
    // SAFETY: this task's own entry, valid for this program run.
    let state = unsafe { &mut *state };
    let owner = owner_of(lock, t, flags);
    state.lock = lock;
    state.lock_since_ns = now;
    state.lock_type = t;
    state.lock_owner = owner;
    if owner != 0 {
        let _ = OWNERS.insert(owner, lock, 0);
    }
    count(Counter::LockContended);
    let flags = record_flag(&cfg);
    if flags != 0 {
        output(LockWaitEvent {
            header: header(EventKind::LockWaitBegin, flags, now),
            lock,
            since_ns: 0,
            mm: mmap_lock_mm(state.wait_mm, lock),
            owner_tid: owner,
            ret: 0,
            lock_type: t,
            _pad: [0; 7],
        });
    }
}

/// The mm whose `mmap_lock` `lock` is, when the task is in an attempt on that mm.
fn mmap_lock_mm(wait_mm: u64, lock: u64) -> u64 {
    let off = offsets().mm_mmap_lock;
    if wait_mm != 0 && off != 0 && wait_mm + off as u64 == lock {
        wait_mm
    } else {
        0
    }
}

pub fn on_end(lock: u64, ret: i32) {
    let now = unsafe { bpf_ktime_get_ns() };
    if let Some(slot) = SPIN_WAIT.get_ptr_mut(0) {
        // SAFETY: per-CPU slot.
        let spin = unsafe { &mut *slot };
        if spin.lock == lock && spin.lock != 0 {
            observe_at(HIST_LOCK_BASE + spin.lock_type as u32, now - spin.since_ns);
            spin.lock = 0;
            return;
        }
    }
    let Some((cfg, tid, _)) = traced() else {
        return;
    };
    let Some(state) = TASK_STATE.get_ptr_mut(tid) else {
        return;
    };
    // SAFETY: see on_begin.
    let state = unsafe { &mut *state };
    if state.lock != lock {
        return;
    }
    let since = state.lock_since_ns;
    let waited = now - since;
    observe_at(HIST_LOCK_BASE + state.lock_type as u32, waited);
    let mut flags = record_flag(&cfg);
    if waited >= cfg.wait_threshold_ns {
        count(Counter::LockSlowWait);
        flags |= reason::SLOW_WAIT;
    }
    if flags != 0 {
        output(LockWaitEvent {
            header: header(EventKind::LockWaitEnd, flags, now),
            lock,
            since_ns: since,
            mm: mmap_lock_mm(state.wait_mm, lock),
            owner_tid: state.lock_owner,
            ret,
            lock_type: state.lock_type,
            _pad: [0; 7],
        });
    }
    if state.lock_owner != 0 {
        // SAFETY: a plain read of a map value.
        if unsafe { OWNERS.get(state.lock_owner) }.is_some_and(|l| *l == lock) {
            let _ = OWNERS.remove(state.lock_owner);
        }
    }
    state.lock = 0;
}
