//! A scene from what there is to draw: the engine's graph (`GraphView`) or a `diagnose`
//! snapshot, one box per task and one arrow per edge.

use std::collections::{BTreeMap, BTreeSet};

use crate::{
    core::diagnosis::{Confidence, Diagnosis, Source, Wait},
    core::event::LockMode,
    core::exposure::Shown,
    core::graph::{LockRef, Reason},
    core::model::{Blocked, HoldSeen, Tid},
    core::views::GraphView,
};

use super::{super::text::short_duration, EdgeKind, Member, Node, Scene, SceneEdge};

fn lock_name<A: std::fmt::Display>(lock: &LockRef<A>) -> String {
    match lock {
        LockRef::MmapLock {
            owner_pid: Some(p), ..
        } => format!("mmap_lock of pid {p}"),
        LockRef::MmapLock { mm, .. } => format!("mmap_lock of mm {mm}"),
        LockRef::KernelLock { lock, lock_type } => {
            let kind = serde_json::to_value(lock_type)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_else(|| "lock".into());
            format!("{kind} {lock}")
        }
        LockRef::Uffd { uffd } => format!("userfaultfd {uffd}"),
        LockRef::UserLock {
            lock,
            pid,
            lock_type,
        } => format!("{} {lock} of pid {pid}", lock_type.as_str()),
    }
}

fn task_node(
    tid: Tid,
    pid: u32,
    comm: &str,
    waited_ns: Option<u64>,
    status: String,
    more: Vec<String>,
) -> Node {
    let mut lines = vec![comm.to_owned(), format!("pid {pid} · tid {tid}"), status];
    lines.extend(more);
    Node {
        id: format!("t{tid}"),
        lines,
        members: vec![Member {
            tid,
            pid,
            comm: comm.to_owned(),
            waited_ns,
        }],
        group: false,
        blocked: waited_ns.is_some(),
        waited_ns,
        in_cycle: false,
        wait_lock: None,
        wait_mode: None,
    }
}

