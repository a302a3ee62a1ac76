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

use core::{
    ffi::c_void,
    intrinsics::{atomic_xadd, AtomicOrdering},
};

use aya_ebpf::{
    helpers::{bpf_get_current_cgroup_id, bpf_get_stack},
    macros::map,
    maps::{HashMap, PerCpuArray},
};
use tracer_common::{
    config_flags, names, stack_hash, stack_sampling, well_known, Config, Counter, ProfileKey,
    ProfileValue, StackFrames, NO_STACK, PROFILE_STACK_DEPTH, SPIN_STACK_ALWAYS_NS,
};

use crate::{
    maps::{count, current_ids, offsets},
    task::current_task_field,
};

/// (lock, stack, cgroup, type[, task]) → count, total, max. When full, a wait of a new key is
/// dropped from the profile and counted (`ProfileFull`); known keys keep adding.
#[map]
static LOCK_PROFILE: HashMap<ProfileKey, ProfileValue> =
    HashMap::with_max_entries(names::LOCK_PROFILE_CAPACITY, 0);

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
    /// Short spins seen on this CPU (`spin_sampled`).
    spins: u64,
}

#[map]
static STACK_SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

const BPF_NOEXIST: u64 = 1;
const EEXIST: i32 = 17;
/// What a hash map update returns when the map is full.
const E2BIG: i32 = 7;

/// Adds one contended wait of `waited` ns on `lock` to the profile. `owner`: the owner's tid
/// when the lock names one (0 otherwise); `mm_tgid`: for an `mmap_lock`, whose it is;
/// `spinning`: a spinning wait, whose stack is sampled when it was short.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub fn record(
    ctx: *mut c_void,
    cfg: &Config,
    lock: u64,
    lock_type: u8,
    waited: u64,
    owner: u32,
    mm_tgid: u32,
    spinning: bool,
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
    let sampling = if !spinning || waited >= SPIN_STACK_ALWAYS_NS {
        stack_sampling::ALWAYS
    } else if spin_sampled(cfg) {
        stack_sampling::SAMPLED
    } else {
        stack_sampling::SKIPPED
    };
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
        lock_type,
        well_known,
        stack_sampling: sampling,
        _pad: [0; 5],
    };
    if add(&key, waited, owner, mm_tgid) {
        return;
    }
    let fresh = ProfileValue {
        count: 1,
        total_ns: waited,
        max_ns: waited,
        owner,
        mm_tgid,
    };
    match LOCK_PROFILE.insert(key, fresh, BPF_NOEXIST) {
        Ok(()) => {}
        // Another CPU made the entry first: add to it.
        Err(e) if e == -EEXIST => {
            if !add(&key, waited, owner, mm_tgid) {
                count(Counter::ProfileBusy);
            }
        }
        Err(e) if e == -E2BIG => count(Counter::ProfileFull),
        // -EBUSY: the map's bucket lock was held by a run this one interrupted.
        Err(_) => count(Counter::ProfileBusy),
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

/// Adds to an existing aggregate; false when `key` has none.
#[inline(always)]
fn add(key: &ProfileKey, waited: u64, owner: u32, mm_tgid: u32) -> bool {
    let Some(v) = LOCK_PROFILE.get_ptr_mut(key) else {
        return false;
    };
    // SAFETY: a map value, valid for this program run; count and total are shared between
    // CPUs and added atomically, the rest is last-writer-wins (see `ProfileValue`).
    unsafe {
        atomic_add(&raw mut (*v).count, 1);
        atomic_add(&raw mut (*v).total_ns, waited);
        if waited > (*v).max_ns {
            (*v).max_ns = waited;
        }
        (*v).owner = owner;
        (*v).mm_tgid = mm_tgid;
    }
    true
}

/// `*dst += v` atomically: BPF's `lock xadd`. Core's `AtomicU64::fetch_add` is not offered on
/// the BPF target (it has no compare-and-swap before v3); the add itself is in every version.
///
/// # Safety
/// `dst` points into a map value valid for this program run.
#[inline(always)]
unsafe fn atomic_add(dst: *mut u64, v: u64) {
    // The result is unused, so LLVM emits the plain `lock xadd` (no fetch).
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(dst, v) };
}

/// Whether this short spin is the 1 in `profile_spin_every` on this CPU that takes its stack.
#[inline(always)]
fn spin_sampled(cfg: &Config) -> bool {
    if cfg.profile_spin_every <= 1 {
        return true;
    }
    let Some(scratch) = STACK_SCRATCH.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: this CPU's slot; a nested run racing on the counter only shifts which spin is
    // sampled.
    unsafe {
        (*scratch).spins = (*scratch).spins.wrapping_add(1);
        (*scratch).spins % u64::from(cfg.profile_spin_every) == 0
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
