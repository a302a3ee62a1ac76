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
                if ctx.setup.contains(&e.to) {
                    out.push(format!(
                        "{to} is taken for the handler of userfaultfd {uffd} because it set it up; no task was seen resolving a fault on it"
                    ));
                } else {
                    out.push(format!(
                        "{to} is taken for the handler of userfaultfd {uffd} because its process holds the descriptor open; no ioctl on it was seen"
                    ));
                }
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
