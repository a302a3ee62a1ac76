//! The user-lock family: futex sleeps (`futex_wait_begin` / `_end`). A sleep on a lock with
//! an owner (a PI futex, glibc's mutex or rwlock) blocks the task on that lock; a sleep on a
//! word with no owner semantics (a condition variable, a barrier, a semaphore) waits for an
//! event, not a lock: the task is not blocked on anything the graph could follow.

use std::collections::HashMap;

use super::{Blocked, Model, Tid};
use crate::event::{Addr, Event, EventKind, FutexOp, FutexOutcome, UserLockKind, UserLockOwner};

/// How many locks' last takers are kept (the oldest go first): enough for every lock contended
/// long enough to stream on a busy host, a bound on what a process creating locks costs.
const MAX_TAKERS: usize = 4096;

/// Who was last seen taking each user-space lock through the kernel: a waiter on a glibc mutex
/// (or an rwlock's writer) woken by a futex wake retries the word and takes the lock (or sleeps
/// again, which a later sleep shows). Uncontended takes and releases never enter the kernel, so
/// this is only ever a corroboration of what the lock's own word says, never an owner alone:
/// an owner read from the word (the waiter's end) and a take seen by the tracer (the owner's
/// end) make an owner seen from both ends.
#[derive(Debug, Default)]
pub(super) struct Takers {
    /// (pid, lock) → (taker, when it was woken to take it).
    by_lock: HashMap<(u32, Addr), (Tid, u64)>,
}

impl Takers {
    fn took(&mut self, pid: u32, lock: Addr, tid: Tid, ts_ns: u64) {
        if self.by_lock.len() >= MAX_TAKERS && !self.by_lock.contains_key(&(pid, lock)) {
            // The older half goes at once: one pass per MAX_TAKERS / 2 takes, not one per take.
            let mut times: Vec<u64> = self.by_lock.values().map(|&(_, ts)| ts).collect();
            let mid = times.len() / 2;
            let (_, &mut cutoff, _) = times.select_nth_unstable(mid);
            self.by_lock.retain(|_, &mut (_, ts)| ts > cutoff);
        }
        self.by_lock.insert((pid, lock), (tid, ts_ns));
    }

    /// `tid` let `lock` go (it woke a waiter of it) or does not hold it (it asks for it).
    fn let_go(&mut self, pid: u32, lock: Addr, tid: Tid) {
        if self
            .by_lock
            .get(&(pid, lock))
            .is_some_and(|(t, _)| *t == tid)
        {
            self.by_lock.remove(&(pid, lock));
        }
    }

    pub(super) fn forget_task(&mut self, tid: Tid) {
        if !self.by_lock.is_empty() {
            self.by_lock.retain(|_, (t, _)| *t != tid);
        }
    }

    pub(super) fn forget_process(&mut self, pid: u32) {
        if !self.by_lock.is_empty() {
            self.by_lock.retain(|(p, _), _| *p != pid);
        }
    }
}

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
                // A task asking for a lock does not hold it.
                self.user_lock_takers
                    .let_go(ev.pid, lock_addr.unwrap_or(*futex), tid);
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
            EventKind::FutexWaitEnd {
                futex,
                outcome,
                waker_tid,
            } => {
                let Some(&Blocked::UserLock {
                    lock,
                    pid,
                    lock_type,
                    ..
                }) = self
                    .blocked(tid)
                    .filter(|b| matches!(b, Blocked::UserLock { futex: f, .. } if f == futex))
                else {
                    return;
                };
                self.unblock(tid);
                if *outcome != FutexOutcome::Woken {
                    return;
                }
                // The waker was releasing the lock (glibc's unlock wakes a waiter); the woken
                // waiter of a mutex or a writer retries it and takes it.
                if let Some(w) = waker_tid {
                    self.user_lock_takers.let_go(pid, lock, *w);
                }
                if matches!(
                    lock_type,
                    UserLockKind::PthreadMutex | UserLockKind::PthreadRwlockWrite
                ) {
                    self.user_lock_takers.took(pid, lock, tid, ev.ts_ns);
                }
            }
            _ => {}
        }
    }

    /// Whether `owner` was seen taking `lock` of process `pid` through the kernel no later than
    /// `by_ns`, and has not been seen letting it go since: the owner's end of an owner read from
    /// the lock's word.
    pub fn seen_taking_user_lock(&self, owner: Tid, pid: u32, lock: Addr, by_ns: u64) -> bool {
        self.user_lock_takers
            .by_lock
            .get(&(pid, lock))
            .is_some_and(|&(t, ts)| t == owner && ts <= by_ns)
    }

    /// The `futex_wait_begin` that puts `tid` in its current user-lock wait: applied again with
    /// a name or a re-read owner, it changes only those (the wait keeps its start).
    pub fn user_lock_wait_again(&self, tid: Tid) -> Option<Event> {
        let task = self.task(tid)?;
        let Some(Blocked::UserLock {
            lock,
            futex,
            pid,
            lock_type,
            owner,
            exact,
            evidence,
            name,
            since_ns,
        }) = &task.blocked
        else {
            return None;
        };
        Some(Event {
            ts_ns: *since_ns,
            tid,
            pid: *pid,
            comm: task.comm.clone(),
            kind: EventKind::FutexWaitBegin {
                futex: *futex,
                // The model keeps what the wait is, not the operation that made it.
                op: FutexOp::Wait,
                lock: *lock_type,
                lock_addr: (lock != futex).then_some(*lock),
                owner: owner.map(|tid| UserLockOwner {
                    tid,
                    exact: *exact,
                    evidence: evidence.clone().unwrap_or_default(),
                }),
                name: name.clone(),
            },
        })
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

#[cfg(test)]
mod tests {
    use super::{Takers, MAX_TAKERS};
    use crate::event::Addr;

    #[test]
    fn the_takers_stay_bounded_and_keep_the_newest() {
        let mut t = Takers::default();
        let n = MAX_TAKERS as u64 + 10;
        for i in 0..n {
            t.took(1, Addr(0x1000 + i * 64), 7, i);
        }
        assert!(t.by_lock.len() <= MAX_TAKERS, "{}", t.by_lock.len());
        assert!(t.by_lock.len() >= MAX_TAKERS / 2);
        assert_eq!(
            t.by_lock.get(&(1, Addr(0x1000 + (n - 1) * 64))),
            Some(&(7, n - 1))
        );
        assert!(
            !t.by_lock.contains_key(&(1, Addr(0x1000))),
            "the oldest went first"
        );
        t.forget_task(7);
        assert!(t.by_lock.is_empty());
    }
}
