//! The probes: what to load (`plan`), loading and attaching (`load`, over the one `attach`),
//! and access to what they gather.
//!
//! - `plan`: the detail mode settled against the kernel's features before anything loads.
//! - `attach`: `AttachPoint`, and the one load/attach/detach path; failures are classified by
//!   `verifier`.
//! - `load`: the object, then each program attached once (`tp_btf` first, classic
//!   tracepoints as the fallback).
//! - `families`: one module per probe family, mirroring `tracer-ebpf/src/` (`exit`,
//!   `mmap_lock`, `contention`, `faults`, `uffd`, `diag`): programs, typed maps, decoders,
//!   what is given up without them.
//! - `maps`: the maps every family shares; `program_stats`: the programs' run time and count;
//!   `prune`: per-process entries of exited processes; `uffd_gate`: the userfaultfd ioctl
//!   hooks, attached only while a userfaultfd exists; `floor`: the benchmark floor.
//! - `kernel` (BTF offsets, tracefs layouts, kallsyms) and `prototype` (tracepoint prototypes):
//!   facts about the running kernel.

pub mod attach;
mod detach;
mod error;
pub mod families;
mod floor;
pub mod kernel;
mod load;
mod maps;
pub mod plan;
mod program_stats;
pub mod prototype;
mod prune;
pub mod uffd_gate;
pub mod verifier;

use std::{collections::BTreeSet, fmt};

use aya::Ebpf;
use tracer_common::KernelOffsets;

pub use self::{
    error::ProbeError,
    families::Coverage,
    floor::Floor,
    maps::{Aggregates, Counters},
    plan::{
        config_for, default_profile_entries, AttachMode, Detail, Plan, ProbeOptions, ProfileOptions,
    },
    prune::Pruned,
    uffd_gate::{IoctlHooks, Scan as UffdScan, UffdFile},
};

/// The eBPF object built by `build.rs`, embedded so the binary is self-contained.
pub(crate) static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tracer"));

/// Every program name of the probes (hooks in all their variants, optional programs), for the
/// verifier test and `check`. The floor's and the iterators' are apart.
pub fn program_names() -> impl Iterator<Item = &'static str> {
    families::HOOKS
        .into_iter()
        .flat_map(|h| h.btf.into_iter().chain([h.tp]))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .chain(families::optional().map(|o| o.program.name))
}

/// How the programs ended up attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attached {
    Btf,
    Tracepoint,
}

impl fmt::Display for Attached {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Btf => "tp_btf",
            Self::Tracepoint => "tracepoint",
        })
    }
}

/// Loaded and attached programs (`Probes::load`).
pub struct Probes {
    ebpf: Ebpf,
    attached: Attached,
    /// The detail in effect (the plan's: heavier than asked when contention is unavailable).
    detail: Detail,
    offsets: KernelOffsets,
    max_tasks: u32,
    /// What each optional program covers and, when it did not attach, why.
    features: Vec<(Coverage, Result<(), String>)>,
    /// The userfaultfd ioctl hooks' gate, when they attach only while a userfaultfd exists.
    gate: Option<uffd_gate::Gate>,
    /// Whether the file iterator can tell a userfaultfd (`userfaultfd_poll` and the context's
    /// mm were found): without it no context is known alive, and `UFFD_BY_MM` is not pruned.
    uffd_scan_works: bool,
    /// The contexts the gate's scan found this snapshot, for the prune.
    uffd_live: Option<BTreeSet<u64>>,
    /// `UFFD_BY_MM` entries whose context no file had at the last prune.
    uffd_suspects: BTreeSet<(u64, u64)>,
    /// Why the last prune failed (said once per cause).
    prune_failed: Option<String>,
}

impl Probes {
    pub fn attached(&self) -> Attached {
        self.attached
    }

    /// The detail in effect.
    pub fn detail(&self) -> Detail {
        self.detail
    }

    pub fn offsets(&self) -> KernelOffsets {
        self.offsets
    }

    /// What the optional programs cover, and whether each attached.
    pub fn features(&self) -> &[(Coverage, Result<(), String>)] {
        &self.features
    }
}

#[cfg(test)]
mod tests {
    use tracer_common::names::{map, program};

    use super::*;

    /// The names both sides share (`tracer_common::names`) are the object's: a rename on one
    /// side fails here, not at a production start.
    #[test]
    fn every_shared_map_and_program_name_is_in_the_object() {
        let obj = aya_obj::Object::parse(EBPF_OBJECT).expect("the embedded object parses");
        for m in map::ALL {
            assert!(obj.maps.contains_key(m), "map {m} missing from the object");
        }
        let floor = program::FLOOR;
        let diag = [families::diag::TASKS.name, families::diag::FILES.name];
        for p in program_names().chain(floor).chain(diag) {
            assert!(
                obj.programs.contains_key(p),
                "program {p} missing from the object"
            );
        }
        assert_eq!(
            obj.programs.len(),
            program_names().count() + program::FLOOR.len() + 2,
            "every program of the object has a shared name: {:?}",
            obj.programs.keys().collect::<Vec<_>>()
        );
    }
}
