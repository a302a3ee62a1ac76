//! Snapshots of the kernel's per-task map into the feed: what they show in progress is applied
//! with its real start, what they no longer show has ended, what the host let go is
//! reclaimed, and a loss counted before the walk is confirmed by it (see the rules in
//! `live`'s module doc).

use std::collections::{BTreeSet, HashMap};

use tracer_common::{lock_type, mode, FutexWait, TaskState, MM_OWN, MM_OWNER_UNKNOWN};

use super::{LiveFeed, Liveness};
use crate::{
    core::detect::Alert,
    core::event::{Addr, Event, EventKind, LockMode},
    core::model::{Blocked, HoldSeen},
    kernel::{probes::families::futex, procfs, user_locks},
};

/// The contention a snapshot shows for a task, as the record that would have said it.
fn contention(st: &TaskState, owner_tid: Option<u32>, mm: Option<Addr>) -> Option<EventKind> {
    let lock_type = crate::kernel::decode::lock_type_of(st.lock_type).ok()?;
    Some(EventKind::LockWaitBegin {
        lock: Addr(st.lock),
        lock_type,
        owner_tid,
        mm,
    })
}

/// The writer a contended `mmap_lock` waiter found in the rwsem's owner word, if any.
fn names_writer(st: &TaskState) -> Option<u32> {
    let rwsem = matches!(st.lock_type, lock_type::RWSEM_READ | lock_type::RWSEM_WRITE);
    (st.wait_mm != 0 && st.lock != 0 && rwsem && st.lock_owner != 0 && st.lock_owner_reader == 0)
        .then_some(st.lock_owner)
}
impl LiveFeed {
    /// Whose mm a waiter's `wait_mm` is, as `MmapLockStart::mm_pid` puts it: another
    /// process's pid, `None` for the waiter's own. The kernel side found it out on the slow
    /// path; guessing "the waiter's own" made a reader of another process's /proc/PID/maps the
    /// owner of that process's mm when a snapshot met it before the process's own waiters (a
    /// soak's stress-ng procfs readers "owned" a churned process's mm).
    fn wait_mm_pid(&self, st: &TaskState, mm: Addr) -> Option<u32> {
        match st.wait_mm_tgid {
            MM_OWN => None,
            MM_OWNER_UNKNOWN => self.known_owner(mm),
            tgid if tgid == st.tgid => None,
            tgid => Some(tgid),
        }
    }

    /// Applies a snapshot of the kernel's per-task map, taken (its walk started) at `taken_ns`,
    /// with the lost-record counter read just before it; then runs the timed detectors.
    pub fn on_snapshot(
        &mut self,
        states: &[(u32, TaskState)],
        futex_waits: &[(u32, FutexWait)],
        taken_ns: u64,
        lost_total: u64,
    ) -> Vec<Alert> {
        if self.last_snapshot_ns.is_some_and(|last| taken_ns < last) {
            return Vec::new();
        }
        // The walk is the authority for every task it covers, so it confirms the losses counted
        // before it. Records older than the walk may still wait in the ring buffer, though, and
        // a loss among them cannot be seen here: a task such a record touches after this walk
        // is unknown again until the next snapshot (see `on_record`).
        let noticed_now = self.note_lost(lost_total) > 0;
        self.lossy_walk_ns = noticed_now.then_some(taken_ns);
        let shown: HashMap<u32, &TaskState> = states.iter().map(|(t, s)| (*t, s)).collect();
        let sleeping: HashMap<u32, &FutexWait> = futex_waits.iter().map(|(t, w)| (*t, w)).collect();
        let mut alerts = self.end_what_the_kernel_no_longer_shows(&shown, &sleeping, taken_ns);
        alerts.extend(self.apply_shown(states, taken_ns));
        // Before anything reads a process's maps or memory: which of them would wait.
        crate::kernel::user_mem::set_contended(self.contended_processes());
        alerts.extend(self.apply_futex_waits(futex_waits, taken_ns));
        alerts.extend(self.recheck_user_owners(futex_waits, taken_ns));
        alerts.extend(self.name_user_locks());
        alerts.extend(self.reclaim(&shown, taken_ns));
        alerts.extend(self.infer_read_holders(states, taken_ns));
        self.exits.retain(|_, &mut e| e >= taken_ns);
        self.last_snapshot_ns = Some(taken_ns);
        alerts.extend(self.uffd_waits_ended(taken_ns));
        if self.engine.unconfirmed() {
            // Every loss so far was counted before the walk, which covered every task.
            alerts.extend(self.confirm(taken_ns));
        }
        // The timed detectors, now that every conclusion of the walk is in.
        alerts.extend(self.correct(0, 0, taken_ns, EventKind::Snapshot {}));
        alerts
    }

