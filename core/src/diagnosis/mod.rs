//! The analysis behind `faultline diagnose`: a pure function of one gathered [`Snapshot`] of a
//! host (what /proc, the kernel's iterators and a running agent said), naming who waits for
//! whom, where every fact came from, and cycles with how sure they are. The gathering is the
//! adapter's (`tracer::commands::diagnose`); `render` writes the text and DOT forms.

pub mod analyse;
pub mod handlers;
mod render;
pub mod snapshot;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use analyse::{analyse, Filter};
pub use snapshot::Snapshot;

use crate::event::{Addr, FutexOp, UserLockKind};

/// Functions that run with an mmap_lock held for read: a thread whose kernel stack is in one of
/// them is a read-holder candidate (the kernel does not record read holders).
pub const READ_HOLDER_FRAMES: [&str; 7] = [
    "madvise_populate",
    "faultin_page_range",
    "__get_user_pages",
    "get_user_pages_remote",
    "access_remote_vm",
    "__access_remote_vm",
    "process_vm_rw_core",
];

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
    /// An agent reached over TCP (`diagnose --agent`): nothing proves who answered, so a local
    /// user could have fabricated it. Never counted as certain.
    AgentUnverified,
    /// A guess from /proc (state, stacks): the kernel does not record mmap_lock read holders.
    Heuristic,
    /// A userfaultfd handler named from the evidence listed with the wait (the kernel records
    /// no handler).
    Evidence,
    /// A user-space lock's owner read from a library's memory layout (glibc's mutex or rwlock)
    /// and checked to be a live thread of the right process: not a kernel promise.
    UserLayout,
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
    /// Asleep on a user-space lock (a futex).
    UserLock {
        lock: Addr,
        futex: Addr,
        lock_type: UserLockKind,
        op: FutexOp,
        #[serde(skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        owner: Option<u32>,
        /// What the owner was read from, and what was checked.
        #[serde(skip_serializing_if = "Option::is_none")]
        evidence: Option<String>,
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
