//! The `mmap_lock` tracepoints: exact holder sets, hold times, recursive reads. Attached only in
//! the heavier modes (`--detail holders` hooks acquire and release, `--detail full` also
//! `start_locking`); the default mode learns `mmap_lock` waits from `contention.rs` alone, so the
//! uncontended fast path runs nothing of ours.
//!
//! Kernel facts it relies on (6.18): a trylock also emits `start_locking`; failed trylocks and
//! killable locks give `acquire_returned(success = false)`; a write downgrade gives
//! `acquire_returned(write = false)` with no `start_locking` and no `released(write = true)`;
//! `mmap_read_unlock_non_owner` releases from a task (or irq) that never acquired. Both
//! `acquire_returned` and `released` run inside the critical section: keep them short.

use aya_ebpf::{
    helpers::bpf_ktime_get_ns,
    macros::{btf_tracepoint, tracepoint},
    programs::{BtfTracePointContext, TracePointContext},
};
use tracer_common::{
    mode, reason, Counter, EventKind, Histogram, Hold, MmapLockEvent, TaskState, TracepointLayout,
    HOLD_SLOTS, MM_OWNER_UNKNOWN,
};

use crate::{
    faults,
    maps::{count, finish, header, observe, output},
    task::{existing_state, foreign_mm_tgid, mode_of, record_flag, task_state, traced},
};

/// Field offsets of the classic tracepoints, set by the loader from tracefs before load.
#[no_mangle]
static TP_LAYOUT: TracepointLayout = TracepointLayout {
    mm: 0,
    write: 0,
    success: 0,
    _pad: 0,
};

/// The `tp_btf` programs for one prototype layout: `write` at `$w`, `success` at `$s`. The
/// verifier refuses any context access that is not a constant offset within the running
/// kernel's prototype, so each layout is its own set of programs and the loader loads the set
/// that matches the kernel's BTF (`names::program::MMAP_LOCK_*`).
macro_rules! btf_programs {
    ($start:ident, $acquire:ident, $release:ident, $w:literal, $s:literal) => {
        #[btf_tracepoint(function = "mmap_lock_start_locking")]
        pub fn $start(ctx: BtfTracePointContext) -> i32 {
            let write: u8 = ctx.arg($w);
            finish(on_start(ctx.arg(0), write != 0));
            0
        }

        #[btf_tracepoint(function = "mmap_lock_acquire_returned")]
        pub fn $acquire(ctx: BtfTracePointContext) -> i32 {
            let write: u8 = ctx.arg($w);
            let success: u8 = ctx.arg($s);
            finish(on_acquire(ctx.arg(0), write != 0, success != 0));
            0
        }

        #[btf_tracepoint(function = "mmap_lock_released")]
        pub fn $release(ctx: BtfTracePointContext) -> i32 {
            let write: u8 = ctx.arg($w);
            finish(on_release(ctx.arg(0), write != 0));
            0
        }
    };
}

// 6.14+: (mm, write[, success]).
btf_programs!(
    mmap_lock_start_btf,
    mmap_lock_acquire_btf,
    mmap_lock_release_btf,
    1,
    2
);
// Before 6.14: (mm, memcg_path, write[, success]).
btf_programs!(
    mmap_lock_start_btf_memcg,
    mmap_lock_acquire_btf_memcg,
    mmap_lock_release_btf_memcg,
    2,
    3
);

/// Reads `(mm, write, success)` from a classic tracepoint record at the offsets tracefs gave.
fn tp_fields(ctx: &TracePointContext, with_success: bool) -> Result<(u64, bool, bool), Counter> {
    // SAFETY: a global the loader may rewrite before load.
    let layout = unsafe { core::ptr::read_volatile(&TP_LAYOUT) };
    // SAFETY: offsets come from the tracepoint's own format file; read_at goes through
    // bpf_probe_read.
    unsafe {
        let mm: u64 = ctx
            .read_at(layout.mm as usize)
            .map_err(|_| Counter::ReadError)?;
        let write: u8 = ctx
            .read_at(layout.write as usize)
            .map_err(|_| Counter::ReadError)?;
        let success: u8 = if with_success {
            ctx.read_at(layout.success as usize)
                .map_err(|_| Counter::ReadError)?
        } else {
            1
        };
        Ok((mm, write != 0, success != 0))
    }
}

#[tracepoint(category = "mmap_lock", name = "mmap_lock_start_locking")]
pub fn mmap_lock_start_tp(ctx: TracePointContext) -> u32 {
    finish(tp_fields(&ctx, false).and_then(|(mm, write, _)| on_start(mm, write)));
    0
}

