//! `faultline diagnose`: one look at a host where tasks hang, without a running agent.
//!
//! Two halves. Gathering (`gather`, over `kernel::procfs`, the BPF iterators of `kernel` here
//! and `agent`) reads the world once into a plain [`Snapshot`]: /proc says which tasks sleep
//! where (state, wait channel, kernel stack, system call); BPF iterators read the exact kernel
//! state behind it (lock owners, mmap_lock queues in order, userfaultfd contexts with their
//! descriptors and waiters); a running agent, when there is one, adds the mmap_lock read holders
//! and userfaultfd ioctls it saw. Analysis is the core's pure function of that snapshot
//! (`faultline_core::diagnosis`, tested on fixtures there).

pub mod agent;
pub mod gather;
pub mod kernel;

use std::time::Duration;

pub use faultline_core::diagnosis::{analyse, Diagnosis, Filter, Snapshot};

use crate::kernel::probes::ProbeError;

pub struct DiagnoseOptions {
    pub pid: Option<u32>,
    pub min_blocked: Duration,
    /// The agent asked for read holders and userfaultfd ioctls, if any.
    pub agent: Option<agent::AgentAt>,
}

/// Gathers a snapshot of this host and analyses it.
pub fn diagnose(opts: &DiagnoseOptions) -> Result<Diagnosis, ProbeError> {
    let snapshot = gather::gather(opts.agent.as_ref())?;
    Ok(analyse(
        &snapshot,
        &Filter {
            pid: opts.pid,
            min_blocked: opts.min_blocked,
        },
    ))
}
