//! The per-task `mmap_lock` state machine.
//!
//! Kernel facts it relies on (6.18): a trylock also emits `start_locking`; failed trylocks and
//! killable locks give `acquire_returned(success = false)`; a write downgrade gives
//! `acquire_returned(write = false)` with no `start_locking` and no `released(write = true)`;
//! `mmap_read_unlock_non_owner` releases from a task (or irq) that never acquired.

use aya_ebpf::helpers::bpf_ktime_get_ns;
use tracer_common::{
    config_flags, mode, reason, Config, Counter, EventKind, Histogram, Hold, MmapLockEvent,
    TaskExitEvent, TaskState, HOLD_SLOTS,
};

use crate::maps::{
    config, count, current_ids, foreign_mm_tgid, header, observe, EVENTS, TASK_STATE,
};

/// The task's state entry, created on first use. `None` when this is the agent itself, the
/// config is missing, or the map is full (counted).
#[inline(always)]
pub(crate) fn task_state(tid: u32, tgid: u32) -> Option<*mut TaskState> {
    if let Some(ptr) = TASK_STATE.get_ptr_mut(tid) {
        return Some(ptr);
    }
    let fresh = TaskState {
        tgid,
        ..TaskState::default()
    };
    // BPF_NOEXIST: another CPU cannot race us for our own tid, so EEXIST never happens; any error
    // is the map being full.
    if TASK_STATE.insert(tid, fresh, 1).is_err() {
        count(Counter::TaskStateFull);
        return None;
    }
    TASK_STATE.get_ptr_mut(tid)
}

/// The config when the current task is traced; `None` for the agent's own process.
#[inline(always)]
pub(crate) fn traced() -> Option<(Config, u32, u32)> {
    let cfg = config()?;
    let (tid, tgid) = current_ids();
    if tgid == cfg.self_tgid {
        return None;
    }
    Some((cfg, tid, tgid))
}

fn mode_of(write: bool) -> u8 {
    if write {
        mode::WRITE
    } else {
        mode::READ
    }
}

/// What one `mmap_lock` record says; passed by reference because BPF calls take at most five
/// arguments.
struct Record {
    kind: EventKind,
    flags: u32,
    now: u64,
    mm: u64,
    since_ns: u64,
    write: bool,
    success: bool,
}

fn emit(r: &Record) {
    let Some(mut entry) = EVENTS.reserve::<MmapLockEvent>(0) else {
        count(Counter::RingbufFull);
        return;
    };
    entry.write(MmapLockEvent {
        header: header(r.kind, r.flags, r.now),
        mm: r.mm,
        since_ns: r.since_ns,
        mm_tgid: foreign_mm_tgid(r.mm),
        mode: mode_of(r.write),
        success: r.success as u8,
        _pad: [0; 2],
    });
    entry.submit(0);
}

pub(crate) fn record_flag(cfg: &Config) -> u32 {
    if cfg.flags & config_flags::RECORD_ALL != 0 {
        reason::RECORD
    } else {
        0
    }
}

/// Index of the slot holding `mm`, if any.
#[inline(always)]
fn find_hold(state: &TaskState, mm: u64) -> Option<usize> {
    (0..HOLD_SLOTS).find(|&i| state.holds[i].mm == mm)
}

pub fn on_start(mm: u64, write: bool) {
    let Some((cfg, tid, tgid)) = traced() else {
        return;
    };
    let Some(state) = task_state(tid, tgid) else {
        return;
    };
    // SAFETY: a map value pointer valid for this program run; only this task writes its entry.
    let state = unsafe { &mut *state };
    let now = unsafe { bpf_ktime_get_ns() };
    state.wait_mm = mm;
    state.wait_since_ns = now;
    state.wait_mode = mode_of(write);

    let mut flags = record_flag(&cfg);
    if !write {
        crate::faults::fault_took_mmap_lock(tid, now);
        if let Some(i) = find_hold(state, mm) {
            if state.holds[i].mode == mode::READ {
                // A second read on a lock this task already reads: deadlocks as soon as a writer
                // queues in between. Always streamed.
                count(Counter::RecursiveRead);
                flags |= reason::RECURSIVE;
            }
        }
    }
    if flags != 0 {
        emit(&Record {
            kind: EventKind::MmapLockStart,
            flags,
            now,
            mm,
            since_ns: 0,
            write,
            success: true,
        });
    }
}

