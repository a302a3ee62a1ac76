//! userfaultfd: ioctls (who serves which context, latency, errors), creation, and the waiting
//! side (a task asleep in `handle_userfault`, and the handler's wake-up that ends it).
//!
//! Cost: the scheduler hooks return after one array read on hosts that never used userfaultfd;
//! after that, a sleeping task pays a stack walk only when it just faulted, holds an
//! `mmap_lock`, or its own mm is registered with a userfaultfd, and a wake-up pays a per-CPU
//! read unless the waker is inside a userfaultfd ioctl.

use aya_ebpf::{
    helpers::{bpf_get_current_task, bpf_get_stack, bpf_ktime_get_ns},
    macros::{map, tracepoint},
    maps::{Array, HashMap, PerCpuArray},
    programs::TracePointContext,
    EbpfContext,
};
use tracer_common::{
    handler_role, names, reason, uffd_op, Counter, EventHeader, EventKind, SyscallLayout,
    TaskState, UffdEvent, UffdHandlerKey, HIST_UFFD_BASE, TASK_COMM_LEN, UFFD_ERROR_SLOTS,
};

use crate::{
    faults::LAST_FAULT,
    maps::{count, current_ids, finish, header, observe_at, offsets, output, read_at},
    task::{existing_state, own_mm, record_flag, task_state, task_tid, traced},
};

/// userfaultfd ioctl errors per op and errno bucket.
#[map]
static UFFD_ERRORS: PerCpuArray<u64> = PerCpuArray::with_max_entries(UFFD_ERROR_SLOTS, 0);

/// Registered mm → userfaultfd context, learnt from ioctls (the context names its mm). When
/// full, faults on new mms are not tied to a context (`Counter::UffdHandlersFull`). An entry
/// dies with its process (`on_group_exit`).
#[map]
static UFFD_BY_MM: HashMap<u64, u64> = HashMap::with_max_entries(names::UFFD_CAPACITY, 0);

/// (context, tid) pairs already reported as handlers → their role (`handler_role`), so only a
/// new handler (or a stronger role) is streamed, and a snapshot can restore a handler whose
/// record was lost. Only real userfaultfds get here (`is_userfaultfd`). When full, a new pair
/// is counted (`Counter::UffdHandlersFull`) and not streamed: the ring buffer stays bounded.
/// A task's exit deletes its entry for the last context it handled (`UFFD_HANDLER_OF`); the
/// agent deletes any other entry of a task gone at each snapshot. A context's release has no
/// tracepoint here (kprobes are refused): its entries go with their tasks.
#[map]
static UFFD_HANDLERS: HashMap<UffdHandlerKey, u64> =
    HashMap::with_max_entries(names::UFFD_CAPACITY, 0);

/// Handler tid → the context it was last entered in `UFFD_HANDLERS` for, so its exit finds
/// that entry (the table is keyed by context first). A map of its own, not a field of the
/// task state: a larger task state takes the scheduler hook past the 512-byte stack the 6.1
/// verifier allows.
#[map]
static UFFD_HANDLER_OF: HashMap<u32, u64> = HashMap::with_max_entries(names::UFFD_CAPACITY, 0);

/// [0]: 1 once any userfaultfd ioctl was seen. Lets the scheduler hooks return at once on hosts
/// that never use userfaultfd (a plain store: it only ever goes from 0 to 1).
#[map]
static UFFD_ACTIVE: Array<u64> = Array::with_max_entries(1, 0);

/// The tid in a userfaultfd ioctl on this CPU (0: none), so `sched_waking` knows without a hash
/// lookup whether the waker is a handler. A handler migrated mid-ioctl is missed here; the
/// agent's wchan check ends that waiter's wait instead.
#[map]
static IOCTL_ON_CPU: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// Where the sleep hook writes the sleeper's kernel stack: on the program's own stack it took
/// 192 of the 512 bytes the verifier allows along a call chain, which Debian's 6.1 (counting
/// each frame rounded up to 32 bytes) refused beside the futex handler's.
#[map]
static UFFD_STACK_SCRATCH: PerCpuArray<[u64; STACK_DEPTH]> = PerCpuArray::with_max_entries(1, 0);

/// Field offsets of the syscall tracepoints, set by the loader from tracefs before load.
#[no_mangle]
static SYSCALL_LAYOUT: SyscallLayout = SyscallLayout {
    ioctl_fd: 0,
    ioctl_cmd: 0,
    exit_ret: 0,
    _pad: 0,
};

fn syscall_layout() -> SyscallLayout {
    // SAFETY: a global the loader may rewrite before load; volatile keeps it from being folded.
    unsafe { core::ptr::read_volatile(&SYSCALL_LAYOUT) }
}

