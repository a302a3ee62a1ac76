//! The BPF iterators (`tracer-ebpf/src/diag.rs`): exact kernel state read on demand. `tasks`
//! walks every task (blockers with owners, `mmap_lock` wait queues); `files` walks every open
//! file (userfaultfd contexts, their mm and waiters). Loaded once, then run as often as needed:
//! each run attaches a link, reads the records it writes and drops the link. Diagnose runs them
//! once; the agent runs the file scan at every snapshot (`uffd_gate`, and the prune of
//! per-process maps).

use std::{collections::BTreeMap, io::Read as _};

use aya::{maps::HashMap, programs::Iter, Btf, Ebpf, EbpfLoader};
use tracer_common::{
    names::{global, map, program},
    DiagRecord, FdKey,
};

use crate::kernel::probes::{
    attach::{self, AttachPoint, Link, Program},
    kernel::{KernelBtf, KernelError, VMLINUX_BTF},
    maps, ProbeError, EBPF_OBJECT,
};

/// Every task: blockers, owners, `mmap_lock` queues.
pub const TASKS: Program = Program::iter(program::DIAG_TASKS, "task");
/// Every open file: userfaultfd contexts (named in `DIAG_UFFD_FDS`, or found by their
/// `f_op->poll`).
pub const FILES: Program = Program::iter(program::DIAG_FILES, "task_file");

/// Whether iterator `p` is loaded already.
pub fn loaded(ebpf: &mut Ebpf, p: &Program) -> bool {
    ebpf.program_mut(p.name)
        .and_then(|prog| <&mut Iter>::try_from(prog).ok())
        .is_some_and(|it| it.fd().is_ok())
}

/// Loads iterator `p`.
pub fn load(ebpf: &mut Ebpf, p: &Program, btf: &Btf) -> Result<(), ProbeError> {
    debug_assert!(matches!(p.at, AttachPoint::Iter(_)));
    attach::load(ebpf, p, btf)
}

/// Runs loaded iterator `p` once: the records it wrote.
pub fn run(ebpf: &mut Ebpf, p: &Program) -> Result<Vec<DiagRecord>, ProbeError> {
    let failed = |e: &dyn std::fmt::Display| ProbeError::Program {
        program: p.name.into(),
        message: e.to_string(),
    };
    let Link::Iter(id) = attach::attach(ebpf, p)? else {
        return Err(failed(&"not an iterator"));
    };
    let it: &mut Iter = attach::typed(ebpf, p)?;
    let link = it.take_link(id).map_err(|e| failed(&e))?;
    let mut file = link.into_file().map_err(|e| failed(&e))?;
    let mut buf = Vec::new();
    file.read_to_end(&mut buf)
        .map_err(|e| failed(&format!("reading the iterator: {e}")))?;
    Ok(buf
        .chunks_exact(std::mem::size_of::<DiagRecord>())
        // SAFETY: each chunk is exactly one plain-data record written by the iterator.
        .map(|c| unsafe { std::ptr::read_unaligned(c.as_ptr().cast::<DiagRecord>()) })
        .collect())
}

/// Diagnose's read of the kernel: runs both iterators in an object of their own.
/// `uffd_fds` (pid → fds) names the userfaultfd descriptors to inspect.
pub fn read_kernel_state(
    uffd_fds: &BTreeMap<u32, Vec<u32>>,
) -> Result<Vec<DiagRecord>, ProbeError> {
    let kbtf = KernelBtf::load()?;
    let diag = kbtf.diag_offsets();
    if diag.task_pid == 0 || diag.rwsem_wait_list == 0 {
        return Err(ProbeError::Kernel(KernelError::Btf {
            path: VMLINUX_BTF.into(),
            message: "task_struct.pid or rw_semaphore.wait_list not found".into(),
        }));
    }
    // Only the iterators run: keep the tracing maps tiny.
    let mut ebpf = EbpfLoader::new()
        .override_global(global::DIAG_OFFSETS, &diag, true)
        .map_max_entries(map::TASK_STATE, 1)
        .map_max_entries(map::PROC_FAULTS, 1)
        .map_max_entries(map::EVENTS, 4096)
        .load(EBPF_OBJECT)
        .map_err(ProbeError::load)?;
    {
        let mut fds: HashMap<_, FdKey, u8> = maps::typed_mut(&mut ebpf, map::DIAG_UFFD_FDS)?;
        for (pid, list) in uffd_fds {
            for fd in list {
                // Past the map's capacity a descriptor is simply not inspected.
                let _ = fds.insert(
                    FdKey {
                        tgid: *pid,
                        fd: *fd,
                    },
                    1,
                    0,
                );
            }
        }
    }
    let btf = attach::kernel_btf()?;
    load(&mut ebpf, &TASKS, &btf)?;
    let mut out = run(&mut ebpf, &TASKS)?;
    if !uffd_fds.is_empty() {
        load(&mut ebpf, &FILES, &btf)?;
        out.extend(run(&mut ebpf, &FILES)?);
    }
    Ok(out)
}
