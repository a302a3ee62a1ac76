//! Read-only views of the engine for sinks: the graph as JSON and as Graphviz DOT.

use std::{collections::BTreeSet, fmt::Write as _, sync::Arc};

use serde::Serialize;

use crate::{
    event::{Addr, LockMode},
    graph::{Edge, LockRef, Reason, WaitsFor},
    model::{Blocked, HoldSeen, Model, Tid},
    workload::{Attribution, Workload},
};

#[derive(Debug, Serialize)]
pub struct HoldView {
    pub mm: Addr,
    pub mode: LockMode,
    /// When it began, or (`seen: owner_word`) when it was first seen held.
    pub since_ns: u64,
    /// How it is known: seen acquiring, or from a waiter's read of the rwsem owner word.
    pub seen: HoldSeen,
}

#[derive(Debug, Serialize)]
pub struct TaskView {
    pub tid: Tid,
    pub pid: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comm: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blocked: Option<Blocked>,
    pub holds: Vec<HoldView>,
    /// The process's cgroup v2 path (live agent only: a replayed trace's pids are not ours).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workload: Option<Workload>,
    /// The live agent lost ring-buffer records since this task's state was last confirmed by a
    /// snapshot: `blocked` and `holds` are the last known, not necessarily the current, state.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub state_unknown: bool,
}

/// The waits-for graph at one moment: every task on an edge, every edge, every cycle.
#[derive(Debug, Serialize)]
pub struct GraphView {
    pub now_ns: u64,
    pub tasks: Vec<TaskView>,
    pub edges: Vec<Edge>,
    pub cycles: Vec<Vec<Tid>>,
    /// userfaultfd contexts in use, with who was seen serving them: `faultline diagnose` asks
    /// for this as evidence of who handles a context (the kernel records no handler).
    pub uffds: Vec<UffdView>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct UffdView {
    pub uffd: Addr,
    /// Tasks seen resolving faults on it (COPY, ZEROPAGE, WAKE, …).
    pub resolvers: Vec<Tid>,
    /// Tasks seen setting it up (API, REGISTER, UNREGISTER).
    pub setup: Vec<Tid>,
    /// Processes (leader tids) found holding a descriptor of it, without an ioctl seen.
    pub holders: Vec<Tid>,
}

impl GraphView {
    pub fn build(model: &Model, graph: &WaitsFor, now_ns: u64) -> Self {
        let mut tids: BTreeSet<Tid> = model.blocked.iter().copied().collect();
        tids.extend(graph.all_edges().map(|e| e.to));
        let tasks = tids
            .into_iter()
            .map(|tid| match model.task(tid) {
                Some(t) => TaskView {
                    tid,
                    pid: t.pid,
                    comm: t.comm.clone(),
                    blocked: t.blocked.clone(),
                    holds: t
                        .holds
                        .iter()
                        .map(|(mm, h)| HoldView {
                            mm: *mm,
                            mode: h.mode,
                            since_ns: h.since_ns,
                            seen: h.seen,
                        })
                        .collect(),
                    cgroup: None,
                    workload: None,
                    state_unknown: model.unknown.contains(&tid),
                },
                None => TaskView {
                    tid,
                    pid: 0,
                    comm: None,
                    blocked: None,
                    holds: Vec::new(),
                    cgroup: None,
                    workload: None,
                    state_unknown: false,
                },
            })
            .collect();
        Self {
            now_ns,
            tasks,
            edges: graph.all_edges().cloned().collect(),
            cycles: graph.cycles(),
            uffds: {
                let mut u: Vec<UffdView> = model
                    .uffds
                    .iter()
                    .map(|(uffd, ctx)| UffdView {
                        uffd: *uffd,
                        resolvers: ctx.resolvers.iter().copied().collect(),
                        setup: ctx.setup.iter().copied().collect(),
                        holders: ctx.holders.iter().copied().collect(),
                    })
                    .collect();
                u.sort_by_key(|v| v.uffd);
                u
            },
        }
    }

    /// Names each task's cgroup and workload (`attribute(pid)`: a /proc lookup, so the live
    /// agent calls this, not the core).
    pub fn attribute(&mut self, mut attribute: impl FnMut(u32) -> Option<Arc<Attribution>>) {
        for t in self.tasks.iter_mut().filter(|t| t.pid != 0) {
            if let Some(a) = attribute(t.pid) {
                t.cgroup = Some(a.cgroup.clone());
                t.workload = a.workload.clone();
            }
        }
    }

    /// Names the tasks the model never saw (a lock owner read from the kernel, a handler found
    /// in /proc): `lookup(tid)` gives the process and comm of a task that still exists.
    pub fn identify(&mut self, mut lookup: impl FnMut(Tid) -> Option<(u32, Option<String>)>) {
        for t in self.tasks.iter_mut().filter(|t| t.pid == 0) {
            if let Some((pid, comm)) = lookup(t.tid) {
                t.pid = pid;
                t.comm = comm;
            }
        }
    }

