//! Read-only views of the engine for sinks: the graph as JSON and as Graphviz DOT.
//!
//! A view is built for its readers: every address in it is shown as the `Exposure` it is
//! built with says (raw, or an opaque id), so what a sink renders from it needs no care.

use std::{collections::BTreeSet, fmt::Write as _, sync::Arc};

use serde::Serialize;

use crate::{
    event::LockMode,
    exposure::{AddrKind, Exposure, Shown},
    graph::{Edge, LockRef, Reason, WaitsFor},
    model::{Blocked, HoldSeen, Model, Tid},
    workload::{Attribution, Workload},
};

#[derive(Debug, Serialize)]
pub struct HoldView {
    pub mm: Shown,
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
    pub blocked: Option<Blocked<Shown>>,
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
    pub edges: Vec<Edge<Shown>>,
    pub cycles: Vec<Vec<Tid>>,
    /// userfaultfd contexts in use, with who was seen serving them: `faultline diagnose` asks
    /// for this as evidence of who handles a context (the kernel records no handler).
    pub uffds: Vec<UffdView>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct UffdView {
    pub uffd: Shown,
    /// Tasks seen resolving faults on it (COPY, ZEROPAGE, WAKE, …).
    pub resolvers: Vec<Tid>,
    /// Tasks seen setting it up (API, REGISTER, UNREGISTER).
    pub setup: Vec<Tid>,
    /// Processes (leader tids) found holding a descriptor of it, without an ioctl seen.
    pub holders: Vec<Tid>,
}

impl GraphView {
    /// The graph of `model` at `now_ns`, its addresses shown as `exposure` says.
    pub fn build(model: &Model, graph: &WaitsFor, now_ns: u64, exposure: &Exposure) -> Self {
        let mut tids: BTreeSet<Tid> = model.blocked.iter().copied().collect();
        tids.extend(graph.all_edges().map(|e| e.to));
        let tasks = tids
            .into_iter()
            .map(|tid| match model.task(tid) {
                Some(t) => TaskView {
                    tid,
                    pid: t.pid,
                    comm: t.comm.clone(),
                    blocked: t.blocked.as_ref().map(|b| b.shown(exposure)),
                    holds: t
                        .holds
                        .iter()
                        .map(|(mm, h)| HoldView {
                            mm: exposure.show(AddrKind::Mm, *mm),
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
            edges: graph.all_edges().map(|e| e.shown(exposure)).collect(),
            cycles: graph.cycles(),
            uffds: {
                let mut u: Vec<UffdView> = model
                    .uffds
                    .iter()
                    .map(|(uffd, ctx)| UffdView {
                        uffd: exposure.show(AddrKind::Uffd, *uffd),
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
                LockRef::UserLock {
                    lock,
                    pid,
                    lock_type,
                } => format!("{} {lock} pid {pid}", lock_type.as_str()),
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
                Reason::UserLockOwner => "owner".into(),
                Reason::UserLockOwnerConfirmed => "owner (seen taking it)".into(),
                Reason::UserLockOwnerInferred => "owner (inferred)".into(),
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
        event::{Addr, Event, EventKind},
        exposure::AddrKey,
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
        let view = GraphView::build(e.model(), &e.graph(), e.now_ns(), &Exposure::Raw);
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
        let view = GraphView::build(e.model(), &e.graph(), e.now_ns(), &Exposure::Raw);
        assert_eq!(
            view.uffds,
            vec![UffdView {
                uffd: Shown::Raw(uffd),
                resolvers: vec![2],
                setup: vec![1],
                holders: vec![3],
            }]
        );
        let json = serde_json::to_value(&view).expect("JSON");
        assert_eq!(json["uffds"][0]["uffd"], "0xc0", "{json}");
    }

    /// t1 holds an mm for read and writer t2 waits for it; t3 waits on a kernel
    /// lock owned by t1; t4 faults on a userfaultfd t1 set up.
    fn engine_with_every_address() -> (Engine, [Addr; 4]) {
        use crate::event::{LockType, UffdOp};
        let (mm, lock, uffd, at) = (
            Addr(0xffff_8880_1234_5000),
            Addr(0xffff_8880_2222_0040),
            Addr(0xffff_8880_3333_0080),
            Addr(0x7f12_3456_7000),
        );
        let mut e = Engine::new(Default::default());
        let ev = |ts, tid, kind| Event {
            ts_ns: ts,
            tid,
            pid: tid,
            comm: None,
            kind,
        };
        let read = LockMode::Read;
        e.apply(&ev(
            0,
            1,
            EventKind::MmapLockAcquire {
                mm,
                mode: read,
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
                mode: read,
                mm_pid: None,
            },
        ));
        e.apply(&ev(
            3,
            3,
            EventKind::LockWaitBegin {
                lock,
                lock_type: LockType::Mutex,
                owner_tid: Some(1),
                mm: None,
            },
        ));
        e.apply(&ev(
            4,
            1,
            EventKind::UffdIoctlBegin {
                uffd,
                op: UffdOp::Register,
            },
        ));
        e.apply(&ev(5, 4, EventKind::UffdWaitBegin { uffd, addr: at }));
        (e, [mm, lock, uffd, at])
    }

    fn edges_mm(v: &serde_json::Value) -> Vec<String> {
        v["edges"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e["lock"]["mm"].as_str().map(str::to_owned))
            .collect()
    }

    #[test]
    fn an_opaque_view_shows_no_address_and_one_id_per_address() {
        let (e, addrs) = engine_with_every_address();
        let ex = Exposure::Opaque(AddrKey::new([5; 16]));
        let view = GraphView::build(e.model(), &e.graph(), e.now_ns(), &ex);
        let json = serde_json::to_string(&view).expect("JSON");
        let dot = view.to_dot();
        for a in addrs {
            let raw = format!("{:x}", a.0);
            assert!(
                !json.contains(&raw) && !dot.contains(&raw),
                "{a} shown: {json}\n{dot}"
            );
        }
        assert!(!json.contains("0x") && !dot.contains("0x"), "{json}\n{dot}");
        let mm = ex.show(AddrKind::Mm, addrs[0]).to_string();
        let v: serde_json::Value = serde_json::from_str(&json).expect("JSON");
        let t1 = v["tasks"]
            .as_array()
            .and_then(|t| t.iter().find(|t| t["tid"] == 1))
            .expect("t1");
        assert_eq!(t1["holds"][0]["mm"], mm.as_str(), "{v}");
        let t2 = v["tasks"]
            .as_array()
            .and_then(|t| t.iter().find(|t| t["tid"] == 2))
            .expect("t2");
        assert_eq!(t2["blocked"]["mm"], mm.as_str(), "{v}");
        assert_eq!(edges_mm(&v), vec![mm.clone()], "{v}");
        let lock = ex.show(AddrKind::Lock, addrs[1]).to_string();
        let uffd = ex.show(AddrKind::Uffd, addrs[2]).to_string();
        let edges = v["edges"].as_array().expect("edges");
        assert!(
            edges.iter().any(|e| e["lock"]["lock"] == lock.as_str()),
            "{v}"
        );
        assert!(
            edges.iter().any(|e| e["lock"]["uffd"] == uffd.as_str()),
            "{v}"
        );
        assert_eq!(v["uffds"][0]["uffd"], uffd.as_str(), "{v}");
        let t4 = v["tasks"]
            .as_array()
            .and_then(|t| t.iter().find(|t| t["tid"] == 4))
            .expect("t4");
        assert_eq!(
            t4["blocked"]["addr"],
            ex.show(AddrKind::User, addrs[3]).to_string().as_str(),
            "{v}"
        );
        assert!(dot.contains(&format!("lock {lock}")), "{dot}");
        // The same model, raw: the addresses are there (what replay and diagnose show).
        let raw = GraphView::build(e.model(), &e.graph(), e.now_ns(), &Exposure::Raw);
        let raw_json = serde_json::to_string(&raw).expect("JSON");
        assert!(raw_json.contains("0xffff888012345000"), "{raw_json}");
    }
}
