//! Detectors over the model and its waits-for graph, and the alerts they raise.
//!
//! Time comes from the events only, so a replay raises exactly the alerts the live agent did.

use std::{
    collections::{BTreeSet, HashSet},
    fmt::Write as _,
    time::Duration,
};

use serde::Serialize;

mod confidence;
mod narrate;
pub mod vetting;

pub use confidence::Confidence;

use self::{confidence::inferred, narrate::Narrator};
use crate::{
    event::{Addr, LockMode},
    exposure::{AddrKind, Exposure, Shown},
    graph::{Edge, LockRef, Reason, WaitsFor},
    model::{Blocked, Model, Notice, Tid},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    Deadlock,
    RwrInversion,
    RecursiveRead,
    Stall,
    UffdStall,
}

impl AlertKind {
    pub const ALL: [AlertKind; 5] = [
        Self::Deadlock,
        Self::RwrInversion,
        Self::RecursiveRead,
        Self::Stall,
        Self::UffdStall,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Deadlock => "deadlock",
            Self::RwrInversion => "rwr_inversion",
            Self::RecursiveRead => "recursive_read",
            Self::Stall => "stall",
            Self::UffdStall => "uffd_stall",
        }
    }

    pub fn severity(self) -> Severity {
        match self {
            Self::Deadlock => Severity::Critical,
            _ => Severity::Warning,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Warning,
    Critical,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Alert {
    pub kind: AlertKind,
    pub severity: Severity,
    pub ts_ns: u64,
    /// Every task of the cycle or chain, in narrative order.
    pub tids: Vec<Tid>,
    pub summary: String,
    pub confidence: Confidence,
    /// What a `probable` alert rests on that was not seen: one sentence per inferred edge or
    /// task of unknown state. Empty when `certain`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub evidence: Vec<String>,
    /// The locks the alert's chain goes through, in its order, named as the graph's edges name
    /// them (the same ids in `/api/graph` during one agent run).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub locks: Vec<LockRef<Shown>>,
}

impl Alert {
    /// An alert resting on `path` (the edges it narrates) and `tids`, qualified by them.
    fn new(
        kind: AlertKind,
        ts_ns: u64,
        tids: Vec<Tid>,
        summary: String,
        narrator: &Narrator<'_>,
        path: &[&Edge],
    ) -> Self {
        let evidence = inferred(narrator, path, &tids);
        let mut locks: Vec<LockRef<Shown>> = Vec::new();
        for e in path {
            let lock = e.lock.shown(narrator.exposure);
            if !locks.contains(&lock) {
                locks.push(lock);
            }
        }
        Self {
            kind,
            severity: kind.severity(),
            ts_ns,
            tids,
            summary,
            confidence: if evidence.is_empty() {
                Confidence::Certain
            } else {
                Confidence::Probable
            },
            evidence,
            locks,
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub struct Thresholds {
    /// A task blocked this long is a stall (uffd_stall for userfaultfd waits).
    pub stall: Duration,
    /// A reader queued behind a writer this long is an inversion.
    pub rwr: Duration,
    /// A cycle whose members all waited this long without progress is a deadlock.
    pub deadlock_confirm: Duration,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            stall: Duration::from_secs(1),
            rwr: Duration::from_secs(1),
            deadlock_confirm: Duration::from_secs(1),
        }
    }
}

fn ns(d: Duration) -> u64 {
    d.as_nanos().try_into().unwrap_or(u64::MAX)
}

fn fmt_dur(n: u64) -> String {
    let d = Duration::from_millis(n / 1_000_000);
    humantime::format_duration(d).to_string()
}

/// What makes one occurrence of an alert: the same key never alerts twice while it lasts.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Key {
    /// A wait of `tid` that began at `since` (stall, uffd_stall, rwr_inversion).
    Wait(AlertKind, Tid, u64),
    /// A read hold of `tid` on `mm` that began at `since` (recursive_read).
    Hold(Tid, Addr, u64),
    /// A cycle's sorted members (deadlock).
    Cycle(Vec<Tid>),
}

/// Raises each alert once per occurrence (a wait, a cycle, a hold).
#[derive(Default)]
pub struct Detector {
    pub thresholds: Thresholds,
    /// How alerts name addresses (raw in a replay; opaque ids in the agent's by default).
    pub exposure: Exposure,
    raised: HashSet<Key>,
}

impl Detector {
    pub fn new(thresholds: Thresholds) -> Self {
        Self {
            thresholds,
            exposure: Exposure::Raw,
            raised: HashSet::new(),
        }
    }

    fn once(&mut self, key: Key) -> bool {
        self.raised.insert(key)
    }

    /// Forgets keys of conditions that ended, so a recurrence alerts again; bounded memory.
    fn forget_ended(&mut self, model: &Model, active_cycles: &[Vec<Tid>]) {
        self.raised.retain(|key| match key {
            Key::Cycle(members) => active_cycles.contains(members),
            // Alive while that wait (or hold) is.
            Key::Wait(_, tid, since) => {
                model
                    .task(*tid)
                    .and_then(|t| t.blocked.as_ref())
                    .map(Blocked::since_ns)
                    == Some(*since)
            }
            Key::Hold(tid, mm, since) => model
                .task(*tid)
                .and_then(|t| t.holds.get(mm))
                .is_some_and(|h| h.since_ns == *since),
        });
    }

    pub fn on_notice(&mut self, model: &Model, notice: &Notice) -> Option<Alert> {
        match notice {
            Notice::RecursiveRead { tid, mm, ts_ns } => {
                let hold = model.task(*tid)?.holds.get(mm)?;
                if !self.once(Key::Hold(*tid, *mm, hold.since_ns)) {
                    return None;
                }
                let owner = model.mm_locks.get(mm).and_then(|l| l.owner_pid);
                let queued: Vec<String> = model
                    .mm_locks
                    .get(mm)
                    .map(|l| {
                        l.writers_queued_before(*ts_ns)
                            .map(|(w, _)| model.describe(w))
                            .collect()
                    })
                    .unwrap_or_default();
                // A copy (16 bytes): `self` is borrowed mutably while the narrator lives.
                let exposure = self.exposure.clone();
                let narrator = Narrator {
                    model,
                    exposure: &exposure,
                };
                let mut summary = format!(
                    "{} asks for {} for read while holding it for read since {} ago",
                    model.describe(*tid),
                    narrator.whose_mm(*mm, owner),
                    fmt_dur(ts_ns.saturating_sub(hold.since_ns))
                );
                if queued.is_empty() {
                    summary.push_str(": it deadlocks as soon as a writer queues in between.");
                } else {
                    let _ = write!(
                        summary,
                        "; writer {} is already queued, so this read blocks behind it: a self-deadlock.",
                        queued.join(", ")
                    );
                }
                let mut alert = Alert::new(
                    AlertKind::RecursiveRead,
                    *ts_ns,
                    vec![*tid],
                    summary,
                    &narrator,
                    &[],
                );
                // No edge: the lock is the task's own hold.
                alert.locks.push(
                    LockRef::MmapLock {
                        mm: *mm,
                        owner_pid: owner,
                    }
                    .shown(&exposure),
                );
                Some(alert)
            }
        }
    }

    /// Evaluates the timed detectors at `now`.
    pub fn check(&mut self, model: &Model, now: u64) -> Vec<Alert> {
        let graph = WaitsFor::build(model);
        let cycles = graph.cycles();
        self.forget_ended(model, &cycles);
        // A copy (16 bytes): `self` is borrowed mutably while the narrator lives.
        let exposure = self.exposure.clone();
        let narrator = Narrator {
            model,
            exposure: &exposure,
        };
        let mut alerts = Vec::new();
        let mut in_deadlock: BTreeSet<Tid> = BTreeSet::new();
        let since = |t: Tid| {
            model
                .task(t)
                .and_then(|t| t.blocked.as_ref())
                .map(Blocked::since_ns)
        };

        for cycle in &cycles {
            let confirmed = cycle.iter().all(|&t| {
                since(t)
                    .is_some_and(|s| now.saturating_sub(s) >= ns(self.thresholds.deadlock_confirm))
            });
            if !confirmed {
                continue;
            }
            in_deadlock.extend(cycle.iter().copied());
            if !self.once(Key::Cycle(cycle.clone())) {
                continue;
            }
            // Narrate from the member that has waited longest, around the cycle.
            let start = *cycle
                .iter()
                .min_by_key(|&&t| (since(t).unwrap_or(u64::MAX), t))
                .unwrap_or(&cycle[0]);
            let path = cycle_path(&graph, start, cycle);
            let rwr = path.iter().any(|e| e.reason == Reason::QueuedBehindWriter);
            let mut tids = vec![start];
            tids.extend(path.iter().map(|e| e.to));
            dedup_keep_order(&mut tids);
            let mut summary = format!(
                "deadlock of {} tasks{}: ",
                cycle.len(),
                if rwr {
                    " (read-write-read inversion)"
                } else {
                    ""
                }
            );
            summary.push_str(&narrator.chain(start, &path, &graph));
            // A strongly connected component can hold more than the one loop narrated.
            let others: Vec<Tid> = cycle
                .iter()
                .copied()
                .filter(|t| !tids.contains(t))
                .collect();
            if !others.is_empty() {
                let names: Vec<String> = others.iter().map(|&t| model.describe(t)).collect();
                let _ = write!(summary, " Also caught in it: {}.", names.join(", "));
                tids.extend(others);
            }
            alerts.push(Alert::new(
                AlertKind::Deadlock,
                now,
                tids,
                summary,
                &narrator,
                &path,
            ));
        }

        for &tid in &model.blocked {
            if in_deadlock.contains(&tid) {
                continue;
            }
            let Some(blocked) = model.task(tid).and_then(|t| t.blocked.as_ref()) else {
                continue;
            };
            let waited = now.saturating_sub(blocked.since_ns());
            let out = graph.out(tid);

            // rwr_inversion: a reader queued behind a writer that waits on read holders.
            if let Blocked::MmapLock {
                mode: LockMode::Read,
                ..
            } = blocked
            {
                if waited >= ns(self.thresholds.rwr) {
                    let inversion = out.iter().find(|e| {
                        e.reason == Reason::QueuedBehindWriter
                            && graph.out(e.to).iter().any(|w| {
                                matches!(w.reason, Reason::Holds | Reason::HoldsInferred)
                                    && w.held == Some(LockMode::Read)
                            })
                    });
                    if let Some(first) = inversion {
                        if self.once(Key::Wait(AlertKind::RwrInversion, tid, blocked.since_ns())) {
                            let mut path = vec![first];
                            path.extend(graph.chain(first.to));
                            let mut tids = vec![tid];
                            tids.extend(path.iter().map(|e| e.to));
                            dedup_keep_order(&mut tids);
                            let summary = format!(
                                "read-write-read inversion, reader blocked {}: {}",
                                fmt_dur(waited),
                                narrator.chain(tid, &path, &graph)
                            );
                            alerts.push(Alert::new(
                                AlertKind::RwrInversion,
                                now,
                                tids,
                                summary,
                                &narrator,
                                &path,
                            ));
                        }
                    }
                }
            }

            if waited >= ns(self.thresholds.stall) {
                let kind = match blocked {
                    Blocked::Uffd { .. } => AlertKind::UffdStall,
                    _ => AlertKind::Stall,
                };
                if self.once(Key::Wait(kind, tid, blocked.since_ns())) {
                    let path = graph.chain(tid);
                    let mut tids = vec![tid];
                    tids.extend(path.iter().map(|e| e.to));
                    dedup_keep_order(&mut tids);
                    let summary = match blocked {
                        Blocked::Uffd { uffd, addr, .. } => {
                            let handlers: Vec<String> =
                                out.iter().map(|e| narrator.model.describe(e.to)).collect();
                            let mut s = format!(
                                "{} blocked {} in a userfaultfd fault at {} on {}; ",
                                model.describe(tid),
                                fmt_dur(waited),
                                narrator.show(AddrKind::User, *addr),
                                narrator.show(AddrKind::Uffd, *uffd),
                            );
                            let ctx = model.uffds.get(uffd);
                            let resolved_before = ctx.is_some_and(|c| !c.resolvers.is_empty());
                            let set_up = ctx.is_some_and(|c| !c.setup.is_empty());
                            if handlers.is_empty() {
                                s.push_str("no handler task is known for it.");
                            } else if resolved_before {
                                let _ = write!(s, "handler tasks: {}. ", handlers.join(", "));
                                s.push_str(&narrator.chain(tid, &path, &graph));
                            } else if set_up {
                                let _ = write!(
                                    s,
                                    "no task has resolved a fault on it yet; it was set up by {}.",
                                    handlers.join(", ")
                                );
                            } else {
                                let _ = write!(
                                    s,
                                    "no ioctl on it was seen; it is held open by {}.",
                                    handlers.join(", ")
                                );
                            }
                            s
                        }
                        _ => format!(
                            "blocked {}: {}",
                            fmt_dur(waited),
                            narrator.chain(tid, &path, &graph)
                        ),
                    };
                    // A userfaultfd stall's handlers are named as candidates in its summary:
                    // the edges to them qualify it like any hop of a chain.
                    let mut qualifying = path.clone();
                    if matches!(blocked, Blocked::Uffd { .. }) {
                        qualifying.extend(out.iter());
                    }
                    let mut alert = Alert::new(kind, now, tids, summary, &narrator, &qualifying);
                    // No edge out (no owner or handler known): the lock is the one it waits for.
                    if alert.locks.is_empty() {
                        alert.locks.push(waited_on(model, blocked).shown(&exposure));
                    }
                    alerts.push(alert);
                }
            }
        }
        alerts
    }
}

/// The lock a blocked task waits for, as an edge would name it.
fn waited_on(model: &Model, blocked: &Blocked) -> LockRef {
    match *blocked {
        Blocked::MmapLock { mm, .. } => LockRef::MmapLock {
            mm,
            owner_pid: model.mm_locks.get(&mm).and_then(|l| l.owner_pid),
        },
        Blocked::KernelLock {
            lock, lock_type, ..
        } => LockRef::KernelLock { lock, lock_type },
        Blocked::Uffd { uffd, .. } => LockRef::Uffd { uffd },
        Blocked::UserLock {
            lock,
            pid,
            lock_type,
            ..
        } => LockRef::UserLock {
            lock,
            pid,
            lock_type,
        },
    }
}

fn dedup_keep_order(tids: &mut Vec<Tid>) {
    let mut seen = BTreeSet::new();
    tids.retain(|t| seen.insert(*t));
}

/// Edges around `cycle` from `start`, following only members, until back at a seen task.
fn cycle_path<'g>(graph: &'g WaitsFor, start: Tid, cycle: &[Tid]) -> Vec<&'g Edge> {
    let mut path = Vec::new();
    let mut seen = vec![start];
    let mut cur = start;
    while let Some(e) = graph
        .out(cur)
        .iter()
        .find(|e| cycle.binary_search(&e.to).is_ok())
    {
        path.push(e);
        if seen.contains(&e.to) {
            break;
        }
        seen.push(e.to);
        cur = e.to;
    }
    path
}

#[cfg(test)]
mod tests;
