//! User-space locks: a task going to sleep inside `futex()` or `futex_waitv()` (seen from
//! `sched_switch`, so only real sleeps cost anything: an uncontended user lock never enters
//! the kernel and a wait that returns EAGAIN never sleeps), and the wake-up that ends it (seen
//! from `sched_waking`, in the waker's context, which says how it ended).
//!
//! Cost: every sleep pays one read of the sleeper's saved syscall number; only futex sleeps pay
//! a hash insert and a read of the user words around the futex (the owner evidence user space
//! checks). Every wake-up pays one read of the wakee's syscall number; only a futex sleeper's
//! pays the hash delete. No syscall tracepoint is used: those slow every system call.

use core::ffi::c_void;

use aya_ebpf::{
    bindings::{task_struct, BPF_F_USER_STACK},
    helpers::{
        bpf_get_current_task_btf, bpf_get_stack, bpf_ktime_get_ns, bpf_probe_read_user,
        bpf_task_pt_regs,
    },
    macros::map,
    maps::{HashMap, PerCpuArray, PerCpuHashMap},
};
use tracer_common::{
    config_flags, futex_op, futex_stack_hash, names, outcome, regs, syscall, window_ok, Counter,
    EventHeader, EventKind, FutexEvent, FutexProfileKey, FutexProfileValue, FutexStack, FutexTime,
    FutexWait, FUTEX_STACK_DEPTH, NO_FUTEX_STACK, TASK_COMM_LEN, WINDOW_BEFORE, WINDOW_WORDS,
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

/// Stack hash → frames, leaf first: the user and kernel stacks of futex sleeps, each stored
/// once under a hash of its frames (compared frame by frame on a hit: two stacks under one
/// hash are counted, never merged; see `lock_profile.rs` for why not a stack-trace map).
#[map]
static FUTEX_STACKS: HashMap<u64, FutexStack> =
    HashMap::with_max_entries(names::FUTEX_STACKS_CAPACITY, 0);

/// Where `bpf_get_stack` writes (256 bytes are too many for the program's stack), with a flag
/// for a run nested in this one (it takes no stack rather than overwrite the buffer).
#[repr(C)]
pub struct FutexScratch {
    frames: FutexStack,
    busy: u64,
}

#[map]
static FUTEX_SCRATCH: PerCpuArray<FutexScratch> = PerCpuArray::with_max_entries(1, 0);

/// The user-lock profile: (process, futex, op, expected value, user stack, kernel stack, comm)
/// → sleeps and their time, added when a sleep ends, one value per CPU (plain adds: BPF has
/// no atomic add in Rust here, and CPUs ending sleeps of one lock at once would lose counts).
/// The loader sizes it by the CPUs (`names::futex_profile_entries`). When full, a sleep of a
/// new key is counted (`FutexProfileFull`) and left out.
#[map]
static FUTEX_PROFILE: PerCpuHashMap<FutexProfileKey, FutexProfileValue> =
    PerCpuHashMap::with_max_entries(names::FUTEX_PROFILE_CAPACITY, 0);

const BPF_NOEXIST: u64 = 1;
const EEXIST: i32 = 17;

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
pub fn on_sleep(ctx: *mut c_void) -> Result<(), Counter> {
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
    // Only lock-shaped sleeps are followed: a thread pool idling on condition variables, a
    // barrier or a semaphore sleeps far more often than locks are contended, and those words
    // have no owner to follow anyway.
    if !lock_shaped(op, val) {
        return Ok(());
    }
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
        _pad: [0; 6],
        ustack: stack_of(ctx, true),
        kstack: kernel_stack(ctx, op),
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
    add_profile(wakee, &wait, took);
    let record = cfg.flags & config_flags::RECORD_ALL != 0;
    // Only a long sleep on a lock-shaped word is streamed outside record mode: idle threads
    // sleep on condition variables all the time, and the agent's snapshots see the long
    // sleeps in progress anyway (this only ends them sooner).
    let slow = took >= cfg.wait_threshold_ns;
    if !slow && !record {
        return Ok(());
    }
    let (waker_tid, outcome) = how_it_ended(&wait)?;
    let mut flags = 0;
    if record {
        flags |= tracer_common::reason::RECORD;
    }
    if slow {
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

/// Whether a sleep looks like a wait on a lock rather than on an event: a PI lock op, or a
/// wait expecting what lock waiters expect (2: glibc's mutex, Rust's and Go's runtime locks;
/// 3: glibc's rwlock; a reader count with the reader-waiting and write-locked bits: a glibc
/// rwlock reader held back by writer preference). User space reads the words to be sure; this keeps the cost of
/// everything else (condition variables, barriers, semaphores, event counts) to this check.
/// `FUTEX_WAIT_REQUEUE_PI` (a condition variable of PI mutexes) and `futex_waitv()` are
/// followed too: rare, and among the operations a user-lock tracer is expected to show (they never name
/// an owner).
#[inline(always)]
fn lock_shaped(op: u32, val: u32) -> bool {
    if op == futex_op::WAITV {
        return true;
    }
    match op & futex_op::CMD_MASK {
        futex_op::LOCK_PI | futex_op::LOCK_PI2 | futex_op::WAIT_REQUEUE_PI => true,
        futex_op::WAIT | futex_op::WAIT_BITSET => {
            val == 2 || val == 3 || (val & 4 != 0 && val & 2 != 0 && val >> 3 != 0)
        }
        _ => false,
    }
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

/// The hash of the current task's user (`user`) or kernel stack, stored in `FUTEX_STACKS`;
/// `NO_FUTEX_STACK` when it cannot be captured or stored. A user stack is walked by frame
/// pointers: code built without them gives its leaf frame and whatever the walk finds after.
#[inline(always)]
fn stack_of(ctx: *mut c_void, user: bool) -> u64 {
    let Some(scratch) = FUTEX_SCRATCH.get_ptr_mut(0) else {
        return NO_FUTEX_STACK;
    };
    // SAFETY: this CPU's slot; `busy` keeps a nested run out of it.
    let scratch = unsafe { &mut *scratch };
    if scratch.busy != 0 {
        count(Counter::FutexNoStack);
        return NO_FUTEX_STACK;
    }
    scratch.busy = 1;
    let h = capture(ctx, &mut scratch.frames, user);
    scratch.busy = 0;
    h
}

#[inline(always)]
fn capture(ctx: *mut c_void, frames: &mut FutexStack, user: bool) -> u64 {
    let buf = frames as *mut FutexStack as *mut c_void;
    let flags = if user { u64::from(BPF_F_USER_STACK) } else { 0 };
    // SAFETY: the buffer is ours and its size is passed; the kernel zeroes what a shorter
    // stack leaves.
    let n = unsafe { bpf_get_stack(ctx, buf, (FUTEX_STACK_DEPTH * 8) as u32, flags) };
    if n <= 0 {
        count(Counter::FutexNoStack);
        return NO_FUTEX_STACK;
    }
    let h = futex_stack_hash(&frames.ips, user);
    // SAFETY: a plain read of a map value.
    if let Some(stored) = unsafe { FUTEX_STACKS.get(h) } {
        return same_or_none(stored, frames, h);
    }
    // By reference: a copy of the 256-byte frames would take half the program's stack.
    #[allow(clippy::needless_borrows_for_generic_args)]
    let stored = FUTEX_STACKS.insert(h, &*frames, BPF_NOEXIST);
    match stored {
        Ok(()) => h,
        Err(e) if e == -EEXIST => match unsafe { FUTEX_STACKS.get(h) } {
            Some(stored) => same_or_none(stored, frames, h),
            None => NO_FUTEX_STACK,
        },
        Err(_) => {
            count(Counter::FutexNoStack);
            NO_FUTEX_STACK
        }
    }
}

#[inline(always)]
fn same_or_none(stored: &FutexStack, frames: &FutexStack, h: u64) -> u64 {
    let mut i = 0;
    while i < FUTEX_STACK_DEPTH {
        if stored.ips[i] != frames.ips[i] {
            count(Counter::FutexNoStack);
            return NO_FUTEX_STACK;
        }
        i += 1;
    }
    h
}

/// Kernel stacks taken per CPU for each futex command: a sleep's kernel stack is the same for
/// every sleep of one command (a wait or a PI lock, down to the scheduler), and walking it
/// costs about two microseconds, most of a sleep's cost here. So one is taken 1 in
/// `KSTACK_EVERY` sleeps of a command on a CPU, and the sleeps between take the last one.
#[repr(C)]
pub struct KstackCache {
    /// Per futex command (`CMD_MASK` + 1 slots): the last stack's hash.
    last: [u64; 16],
    /// Sleeps seen per command on this CPU.
    seen: [u32; 16],
}

#[map]
static FUTEX_KSTACKS: PerCpuArray<KstackCache> = PerCpuArray::with_max_entries(1, 0);

const KSTACK_EVERY: u32 = 64;

#[inline(always)]
fn kernel_stack(ctx: *mut c_void, op: u32) -> u64 {
    let cmd = (op & 0xf) as usize;
    let Some(cache) = FUTEX_KSTACKS.get_ptr_mut(0) else {
        return stack_of(ctx, false);
    };
    // SAFETY: this CPU's slot; the scheduler program does not nest in itself on one CPU.
    let cache = unsafe { &mut *cache };
    let n = cache.seen[cmd];
    cache.seen[cmd] = n.wrapping_add(1);
    if n % KSTACK_EVERY == 0 || cache.last[cmd] == NO_FUTEX_STACK {
        cache.last[cmd] = stack_of(ctx, false);
    }
    cache.last[cmd]
}

/// Adds an ended sleep to the user-lock profile. Written by the waker: the comm is read from
/// the wakee's task.
#[inline(always)]
fn add_profile(wakee: u64, wait: &FutexWait, took: u64) {
    let key = FutexProfileKey {
        uaddr: wait.uaddr,
        ustack: wait.ustack,
        kstack: wait.kstack,
        tgid: wait.tgid,
        op: wait.op,
        val: wait.val,
        _pad: 0,
        comm: task_comm(wakee),
    };
    if let Some(v) = FUTEX_PROFILE.get_ptr_mut(key) {
        add_to(v, took);
        return;
    }
    let fresh = FutexProfileValue {
        count: 1,
        total_ns: took,
    };
    match FUTEX_PROFILE.insert(key, fresh, BPF_NOEXIST) {
        Ok(()) => {}
        Err(e) if e == -EEXIST => {
            if let Some(v) = FUTEX_PROFILE.get_ptr_mut(key) {
                add_to(v, took);
            }
        }
        Err(_) => count(Counter::FutexProfileFull),
    }
}

#[inline(always)]
fn add_to(v: *mut FutexProfileValue, took: u64) {
    // SAFETY: this CPU's value; tracing programs do not preempt each other on one CPU.
    unsafe {
        (*v).count += 1;
        (*v).total_ns += took;
    }
}

/// The comm of a task pointer (zeros when it cannot be read).
#[inline(always)]
fn task_comm(task: u64) -> [u8; 16] {
    let off = crate::maps::offsets().task_comm;
    if off == 0 {
        return [0; 16];
    }
    read_at::<[u8; 16]>(task, off).unwrap_or([0; 16])
}

/// The task is gone: a sleep it never woke from (killed) goes with it.
pub fn on_task_exit(tid: u32) {
    let _ = FUTEX_WAITS.remove(tid);
}
