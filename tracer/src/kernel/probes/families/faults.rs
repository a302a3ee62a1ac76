//! Page faults (`tracer-ebpf/src/faults.rs`): kernel-mode faults (the evidence of a fault under
//! a lock) by default, user faults and the per-process `PROC_FAULTS` counters in full mode.

use aya::maps::{MapData, PerCpuHashMap, PerCpuValues};
use tracer_common::{
    names::{map, program},
    reason, PageFaultEvent, ProcFaults,
};

use super::{Coverage, GivesUp, Optional};
use crate::{
    core::event::{Addr, EventKind},
    kernel::{
        decode::{DecodeError, Parts, Record},
        probes::{attach::Program, maps, ProbeError, Probes},
    },
};

pub const PROGRAMS: &[Optional] = &[
    Optional {
        program: Program::btf(program::PAGE_FAULT_KERNEL_BTF, "page_fault_kernel"),
        coverage: Coverage::PageFaults,
    },
    Optional {
        program: Program::btf(program::PAGE_FAULT_USER_BTF, "page_fault_user"),
        coverage: Coverage::PerFaultCounts,
    },
];

pub const KERNEL_FAULTS: GivesUp = GivesUp {
    name: "kernel-mode page faults (faults under lock)",
    without: "no fault-under-lock evidence",
};

pub const USER_FAULTS: GivesUp = GivesUp {
    name: "user page faults (per-fault counters per process)",
    without: "per-process fault counts come from /proc",
};

/// Each process's counters summed over CPUs; entries that vanish during the walk are skipped.
fn sum_all<E>(
    entries: impl Iterator<Item = Result<(u32, PerCpuValues<ProcFaults>), E>>,
) -> Vec<(u32, ProcFaults)> {
    entries
        .filter_map(Result::ok)
        .map(|(tgid, per_cpu)| {
            let sum = per_cpu
                .iter()
                .fold(ProcFaults::default(), |a, c| ProcFaults {
                    user: a.user + c.user,
                    kernel: a.kernel + c.kernel,
                    under_lock: a.under_lock + c.under_lock,
                    mmap_lock: a.mmap_lock + c.mmap_lock,
                });
            (tgid, sum)
        })
        .collect()
}

/// The per-process fault map on a handle of its own (`Probes::aggregates`): a scrape walks it
/// without the agent's lock.
pub struct ProcFaultsMap(pub(in crate::kernel::probes) PerCpuHashMap<MapData, u32, ProcFaults>);

impl ProcFaultsMap {
    /// Per-process page-fault counters summed over CPUs: (tgid, counters).
    pub fn read(&self) -> Vec<(u32, ProcFaults)> {
        sum_all(self.0.iter())
    }
}

impl Probes {
    /// Per-process page-fault counters summed over CPUs: (tgid, counters).
    pub fn proc_faults(&self) -> Result<Vec<(u32, ProcFaults)>, ProbeError> {
        let faults: PerCpuHashMap<_, u32, ProcFaults> = maps::typed(&self.ebpf, map::PROC_FAULTS)?;
        Ok(sum_all(faults.iter()))
    }

    /// Deletes the counters of processes for which `alive` says no; returns how many went.
    /// The kernel side deletes them itself only where `sched_process_exit` says the group died.
    pub(in crate::kernel::probes) fn prune_proc_faults(
        &mut self,
        alive: &dyn Fn(u32) -> bool,
    ) -> Result<usize, ProbeError> {
        let mut faults: PerCpuHashMap<_, u32, ProcFaults> =
            maps::typed_mut(&mut self.ebpf, map::PROC_FAULTS)?;
        let gone: Vec<u32> = faults
            .keys()
            .filter_map(Result::ok)
            .filter(|tgid| !alive(*tgid))
            .collect();
        // An entry already gone (the exit program raced us) is not an error.
        Ok(gone.iter().filter(|t| faults.remove(t).is_ok()).count())
    }
}

/// `PageFault`.
pub fn decode(record: &Record) -> Result<Parts, DecodeError> {
    let ev: PageFaultEvent = record.read()?;
    Ok(Parts::alone(record.now(EventKind::PageFault {
        addr: Addr(ev.addr),
        user: ev.user != 0,
        error_code: ev.error_code,
        under_lock: record.reasons().0 & reason::UNDER_LOCK != 0,
    })))
}
