//! Exact kernel state for diagnose, read once with BPF iterators: task blockers (mutex, rwsem,
//! semaphore, with owners), every mmap_lock wait queue in order, and every userfaultfd
//! context with its mm and the tasks waiting on it.

use std::{collections::BTreeMap, io::Read};

use aya::{
    maps::HashMap,
    programs::{Iter, ProgramError},
    Btf, EbpfLoader,
};
use tracer_common::{
    names::{global, map, program},
    DiagOffsets, DiagRecord, FdKey,
};

use crate::kernel::probes::{
    is_eperm,
    kernel::{KernelBtf, KernelError},
    ProbeError, EBPF_OBJECT,
};

fn offsets(btf: &KernelBtf) -> DiagOffsets {
    let off = |s: &str, f: &str| btf.member_offset(s, f).unwrap_or(0);
    DiagOffsets {
        task_state: off("task_struct", "__state"),
        task_blocker: off("task_struct", "blocker"),
        task_pid: off("task_struct", "pid"),
        task_tgid: off("task_struct", "tgid"),
        task_mm: off("task_struct", "mm"),
        mm_owner: off("mm_struct", "owner"),
        mm_mmap_lock: off("mm_struct", "mmap_lock"),
        rwsem_count: off("rw_semaphore", "count"),
        rwsem_owner: off("rw_semaphore", "owner"),
        rwsem_wait_list: off("rw_semaphore", "wait_list"),
        waiter_task: off("rwsem_waiter", "task"),
        waiter_type: off("rwsem_waiter", "type"),
        mutex_owner: off("mutex", "owner"),
        file_private: off("file", "private_data"),
        uffd_ctx_mm: off("userfaultfd_ctx", "mm"),
        uffd_fault_pending_wqh: off("userfaultfd_ctx", "fault_pending_wqh"),
        uffd_fault_wqh: off("userfaultfd_ctx", "fault_wqh"),
        wqh_head: off("wait_queue_head", "head"),
        wqe_private: off("wait_queue_entry", "private"),
        wqe_entry: off("wait_queue_entry", "entry"),
    }
}

fn iter_err(what: &str, e: impl std::fmt::Display) -> ProbeError {
    ProbeError::Program {
        program: what.into(),
        message: e.to_string(),
    }
}

fn run_iter(
    ebpf: &mut aya::Ebpf,
    name: &str,
    kind: &str,
    btf: &Btf,
) -> Result<Vec<u8>, ProbeError> {
    let prog: &mut Iter = ebpf
        .program_mut(name)
        .ok_or_else(|| ProbeError::Load(format!("program {name} missing")))?
        .try_into()
        .map_err(|e: ProgramError| iter_err(name, e))?;
    prog.load(kind, btf).map_err(|e| {
        if is_eperm(&e) {
            ProbeError::Privileges
        } else {
            iter_err(name, e)
        }
    })?;
    let link_id = prog.attach().map_err(|e| iter_err(name, e))?;
    let link = prog.take_link(link_id).map_err(|e| iter_err(name, e))?;
    let mut file = link.into_file().map_err(|e| iter_err(name, e))?;
    let mut buf = Vec::new();
    file.read_to_end(&mut buf)
        .map_err(|e| iter_err(name, format!("reading the iterator: {e}")))?;
    Ok(buf)
}

fn records(buf: &[u8]) -> Vec<DiagRecord> {
    buf.chunks_exact(std::mem::size_of::<DiagRecord>())
        // SAFETY: each chunk is exactly one plain-data record written by the iterator.
        .map(|c| unsafe { std::ptr::read_unaligned(c.as_ptr().cast::<DiagRecord>()) })
        .collect()
}

/// Runs both iterators. `uffd_fds` (pid → fds) names the userfaultfd descriptors to inspect.
pub fn read_kernel_state(
    uffd_fds: &BTreeMap<u32, Vec<u32>>,
) -> Result<Vec<DiagRecord>, ProbeError> {
    let kbtf = KernelBtf::load()?;
    let diag = offsets(&kbtf);
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
    let mut out = records(&run_iter(&mut ebpf, program::DIAG_TASKS, "task", &btf)?);
    if !uffd_fds.is_empty() {
        out.extend(records(&run_iter(
            &mut ebpf,
            program::DIAG_FILES,
            "task_file",
            &btf,
        )?));
    }
    Ok(out)
}