    /// Applies the waits and holds the snapshot shows past the streaming thresholds (whose ends
    /// the kernel will therefore stream), with their real start times.
    /// The snapshot is the authority: what began before it and is not in it has ended.
    fn end_what_the_kernel_no_longer_shows(
        &mut self,
        shown: &HashMap<u32, &TaskState>,
        sleeping: &HashMap<u32, &FutexWait>,
        taken_ns: u64,
    ) -> Vec<Alert> {
        let model = self.engine.model();
        let mut ended_waits = Vec::new();
        let mut ended_holds = Vec::new();
        for t in model.tasks.values() {
            let st = shown.get(&t.tid);
            if let Some(b) = &t.blocked {
                let still = match (b, st) {
                    // The futex table, not the per-task one, shows user-lock sleeps.
                    (
                        Blocked::UserLock {
                            futex, since_ns, ..
                        },
                        _,
                    ) => sleeping
                        .get(&t.tid)
                        .is_some_and(|w| w.uaddr == futex.0 && w.since_ns == *since_ns),
                    (_, None) => false,
                    (Blocked::MmapLock { mm, since_ns, .. }, Some(s)) => {
                        s.wait_mm == mm.0 && s.wait_since_ns == *since_ns
                    }
                    (Blocked::KernelLock { lock, .. }, Some(s)) => s.lock == lock.0,
                    // The kernel does not clear a wait a signal ended; `uffd_waits_ended`
                    // asks the scheduler about those.
                    (Blocked::Uffd { .. }, Some(s)) => s.uffd_ctx != 0,
                };
                if !still && b.since_ns() < taken_ns {
                    ended_waits.push((t.tid, t.pid));
                }
            }
            for (mm, h) in &t.holds {
                let still = match h.seen {
                    // The same hold, not merely one on the same mm: a kernel hold that began
                    // after the model's means the model's ended (its release record was lost)
                    // and this is a new one, which `apply_shown` adds with its own start.
                    HoldSeen::Acquired => st.is_some_and(|s| {
                        s.holds
                            .iter()
                            .any(|k| k.mm == mm.0 && k.since_ns <= h.since_ns)
                    }),
                    // Known only from a waiter's read of the owner word: it lasts while some
                    // waiter of that lock still names it.
                    HoldSeen::OwnerWord => shown
                        .values()
                        .any(|s| s.wait_mm == mm.0 && names_writer(s) == Some(t.tid)),
                };
                if !still && h.since_ns < taken_ns {
                    ended_holds.push((t.tid, t.pid, *mm));
                }
            }
        }
        let mut alerts = Vec::new();
        for (tid, pid) in ended_waits {
            alerts.extend(self.correct(tid, pid, taken_ns, EventKind::WaitEnded {}));
        }
        for (tid, pid, mm) in ended_holds {
            alerts.extend(self.correct(tid, pid, taken_ns, EventKind::HoldEnded { mm }));
        }
        alerts
    }

    /// Reclaims what the kernel has let go: tasks that carry nothing the graph needs, tasks
    /// gone from the host (the kernel's entry of a task can outlive it, showing a wait that
    /// never ends: observed under stress-ng), and processes gone from the host, with their
    /// tasks and their mm's identity. Only tasks with state cost a /proc lookup.
    fn reclaim(&mut self, shown: &HashMap<u32, &TaskState>, now_ns: u64) -> Vec<Alert> {
        let model = self.engine.model();
        let idle: Vec<(u32, u32)> = model
            .tasks
            .values()
            .filter(|t| {
                if model.is_idle(t.tid) {
                    shown.get(&t.tid).is_none_or(|s| s.uffd_ctx == 0)
                } else {
                    !(self.alive)(t.tid)
                }
            })
            .map(|t| (t.tid, t.pid))
            .collect();
        let mut pids: BTreeSet<u32> = model.pids().collect();
        pids.extend(model.mm_locks.values().filter_map(|l| l.owner_pid));
        let gone: Vec<u32> = pids.into_iter().filter(|&p| !(self.alive)(p)).collect();
        let mut alerts = Vec::new();
        for (tid, pid) in idle {
            alerts.extend(self.correct(tid, pid, now_ns, EventKind::TaskGone {}));
        }
        for pid in gone {
            self.cgroups.remove(&pid);
            alerts.extend(self.correct(pid, pid, now_ns, EventKind::ProcessGone {}));
        }
        alerts
    }

