//! `faultline diagnose`: one look at a host where tasks hang, without a running agent.
//!
//! /proc says which tasks sleep where (state, wait channel, kernel stack); BPF iterators read the
//! exact kernel state behind it (lock owners, mmap_lock queues in order, userfaultfd waiters
//! and holders); a running agent, when there is one, adds the mmap_lock read holders it saw
//! (the kernel does not record those). Every fact says where it came from.

pub mod kernel;
pub mod procfs;

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    time::Duration,
};

use serde::Serialize;
use tracer_common::{blocker_type, diag_kind, DiagRecord};

use crate::{event::Addr, probes::ProbeError};

/// Where a fact came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// Kernel memory, read with BPF iterators.
    Kernel,
    /// The running agent's waits-for graph, which tracked the hold.
    Agent,
    /// The running agent's waits-for graph, which inferred the hold (its default mode does not
    /// see uncontended acquisitions; the agent's alert says on what evidence).
    AgentInferred,
    /// A guess from /proc (state, stacks): the kernel does not record mmap_lock read holders.
    Heuristic,
}

/// What a blocked task waits for.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Wait {
    MmapLock {
        mm: Addr,
        /// The process owning the mm.
        mm_pid: u32,
        mode: &'static str,
        /// Position in the lock's wait queue (0: first).
        queue_position: u32,
        /// Readers holding the lock (from its count), when it is read-held.
        readers: u64,
        /// The writer holding it, when it is write-held.
        #[serde(skip_serializing_if = "Option::is_none")]
        writer: Option<u32>,
    },
    Mutex {
        lock: Addr,
        #[serde(skip_serializing_if = "Option::is_none")]
        owner: Option<u32>,
    },
    Rwsem {
        lock: Addr,
        mode: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        owner: Option<u32>,
        readers: u64,
    },
    Semaphore {
        lock: Addr,
    },
    Uffd {
        uffd: Addr,
        /// The process whose memory the context serves.
        mm_pid: u32,
        /// Processes holding the userfaultfd open.
        holders: Vec<u32>,
    },
    Other {
        wchan: String,
    },
}

#[derive(Clone, Debug, Serialize)]
pub struct Edge {
    pub tid: u32,
    pub source: Source,
}

#[derive(Clone, Debug, Serialize)]
pub struct DiagTask {
    pub tid: u32,
    pub pid: u32,
    pub comm: String,
    pub state: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub off_cpu_ms: Option<f64>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub wchan: String,
    pub wait: Wait,
    /// Whom it waits for (tids).
    pub blocked_on: Vec<u32>,
    /// The same, with where each came from.
    pub blocked_on_sources: Vec<Edge>,
    pub stack: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct Diagnosis {
    pub tasks: Vec<DiagTask>,
    pub cycles: Vec<Vec<u32>>,
    /// Tasks named as holders that are not blocked themselves: the roots of the chains.
    #[serde(skip)]
    pub others: BTreeMap<u32, (u32, String, char)>,
    #[serde(skip)]
    pub agent: Option<String>,
}

pub struct DiagnoseOptions {
    pub pid: Option<u32>,
    pub min_blocked: Duration,
    /// The agent's API, asked for read holders when it answers.
    pub agent: Option<String>,
}

/// What the agent's graph says: tid → [(holder tid)] for mmap_lock waits.
fn agent_holders(addr: &str) -> Option<BTreeMap<u32, Vec<(u32, Source)>>> {
    let agent = ureq::Agent::new_with_config(
        ureq::config::Config::builder()
            .timeout_global(Some(Duration::from_millis(500)))
            .build(),
    );
    let body = agent
        .get(&format!("http://{addr}/api/graph"))
        .call()
        .ok()?
        .body_mut()
        .read_to_string()
        .ok()?;
    let doc: serde_json::Value = serde_json::from_str(&body).ok()?;
    let mut out: BTreeMap<u32, Vec<(u32, Source)>> = BTreeMap::new();
    for e in doc["edges"].as_array()? {
        let source = match e["reason"].as_str() {
            Some("holds") => Source::Agent,
            Some("holds_inferred") => Source::AgentInferred,
            _ => continue,
        };
        if let (Some(from), Some(to)) = (e["from"].as_u64(), e["to"].as_u64()) {
            out.entry(from as u32)
                .or_default()
                .push((to as u32, source));
        }
    }
    Some(out)
}

fn state_name(c: char) -> String {
    match c {
        'D' => "D (uninterruptible or killable sleep)".into(),
        'S' => "S (interruptible sleep)".into(),
        'R' => "R (running)".into(),
        other => other.to_string(),
    }
}

pub fn diagnose(opts: &DiagnoseOptions) -> Result<Diagnosis, ProbeError> {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err(ProbeError::Privileges);
    }
    let all = procfs::tasks(None);
    let uffd_fds = procfs::uffd_fds();
    let records = kernel::read_kernel_state(&uffd_fds)?;
    let by_tid: BTreeMap<u32, &procfs::ProcTask> = all.iter().map(|t| (t.tid, t)).collect();