#[tracepoint(category = "mmap_lock", name = "mmap_lock_acquire_returned")]
pub fn mmap_lock_acquire_tp(ctx: TracePointContext) -> u32 {
    finish(tp_fields(&ctx, true).and_then(|(mm, write, ok)| on_acquire(mm, write, ok)));
    0
}

#[tracepoint(category = "mmap_lock", name = "mmap_lock_released")]
pub fn mmap_lock_release_tp(ctx: TracePointContext) -> u32 {
    finish(tp_fields(&ctx, false).and_then(|(mm, write, _)| on_release(mm, write)));
    0
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

fn emit(r: &Record) -> Result<(), Counter> {
    output(MmapLockEvent {
        header: header(r.kind, r.flags, r.now),
        mm: r.mm,
        since_ns: r.since_ns,
        mm_tgid: foreign_mm_tgid(r.mm)?,
        mode: mode_of(r.write),
        success: r.success as u8,
        _pad: [0; 2],
    })
}

/// Index of the slot holding `mm`, if any.
#[inline(always)]
fn find_hold(state: &TaskState, mm: u64) -> Option<usize> {
    (0..HOLD_SLOTS).find(|&i| state.holds[i].mm == mm)
}

fn on_start(mm: u64, write: bool) -> Result<(), Counter> {
    let Some((cfg, tid, tgid)) = traced()? else {
        return Ok(());
    };
    let state = task_state(tid, tgid)?;
    let now = unsafe { bpf_ktime_get_ns() };
    state.wait_mm = mm;
    state.wait_since_ns = now;
    state.wait_mode = mode_of(write);
    // Found out only if the attempt is contended (the contention program), off this path.
    state.wait_mm_tgid = MM_OWNER_UNKNOWN;

    let mut flags = record_flag(&cfg);
    if !write {
        faults::fault_took_mmap_lock(tid, now);
        if let Some(i) = find_hold(state, mm) {
            if state.holds[i].mode == mode::READ {
                // A second read on a lock this task already reads: deadlocks as soon as a writer
                // queues in between. Always streamed.
                count(Counter::RecursiveRead);
                flags |= reason::RECURSIVE;
            }
        }
    }
    if flags == 0 {
        return Ok(());
    }
    emit(&Record {
        kind: EventKind::MmapLockStart,
        flags,
        now,
        mm,
        since_ns: 0,
        write,
        success: true,
    })
}

fn on_acquire(mm: u64, write: bool, success: bool) -> Result<(), Counter> {
    let Some((cfg, tid, tgid)) = traced()? else {
        return Ok(());
    };
    let state = task_state(tid, tgid)?;
    let now = unsafe { bpf_ktime_get_ns() };
    let mut flags = record_flag(&cfg);

    // The attempt's start: `start_locking` (full mode) or the contention program (a contended
    // wait); 0 for an uncontended acquisition without `start_locking`.
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
        if flags == 0 {
            return Ok(());
        }
        return emit(&Record {
            kind: EventKind::MmapLockAcquire,
            flags,
            now,
            mm,
            since_ns: since,
            write,
            success: false,
        });
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
                if flags & (reason::RECORD | reason::FOLLOW_UP) == 0 {
                    return Ok(());
                }
                return emit(&Record {
                    kind: EventKind::MmapLockAcquire,
                    flags,
                    now,
                    mm,
                    since_ns: 0,
                    write: false,
                    success: true,
                });
            }
        }
    }

    if since != 0 {
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
            // Recursive read: one more level on the same hold. Always streamed. Counted here
            // unless `start_locking` (full mode, which sets `since`) counted it already.
            state.holds[i].depth = state.holds[i].depth.saturating_add(1);
            if !write && since == 0 {
                count(Counter::RecursiveRead);
            }
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
    if flags == 0 {
        return Ok(());
    }
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
    })
}

fn on_release(mm: u64, write: bool) -> Result<(), Counter> {
    let Some((cfg, tid, _)) = traced()? else {
        return Ok(());
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
    let slot = existing_state(tid).and_then(|s| find_hold(s, mm).map(|i| (s, i)));
    match slot {
        Some((state, i)) => {
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
    if flags == 0 {
        return Ok(());
    }
    emit(&Record {
        kind: EventKind::MmapLockRelease,
        flags,
        now,
        mm,
        since_ns: since,
        write,
        success: true,
    })
}
