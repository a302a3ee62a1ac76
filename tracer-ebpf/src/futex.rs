//! User-space locks: a task going to sleep inside `futex()` or `futex_waitv()` (seen from
//! `sched_switch`, so only real sleeps cost anything: an uncontended user lock never enters
//! the kernel and a wait that returns EAGAIN never sleeps), and the wake-up that ends it (seen
//! from `sched_waking`, in the waker's context, which says how it ended).
//!
//! Cost: every sleep pays one read of the sleeper's saved syscall number; only futex sleeps pay
//! a hash insert and a read of the user words around the futex (the owner evidence user space
//! checks). Every wake-up pays one read of the wakee's syscall number; only a futex sleeper's
//! pays the hash delete. No syscall tracepoint is used: those slow every system call.

use aya_ebpf::{
    bindings::task_struct,
    helpers::{bpf_get_current_task_btf, bpf_ktime_get_ns, bpf_probe_read_user, bpf_task_pt_regs},
    macros::map,
    maps::{HashMap, PerCpuHashMap},
};
use tracer_common::{
    config_flags, futex_op, names, outcome, regs, syscall, window_ok, Counter, EventHeader,
    EventKind, FutexEvent, FutexTime, FutexWait, TASK_COMM_LEN, WINDOW_BEFORE, WINDOW_WORDS,
};

use crate::{
    maps::{config, count, current_ids, header, output, read_at},
    task::task_tid,
};

/// Futex sleeps in progress, keyed by tid. The loader sizes it like `TASK_STATE`. A sleep
/// that finds it full is counted (`Counter::FutexWaitsFull`) and not tracked.
#[map]
pub static FUTEX_WAITS: HashMap<u32, FutexWait> =
    HashMap::with_max_entries(names::TASK_STATE_CAPACITY, 0);

/// Futex waiting time per process (tgid), per CPU: added when a sleep ends. The agent reads
/// it for the per-process metrics and deletes the entries of processes gone.
#[map]
static FUTEX_TIME: PerCpuHashMap<u32, FutexTime> =
    PerCpuHashMap::with_max_entries(names::FUTEX_TIME_CAPACITY, 0);

/// `TASK_INTERRUPTIBLE`: futex waits sleep interruptibly; a task inside `futex()` that sleeps
/// uninterruptibly waits for something else (the futex word's page, an rwsem).
const TASK_INTERRUPTIBLE: u32 = 0x1;
const TASK_UNINTERRUPTIBLE: u32 = 0x2;

/// The saved user registers of `task` (0 when it has none, as a kernel thread).
#[inline(always)]
fn user_regs(task: *mut task_struct) -> u64 {
    // SAFETY: `task` is a BTF task pointer (the current task, or the tracepoint's wakee).
    unsafe { bpf_task_pt_regs(task) as u64 }
}

/// Whether the scheduler's `prev_state` is a futex sleep's (interruptible, not killable).
#[inline(always)]
pub fn futex_like_sleep(prev_state: u32) -> bool {
    prev_state & TASK_INTERRUPTIBLE != 0 && prev_state & TASK_UNINTERRUPTIBLE == 0
}

