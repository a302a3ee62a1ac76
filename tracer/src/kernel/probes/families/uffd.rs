//! userfaultfd (`tracer-ebpf/src/uffd.rs`): the waiting side (a task asleep in
//! `handle_userfault`, seen from the scheduler hooks) and the handling side (the ioctls on a
//! context, from syscall tracepoints that `uffd_gate` attaches only while a userfaultfd
//! exists).

use aya::maps::HashMap;
use tracer_common::{
    names::{map, program},
    uffd_op, EventKind as WireKind, UffdEvent, UffdHandlerKey,
};

use super::{Coverage, GivesUp, Optional};
use crate::{
    core::event::{Addr, EventKind, UffdOp},
    kernel::{
        decode::{DecodeError, Parts, Record},
        probes::{attach::Program, maps, ProbeError, Probes},
    },
};

pub const PROGRAMS: &[Optional] = &[
    Optional {
        program: Program::btf(program::SCHED_SWITCH_BTF, "sched_switch"),
        coverage: Coverage::UffdWaits,
    },
    Optional {
        program: Program::btf(program::SCHED_WAKING_BTF, "sched_waking"),
        coverage: Coverage::UffdWaits,
    },
    Optional {
        program: Program::tracepoint(program::SYS_ENTER_IOCTL_TP, "syscalls", "sys_enter_ioctl"),
        coverage: Coverage::UffdIoctls,
    },
    Optional {
        program: Program::tracepoint(program::SYS_EXIT_IOCTL_TP, "syscalls", "sys_exit_ioctl"),
        coverage: Coverage::UffdIoctls,
    },
    Optional {
        program: Program::tracepoint(
            program::SYS_EXIT_USERFAULTFD_TP,
            "syscalls",
            "sys_exit_userfaultfd",
        ),
        coverage: Coverage::UffdIoctls,
    },
];

/// The programs the gate attaches and detaches.
pub fn ioctl_programs() -> impl Iterator<Item = &'static Program> {
    PROGRAMS
        .iter()
        .filter(|o| o.coverage == Coverage::UffdIoctls)
        .map(|o| &o.program)
}

/// What a missing syscall tracepoint of the family costs (`check` lists each).
pub fn without_tracepoint(program: &str) -> &'static str {
    if program == program::SYS_EXIT_USERFAULTFD_TP {
        "userfaultfd creation is not counted"
    } else {
        "no userfaultfd ioctl tracing"
    }
}

/// The scheduler hooks: they serve userfaultfd waits and user-space lock waits (the `futex`
/// family) alike.
pub const WAITS: GivesUp = GivesUp {
    name: "userfaultfd and user-space lock waits (sleeps in handle_userfault or a futex, and their wake-ups)",
    without: "tasks stuck on a userfaultfd or on a pthread mutex, rwlock or PI futex are not seen waiting",
};

pub const IOCTLS: GivesUp = GivesUp {
    name: "userfaultfd ioctls (handlers, latency, errors)",
    without: "userfaultfd handlers are not named",
};

impl Probes {
    /// userfaultfd ioctl errors summed over CPUs, indexed `op * ERRNO_BUCKETS + errno bucket`.
    pub fn uffd_errors(&self) -> Result<Vec<u64>, ProbeError> {
        maps::per_cpu_sums(
            &self.ebpf,
            map::UFFD_ERRORS,
            tracer_common::UFFD_ERROR_SLOTS,
        )
    }

    /// The contexts `UFFD_BY_MM` names right now (mm → context).
    pub fn uffd_by_mm(&self) -> Result<Vec<(u64, u64)>, ProbeError> {
        let by_mm: HashMap<_, u64, u64> = maps::typed(&self.ebpf, map::UFFD_BY_MM)?;
        Ok(by_mm.iter().filter_map(Result::ok).collect())
    }

    /// The kernel's table of userfaultfd handler tasks: (context, tid, role) with the role of
    /// `tracer_common::handler_role`. Entries that vanish during the walk are skipped.
    pub fn uffd_handlers(&self) -> Result<Vec<(u64, u32, u64)>, ProbeError> {
        let table: HashMap<_, UffdHandlerKey, u64> = maps::typed(&self.ebpf, map::UFFD_HANDLERS)?;
        Ok(table
            .iter()
            .filter_map(Result::ok)
            .map(|(k, role)| (k.ctx, k.tid, role))
            .collect())
    }

