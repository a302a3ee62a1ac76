//! The text and DOT forms of a diagnosis (JSON is its serde form).

use std::{collections::BTreeSet, fmt::Write as _};

use super::{Confidence, DiagTask, Diagnosis, Source, Wait};

impl Diagnosis {
    fn task(&self, tid: u32) -> Option<&DiagTask> {
        self.tasks.iter().find(|t| t.tid == tid)
    }

    fn name(&self, tid: u32) -> String {
        if let Some(t) = self.task(tid) {
            return format!("{} ({}, pid {})", tid, t.comm, t.pid);
        }
        match self.others.get(&tid) {
            Some((pid, comm, _)) => format!("{tid} ({comm}, pid {pid})"),
            None => tid.to_string(),
        }
    }

    fn describe_wait(&self, t: &DiagTask) -> String {
        match &t.wait {
            Wait::MmapLock {
                mm_pid,
                mode,
                queue_position,
                readers,
                writer,
                ..
            } => {
                let held = match writer {
                    Some(w) => format!("write-held by {}", self.name(*w)),
                    None if *readers > 0 => format!("read-held by {readers} reader(s)"),
                    None => "free or being handed over".into(),
                };
                format!("waits for the mmap_lock of pid {mm_pid} for {mode} (queue position {queue_position}; {held})")
            }
            Wait::Mutex { lock, .. } => format!("waits for mutex {lock}"),
            Wait::Rwsem { lock, mode, readers, .. } => {
                format!("waits for rwsem {lock} for {mode} ({readers} reader(s) hold it)")
            }
            Wait::Semaphore { lock } => format!("waits for semaphore {lock}"),
            Wait::Uffd { uffd, mm_pid, holders, message_read, .. } => format!(
                "waits in a userfaultfd fault for context {uffd} (memory of pid {mm_pid}; held open by pid(s) {}; message {})",
                holders.iter().map(u32::to_string).collect::<Vec<_>>().join(", "),
                if *message_read { "read by a handler, not answered" } else { "pending" }
            ),
            Wait::UserLock { lock, lock_type, name, owner, .. } => {
                let what = match name {
                    Some(n) => format!("{} {n} ({lock})", lock_type.as_str()),
                    None => format!("{} {lock}", lock_type.as_str()),
                };
                match owner {
                    Some(o) => format!("waits for the user-space lock {what}, owned by {}", self.name(*o)),
                    None => format!("waits for the user-space lock {what} (owner not known)"),
                }
            }
            Wait::Other { wchan } => format!("sleeps in {}", if wchan.is_empty() { "?" } else { wchan }),
        }
    }

    /// Whether `t` is a reader queued behind a writer that waits for read holders.
    fn is_rwr(&self, t: &DiagTask) -> bool {
        matches!(&t.wait, Wait::MmapLock { mode: "read", .. })
            && t.blocked_on.iter().any(|w| {
                self.task(*w).is_some_and(|wt| {
                    matches!(&wt.wait, Wait::MmapLock { mode: "write", readers, .. } if *readers > 0)
                })
            })
    }

    pub fn to_text(&self) -> String {
        let mut s = String::new();
        if self.tasks.is_empty() {
            s.push_str("no blocked tasks found\n");
            return s;
        }
        let _ = writeln!(s, "{} blocked task(s)", self.tasks.len());
        if let Some(a) = &self.agent {
            let _ = writeln!(s, "read holders of mmap_locks from the agent at {a}");
        }
        for c in &self.cycles {
            let names: Vec<String> = c.tids.iter().map(|t| self.name(*t)).collect();
            let rwr = c
                .tids
                .iter()
                .any(|t| self.task(*t).is_some_and(|t| self.is_rwr(t)));
            let _ = writeln!(
                s,
                "\n{}{}: {}",
                match c.confidence {
                    Confidence::Certain => "DEADLOCK",
                    Confidence::Probable => "PROBABLE DEADLOCK",
                },
                if rwr {
                    " (read-write-read inversion)"
                } else {
                    ""
                },
                names.join(" -> ")
            );
            // A probable cycle says what it rests on.
            if c.confidence == Confidence::Probable {
                for e in &c.evidence {
                    let _ = writeln!(s, "  evidence: {e}");
                }
            }
        }
        // Chains start at tasks nobody blocked waits for.
        let waited_on: BTreeSet<u32> = self
            .tasks
            .iter()
            .flat_map(|t| t.blocked_on.iter().copied())
            .collect();
        let starts: Vec<&DiagTask> = self
            .tasks
            .iter()
            .filter(|t| !waited_on.contains(&t.tid))
            .collect();
        for t in starts {
            s.push('\n');
            self.tree(&mut s, t.tid, 0, &mut Vec::new(), "");
        }
        s
    }