/// `sched_switch`: the current task goes to sleep. Recorded when it sleeps inside a futex
/// wait or lock operation.
#[inline(never)]
pub fn on_sleep() -> Result<(), Counter> {
    let cfg = config()?;
    if cfg.flags & config_flags::FUTEX_OFF != 0 {
        return Ok(());
    }
    // SAFETY: a helper without arguments, allowed in tp_btf programs.
    let regs = user_regs(unsafe { bpf_get_current_task_btf() });
    if regs == 0 {
        return Ok(());
    }
    let nr = read_at::<u64>(regs, regs::ORIG_AX)?;
    if nr != syscall::FUTEX && nr != syscall::FUTEX_WAITV {
        return Ok(());
    }
    let (tid, tgid) = current_ids();
    if tgid == cfg.self_tgid {
        return Ok(());
    }
    let di = read_at::<u64>(regs, regs::DI)?;
    let si = read_at::<u64>(regs, regs::SI)?;
    let r10 = read_at::<u64>(regs, regs::R10)?;
    let (uaddr, op, val, nr_futexes) = if nr == syscall::FUTEX {
        let op = si as u32;
        if !futex_op::sleeps(op & futex_op::CMD_MASK) {
            return Ok(());
        }
        (di, op, read_at::<u64>(regs, regs::DX)? as u32, 1)
    } else {
        // struct futex_waitv { u64 val; u64 uaddr; u32 flags; u32 reserved; }[nr]: the first.
        // SAFETY: a user read of the sleeping task's own memory; failures are returned.
        let first = unsafe { bpf_probe_read_user(di as *const [u64; 2]) }
            .map_err(|_| Counter::ReadError)?;
        (first[1], futex_op::WAITV, first[0] as u32, si as u32)
    };
    let now = unsafe { bpf_ktime_get_ns() };
    let mut wait = FutexWait {
        uaddr,
        since_ns: now,
        tgid,
        op,
        val,
        nr: nr_futexes,
        window: [0; WINDOW_WORDS],
        window_ok: 0,
        // The timeout pointer is the fourth argument of every sleeping op and of futex_waitv.
        timed: u8::from(r10 != 0),
        _pad: [0; 2],
        stack_id: -1,
    };
    read_window(&mut wait);
    count(Counter::FutexWaits);
    if FUTEX_WAITS.insert(tid, wait, 0).is_err() {
        count(Counter::FutexWaitsFull);
        return Ok(());
    }
    if cfg.flags & config_flags::RECORD_ALL != 0 {
        output(FutexEvent {
            header: header(
                EventKind::FutexWaitBegin,
                tracer_common::reason::RECORD,
                now,
            ),
            wait,
            waker_tid: 0,
            outcome: outcome::WAITING,
            _pad: [0; 3],
        })?;
    }
    Ok(())
}

/// The words around the futex, for the owner evidence user space checks (glibc keeps a
/// mutex's owner TID and an rwlock's writer next to the word). The words before it may be on
/// an unmapped page: then only the word and those after it.
#[inline(always)]
fn read_window(wait: &mut FutexWait) {
    let base = wait.uaddr.wrapping_sub((WINDOW_BEFORE * 4) as u64);
    // SAFETY: user reads of the sleeping task's own memory; failures leave the window empty.
    if let Ok(words) = unsafe { bpf_probe_read_user(base as *const [u32; WINDOW_WORDS]) } {
        wait.window = words;
        wait.window_ok = window_ok::BEFORE | window_ok::AFTER;
    } else if let Ok(after) =
        unsafe { bpf_probe_read_user(wait.uaddr as *const [u32; WINDOW_WORDS - WINDOW_BEFORE]) }
    {
        let mut i = 0;
        while i < WINDOW_WORDS - WINDOW_BEFORE {
            wait.window[WINDOW_BEFORE + i] = after[i];
            i += 1;
        }
        wait.window_ok = window_ok::AFTER;
    }
}

