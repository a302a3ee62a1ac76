//! The benchmark floor: empty programs attached on every hook the default mode uses while no
//! userfaultfd exists, so `cargo xtask bench` can tell the cost of merely hooking from the cost
//! of faultline's work.

use aya::{Ebpf, EbpfLoader};
use tracer_common::names::program;

use super::{
    attach::{self, Program},
    load::raise_memlock,
    ProbeError, EBPF_OBJECT,
};

/// The floor's programs and where each attaches.
pub const PROGRAMS: [Program; 6] = [
    Program::btf(program::FLOOR_CONTENTION_BEGIN, "contention_begin"),
    Program::btf(program::FLOOR_CONTENTION_END, "contention_end"),
    Program::btf(program::FLOOR_PAGE_FAULT_KERNEL, "page_fault_kernel"),
    Program::btf(program::FLOOR_SCHED_SWITCH, "sched_switch"),
    Program::btf(program::FLOOR_SCHED_WAKING, "sched_waking"),
    Program::btf(program::FLOOR_TASK_EXIT, "sched_process_exit"),
];

/// Held attached while the value lives.
pub struct Floor {
    _ebpf: Ebpf,
}

impl Floor {
    pub fn attach() -> Result<Self, ProbeError> {
        raise_memlock();
        let mut ebpf = EbpfLoader::new()
            .load(EBPF_OBJECT)
            .map_err(ProbeError::load)?;
        let btf = attach::kernel_btf()?;
        for p in &PROGRAMS {
            attach::load_and_attach(&mut ebpf, p, &btf)?;
        }
        Ok(Self { _ebpf: ebpf })
    }
}
