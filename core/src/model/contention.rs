//! The contention family: `lock_wait_begin` / `_end` from `lock:contention_begin/end`, on
//! kernel locks, and on an `mmap_lock` (the default mode's only view of its slow path).

use super::{Blocked, Model};
use crate::event::{Event, EventKind, LockMode, LockType};

impl Model {
    pub(super) fn apply_contention(&mut self, ev: &Event) {
        let tid = ev.tid;
        match &ev.kind {
            // The slow path of an mmap_lock attempt seen through lock contention (the default
            // mode's only view of it): an mmap_lock wait, unless an attempt is already known.
            EventKind::LockWaitBegin {
                lock_type: lock_type @ (LockType::RwsemRead | LockType::RwsemWrite),
                mm: Some(mm),
                owner_tid,
                ..
            } => {
                if let Some(w) = owner_tid.filter(|&w| w != tid && w != 0) {
                    self.owner_word_writer(w, *mm, ev.pid, ev.ts_ns);
                }
                let known = matches!(
                    self.blocked(tid),
                    Some(Blocked::MmapLock { mm: m, .. }) if m == mm
                );
                if !known {
                    self.block(
                        tid,
                        Blocked::MmapLock {
                            mm: *mm,
                            mode: LockMode::from_write(*lock_type == LockType::RwsemWrite),
                            since_ns: ev.ts_ns,
                        },
                    );
                }
            }
            EventKind::LockWaitEnd {
                mm: Some(mm), ret, ..
            } => {
                let ends_it = matches!(
                    self.blocked(tid),
                    Some(Blocked::MmapLock { mm: m, .. }) if m == mm
                );
                if ends_it {
                    self.unblock(tid);
                }
                if *ret == 0 {
                    self.granted_to(tid, *mm, ev.ts_ns);
                    self.gc_mm(*mm);
                }
            }
            EventKind::LockWaitBegin {
                lock,
                lock_type,
                owner_tid,
                ..
            } => {
                let nested_in_mmap = matches!(self.blocked(tid), Some(Blocked::MmapLock { .. }))
                    && matches!(lock_type, LockType::RwsemRead | LockType::RwsemWrite);
                // The rwsem slow path of an mmap_lock attempt reports its own contention: the
                // same wait, already modelled with better knowledge (holders, queue order).
                if !nested_in_mmap {
                    self.block(
                        tid,
                        Blocked::KernelLock {
                            lock: *lock,
                            lock_type: *lock_type,
                            owner: *owner_tid,
                            since_ns: ev.ts_ns,
                        },
                    );
                }
            }
            EventKind::LockWaitEnd { lock, .. } => {
                let ends_it = matches!(
                    self.blocked(tid),
                    Some(Blocked::KernelLock { lock: l, .. }) if l == lock
                );
                if ends_it {
                    self.unblock(tid);
                }
            }
            _ => {}
        }
    }
}
