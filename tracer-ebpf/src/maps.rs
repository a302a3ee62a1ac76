//! The maps and globals every probe family shares, and the helpers that write them: counting,
//! histograms, the one output path into the ring buffer, and safe kernel reads. Maps owned by a
//! single family live in that family's module.

use aya_ebpf::{
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_probe_read_kernel,
    },
    macros::map,
    maps::{Array, HashMap, PerCpuArray, RingBuf},
};
use tracer_common::{
    names, Config, Counter, EventHeader, EventKind, Histogram, KernelOffsets, TaskState,
    COUNTER_COUNT, HIST_BUCKETS, HIST_COUNT, TASK_COMM_LEN,
};

/// The runtime configuration: one entry, written by the loader, read by every event.
#[map]
pub static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

/// Per-task state (attempt or contended wait in flight, holds, uffd wait, ioctl) keyed by tid.
/// Entries are created on the slow path (a contended wait, a uffd ioctl or wait) and, with the
/// `mmap_lock` hooks attached, at a task's first acquisition; they live until the task exits
/// (`exit.rs`). When full, new tasks go untracked and `Counter::TaskStateFull` counts each miss;
/// the loader may resize it.
#[map]
pub static TASK_STATE: HashMap<u32, TaskState> =
    HashMap::with_max_entries(names::TASK_STATE_CAPACITY, 0);

/// `Counter` values, per CPU so the hot path never contends on a cache line.
#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_COUNT, 0);

/// Log2 histograms of wait and hold time per mode, per CPU.
#[map]
pub static HISTOGRAMS: PerCpuArray<u64> =
    PerCpuArray::with_max_entries(HIST_COUNT * HIST_BUCKETS, 0);

/// Events for user space (see `names::EVENTS_BYTES` for its size). When full, the record is
/// dropped and counted in `Counter::RingbufFull`; user space reports it as lost events and
/// marks what it touched as unknown.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(names::EVENTS_BYTES, 0);

/// Struct offsets from BTF, set by the loader before load (zero: unknown).
#[no_mangle]
static OFFSETS: KernelOffsets = KernelOffsets {
    task_mm: 0,
    task_tgid: 0,
    mm_owner: 0,
    task_pid: 0,
    mutex_owner: 0,
    rwsem_owner: 0,
    mm_mmap_lock: 0,
    task_files: 0,
    files_fdt: 0,
    fdt_fd: 0,
    file_private: 0,
    uffd_ctx_mm: 0,
    file_f_op: 0,
    fops_poll: 0,
    task_sighand: 0,
    task_comm: 0,
    handle_userfault_start: 0,
    handle_userfault_end: 0,
    uffd_fops: 0,
    uffd_poll: 0,
};

pub fn offsets() -> KernelOffsets {
    // SAFETY: a global the loader rewrites before load; volatile so it is not constant-folded.
    unsafe { core::ptr::read_volatile(&OFFSETS) }
}

pub fn config() -> Result<Config, Counter> {
    CONFIG.get(0).copied().ok_or(Counter::NoConfig)
}

#[inline(always)]
pub fn count(counter: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: a per-CPU slot; tracing programs do not preempt each other on one CPU.
        unsafe { *slot += 1 };
    }
}

/// Adds `n` to a counter (a batch of waits dropped at once).
#[inline(always)]
pub fn count_by(counter: Counter, n: u64) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: a per-CPU slot; tracing programs do not preempt each other on one CPU.
        unsafe { *slot += n };
    }
}

/// Counts the error of a handler, if any: the one place a program's failure is recorded.
#[inline(always)]
pub fn finish(result: Result<(), Counter>) {
    if let Err(c) = result {
        count(c);
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
    observe_at(hist as u32, ns);
}

/// Like `observe`, for the histograms past the mmap_lock ones (`HIST_LOCK_BASE` + type, …).
#[inline(always)]
pub fn observe_at(hist: u32, ns: u64) {
    if hist >= HIST_COUNT {
        return;
    }
    let idx = hist * HIST_BUCKETS + log2_bucket(ns);
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

pub fn header(kind: EventKind, flags: u32, ts_ns: u64) -> EventHeader {
    let (tid, tgid) = current_ids();
    EventHeader {
        kind: kind as u32,
        flags,
        ts_ns,
        tid,
        tgid,
        comm: bpf_get_current_comm().unwrap_or([0; TASK_COMM_LEN]),
        // SAFETY: a helper without arguments, allowed in every tracing program.
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
    }
}

/// Emits a plain-data record: the one way anything reaches the ring buffer.
#[inline(always)]
pub fn output<T: 'static>(value: T) -> Result<(), Counter> {
    let mut entry = EVENTS.reserve::<T>(0).ok_or(Counter::RingbufFull)?;
    entry.write(value);
    entry.submit(0);
    Ok(())
}

/// Reads a kernel value at `base + off`.
#[inline(always)]
pub fn read_at<T>(base: u64, off: u32) -> Result<T, Counter> {
    // SAFETY: bpf_probe_read_kernel handles invalid addresses.
    unsafe { bpf_probe_read_kernel((base as *const u8).add(off as usize) as *const T) }
        .map_err(|_| Counter::ReadError)
}
