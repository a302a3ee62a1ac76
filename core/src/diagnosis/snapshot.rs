//! What diagnose gathered, as plain data: the one input of the pure analysis. The gathering
//! side (/proc, BPF iterators, the agent) converts raw kernel records into these types once, at
//! its edge; tests build them by hand or read them from JSON fixtures. Every field that an older
//! kernel or a vanished task may not give is optional or defaults to empty.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::Source;
use crate::event::{Addr, FutexOp, UserLockKind, UserLockOwner};

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Every thread on the host.
    pub tasks: Vec<TaskFacts>,
    /// mmap_locks with a non-empty wait queue.
    #[serde(default)]
    pub mmap_locks: Vec<MmapLockFacts>,
    /// Tasks asleep on a kernel lock (`task_struct.blocker`; absent before 6.16 or so).
    #[serde(default)]
    pub blockers: Vec<BlockerFacts>,
    /// userfaultfd contexts held open by some process.
    #[serde(default)]
    pub uffds: Vec<UffdFacts>,
    /// Threads asleep in a futex wait or lock operation on a user-space lock (one with owner
    /// semantics: condition variables, barriers and the like are left out).
    #[serde(default)]
    pub user_locks: Vec<UserLockFacts>,
    /// What a running agent said, when one answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentFacts>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TaskFacts {
    pub tid: u32,
    pub pid: u32,
    pub comm: String,
    /// The state letter of /proc/…/stat: R, S, D, T, Z, …
    pub state: char,
    /// Read for blocked tasks only.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub wchan: String,
    /// Function names, innermost first; read for blocked tasks (and, when a read holder of an
    /// mmap_lock must be guessed, for every sleeping task).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stack: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub off_cpu_ms: Option<f64>,
    /// The system call it sleeps in (/proc/…/syscall), read for threads of processes holding a
    /// userfaultfd.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub syscall: Option<Syscall>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Syscall {
    /// Its name (`read`, `poll`, `epoll_wait`, `clock_nanosleep`, …; `syscall N` when unknown).
    pub name: String,
    /// Its first argument, when that is a descriptor (read, write, ioctl, epoll_wait, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fd: Option<u32>,
    /// For epoll waits: the descriptors that epoll instance watches (its fdinfo `tfd:` lines).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub epoll_targets: Vec<u32>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MmapLockFacts {
    pub mm: Addr,
    /// The process owning the mm.
    pub mm_pid: u32,
    /// Readers holding it (from the rwsem count), when it is read-held.
    #[serde(default)]
    pub readers: u64,
    /// The writer holding it, when it is write-held.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub writer: Option<u32>,
    /// The wait queue, in order.
    pub waiters: Vec<MmapWaiterFacts>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MmapWaiterFacts {
    pub tid: u32,
    pub write: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BlockerKind {
    Mutex,
    Semaphore,
    RwsemRead,
    RwsemWrite,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockerFacts {
    pub tid: u32,
    pub kind: BlockerKind,
    pub lock: Addr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<u32>,
    /// For rwsems: readers holding it.
    #[serde(default)]
    pub readers: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UffdFacts {
    pub ctx: Addr,
    /// The process whose memory it serves (0 when unknown).
    #[serde(default)]
    pub mm_pid: u32,
    /// Descriptors that refer to it.
    pub fds: Vec<UffdFd>,
    /// Tasks waiting in a fault on it.
    #[serde(default)]
    pub waiters: Vec<UffdWaiterFacts>,
}

/// A thread asleep on a user-space lock: what /proc/TID/syscall and the lock's memory said.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserLockFacts {
    pub tid: u32,
    pub pid: u32,
    /// The word it sleeps on.
    pub futex: Addr,
    /// Where the lock starts (an rwlock's waiters sleep on words inside it).
    pub lock: Addr,
    pub op: FutexOp,
    pub lock_type: UserLockKind,
    /// Its owner, checked against the host; exact for a PI futex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<UserLockOwner>,
    /// Its symbol, or file and offset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UffdFd {
    pub pid: u32,
    pub fd: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UffdWaiterFacts {
    pub tid: u32,
    /// A handler has read its fault message (the kernel moved it from `fault_pending_wqh` to
    /// `fault_wqh`) and has not answered yet.
    pub message_read: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AgentFacts {
    /// Where it answered.
    pub addr: String,
    /// mmap_lock read holders it saw or inferred: waiter tid → holders.
    #[serde(default)]
    pub holders: BTreeMap<u32, Vec<AgentHold>>,
    /// userfaultfd contexts it saw used.
    #[serde(default)]
    pub uffds: Vec<AgentUffd>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentHold {
    pub tid: u32,
    pub source: Source,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentUffd {
    pub uffd: Addr,
    /// Tasks it saw resolve faults (COPY, ZEROPAGE, WAKE, …).
    #[serde(default)]
    pub resolvers: Vec<u32>,
    /// Tasks it saw set it up (API, REGISTER, UNREGISTER).
    #[serde(default)]
    pub setup: Vec<u32>,
}
