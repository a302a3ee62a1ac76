//! Analysis: a [`Snapshot`] in, a [`Diagnosis`] out. Pure (no /proc, no kernel, no clock), so
//! every shape it names is tested on fixtures.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use crate::event::UserLockKind;

use super::{
    handlers::{self, Candidate},
    snapshot::{
        BlockerFacts, BlockerKind, MmapLockFacts, Snapshot, TaskFacts, UffdFacts, UffdWaiterFacts,
        UserLockFacts,
    },
    Confidence, Cycle, DiagTask, Diagnosis, Edge, Source, Wait, READ_HOLDER_FRAMES,
};

/// Which chains to report.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// Only chains that touch this process.
    pub pid: Option<u32>,
    /// Only chains that start at a task off CPU this long (cycles are always kept).
    pub min_blocked: Duration,
}

/// Candidates listed per userfaultfd wait beyond the named ones.
const MAX_UNNAMED_CANDIDATES: usize = 8;

fn state_name(c: char) -> String {
    match c {
        'D' => "D (uninterruptible or killable sleep)".into(),
        'S' => "S (interruptible sleep)".into(),
        'R' => "R (running)".into(),
        other => other.to_string(),
    }
}

/// The snapshot's facts, indexed.
struct Index<'a> {
    snap: &'a Snapshot,
    in_mmap_queue: BTreeMap<u32, (&'a MmapLockFacts, u32)>,
    blockers: BTreeMap<u32, &'a BlockerFacts>,
    uffd_waits: BTreeMap<u32, (&'a UffdFacts, UffdWaiterFacts)>,
    /// Sleeps on user-space locks with an owner to follow.
    user_waits: BTreeMap<u32, &'a UserLockFacts>,
}

impl<'a> Index<'a> {
    fn new(snap: &'a Snapshot) -> Self {
        let mut in_mmap_queue = BTreeMap::new();
        for l in &snap.mmap_locks {
            for (pos, w) in l.waiters.iter().enumerate() {
                in_mmap_queue.insert(w.tid, (l, pos as u32));
            }
        }
        let mut uffd_waits = BTreeMap::new();
        for u in &snap.uffds {
            for w in &u.waiters {
                uffd_waits.entry(w.tid).or_insert((u, *w));
            }
        }
        Self {
            snap,
            in_mmap_queue,
            blockers: snap.blockers.iter().map(|b| (b.tid, b)).collect(),
            uffd_waits,
            user_waits: snap
                .user_locks
                .iter()
                .filter(|u| u.lock_type.has_owner())
                .map(|u| (u.tid, u))
                .collect(),
        }
    }

    fn is_blocked(&self, t: &TaskFacts) -> bool {
        t.state == 'D'
            || self.in_mmap_queue.contains_key(&t.tid)
            || self.uffd_waits.contains_key(&t.tid)
            || self.blockers.contains_key(&t.tid)
            || self.user_waits.contains_key(&t.tid)
    }
}

pub fn analyse(snap: &Snapshot, filter: &Filter) -> Diagnosis {
    let ix = Index::new(snap);
    let blocked: Vec<&TaskFacts> = snap.tasks.iter().filter(|t| ix.is_blocked(t)).collect();
    let blocked_tids: BTreeSet<u32> = blocked.iter().map(|t| t.tid).collect();
    let tasks: Vec<DiagTask> = blocked
        .iter()
        .map(|t| {
            let (wait, mut edges) = wait_of(&ix, t, &blocked_tids);
            edges.retain(|e| e.tid != t.tid);
            let mut seen = BTreeSet::new();
            edges.retain(|e| seen.insert(e.tid));
            DiagTask {
                tid: t.tid,
                pid: t.pid,
                comm: t.comm.clone(),
                state: state_name(t.state),
                off_cpu_ms: t.off_cpu_ms,
                wchan: t.wchan.clone(),
                blocked_on: edges.iter().map(|e| e.tid).collect(),
                blocked_on_sources: edges,
                wait,
                stack: t.stack.clone(),
            }
        })
        .collect();

    // Cycles over every edge, before any filtering.
    let cycles = find_cycles(&tasks, snap);

    // Filters: blocked long enough, and (with --pid) the chains that touch that process.
    let min_ms = filter.min_blocked.as_secs_f64() * 1e3;
    let in_cycle: BTreeSet<u32> = cycles.iter().flat_map(|c| c.tids.clone()).collect();
    let index: BTreeMap<u32, usize> = tasks.iter().enumerate().map(|(i, t)| (t.tid, i)).collect();
    let keep_start = |t: &DiagTask| {
        (in_cycle.contains(&t.tid) || t.off_cpu_ms.is_none_or(|ms| ms >= min_ms))
            && filter.pid.is_none_or(|p| t.pid == p)
    };
    let mut keep: BTreeSet<u32> = BTreeSet::new();
    let mut stack: Vec<u32> = tasks
        .iter()
        .filter(|t| keep_start(t))
        .map(|t| t.tid)
        .collect();
    while let Some(tid) = stack.pop() {
        if keep.insert(tid) {
            if let Some(&i) = index.get(&tid) {
                stack.extend(tasks[i].blocked_on.iter().copied());
            }
        }
    }
    let tasks: Vec<DiagTask> = tasks
        .into_iter()
        .filter(|t| keep.contains(&t.tid))
        .collect();
    let by_tid: BTreeMap<u32, &TaskFacts> = snap.tasks.iter().map(|t| (t.tid, t)).collect();
    let others = keep
        .iter()
        .filter(|t| !blocked_tids.contains(t))
        .filter_map(|t| {
            by_tid
                .get(t)
                .map(|p| (*t, (p.pid, p.comm.clone(), p.state)))
        })
        .collect();
    let cycles = cycles
        .into_iter()
        .filter(|c| c.tids.iter().all(|t| keep.contains(t)))
        .collect();
    Diagnosis {
        tasks,
        cycles,
        others,
        agent: snap.agent.as_ref().map(|a| a.addr.clone()),
    }
}

/// What `t` waits for, and whom.
fn wait_of(ix: &Index, t: &TaskFacts, blocked: &BTreeSet<u32>) -> (Wait, Vec<Edge>) {
    let kernel = |tid: u32| Edge {
        tid,
        source: Source::Kernel,
    };
    let mut edges = Vec::new();
    if let Some((lock, pos)) = ix.in_mmap_queue.get(&t.tid) {
        let me = lock.waiters[*pos as usize];
        let mode = if me.write { "write" } else { "read" };
        edges.extend(lock.writer.map(kernel));
        // rwsem fairness: a waiter is behind every writer queued before it.
        let ahead: Vec<u32> = lock.waiters[..*pos as usize]
            .iter()
            .filter(|w| w.write)
            .map(|w| w.tid)
            .collect();
        edges.extend(ahead.iter().map(|&a| kernel(a)));
        if lock.writer.is_none() && (me.write || ahead.is_empty()) && lock.readers > 0 {
            edges.extend(read_holders(ix, t, lock));
        }
        let wait = Wait::MmapLock {
            mm: lock.mm,
            mm_pid: lock.mm_pid,
            mode,
            queue_position: *pos,
            readers: lock.readers,
            writer: lock.writer,
        };
        return (wait, edges);
    }
    if let Some(b) = ix.blockers.get(&t.tid) {
        edges.extend(b.owner.map(kernel));
        let wait = match b.kind {
            BlockerKind::Mutex => Wait::Mutex {
                lock: b.lock,
                owner: b.owner,
            },
            BlockerKind::Semaphore => Wait::Semaphore { lock: b.lock },
            BlockerKind::RwsemRead | BlockerKind::RwsemWrite => Wait::Rwsem {
                lock: b.lock,
                mode: if b.kind == BlockerKind::RwsemWrite {
                    "write"
                } else {
                    "read"
                },
                owner: b.owner,
                readers: b.readers,
            },
        };
        return (wait, edges);
    }
    if let Some((u, w)) = ix.uffd_waits.get(&t.tid) {
        let agent = ix
            .snap
            .agent
            .as_ref()
            .and_then(|a| a.uffds.iter().find(|x| x.uffd == u.ctx));
        let mut candidates = handlers::candidates(&handlers::Context {
            uffd: u,
            waiter: t.tid,
            message_read: w.message_read,
            tasks: &ix.snap.tasks,
            blocked,
            agent,
        });
        edges.extend(candidates.iter().filter(|c| c.named).map(|c| Edge {
            tid: c.tid,
            source: Source::Evidence,
        }));
        let named = candidates.iter().filter(|c| c.named).count();
        let more = candidates
            .len()
            .saturating_sub(named + MAX_UNNAMED_CANDIDATES);
        candidates.truncate(named + MAX_UNNAMED_CANDIDATES);
        let holders: Vec<u32> = u
            .fds
            .iter()
            .map(|f| f.pid)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let wait = Wait::Uffd {
            uffd: u.ctx,
            mm_pid: u.mm_pid,
            holders,
            message_read: w.message_read,
            candidates,
            more_candidates: more,
        };
        return (wait, edges);
    }
    if let Some(u) = ix.user_waits.get(&t.tid) {
        return user_lock_wait(ix, u);
    }
    (
        Wait::Other {
            wchan: t.wchan.clone(),
        },
        edges,
    )
}

/// A sleep on a user-space lock: its owner when one was found (exact for a PI futex, else
/// from glibc's layout), or, for an rwlock reader with no writer holding it, the writers
/// queued on the same lock (glibc holds new readers back only when writers are preferred).
fn user_lock_wait(ix: &Index, u: &UserLockFacts) -> (Wait, Vec<Edge>) {
    let mut edges = Vec::new();
    if let Some(o) = &u.owner {
        edges.push(Edge {
            tid: o.tid,
            source: if o.exact {
                Source::Kernel
            } else {
                Source::UserLayout
            },
        });
    } else if u.lock_type == UserLockKind::PthreadRwlockRead {
        edges.extend(
            ix.user_waits
                .values()
                .filter(|w| {
                    w.pid == u.pid
                        && w.lock == u.lock
                        && w.lock_type == UserLockKind::PthreadRwlockWrite
                })
                .map(|w| Edge {
                    tid: w.tid,
                    source: Source::UserLayout,
                }),
        );
    }
    let wait = Wait::UserLock {
        lock: u.lock,
        futex: u.futex,
        lock_type: u.lock_type,
        op: u.op,
        name: u.name.clone(),
        owner: u.owner.as_ref().map(|o| o.tid),
        evidence: u.owner.as_ref().map(|o| o.evidence.clone()),
    };
    (wait, edges)
}

/// Read holders of an mmap_lock (the kernel keeps only their count): from the agent when it
/// knows this waiter, else guessed from /proc.
fn read_holders(ix: &Index, t: &TaskFacts, lock: &MmapLockFacts) -> Vec<Edge> {
    if let Some(holders) = ix.snap.agent.as_ref().and_then(|a| a.holders.get(&t.tid)) {
        return holders
            .iter()
            .map(|h| Edge {
                tid: h.tid,
                source: h.source,
            })
            .collect();
    }
    // Running threads of the owning process, and sleeping threads anywhere stopped inside a
    // function that holds an mmap_lock for read (waiting for an mmap_lock is not holding one).
    let running = ix
        .snap
        .tasks
        .iter()
        .filter(|c| c.pid == lock.mm_pid && c.state == 'R');
    let sleeping = ix
        .snap
        .tasks
        .iter()
        .filter(|c| matches!(c.state, 'S' | 'D'))
        .filter(|c| !ix.in_mmap_queue.contains_key(&c.tid))
        .filter(|c| {
            c.stack
                .iter()
                .any(|f| READ_HOLDER_FRAMES.contains(&f.as_str()))
        });
    running
        .chain(sleeping)
        .filter(|c| c.tid != t.tid)
        .map(|c| Edge {
            tid: c.tid,
            source: Source::Heuristic,
        })
        .collect()
}

/// Cycles, each with its confidence and evidence.
///
/// A userfaultfd waiter can be served by any one of its named handlers (an OR), where every
/// other wait needs all of its targets (one owner, or every read holder). So a waiter's
/// handler edges close a cycle only when all its named handlers are in that cycle: one handler
/// outside it may still answer. A cycle is certain when the established edges alone (kernel,
/// tracked by the agent) make it; otherwise it is probable.
fn find_cycles(tasks: &[DiagTask], snap: &Snapshot) -> Vec<Cycle> {
    let mut or_waiters_out: BTreeSet<u32> = BTreeSet::new();
    let edges_of = |out: &BTreeSet<u32>, certain_only: bool| -> Vec<(u32, u32)> {
        tasks
            .iter()
            .flat_map(|t| {
                t.blocked_on_sources
                    .iter()
                    .filter(move |e| !(e.source == Source::Evidence && out.contains(&t.tid)))
                    .filter(move |e| !certain_only || e.source.is_certain())
                    .map(move |e| (t.tid, e.tid))
            })
            .collect()
    };
    // Drop the handler edges of waiters with a handler outside their strongly connected
    // component until nothing changes (each round drops at least one waiter, or stops).
    let sccs = loop {
        let sccs = crate::graph::cycles(edges_of(&or_waiters_out, false).into_iter());
        let comp: BTreeMap<u32, usize> = sccs
            .iter()
            .enumerate()
            .flat_map(|(i, c)| c.iter().map(move |&t| (t, i)))
            .collect();
        let escaping: Vec<u32> = tasks
            .iter()
            .filter(|t| !or_waiters_out.contains(&t.tid))
            .filter(|t| {
                let handlers: Vec<u32> = t
                    .blocked_on_sources
                    .iter()
                    .filter(|e| e.source == Source::Evidence)
                    .map(|e| e.tid)
                    .collect();
                !handlers.is_empty()
                    && handlers
                        .iter()
                        .any(|h| !comp.contains_key(h) || comp.get(h) != comp.get(&t.tid))
            })
            .map(|t| t.tid)
            .collect();
        if escaping.is_empty() {
            break sccs;
        }
        or_waiters_out.extend(escaping);
    };
    let certain = crate::graph::cycles(edges_of(&or_waiters_out, true).into_iter());
    let by_tid: BTreeMap<u32, &DiagTask> = tasks.iter().map(|t| (t.tid, t)).collect();
    let facts: BTreeMap<u32, &TaskFacts> = snap.tasks.iter().map(|t| (t.tid, t)).collect();
    let name = |tid: u32| match facts.get(&tid) {
        Some(t) => format!("{tid} ({}, pid {})", t.comm, t.pid),
        None => tid.to_string(),
    };
    sccs.into_iter()
        .map(|tids| {
            let confidence = if certain.contains(&tids) {
                Confidence::Certain
            } else {
                Confidence::Probable
            };
            let members: BTreeSet<u32> = tids.iter().copied().collect();
            let evidence = tids
                .iter()
                .filter_map(|t| by_tid.get(t))
                .flat_map(|t| {
                    t.blocked_on_sources
                        .iter()
                        .filter(|e| members.contains(&e.tid))
                        .map(|e| edge_evidence(t, e, &name))
                        .collect::<Vec<_>>()
                })
                .collect();
            Cycle {
                tids,
                confidence,
                evidence,
            }
        })
        .collect()
}

/// One line saying why `t` waits for `e.tid`.
fn edge_evidence(t: &DiagTask, e: &Edge, name: &dyn Fn(u32) -> String) -> String {
    let (from, to) = (name(t.tid), name(e.tid));
    match (&t.wait, e.source) {
        (
            Wait::Uffd {
                uffd,
                message_read,
                candidates,
                more_candidates,
                ..
            },
            Source::Evidence,
        ) => {
            let handler = candidates
                .iter()
                .find(|c| c.tid == e.tid)
                .map(Candidate::describe)
                .unwrap_or_default();
            let others: Vec<String> = candidates
                .iter()
                .filter(|c| !c.named)
                .map(|c| format!("{} ({})", name(c.tid), c.describe()))
                .collect();
            let mut line = format!(
                "{from} waits in a userfaultfd fault on {uffd}, whose message {}; handler {to}: {handler}",
                if *message_read {
                    "a handler read and has not answered"
                } else {
                    "nobody has read yet"
                }
            );
            if !others.is_empty() {
                line.push_str(&format!("; not named: {}", others.join(", ")));
                if *more_candidates > 0 {
                    line.push_str(&format!(" and {more_candidates} more"));
                }
            }
            line
        }
        (Wait::MmapLock { mm_pid, mode, .. }, source) => {
            let how = match source {
                Source::Kernel if Some(e.tid) == writer_of(&t.wait) => "write-holds it (kernel)",
                Source::Kernel => "is a writer queued ahead of it (kernel)",
                Source::Agent => "holds it for read (agent)",
                Source::AgentInferred => "holds it for read (inferred by the agent)",
                Source::AgentUnverified => "holds it for read (an unverified agent says so)",
                _ => "holds it for read (guess from /proc: running in the process, or a read-holding function on its stack)",
            };
            format!("{from} waits for the mmap_lock of pid {mm_pid} for {mode}; {to} {how}")
        }
        (Wait::Mutex { lock, .. }, _) => {
            format!("{from} waits for mutex {lock}, owned by {to} (kernel)")
        }
        (Wait::Rwsem { lock, mode, .. }, _) => {
            format!("{from} waits for rwsem {lock} for {mode}, owned by {to} (kernel)")
        }
        (
            Wait::UserLock {
                lock,
                lock_type,
                name,
                owner,
                evidence,
                ..
            },
            source,
        ) => {
            let what = match name {
                Some(n) => format!("{} {n} ({lock})", lock_type.as_str()),
                None => format!("{} {lock}", lock_type.as_str()),
            };
            if *owner == Some(e.tid) {
                let how = if source == Source::Kernel {
                    "exact"
                } else {
                    "inferred"
                };
                format!(
                    "{from} waits for {what}, owned by {to} ({how}: {})",
                    evidence.as_deref().unwrap_or("no detail")
                )
            } else {
                format!("{from} waits for {what} for read, queued behind writer {to} (glibc holds new readers back while a writer waits, when writers are preferred)")
            }
        }
        (wait, _) => format!("{from} waits for {to} ({})", kind_of(wait)),
    }
}

fn writer_of(w: &Wait) -> Option<u32> {
    match w {
        Wait::MmapLock { writer, .. } => *writer,
        _ => None,
    }
}

fn kind_of(w: &Wait) -> &'static str {
    match w {
        Wait::MmapLock { .. } => "mmap_lock",
        Wait::Mutex { .. } => "mutex",
        Wait::Rwsem { .. } => "rwsem",
        Wait::Semaphore { .. } => "semaphore",
        Wait::Uffd { .. } => "userfaultfd",
        Wait::UserLock { .. } => "user lock",
        Wait::Other { .. } => "other",
    }
}

#[cfg(test)]
mod tests;