impl Scene {
    /// The engine's graph at `view.now_ns`, one box per task.
    pub fn from_view(view: &GraphView) -> Self {
        // Who owns each mm, as the edges name it, for the "holds" lines.
        let owners: BTreeMap<Shown, u32> = view
            .edges
            .iter()
            .filter_map(|e| match e.lock {
                LockRef::MmapLock {
                    mm,
                    owner_pid: Some(p),
                } => Some((mm, p)),
                _ => None,
            })
            .collect();
        let mut index = BTreeMap::new();
        let mut nodes = Vec::new();
        for t in &view.tasks {
            let waited = t
                .blocked
                .as_ref()
                .map(|b| view.now_ns.saturating_sub(b.since_ns()));
            let status = match (&t.blocked, waited) {
                (Some(b), Some(w)) => {
                    let what = match b {
                        Blocked::MmapLock { .. } => "on mmap_lock",
                        Blocked::KernelLock { .. } => "on a kernel lock",
                        Blocked::Uffd { .. } => "in a userfaultfd fault",
                        Blocked::UserLock { .. } => "on a user-space lock",
                    };
                    format!("blocked {} {what}", short_duration(w))
                }
                _ => "not blocked (holder)".into(),
            };
            let mut more: Vec<String> = t
                .holds
                .iter()
                .take(2)
                .map(|h| {
                    // A write hold seen only through a waiter's read of the owner word.
                    let how = match h.seen {
                        HoldSeen::Acquired => "",
                        HoldSeen::OwnerWord => ", from the owner word",
                    };
                    match owners.get(&h.mm) {
                        Some(p) => format!("holds mmap_lock of pid {p} ({}{how})", h.mode),
                        None => format!("holds mmap_lock of mm {} ({}{how})", h.mm, h.mode),
                    }
                })
                .collect();
            if t.holds.len() > 2 {
                more.push(format!("+{} more holds", t.holds.len() - 2));
            }
            // After a loss, until a snapshot confirms it: the box says its state may be stale.
            if t.state_unknown {
                more.push("state unknown: events lost".into());
            }
            index.insert(t.tid, nodes.len());
            let mut node = task_node(
                t.tid,
                t.pid,
                t.comm.as_deref().unwrap_or("?"),
                waited,
                status,
                more,
            );
            (node.wait_lock, node.wait_mode) = match &t.blocked {
                Some(Blocked::MmapLock { mm, mode, .. }) => (
                    Some(match owners.get(mm) {
                        Some(p) => format!("mmap_lock of pid {p}"),
                        None => format!("mmap_lock of mm {mm}"),
                    }),
                    Some(*mode),
                ),
                Some(Blocked::KernelLock {
                    lock, lock_type, ..
                }) => (
                    Some(lock_name(&LockRef::KernelLock {
                        lock: *lock,
                        lock_type: *lock_type,
                    })),
                    None,
                ),
                Some(Blocked::Uffd { uffd, .. }) => (Some(format!("userfaultfd {uffd}")), None),
                Some(Blocked::UserLock {
                    lock,
                    pid,
                    lock_type,
                    name,
                    ..
                }) => (
                    Some(match name {
                        Some(n) => format!("{} {n} of pid {pid}", lock_type.as_str()),
                        None => format!("{} {lock} of pid {pid}", lock_type.as_str()),
                    }),
                    None,
                ),
                None => (None, None),
            };
            nodes.push(node);
        }
        let edges = view
            .edges
            .iter()
            .filter_map(|e| {
                Some(SceneEdge {
                    from: *index.get(&e.from)?,
                    to: *index.get(&e.to)?,
                    lock: lock_name(&e.lock),
                    kind: match e.reason {
                        Reason::Holds | Reason::HoldsInferred => EdgeKind::Holds,
                        Reason::QueuedBehindWriter => EdgeKind::QueuedBehindWriter,
                        Reason::LockOwner
                        | Reason::UserLockOwner
                        | Reason::UserLockOwnerConfirmed
                        | Reason::UserLockOwnerInferred => EdgeKind::LockOwner,
                        Reason::UffdHandler => EdgeKind::UffdHandler,
                    },
                    wants: e.wants,
                    held: e.held,
                    // Not seen acquiring it: the agent's default mode infers read holders.
                    // (or the owner of a user lock, read from a library's layout).
                    inferred: matches!(
                        e.reason,
                        Reason::HoldsInferred | Reason::UserLockOwnerInferred
                    )
                    .then_some("inferred"),
                    in_cycle: false,
                    count: 1,
                })
            })
            .collect();
        let mut scene = Self {
            nodes,
            edges,
            cycles: view.cycles.clone(),
            probable: BTreeSet::new(),
            hidden: 0,
            expanded: Vec::new(),
        };
        scene.mark_cycles();
        scene
    }

