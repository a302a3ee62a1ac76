//! faultline's kernel side: `mmap_lock` tracepoints and task exit.
//!
//! Cost model: on the uncontended path each event does one per-task hash lookup, one per-CPU
//! counter and (for acquire/release) one per-CPU histogram bucket. Nothing crosses the ring buffer
//! unless an attempt waited, a hold lasted, something looks wrong (unmatched release, recursive
//! read) or record mode is on. Everything else is aggregated here and read by user space.
#![no_std]
#![no_main]

mod contention;
mod diag;
mod faults;
mod maps;
mod mmap_lock;
mod uffd;

use aya_ebpf::{
    macros::{btf_tracepoint, tracepoint},
    programs::{BtfTracePointContext, TracePointContext},
};
use tracer_common::{SyscallLayout, TracepointLayout};

/// Field offsets of the classic tracepoints, set by the loader from tracefs before load.
#[no_mangle]
static TP_LAYOUT: TracepointLayout = TracepointLayout {
    mm: 0,
    write: 0,
    success: 0,
    _pad: 0,
};

/// Field offsets of the syscall tracepoints, set by the loader from tracefs before load.
#[no_mangle]
static SYSCALL_LAYOUT: SyscallLayout = SyscallLayout {
    ioctl_fd: 0,
    ioctl_cmd: 0,
    exit_ret: 0,
    _pad: 0,
};

fn syscall_layout() -> SyscallLayout {
    // SAFETY: see tp_layout.
    unsafe { core::ptr::read_volatile(&SYSCALL_LAYOUT) }
}

fn tp_layout() -> TracepointLayout {
    // SAFETY: a global the loader may rewrite before load; read_volatile keeps the compiler from
    // folding the zero initialiser.
    unsafe { core::ptr::read_volatile(&TP_LAYOUT) }
}

// Every entry point is a thin shell: the work is in `mmap_lock::*`, which returns a Result whose
// errors are counted there; the return value of a tracing program is ignored by the kernel.

#[btf_tracepoint(function = "mmap_lock_start_locking")]
pub fn mmap_lock_start_btf(ctx: BtfTracePointContext) -> i32 {
    let mm: u64 = ctx.arg(0);
    let write: u8 = ctx.arg(1);
    mmap_lock::on_start(mm, write != 0);
    0
}

#[btf_tracepoint(function = "mmap_lock_acquire_returned")]
pub fn mmap_lock_acquire_btf(ctx: BtfTracePointContext) -> i32 {
    let mm: u64 = ctx.arg(0);
    let write: u8 = ctx.arg(1);
    let success: u8 = ctx.arg(2);
    mmap_lock::on_acquire(mm, write != 0, success != 0);
    0
}

#[btf_tracepoint(function = "mmap_lock_released")]
pub fn mmap_lock_release_btf(ctx: BtfTracePointContext) -> i32 {
    let mm: u64 = ctx.arg(0);
    let write: u8 = ctx.arg(1);
    mmap_lock::on_release(mm, write != 0);
    0
}

#[btf_tracepoint(function = "sched_process_exit")]
pub fn task_exit_btf(ctx: BtfTracePointContext) -> i32 {
    let group_dead: u8 = ctx.arg(1);
    mmap_lock::on_task_exit(group_dead != 0);
    0
}

#[btf_tracepoint(function = "contention_begin")]
pub fn contention_begin_btf(ctx: BtfTracePointContext) -> i32 {
    let lock: u64 = ctx.arg(0);
    let flags: u32 = ctx.arg(1);
    contention::on_begin(lock, flags);
    0
}

#[btf_tracepoint(function = "contention_end")]
pub fn contention_end_btf(ctx: BtfTracePointContext) -> i32 {
    let lock: u64 = ctx.arg(0);
    let ret: i32 = ctx.arg(1);
    contention::on_end(lock, ret);
    0
}

#[btf_tracepoint(function = "page_fault_user")]
pub fn page_fault_user_btf(ctx: BtfTracePointContext) -> i32 {
    let addr: u64 = ctx.arg(0);
    let error_code: u64 = ctx.arg(2);
    faults::on_fault(addr, error_code, true);
    0
}

