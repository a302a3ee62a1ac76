//! userfaultfd: ioctls (who serves which context, latency, errors), creation, and the waiting
//! side (a task asleep in `handle_userfault`, and the handler's wake-up that ends it).

use aya_ebpf::{
    helpers::{bpf_get_current_task, bpf_get_stack, bpf_ktime_get_ns},
    EbpfContext,
};
use tracer_common::{reason, uffd_op, Counter, EventKind, TaskState, UffdEvent, HIST_UFFD_BASE};

use crate::{
    maps::{
        count, current_ids, header, mark_uffd_seen, observe_at, offsets, output, read_at, task_tid,
        uffd_seen, UffdHandlerKey, LAST_FAULT, TASK_STATE, UFFD_BY_MM, UFFD_ERRORS, UFFD_HANDLERS,
    },
    mmap_lock::{record_flag, task_state, traced},
};

/// The userfaultfd context behind `fd` of the current task: files->fdt->fd[fd]->private_data.
fn ctx_of_fd(fd: u32) -> Option<u64> {
    let off = offsets();
    if off.task_files == 0 || off.files_fdt == 0 || off.file_private == 0 {
        return None;
    }
    let task = unsafe { bpf_get_current_task() };
    let files = read_at::<u64>(task, off.task_files)?;
    let fdt = read_at::<u64>(files, off.files_fdt)?;
    let fds = read_at::<u64>(fdt, off.fdt_fd)?;
    let file = read_at::<u64>(fds, fd.wrapping_mul(8))?;
    if file == 0 {
        return None;
    }
    read_at::<u64>(file, off.file_private).filter(|&c| c != 0)
}

fn event(kind: EventKind, flags: u32, now: u64, ctx: u64, addr: u64, since: u64, ret: i64, op: u8) {
    output(UffdEvent {
        header: header(kind, flags, now),
        ctx,
        addr,
        since_ns: since,
        ret,
        op,
        _pad: [0; 7],
    });
}

pub fn on_ioctl_enter(fd: u32, cmd: u32) {
    let Some(op) = uffd_op::from_cmd(cmd) else {
        return;
    };
    let Some((cfg, tid, tgid)) = traced() else {
        return;
    };
    let Some(ctx) = ctx_of_fd(fd) else {
        return;
    };
    let Some(state) = task_state(tid, tgid) else {
        return;
    };
    // SAFETY: this task's own entry.
    let state = unsafe { &mut *state };
    let now = unsafe { bpf_ktime_get_ns() };
    state.ioctl_ctx = ctx;
    state.ioctl_since_ns = now;
    state.ioctl_op = op;
    count(Counter::UffdIoctl);
    if !uffd_seen() {
        mark_uffd_seen();
    }
    // The context names its mm: faults on that mm wait on this context.
    let off = offsets();
    if off.uffd_ctx_mm != 0 {
        if let Some(mm) = read_at::<u64>(ctx, off.uffd_ctx_mm) {
            if mm != 0 && UFFD_BY_MM.insert(mm, ctx, 0).is_err() {
                count(Counter::UffdHandlersFull);
            }
        }
    }
    let mut flags = record_flag(&cfg);
    let key = UffdHandlerKey { ctx, tid, _pad: 0 };
    // SAFETY: a plain read of a map value.
    if unsafe { UFFD_HANDLERS.get(key) }.is_none() {
        if UFFD_HANDLERS.insert(key, now, 0).is_err() {
            count(Counter::UffdHandlersFull);
        }
        flags |= reason::NEW_HANDLER;
    }
    if flags != 0 {
        event(EventKind::UffdIoctlBegin, flags, now, ctx, 0, 0, 0, op);
    }
}

pub fn on_ioctl_exit(ret: i64) {
    let Some((cfg, tid, _)) = traced() else {
        return;
    };
    let Some(state) = TASK_STATE.get_ptr_mut(tid) else {
        return;
    };
    // SAFETY: this task's own entry.
    let state = unsafe { &mut *state };
    if state.ioctl_ctx == 0 {
        return;
    }
    let now = unsafe { bpf_ktime_get_ns() };
    let (ctx, since, op) = (state.ioctl_ctx, state.ioctl_since_ns, state.ioctl_op);
    state.ioctl_ctx = 0;
    let took = now - since;
    observe_at(HIST_UFFD_BASE + op as u32, took);
    let mut flags = record_flag(&cfg);
    if ret < 0 {
        count(Counter::UffdIoctlError);
        let idx = op as u32 * uffd_op::ERRNO_BUCKETS + uffd_op::errno_bucket(ret);
        if let Some(slot) = UFFD_ERRORS.get_ptr_mut(idx) {
            // SAFETY: per-CPU slot.
            unsafe { *slot += 1 };
        }
        flags |= reason::ERROR;
    }
    if took >= cfg.wait_threshold_ns {
        flags |= reason::SLOW_WAIT;
    }
    if flags != 0 {
        event(EventKind::UffdIoctlEnd, flags, now, ctx, 0, since, ret, op);
    }
}

pub fn on_userfaultfd_exit(ret: i64) {
    if ret >= 0 {
        count(Counter::UffdCreated);
    }
}

/// How many return addresses of the sleeping task's kernel stack are checked for
/// `handle_userfault` (it sits a few frames under `schedule`).
const STACK_DEPTH: usize = 24;

