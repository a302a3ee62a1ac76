//! The waits-for graph: edges derived from the lock model, cycles by strongly connected
//! components (petgraph's Tarjan, linear in nodes + edges).

use std::collections::{BTreeMap, HashMap};

use petgraph::{algo::tarjan_scc, graph::DiGraph};
use serde::Serialize;

use crate::{
    event::{Addr, LockMode, LockType, UserLockKind},
    exposure::{AddrKind, Exposure, Shown},
    model::{Blocked, Model, Tid},
};

/// What an edge goes through. `A`: how addresses are held (see `model::Blocked`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LockRef<A = Addr> {
    MmapLock {
        mm: A,
        #[serde(skip_serializing_if = "Option::is_none")]
        owner_pid: Option<u32>,
    },
    KernelLock {
        lock: A,
        lock_type: LockType,
    },
    Uffd {
        uffd: A,
    },
    /// A user-space lock of process `pid` (a user address of that process).
    UserLock {
        lock: A,
        pid: u32,
        lock_type: UserLockKind,
    },
}

impl LockRef {
    /// As `exposure` shows it.
    pub fn shown(&self, exposure: &Exposure) -> LockRef<Shown> {
        match *self {
            Self::MmapLock { mm, owner_pid } => LockRef::MmapLock {
                mm: exposure.show(AddrKind::Mm, mm),
                owner_pid,
            },
            Self::KernelLock { lock, lock_type } => LockRef::KernelLock {
                lock: exposure.show(AddrKind::Lock, lock),
                lock_type,
            },
            Self::Uffd { uffd } => LockRef::Uffd {
                uffd: exposure.show(AddrKind::Uffd, uffd),
            },
            Self::UserLock {
                lock,
                pid,
                lock_type,
            } => LockRef::UserLock {
                lock: exposure.show(AddrKind::User, lock),
                pid,
                lock_type,
            },
        }
    }
}

/// Why `from` waits for `to`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// `to` holds the lock `from` wants.
    Holds,
    /// `to` is inferred to hold the lock for read (not seen acquiring it; the evidence is in
    /// the lock's `inferred_readers`).
    HoldsInferred,
    /// `from` asks for read and is queued behind writer `to` (rwsem fairness / handoff).
    QueuedBehindWriter,
    /// `to` owns the contended kernel lock.
    LockOwner,
    /// `to` serves the userfaultfd `from` faulted on.
    UffdHandler,
    /// `to` owns the user-space lock: exactly (the PI futex word names it).
    UserLockOwner,
    /// `to` owns the user-space lock as a library's layout says, and was seen taking it: woken
    /// from its own wait on the lock by a futex wake, before `from` read the word, and not seen
    /// letting it go since. Seen from both ends, so not an inference.
    UserLockOwnerConfirmed,
    /// `to` owns the user-space lock as a library's layout says (the evidence is in the
    /// waiter's `Blocked::UserLock`).
    UserLockOwnerInferred,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Edge<A = Addr> {
    pub from: Tid,
    pub to: Tid,
    pub lock: LockRef<A>,
    /// The mode `from` asks for, for rwsems.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wants: Option<LockMode>,
    /// The mode `to` holds the lock in, when it holds it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub held: Option<LockMode>,
    pub reason: Reason,
    /// When `from` started waiting.
    pub since_ns: u64,
}

impl Edge {
    /// As `exposure` shows it.
    pub fn shown(&self, exposure: &Exposure) -> Edge<Shown> {
        Edge {
            from: self.from,
            to: self.to,
            lock: self.lock.shown(exposure),
            wants: self.wants,
            held: self.held,
            reason: self.reason,
            since_ns: self.since_ns,
        }
    }
}

/// Every cycle of a directed graph given as (from, to) pairs: its strongly connected components
/// of more than one node, each sorted, the list sorted.
pub fn cycles(edges: impl Iterator<Item = (Tid, Tid)>) -> Vec<Vec<Tid>> {
    // Dense indices (a Vec-backed graph) are several times faster than hashing tids inside the
    // SCC walk, which matters with tens of thousands of blocked tasks.
    let mut g: DiGraph<Tid, ()> = DiGraph::new();
    let mut index: HashMap<Tid, _> = HashMap::new();
    for (from, to) in edges {
        let a = *index.entry(from).or_insert_with(|| g.add_node(from));
        let b = *index.entry(to).or_insert_with(|| g.add_node(to));
        g.add_edge(a, b, ());
    }
    let mut cycles: Vec<Vec<Tid>> = tarjan_scc(&g)
        .into_iter()
        .filter(|c| c.len() > 1)
        .map(|c| {
            let mut tids: Vec<Tid> = c.into_iter().map(|i| g[i]).collect();
            tids.sort_unstable();
            tids
        })
        .collect();
    cycles.sort();
    cycles
}

