//! Where a program attaches (`AttachPoint`), and the one way to load, attach, detach and unload
//! it. Every failure leaves here classified (`ProbeError::program`), whatever the program type.

use std::fmt;

use aya::{
    programs::{
        iter::IterLinkId, tp_btf::BtfTracePointLinkId, trace_point::TracePointLinkId,
        BtfTracePoint, Iter, Program as AyaProgram, ProgramError, TracePoint,
    },
    Btf, Ebpf,
};

use super::ProbeError;

/// Where a program hooks into the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachPoint {
    /// A `tp_btf` program on the BTF trace function of this tracepoint (typed arguments, no
    /// tracefs needed).
    Btf(&'static str),
    /// A classic tracepoint `category:name` (reads fields at tracefs offsets).
    Tracepoint {
        category: &'static str,
        name: &'static str,
    },
    /// A BPF iterator over this kind of kernel object (`task`, `task_file`); each run attaches a
    /// link of its own.
    Iter(&'static str),
}

impl fmt::Display for AttachPoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Btf(tp) => write!(f, "tp_btf/{tp}"),
            Self::Tracepoint { category, name } => write!(f, "tracepoint/{category}/{name}"),
            Self::Iter(kind) => write!(f, "iter/{kind}"),
        }
    }
}

/// One program of the object and where it attaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Program {
    pub name: &'static str,
    pub at: AttachPoint,
}

impl Program {
    pub const fn btf(name: &'static str, tracepoint: &'static str) -> Self {
        Self {
            name,
            at: AttachPoint::Btf(tracepoint),
        }
    }

    pub const fn tracepoint(name: &'static str, category: &'static str, tp: &'static str) -> Self {
        Self {
            name,
            at: AttachPoint::Tracepoint { category, name: tp },
        }
    }

    pub const fn iter(name: &'static str, kind: &'static str) -> Self {
        Self {
            name,
            at: AttachPoint::Iter(kind),
        }
    }
}

/// A live attachment; dropping the `Ebpf` detaches it too.
#[derive(Debug)]
pub enum Link {
    Btf(BtfTracePointLinkId),
    Tracepoint(TracePointLinkId),
    Iter(IterLinkId),
}

/// The kernel's BTF as aya needs it to load `tp_btf` programs and iterators.
pub fn kernel_btf() -> Result<Btf, ProbeError> {
    Btf::from_sys_fs().map_err(|e| ProbeError::Load(format!("kernel BTF: {e}")))
}

pub fn typed<'a, T>(ebpf: &'a mut Ebpf, p: &Program) -> Result<&'a mut T, ProbeError>
where
    &'a mut T: TryFrom<&'a mut AyaProgram, Error = ProgramError>,
{
    let prog = ebpf
        .program_mut(p.name)
        .ok_or_else(|| ProbeError::missing_program(p.name))?;
    prog.try_into().map_err(|e| ProbeError::program(p.name, &e))
}

/// Loads `p` (the verifier runs now). `btf` is needed for `tp_btf` programs and iterators.
pub fn load(ebpf: &mut Ebpf, p: &Program, btf: &Btf) -> Result<(), ProbeError> {
    let fail = |e: ProgramError| ProbeError::program(p.name, &e);
    match p.at {
        AttachPoint::Btf(tp) => typed::<BtfTracePoint>(ebpf, p)?.load(tp, btf).map_err(fail),
        AttachPoint::Tracepoint { .. } => typed::<TracePoint>(ebpf, p)?.load().map_err(fail),
        AttachPoint::Iter(kind) => typed::<Iter>(ebpf, p)?.load(kind, btf).map_err(fail),
    }
}

/// Attaches loaded program `p` at its point.
pub fn attach(ebpf: &mut Ebpf, p: &Program) -> Result<Link, ProbeError> {
    let fail = |e: ProgramError| ProbeError::program(p.name, &e);
    match p.at {
        AttachPoint::Btf(_) => typed::<BtfTracePoint>(ebpf, p)?
            .attach()
            .map(Link::Btf)
            .map_err(fail),
        AttachPoint::Tracepoint { category, name } => typed::<TracePoint>(ebpf, p)?
            .attach(category, name)
            .map(Link::Tracepoint)
            .map_err(fail),
        AttachPoint::Iter(_) => typed::<Iter>(ebpf, p)?
            .attach()
            .map(Link::Iter)
            .map_err(fail),
    }
}

/// Loads and attaches `p`.
pub fn load_and_attach(ebpf: &mut Ebpf, p: &Program, btf: &Btf) -> Result<Link, ProbeError> {
    load(ebpf, p, btf)?;
    attach(ebpf, p)
}

/// Detaches one link of `p`.
pub fn detach(ebpf: &mut Ebpf, p: &Program, link: Link) -> Result<(), ProbeError> {
    let fail = |e: ProgramError| ProbeError::program(p.name, &e);
    match link {
        Link::Btf(id) => typed::<BtfTracePoint>(ebpf, p)?.detach(id).map_err(fail),
        Link::Tracepoint(id) => typed::<TracePoint>(ebpf, p)?.detach(id).map_err(fail),
        Link::Iter(id) => typed::<Iter>(ebpf, p)?.detach(id).map_err(fail),
    }
}

/// Unloads program `name` (detaching its links) if it was loaded; a program never loaded, or
/// already gone, is fine.
pub fn unload(ebpf: &mut Ebpf, name: &str) {
    match ebpf.program_mut(name) {
        Some(AyaProgram::BtfTracePoint(p)) => {
            let _ = p.unload();
        }
        Some(AyaProgram::TracePoint(p)) => {
            let _ = p.unload();
        }
        Some(AyaProgram::Iter(p)) => {
            let _ = p.unload();
        }
        _ => {}
    }
}
