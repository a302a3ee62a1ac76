//! Alerts in words: one sentence per hop of a chain, the same in replay, logs and incidents.

use std::fmt::Write as _;

use crate::{
    event::{Addr, UserLockKind},
    exposure::{AddrKind, Exposure, Shown},
    graph::{Edge, LockRef, Reason, WaitsFor},
    model::{Model, Tid},
};

/// Human names of locks and hops.
pub(super) struct Narrator<'a> {
    pub(super) model: &'a Model,
    /// How addresses are named.
    pub(super) exposure: &'a Exposure,
}

impl Narrator<'_> {
    pub(super) fn show(&self, kind: AddrKind, addr: Addr) -> Shown {
        self.exposure.show(kind, addr)
    }

    pub(super) fn whose_mm(&self, mm: Addr, owner_pid: Option<u32>) -> String {
        match owner_pid {
            Some(p) => format!("the mmap_lock of pid {p}"),
            None => format!("the mmap_lock of mm {}", self.show(AddrKind::Mm, mm)),
        }
    }

    /// "waits for X, held for read by Y" — the part of a sentence one edge says.
    pub(super) fn hop(&self, e: &Edge) -> String {
        let to = self.model.describe(e.to);
        let wants = e.wants.map(|m| format!(" for {m}")).unwrap_or_default();
        match (&e.lock, e.reason) {
            (LockRef::MmapLock { mm, owner_pid }, Reason::QueuedBehindWriter) => format!(
                "waits for {}{wants}, queued behind writer {to}",
                self.whose_mm(*mm, *owner_pid)
            ),
            (LockRef::MmapLock { mm, owner_pid }, Reason::HoldsInferred) => {
                let why = self
                    .model
                    .mm_locks
                    .get(mm)
                    .and_then(|l| l.inferred_readers.get(&e.to))
                    .map_or("no detail", String::as_str);
                format!(
                    "waits for {}{wants}, held for read by {to} (inferred: {why})",
                    self.whose_mm(*mm, *owner_pid)
                )
            }
            (LockRef::MmapLock { mm, owner_pid }, _) => format!(
                "waits for {}{wants}, held{} by {to}",
                self.whose_mm(*mm, *owner_pid),
                e.held.map(|m| format!(" for {m}")).unwrap_or_default()
            ),
            (LockRef::KernelLock { lock, lock_type }, _) => {
                let kind = serde_json::to_value(lock_type)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_else(|| "lock".into());
                let lock = self.show(AddrKind::Lock, *lock);
                format!("waits for the {kind} {lock} owned by {to}")
            }
            (LockRef::Uffd { uffd }, _) => {
                let uffd = self.show(AddrKind::Uffd, *uffd);
                format!("waits for userfaultfd {uffd} to be served by {to}")
            }
            (
                LockRef::UserLock {
                    lock,
                    pid,
                    lock_type,
                },
                reason,
            ) => {
                let name = self.user_lock(*lock, *pid, *lock_type);
                match reason {
                    Reason::QueuedBehindWriter => {
                        format!("waits for {name}{wants}, queued behind writer {to}")
                    }
                    Reason::UserLockOwner => format!("waits for {name}{wants}, owned by {to}"),
                    Reason::UserLockOwnerConfirmed => format!(
                        "waits for {name}{wants}, owned by {to} (named by its word, and seen taking it)"
                    ),
                    _ => format!("waits for {name}{wants}, owned by {to} (inferred)"),
                }
            }
        }
    }

    /// "the pthread_mutex FAULTLINE_MUTEX_A (addr-…) of pid P".
    pub(super) fn user_lock(&self, lock: Addr, pid: u32, kind: UserLockKind) -> String {
        let shown = self.show(AddrKind::User, lock);
        match self.model.user_lock_name(pid, lock) {
            Some(n) => format!("the {} {n} ({shown}) of pid {pid}", kind.as_str()),
            None => format!("the {} {shown} of pid {pid}", kind.as_str()),
        }
    }

    /// One paragraph: "A waits for …, which waits for …, which is running (the root holder)."
    pub(super) fn chain(&self, start: Tid, path: &[&Edge], graph: &WaitsFor) -> String {
        let mut s = self.model.describe(start);
        for (i, e) in path.iter().enumerate() {
            if i > 0 {
                s.push_str(", which");
            }
            let _ = write!(s, " {}", self.hop(e));
        }
        if let Some(last) = path.last() {
            if path[..path.len() - 1].iter().any(|e| e.from == last.to) || last.to == start {
                s.push_str(", closing the cycle");
            } else if graph.out(last.to).is_empty() {
                let blocked = self
                    .model
                    .task(last.to)
                    .is_some_and(|t| t.blocked.is_some());
                if blocked {
                    // Waiting, on a holder nobody identified (the default mode infers the read
                    // holders of an mmap_lock, and may find none): never call it the holder.
                    let _ = write!(
                        s,
                        "; {} waits too, on a holder that is not known",
                        self.model.describe(last.to)
                    );
                } else {
                    let _ = write!(s, "; {} is the root holder", self.model.describe(last.to));
                }
            }
        }
        s.push('.');
        s
    }
}
