//! What a picture of the waits-for graph shows, before any layout: boxes for tasks (or groups of
//! identical waiters), arrows for "waits for", with the words on them. Built from the engine's
//! `GraphView` or from a `diagnose` snapshot, so every picture reads the same way.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
};

use crate::{
    core::diagnosis::{Diagnosis, Source, Wait},
    core::event::{Addr, LockMode},
    core::graph::{LockRef, Reason},
    core::model::{Blocked, Tid},
    core::views::GraphView,
};

/// Identical waiters are drawn as one box from this many on; fewer are clearer one by one.
pub const GROUP_MIN: usize = 3;

/// Boxes drawn at most. Past this the layout stops being readable (and gets slow); the rest are
/// counted in `Scene::hidden` and stay available as JSON.
pub const MAX_NODES: usize = 80;

/// Why one task waits for another, as drawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum EdgeKind {
    /// The target holds the lock.
    Holds,
    /// A reader queued behind a waiting writer (rwsem fairness): drawn dashed.
    QueuedBehindWriter,
    /// The target owns a contended kernel lock.
    LockOwner,
    /// The target serves the userfaultfd the source faulted on.
    UffdHandler,
}

impl EdgeKind {
    pub fn class(self) -> &'static str {
        match self {
            Self::Holds => "holds",
            Self::QueuedBehindWriter => "queued",
            Self::LockOwner => "owner",
            Self::UffdHandler => "handler",
        }
    }
}

/// One task inside a box.
#[derive(Clone, Debug, PartialEq)]
pub struct Member {
    pub tid: Tid,
    pub pid: u32,
    pub comm: String,
    /// How long it has waited, when blocked.
    pub waited_ns: Option<u64>,
}

/// A box: one task, or a group of identical waiters.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    /// Stable across refreshes: `t<tid>` for a task, `g<hash>` for a group.
    pub id: String,
    pub lines: Vec<String>,
    /// One member for a task, several for a group.
    pub members: Vec<Member>,
    pub group: bool,
    pub blocked: bool,
    /// The longest wait among the members.
    pub waited_ns: Option<u64>,
    pub in_cycle: bool,
    /// What a blocked task waits for, in words, and in which mode: groups tasks that wait on a
    /// lock whose holder nobody knows.
    pub wait_lock: Option<String>,
    pub wait_mode: Option<LockMode>,
}

/// An arrow: `from` waits for `to` (indices into `Scene::nodes`).
#[derive(Clone, Debug, PartialEq)]
pub struct SceneEdge {
    pub from: usize,
    pub to: usize,
    /// The lock, in words ("mmap_lock of pid 20", "mutex 0xffff…").
    pub lock: String,
    pub kind: EdgeKind,
    pub wants: Option<LockMode>,
    pub held: Option<LockMode>,
    /// Not read from the kernel: the agent's bookkeeping or a guess from /proc.
    pub inferred: Option<&'static str>,
    pub in_cycle: bool,
    /// Tasks this arrow stands for (a group's size).
    pub count: usize,
}

