//! The `mmap_lock` family: acquisitions, holds and releases, seen through the mmap_lock
//! tracepoints or (a writer) through a contended waiter's read of the rwsem owner word.

use super::{Blocked, Hold, HoldSeen, Model, Notice, Tid};
use crate::event::{Addr, Event, EventKind, LockMode};

impl Model {
    /// `mmap_lock_start`, `_acquire`, `_release`: the mmap_lock tracepoints (detail `holders`
    /// and `full`, and every recording).
    pub(super) fn apply_mmap_lock(&mut self, ev: &Event) -> Option<Notice> {
        let tid = ev.tid;
        match &ev.kind {
            EventKind::MmapLockStart { mm, mode, mm_pid } => {
                self.note_owner(*mm, ev.pid, *mm_pid);
                let recursive = *mode == LockMode::Read
                    && self
                        .mm_locks
                        .get(mm)
                        .is_some_and(|l| l.readers.contains_key(&tid));
                self.block(
                    tid,
                    Blocked::MmapLock {
                        mm: *mm,
                        mode: *mode,
                        since_ns: ev.ts_ns,
                    },
                );
                if recursive {
                    return Some(Notice::RecursiveRead {
                        tid,
                        mm: *mm,
                        ts_ns: ev.ts_ns,
                    });
                }
            }
            EventKind::MmapLockAcquire {
                mm,
                mode,
                success,
                mm_pid,
            } => {
                self.unblock(tid);
                if *success {
                    self.note_owner(*mm, ev.pid, *mm_pid);
                    self.acquired(tid, *mm, *mode, ev.ts_ns);
                }
                self.gc_mm(*mm);
            }
            EventKind::MmapLockRelease { mm, mode, .. } => {
                self.unblock(tid);
                self.released(tid, *mm, *mode);
                self.gc_mm(*mm);
            }
            _ => {}
        }
        None
    }

    /// Records who owns `mm`. A claim by another process while the recorded owner has no task
    /// left means the address was freed and reused: the new mm starts with a clean table.
    pub(super) fn note_owner(&mut self, mm: Addr, ev_pid: u32, mm_pid: Option<u32>) {
        let claimed = mm_pid.unwrap_or(ev_pid);
        let reused = self
            .mm_locks
            .get(&mm)
            .is_some_and(|l| l.owner_gone && l.owner_pid != Some(claimed));
        if reused {
            self.forget_mm(mm);
        }
        let lock = self.mm_locks.entry(mm).or_default();
        if lock.owner_pid != Some(claimed) {
            lock.owner_gone = false;
        }
        lock.owner_pid = Some(claimed);
    }

    /// Process `pid` is gone: the mms it owned end with it (dropped now when unused).
    pub(super) fn owner_gone(&mut self, pid: u32) {
        let owned: Vec<Addr> = self
            .mm_locks
            .iter_mut()
            .filter(|(_, l)| l.owner_pid == Some(pid))
            .map(|(mm, l)| {
                l.owner_gone = true;
                *mm
            })
            .collect();
        for mm in owned {
            self.gc_mm(mm);
        }
    }

    /// Drops `mm`'s lock table: its waiters wait for nothing known, its holders hold nothing.
    pub(super) fn forget_mm(&mut self, mm: Addr) {
        let Some(lock) = self.mm_locks.remove(&mm) else {
            return;
        };
        let waiters = lock.waiters.keys();
        let holders = lock
            .readers
            .keys()
            .chain(lock.writer.as_ref().map(|(w, _)| w));
        for &tid in waiters.chain(holders) {
            self.repairs += 1;
            if let Some(t) = self.tasks.get_mut(&tid) {
                t.holds.remove(&mm);
                if matches!(t.blocked, Some(Blocked::MmapLock { mm: m, .. }) if m == mm) {
                    t.blocked = None;
                    self.blocked.remove(&tid);
                }
            }
        }
    }

    /// Drops `tid`'s hold on `mm` entirely (evidence says it is gone).
    pub(super) fn drop_hold(&mut self, tid: Tid, mm: Addr) {
        if let Some(t) = self.tasks.get_mut(&tid) {
            t.holds.remove(&mm);
        }
        if let Some(l) = self.mm_locks.get_mut(&mm) {
            l.readers.remove(&tid);
            if l.writer.is_some_and(|(w, _)| w == tid) {
                l.writer = None;
            }
        }
    }

    pub(super) fn acquired(&mut self, tid: Tid, mm: Addr, mode: LockMode, ts: u64) {
        let current = self.tasks.get(&tid).and_then(|t| t.holds.get(&mm)).copied();
        let lock = self.mm_locks.entry(mm).or_default();
        lock.granted_ns = lock.granted_ns.max(ts);
        // Real evidence replaces inference: this task's own, and a writer's for everyone.
        lock.inferred_readers.remove(&tid);
        if mode == LockMode::Write {
            lock.inferred_readers.clear();
        }
        match (mode, current) {
            // Downgrade: the write hold continues as a read hold from the same moment.
            (
                LockMode::Read,
                Some(Hold {
                    mode: LockMode::Write,
                    since_ns,
                    ..
                }),
            ) => {
                lock.writer = None;
                lock.readers.insert(tid, since_ns);
                if let Some(h) = self.tasks.get_mut(&tid).and_then(|t| t.holds.get_mut(&mm)) {
                    h.mode = LockMode::Read;
                    h.seen = HoldSeen::Acquired;
                }
            }
            (LockMode::Read, Some(_)) => {
                if let Some(h) = self.tasks.get_mut(&tid).and_then(|t| t.holds.get_mut(&mm)) {
                    h.depth += 1;
                }
            }
            (LockMode::Read, None) => {
                // A writer we believed in must be gone: readers and a writer never coexist.
                if let Some((w, _)) = lock.writer {
                    if w != tid {
                        self.repairs += 1;
                        self.drop_hold(w, mm);
                    }
                }
                self.mm_locks.entry(mm).or_default().readers.insert(tid, ts);
                self.insert_hold(tid, mm, LockMode::Read, ts);
            }
            (LockMode::Write, _) => self.become_writer(tid, mm, ts, HoldSeen::Acquired),
        }
    }

