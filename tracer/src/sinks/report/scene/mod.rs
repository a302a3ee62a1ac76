//! What a picture of the waits-for graph shows, before any layout: boxes for tasks (or groups of
//! identical waiters), arrows for "waits for", with the words on them. Built from the engine's
//! `GraphView` or from a `diagnose` snapshot, so every picture reads the same way.
//!
//! - this file: what a scene is made of;
//! - `build`: a scene from the engine's graph or from a `diagnose` snapshot, one box per task;
//! - `fold`: identical waiters folded into one box, and the picture capped to a readable size.

mod build;
mod fold;

use std::{collections::BTreeSet, fmt::Write as _};

use crate::{core::event::LockMode, core::model::Tid};

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

impl Scene {
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
}
