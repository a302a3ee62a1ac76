//! Making a scene readable: identical waiters folded into one box, and at most so many boxes.

use std::collections::{BTreeMap, BTreeSet};

use crate::core::event::LockMode;

use super::{super::text::short_duration, EdgeKind, Member, Node, Scene, SceneEdge, GROUP_MIN};

impl Scene {
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