    pub(super) fn insert_hold(&mut self, tid: Tid, mm: Addr, mode: LockMode, ts: u64) {
        if let Some(t) = self.tasks.get_mut(&tid) {
            t.holds.insert(
                mm,
                Hold {
                    mode,
                    since_ns: ts,
                    depth: 1,
                    seen: HoldSeen::Acquired,
                },
            );
        }
    }

    /// A waiter on `mm` found `writer` in the rwsem's owner word: `writer` holds the lock for
    /// write now. Nobody else holds it then, and a different writer believed earlier has gone.
    pub(super) fn owner_word_writer(&mut self, writer: Tid, mm: Addr, waiter_pid: u32, ts: u64) {
        let already = self
            .tasks
            .get(&writer)
            .and_then(|t| t.holds.get(&mm))
            .is_some_and(|h| h.mode == LockMode::Write);
        let stale_word = self.mm_locks.get(&mm).is_some_and(|l| ts < l.granted_ns);
        if already || stale_word {
            return;
        }
        if !self.tasks.contains_key(&writer) {
            // Not seen yet: a thread of the process owning the mm (a writer of a foreign mm is
            // rare), the waiter's when the owner is not known. Its own first record corrects it.
            let pid = self
                .mm_locks
                .get(&mm)
                .and_then(|l| l.owner_pid)
                .unwrap_or(waiter_pid);
            self.touch_task(writer, pid, None, ts);
        }
        self.mm_locks
            .entry(mm)
            .or_default()
            .inferred_readers
            .clear();
        self.become_writer(writer, mm, ts, HoldSeen::OwnerWord);
    }

    /// `tid` holds `mm`'s lock for write from `ts`: nobody else can hold it, so any holder
    /// whose release was missed is forgotten.
    pub(super) fn become_writer(&mut self, tid: Tid, mm: Addr, ts: u64, seen: HoldSeen) {
        let lock = self.mm_locks.entry(mm).or_default();
        let stale: Vec<Tid> = lock
            .readers
            .keys()
            .copied()
            .chain(lock.writer.map(|(w, _)| w))
            .filter(|&t| t != tid)
            .collect();
        for t in stale {
            self.repairs += 1;
            self.drop_hold(t, mm);
        }
        let lock = self.mm_locks.entry(mm).or_default();
        lock.readers.remove(&tid);
        lock.writer = Some((tid, ts));
        if let Some(t) = self.tasks.get_mut(&tid) {
            t.holds.insert(
                mm,
                Hold {
                    mode: LockMode::Write,
                    since_ns: ts,
                    depth: 1,
                    seen,
                },
            );
        }
    }

    /// A waiter on `mm` got the lock (its contention ended without error): a writer known only
    /// from the owner word has released it.
    pub(super) fn granted_to(&mut self, tid: Tid, mm: Addr, ts: u64) {
        if let Some(l) = self.mm_locks.get_mut(&mm) {
            l.granted_ns = l.granted_ns.max(ts);
        }
        let owner_word_writer = self
            .mm_locks
            .get(&mm)
            .and_then(|l| l.writer)
            .and_then(|(w, _)| {
                let h = self.tasks.get(&w)?.holds.get(&mm)?;
                (w != tid && h.seen == HoldSeen::OwnerWord).then_some(w)
            });
        if let Some(w) = owner_word_writer {
            self.drop_hold(w, mm);
        }
    }

    pub(super) fn released(&mut self, tid: Tid, mm: Addr, mode: LockMode) {
        let held = self.tasks.get_mut(&tid).and_then(|t| t.holds.get_mut(&mm));
        match held {
            Some(h) if h.depth > 1 => h.depth -= 1,
            Some(_) => self.drop_hold(tid, mm),
            None => {
                // Not this task's hold. A write release proves the writer is gone. A read
                // release by a non-owner (mmap_read_unlock_non_owner, typically ending a trylock
                // taken in irq context on behalf of whatever task was interrupted) most likely
                // ends the most recent read hold; with none known, it ended a hold from before
                // the trace.
                let Some(lock) = self.mm_locks.get(&mm) else {
                    return;
                };
                let victim = match mode {
                    LockMode::Write => lock.writer.map(|(w, _)| w),
                    LockMode::Read => lock
                        .readers
                        .iter()
                        .max_by_key(|(_, since)| **since)
                        .map(|(t, _)| *t),
                };
                if let Some(v) = victim {
                    self.repairs += 1;
                    self.drop_hold(v, mm);
                }
            }
        }
    }
}
