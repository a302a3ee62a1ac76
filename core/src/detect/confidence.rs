//! How sure an alert is, and what it rests on that was inferred rather than seen.

use super::narrate::Narrator;
use crate::{
    exposure::AddrKind,
    graph::{Edge, LockRef, Reason},
    model::Tid,
};

use serde::Serialize;

/// How sure an alert is: `certain` when every edge and task it rests on was seen (records or
/// kernel state), `probable` when one of them is inferred or may be stale after a loss.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Confidence {
    Certain,
    Probable,
}

impl Confidence {
    pub const ALL: [Confidence; 2] = [Self::Certain, Self::Probable];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Certain => "certain",
            Self::Probable => "probable",
        }
    }
}

/// What of `path` and `tids` was inferred rather than seen, one sentence each.
pub(super) fn inferred(names: &Narrator<'_>, path: &[&Edge], tids: &[Tid]) -> Vec<String> {
    let model = names.model;
    let mut out = Vec::new();
    for e in path {
        let to = model.describe(e.to);
        match (&e.lock, e.reason) {
            (LockRef::MmapLock { mm, .. }, Reason::HoldsInferred) => {
                let why = model
                    .mm_locks
                    .get(mm)
                    .and_then(|l| l.inferred_readers.get(&e.to))
                    .map_or("no detail", String::as_str);
                out.push(format!(
                    "{to} is inferred to hold mmap_lock {} for read: {why}",
                    names.show(AddrKind::Mm, *mm)
                ));
            }
            (LockRef::Uffd { uffd }, Reason::UffdHandler) => {
                let Some(ctx) = model.uffds.get(uffd) else {
                    continue;
                };
                if !ctx.resolvers.is_empty() {
                    continue; // seen resolving faults on it: a handler by its own ioctls
                }
                let uffd = names.show(AddrKind::Uffd, *uffd);
                let holder_thread = !ctx.holders.contains(&e.to)
                    && model
                        .task(e.to)
                        .is_some_and(|t| ctx.holders.contains(&t.pid));
                if holder_thread {
                    out.push(format!(
                        "{to} is taken for the handler of userfaultfd {uffd} because it is a thread of the process holding the descriptor open and is blocked on a user-space lock (a handler stuck in its own code after reading the fault cannot answer it); no ioctl on it was seen"
                    ));
                } else if ctx.setup.contains(&e.to) {
                    out.push(format!(
                        "{to} is taken for the handler of userfaultfd {uffd} because it set it up; no task was seen resolving a fault on it"
                    ));
                } else {
                    out.push(format!(
                        "{to} is taken for the handler of userfaultfd {uffd} because its process holds the descriptor open; no ioctl on it was seen"
                    ));
                }
            }
            (
                LockRef::UserLock {
                    lock,
                    pid,
                    lock_type,
                },
                Reason::UserLockOwnerInferred,
            ) => {
                let why = match model.blocked(e.from) {
                    Some(crate::model::Blocked::UserLock {
                        evidence: Some(ev), ..
                    }) => ev.as_str(),
                    _ => "no detail",
                };
                out.push(format!(
                    "{to} is inferred to own {}: {why}",
                    names.user_lock(*lock, *pid, *lock_type)
                ));
            }
            _ => {}
        }
    }
    for t in tids {
        if model.unknown.contains(t) {
            out.push(format!(
                "the state of {} is unknown: records were lost since it was last seen, and no snapshot has confirmed it yet",
                model.describe(*t)
            ));
        }
    }
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::Confidence;
    use crate::{
        detect::{Alert, AlertKind, Thresholds},
        engine::Engine,
        event::{Addr, Event, EventKind, InferredReader, LockMode, LockType},
    };

    const MM: Addr = Addr(0xffff_8880_0000_1000);
    const MUTEX: Addr = Addr(0xffff_8880_0000_2000);

    fn ev(ms: u64, tid: u32, kind: EventKind) -> Event {
        Event {
            ts_ns: ms * 1_000_000,
            tid,
            pid: tid,
            comm: None,
            kind,
        }
    }

    /// 10 holds MM's lock for read, seen acquiring it or only inferred; 30 queues for write
    /// behind it; then 10 waits for a mutex 30 owns: a deadlock.
    fn deadlock(read_hold_seen: bool) -> Alert {
        let mut e = Engine::new(Thresholds::default());
        let hold = if read_hold_seen {
            EventKind::MmapLockAcquire {
                mm: MM,
                mode: LockMode::Read,
                success: true,
                mm_pid: Some(10),
            }
        } else {
            EventKind::ReadHoldersInferred {
                mm: MM,
                readers: vec![InferredReader {
                    tid: 10,
                    pid: 10,
                    comm: None,
                    evidence: "its stack shows a read hold".into(),
                }],
            }
        };
        let tid = if read_hold_seen { 10 } else { 0 };
        let mut alerts = e.apply(&ev(1, tid, hold));
        alerts.extend(e.apply(&ev(
            2,
            30,
            EventKind::MmapLockStart {
                mm: MM,
                mode: LockMode::Write,
                mm_pid: Some(10),
            },
        )));
        alerts.extend(e.apply(&ev(
            3,
            10,
            EventKind::LockWaitBegin {
                lock: MUTEX,
                lock_type: LockType::Mutex,
                owner_tid: Some(30),
                mm: None,
            },
        )));
        // The timed detectors (a deadlock is confirmed when it lasts) run at a snapshot.
        alerts.extend(e.apply(&ev(5_000, 0, EventKind::Snapshot {})));
        alerts
            .into_iter()
            .find(|a| a.kind == AlertKind::Deadlock)
            .unwrap_or_else(|| panic!("no deadlock (read hold seen: {read_hold_seen})"))
    }

    #[test]
    fn a_deadlock_through_an_inferred_read_holder_is_probable_and_says_why() {
        let a = deadlock(false);
        assert_eq!(a.confidence, Confidence::Probable, "{a:?}");
        assert!(
            a.evidence
                .iter()
                .any(|e| e.contains("inferred to hold mmap_lock") && e.contains("stack")),
            "the evidence names the inference and what it rests on: {:?}",
            a.evidence
        );
    }

    #[test]
    fn a_deadlock_whose_every_edge_was_seen_is_certain() {
        let a = deadlock(true);
        assert_eq!(a.confidence, Confidence::Certain, "{a:?}");
        assert!(a.evidence.is_empty(), "{:?}", a.evidence);
    }
}
