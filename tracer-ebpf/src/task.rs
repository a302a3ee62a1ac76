//! Per-task helpers every probe family shares: who is traced, the task's state entry, and what
//! a task pointer or an mm pointer names.

use aya_ebpf::helpers::bpf_get_current_task;
use tracer_common::{config_flags, mode, reason, Config, Counter, TaskState};

use crate::maps::{config, current_ids, offsets, read_at, TASK_STATE};

/// The config and ids when the current task is traced; `None` for the agent's own process.
#[inline(always)]
pub fn traced() -> Result<Option<(Config, u32, u32)>, Counter> {
    let cfg = config()?;
    let (tid, tgid) = current_ids();
    Ok((tgid != cfg.self_tgid).then_some((cfg, tid, tgid)))
}

/// The task's state entry, created on first use.
#[inline(always)]
pub fn task_state(tid: u32, tgid: u32) -> Result<&'static mut TaskState, Counter> {
    if let Some(ptr) = TASK_STATE.get_ptr_mut(tid) {
        // SAFETY: a map value valid for this program run; only this task writes its own entry
        // (the one exception, a wakee's uffd wait, is written while that task sleeps).
        return Ok(unsafe { &mut *ptr });
    }
    let fresh = TaskState {
        tgid,
        ..TaskState::default()
    };
    // BPF_NOEXIST: another CPU cannot race us for our own tid, so EEXIST never happens; any error
    // is the map being full.
    TASK_STATE
        .insert(tid, fresh, 1)
        .map_err(|_| Counter::TaskStateFull)?;
    let ptr = TASK_STATE.get_ptr_mut(tid).ok_or(Counter::TaskStateFull)?;
    // SAFETY: as above.
    Ok(unsafe { &mut *ptr })
}

/// The task's state entry, if it has one (never created).
#[inline(always)]
pub fn existing_state(tid: u32) -> Option<&'static mut TaskState> {
    // SAFETY: see `task_state`.
    TASK_STATE.get_ptr_mut(tid).map(|p| unsafe { &mut *p })
}

pub fn record_flag(cfg: &Config) -> u32 {
    if cfg.flags & config_flags::RECORD_ALL != 0 {
        reason::RECORD
    } else {
        0
    }
}

pub fn mode_of(write: bool) -> u8 {
    if write {
        mode::WRITE
    } else {
        mode::READ
    }
}

/// The pointer-sized field of the current task at `off`; 0 when the offset is unknown.
pub fn current_task_field(off: u32) -> Result<u64, Counter> {
    if off == 0 {
        return Ok(0);
    }
    // SAFETY: a helper without arguments, allowed in every tracing program.
    read_at::<u64>(unsafe { bpf_get_current_task() }, off)
}

/// The current task's own mm (0 for kernel threads), when the offset is known.
pub fn own_mm() -> Result<u64, Counter> {
    let off = offsets().task_mm;
    if off == 0 {
        return Ok(0);
    }
    read_at::<u64>(unsafe { bpf_get_current_task() }, off)
}

/// tgid owning `mm` when it is not the current task's own mm: 0 for the task's own mm,
/// `u32::MAX` when the owner cannot be read (no offsets, no CONFIG_MEMCG).
pub fn foreign_mm_tgid(mm: u64) -> Result<u32, Counter> {
    let off = offsets();
    if off.task_mm == 0 {
        return Ok(u32::MAX);
    }
    if own_mm()? == mm {
        return Ok(0);
    }
    Ok(mm_owner(mm)?.map(|(_, tgid)| tgid).unwrap_or(u32::MAX))
}

/// `mm->owner` and its tgid, when the kernel records owners (CONFIG_MEMCG).
pub fn mm_owner(mm: u64) -> Result<Option<(u64, u32)>, Counter> {
    let off = offsets();
    if off.mm_owner == 0 || off.task_tgid == 0 {
        return Ok(None);
    }
    let owner = read_at::<u64>(mm, off.mm_owner)?;
    if owner == 0 {
        return Ok(None);
    }
    let tgid = read_at::<i32>(owner, off.task_tgid)?;
    Ok(Some((owner, tgid as u32)))
}

/// The tid (`task_struct.pid`) of a task pointer; 0 when unknown.
pub fn task_tid(task: u64) -> Result<u32, Counter> {
    let off = offsets();
    if task == 0 || off.task_pid == 0 {
        return Ok(0);
    }
    read_at::<i32>(task, off.task_pid).map(|p| p as u32)
}