/// Outgoing edges of one blocked task, in a deterministic order.
pub fn edges_of(model: &Model, tid: Tid) -> Vec<Edge> {
    let Some(blocked) = model.task(tid).and_then(|t| t.blocked.as_ref()) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    match blocked {
        Blocked::MmapLock { mm, mode, since_ns } => {
            let Some(lock) = model.mm_locks.get(mm) else {
                return out;
            };
            let lref = LockRef::MmapLock {
                mm: *mm,
                owner_pid: lock.owner_pid,
            };
            let edge = |to, held, reason| Edge {
                from: tid,
                to,
                lock: lref,
                wants: Some(*mode),
                held,
                reason,
                since_ns: *since_ns,
            };
            if let Some((w, _)) = lock.writer {
                if w != tid {
                    out.push(edge(w, Some(LockMode::Write), Reason::Holds));
                }
            }
            let queued: Vec<Tid> = lock
                .writers_queued_before(*since_ns)
                .map(|(t, _)| t)
                .filter(|&t| t != tid)
                .collect();
            match mode {
                LockMode::Write => {
                    out.extend(
                        lock.readers
                            .keys()
                            .filter(|&&r| r != tid)
                            .map(|&r| edge(r, Some(LockMode::Read), Reason::Holds)),
                    );
                    out.extend(
                        lock.inferred_readers
                            .keys()
                            .filter(|&&r| r != tid)
                            .map(|&r| edge(r, Some(LockMode::Read), Reason::HoldsInferred)),
                    );
                    out.extend(
                        queued
                            .into_iter()
                            .map(|w| edge(w, None, Reason::QueuedBehindWriter)),
                    );
                }
                LockMode::Read => {
                    // A reader blocks only behind a writer: the holder, or queued writers.
                    out.extend(
                        queued
                            .into_iter()
                            .map(|w| edge(w, None, Reason::QueuedBehindWriter)),
                    );
                    // A reader that re-takes a lock it holds while nobody is queued waits on
                    // nobody we know of: no edge rather than a guessed one.
                }
            }
        }
        Blocked::KernelLock {
            lock,
            lock_type,
            owner,
            since_ns,
        } => {
            if let Some(o) = owner.filter(|&o| o != tid) {
                out.push(Edge {
                    from: tid,
                    to: o,
                    lock: LockRef::KernelLock {
                        lock: *lock,
                        lock_type: *lock_type,
                    },
                    wants: None,
                    held: None,
                    reason: Reason::LockOwner,
                    since_ns: *since_ns,
                });
            }
        }
        Blocked::Uffd { uffd, since_ns, .. } => {
            if let Some(ctx) = model.uffds.get(uffd) {
                out.extend(uffd_handlers(model, ctx, tid).into_iter().map(|h| Edge {
                    from: tid,
                    to: h,
                    lock: LockRef::Uffd { uffd: *uffd },
                    wants: None,
                    held: None,
                    reason: Reason::UffdHandler,
                    since_ns: *since_ns,
                }));
            }
        }
        Blocked::UserLock {
            lock,
            pid,
            lock_type,
            owner,
            exact,
            since_ns,
            ..
        } => {
            let lref = LockRef::UserLock {
                lock: *lock,
                pid: *pid,
                lock_type: *lock_type,
            };
            let wants = match lock_type {
                UserLockKind::PthreadRwlockRead => Some(LockMode::Read),
                UserLockKind::PthreadRwlockWrite => Some(LockMode::Write),
                _ => None,
            };
            let rwlock = wants.is_some();
            if let Some(o) = owner.filter(|&o| o != tid) {
                out.push(Edge {
                    from: tid,
                    to: o,
                    lock: lref,
                    wants,
                    held: rwlock.then_some(LockMode::Write),
                    reason: if *exact {
                        Reason::UserLockOwner
                    } else if model.seen_taking_user_lock(o, *pid, *lock, *since_ns) {
                        Reason::UserLockOwnerConfirmed
                    } else {
                        Reason::UserLockOwnerInferred
                    },
                    since_ns: *since_ns,
                });
            } else if *lock_type == UserLockKind::PthreadRwlockRead {
                // A reader with no writer holding it is held back by a queued writer (glibc
                // blocks new readers only when writers are preferred): the writers waiting on
                // the same lock, which queued before it.
                out.extend(
                    model
                        .blocked
                        .iter()
                        .filter(|&&w| w != tid)
                        .filter(|&&w| {
                            matches!(
                                model.blocked(w),
                                Some(Blocked::UserLock {
                                    lock: l,
                                    pid: p,
                                    lock_type: UserLockKind::PthreadRwlockWrite,
                                    since_ns: s,
                                    ..
                                }) if l == lock && p == pid && s <= since_ns
                            )
                        })
                        .map(|&w| Edge {
                            from: tid,
                            to: w,
                            lock: lref,
                            wants,
                            held: None,
                            reason: Reason::QueuedBehindWriter,
                            since_ns: *since_ns,
                        }),
                );
            }
        }
    }
    out
}

