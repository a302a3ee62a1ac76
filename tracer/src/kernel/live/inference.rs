//! Read holders in the default mode: nothing sees an uncontended `mmap_lock` acquisition, so
//! the read holders a contended lock waits for are inferred at each snapshot (the rwsem owner
//! word's last reader when its kernel stack confirms it, else threads whose kernel stack is
//! inside a function that holds the lock for read, else the owner word's last reader alone),
//! labelled as inferred, and replaced by the next snapshot's inference.

use std::collections::{BTreeMap, BTreeSet};

use tracer_common::TaskState;

use super::LiveFeed;
use crate::{
    core::detect::Alert,
    core::event::{Addr, EventKind, InferredReader, LockMode},
    kernel::procfs,
};

const HINT_EVIDENCE: &str = "the rwsem owner word names it as the last reader to take the lock";
const HINT_AND_STACK_EVIDENCE: &str =
    "the rwsem owner word names it as the last reader, and its kernel stack is inside a function that holds mmap_lock for read";
const STACK_EVIDENCE: &str = "its kernel stack is inside a function that holds mmap_lock for read";

fn reader(tid: u32, pid: u32, evidence: &str) -> InferredReader {
    InferredReader {
        tid,
        pid,
        comm: procfs::comm_of(tid),
        evidence: evidence.to_owned(),
    }
}

impl LiveFeed {
    /// Infers the read holders of every contended `mmap_lock` whose holders nobody saw
    /// acquiring it, and drops the inference of locks nobody waits for any more.
    pub(super) fn infer_read_holders(
        &mut self,
        states: &[(u32, TaskState)],
        now_ns: u64,
    ) -> Vec<Alert> {
        // The last reader named by the owner word when each waiter began to wait.
        let mut hints: BTreeMap<Addr, BTreeSet<u32>> = BTreeMap::new();
        for (tid, st) in states {
            if st.wait_mm != 0 && st.lock_owner_reader != 0 && ![0, *tid].contains(&st.lock_owner) {
                hints
                    .entry(Addr(st.wait_mm))
                    .or_default()
                    .insert(st.lock_owner);
            }
        }
        let model = self.engine.model();
        let mut work: Vec<(Addr, Vec<u32>)> = Vec::new();
        for (mm, lock) in &model.mm_locks {
            let waited_for = lock.waiters.values().any(|(m, _)| *m == LockMode::Write)
                || !lock.waiters.is_empty() && lock.writer.is_none();
            if !waited_for || !lock.readers.is_empty() || lock.writer.is_some() {
                if !lock.inferred_readers.is_empty() {
                    work.push((*mm, Vec::new()));
                }
                continue;
            }
            let waiters: Vec<u32> = lock.waiters.keys().copied().collect();
            work.push((*mm, waiters));
        }
        let mut alerts = Vec::new();
        for (mm, waiters) in work {
            let readers = if waiters.is_empty() {
                Vec::new()
            } else {
                self.read_holders_of(mm, &waiters, hints.get(&mm))
            };
            // Only a change is an event: a recording of a steady convoy stays small.
            let unchanged = self.engine.model().mm_locks.get(&mm).is_some_and(|l| {
                l.inferred_readers.len() == readers.len()
                    && readers
                        .iter()
                        .all(|r| l.inferred_readers.get(&r.tid) == Some(&r.evidence))
            });
            if unchanged || (readers.is_empty() && !self.engine.model().mm_locks.contains_key(&mm))
            {
                continue;
            }
            alerts.extend(self.correct(
                0,
                0,
                now_ns,
                EventKind::ReadHoldersInferred { mm, readers },
            ));
        }
        alerts
    }

    /// Candidates for the read holders of `mm`, each with its evidence.
    ///
    /// The owner word names the *last* reader to take the lock, which may have released it
    /// since: another thread's page fault after the real holder took the lock (every fault
    /// takes it for read on kernels without per-VMA locks) leaves that thread's name there. So
    /// a hint is trusted alone only when no thread's stack shows a read hold; a stack inside a
    /// function that holds the lock for read is the stronger evidence.
    fn read_holders_of(
        &self,
        mm: Addr,
        waiters: &[u32],
        hints: Option<&BTreeSet<u32>>,
    ) -> Vec<InferredReader> {
        let in_holder_frame = |pid: u32, tid: u32| {
            procfs::stack(pid, tid)
                .iter()
                .any(|f| procfs::READ_HOLDER_FRAMES.contains(&f.as_str()))
        };
        let mut confirmed = Vec::new();
        let mut unconfirmed = Vec::new();
        for &h in hints.into_iter().flatten() {
            if waiters.contains(&h) {
                continue;
            }
            let Some(pid) = procfs::tgid_of(h) else {
                continue; // gone: it holds nothing
            };
            if in_holder_frame(pid, h) {
                confirmed.push(reader(h, pid, HINT_AND_STACK_EVIDENCE));
            } else {
                unconfirmed.push(reader(h, pid, HINT_EVIDENCE));
            }
        }
        if !confirmed.is_empty() {
            return confirmed;
        }
        // Threads of the processes involved whose stack shows a read hold.
        let model = self.engine.model();
        let pids: BTreeSet<u32> = model
            .mm_locks
            .get(&mm)
            .and_then(|l| l.owner_pid)
            .into_iter()
            .chain(waiters.iter().filter_map(|w| model.task(*w).map(|t| t.pid)))
            .collect();
        let mut by_stack = Vec::new();
        for pid in pids {
            for tid in procfs::threads(pid) {
                if !waiters.contains(&tid) && in_holder_frame(pid, tid) {
                    by_stack.push(reader(tid, pid, STACK_EVIDENCE));
                }
            }
        }
        if by_stack.is_empty() {
            unconfirmed
        } else {
            by_stack
        }
    }
}
