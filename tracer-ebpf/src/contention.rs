//! `lock:contention_begin/end`: waits on kernel locks, typed from their flags, with the owner
//! read at contention time (mutex owner, writer-owned rwsem owner, or the last reader of a
//! reader-owned rwsem as a hint).
//!
//! These fire only on the slow path, so they are the default mode's source of `mmap_lock` waits
//! too: an rwsem whose address is `mm + offsetof(mm_struct, mmap_lock)` of the current task's mm
//! (or of a foreign mm, checked through `mm->owner->mm`) is an `mmap_lock` wait, recorded in the
//! task's `wait_mm` like an attempt in flight.
//!
//! Spinning locks (spinlocks, rwlocks) only feed histograms and the lock profile: their waits
//! are short, never sleep, and would flood the ring buffer. (The profile takes them from every
//! task, the agent's own included; sleeping waits skip the agent's.) Sleeping locks get per-task state, so a snapshot shows who
//! waits on whom right now, and stream when slow (or always in record mode).
//!
//! A contended mutex reports twice: `contention_begin(MUTEX | SPIN)` before optimistic spinning,
//! then, only if spinning fails, `contention_begin(MUTEX)` before it sleeps. The spinning phase
//! runs with preemption off while the owner runs, and most contended mutexes end there (a pipe's
//! mutex under small reads and writes: millions a second). It gets the per-CPU slot of the
//! spinning locks, not the per-task hash and the owners map: the wait feeds the mutex histogram,
//! and a spin as long as the wait threshold is still streamed as a slow wait with its owner. A
//! spin that turns into a sleep carries its start into the sleeping wait. What this gives up: an
//! owner's fault while a waiter only spins is not flagged as a fault under a contended lock (a
//! fault that sleeps ends the spinning, and the waiter's sleep records the owner).

use core::ffi::c_void;

use aya_ebpf::{
    helpers::bpf_ktime_get_ns,
    macros::{btf_tracepoint, map},
    maps::{HashMap, PerCpuArray},
    programs::BtfTracePointContext,
    EbpfContext as _,
};
use tracer_common::{
    config_flags, lock_type, mode, names, reason, Counter, EventKind, Histogram, LockWaitEvent,
    HIST_LOCK_BASE, MM_OWN,
};

use crate::{
    lock_profile,
    maps::{config, count, finish, header, observe, observe_at, offsets, output, read_at},
    task::{existing_state, mm_owner, own_mm, record_flag, task_state, task_tid, traced},
};

/// A spinning wait in flight on this CPU: (lock, type, since), and for a mutex's spinning
/// phase the spinning task and the owner it spins on. Spinners do not migrate.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SpinWait {
    lock: u64,
    since_ns: u64,
    tid: u32,
    owner: u32,
    lock_type: u8,
    _pad: [u8; 7],
}

#[map]
static SPIN_WAIT: PerCpuArray<SpinWait> = PerCpuArray::with_max_entries(1, 0);

/// Tasks named owner of a contended sleeping lock → that lock, until a waiter's wait ends (the
/// lock moved on). When full the newest owner is not recorded (`Counter::OwnersFull`), so a
/// fault it takes under that lock is not flagged.
#[map]
static OWNERS: HashMap<u32, u64> = HashMap::with_max_entries(names::OWNERS_CAPACITY, 0);

#[btf_tracepoint(function = "contention_begin")]
pub fn contention_begin_btf(ctx: BtfTracePointContext) -> i32 {
    finish(on_begin(ctx.arg(0), ctx.arg(1)));
    0
}

#[btf_tracepoint(function = "contention_end")]
pub fn contention_end_btf(ctx: BtfTracePointContext) -> i32 {
    finish(on_end(ctx.as_ptr(), ctx.arg(0), ctx.arg(1)));
    0
}

/// An exiting task owns nothing.
pub fn on_task_exit(tid: u32) {
    let _ = OWNERS.remove(tid);
}

/// Whether `tid` owns a contended sleeping lock right now, as far as waiters told us.
pub fn owns_contended_lock(tid: u32) -> bool {
    // SAFETY: a plain read of a map value.
    unsafe { OWNERS.get(tid) }.is_some()
}