    // Kernel facts, indexed.
    let mut mmap_locks: BTreeMap<u64, &DiagRecord> = BTreeMap::new();
    let mut mmap_waiters: BTreeMap<u64, Vec<&DiagRecord>> = BTreeMap::new();
    let mut blockers: BTreeMap<u32, &DiagRecord> = BTreeMap::new();
    let mut uffd_mm: BTreeMap<u64, (u64, u32)> = BTreeMap::new();
    let mut uffd_holders: BTreeMap<u64, BTreeSet<u32>> = BTreeMap::new();
    let mut uffd_waiter_of: BTreeMap<u32, u64> = BTreeMap::new();
    for r in &records {
        match r.kind {
            diag_kind::MMAP_LOCK => {
                mmap_locks.insert(r.a, r);
            }
            diag_kind::MMAP_WAITER => mmap_waiters.entry(r.a).or_default().push(r),
            diag_kind::BLOCKER => {
                blockers.insert(r.tid, r);
            }
            diag_kind::UFFD_FILE => {
                uffd_mm.insert(r.a, (r.b, r.c as u32));
                uffd_holders.entry(r.a).or_default().insert(r.tgid);
            }
            diag_kind::UFFD_WAITER => {
                uffd_waiter_of.insert(r.d as u32, r.a);
            }
            _ => {}
        }
    }
    let mut in_mmap_queue: BTreeMap<u32, (u64, &DiagRecord)> = BTreeMap::new();
    for (mm, ws) in &mmap_waiters {
        for w in ws {
            in_mmap_queue.insert(w.d as u32, (*mm, *w));
        }
    }

    let agent = opts.agent.as_deref().and_then(agent_holders);

    // The blocked tasks: D-state sleepers, tasks in a kernel wait queue, userfaultfd waiters.
    let candidates: Vec<&procfs::ProcTask> = all
        .iter()
        .filter(|t| {
            t.state == 'D'
                || in_mmap_queue.contains_key(&t.tid)
                || uffd_waiter_of.contains_key(&t.tid)
                || blockers.contains_key(&t.tid)
        })
        .collect();

