//! BPF iterators: loaded once, then run as often as needed (each run attaches a link, reads
//! the records it writes and drops the link). Diagnose runs them once; the agent runs the
//! userfaultfd file scan at every snapshot.

use std::io::Read as _;

use aya::{
    programs::{Iter, ProgramError},
    Btf, Ebpf,
};
use tracer_common::DiagRecord;

use super::{is_eperm, ProbeError};

fn iter_err(what: &str, e: impl std::fmt::Display) -> ProbeError {
    ProbeError::Program {
        program: what.into(),
        message: e.to_string(),
    }
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut Iter, ProbeError> {
    ebpf.program_mut(name)
        .ok_or_else(|| ProbeError::Load(format!("program {name} missing")))?
        .try_into()
        .map_err(|e: ProgramError| iter_err(name, e))
}

/// Loads iterator `name` over `kind` (`task`, `task_file`).
pub fn load(ebpf: &mut Ebpf, name: &str, kind: &str, btf: &Btf) -> Result<(), ProbeError> {
    program(ebpf, name)?.load(kind, btf).map_err(|e| {
        if is_eperm(&e) {
            ProbeError::Privileges
        } else {
            iter_err(name, e)
        }
    })
}

/// Runs loaded iterator `name` once: the records it wrote.
pub fn run(ebpf: &mut Ebpf, name: &str) -> Result<Vec<DiagRecord>, ProbeError> {
    let prog = program(ebpf, name)?;
    let link_id = prog.attach().map_err(|e| iter_err(name, e))?;
    let link = prog.take_link(link_id).map_err(|e| iter_err(name, e))?;
    let mut file = link.into_file().map_err(|e| iter_err(name, e))?;
    let mut buf = Vec::new();
    file.read_to_end(&mut buf)
        .map_err(|e| iter_err(name, format!("reading the iterator: {e}")))?;
    Ok(buf
        .chunks_exact(std::mem::size_of::<DiagRecord>())
        // SAFETY: each chunk is exactly one plain-data record written by the iterator.
        .map(|c| unsafe { std::ptr::read_unaligned(c.as_ptr().cast::<DiagRecord>()) })
        .collect())
}
