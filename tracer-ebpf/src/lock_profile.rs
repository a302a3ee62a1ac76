//! The lock-contention profile's kernel half: at the end of every contended wait the
//! contention programs time, the wait is added to its (lock, waiter stack, cgroup, type)
//! aggregate. Only contended waits get here: nothing runs on an uncontended path.
//!
//! Stacks: `bpf_get_stack` into a per-CPU buffer, stored once in `LOCK_STACKS` under a hash of
//! the frames, not in a `BPF_MAP_TYPE_STACK_TRACE` map, whose ids collide silently (with
//! `BPF_F_FAST_STACK_CMP`) or are dropped (without it) and whose buckets are sized for the
//! deepest stack. Here a hash already stored is compared frame by frame: a different stack
//! under it is counted (`ProfileStackCollision`) and its wait goes under `NO_STACK`, so no wait
//! is ever shown under a stack it did not have. See docs/design.md.

use core::ffi::c_void;

use aya_ebpf::{
    helpers::{bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_stack},
    macros::map,
    maps::{HashMap, PerCpuArray, PerCpuHashMap},
};
use tracer_common::{
    config_flags, names, stack_hash, stack_sampling, well_known, Config, Counter, ProfileKey,
    ProfilePending, ProfileValue, StackFrames, NO_STACK, PROFILE_STACK_DEPTH, SHORT_WAIT_NS,
};

use crate::{
    maps::{count, count_by, current_ids, offsets},
    task::current_task_field,
};

/// (lock, stack, cgroup, comm, type[, task]) → count, total, max, one value per CPU: two CPUs
/// waiting on one lock (the common case: that is what contention is) never write one cache
/// line, and no add needs to be atomic; user space sums the CPUs. When full, a wait of a new
/// key is dropped from the profile and counted (`ProfileFull`); known keys keep adding.
#[map]
static LOCK_PROFILE: PerCpuHashMap<ProfileKey, ProfileValue> =
    PerCpuHashMap::with_max_entries(names::LOCK_PROFILE_CAPACITY, 0);

/// Stack hash → frames, leaf first.
#[map]
static LOCK_STACKS: HashMap<u64, StackFrames> =
    HashMap::with_max_entries(names::LOCK_STACKS_CAPACITY, 0);

/// Where `bpf_get_stack` writes (128 bytes are too many for the programs' stack), with a flag
/// that says a run on this CPU is using it: a run nested in it (an interrupt's contention on a
/// kernel without the tracing programs' recursion guard) takes no stack rather than overwrite
/// the buffer between the capture and the store.
#[repr(C)]
pub struct Scratch {
    frames: StackFrames,
    busy: u64,
}

#[map]
static STACK_SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// Each CPU's batch of short waits without a stack (`ProfilePending`).
#[map]
static PROFILE_PENDING: PerCpuArray<ProfilePending> = PerCpuArray::with_max_entries(1, 0);

const BPF_NOEXIST: u64 = 1;
const EEXIST: i32 = 17;
/// What a hash map update returns when the map is full.
const E2BIG: i32 = 7;