    /// Deletes handler entries (context, tid) of tasks gone; returns how many were there. The
    /// kernel's exit hook finds only a task's last context, and only for exits it saw.
    pub fn forget_uffd_handlers(&mut self, gone: &[(u64, u32)]) -> Result<usize, ProbeError> {
        let mut table: HashMap<_, UffdHandlerKey, u64> =
            maps::typed_mut(&mut self.ebpf, map::UFFD_HANDLERS)?;
        let deleted = gone
            .iter()
            .filter(|&&(ctx, tid)| table.remove(&UffdHandlerKey { ctx, tid, _pad: 0 }).is_ok())
            .count();
        // The exit hook deletes a task's note of its last context; one whose exit was not seen
        // (before the agent started, or on the classic tracepoint's kernels) goes here.
        let mut of_task: HashMap<_, u32, u64> =
            maps::typed_mut(&mut self.ebpf, map::UFFD_HANDLER_OF)?;
        for (_, tid) in gone {
            let _ = of_task.remove(tid);
        }
        Ok(deleted)
    }

    /// Deletes these `UFFD_BY_MM` entries (mm, context), each only while the mm still maps to
    /// that context: one registered on the mm since is kept. Returns how many went.
    pub(in crate::kernel::probes) fn remove_uffd_by_mm(
        &mut self,
        entries: &[(u64, u64)],
    ) -> Result<usize, ProbeError> {
        let mut by_mm: HashMap<_, u64, u64> = maps::typed_mut(&mut self.ebpf, map::UFFD_BY_MM)?;
        Ok(entries
            .iter()
            .filter(|(mm, ctx)| by_mm.get(mm, 0).ok() == Some(*ctx) && by_mm.remove(mm).is_ok())
            .count())
    }
}

pub fn uffd_op_of(op: u8) -> Result<UffdOp, DecodeError> {
    Ok(match op {
        uffd_op::API => UffdOp::Api,
        uffd_op::REGISTER => UffdOp::Register,
        uffd_op::UNREGISTER => UffdOp::Unregister,
        uffd_op::WAKE => UffdOp::Wake,
        uffd_op::COPY => UffdOp::Copy,
        uffd_op::ZEROPAGE => UffdOp::Zeropage,
        uffd_op::WRITEPROTECT => UffdOp::Writeprotect,
        uffd_op::CONTINUE => UffdOp::Continue,
        uffd_op::POISON => UffdOp::Poison,
        uffd_op::MOVE => UffdOp::Move,
        value => {
            return Err(DecodeError::BadField {
                what: "userfaultfd op",
                value,
            })
        }
    })
}

/// `UffdWaitBegin` / `UffdWaitEnd` / `UffdIoctlBegin` / `UffdIoctlEnd`.
pub fn decode(kind: WireKind, record: &Record) -> Result<Parts, DecodeError> {
    let ev: UffdEvent = record.read()?;
    let uffd = Addr(ev.ctx);
    Ok(match kind {
        WireKind::UffdWaitBegin | WireKind::UffdWaitEnd => {
            let begin = EventKind::UffdWaitBegin {
                uffd,
                addr: Addr(ev.addr),
            };
            if kind == WireKind::UffdWaitBegin {
                Parts::alone(record.now(begin))
            } else {
                let end = record.now(EventKind::UffdWaitEnd { uffd });
                Parts::ending(record, end, ev.since_ns, begin)
            }
        }
        _ => {
            let op = uffd_op_of(ev.op)?;
            let begin = EventKind::UffdIoctlBegin { uffd, op };
            if kind == WireKind::UffdIoctlBegin {
                Parts::alone(record.now(begin))
            } else {
                let end = record.now(EventKind::UffdIoctlEnd {
                    uffd,
                    op,
                    ret: ev.ret,
                });
                Parts::ending(record, end, ev.since_ns, begin)
            }
        }
    })
}