    /// Applies the futex sleeps on locks (a PI futex, glibc's mutex or rwlock) the snapshot
    /// shows past the wait threshold, with their real start: their owners are checked and
    /// their locks named now (/proc reads), once per sleep. Sleeps on words with no owner
    /// (condition variables, barriers, semaphores) are not waits on a lock: they cost no
    /// /proc read and never enter the model.
    fn apply_futex_waits(&mut self, waits: &[(u32, FutexWait)], taken_ns: u64) -> Vec<Alert> {
        let mut alerts = Vec::new();
        for (tid, w) in waits {
            let past = w.since_ns <= taken_ns && taken_ns - w.since_ns >= self.wait_threshold_ns;
            if !past || self.exits.get(tid).is_some_and(|&e| w.since_ns <= e) {
                continue;
            }
            let known = matches!(
                self.engine.model().blocked(*tid),
                Some(Blocked::UserLock { futex, since_ns, .. })
                    if futex.0 == w.uaddr && *since_ns == w.since_ns
            );
            if known || !futex::reading(w).is_some_and(|r| r.lock.has_owner()) {
                continue;
            }
            let ev = Event {
                ts_ns: w.since_ns,
                tid: *tid,
                pid: w.tgid,
                comm: procfs::comm_of(*tid),
                kind: user_locks::begin(w.tgid, *tid, w),
            };
            alerts.extend(self.apply(&ev));
        }
        alerts
    }

    /// Reads again the owner of the user locks whose owner is blocked itself (a chain, or a
    /// cycle in the making), at most `RECHECKS` per snapshot: an owner read when the waiter
    /// went to sleep goes stale when the lock changes hands while it sleeps (a mutex released
    /// to another waiter), and a stale edge could close a cycle that is not there. The read
    /// takes the process's `mmap_lock`: never in a process whose lock has waiters, and through
    /// `user_mem`, so a stuck read costs a name, not the agent.
    fn recheck_user_owners(&mut self, waits: &[(u32, FutexWait)], taken_ns: u64) -> Vec<Alert> {
        const RECHECKS: usize = 64;
        let model = self.engine.model();
        let due: Vec<(u32, FutexWait, u32)> = waits
            .iter()
            .filter_map(|(tid, w)| match model.blocked(*tid)? {
                Blocked::UserLock {
                    futex,
                    since_ns,
                    owner: Some(owner),
                    ..
                } if futex.0 == w.uaddr
                    && *since_ns == w.since_ns
                    && model.blocked(*owner).is_some()
                    // The set `on_snapshot` computed before the futex waits were applied.
                    && !crate::kernel::user_mem::contended(w.tgid) =>
                {
                    Some((*tid, *w, *owner))
                }
                _ => None,
            })
            .take(RECHECKS)
            .collect();
        let mut alerts = Vec::new();
        for (tid, w, before) in due {
            let sleep = futex::sleep_of(&w);
            let Some(now) = user_locks::owner_now(w.tgid, tid, &sleep) else {
                continue;
            };
            if now.as_ref().map(|o| o.tid) == Some(before) {
                continue;
            }
            let Some(mut ev) = self.engine.model().user_lock_wait_again(tid) else {
                continue;
            };
            if let EventKind::FutexWaitBegin { owner, .. } = &mut ev.kind {
                *owner = now;
            }
            log::debug!("user lock of task {tid}: owner re-read at {taken_ns}, was {before}");
            alerts.extend(self.apply(&ev));
        }
        alerts
    }

    /// The processes whose `mmap_lock` has waiters in the model: a read of their maps or
    /// memory would join the queue.
    fn contended_processes(&self) -> BTreeSet<u32> {
        self.engine
            .model()
            .mm_locks
            .values()
            .filter(|l| !l.waiters.is_empty())
            .filter_map(|l| l.owner_pid)
            .collect()
    }

    /// Names the user locks that went unnamed when their wait entered the model (the read
    /// timed out, or its lane was busy), a few per snapshot, as long as they are waited on.
    fn name_user_locks(&mut self) -> Vec<Alert> {
        const NAMINGS: usize = 16;
        let model = self.engine.model();
        let unnamed: Vec<Event> = model
            .blocked
            .iter()
            .filter_map(|&tid| {
                let ev = model.user_lock_wait_again(tid)?;
                match &ev.kind {
                    EventKind::FutexWaitBegin {
                        futex,
                        lock_addr,
                        name: None,
                        ..
                    } if !self
                        .unnamable
                        .contains(&(ev.pid, lock_addr.unwrap_or(*futex).0))
                        && !crate::kernel::user_mem::contended(ev.pid) =>
                    {
                        Some(ev)
                    }
                    _ => None,
                }
            })
            .take(NAMINGS)
            .collect();
        let mut alerts = Vec::new();
        for mut ev in unnamed {
            let EventKind::FutexWaitBegin {
                lock_addr,
                futex,
                name,
                ..
            } = &mut ev.kind
            else {
                continue;
            };
            let at = lock_addr.unwrap_or(*futex).0;
            let Some(found) = crate::kernel::user_symbols::name_of(ev.pid, at) else {
                if self.unnamable.len() >= 4096 {
                    self.unnamable.clear();
                }
                self.unnamable.insert((ev.pid, at));
                continue;
            };
            *name = Some(found);
            alerts.extend(self.apply(&ev));
        }
        alerts
    }