/// Adds one contended wait of `waited` ns on `lock` to the profile. `owner`: the owner's tid
/// when the lock names one (0 otherwise); `mm_tgid`: for an `mmap_lock`, whose it is. A wait
/// shorter than `SHORT_WAIT_NS` takes its stack only when sampled, and one without its stack
/// goes into this CPU's batch (`ProfilePending`) rather than the table.
#[inline(always)]
pub fn record(
    ctx: *mut c_void,
    cfg: &Config,
    lock: u64,
    lock_type: u8,
    waited: u64,
    owner: u32,
    mm_tgid: u32,
) {
    if cfg.flags & config_flags::PROFILE_OFF != 0 {
        return;
    }
    count(Counter::ProfileWaits);
    let (task, tgid) = if cfg.flags & config_flags::PROFILE_BY_TASK != 0 {
        current_ids()
    } else {
        (0, 0)
    };
    let (well_known, mm_tgid) = match well_known_of(lock, lock_type) {
        well_known::NONE => (well_known::NONE, mm_tgid),
        // The siglock's process is the waiter's (threads share their sighand).
        w => (w, current_ids().1),
    };
    let pending = PROFILE_PENDING.get_ptr_mut(0);
    let sampling = if waited >= SHORT_WAIT_NS {
        stack_sampling::ALWAYS
    } else if short_sampled(cfg, pending) {
        stack_sampling::SAMPLED
    } else {
        stack_sampling::SKIPPED
    };
    let wait = ProfileValue {
        count: 1,
        total_ns: waited,
        max_ns: waited,
        owner,
        mm_tgid,
    };
    // The hot case: the same task's next short wait on the same lock. Its key is the batch's
    // (a task's cgroup and comm do not change between two waits but by a migration or a
    // rename in between, which this takes as not yet happened): no helper, no key, no map.
    let tid = current_ids().0;
    if let (Some(p), stack_sampling::SKIPPED) = (pending, sampling) {
        // SAFETY: this CPU's slot (see below).
        let p = unsafe { &mut *p };
        if p.value.count > 0
            && p.tid == tid
            && p.key.lock == lock
            && p.key.lock_type == lock_type
            && p.key.well_known == well_known
            && p.key.task == task
        {
            merge(&mut p.value, &wait);
            return;
        }
    }
    let key = ProfileKey {
        lock,
        stack: if sampling == stack_sampling::SKIPPED {
            NO_STACK
        } else {
            stack_of(ctx)
        },
        // SAFETY: a helper without arguments, allowed in every tracing program.
        cgroup: unsafe { bpf_get_current_cgroup_id() },
        task,
        tgid,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
        lock_type,
        well_known,
        stack_sampling: sampling,
        _pad: [0; 5],
    };
    match pending {
        Some(p) if sampling == stack_sampling::SKIPPED => {
            // SAFETY: this CPU's slot. A `tp_btf` program does not nest on one CPU; under the
            // classic-tracepoint fallback a nested run could lose a batch's update: an
            // undercount, never an invented wait.
            let p = unsafe { &mut *p };
            if p.value.count > 0 && same_key(&p.key, &key) {
                merge(&mut p.value, &wait);
                return;
            }
            // `flushes` is odd while the batch is being written to the table and replaced: a
            // reader that sees it odd, or changed across its walk, reads again.
            let flushing = p.value.count > 0;
            if flushing {
                p.flushes = p.flushes.wrapping_add(1);
                add(&p.key, &p.value);
            }
            p.key = key;
            p.value = wait;
            p.tid = tid;
            if flushing {
                p.flushes = p.flushes.wrapping_add(1);
            }
        }
        _ => add(&key, &wait),
    }
}

/// Whether two keys are the same, field by field (a slice comparison would be a `memcmp`
/// call, which BPF lacks).
#[inline(always)]
fn same_key(a: &ProfileKey, b: &ProfileKey) -> bool {
    a.lock == b.lock
        && a.stack == b.stack
        && a.cgroup == b.cgroup
        && a.task == b.task
        && a.tgid == b.tgid
        && a.comm == b.comm
        && a.lock_type == b.lock_type
        && a.well_known == b.well_known
        && a.stack_sampling == b.stack_sampling
}

/// `into` plus the waits of `v`: counts and totals added, the longest kept, the latest owner.
#[inline(always)]
fn merge(into: &mut ProfileValue, v: &ProfileValue) {
    into.count += v.count;
    into.total_ns += v.total_ns;
    if v.max_ns > into.max_ns {
        into.max_ns = v.max_ns;
    }
    into.owner = v.owner;
    into.mm_tgid = v.mm_tgid;
}

/// Adds `v`'s waits to `key`'s aggregate in the table, making it if new; waits that find the
/// table full are dropped and counted.
#[inline(always)]
fn add(key: &ProfileKey, v: &ProfileValue) {
    if add_existing(key, v) {
        return;
    }
    match LOCK_PROFILE.insert(key, v, BPF_NOEXIST) {
        Ok(()) => {}
        // Another CPU made the key first: add to this CPU's copy.
        Err(e) if e == -EEXIST => {
            if !add_existing(key, v) {
                count_by(Counter::ProfileBusy, v.count);
            }
        }
        Err(e) if e == -E2BIG => count_by(Counter::ProfileFull, v.count),
        // -EBUSY: the map's bucket lock was held by a run this one interrupted.
        Err(_) => count_by(Counter::ProfileBusy, v.count),
    }
}

