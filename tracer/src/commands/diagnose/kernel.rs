//! Exact kernel state for diagnose, read once with BPF iterators: task blockers (mutex, rwsem,
//! semaphore, with owners), every mmap_lock wait queue in order, and every userfaultfd
//! context with its mm and the tasks waiting on it.

use std::collections::BTreeMap;

use aya::{maps::HashMap, Btf, EbpfLoader};
use tracer_common::{
    names::{global, map, program},
    DiagRecord, FdKey,
};

use crate::kernel::probes::{
    iter,
    kernel::{KernelBtf, KernelError},
    ProbeError, EBPF_OBJECT,
};

/// Runs both iterators. `uffd_fds` (pid → fds) names the userfaultfd descriptors to inspect.
pub fn read_kernel_state(
    uffd_fds: &BTreeMap<u32, Vec<u32>>,
) -> Result<Vec<DiagRecord>, ProbeError> {
    let kbtf = KernelBtf::load()?;
    let diag = kbtf.diag_offsets();
    if diag.task_pid == 0 || diag.rwsem_wait_list == 0 {
        return Err(ProbeError::Kernel(KernelError::Btf {
            path: crate::kernel::probes::kernel::VMLINUX_BTF.into(),
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
        let map = ebpf
            .map_mut(map::DIAG_UFFD_FDS)
            .ok_or(ProbeError::MissingMap(map::DIAG_UFFD_FDS))?;
        let mut fds: HashMap<_, FdKey, u8> =
            HashMap::try_from(map).map_err(|e| ProbeError::Map {
                map: map::DIAG_UFFD_FDS,
                message: e.to_string(),
            })?;
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
    let btf = Btf::from_sys_fs().map_err(|e| ProbeError::Load(format!("kernel BTF: {e}")))?;
    iter::load(&mut ebpf, program::DIAG_TASKS, "task", &btf)?;
    let mut out = iter::run(&mut ebpf, program::DIAG_TASKS)?;
    if !uffd_fds.is_empty() {
        iter::load(&mut ebpf, program::DIAG_FILES, "task_file", &btf)?;
        out.extend(iter::run(&mut ebpf, program::DIAG_FILES)?);
    }
    Ok(out)
}
