//! The probe families, one module each, mirroring `tracer-ebpf/src/`: `exit`, `mmap_lock`,
//! `contention` (with its `lock_profile`), `faults`, `uffd`, `futex` (user-space locks, on the
//! `uffd` family's scheduler hooks), and `diag` (the BPF iterators). Each owns its programs and
//! where they attach, typed access to its maps, the decoder of its ring-buffer records and what
//! faultline gives up when it is missing. The plan (`super::plan`) decides which of them load.
//!
//! A new family: its eBPF module, its module here (registered below: `optional()` or `HOOKS`,
//! a `Coverage` variant, its wire kinds in `decode`), what the plan loads it in, and its names
//! in `tracer_common::names`. CONTRIBUTING.md walks through it.

pub mod contention;
pub mod diag;
pub mod exit;
pub mod faults;
pub mod futex;
pub mod lock_profile;
pub mod mmap_lock;
pub mod uffd;

use tracer_common::EventKind as WireKind;

use super::{attach::Program, kernel::Prototypes};
use crate::kernel::decode::{DecodeError, Parts, Record};

/// A hook with a `tp_btf` program per kernel prototype and a classic-tracepoint fallback: the
/// programs the probes cannot run without (task exit, and the `mmap_lock` hooks when the
/// detail asks for them).
pub struct FallbackHook {
    pub category: &'static str,
    pub tracepoint: &'static str,
    /// The `tp_btf` programs, one per prototype layout; `pick` chooses for this kernel.
    pub btf: [&'static str; 2],
    pub pick: fn(&Prototypes) -> Result<usize, String>,
    /// The classic tracepoint program.
    pub tp: &'static str,
}

impl FallbackHook {
    /// The `tp_btf` program for this kernel's prototypes, or why there is none.
    pub fn btf_program(&self, protos: &Prototypes) -> Result<Program, String> {
        let name = (self.pick)(protos).map(|i| self.btf[i])?;
        Ok(Program::btf(name, self.tracepoint))
    }

    pub fn tp_program(&self) -> Program {
        Program::tracepoint(self.tp, self.category, self.tracepoint)
    }
}

/// What an optional program (one without a fallback) covers. Each works when its programs
/// attach, and is reported (never required) when they do not. Not to be confused with
/// `kernel::features::KernelFeature`, which is what the running kernel has.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Coverage {
    LockContention,
    PageFaults,
    PerFaultCounts,
    UffdWaits,
    UffdIoctls,
}

/// A name for `check`, and what is given up without it.
pub struct GivesUp {
    pub name: &'static str,
    pub without: &'static str,
}

impl Coverage {
    fn gives_up(self) -> &'static GivesUp {
        match self {
            Self::LockContention => &contention::LOCK_CONTENTION,
            Self::PageFaults => &faults::KERNEL_FAULTS,
            Self::PerFaultCounts => &faults::USER_FAULTS,
            Self::UffdWaits => &uffd::WAITS,
            Self::UffdIoctls => &uffd::IOCTLS,
        }
    }

    pub fn name(self) -> &'static str {
        self.gives_up().name
    }

    pub fn without(self) -> &'static str {
        self.gives_up().without
    }
}

/// An optional program and what it covers.
pub struct Optional {
    pub program: Program,
    pub coverage: Coverage,
}

/// The hooks with a fallback, in attach order.
pub const HOOKS: [&FallbackHook; 4] = [
    &exit::TASK_EXIT,
    &mmap_lock::START,
    &mmap_lock::ACQUIRE,
    &mmap_lock::RELEASE,
];

/// The optional programs, in attach order (and the order `check` lists what they cover).
pub fn optional() -> impl Iterator<Item = &'static Optional> {
    contention::PROGRAMS
        .iter()
        .chain(faults::PROGRAMS)
        .chain(uffd::PROGRAMS)
}

/// Decodes a record's body by the family that writes its kind.
pub fn decode(kind: WireKind, record: &Record) -> Result<Parts, DecodeError> {
    match kind {
        WireKind::TaskExit => Ok(exit::decode(record)),
        WireKind::MmapLockStart | WireKind::MmapLockAcquire | WireKind::MmapLockRelease => {
            mmap_lock::decode(kind, record)
        }
        WireKind::LockWaitBegin | WireKind::LockWaitEnd => contention::decode(kind, record),
        WireKind::PageFault => faults::decode(record),
        WireKind::UffdWaitBegin
        | WireKind::UffdWaitEnd
        | WireKind::UffdIoctlBegin
        | WireKind::UffdIoctlEnd => uffd::decode(kind, record),
        WireKind::FutexWaitBegin | WireKind::FutexWaitEnd => futex::decode(kind, record),
    }
}