    let blocked_tids: BTreeSet<u32> = candidates.iter().map(|t| t.tid).collect();
    let holder_frames: std::cell::OnceCell<Vec<u32>> = std::cell::OnceCell::new();
    let mut tasks = Vec::new();
    for t in candidates {
        let wchan = procfs::wchan(t.pid, t.tid);
        let mut edges: Vec<Edge> = Vec::new();
        let kernel_edge = |tid: u32| Edge {
            tid,
            source: Source::Kernel,
        };
        let wait = if let Some((mm, w)) = in_mmap_queue.get(&t.tid) {
            let lock = mmap_locks.get(mm);
            let count = lock.map(|l| l.b).unwrap_or(0);
            let writer = lock.map(|l| l.d as u32).filter(|&o| o != 0);
            let readers = if count & 1 == 0 { count >> 8 } else { 0 };
            let mode = if w.c == 0 { "write" } else { "read" };
            if let Some(o) = writer {
                edges.push(kernel_edge(o));
            }
            // rwsem fairness: a waiter is behind every writer queued before it.
            let ahead: Vec<u32> = mmap_waiters
                .get(mm)
                .into_iter()
                .flatten()
                .filter(|x| x.pos < w.pos && x.c == 0)
                .map(|x| x.d as u32)
                .collect();
            edges.extend(ahead.iter().map(|&a| kernel_edge(a)));
            if writer.is_none() && (mode == "write" || ahead.is_empty()) && readers > 0 {
                // Read holders: the kernel keeps only their count.
                let mm_pid = w.tgid;
                match agent.as_ref().and_then(|a| a.get(&t.tid)) {
                    Some(holders) => {
                        edges.extend(holders.iter().map(|&(h, source)| Edge { tid: h, source }))
                    }
                    None => {
                        // Running threads of the owning process, and sleeping threads anywhere
                        // stopped inside a function that holds an mmap_lock for read.
                        let sleeping = holder_frames.get_or_init(|| {
                            all.iter()
                                .filter(|c| matches!(c.state, 'S' | 'D'))
                                // Waiting for an mmap_lock is not holding one.
                                .filter(|c| !in_mmap_queue.contains_key(&c.tid))
                                .filter(|c| {
                                    procfs::stack(c.pid, c.tid)
                                        .iter()
                                        .any(|f| procfs::READ_HOLDER_FRAMES.contains(&f.as_str()))
                                })
                                .map(|c| c.tid)
                                .collect()
                        });
                        let running = all
                            .iter()
                            .filter(|c| c.pid == mm_pid && c.state == 'R')
                            .map(|c| c.tid);
                        edges.extend(
                            running
                                .chain(sleeping.iter().copied())
                                .filter(|&c| c != t.tid)
                                .map(|c| Edge {
                                    tid: c,
                                    source: Source::Heuristic,
                                }),
                        );
                    }
                }
            }
            Wait::MmapLock {
                mm: Addr(*mm),
                mm_pid: w.tgid,
                mode,
                queue_position: w.pos,
                readers,
                writer,
            }
        } else if let Some(b) = blockers.get(&t.tid) {
            let lock = Addr(b.a & !blocker_type::MASK);
            let owner = (b.d != 0).then_some(b.d as u32);
            edges.extend(owner.map(kernel_edge));
            match b.a & blocker_type::MASK {
                blocker_type::MUTEX => Wait::Mutex { lock, owner },
                blocker_type::SEM => Wait::Semaphore { lock },
                ty => Wait::Rwsem {
                    lock,
                    mode: if ty == blocker_type::RWSEM_WRITER {
                        "write"
                    } else {
                        "read"
                    },
                    owner,
                    readers: if b.c & 1 == 0 { b.c >> 8 } else { 0 },
                },
            }
        } else if let Some(ctx) = uffd_waiter_of.get(&t.tid) {
            let (_, mm_pid) = uffd_mm.get(ctx).copied().unwrap_or((0, 0));
            let holders: Vec<u32> = uffd_holders
                .get(ctx)
                .into_iter()
                .flatten()
                .copied()
                .collect();
            // The handlers: threads of the processes holding the descriptor that are not
            // blocked themselves (a blocked thread serves nobody); other processes' first.
            let mut handlers: Vec<u32> = all
                .iter()
                .filter(|c| holders.contains(&c.pid) && c.tid != t.tid)
                .filter(|c| !blocked_tids.contains(&c.tid))
                .map(|c| (c.pid == t.pid, c.tid))
                .collect::<BTreeSet<_>>()
                .into_iter()
                .map(|(_, tid)| tid)
                .collect();
            handlers.dedup();
            edges.extend(handlers.into_iter().map(kernel_edge));
            Wait::Uffd {
                uffd: Addr(*ctx),
                mm_pid,
                holders,
            }
        } else {
            Wait::Other {
                wchan: wchan.clone(),
            }
        };
        edges.retain(|e| e.tid != t.tid);
        let mut seen = BTreeSet::new();
        edges.retain(|e| seen.insert(e.tid));
        tasks.push(DiagTask {
            tid: t.tid,
            pid: t.pid,
            comm: t.comm.clone(),
            state: state_name(t.state),
            off_cpu_ms: procfs::off_cpu_ms(t.pid, t.tid),
            wchan,
            blocked_on: edges.iter().map(|e| e.tid).collect(),
            blocked_on_sources: edges,
            wait,
            stack: procfs::stack(t.pid, t.tid),
        });
    }

