//! The userfaultfd family: faults waiting for a handler, the handlers' ioctls, and who holds
//! a context's descriptor.

use std::collections::BTreeSet;

use super::{Blocked, Model};
use crate::event::{Addr, Event, EventKind, UffdOp};

impl Model {
    pub(super) fn apply_uffd(&mut self, ev: &Event) {
        let tid = ev.tid;
        match &ev.kind {
            EventKind::UffdWaitBegin { uffd, addr } => {
                self.uffds.entry(*uffd).or_default();
                self.block(
                    tid,
                    Blocked::Uffd {
                        uffd: *uffd,
                        addr: *addr,
                        since_ns: ev.ts_ns,
                    },
                );
            }
            EventKind::UffdWaitEnd { .. } | EventKind::UffdIoctlEnd { .. } => self.unblock(tid),
            EventKind::UffdIoctlBegin { uffd, op } => {
                self.unblock(tid);
                let ctx = self.uffds.entry(*uffd).or_default();
                match op {
                    UffdOp::Api | UffdOp::Register | UffdOp::Unregister => {
                        ctx.setup.insert(tid);
                    }
                    _ => {
                        ctx.resolvers.insert(tid);
                    }
                }
            }
            EventKind::UffdHandlerSeen { uffd, resolver } => {
                let ctx = self.uffds.entry(*uffd).or_default();
                if *resolver {
                    ctx.resolvers.insert(tid);
                } else {
                    ctx.setup.insert(tid);
                }
            }
            EventKind::UffdHeld { uffd } => {
                self.uffds.entry(*uffd).or_default().holders.insert(tid);
            }
            _ => {}
        }
    }

    /// userfaultfd contexts nobody serves or waits on are forgotten, as the kernel frees them.
    pub(super) fn gc_uffds(&mut self) {
        let waited: BTreeSet<Addr> = self
            .blocked
            .iter()
            .filter_map(|t| match self.tasks.get(t)?.blocked {
                Some(Blocked::Uffd { uffd, .. }) => Some(uffd),
                _ => None,
            })
            .collect();
        self.uffds.retain(|addr, ctx| {
            !ctx.resolvers.is_empty()
                || !ctx.setup.is_empty()
                || !ctx.holders.is_empty()
                || waited.contains(addr)
        });
    }
}