/// `sched_waking` of `wakee` by the current task: ends the wakee's futex sleep, if it has one.
#[inline(never)]
pub fn on_waking(wakee: u64) -> Result<(), Counter> {
    let cfg = config()?;
    if cfg.flags & config_flags::FUTEX_OFF != 0 || wakee == 0 {
        return Ok(());
    }
    let regs = user_regs(wakee as *mut task_struct);
    if regs == 0 {
        return Ok(());
    }
    let nr = read_at::<u64>(regs, regs::ORIG_AX)?;
    if nr != syscall::FUTEX && nr != syscall::FUTEX_WAITV {
        return Ok(());
    }
    let wakee_tid = task_tid(wakee)?;
    // SAFETY: a plain read of a map value, copied out before the delete.
    let Some(wait) = (unsafe { FUTEX_WAITS.get(wakee_tid) }).copied() else {
        return Ok(());
    };
    let _ = FUTEX_WAITS.remove(wakee_tid);
    let now = unsafe { bpf_ktime_get_ns() };
    let took = now.saturating_sub(wait.since_ns);
    add_time(wait.tgid, took);
    let record = cfg.flags & config_flags::RECORD_ALL != 0;
    if took < cfg.wait_threshold_ns && !record {
        return Ok(());
    }
    let (waker_tid, outcome) = how_it_ended(&wait)?;
    let mut flags = 0;
    if record {
        flags |= tracer_common::reason::RECORD;
    }
    if took >= cfg.wait_threshold_ns {
        flags |= tracer_common::reason::SLOW_WAIT;
    }
    output(FutexEvent {
        header: EventHeader {
            tid: wakee_tid,
            tgid: wait.tgid,
            comm: [0; TASK_COMM_LEN],
            // Written by the waker: its cgroup is not the wakee's.
            cgroup_id: 0,
            ..header(EventKind::FutexWaitEnd, flags, now)
        },
        wait,
        waker_tid,
        outcome,
        _pad: [0; 3],
    })
}

/// How a sleep ended, from the waker's context: a task inside a futex wake operation woke it;
/// one sending a signal or exiting its group interrupted it; anything else (the timer's
/// interrupt, mostly) ended a timed wait by its timeout. An inference: an interrupt that
/// happens to land on a task inside a futex wake reads as that task's wake-up.
#[inline(always)]
fn how_it_ended(wait: &FutexWait) -> Result<(u32, u8), Counter> {
    let (waker_tid, _) = current_ids();
    // SAFETY: a helper without arguments, allowed in tp_btf programs.
    let regs = user_regs(unsafe { bpf_get_current_task_btf() });
    let nr = if regs == 0 || waker_tid == 0 {
        u64::MAX
    } else {
        read_at::<u64>(regs, regs::ORIG_AX)?
    };
    let woke = nr == syscall::FUTEX
        && futex_op::wakes(read_at::<u64>(regs, regs::SI)? as u32 & futex_op::CMD_MASK);
    let signal = matches!(
        nr,
        syscall::KILL
            | syscall::TKILL
            | syscall::TGKILL
            | syscall::RT_SIGQUEUEINFO
            | syscall::RT_TGSIGQUEUEINFO
            | syscall::PIDFD_SEND_SIGNAL
            | syscall::EXIT_GROUP
    );
    Ok(if woke {
        (waker_tid, outcome::WOKEN)
    } else if signal {
        (waker_tid, outcome::SIGNAL)
    } else if wait.timed != 0 {
        (0, outcome::TIMEOUT)
    } else {
        (0, outcome::OTHER)
    })
}

#[inline(always)]
fn add_time(tgid: u32, ns: u64) {
    if let Some(t) = FUTEX_TIME.get_ptr_mut(tgid) {
        // SAFETY: this CPU's value; tracing programs do not preempt each other on one CPU.
        unsafe {
            (*t).waits += 1;
            (*t).wait_ns += ns;
        }
        return;
    }
    let fresh = FutexTime {
        waits: 1,
        wait_ns: ns,
    };
    // BPF_NOEXIST: another CPU may have added the key meanwhile; then this CPU's slot of it is
    // still zero, and the add is retried once on it.
    if FUTEX_TIME.insert(tgid, fresh, 1).is_err() {
        if let Some(t) = FUTEX_TIME.get_ptr_mut(tgid) {
            // SAFETY: as above.
            unsafe {
                (*t).waits += 1;
                (*t).wait_ns += ns;
            }
        } else {
            count(Counter::FutexTimeFull);
        }
    }
}

/// The task is gone: a sleep it never woke from (killed) goes with it.
pub fn on_task_exit(tid: u32) {
    let _ = FUTEX_WAITS.remove(tid);
}
