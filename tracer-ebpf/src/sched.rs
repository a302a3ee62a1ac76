//! The scheduler hooks, shared by the families that learn of waits from sleeps and wake-ups:
//! `uffd` (a task asleep in `handle_userfault`) and `futex` (a task asleep in a futex).

use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext, EbpfContext as _};

use crate::{futex, maps::finish, uffd};

#[btf_tracepoint(function = "sched_switch")]
pub fn sched_switch_btf(ctx: BtfTracePointContext) -> i32 {
    let preempt: u8 = ctx.arg(0);
    let prev_state: u32 = ctx.arg(3);
    // Only a task that goes to sleep (not one preempted while runnable) can be waiting.
    if preempt == 0 && prev_state != 0 {
        finish(uffd::on_sleep(&ctx));
        if futex::futex_like_sleep(prev_state) {
            finish(futex::on_sleep(ctx.as_ptr()));
        }
    }
    0
}

#[btf_tracepoint(function = "sched_waking")]
pub fn sched_waking_btf(ctx: BtfTracePointContext) -> i32 {
    let wakee: u64 = ctx.arg(0);
    finish(uffd::on_waking(wakee));
    finish(futex::on_waking(wakee));
    0
}