#[btf_tracepoint(function = "page_fault_kernel")]
pub fn page_fault_kernel_btf(ctx: BtfTracePointContext) -> i32 {
    let addr: u64 = ctx.arg(0);
    let error_code: u64 = ctx.arg(2);
    faults::on_fault(addr, error_code, false);
    0
}

#[btf_tracepoint(function = "sched_switch")]
pub fn sched_switch_btf(ctx: BtfTracePointContext) -> i32 {
    let preempt: u8 = ctx.arg(0);
    let prev_state: u32 = ctx.arg(3);
    // Only a task that goes to sleep (not one preempted while runnable) can be waiting.
    if preempt == 0 && prev_state != 0 {
        uffd::on_sleep(&ctx);
    }
    0
}

#[btf_tracepoint(function = "sched_waking")]
pub fn sched_waking_btf(ctx: BtfTracePointContext) -> i32 {
    let wakee: u64 = ctx.arg(0);
    uffd::on_waking(wakee);
    0
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
    if let (Ok(fd), Ok(cmd)) = fields {
        uffd::on_ioctl_enter(fd as u32, cmd as u32);
    }
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_ioctl")]
pub fn sys_exit_ioctl_tp(ctx: TracePointContext) -> u32 {
    // SAFETY: offset from the tracepoint's own format file.
    if let Ok(ret) = unsafe { ctx.read_at::<i64>(syscall_layout().exit_ret as usize) } {
        uffd::on_ioctl_exit(ret);
    }
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_userfaultfd")]
pub fn sys_exit_userfaultfd_tp(ctx: TracePointContext) -> u32 {
    // SAFETY: offset from the tracepoint's own format file.
    if let Ok(ret) = unsafe { ctx.read_at::<i64>(syscall_layout().exit_ret as usize) } {
        uffd::on_userfaultfd_exit(ret);
    }
    0
}

/// Reads `(mm, write, success)` from a classic tracepoint record at the offsets tracefs gave.
fn tp_fields(ctx: &TracePointContext, with_success: bool) -> Option<(u64, bool, bool)> {
    let layout = tp_layout();
    // SAFETY: offsets come from the tracepoint's own format file; read_at bounds-checks through
    // bpf_probe_read.
    unsafe {
        let mm: u64 = ctx.read_at(layout.mm as usize).ok()?;
        let write: u8 = ctx.read_at(layout.write as usize).ok()?;
        let success: u8 = if with_success {
            ctx.read_at(layout.success as usize).ok()?
        } else {
            1
        };
        Some((mm, write != 0, success != 0))
    }
}

#[tracepoint(category = "mmap_lock", name = "mmap_lock_start_locking")]
pub fn mmap_lock_start_tp(ctx: TracePointContext) -> u32 {
    match tp_fields(&ctx, false) {
        Some((mm, write, _)) => mmap_lock::on_start(mm, write),
        None => maps::count(tracer_common::Counter::ReadError),
    }
    0
}

#[tracepoint(category = "mmap_lock", name = "mmap_lock_acquire_returned")]
pub fn mmap_lock_acquire_tp(ctx: TracePointContext) -> u32 {
    match tp_fields(&ctx, true) {
        Some((mm, write, success)) => mmap_lock::on_acquire(mm, write, success),
        None => maps::count(tracer_common::Counter::ReadError),
    }
    0
}

#[tracepoint(category = "mmap_lock", name = "mmap_lock_released")]
pub fn mmap_lock_release_tp(ctx: TracePointContext) -> u32 {
    match tp_fields(&ctx, false) {
        Some((mm, write, _)) => mmap_lock::on_release(mm, write),
        None => maps::count(tracer_common::Counter::ReadError),
    }
    0
}

#[tracepoint(category = "sched", name = "sched_process_exit")]
pub fn task_exit_tp(_ctx: TracePointContext) -> u32 {
    // The classic tracepoint does not say whether the group died: per-process fault counters
    // of exited processes are then left to user space to prune.
    mmap_lock::on_task_exit(false);
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[link_section = "license"]
#[no_mangle]
static LICENSE: [u8; 4] = *b"GPL\0";