    // Cycles over every edge, before any filtering.
    let cycles = find_cycles(&tasks);

    // Filters: blocked long enough, and (with --pid) the chains that touch that process.
    let min_ms = opts.min_blocked.as_secs_f64() * 1e3;
    let in_cycle: BTreeSet<u32> = cycles.iter().flatten().copied().collect();
    let index: BTreeMap<u32, usize> = tasks.iter().enumerate().map(|(i, t)| (t.tid, i)).collect();
    let keep_start = |t: &DiagTask| {
        (in_cycle.contains(&t.tid) || t.off_cpu_ms.is_none_or(|ms| ms >= min_ms))
            && opts.pid.is_none_or(|p| t.pid == p)
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
    let blocked: BTreeSet<u32> = tasks.iter().map(|t| t.tid).collect();
    let others = keep
        .iter()
        .filter(|t| !blocked.contains(t))
        .filter_map(|t| {
            by_tid
                .get(t)
                .map(|p| (*t, (p.pid, p.comm.clone(), p.state)))
        })
        .collect();
    let cycles = cycles
        .into_iter()
        .filter(|c| c.iter().all(|t| keep.contains(t)))
        .collect();
    Ok(Diagnosis {
        tasks,
        cycles,
        others,
        agent: opts.agent.clone().filter(|_| agent.is_some()),
    })
}

fn find_cycles(tasks: &[DiagTask]) -> Vec<Vec<u32>> {
    crate::graph::cycles(
        tasks
            .iter()
            .flat_map(|t| t.blocked_on.iter().map(move |&to| (t.tid, to))),
    )
}

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
            Wait::Uffd { uffd, mm_pid, holders } => format!(
                "waits in a userfaultfd fault for context {uffd} (memory of pid {mm_pid}; held open by pid(s) {})",
                holders.iter().map(u32::to_string).collect::<Vec<_>>().join(", ")
            ),
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
            let names: Vec<String> = c.iter().map(|t| self.name(*t)).collect();
            let rwr = c
                .iter()
                .any(|t| self.task(*t).is_some_and(|t| self.is_rwr(t)));
            let _ = writeln!(
                s,
                "\nDEADLOCK{}: {}",
                if rwr {
                    " (read-write-read inversion)"
                } else {
                    ""
                },
                names.join(" -> ")
            );
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
            self.tree(&mut s, t.tid, 0, &mut Vec::new(), None);
        }
        s
    }

    fn tree(
        &self,
        s: &mut String,
        tid: u32,
        depth: usize,
        path: &mut Vec<u32>,
        via: Option<Source>,
    ) {
        let pad = "  ".repeat(depth);
        let src = match via {
            Some(Source::Agent) => " [agent]",
            Some(Source::AgentInferred) => " [agent, inferred]",
            Some(Source::Heuristic) => " [guess from /proc]",
            _ => "",
        };
        if path.contains(&tid) {
            let _ = writeln!(
                s,
                "{pad}-> {}{src}: back in the cycle (deadlock)",
                self.name(tid)
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
                    self.tree(s, e.tid, depth + 1, path, Some(e.source));
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
        let in_cycle: BTreeSet<u32> = self.cycles.iter().flatten().copied().collect();
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
                let style = match e.source {
                    Source::Kernel => "",
                    Source::Agent | Source::AgentInferred => ", style=dashed",
                    Source::Heuristic => ", style=dotted",
                };
                let _ = writeln!(s, "  t{} -> t{}{style};", t.tid, e.tid);
            }
        }
        s.push_str("}\n");
        s
    }
}
