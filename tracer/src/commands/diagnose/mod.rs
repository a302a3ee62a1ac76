//! `faultline diagnose`: one look at a host where tasks hang, without a running agent.
//!
//! Two halves. Gathering (`gather`, over `procfs`, `kernel` and `agent`) reads the world once
//! into a plain [`Snapshot`]: /proc says which tasks sleep where (state, wait channel, kernel
//! stack, system call); BPF iterators read the exact kernel state behind it (lock owners,
//! mmap_lock queues in order, userfaultfd contexts with their descriptors and waiters); a
//! running agent, when there is one, adds the mmap_lock read holders and userfaultfd ioctls it
//! saw. Analysis ([`analyse`]) is a pure function of that snapshot: who waits for whom, every
//! fact saying where it came from, cycles with how sure they are. `render` writes the text and
//! DOT forms.

pub mod agent;
pub mod analyse;
pub mod gather;
pub mod handlers;
pub mod kernel;
pub mod procfs;
mod render;
pub mod snapshot;

use std::{collections::BTreeMap, time::Duration};

use serde::{Deserialize, Serialize};

pub use analyse::{analyse, Filter};
pub use snapshot::Snapshot;

use crate::{event::Addr, probes::ProbeError};

/// Where a fact came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// Kernel memory, read with BPF iterators.
    Kernel,
    /// The running agent's waits-for graph, which tracked the hold.
    Agent,
    /// The running agent's waits-for graph, which inferred the hold (its default mode does not
    /// see uncontended acquisitions; the agent's alert says on what evidence).
    AgentInferred,
    /// A guess from /proc (state, stacks): the kernel does not record mmap_lock read holders.
    Heuristic,
    /// A userfaultfd handler named from the evidence listed with the wait (the kernel records
    /// no handler).
    Evidence,
}

impl Source {
    /// Whether an edge from this source is established rather than inferred: a cycle of such
    /// edges only is a certain deadlock.
    pub fn is_certain(self) -> bool {
        matches!(self, Self::Kernel | Self::Agent)
    }
}

/// What a blocked task waits for.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Wait {
    MmapLock {
        mm: Addr,
        /// The process owning the mm.
        mm_pid: u32,
        mode: &'static str,
        /// Position in the lock's wait queue (0: first).
        queue_position: u32,
        /// Readers holding the lock (from its count), when it is read-held.
        readers: u64,
        /// The writer holding it, when it is write-held.
        #[serde(skip_serializing_if = "Option::is_none")]
        writer: Option<u32>,
    },
    Mutex {
        lock: Addr,
        #[serde(skip_serializing_if = "Option::is_none")]
        owner: Option<u32>,
    },
    Rwsem {
        lock: Addr,
        mode: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        owner: Option<u32>,
        readers: u64,
    },
    Semaphore {
        lock: Addr,
    },
    Uffd {
        uffd: Addr,
        /// The process whose memory the context serves.
        mm_pid: u32,
        /// Processes holding the userfaultfd open.
        holders: Vec<u32>,
        /// A handler read the fault message and has not answered (else it is pending).
        message_read: bool,
        /// Threads that could serve it, best evidence first; the `named` ones are its edges.
        candidates: Vec<handlers::Candidate>,
        /// Weaker candidates left out of `candidates`.
        #[serde(skip_serializing_if = "is_zero")]
        more_candidates: usize,
    },
    Other {
        wchan: String,
    },
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

#[derive(Clone, Debug, Serialize)]
pub struct Edge {
    pub tid: u32,
    pub source: Source,
}

#[derive(Clone, Debug, Serialize)]
pub struct DiagTask {
    pub tid: u32,
    pub pid: u32,
    pub comm: String,
    pub state: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub off_cpu_ms: Option<f64>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub wchan: String,
    pub wait: Wait,
    /// Whom it waits for (tids).
    pub blocked_on: Vec<u32>,
    /// The same, with where each came from.
    pub blocked_on_sources: Vec<Edge>,
    pub stack: Vec<String>,
}

/// How sure a cycle is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Confidence {
    /// Every edge is a kernel fact (or a hold the agent tracked).
    Certain,
    /// At least one edge is inferred: a userfaultfd handler named from evidence, or a guessed
    /// read holder. `evidence` says which and why.
    Probable,
}

#[derive(Clone, Debug, Serialize)]
pub struct Cycle {
    /// Its tasks, sorted.
    pub tids: Vec<u32>,
    pub confidence: Confidence,
    /// One line per edge of the cycle: what it waits for and on what evidence.
    pub evidence: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct Diagnosis {
    pub tasks: Vec<DiagTask>,
    pub cycles: Vec<Cycle>,
    /// Tasks named as holders that are not blocked themselves: the roots of the chains.
    #[serde(skip)]
    pub others: BTreeMap<u32, (u32, String, char)>,
    #[serde(skip)]
    pub agent: Option<String>,
}

pub struct DiagnoseOptions {
    pub pid: Option<u32>,
    pub min_blocked: Duration,
    /// The agent's API, asked for read holders and userfaultfd ioctls when it answers.
    pub agent: Option<String>,
}

/// Gathers a snapshot of this host and analyses it.
pub fn diagnose(opts: &DiagnoseOptions) -> Result<Diagnosis, ProbeError> {
    let snapshot = gather::gather(opts.agent.as_deref())?;
    Ok(analyse(
        &snapshot,
        &Filter {
            pid: opts.pid,
            min_blocked: opts.min_blocked,
        },
    ))
}