    fn tree(&self, s: &mut String, tid: u32, depth: usize, path: &mut Vec<u32>, src: &str) {
        let pad = "  ".repeat(depth);
        if path.contains(&tid) {
            let probable = self.cycles.iter().any(|c| {
                c.confidence == Confidence::Probable
                    && c.tids.contains(&tid)
                    && path.last().is_some_and(|p| c.tids.contains(p))
            });
            let _ = writeln!(
                s,
                "{pad}-> {}{src}: back in the cycle ({})",
                self.name(tid),
                if probable {
                    "probable deadlock"
                } else {
                    "deadlock"
                }
            );
            return;
        }
        match self.task(tid) {
            Some(t) => {
                let off = t
                    .off_cpu_ms
                    .map(|ms| format!(", off CPU {:.1}s", ms / 1e3))
                    .unwrap_or_default();
                let rwr = if self.is_rwr(t) {
                    " [read-write-read: queued behind a writer that waits for readers]"
                } else {
                    ""
                };
                let _ = writeln!(
                    s,
                    "{pad}{}{} {}{src}, {}{off}{rwr}",
                    if depth == 0 { "" } else { "-> " },
                    self.name(tid),
                    t.state.split(' ').next().unwrap_or(""),
                    self.describe_wait(t)
                );
                path.push(tid);
                for e in &t.blocked_on_sources {
                    let label = edge_label(t, e.tid, e.source);
                    self.tree(s, e.tid, depth + 1, path, &label);
                }
                path.pop();
            }
            None => {
                let state = self.others.get(&tid).map(|o| o.2).unwrap_or('?');
                let _ = writeln!(
                    s,
                    "{pad}-> {} {state}{src}: not blocked (root holder)",
                    self.name(tid)
                );
            }
        }
    }

    pub fn to_dot(&self) -> String {
        let mut s = String::from(
            "digraph diagnose {\n  rankdir=LR;\n  node [shape=box, fontname=\"monospace\"];\n",
        );
        let in_cycle: BTreeSet<u32> = self
            .cycles
            .iter()
            .filter(|c| c.confidence == Confidence::Certain)
            .flat_map(|c| c.tids.iter().copied())
            .collect();
        let probable: BTreeSet<u32> = self
            .cycles
            .iter()
            .filter(|c| c.confidence == Confidence::Probable)
            .flat_map(|c| c.tids.iter().copied())
            .collect();
        let cycle_of = |a: u32, b: u32| {
            self.cycles
                .iter()
                .find(|c| c.tids.contains(&a) && c.tids.contains(&b))
                .map(|c| c.confidence)
        };
        for t in &self.tasks {
            let _ = writeln!(
                s,
                "  t{} [label=\"{}\\n{} (pid {})\\n{}\", style=filled, fillcolor=\"{}\"];",
                t.tid,
                t.tid,
                t.comm.replace('"', "\\\""),
                t.pid,
                serde_json::to_value(&t.wait)
                    .ok()
                    .and_then(|v| v["kind"].as_str().map(str::to_owned))
                    .unwrap_or_default(),
                if in_cycle.contains(&t.tid) {
                    "#ff9090"
                } else if probable.contains(&t.tid) {
                    "#ffc090"
                } else {
                    "#ffe0e0"
                }
            );
        }
        for (tid, (pid, comm, _)) in &self.others {
            let _ = writeln!(
                s,
                "  t{tid} [label=\"{tid}\\n{} (pid {pid})\\nroot holder\"];",
                comm.replace('"', "\\\"")
            );
        }
        for t in &self.tasks {
            for e in &t.blocked_on_sources {
                let style = match (cycle_of(t.tid, e.tid), e.source) {
                    (Some(Confidence::Probable), _) => {
                        " [style=dashed, color=red, label=\"probable\"]"
                    }
                    (_, Source::Kernel) => "",
                    (_, Source::Agent | Source::AgentInferred | Source::AgentUnverified) => {
                        " [style=dashed]"
                    }
                    (_, Source::Heuristic) => " [style=dotted]",
                    (_, Source::Evidence) => " [style=dashed, label=\"handler?\"]",
                    (_, Source::UserLayout) => " [style=dashed, label=\"owner (inferred)\"]",
                };
                let _ = writeln!(s, "  t{} -> t{}{style};", t.tid, e.tid);
            }
        }
        s.push_str("}\n");
        s
    }
}

/// How the tree labels an edge: where it came from, and for a userfaultfd handler, on what
/// evidence.
fn edge_label(from: &DiagTask, to: u32, source: Source) -> String {
    match source {
        Source::Kernel => String::new(),
        Source::Agent => " [agent]".into(),
        Source::AgentInferred => " [agent, inferred]".into(),
        Source::AgentUnverified => " [agent, unverified]".into(),
        Source::Heuristic => " [guess from /proc]".into(),
        Source::UserLayout => " [owner from the lock's memory layout, inferred]".into(),
        Source::Evidence => match &from.wait {
            Wait::Uffd { candidates, .. } => candidates
                .iter()
                .find(|c| c.tid == to)
                .map(|c| format!(" [handler: {}]", c.describe()))
                .unwrap_or_default(),
            _ => String::new(),
        },
    }
}
