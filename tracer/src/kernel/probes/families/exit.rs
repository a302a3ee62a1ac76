//! Task exit (`tracer-ebpf/src/exit.rs`): `sched_process_exit`, where every family drops what
//! it kept for the task. Required: faultline does not start without it.

use tracer_common::names::program;

use super::FallbackHook;
use crate::{
    core::event::EventKind,
    kernel::{
        decode::{Parts, Record},
        probes::kernel::Prototypes,
    },
};

/// Recent kernels pass `(task, group_dead)`; older ones `(task)` only, and an argument past the
/// prototype is refused by the verifier, so each has its program.
pub const TASK_EXIT: FallbackHook = FallbackHook {
    category: "sched",
    tracepoint: "sched_process_exit",
    btf: [program::TASK_EXIT_BTF, program::TASK_EXIT_BTF_TASK_ONLY],
    pick,
    tp: program::TASK_EXIT_TP,
};

fn pick(p: &Prototypes) -> Result<usize, String> {
    Ok(if p.exit_group_dead { 0 } else { 1 })
}

/// A task the kernel side tracked (or, in record mode, any task) exited.
pub fn decode(record: &Record) -> Parts {
    Parts::alone(record.now(EventKind::TaskExit {}))
}