/// Who serves a userfaultfd for its waiter `tid`: the tasks seen resolving faults on it, else
/// those seen setting it up, else the processes holding it open (their leader's tid stands for
/// the process). Of such a process, a thread blocked on a user-space lock is named instead
/// when there is one: a handler that read the fault and then blocked on a lock in its own code
/// cannot answer it, and nothing but a handler reads faults in user space (`diagnose` ranks a
/// blocked thread first too). Threads blocked in the kernel (a write queued on a file's lock)
/// are not taken for handlers: they are as likely the fault's victims.
pub fn uffd_handlers(model: &Model, ctx: &crate::model::UffdCtx, tid: Tid) -> Vec<Tid> {
    let named = ctx.handlers();
    if ctx.resolvers.is_empty() && ctx.setup.is_empty() {
        let stuck: Vec<Tid> = model
            .blocked
            .iter()
            .copied()
            .filter(|&b| b != tid)
            .filter(|&b| {
                model.task(b).is_some_and(|t| {
                    ctx.holders.contains(&t.pid)
                        && matches!(t.blocked, Some(Blocked::UserLock { .. }))
                })
            })
            .collect();
        if !stuck.is_empty() {
            return stuck;
        }
    }
    named.iter().copied().filter(|&h| h != tid).collect()
}

/// The whole graph at one moment.
#[derive(Clone, Debug, Default)]
pub struct WaitsFor {
    /// Outgoing edges of every blocked task.
    pub edges: BTreeMap<Tid, Vec<Edge>>,
}

impl WaitsFor {
    pub fn build(model: &Model) -> Self {
        Self {
            edges: model
                .blocked
                .iter()
                .map(|&t| (t, edges_of(model, t)))
                .collect(),
        }
    }

    pub fn out(&self, tid: Tid) -> &[Edge] {
        self.edges.get(&tid).map(Vec::as_slice).unwrap_or(&[])
    }

    pub fn all_edges(&self) -> impl Iterator<Item = &Edge> {
        self.edges.values().flatten()
    }

    /// Every cycle: strongly connected components of more than one task. (A task cannot wait
    /// on itself: `edges_of` never emits self-edges.) Each is sorted; the list is sorted too.
    pub fn cycles(&self) -> Vec<Vec<Tid>> {
        cycles(self.all_edges().map(|e| (e.from, e.to)))
    }

    /// From `tid`, the path following edges to a task that waits on nobody (the root holder),
    /// or until a task repeats (a cycle). At each step the first edge to a blocked task is
    /// preferred: the root cause lies behind the tasks that are themselves stuck.
    pub fn chain(&self, tid: Tid) -> Vec<&Edge> {
        let mut path: Vec<&Edge> = Vec::new();
        let mut seen = vec![tid];
        let mut cur = tid;
        loop {
            let out = self.out(cur);
            let Some(next) = out
                .iter()
                .find(|e| !self.out(e.to).is_empty())
                .or_else(|| out.first())
            else {
                return path;
            };
            path.push(next);
            if seen.contains(&next.to) {
                return path;
            }
            seen.push(next.to);
            cur = next.to;
        }
    }
}
