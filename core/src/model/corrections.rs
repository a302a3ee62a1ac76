//! Corrections: what a live source concluded from snapshots of the kernel's state (a wait or
//! hold that ended unseen, a task or process gone, the read holders inferred, a loss and its
//! confirmation), applied as events so a replay of them decides as the live run did.

use super::{Model, Tid};
use crate::event::{Addr, Event, EventKind, InferredReader};

impl Model {
    /// Applies `ev` if it is a correction; returns whether it was.
    pub(super) fn correct(&mut self, ev: &Event) -> bool {
        match &ev.kind {
            // From a task (`tid` set): only that task's state may rest on the lost records.
            EventKind::Lost { .. } if ev.tid != 0 => {
                if self.tasks.contains_key(&ev.tid) {
                    self.unknown.insert(ev.tid);
                }
            }
            EventKind::Lost { .. } => self.lost(),
            EventKind::Confirmed {} => self.unknown.clear(),
            // Changes nothing in the model: the engine runs its timed detectors on it.
            EventKind::Snapshot {} | EventKind::Journal {} | EventKind::LockProfile { .. } => {}
            EventKind::WaitEnded {} => self.end_wait(ev.tid),
            EventKind::HoldEnded { mm } => self.end_hold(ev.tid, *mm),
            EventKind::TaskGone {} => self.forget_task(ev.tid),
            EventKind::ProcessGone {} => self.process_exit(ev.pid),
            EventKind::ReadHoldersInferred { mm, readers } => {
                self.infer_readers(*mm, readers, ev.ts_ns)
            }
            _ => return false,
        }
        true
    }

    /// Records were lost: every task with state may have changed unseen.
    pub(super) fn lost(&mut self) {
        let stateful = self
            .tasks
            .values()
            .filter(|t| t.blocked.is_some() || !t.holds.is_empty())
            .map(|t| t.tid);
        self.unknown.extend(stateful);
    }

    /// Evidence from outside the event stream (a kernel snapshot) says `tid` no longer waits:
    /// the wait ends without an acquisition.
    pub(super) fn end_wait(&mut self, tid: Tid) {
        if self.blocked.contains(&tid) {
            self.repairs += 1;
            self.unblock(tid);
            self.gc_uffds();
        }
    }

    /// Evidence from outside the event stream says `tid` no longer holds `mm`'s lock.
    pub(super) fn end_hold(&mut self, tid: Tid, mm: Addr) {
        if self
            .tasks
            .get(&tid)
            .is_some_and(|t| t.holds.contains_key(&mm))
        {
            self.repairs += 1;
            self.drop_hold(tid, mm);
            self.gc_mm(mm);
        }
    }

    /// The task is gone (its exit record was lost, or it is known only to have existed).
    pub(super) fn forget_task(&mut self, tid: Tid) {
        if self.tasks.contains_key(&tid) {
            self.exit(tid, false);
        }
    }

    /// Every task of process `pid` is gone, and with them the process's hold on its mm: lock
    /// tables it owned that nobody else uses are dropped, so a reused address starts clean.
    pub(super) fn process_exit(&mut self, pid: u32) {
        let tids: Vec<Tid> = self
            .tasks
            .values()
            .filter(|t| t.pid == pid)
            .map(|t| t.tid)
            .collect();
        for tid in tids {
            self.exit(tid, false);
        }
        self.user_lock_takers.forget_process(pid);
        self.owner_gone(pid);
    }

    /// Replaces the inferred read holders of `mm` with `readers`. Tasks with a real hold on
    /// `mm` keep it and are not inferred again.
    pub(super) fn infer_readers(&mut self, mm: Addr, readers: &[InferredReader], ts_ns: u64) {
        for r in readers {
            self.touch_task(r.tid, r.pid, r.comm.as_deref(), ts_ns);
        }
        let lock = self.mm_locks.entry(mm).or_default();
        lock.inferred_readers = readers
            .iter()
            .filter(|r| !lock.readers.contains_key(&r.tid))
            .map(|r| (r.tid, r.evidence.clone()))
            .collect();
        self.gc_mm(mm);
    }
}
