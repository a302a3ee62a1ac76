//! Page faults. Default mode hooks only kernel-mode faults (a user copy from kernel code), to
//! flag those taken under a lock faultline knows about (the rule of the driver-mutex seed: never
//! hold a lock across a user copy that the fault path may need). `--detail full` also hooks
//! user faults for per-process per-fault counters; otherwise per-process fault counts come from
//! the kernel's own `min_flt`/`maj_flt` in /proc, which cost nothing extra.

use aya_ebpf::{
    helpers::bpf_ktime_get_ns,
    macros::{btf_tracepoint, map},
    maps::{PerCpuArray, PerCpuHashMap},
    programs::BtfTracePointContext,
};
use tracer_common::{
    config_flags, names, reason, Counter, EventKind, LastFault, PageFaultEvent, ProcFaults,
};

use crate::{
    contention,
    maps::{config, count, current_ids, finish, header, output, TASK_STATE},
};

/// Per-process fault counters keyed by tgid, per CPU (faults are the hottest path faultline
/// sees: no shared cache line). User faults are counted only in full mode; kernel faults under
/// a lock always. Entries are deleted when a process exits; when full, new processes are
/// counted only in the global counters (`Counter::ProcFaultsFull`).
#[map]
static PROC_FAULTS: PerCpuHashMap<u32, ProcFaults> =
    PerCpuHashMap::with_max_entries(names::PROC_FAULTS_CAPACITY, 0);

/// Each CPU's last page fault.
#[map]
pub static LAST_FAULT: PerCpuArray<LastFault> = PerCpuArray::with_max_entries(1, 0);

#[btf_tracepoint(function = "page_fault_user")]
pub fn page_fault_user_btf(ctx: BtfTracePointContext) -> i32 {
    finish(on_fault(ctx.arg(0), ctx.arg(2), true));
    0
}

#[btf_tracepoint(function = "page_fault_kernel")]
pub fn page_fault_kernel_btf(ctx: BtfTracePointContext) -> i32 {
    finish(on_fault(ctx.arg(0), ctx.arg(2), false));
    0
}

/// A dead process's counters go with it.
pub fn on_group_exit(tgid: u32) {
    let _ = PROC_FAULTS.remove(tgid);
}

/// Bumps one counter of the current process, creating its entry on first use.
#[inline(always)]
fn bump_proc(tgid: u32, f: impl Fn(&mut ProcFaults)) -> Result<(), Counter> {
    if let Some(p) = PROC_FAULTS.get_ptr_mut(tgid) {
        // SAFETY: this CPU's copy of the value.
        f(unsafe { &mut *p });
        return Ok(());
    }
    let mut fresh = ProcFaults::default();
    f(&mut fresh);
    PROC_FAULTS
        .insert(tgid, fresh, 0)
        .map_err(|_| Counter::ProcFaultsFull)
}

fn on_fault(addr: u64, error_code: u64, user: bool) -> Result<(), Counter> {
    let cfg = config()?;
    let (tid, tgid) = current_ids();
    if tgid == cfg.self_tgid {
        return Ok(());
    }
    let now = unsafe { bpf_ktime_get_ns() };
    if let Some(slot) = LAST_FAULT.get_ptr_mut(0) {
        // SAFETY: per-CPU slot.
        unsafe {
            *slot = LastFault {
                tid,
                tgid,
                addr,
                ts_ns: now,
                took_mmap_lock: 0,
                user: user as u8,
                _pad: [0; 6],
            }
        };
    }
    if user {
        count(Counter::PageFaultUser);
        return bump_proc(tgid, |p| p.user += 1);
    }
    count(Counter::PageFaultKernel);
    // Kernel-mode faults are rare enough for a task lookup.
    // SAFETY: a plain read of a map value.
    let holds_mmap_lock =
        unsafe { TASK_STATE.get(tid) }.is_some_and(|st| st.holds.iter().any(|h| h.mm != 0));
    let under_lock = holds_mmap_lock || contention::owns_contended_lock(tid);
    let per_fault = cfg.flags & config_flags::PER_FAULT != 0;
    if per_fault || under_lock {
        bump_proc(tgid, |p| {
            p.kernel += per_fault as u64;
            if under_lock {
                p.under_lock += 1;
            }
        })?;
    }
    let mut flags = if cfg.flags & config_flags::RECORD_ALL != 0 {
        reason::RECORD
    } else {
        0
    };
    if under_lock {
        count(Counter::FaultUnderLock);
        flags |= reason::UNDER_LOCK;
    }
    if flags == 0 {
        return Ok(());
    }
    output(PageFaultEvent {
        header: header(EventKind::PageFault, flags, now),
        addr,
        error_code,
        user: 0,
        _pad: [0; 7],
    })
}

/// Called when a task starts to take its own `mmap_lock` for read (full mode): if that is the
/// fault this CPU just took, the per-VMA lock did not serve it.
#[inline(always)]
pub fn fault_took_mmap_lock(tid: u32, now: u64) {
    let Some(slot) = LAST_FAULT.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU slot.
    let last = unsafe { &mut *slot };
    // 1 ms: a fault reaches lock_mm_and_find_vma within microseconds of the exception.
    if last.tid == tid && last.took_mmap_lock == 0 && now - last.ts_ns < 1_000_000 {
        last.took_mmap_lock = 1;
        count(Counter::FaultMmapLock);
        finish(bump_proc(last.tgid, |p| p.mmap_lock += 1));
    }
}