/// The context a fault of this task on `mm`-space waits on: its own mm's, else a foreign mm it
/// holds (GUP on another process: process_vm_readv, /proc/PID/mem).
fn ctx_for(state: Option<&TaskState>) -> u64 {
    let off = offsets();
    let task = unsafe { bpf_get_current_task() };
    if let Some(mm) = read_at::<u64>(task, off.task_mm) {
        // SAFETY: a plain read of a map value.
        if let Some(ctx) = unsafe { UFFD_BY_MM.get(mm) } {
            return *ctx;
        }
    }
    if let Some(st) = state {
        for h in st.holds.iter() {
            if h.mm != 0 {
                // SAFETY: a plain read of a map value.
                if let Some(ctx) = unsafe { UFFD_BY_MM.get(h.mm) } {
                    return *ctx;
                }
            }
        }
    }
    0
}

/// `sched_switch` with the current task going to sleep: is it asleep in `handle_userfault`?
pub fn on_sleep<C: EbpfContext>(ctx: &C) {
    if !uffd_seen() {
        return;
    }
    let off = offsets();
    if off.handle_userfault_start == 0 {
        return;
    }
    let (tid, tgid) = current_ids();
    let now = unsafe { bpf_ktime_get_ns() };
    // Cheap filters first: a fault just taken on this CPU by this task, or a task holding an
    // mmap_lock (a GUP fault, which raises no exception).
    let last = LAST_FAULT.get(0).copied();
    let faulted = last.is_some_and(|l| l.tid == tid && now - l.ts_ns < 10_000_000);
    let state = TASK_STATE.get_ptr_mut(tid);
    // SAFETY: this task's own entry.
    let st = state.map(|p| unsafe { &mut *p });
    let holds = st
        .as_ref()
        .is_some_and(|s| s.holds.iter().any(|h| h.mm != 0));
    if !faulted && !holds {
        return;
    }
    // Already known to wait, unless this is a new fault (a signal kicked the task out of its
    // previous wait and it faulted again).
    let newer_fault =
        last.is_some_and(|l| faulted && st.as_ref().is_some_and(|s| l.ts_ns > s.uffd_since_ns));
    if st.as_ref().is_some_and(|s| s.uffd_ctx != 0) && !newer_fault {
        return;
    }
    let mut stack = [0u64; STACK_DEPTH];
    // SAFETY: the buffer is ours and its size is passed.
    let n = unsafe {
        bpf_get_stack(
            ctx.as_ptr(),
            stack.as_mut_ptr().cast(),
            (STACK_DEPTH * 8) as u32,
            0,
        )
    };
    if n <= 0 {
        return;
    }
    let in_uffd = stack
        .iter()
        .any(|&ip| ip >= off.handle_userfault_start && ip < off.handle_userfault_end);
    if !in_uffd {
        return;
    }
    let uctx = ctx_for(st.as_deref());
    let addr = last.filter(|_| faulted).map(|l| l.addr).unwrap_or(0);
    let st = match st {
        Some(s) => s,
        None => match task_state(tid, tgid) {
            // SAFETY: this task's own, just created entry.
            Some(p) => unsafe { &mut *p },
            None => return,
        },
    };
    st.uffd_ctx = if uctx != 0 { uctx } else { u64::MAX };
    st.uffd_addr = addr;
    st.uffd_since_ns = now;
    count(Counter::UffdWaitBegin);
    // Always streamed: a task stuck on a userfaultfd is what the graph is for, and it is rare.
    event(
        EventKind::UffdWaitBegin,
        reason::RECORD,
        now,
        uctx,
        addr,
        0,
        0,
        0,
    );
}

/// `sched_waking` of `wakee` by the current task: a handler's ioctl waking a faulting task ends
/// that task's userfaultfd wait.
pub fn on_waking(wakee: u64) {
    if !uffd_seen() {
        return;
    }
    let (tid, _) = current_ids();
    // SAFETY: plain reads of map values.
    let Some(waker) = (unsafe { TASK_STATE.get(tid) }) else {
        return;
    };
    if waker.ioctl_ctx == 0 {
        return;
    }
    let wakee_tid = task_tid(wakee);
    let Some(p) = TASK_STATE.get_ptr_mut(wakee_tid) else {
        return;
    };
    // SAFETY: the wakee's entry; it is asleep, so nothing else writes it now.
    let st = unsafe { &mut *p };
    if st.uffd_ctx == 0 {
        return;
    }
    let now = unsafe { bpf_ktime_get_ns() };
    count(Counter::UffdWaitEnd);
    let header_for_wakee = tracer_common::EventHeader {
        tid: wakee_tid,
        tgid: st.tgid,
        comm: [0; tracer_common::TASK_COMM_LEN],
        ..header(EventKind::UffdWaitEnd, reason::RECORD, now)
    };
    let ctx = if st.uffd_ctx == u64::MAX {
        waker.ioctl_ctx
    } else {
        st.uffd_ctx
    };
    output(UffdEvent {
        header: header_for_wakee,
        ctx,
        addr: st.uffd_addr,
        since_ns: st.uffd_since_ns,
        ret: 0,
        op: waker.ioctl_op,
        _pad: [0; 7],
    });
    st.uffd_ctx = 0;
}
