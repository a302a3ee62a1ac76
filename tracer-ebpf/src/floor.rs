//! Empty programs on every hook the default mode attaches while no userfaultfd exists:
//! `cargo xtask bench` runs them as the floor, the cost of the hooks themselves, below which no
//! design on these hooks can go.

use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};

#[btf_tracepoint(function = "contention_begin")]
pub fn floor_contention_begin(_ctx: BtfTracePointContext) -> i32 {
    0
}

#[btf_tracepoint(function = "contention_end")]
pub fn floor_contention_end(_ctx: BtfTracePointContext) -> i32 {
    0
}

#[btf_tracepoint(function = "page_fault_kernel")]
pub fn floor_page_fault_kernel(_ctx: BtfTracePointContext) -> i32 {
    0
}

#[btf_tracepoint(function = "sched_switch")]
pub fn floor_sched_switch(_ctx: BtfTracePointContext) -> i32 {
    0
}

#[btf_tracepoint(function = "sched_waking")]
pub fn floor_sched_waking(_ctx: BtfTracePointContext) -> i32 {
    0
}

#[btf_tracepoint(function = "sched_process_exit")]
pub fn floor_task_exit(_ctx: BtfTracePointContext) -> i32 {
    0
}