pub fn on_acquire(mm: u64, write: bool, success: bool) {
    let Some((cfg, tid, tgid)) = traced() else {
        return;
    };
    let Some(state) = task_state(tid, tgid) else {
        return;
    };
    // SAFETY: see on_start.
    let state = unsafe { &mut *state };
    let now = unsafe { bpf_ktime_get_ns() };
    let mut flags = record_flag(&cfg);

    let since = if state.wait_mm == mm {
        state.wait_mm = 0;
        state.wait_since_ns
    } else {
        0
    };
    if since != 0 && now - since >= cfg.wait_threshold_ns {
        count(Counter::SlowWait);
        flags |= reason::SLOW_WAIT;
    }

    if !success {
        count(if write {
            Counter::FailedWrite
        } else {
            Counter::FailedRead
        });
        // A slow attempt that failed (a killable wait interrupted) still ends a wait user space
        // may be showing.
        if flags != 0 {
            emit(&Record {
                kind: EventKind::MmapLockAcquire,
                flags,
                now,
                mm,
                since_ns: since,
                write,
                success: false,
            });
        }
        return;
    }

    let held = find_hold(state, mm);
    if since == 0 && !write {
        if let Some(i) = held {
            if state.holds[i].mode == mode::WRITE {
                // Downgrade: the hold continues as a read hold from the same moment.
                state.holds[i].mode = mode::READ;
                count(Counter::Downgrade);
                flags |= reason::DOWNGRADE;
                if state.holds[i].streamed != 0 {
                    flags |= reason::FOLLOW_UP;
                }
                if flags & (reason::RECORD | reason::FOLLOW_UP) != 0 {
                    emit(&Record {
                        kind: EventKind::MmapLockAcquire,
                        flags,
                        now,
                        mm,
                        since_ns: 0,
                        write: false,
                        success: true,
                    });
                }
                return;
            }
        }
    }

    if since == 0 {
        count(Counter::UnmatchedAcquire);
    } else {
        observe(
            if write {
                Histogram::WaitWrite
            } else {
                Histogram::WaitRead
            },
            now - since,
        );
    }
    count(if write {
        Counter::AcquireWrite
    } else {
        Counter::AcquireRead
    });

    let slot = match held {
        Some(i) => {
            // Recursive read (already counted at start): one more level on the same hold.
            state.holds[i].depth = state.holds[i].depth.saturating_add(1);
            flags |= reason::RECURSIVE;
            Some(i)
        }
        None => {
            let free = find_hold(state, 0);
            match free {
                Some(i) => {
                    state.holds[i] = Hold {
                        mm,
                        since_ns: now,
                        mode: mode_of(write),
                        depth: 1,
                        streamed: 0,
                        _pad: [0; 5],
                    }
                }
                None => count(Counter::HoldSlotsFull),
            }
            free
        }
    };
    if flags != 0 {
        if let Some(i) = slot {
            state.holds[i].streamed = 1;
        }
        emit(&Record {
            kind: EventKind::MmapLockAcquire,
            flags,
            now,
            mm,
            since_ns: since,
            write,
            success: true,
        });
    }
}

pub fn on_release(mm: u64, write: bool) {
    let Some((cfg, tid, _)) = traced() else {
        return;
    };
    let now = unsafe { bpf_ktime_get_ns() };
    let mut flags = record_flag(&cfg);
    count(if write {
        Counter::ReleaseWrite
    } else {
        Counter::ReleaseRead
    });

    let mut since = 0;
    // Look up without creating: a task with no entry holds nothing we know of.
    // SAFETY: see on_start.
    let slot = TASK_STATE
        .get_ptr_mut(tid)
        .and_then(|s| unsafe { find_hold(&*s, mm).map(|i| (s, i)) });
    match slot {
        Some((state, i)) => {
            let state = unsafe { &mut *state };
            let hold = &mut state.holds[i];
            if hold.streamed != 0 {
                flags |= reason::FOLLOW_UP;
            }
            if hold.depth > 1 {
                hold.depth -= 1;
            } else {
                since = hold.since_ns;
                let held_for = now - since;
                observe(
                    if hold.mode == mode::WRITE {
                        Histogram::HoldWrite
                    } else {
                        Histogram::HoldRead
                    },
                    held_for,
                );
                if held_for >= cfg.hold_threshold_ns {
                    count(Counter::LongHold);
                    flags |= reason::LONG_HOLD;
                }
                *hold = Hold::default();
            }
        }
        None => {
            // A non-owner release, or a hold older than the agent: user space must hear of it
            // to keep its holder sets honest.
            count(Counter::UnmatchedRelease);
            flags |= reason::UNMATCHED;
        }
    }
    if flags != 0 {
        emit(&Record {
            kind: EventKind::MmapLockRelease,
            flags,
            now,
            mm,
            since_ns: since,
            write,
            success: true,
        });
    }
}

pub fn on_task_exit(group_dead: bool) {
    let Some((cfg, tid, tgid)) = traced() else {
        return;
    };
    if group_dead {
        let _ = crate::maps::PROC_FAULTS.remove(tgid);
        // The mm dies with the group: a later mm at the same address must not inherit its
        // userfaultfd context. (6.18 runs this tracepoint before exit_mm.)
        let off = crate::maps::offsets();
        if off.task_mm != 0 {
            let task = unsafe { aya_ebpf::helpers::bpf_get_current_task() };
            if let Some(mm) = crate::maps::read_at::<u64>(task, off.task_mm).filter(|&m| m != 0) {
                let _ = crate::maps::UFFD_BY_MM.remove(mm);
            }
        }
    }
    crate::contention::forget_owner(tid);
    let had_state = TASK_STATE.get_ptr(tid).is_some();
    if had_state {
        let _ = TASK_STATE.remove(tid);
    }
    count(Counter::TaskExit);
    // Only tasks we tracked matter to the graph; in record mode every exit is part of the trace.
    if had_state || cfg.flags & config_flags::RECORD_ALL != 0 {
        let Some(mut entry) = EVENTS.reserve::<TaskExitEvent>(0) else {
            count(Counter::RingbufFull);
            return;
        };
        let now = unsafe { bpf_ktime_get_ns() };
        entry.write(TaskExitEvent {
            header: header(EventKind::TaskExit, record_flag(&cfg), now),
        });
        entry.submit(0);
    }
}
