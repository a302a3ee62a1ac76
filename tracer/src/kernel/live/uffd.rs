//! userfaultfd in the live feed: waits a signal ended (no wake-up marks them), handlers whose
//! first ioctl record was lost (from the kernel's handler table), and descriptors found by the
//! agent's scan of open files.

use super::LiveFeed;
use crate::{
    core::detect::Alert,
    core::event::{Addr, Event, EventKind},
    core::model::Blocked,
    kernel::procfs,
};

impl LiveFeed {
    /// A signal, not a handler, can end a userfaultfd wait, and then no wake-up marks its end:
    /// ask the scheduler (`wchan`) whether each such waiter still sleeps in handle_userfault.
    pub(super) fn uffd_waits_ended(&mut self, now_ns: u64) -> Vec<Alert> {
        let ended: Vec<(u32, u32, Addr)> = self
            .engine
            .model()
            .blocked
            .iter()
            .filter_map(|&tid| {
                let t = self.engine.model().task(tid)?;
                match t.blocked {
                    Some(Blocked::Uffd { uffd, .. }) => Some((tid, t.pid, uffd)),
                    _ => None,
                }
            })
            .filter(|(tid, pid, _)| {
                // Unreadable (gone): left to reclaiming, which drops the task with its wait.
                procfs::wchan_of(*pid, *tid).is_some_and(|w| w != "handle_userfault")
            })
            .collect();
        let mut alerts = Vec::new();
        for (tid, pid, uffd) in ended {
            alerts.extend(self.apply(&Event {
                ts_ns: now_ns,
                tid,
                pid,
                comm: None,
                kind: EventKind::UffdWaitEnd { uffd },
            }));
        }
        alerts
    }

    /// The kernel's handler table, snapshotted at `now_ns`: (context, tid, role). Handlers the
    /// model does not know in that role (their first ioctl record was lost) are restored as
    /// `uffd_handler_seen` events. Returns the entries of tasks gone from the host, for the
    /// caller to delete from the kernel's table (the kernel cannot find them at exit).
    pub fn on_uffd_handlers(
        &mut self,
        table: &[(u64, u32, u64)],
        now_ns: u64,
    ) -> (Vec<Alert>, Vec<(u64, u32)>) {
        let mut alerts = Vec::new();
        let mut gone = Vec::new();
        for &(ctx, tid, role) in table {
            let uffd = Addr(ctx);
            let resolver = role >= tracer_common::handler_role::RESOLVER;
            let known = self.engine.model().uffds.get(&uffd).is_some_and(|c| {
                c.resolvers.contains(&tid) || (!resolver && c.setup.contains(&tid))
            });
            if known {
                continue;
            }
            if !(self.alive)(tid) {
                gone.push((ctx, tid));
                continue;
            }
            let (pid, comm) = match self.engine.model().task(tid) {
                Some(t) => (t.pid, t.comm.clone()),
                None => match procfs::identify(tid) {
                    Some(found) => found,
                    None => {
                        gone.push((ctx, tid));
                        continue;
                    }
                },
            };
            alerts.extend(self.apply(&Event {
                ts_ns: now_ns,
                tid,
                pid,
                comm,
                kind: EventKind::UffdHandlerSeen { uffd, resolver },
            }));
        }
        (alerts, gone)
    }

    /// What the agent's userfaultfd scan found: the descriptors, as (holding process,
    /// context), and the waits it wrote into the kernel's task state, as (tid, pid, context,
    /// since).
    /// - each (process, context) pair the model does not know yet becomes a `uffd_held` event
    ///   of the process's leader, so a context whose setup ioctls went unseen still has
    ///   handler candidates;
    /// - such a waiter began its wait before the kernel side knew the context (its sleep was
    ///   not seen): its wait begins at the scan, the earliest time known, and ends like any
    ///   other (the handler's wake-up, or `uffd_waits_ended`).
    pub fn on_uffd_scan(
        &mut self,
        held: &[(u32, u64)],
        waiters: &[(u32, u32, u64, u64)],
        now_ns: u64,
    ) -> Vec<Alert> {
        let mut alerts = Vec::new();
        for &(tid, pid, ctx, since_ns) in waiters {
            let blocked = self
                .engine
                .model()
                .task(tid)
                .is_some_and(|t| t.blocked.is_some());
            if blocked {
                continue;
            }
            alerts.extend(self.apply(&Event {
                ts_ns: since_ns,
                tid,
                pid,
                comm: procfs::comm_of(tid),
                kind: EventKind::UffdWaitBegin {
                    uffd: Addr(ctx),
                    addr: Addr(0),
                },
            }));
        }
        for &(pid, ctx) in held {
            let uffd = Addr(ctx);
            let known = self
                .engine
                .model()
                .uffds
                .get(&uffd)
                .is_some_and(|c| c.holders.contains(&pid));
            if known || !(self.alive)(pid) {
                continue;
            }
            alerts.extend(self.apply(&Event {
                ts_ns: now_ns,
                tid: pid,
                pid,
                comm: procfs::comm_of(pid),
                kind: EventKind::UffdHeld { uffd },
            }));
        }
        alerts
    }
}