    /// Graphviz DOT: tasks as boxes (blocked ones filled), edges labelled with lock and reason,
    /// cycle edges in red.
    pub fn to_dot(&self) -> String {
        let in_cycle: BTreeSet<(Tid, Tid)> = self
            .cycles
            .iter()
            .flat_map(|c| {
                self.edges
                    .iter()
                    .filter(|e| c.contains(&e.from) && c.contains(&e.to))
                    .map(|e| (e.from, e.to))
            })
            .collect();
        let mut s = String::from(
            "digraph waits_for {\n  rankdir=LR;\n  node [shape=box, fontname=\"monospace\"];\n",
        );
        for t in &self.tasks {
            let comm = t.comm.as_deref().unwrap_or("?");
            let style = match (t.blocked.is_some(), t.state_unknown) {
                (true, false) => ", style=filled, fillcolor=\"#ffe0e0\"",
                (true, true) => ", style=\"filled,dashed\", fillcolor=\"#ffe0e0\"",
                (false, true) => ", style=dashed",
                (false, false) => "",
            };
            let unknown = if t.state_unknown {
                "\\n(state unknown: events lost)"
            } else {
                ""
            };
            let workload = t
                .workload
                .as_ref()
                .map(|w| format!("\\n{}", escape(&w.to_string())))
                .unwrap_or_default();
            let _ = writeln!(
                s,
                "  t{} [label=\"{}\\n{} (pid {}){}{}\"{}];",
                t.tid,
                t.tid,
                escape(comm),
                t.pid,
                workload,
                unknown,
                style
            );
        }
        for e in &self.edges {
            let lock = match e.lock {
                LockRef::MmapLock {
                    owner_pid: Some(p), ..
                } => format!("mmap_lock pid {p}"),
                LockRef::MmapLock { mm, .. } => format!("mmap_lock {mm}"),
                LockRef::KernelLock { lock, .. } => format!("lock {lock}"),
                LockRef::Uffd { uffd } => format!("uffd {uffd}"),
            };
            let reason = match e.reason {
                Reason::Holds => format!(
                    "held{}",
                    e.held.map(|m| format!(" ({m})")).unwrap_or_default()
                ),
                Reason::HoldsInferred => "held (read, inferred)".into(),
                Reason::QueuedBehindWriter => "queued behind writer".into(),
                Reason::LockOwner => "owner".into(),
                Reason::UffdHandler => "handler".into(),
            };
            let color = if in_cycle.contains(&(e.from, e.to)) {
                ", color=red, fontcolor=red"
            } else {
                ""
            };
            let _ = writeln!(
                s,
                "  t{} -> t{} [label=\"{}\\n{}\"{}];",
                e.from,
                e.to,
                escape(&lock),
                escape(&reason),
                color
            );
        }
        s.push_str("}\n");
        s
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        engine::Engine,
        event::{Event, EventKind},
    };

    #[test]
    fn dot_shows_the_cycle_in_red_and_escapes_names() {
        let mut e = Engine::new(Default::default());
        let mm = Addr(0x10);
        let ev = |ts, tid, kind| Event {
            ts_ns: ts,
            tid,
            pid: 1,
            comm: Some("a\"b".into()),
            kind,
        };
        e.apply(&ev(
            0,
            1,
            EventKind::MmapLockAcquire {
                mm,
                mode: LockMode::Read,
                success: true,
                mm_pid: None,
            },
        ));
        e.apply(&ev(
            1,
            2,
            EventKind::MmapLockStart {
                mm,
                mode: LockMode::Write,
                mm_pid: None,
            },
        ));
        e.apply(&ev(
            2,
            1,
            EventKind::MmapLockStart {
                mm,
                mode: LockMode::Read,
                mm_pid: None,
            },
        ));
        let view = GraphView::build(e.model(), &e.graph(), e.now_ns());
        assert_eq!(view.cycles, vec![vec![1, 2]]);
        let dot = view.to_dot();
        assert!(
            dot.contains("t1 -> t2 [label=\"mmap_lock pid 1\\nqueued behind writer\", color=red"),
            "{dot}"
        );
        assert!(
            dot.contains("t2 -> t1 [label=\"mmap_lock pid 1\\nheld (read)\", color=red"),
            "{dot}"
        );
        assert!(dot.contains("a\\\"b"), "{dot}");
    }

    #[test]
    fn the_graph_lists_userfaultfd_contexts_with_who_resolved_and_who_set_them_up() {
        use crate::event::UffdOp;
        let mut e = Engine::new(Default::default());
        let uffd = Addr(0xc0);
        let ev = |ts, tid, kind| Event {
            ts_ns: ts,
            tid,
            pid: 1,
            comm: None,
            kind,
        };
        e.apply(&ev(
            0,
            1,
            EventKind::UffdIoctlBegin {
                uffd,
                op: UffdOp::Register,
            },
        ));
        e.apply(&ev(
            1,
            1,
            EventKind::UffdIoctlEnd {
                uffd,
                op: UffdOp::Register,
                ret: 0,
            },
        ));
        e.apply(&ev(
            2,
            2,
            EventKind::UffdIoctlBegin {
                uffd,
                op: UffdOp::Copy,
            },
        ));
        e.apply(&ev(3, 3, EventKind::UffdHeld { uffd }));
        let view = GraphView::build(e.model(), &e.graph(), e.now_ns());
        assert_eq!(
            view.uffds,
            vec![UffdView {
                uffd,
                resolvers: vec![2],
                setup: vec![1],
                holders: vec![3],
            }]
        );
        let json = serde_json::to_value(&view).expect("JSON");
        assert_eq!(json["uffds"][0]["uffd"], "0xc0", "{json}");
    }
}
