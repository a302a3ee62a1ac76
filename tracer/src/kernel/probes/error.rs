//! What can go wrong loading the probes or reading their maps.

use aya::programs::ProgramError;

use super::{kernel::KernelError, verifier};

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("permission denied loading eBPF programs: run faultline as root (or with CAP_BPF, CAP_PERFMON and CAP_SYS_RESOURCE)")]
    Privileges,
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error("loading the eBPF object failed: {0}")]
    Load(String),
    #[error("eBPF program {program}: {message}")]
    Program { program: String, message: String },
    /// A load or attach failure, classified (verifier rejection or other).
    #[error("{0}")]
    Failed(verifier::LoadFailure),
    #[error("no way to attach the mmap_lock probes: tp_btf failed ({btf}); classic tracepoints failed ({tracepoint})")]
    NoAttach { btf: String, tracepoint: String },
    #[error("eBPF map {0} is missing from the object (a build mismatch)")]
    MissingMap(&'static str),
    #[error("eBPF map {map}: {message}")]
    Map { map: &'static str, message: String },
}

impl ProbeError {
    /// A failed object load (maps are created here): a refusal by errno is a privilege problem,
    /// as no verifier ran that could have written a log.
    pub(crate) fn load(e: aya::EbpfError) -> Self {
        match verifier::errno_in(&e) {
            Some(libc::EPERM | libc::EACCES) => Self::Privileges,
            _ => Self::Load(e.to_string()),
        }
    }

    /// A failed program load or attach, classified once (`verifier::classify`): a rejection
    /// with a log is reported as one, and only a refusal without a log while the process lacks
    /// the capabilities is a privilege problem.
    pub(crate) fn program(program: &str, e: &ProgramError) -> Self {
        match verifier::classify_program_error(program, e, verifier::Caps::current()) {
            verifier::LoadFailure::Privileges { .. } => Self::Privileges,
            failure => Self::Failed(failure),
        }
    }

    /// A program the object should have and does not.
    pub(crate) fn missing_program(name: &str) -> Self {
        Self::Load(format!("program {name} missing"))
    }

    /// Wraps a map error of `map`.
    pub(crate) fn map(map: &'static str) -> impl Fn(aya::maps::MapError) -> Self {
        move |e| Self::Map {
            map,
            message: e.to_string(),
        }
    }
}
