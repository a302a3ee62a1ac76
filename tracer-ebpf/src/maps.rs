//! Maps, globals and the small helpers every program shares.

use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_task, bpf_probe_read_kernel,
    },
    macros::map,
    maps::{Array, HashMap, PerCpuArray, PerCpuHashMap, RingBuf},
};
use tracer_common::{
    Config, Counter, EventHeader, Histogram, KernelOffsets, LastFault, ProcFaults, TaskState,
    COUNTER_COUNT, HIST_BUCKETS, HIST_COUNT, TASK_COMM_LEN, UFFD_ERROR_SLOTS,
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

/// Per-process fault counters keyed by tgid, per CPU (faults are the hottest path faultline
/// sees: no shared cache line). 16384 processes; entries are deleted when a process exits. When
/// full, new processes are counted only in the global counters (`Counter::ProcFaultsFull`).
#[map]
pub static PROC_FAULTS: PerCpuHashMap<u32, ProcFaults> = PerCpuHashMap::with_max_entries(16384, 0);

/// Each CPU's last page fault.
#[map]
pub static LAST_FAULT: PerCpuArray<LastFault> = PerCpuArray::with_max_entries(1, 0);

/// userfaultfd ioctl errors per op and errno bucket.
#[map]
pub static UFFD_ERRORS: PerCpuArray<u64> = PerCpuArray::with_max_entries(UFFD_ERROR_SLOTS, 0);

/// Registered mm → userfaultfd context, learnt from ioctls (the context names its mm). 4096
/// mms; when full, faults on new mms are not tied to a context (`Counter::UffdHandlersFull`).
#[map]
pub static UFFD_BY_MM: HashMap<u64, u64> = HashMap::with_max_entries(4096, 0);

/// (context, tid) pairs already reported as handlers, so only a new handler is streamed.
/// 4096 pairs; when full, every ioctl of an unknown pair is streamed (safe, only noisier).
#[map]
pub static UFFD_HANDLERS: HashMap<UffdHandlerKey, u64> = HashMap::with_max_entries(4096, 0);

/// [0]: 1 once any userfaultfd ioctl was seen. Lets the scheduler hooks return at once on hosts
/// that never use userfaultfd (a plain store: it only ever goes from 0 to 1).
#[map]
pub static UFFD_ACTIVE: Array<u64> = Array::with_max_entries(1, 0);

#[repr(C)]
#[derive(Clone, Copy)]
pub struct UffdHandlerKey {
    pub ctx: u64,
    pub tid: u32,
    pub _pad: u32,
}

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
    handle_userfault_start: 0,
    handle_userfault_end: 0,
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

/// Reads a kernel value at `base + off`; `None` (counted) when the read faults.
#[inline(always)]
pub fn read_at<T>(base: u64, off: u32) -> Option<T> {
    // SAFETY: bpf_probe_read_kernel handles invalid addresses.
    match unsafe { bpf_probe_read_kernel((base as *const u8).add(off as usize) as *const T) } {
        Ok(v) => Some(v),
        Err(_) => {
            count(Counter::ReadError);
            None
        }
    }
}

/// The tid (`task_struct.pid`) of a task pointer; 0 when unknown.
pub fn task_tid(task: u64) -> u32 {
    let off = offsets();
    if task == 0 || off.task_pid == 0 {
        return 0;
    }
    read_at::<i32>(task, off.task_pid)
        .map(|p| p as u32)
        .unwrap_or(0)
}

/// Emits a plain-data record; counts a full ring buffer.
#[inline(always)]
pub fn output<T: 'static>(value: T) {
    match EVENTS.reserve::<T>(0) {
        Some(mut entry) => {
            entry.write(value);
            entry.submit(0);
        }
        None => count(Counter::RingbufFull),
    }
}

pub fn uffd_seen() -> bool {
    UFFD_ACTIVE.get(0).is_some_and(|v| *v != 0)
}

pub fn mark_uffd_seen() {
    if let Some(p) = UFFD_ACTIVE.get_ptr_mut(0) {
        // SAFETY: a single word written only with 1; racing writers agree.
        unsafe { *p = 1 };
    }
}