    /// A `faultline diagnose` snapshot, one box per task.
    pub fn from_diagnosis(d: &Diagnosis) -> Self {
        let mut index = BTreeMap::new();
        let mut nodes = Vec::new();
        for t in &d.tasks {
            let waited = t.off_cpu_ms.map(|ms| (ms * 1e6) as u64).or(Some(0));
            let state = t.state.split(' ').next().unwrap_or("?");
            let status = match t.off_cpu_ms {
                Some(ms) => format!("{state}, off CPU {}", short_duration((ms * 1e6) as u64)),
                None => format!("{state}, blocked"),
            };
            let what = match &t.wait {
                Wait::MmapLock {
                    mm_pid,
                    mode,
                    queue_position,
                    ..
                } => format!("mmap_lock of pid {mm_pid} for {mode} (#{queue_position} in queue)"),
                Wait::Mutex { lock, .. } => format!("mutex {lock}"),
                Wait::Rwsem { lock, mode, .. } => format!("rwsem {lock} for {mode}"),
                Wait::Semaphore { lock } => format!("semaphore {lock}"),
                Wait::Uffd { uffd, .. } => format!("userfaultfd {uffd}"),
                Wait::UserLock {
                    lock,
                    lock_type,
                    name,
                    ..
                } => match name {
                    Some(n) => format!("{} {n}", lock_type.as_str()),
                    None => format!("{} {lock}", lock_type.as_str()),
                },
                Wait::Other { wchan } => {
                    format!("in {}", if wchan.is_empty() { "?" } else { wchan })
                }
            };
            index.insert(t.tid, nodes.len());
            let mut node = task_node(
                t.tid,
                t.pid,
                &t.comm,
                waited,
                status,
                vec![format!("waits: {what}")],
            );
            // Without the queue position, so waiters of one lock are alike.
            node.wait_lock = what.split(" (#").next().map(str::to_owned);
            nodes.push(node);
        }
        for (tid, (pid, comm, state)) in &d.others {
            index.insert(*tid, nodes.len());
            nodes.push(task_node(
                *tid,
                *pid,
                comm,
                None,
                format!("{state}, not blocked (holder)"),
                Vec::new(),
            ));
        }
        let mut edges = Vec::new();
        for t in &d.tasks {
            let Some(&from) = index.get(&t.tid) else {
                continue;
            };
            for e in &t.blocked_on_sources {
                let Some(&to) = index.get(&e.tid) else {
                    continue;
                };
                let (lock, kind, wants, held) = match &t.wait {
                    Wait::MmapLock {
                        mm_pid,
                        mode,
                        writer,
                        ..
                    } => {
                        let wants = Some(if *mode == "write" {
                            LockMode::Write
                        } else {
                            LockMode::Read
                        });
                        let lock = format!("mmap_lock of pid {mm_pid}");
                        if *writer == Some(e.tid) {
                            (lock, EdgeKind::Holds, wants, Some(LockMode::Write))
                        } else if e.source == Source::Kernel {
                            // A kernel edge that is not the writer: a writer queued ahead.
                            (lock, EdgeKind::QueuedBehindWriter, wants, None)
                        } else {
                            (lock, EdgeKind::Holds, wants, Some(LockMode::Read))
                        }
                    }
                    Wait::Mutex { lock, .. } => {
                        (format!("mutex {lock}"), EdgeKind::LockOwner, None, None)
                    }
                    Wait::Rwsem { lock, .. } => {
                        (format!("rwsem {lock}"), EdgeKind::LockOwner, None, None)
                    }
                    Wait::Semaphore { lock } => {
                        (format!("semaphore {lock}"), EdgeKind::LockOwner, None, None)
                    }
                    Wait::Uffd { uffd, .. } => (
                        format!("userfaultfd {uffd}"),
                        EdgeKind::UffdHandler,
                        None,
                        None,
                    ),
                    Wait::UserLock {
                        lock,
                        lock_type,
                        name,
                        owner,
                        ..
                    } => {
                        let what = match name {
                            Some(n) => format!("{} {n}", lock_type.as_str()),
                            None => format!("{} {lock}", lock_type.as_str()),
                        };
                        if *owner == Some(e.tid) {
                            (what, EdgeKind::LockOwner, None, None)
                        } else {
                            (
                                what,
                                EdgeKind::QueuedBehindWriter,
                                Some(LockMode::Read),
                                None,
                            )
                        }
                    }
                    Wait::Other { wchan } => (wchan.clone(), EdgeKind::Holds, None, None),
                };
                edges.push(SceneEdge {
                    from,
                    to,
                    lock,
                    kind,
                    wants,
                    held,
                    inferred: match e.source {
                        Source::Kernel => None,
                        Source::Agent => Some("from the agent"),
                        Source::AgentInferred => Some("inferred by the agent"),
                        Source::AgentUnverified => Some("from an unverified agent"),
                        Source::Heuristic => Some("guess from /proc"),
                        Source::Evidence => Some("handler named from evidence"),
                        Source::UserLayout => Some("owner from the lock's layout"),
                    },
                    in_cycle: false,
                    count: 1,
                });
            }
        }
        let mut scene = Self {
            nodes,
            edges,
            cycles: d.cycles.iter().map(|c| c.tids.clone()).collect(),
            probable: d
                .cycles
                .iter()
                .filter(|c| c.confidence == Confidence::Probable)
                .flat_map(|c| c.tids.iter().copied())
                .collect(),
            hidden: 0,
            expanded: Vec::new(),
        };
        scene.mark_cycles();
        scene
    }
}
