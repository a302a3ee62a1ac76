//! Page faults: per-process counters, and kernel-mode faults taken under a lock faultline
//! knows about (the rule of the driver-mutex seed: never hold a lock across a user copy that
//! the fault path may need).

use aya_ebpf::helpers::bpf_ktime_get_ns;
use tracer_common::{
    config_flags, reason, Counter, EventKind, LastFault, PageFaultEvent, ProcFaults,
};

use crate::maps::{
    config, count, current_ids, header, output, LAST_FAULT, PROC_FAULTS, TASK_STATE,
};

/// Bumps one counter of the current process, creating its entry on first use.
#[inline(always)]
pub fn bump_proc(tgid: u32, f: impl Fn(&mut ProcFaults)) {
    if let Some(p) = PROC_FAULTS.get_ptr_mut(tgid) {
        // SAFETY: this CPU's copy of the value.
        f(unsafe { &mut *p });
        return;
    }
    let mut fresh = ProcFaults::default();
    f(&mut fresh);
    if PROC_FAULTS.insert(tgid, fresh, 0).is_err() {
        count(Counter::ProcFaultsFull);
    }
}

pub fn on_fault(addr: u64, error_code: u64, user: bool) {
    let Some(cfg) = config() else { return };
    let (tid, tgid) = current_ids();
    if tgid == cfg.self_tgid {
        return;
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
        bump_proc(tgid, |p| p.user += 1);
        return;
    }
    count(Counter::PageFaultKernel);
    // Kernel-mode faults (a user copy from kernel code) are rare enough for a task lookup.
    // SAFETY: a plain read of a map value.
    let holds_mmap_lock =
        unsafe { TASK_STATE.get(tid) }.is_some_and(|st| st.holds.iter().any(|h| h.mm != 0));
    let under_lock = holds_mmap_lock || crate::contention::owns_contended_lock(tid);
    bump_proc(tgid, |p| {
        p.kernel += 1;
        if under_lock {
            p.under_lock += 1;
        }
    });
    let mut flags = if cfg.flags & config_flags::RECORD_ALL != 0 {
        reason::RECORD
    } else {
        0
    };
    if under_lock {
        count(Counter::FaultUnderLock);
        flags |= reason::UNDER_LOCK;
    }
    if flags != 0 {
        output(PageFaultEvent {
            header: header(EventKind::PageFault, flags, now),
            addr,
            error_code,
            user: 0,
            _pad: [0; 7],
        });
    }
}

/// Called when a task starts to take its own `mmap_lock` for read: if that is the fault this
/// CPU just took, the per-VMA lock did not serve it.
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
        bump_proc(last.tgid, |p| p.mmap_lock += 1);
    }
}
