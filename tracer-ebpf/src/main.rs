//! faultline's kernel side: `mmap_lock` tracepoints and task exit.
//!
//! Cost model: on the uncontended path each event does one per-task hash lookup, one per-CPU
//! counter and (for acquire/release) one per-CPU histogram bucket. Nothing crosses the ring buffer
//! unless an attempt waited, a hold lasted, something looks wrong (unmatched release, recursive
//! read) or record mode is on. Everything else is aggregated here and read by user space.
#![no_std]
#![no_main]

mod maps;
mod mmap_lock;

use aya_ebpf::{
    macros::{btf_tracepoint, tracepoint},
    programs::{BtfTracePointContext, TracePointContext},
};
use tracer_common::TracepointLayout;

/// Field offsets of the classic tracepoints, set by the loader from tracefs before load.
#[no_mangle]
static TP_LAYOUT: TracepointLayout = TracepointLayout {
    mm: 0,
    write: 0,
    success: 0,
    _pad: 0,
};

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
pub fn task_exit_btf(_ctx: BtfTracePointContext) -> i32 {
    mmap_lock::on_task_exit();
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
    mmap_lock::on_task_exit();
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