/// The owner of `lock` right now as (tid, reader hint), when the lock records one.
fn owner_of(lock: u64, t: u8, flags: u32) -> Result<(u32, bool), Counter> {
    if flags & (lock_type::LCB_F_RT | lock_type::LCB_F_PERCPU) != 0 {
        return Ok((0, false));
    }
    let off = offsets();
    let owner_field = match t {
        // `owner` is the first member of struct mutex: offset 0 is a real offset here.
        lock_type::MUTEX if off.task_pid != 0 => off.mutex_owner,
        lock_type::RWSEM_READ | lock_type::RWSEM_WRITE if off.task_pid != 0 => off.rwsem_owner,
        _ => return Ok((0, false)),
    };
    let owner = read_at::<u64>(lock, owner_field)?;
    // rwsem: bit 0 set means reader-owned; the rest, when not cleared, is the last reader to
    // take it, which may have released it since: a hint, not an owner.
    let reader = t != lock_type::MUTEX && owner & 1 != 0;
    // The low bits of both owner words are flags; the rest is the task_struct pointer.
    Ok((task_tid(owner & !0x7)?, reader))
}

/// The mm whose `mmap_lock` `lock` is, with whose it is (`MM_OWN`, or the owner's tgid).
fn mmap_lock_of(lock: u64) -> Result<Option<(u64, u32)>, Counter> {
    let off = offsets();
    if off.mm_mmap_lock == 0 || lock < off.mm_mmap_lock as u64 {
        return Ok(None);
    }
    let mm = lock - off.mm_mmap_lock as u64;
    if own_mm()? == mm {
        return Ok(Some((mm, MM_OWN)));
    }
    // A foreign mm (process_vm_readv, /proc/PID/mem, a uffd copy): an mm is one whose owner
    // task points back at it. Any rwsem that is not an mm fails this check (or its reads).
    match mm_owner(mm) {
        Ok(Some((owner, tgid))) if read_at::<u64>(owner, off.task_mm) == Ok(mm) => {
            Ok(Some((mm, tgid)))
        }
        _ => Ok(None),
    }
}

fn on_begin(lock: u64, flags: u32) -> Result<(), Counter> {
    let t = if flags & (lock_type::LCB_F_RT | lock_type::LCB_F_PERCPU) != 0
        && flags & lock_type::LCB_F_SPIN == 0
    {
        lock_type::OTHER
    } else {
        lock_type::from_flags(flags)
    };
    let now = unsafe { bpf_ktime_get_ns() };
    if !lock_type::sleeps(t) {
        spin_begin(lock, t, now, 0, 0);
        return Ok(());
    }
    let Some((cfg, tid, tgid)) = traced()? else {
        return Ok(());
    };
    let mutex_spin = t == lock_type::MUTEX && flags & lock_type::LCB_F_SPIN != 0;
    if mutex_spin && record_flag(&cfg) == 0 {
        let owner = owner_of(lock, t, flags).map_or(0, |(o, _)| o);
        spin_begin(lock, t, now, tid, owner);
        count(Counter::LockContended);
        return Ok(());
    }
    // A mutex that spun first: its wait began with the spinning (same CPU, preemption off).
    let since = match SPIN_WAIT.get_ptr_mut(0) {
        // SAFETY: per-CPU slot.
        Some(slot) if unsafe { (*slot).lock == lock && (*slot).tid == tid } => unsafe {
            (*slot).lock = 0;
            (*slot).since_ns
        },
        _ => now,
    };
    let state = task_state(tid, tgid)?;
    let (owner, reader_hint) = owner_of(lock, t, flags).unwrap_or((0, false));
    state.lock = lock;
    state.lock_since_ns = since;
    state.lock_type = t;
    state.lock_owner = owner;
    state.lock_owner_reader = reader_hint as u8;
    if since == now {
        // Not the sleep of a mutex that spun first: that one was counted when it began.
        count(Counter::LockContended);
    }
    let rwsem = matches!(t, lock_type::RWSEM_READ | lock_type::RWSEM_WRITE);
    let mm = if rwsem { mmap_lock_of(lock)? } else { None };
    if let Some((mm, mm_tgid)) = mm {
        count(Counter::MmapLockContended);
        state.wait_mm_tgid = mm_tgid;
        // With `start_locking` hooked (full mode) the attempt is already known since its start.
        if state.wait_mm != mm {
            state.wait_mm = mm;
            state.wait_since_ns = now;
            state.wait_mode = if t == lock_type::RWSEM_WRITE {
                mode::WRITE
            } else {
                mode::READ
            };
        }
    }
    if owner != 0 && !reader_hint && OWNERS.insert(owner, lock, 0).is_err() {
        count(Counter::OwnersFull);
    }
    let flags = record_flag(&cfg);
    if flags == 0 {
        return Ok(());
    }
    output(LockWaitEvent {
        header: header(EventKind::LockWaitBegin, flags, now),
        lock,
        since_ns: 0,
        mm: mm.map_or(0, |(mm, _)| mm),
        owner_tid: if reader_hint { 0 } else { owner },
        ret: 0,
        lock_type: t,
        _pad: [0; 7],
    })
}

