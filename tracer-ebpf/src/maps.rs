//! Maps, globals and the small helpers every program shares.

use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_task, bpf_probe_read_kernel,
    },
    macros::map,
    maps::{Array, HashMap, PerCpuArray, RingBuf},
};
use tracer_common::{
    Config, Counter, EventHeader, Histogram, KernelOffsets, TaskState, COUNTER_COUNT, HIST_BUCKETS,
    HIST_COUNT, TASK_COMM_LEN,
};

/// The runtime configuration: one entry, written by the loader, read by every event.
#[map]
pub static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

/// Per-task state (attempt in flight, holds) keyed by tid. 32768 tasks by default (the loader
/// may resize it before load); an entry lives from the task's first `mmap_lock` event to its exit.
/// When full, new tasks go untracked and `Counter::TaskStateFull` counts each miss.
#[map]
pub static TASK_STATE: HashMap<u32, TaskState> = HashMap::with_max_entries(32768, 0);

/// `Counter` values, per CPU so the hot path never contends on a cache line.
#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_COUNT, 0);

/// Log2 histograms of wait and hold time per mode, per CPU.
#[map]
pub static HISTOGRAMS: PerCpuArray<u64> =
    PerCpuArray::with_max_entries(HIST_COUNT * HIST_BUCKETS, 0);

/// Events for user space. 4 MiB holds ~65k mmap_lock records: a few seconds of a busy host in
/// record mode, far more than the slow-event stream needs. When full, the record is dropped and
/// counted in `Counter::RingbufFull` (user space reports it as lost events).
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(4 << 20, 0);

/// Struct offsets from BTF, set by the loader before load (zero: unknown).
#[no_mangle]
static OFFSETS: KernelOffsets = KernelOffsets {
    task_mm: 0,
    task_tgid: 0,
    mm_owner: 0,
    _pad: 0,
};

pub fn offsets() -> KernelOffsets {
    // SAFETY: a global the loader rewrites before load; volatile so it is not constant-folded.
    unsafe { core::ptr::read_volatile(&OFFSETS) }
}

pub fn config() -> Option<Config> {
    CONFIG.get(0).copied()
}

#[inline(always)]
pub fn count(counter: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: a per-CPU slot; tracing programs do not preempt each other on one CPU.
        unsafe { *slot += 1 };
    }
}

/// Index of the log2 bucket of `ns`: floor(log2(ns)), 0 for 0 and 1.
#[inline(always)]
fn log2_bucket(mut v: u64) -> u32 {
    let mut b = 0;
    for shift in [32u32, 16, 8, 4, 2, 1] {
        if v >= 1u64 << shift {
            v >>= shift;
            b += shift;
        }
    }
    b
}

#[inline(always)]
pub fn observe(hist: Histogram, ns: u64) {
    let idx = hist as u32 * HIST_BUCKETS + log2_bucket(ns);
    if let Some(slot) = HISTOGRAMS.get_ptr_mut(idx) {
        // SAFETY: per-CPU slot, see `count`.
        unsafe { *slot += 1 };
    }
}

/// (tid, tgid) of the current task.
#[inline(always)]
pub fn current_ids() -> (u32, u32) {
    let pid_tgid = bpf_get_current_pid_tgid();
    (pid_tgid as u32, (pid_tgid >> 32) as u32)
}

pub fn header(kind: tracer_common::EventKind, flags: u32, ts_ns: u64) -> EventHeader {
    let (tid, tgid) = current_ids();
    EventHeader {
        kind: kind as u32,
        flags,
        ts_ns,
        tid,
        tgid,
        comm: bpf_get_current_comm().unwrap_or([0; TASK_COMM_LEN]),
    }
}

/// tgid owning `mm` when it is not the current task's own mm: 0 for the task's own mm,
/// `u32::MAX` when the owner cannot be read (no offsets, no CONFIG_MEMCG, or a failed read).
pub fn foreign_mm_tgid(mm: u64) -> u32 {
    let off = offsets();
    if off.task_mm == 0 {
        return u32::MAX;
    }
    let task = unsafe { bpf_get_current_task() } as *const u8;
    // SAFETY: reads go through bpf_probe_read_kernel, which faults safely.
    let own_mm =
        match unsafe { bpf_probe_read_kernel(task.add(off.task_mm as usize) as *const u64) } {
            Ok(v) => v,
            Err(_) => {
                count(Counter::ReadError);
                return u32::MAX;
            }
        };
    if own_mm == mm {
        return 0;
    }
    if off.mm_owner == 0 || off.task_tgid == 0 {
        return u32::MAX;
    }
    let owner = match unsafe {
        bpf_probe_read_kernel((mm as *const u8).add(off.mm_owner as usize) as *const u64)
    } {
        Ok(v) if v != 0 => v,
        _ => return u32::MAX,
    };
    match unsafe {
        bpf_probe_read_kernel((owner as *const u8).add(off.task_tgid as usize) as *const i32)
    } {
        Ok(tgid) => tgid as u32,
        Err(_) => {
            count(Counter::ReadError);
            u32::MAX
        }
    }
}