#[tracepoint(category = "syscalls", name = "sys_enter_ioctl")]
pub fn sys_enter_ioctl_tp(ctx: TracePointContext) -> u32 {
    let layout = syscall_layout();
    // SAFETY: offsets from the tracepoint's own format file.
    let fields = unsafe {
        (
            ctx.read_at::<u64>(layout.ioctl_fd as usize),
            ctx.read_at::<u64>(layout.ioctl_cmd as usize),
        )
    };
    finish(match fields {
        (Ok(fd), Ok(cmd)) => on_ioctl_enter(fd as u32, cmd as u32),
        _ => Err(Counter::ReadError),
    });
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_ioctl")]
pub fn sys_exit_ioctl_tp(ctx: TracePointContext) -> u32 {
    // SAFETY: offset from the tracepoint's own format file.
    finish(
        match unsafe { ctx.read_at::<i64>(syscall_layout().exit_ret as usize) } {
            Ok(ret) => on_ioctl_exit(ret),
            Err(_) => Err(Counter::ReadError),
        },
    );
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_userfaultfd")]
pub fn sys_exit_userfaultfd_tp(ctx: TracePointContext) -> u32 {
    // SAFETY: offset from the tracepoint's own format file.
    if let Ok(ret) = unsafe { ctx.read_at::<i64>(syscall_layout().exit_ret as usize) } {
        if ret >= 0 {
            count(Counter::UffdCreated);
        }
    }
    0
}

/// The mm dies with the group: a later mm at the same address must not inherit its
/// userfaultfd context. (6.18 runs `sched_process_exit` before `exit_mm`.)
pub fn on_group_exit() {
    if let Ok(mm) = own_mm() {
        if mm != 0 {
            let _ = UFFD_BY_MM.remove(mm);
        }
    }
}

/// The task is gone: its handler entry goes too (for the last context it handled; the agent
/// prunes any other). Nothing to do on hosts that never used userfaultfd.
pub fn on_task_exit(tid: u32) {
    if !uffd_seen() {
        return;
    }
    // SAFETY: a plain read of a map value.
    if let Some(ctx) = unsafe { UFFD_HANDLER_OF.get(tid) }.copied() {
        let _ = UFFD_HANDLERS.remove(UffdHandlerKey { ctx, tid, _pad: 0 });
        let _ = UFFD_HANDLER_OF.remove(tid);
    }
}

fn uffd_seen() -> bool {
    UFFD_ACTIVE.get(0).is_some_and(|v| *v != 0)
}

fn set_ioctl_on_cpu(tid: u32) {
    if let Some(p) = IOCTL_ON_CPU.get_ptr_mut(0) {
        // SAFETY: per-CPU slot.
        unsafe { *p = tid };
    }
}

/// The userfaultfd context behind `fd` of the current task: files->fdt->fd[fd]->private_data,
/// only if that file is a userfaultfd. Anyone may issue userfaultfd ioctl numbers on any
/// descriptor (they fail); without the check a pipe's private data would be taken for a
/// context, its "mm" written to `UFFD_BY_MM` and the caller streamed as a handler.
fn ctx_of_fd(fd: u32) -> Result<Option<u64>, Counter> {
    let off = offsets();
    if off.task_files == 0 || off.files_fdt == 0 || off.file_private == 0 || off.file_f_op == 0 {
        return Ok(None);
    }
    let task = unsafe { bpf_get_current_task() };
    let files = read_at::<u64>(task, off.task_files)?;
    let fdt = read_at::<u64>(files, off.files_fdt)?;
    let fds = read_at::<u64>(fdt, off.fdt_fd)?;
    let file = read_at::<u64>(fds, fd.wrapping_mul(8))?;
    if file == 0 || !is_userfaultfd(file, &off)? {
        return Ok(None);
    }
    Ok(Some(read_at::<u64>(file, off.file_private)?).filter(|&c| c != 0))
}

/// Whether `file` is a userfaultfd: its file operations are userfaultfd's (their address when
/// kallsyms lists it, else their `poll`, which is userfaultfd's own). Neither known: no file
/// is trusted to be one.
fn is_userfaultfd(file: u64, off: &tracer_common::KernelOffsets) -> Result<bool, Counter> {
    let fops = read_at::<u64>(file, off.file_f_op)?;
    if fops == 0 {
        return Ok(false);
    }
    if off.uffd_fops != 0 {
        return Ok(fops == off.uffd_fops);
    }
    if off.uffd_poll != 0 && off.fops_poll != 0 {
        return Ok(read_at::<u64>(fops, off.fops_poll)? == off.uffd_poll);
    }
    Ok(false)
}

struct Ioctl {
    kind: EventKind,
    flags: u32,
    now: u64,
    ctx: u64,
    since: u64,
    ret: i64,
    op: u8,
}

fn emit(i: &Ioctl) -> Result<(), Counter> {
    output(UffdEvent {
        header: header(i.kind, i.flags, i.now),
        ctx: i.ctx,
        addr: 0,
        since_ns: i.since,
        ret: i.ret,
        op: i.op,
        _pad: [0; 7],
    })
}

fn on_ioctl_enter(fd: u32, cmd: u32) -> Result<(), Counter> {
    let Some(op) = uffd_op::from_cmd(cmd) else {
        return Ok(());
    };
    let Some((cfg, tid, tgid)) = traced()? else {
        return Ok(());
    };
    let Some(ctx) = ctx_of_fd(fd)? else {
        return Ok(());
    };
    let state = task_state(tid, tgid)?;
    let now = unsafe { bpf_ktime_get_ns() };
    state.ioctl_ctx = ctx;
    state.ioctl_since_ns = now;
    state.ioctl_op = op;
    set_ioctl_on_cpu(tid);
    count(Counter::UffdIoctl);
    if !uffd_seen() {
        if let Some(p) = UFFD_ACTIVE.get_ptr_mut(0) {
            // SAFETY: a single word written only with 1; racing writers agree.
            unsafe { *p = 1 };
        }
    }
    // The context names its mm: faults on that mm wait on this context.
    let off = offsets();
    if off.uffd_ctx_mm != 0 {
        let mm = read_at::<u64>(ctx, off.uffd_ctx_mm)?;
        if mm != 0 && UFFD_BY_MM.insert(mm, ctx, 0).is_err() {
            count(Counter::UffdHandlersFull);
        }
    }
    let mut flags = record_flag(&cfg);
    let key = UffdHandlerKey { ctx, tid, _pad: 0 };
    let role = handler_role::of_op(op);
    // SAFETY: a plain read of a map value.
    let known = unsafe { UFFD_HANDLERS.get(key) }.copied();
    // New, or a setup task now resolving faults: streamed once more, so user space learns the
    // stronger role; the table keeps it for snapshots that restore a lost record. Table full:
    // counted, not streamed, so a flood of handlers cannot flood the ring buffer too.
    if known.is_none_or(|r| r < role) {
        if UFFD_HANDLERS.insert(key, role, 0).is_ok() {
            flags |= reason::NEW_HANDLER;
            // Full: the agent's prune at its next snapshot deletes the entry instead.
            let _ = UFFD_HANDLER_OF.insert(tid, ctx, 0);
        } else {
            count(Counter::UffdHandlersFull);
        }
    }
    if flags == 0 {
        return Ok(());
    }
    emit(&Ioctl {
        kind: EventKind::UffdIoctlBegin,
        flags,
        now,
        ctx,
        since: 0,
        ret: 0,
        op,
    })
}

fn on_ioctl_exit(ret: i64) -> Result<(), Counter> {
    let Some((cfg, tid, _)) = traced()? else {
        return Ok(());
    };
    let Some(state) = existing_state(tid) else {
        return Ok(());
    };
    if state.ioctl_ctx == 0 {
        return Ok(());
    }
    set_ioctl_on_cpu(0);
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
    if flags == 0 {
        return Ok(());
    }
    emit(&Ioctl {
        kind: EventKind::UffdIoctlEnd,
        flags,
        now,
        ctx,
        since,
        ret,
        op,
    })
}

/// How many return addresses of the sleeping task's kernel stack are checked for
/// `handle_userfault` (it sits a few frames under `schedule`).
const STACK_DEPTH: usize = 24;

/// The context a fault of this task waits on: its own mm's, else a foreign mm it holds (GUP on
/// another process: process_vm_readv, /proc/PID/mem; known only with the mmap_lock hooks).
fn ctx_for(own_ctx: Option<u64>, state: Option<&TaskState>) -> u64 {
    if let Some(ctx) = own_ctx {
        return ctx;
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
/// Not inlined: its stack (a stack walk's buffer) and the futex family's must not add up in
/// one frame (the verifier allows 512 bytes along a call chain).
#[inline(never)]
pub fn on_sleep<C: EbpfContext>(ctx: &C) -> Result<(), Counter> {
    if !uffd_seen() {
        return Ok(());
    }
    let off = offsets();
    if off.handle_userfault_start == 0 {
        return Ok(());
    }
    let (tid, tgid) = current_ids();
    let now = unsafe { bpf_ktime_get_ns() };
    // Cheap filters first: a fault just taken on this CPU by this task, a task whose own mm is
    // registered with a userfaultfd, or a task holding an mmap_lock (a GUP fault, which raises
    // no exception).
    let last = LAST_FAULT.get(0).copied();
    let faulted = last.is_some_and(|l| l.tid == tid && now - l.ts_ns < 10_000_000);
    let mm = own_mm()?;
    // SAFETY: a plain read of a map value.
    let own_ctx = (mm != 0)
        .then(|| unsafe { UFFD_BY_MM.get(mm) }.copied())
        .flatten();
    let st = existing_state(tid);
    let holds = st
        .as_ref()
        .is_some_and(|s| s.holds.iter().any(|h| h.mm != 0));
    if !faulted && !holds && own_ctx.is_none() {
        return Ok(());
    }
    // Already known to wait, unless this is a new fault (a signal kicked the task out of its
    // previous wait and it faulted again).
    let newer_fault =
        last.is_some_and(|l| faulted && st.as_ref().is_some_and(|s| l.ts_ns > s.uffd_since_ns));
    if st.as_ref().is_some_and(|s| s.uffd_ctx != 0) && !newer_fault {
        return Ok(());
    }
    let Some(stack) = UFFD_STACK_SCRATCH.get_ptr_mut(0) else {
        return Ok(());
    };
    // SAFETY: this CPU's buffer: the scheduler program does not nest in itself on one CPU.
    let stack = unsafe { &mut *stack };
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
        return Ok(());
    }
    // Every slot, with a constant bound the verifier can follow (the kernel zeroes what a
    // shorter stack leaves, and no zero is inside handle_userfault).
    let mut in_uffd = false;
    let mut i = 0;
    while i < STACK_DEPTH {
        let ip = stack[i];
        if ip >= off.handle_userfault_start && ip < off.handle_userfault_end {
            in_uffd = true;
            break;
        }
        i += 1;
    }
    if !in_uffd {
        return Ok(());
    }
    let uctx = ctx_for(own_ctx, st.as_deref());
    let addr = last.filter(|_| faulted).map(|l| l.addr).unwrap_or(0);
    let st = match st {
        Some(s) => s,
        None => task_state(tid, tgid)?,
    };
    st.uffd_ctx = if uctx != 0 { uctx } else { u64::MAX };
    st.uffd_addr = addr;
    st.uffd_since_ns = now;
    count(Counter::UffdWaitBegin);
    // Always streamed: a task stuck on a userfaultfd is what the graph is for, and it is rare.
    output(UffdEvent {
        header: header(EventKind::UffdWaitBegin, reason::RECORD, now),
        ctx: uctx,
        addr,
        since_ns: 0,
        ret: 0,
        op: 0,
        _pad: [0; 7],
    })
}

/// `sched_waking` of `wakee` by the current task: a handler's ioctl waking a faulting task ends
/// that task's userfaultfd wait.
pub fn on_waking(wakee: u64) -> Result<(), Counter> {
    let (tid, _) = current_ids();
    if tid == 0 || IOCTL_ON_CPU.get(0).is_none_or(|t| *t != tid) {
        return Ok(());
    }
    let Some(waker) = existing_state(tid) else {
        return Ok(());
    };
    if waker.ioctl_ctx == 0 {
        return Ok(());
    }
    let (ioctl_ctx, ioctl_op) = (waker.ioctl_ctx, waker.ioctl_op);
    let wakee_tid = task_tid(wakee)?;
    let Some(st) = existing_state(wakee_tid) else {
        return Ok(());
    };
    if st.uffd_ctx == 0 {
        return Ok(());
    }
    let now = unsafe { bpf_ktime_get_ns() };
    count(Counter::UffdWaitEnd);
    let ctx = if st.uffd_ctx == u64::MAX {
        ioctl_ctx
    } else {
        st.uffd_ctx
    };
    let (addr, since, tgid) = (st.uffd_addr, st.uffd_since_ns, st.tgid);
    st.uffd_ctx = 0;
    output(UffdEvent {
        header: EventHeader {
            tid: wakee_tid,
            tgid,
            comm: [0; TASK_COMM_LEN],
            // Written by the waker: its cgroup is not the wakee's.
            cgroup_id: 0,
            ..header(EventKind::UffdWaitEnd, reason::RECORD, now)
        },
        ctx,
        addr,
        since_ns: since,
        ret: 0,
        op: ioctl_op,
        _pad: [0; 7],
    })
}
