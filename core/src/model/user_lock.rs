//! The user-lock family: futex sleeps (`futex_wait_begin` / `_end`). A sleep on a lock with
//! an owner (a PI futex, glibc's mutex or rwlock) blocks the task on that lock; a sleep on a
//! word with no owner semantics (a condition variable, a barrier, a semaphore) waits for an
//! event, not a lock: the task is not blocked on anything the graph could follow.

use super::{Blocked, Model};
use crate::event::{Addr, Event, EventKind};

impl Model {
    pub(super) fn apply_user_lock(&mut self, ev: &Event) {
        let tid = ev.tid;
        match &ev.kind {
            EventKind::FutexWaitBegin {
                futex,
                lock,
                lock_addr,
                owner,
                name,
                ..
            } => {
                if !lock.has_owner() {
                    self.unblock(tid);
                    return;
                }
                self.block(
                    tid,
                    Blocked::UserLock {
                        lock: lock_addr.unwrap_or(*futex),
                        futex: *futex,
                        pid: ev.pid,
                        lock_type: *lock,
                        owner: owner.as_ref().map(|o| o.tid),
                        exact: owner.as_ref().is_some_and(|o| o.exact),
                        evidence: owner.as_ref().map(|o| o.evidence.clone()),
                        name: name.clone(),
                        since_ns: ev.ts_ns,
                    },
                );
            }
            EventKind::FutexWaitEnd { futex, .. } => {
                if matches!(self.blocked(tid), Some(Blocked::UserLock { futex: f, .. }) if f == futex)
                {
                    self.unblock(tid);
                }
            }
            _ => {}
        }
    }

    /// The name a waiter gave user lock `lock` of process `pid` (its symbol, or file and
    /// offset), if any waiter did.
    pub fn user_lock_name(&self, pid: u32, lock: Addr) -> Option<&str> {
        self.blocked.iter().find_map(|t| match self.blocked(*t)? {
            Blocked::UserLock {
                lock: l,
                pid: p,
                name: Some(n),
                ..
            } if *l == lock && *p == pid => Some(n.as_str()),
            _ => None,
        })
    }
}