fn spin_begin(lock: u64, t: u8, now: u64, tid: u32, owner: u32) {
    if let Some(slot) = SPIN_WAIT.get_ptr_mut(0) {
        // SAFETY: per-CPU slot.
        unsafe {
            *slot = SpinWait {
                lock,
                since_ns: now,
                tid,
                owner,
                lock_type: t,
                _pad: [0; 7],
            }
        };
    }
}

/// The end of a spinning wait on this CPU: its histogram and its profile entry; a mutex spin as
/// long as the wait threshold is streamed as a slow wait (with the owner read when it began).
fn spin_end(
    ctx: *mut c_void,
    spin: SpinWait,
    lock: u64,
    ret: i32,
    now: u64,
) -> Result<(), Counter> {
    let waited = now - spin.since_ns;
    observe_at(HIST_LOCK_BASE + spin.lock_type as u32, waited);
    lock_profile::record(ctx, &config()?, lock, spin.lock_type, waited, spin.owner, 0);
    if spin.tid == 0 {
        return Ok(());
    }
    let Some((cfg, _, _)) = traced()? else {
        return Ok(());
    };
    if waited < cfg.wait_threshold_ns {
        return Ok(());
    }
    count(Counter::LockSlowWait);
    output(LockWaitEvent {
        header: header(EventKind::LockWaitEnd, reason::SLOW_WAIT, now),
        lock,
        since_ns: spin.since_ns,
        mm: 0,
        owner_tid: spin.owner,
        ret,
        lock_type: spin.lock_type,
        _pad: [0; 7],
    })
}

fn on_end(ctx: *mut c_void, lock: u64, ret: i32) -> Result<(), Counter> {
    let now = unsafe { bpf_ktime_get_ns() };
    if let Some(slot) = SPIN_WAIT.get_ptr_mut(0) {
        // SAFETY: per-CPU slot.
        let spin = unsafe { &mut *slot };
        if spin.lock == lock && spin.lock != 0 {
            let done = *spin;
            spin.lock = 0;
            return spin_end(ctx, done, lock, ret, now);
        }
    }
    let Some((cfg, tid, tgid)) = traced()? else {
        return Ok(());
    };
    let Some(state) = existing_state(tid) else {
        return Ok(());
    };
    if state.lock != lock {
        return Ok(());
    }
    let since = state.lock_since_ns;
    let waited = now - since;
    observe_at(HIST_LOCK_BASE + state.lock_type as u32, waited);
    let off = offsets().mm_mmap_lock as u64;
    let mm = if state.wait_mm != 0 && off != 0 && state.wait_mm + off == lock {
        state.wait_mm
    } else {
        0
    };
    if mm != 0 && cfg.flags & config_flags::MMAP_LOCK_HOOKS == 0 {
        // No acquire hook will end this attempt: the wait ends here, and its time is the
        // mmap_lock wait histogram's (contended waits only in this mode).
        observe(
            if state.wait_mode == mode::WRITE {
                Histogram::WaitWrite
            } else {
                Histogram::WaitRead
            },
            now - state.wait_since_ns,
        );
        state.wait_mm = 0;
    }
    let mut flags = record_flag(&cfg);
    if waited >= cfg.wait_threshold_ns {
        count(Counter::LockSlowWait);
        flags |= reason::SLOW_WAIT;
    }
    let owner = state.lock_owner;
    let reader_hint = state.lock_owner_reader != 0;
    let t = state.lock_type;
    let mm_tgid = match (mm, state.wait_mm_tgid) {
        (0, _) => 0,
        (_, MM_OWN) => tgid,
        (_, other) => other,
    };
    state.lock = 0;
    lock_profile::record(
        ctx,
        &cfg,
        lock,
        t,
        waited,
        if reader_hint { 0 } else { owner },
        mm_tgid,
    );
    if owner != 0 && !reader_hint {
        // SAFETY: a plain read of a map value.
        if unsafe { OWNERS.get(owner) }.is_some_and(|l| *l == lock) {
            let _ = OWNERS.remove(owner);
        }
    }
    if flags == 0 {
        return Ok(());
    }
    output(LockWaitEvent {
        header: header(EventKind::LockWaitEnd, flags, now),
        lock,
        since_ns: since,
        mm,
        owner_tid: if reader_hint { 0 } else { owner },
        ret,
        lock_type: t,
        _pad: [0; 7],
    })
}