/// What the lock is known to be from where it lives: the waiter's own siglock (a spinlock at
/// the address of its `sighand`, whose first member it is). One read of the current task, on
/// contended spinlocks only.
#[inline(always)]
fn well_known_of(lock: u64, lock_type: u8) -> u8 {
    if lock_type != tracer_common::lock_type::SPINLOCK {
        return well_known::NONE;
    }
    match current_task_field(offsets().task_sighand) {
        Ok(sighand) if sighand == lock => well_known::SIGLOCK,
        _ => well_known::NONE,
    }
}

/// Adds to `key`'s aggregate on this CPU; false when `key` has none.
#[inline(always)]
fn add_existing(key: &ProfileKey, v: &ProfileValue) -> bool {
    let Some(e) = LOCK_PROFILE.get_ptr_mut(key) else {
        return false;
    };
    // SAFETY: this CPU's copy of a map value, valid for this program run. A `tp_btf` program
    // does not nest on one CPU (the kernel's recursion guard), so plain adds are exact; under
    // the classic-tracepoint fallback an interrupt's wait nested in this one could lose one
    // add: an undercount, never an invented wait.
    merge(unsafe { &mut *e }, v);
    true
}

/// Whether this short wait is the 1 in `profile_short_every` on this CPU that takes its stack
/// (counted in the CPU's `ProfilePending` slot).
#[inline(always)]
fn short_sampled(cfg: &Config, pending: Option<*mut ProfilePending>) -> bool {
    if cfg.profile_short_every <= 1 {
        return true;
    }
    let Some(p) = pending else {
        return false;
    };
    // SAFETY: this CPU's slot; a nested run racing on the counter only shifts which wait is
    // sampled.
    unsafe {
        (*p).short_waits = (*p).short_waits.wrapping_add(1);
        (*p).short_waits % u64::from(cfg.profile_short_every) == 0
    }
}

/// The hash of the current kernel stack, stored in `LOCK_STACKS`; `NO_STACK` when it cannot be
/// captured or stored, or collides with a different stack.
#[inline(always)]
fn stack_of(ctx: *mut c_void) -> u64 {
    let Some(scratch) = STACK_SCRATCH.get_ptr_mut(0) else {
        count(Counter::ProfileNoStack);
        return NO_STACK;
    };
    // SAFETY: the per-CPU slot is this CPU's; `busy` keeps a nested run out of it.
    let scratch = unsafe { &mut *scratch };
    if scratch.busy != 0 {
        count(Counter::ProfileNoStack);
        return NO_STACK;
    }
    scratch.busy = 1;
    let h = capture(ctx, &scratch.frames);
    scratch.busy = 0;
    h
}

/// Captures the current stack into `frames` and stores it; its hash, or `NO_STACK`.
#[inline(always)]
fn capture(ctx: *mut c_void, frames: &StackFrames) -> u64 {
    let buf = frames as *const StackFrames as *mut c_void;
    // SAFETY: the buffer is ours (see `stack_of`); its size is passed. The kernel zeroes what a
    // shorter stack leaves.
    let n = unsafe { bpf_get_stack(ctx, buf, (PROFILE_STACK_DEPTH * 8) as u32, 0) };
    if n <= 0 {
        count(Counter::ProfileNoStack);
        return NO_STACK;
    }
    let h = stack_hash(&frames.ips);
    // SAFETY: a plain read of a map value.
    if let Some(stored) = unsafe { LOCK_STACKS.get(h) } {
        return same_or_collision(stored, frames, h);
    }
    match LOCK_STACKS.insert(h, frames, BPF_NOEXIST) {
        Ok(()) => h,
        // Stored meanwhile by another CPU: compare with what it stored.
        Err(e) if e == -EEXIST => match unsafe { LOCK_STACKS.get(h) } {
            Some(stored) => same_or_collision(stored, frames, h),
            None => NO_STACK,
        },
        Err(e) if e == -E2BIG => {
            count(Counter::ProfileStacksFull);
            NO_STACK
        }
        Err(_) => {
            count(Counter::ProfileBusy);
            NO_STACK
        }
    }
}

#[inline(always)]
fn same_or_collision(stored: &StackFrames, frames: &StackFrames, h: u64) -> u64 {
    let mut i = 0;
    while i < PROFILE_STACK_DEPTH {
        // Word by word: a slice comparison would become a memcmp call, which BPF lacks.
        if stored.ips[i] != frames.ips[i] {
            count(Counter::ProfileStackCollision);
            return NO_STACK;
        }
        i += 1;
    }
    h
}