impl SceneEdge {
    /// The words on the arrow.
    pub fn lines(&self) -> Vec<String> {
        let mut lines = vec![self.lock.clone()];
        let how = match self.kind {
            EdgeKind::Holds => {
                let mut s = String::new();
                if let Some(w) = self.wants {
                    let _ = write!(s, "wants {w} · ");
                }
                match self.held {
                    Some(h) => {
                        let _ = write!(s, "held {h}");
                    }
                    None => s.push_str("held"),
                }
                s
            }
            EdgeKind::QueuedBehindWriter => format!(
                "wants {} · queued behind writer",
                self.wants.unwrap_or(LockMode::Read)
            ),
            EdgeKind::LockOwner => "owner".into(),
            EdgeKind::UffdHandler => "handler".into(),
        };
        lines.push(how);
        if let Some(src) = self.inferred {
            lines.push(format!("({src})"));
        }
        if self.count > 1 {
            lines[0] = format!("×{} {}", self.count, lines[0]);
        }
        lines
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Scene {
    pub nodes: Vec<Node>,
    pub edges: Vec<SceneEdge>,
    pub cycles: Vec<Vec<Tid>>,
    /// Members of cycles that rest on inferred evidence (diagnose's probable deadlocks): drawn
    /// as cycles, titled as probable.
    pub probable: BTreeSet<Tid>,
    /// Tasks left out of the picture (over `MAX_NODES`).
    pub hidden: usize,
    /// Groups drawn one box per task on request: (group id, tasks).
    pub expanded: Vec<(String, usize)>,
}

/// "1.25s", "340ms", "2m 5s": short, for labels.
pub fn short_duration(ns: u64) -> String {
    let ms = ns / 1_000_000;
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{:.2}s", ns as f64 / 1e9)
    } else {
        format!("{}m {}s", ms / 60_000, (ms % 60_000) / 1000)
    }
}

fn lock_name(lock: &LockRef) -> String {
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
        let owners: BTreeMap<Addr, u32> = view
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
                    };
                    format!("blocked {} {what}", short_duration(w))
                }
                _ => "not blocked (holder)".into(),
            };
            let mut more: Vec<String> = t
                .holds
                .iter()
                .take(2)
                .map(|h| match owners.get(&h.mm) {
                    Some(p) => format!("holds mmap_lock of pid {p} ({})", h.mode),
                    None => format!("holds mmap_lock of mm {} ({})", h.mm, h.mode),
                })
                .collect();
            if t.holds.len() > 2 {
                more.push(format!("+{} more holds", t.holds.len() - 2));
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
                        Reason::LockOwner => EdgeKind::LockOwner,
                        Reason::UffdHandler => EdgeKind::UffdHandler,
                    },
                    wants: e.wants,
                    held: e.held,
                    // Not seen acquiring it: the agent's default mode infers read holders.
                    inferred: (e.reason == Reason::HoldsInferred).then_some("inferred"),
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
                        Source::Heuristic => Some("guess from /proc"),
                        Source::Evidence => Some("handler named from evidence"),
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
                .filter(|c| c.confidence == crate::core::diagnosis::Confidence::Probable)
                .flat_map(|c| c.tids.iter().copied())
                .collect(),
            hidden: 0,
            expanded: Vec::new(),
        };
        scene.mark_cycles();
        scene
    }

    fn mark_cycles(&mut self) {
        let members: BTreeSet<Tid> = self.cycles.iter().flatten().copied().collect();
        for n in &mut self.nodes {
            n.in_cycle = n.members.iter().any(|m| members.contains(&m.tid));
        }
        for e in &mut self.edges {
            let tid = |i: usize| self.nodes[i].members.first().map(|m| m.tid);
            e.in_cycle = self.cycles.iter().any(|c| {
                tid(e.from).is_some_and(|t| c.contains(&t))
                    && tid(e.to).is_some_and(|t| c.contains(&t))
            });
        }
    }

    /// The stable id of a group: a hash of what its members wait for.
    fn group_id(signature: &str) -> String {
        // FNV-1a: stable across runs and builds, unlike the std hasher.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in signature.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        format!("g{h:016x}")
    }

    /// Folds identical waiters into one box each: blocked tasks outside any cycle that nobody
    /// waits for and that wait for the same tasks through the same locks in the same way.
    /// Groups whose id is in `expand` stay one box per task.
    pub fn grouped(self, expand: &BTreeSet<String>) -> Self {
        let mut waited_on = vec![false; self.nodes.len()];
        let mut out: Vec<Vec<usize>> = vec![Vec::new(); self.nodes.len()];
        for (i, e) in self.edges.iter().enumerate() {
            waited_on[e.to] = true;
            out[e.from].push(i);
        }
        let mut by_signature: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (i, n) in self.nodes.iter().enumerate() {
            if !n.blocked || n.in_cycle || waited_on[i] || n.group {
                continue;
            }
            if out[i].is_empty() {
                // Waits on a lock whose holder nobody knows: alike when the lock and mode are.
                if let Some(lock) = &n.wait_lock {
                    by_signature
                        .entry(format!("unknown|{lock}|{:?}", n.wait_mode))
                        .or_default()
                        .push(i);
                }
                continue;
            }
            let mut sig: Vec<String> = out[i]
                .iter()
                .map(|&ei| {
                    let e = &self.edges[ei];
                    format!(
                        "{}|{}|{:?}|{:?}|{:?}|{:?}",
                        self.nodes[e.to].id, e.lock, e.kind, e.wants, e.held, e.inferred
                    )
                })
                .collect();
            sig.sort();
            by_signature.entry(sig.join(";")).or_default().push(i);
        }
        // Old index → new index; members of a folded group all map to the group's box.
        let mut map: Vec<Option<usize>> = vec![None; self.nodes.len()];
        let mut folded: BTreeMap<usize, (String, Vec<usize>)> = BTreeMap::new();
        let mut expanded = Vec::new();
        for (sig, members) in by_signature {
            let id = Self::group_id(&sig);
            if members.len() < GROUP_MIN {
                continue;
            }
            if expand.contains(&id) {
                expanded.push((id, members.len()));
            } else {
                folded.insert(members[0], (id, members));
            }
        }
        let in_group: BTreeSet<usize> = folded
            .values()
            .flat_map(|(_, m)| m.iter().copied())
            .collect();
        let mut nodes = Vec::new();
        for (i, n) in self.nodes.iter().enumerate() {
            if let Some((id, members)) = folded.get(&i) {
                let idx = nodes.len();
                for &m in members {
                    map[m] = Some(idx);
                }
                nodes.push(self.group_node(id.clone(), members, &out[i]));
            } else if !in_group.contains(&i) {
                map[i] = Some(nodes.len());
                nodes.push(n.clone());
            }
        }
        // Edges: one per (from, to, how) after folding, counting what each stands for.
        let mut edges: Vec<SceneEdge> = Vec::new();
        for e in &self.edges {
            let (Some(from), Some(to)) = (map[e.from], map[e.to]) else {
                continue;
            };
            let same = edges.iter_mut().find(|x| {
                x.from == from
                    && x.to == to
                    && x.lock == e.lock
                    && x.kind == e.kind
                    && x.wants == e.wants
                    && x.held == e.held
            });
            match same {
                Some(x) => x.count += e.count,
                None => edges.push(SceneEdge {
                    from,
                    to,
                    ..e.clone()
                }),
            }
        }
        Self {
            nodes,
            edges,
            cycles: self.cycles,
            probable: self.probable,
            hidden: self.hidden,
            expanded,
        }
    }

    fn group_node(&self, id: String, members: &[usize], out: &[usize]) -> Node {
        let first_out = out.first().map(|&i| &self.edges[i]);
        let first = &self.nodes[members[0]];
        let noun = match first_out.and_then(|e| e.wants).or(first.wait_mode) {
            Some(LockMode::Read) => "readers",
            Some(LockMode::Write) => "writers",
            None => "waiters",
        };
        let mut lines = vec![format!("{} {noun}", members.len())];
        if let Some(e) = first_out {
            lines.push(format!("of {}", e.lock));
            let target = &self.nodes[e.to];
            let who = target
                .members
                .first()
                .map(|m| format!("{} ({})", m.tid, m.comm))
                .unwrap_or_default();
            let how = match e.kind {
                EdgeKind::QueuedBehindWriter => "queued behind writer",
                EdgeKind::Holds => "held by",
                EdgeKind::LockOwner => "owned by",
                EdgeKind::UffdHandler => "served by",
            };
            if out.len() == 1 {
                lines.push(format!("{how} {who}"));
            } else {
                lines.push(format!("waiting for {} tasks", out.len()));
            }
        } else if let Some(lock) = &first.wait_lock {
            lines.push(format!("of {lock}"));
            lines.push("holder not known".into());
        }
        let all: Vec<Member> = members
            .iter()
            .flat_map(|&i| self.nodes[i].members.iter().cloned())
            .collect();
        // The most common names, so the box says who they are.
        let mut comms: BTreeMap<&str, usize> = BTreeMap::new();
        for m in &all {
            *comms.entry(m.comm.as_str()).or_default() += 1;
        }
        let mut comms: Vec<(&str, usize)> = comms.into_iter().collect();
        comms.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        let mut names: Vec<String> = comms
            .iter()
            .take(2)
            .map(|(c, n)| format!("{c} ×{n}"))
            .collect();
        if comms.len() > 2 {
            names.push(format!("+{} more names", comms.len() - 2));
        }
        lines.push(names.join(", "));
        let waits: Vec<u64> = all.iter().filter_map(|m| m.waited_ns).collect();
        let (lo, hi) = (waits.iter().min(), waits.iter().max());
        if let (Some(lo), Some(hi)) = (lo, hi) {
            let (lo, hi) = (short_duration(*lo), short_duration(*hi));
            lines.push(if lo == hi {
                format!("blocked {hi}")
            } else {
                format!("blocked {lo} – {hi}")
            });
        }
        Node {
            id,
            lines,
            members: all,
            group: true,
            blocked: true,
            waited_ns: hi.copied(),
            in_cycle: false,
            wait_lock: first.wait_lock.clone(),
            wait_mode: first.wait_mode,
        }
    }

    /// Keeps at most `max` boxes: cycle members first, then the tasks others wait for, then the
    /// longest waits; counts the tasks left out.
    pub fn capped(mut self, max: usize) -> Self {
        if self.nodes.len() <= max {
            return self;
        }
        let mut waited_on = vec![false; self.nodes.len()];
        for e in &self.edges {
            waited_on[e.to] = true;
        }
        let mut order: Vec<usize> = (0..self.nodes.len()).collect();
        order.sort_by_key(|&i| {
            let n = &self.nodes[i];
            (
                !n.in_cycle,
                !waited_on[i],
                std::cmp::Reverse(n.waited_ns.unwrap_or(0)),
                i,
            )
        });
        let keep: BTreeSet<usize> = order.into_iter().take(max).collect();
        let mut map = vec![None; self.nodes.len()];
        let mut nodes = Vec::new();
        for (i, n) in self.nodes.into_iter().enumerate() {
            if keep.contains(&i) {
                map[i] = Some(nodes.len());
                nodes.push(n);
            } else {
                self.hidden += n.members.len();
            }
        }
        self.edges = self
            .edges
            .into_iter()
            .filter_map(|e| {
                Some(SceneEdge {
                    from: map[e.from]?,
                    to: map[e.to]?,
                    ..e
                })
            })
            .collect();
        self.nodes = nodes;
        self
    }
}
