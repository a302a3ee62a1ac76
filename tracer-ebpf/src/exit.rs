//! `sched_process_exit`: a task is gone. Each family drops what it kept for the task (and, when
//! the whole group died, for its process and mm); then the shared per-task entry goes, and user
//! space hears of it when the task was one it may be showing.

use aya_ebpf::{
    helpers::bpf_ktime_get_ns,
    macros::{btf_tracepoint, tracepoint},
    programs::{BtfTracePointContext, TracePointContext},
};
use tracer_common::{config_flags, Counter, EventKind, TaskExitEvent};

use crate::{
    contention, faults, futex,
    maps::{count, finish, header, output, TASK_STATE},
    task::{record_flag, traced},
    uffd,
};

/// Recent kernels: `(task, group_dead)`.
#[btf_tracepoint(function = "sched_process_exit")]
pub fn task_exit_btf(ctx: BtfTracePointContext) -> i32 {
    let group_dead: u8 = ctx.arg(1);
    finish(on_task_exit(group_dead != 0));
    0
}

/// Older kernels: `(task)` only (an argument past the prototype is refused by the verifier).
/// Per-process state of exited processes is then left to user space to prune.
#[btf_tracepoint(function = "sched_process_exit")]
pub fn task_exit_btf_task_only(_ctx: BtfTracePointContext) -> i32 {
    finish(on_task_exit(false));
    0
}

#[tracepoint(category = "sched", name = "sched_process_exit")]
pub fn task_exit_tp(_ctx: TracePointContext) -> u32 {
    // The classic tracepoint does not say whether the group died: per-process state of exited
    // processes is then left to user space to prune.
    finish(on_task_exit(false));
    0
}

fn on_task_exit(group_dead: bool) -> Result<(), Counter> {
    let Some((cfg, tid, tgid)) = traced()? else {
        return Ok(());
    };
    if group_dead {
        faults::on_group_exit(tgid);
        uffd::on_group_exit();
    }
    contention::on_task_exit(tid);
    futex::on_task_exit(tid);
    uffd::on_task_exit(tid);
    let had_state = TASK_STATE.get_ptr(tid).is_some();
    if had_state {
        let _ = TASK_STATE.remove(tid);
    }
    count(Counter::TaskExit);
    // Only tasks we tracked matter to the graph; in record mode every exit is part of the trace.
    if !had_state && cfg.flags & config_flags::RECORD_ALL == 0 {
        return Ok(());
    }
    let now = unsafe { bpf_ktime_get_ns() };
    output(TaskExitEvent {
        header: header(EventKind::TaskExit, record_flag(&cfg), now),
    })
}