    fn apply_shown(&mut self, states: &[(u32, TaskState)], taken_ns: u64) -> Vec<Alert> {
        let mut alerts = Vec::new();
        for (tid, st) in states {
            // State from before the task's exit record cannot be in progress: the kernel drops
            // a task's entry at exit, so this is a stale read, or the tid was reused later.
            let exited = self.exits.get(tid).copied();
            // Only entries with something to apply cost a /proc lookup (most have nothing).
            let mut gone: Option<bool> = None;
            let mut is_gone = |alive: &Liveness| *gone.get_or_insert_with(|| !alive(*tid));
            let after_exit = |since: u64| exited.is_none_or(|e| since > e);
            let lock_mode = |m: u8| LockMode::from_write(m == mode::WRITE);
            let base = |ts_ns, kind| Event {
                ts_ns,
                tid: *tid,
                pid: st.tgid,
                comm: procfs::comm_of(*tid),
                kind,
            };
            let past =
                |since: u64, threshold: u64| since <= taken_ns && taken_ns - since >= threshold;
            for h in st.holds.iter().filter(|h| h.mm != 0) {
                let mm = Addr(h.mm);
                if past(h.since_ns, self.hold_threshold_ns)
                    && after_exit(h.since_ns)
                    && !self.holding(*tid, mm)
                    && !is_gone(&self.alive)
                {
                    let ev = base(
                        h.since_ns,
                        EventKind::MmapLockAcquire {
                            mm,
                            mode: lock_mode(h.mode),
                            success: true,
                            mm_pid: self.known_owner(mm),
                        },
                    );
                    alerts.extend(self.apply(&ev));
                }
            }
            // The contended rwsem of an mmap_lock attempt is that attempt (applied below).
            let mmap_attempt = st.wait_mm != 0
                && matches!(st.lock_type, lock_type::RWSEM_READ | lock_type::RWSEM_WRITE);
            if st.lock != 0
                && !mmap_attempt
                && past(st.lock_since_ns, self.wait_threshold_ns)
                && after_exit(st.lock_since_ns)
                && !matches!(
                    self.engine.model().task(*tid).and_then(|t| t.blocked.as_ref()),
                    Some(Blocked::KernelLock { lock, .. }) if lock.0 == st.lock
                )
                && !is_gone(&self.alive)
            {
                if let Some(kind) =
                    contention(st, (st.lock_owner != 0).then_some(st.lock_owner), None)
                {
                    alerts.extend(self.apply(&base(st.lock_since_ns, kind)));
                }
            }
            let mm = Addr(st.wait_mm);
            if st.wait_mm != 0
                && past(st.wait_since_ns, self.wait_threshold_ns)
                && after_exit(st.wait_since_ns)
                && !self.waiting_on(*tid, mm)
                && !is_gone(&self.alive)
            {
                let ev = base(
                    st.wait_since_ns,
                    EventKind::MmapLockStart {
                        mm,
                        mode: lock_mode(st.wait_mode),
                        mm_pid: self.wait_mm_pid(st, mm),
                    },
                );
                alerts.extend(self.apply(&ev));
            }
            // The writer its contention read in the owner word holds the lock: exact evidence,
            // given to the model as the contention record that carried it.
            if let Some(writer) = names_writer(st).filter(|&w| w != *tid) {
                let known = self
                    .engine
                    .model()
                    .mm_locks
                    .get(&mm)
                    .is_some_and(|l| l.writer.is_some_and(|(w, _)| w == writer));
                if !known
                    && self.waiting_on(*tid, mm)
                    && after_exit(st.lock_since_ns)
                    && !is_gone(&self.alive)
                {
                    if let Some(kind) = contention(st, Some(writer), Some(mm)) {
                        alerts.extend(self.apply(&base(st.lock_since_ns, kind)));
                    }
                }
            }
            // A userfaultfd wait whose begin record was lost: the kernel still shows it, and
            // the scheduler confirms the task sleeps in handle_userfault (a signal can end such
            // a wait without the kernel side clearing it).
            if st.uffd_ctx != 0
                && past(st.uffd_since_ns, self.wait_threshold_ns)
                && after_exit(st.uffd_since_ns)
                && !matches!(
                    self.engine.model().blocked(*tid),
                    Some(Blocked::Uffd { .. })
                )
                && procfs::wchan_of(st.tgid, *tid).as_deref() == Some("handle_userfault")
            {
                let ev = base(
                    st.uffd_since_ns,
                    EventKind::UffdWaitBegin {
                        uffd: Addr(st.uffd_ctx),
                        addr: Addr(st.uffd_addr),
                    },
                );
                alerts.extend(self.apply(&ev));
            }
        }
        alerts
    }
}
