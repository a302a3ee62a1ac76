//! Feeding the engine from the live kernel.
//!
//! Outside record mode the kernel streams only what matters (slow waits, long holds, their
//! follow-ups, anomalies), so the engine would not see a wait still in progress. Two sources
//! complete the picture, both as ordinary events so the engine stays the same one replay uses:
//! - a streamed slow acquisition carries its start time: the `mmap_lock_start` it implies is
//!   applied first if the engine has not seen it; a long hold's release carries its acquisition
//!   time, likewise;
//! - a periodic snapshot of the kernel's per-task map shows waits and holds in progress; those
//!   past the streaming thresholds (whose ends the kernel will therefore stream) are applied
//!   with their real start times;
//! - in the default mode nothing sees an uncontended `mmap_lock` acquisition, so the read
//!   holders a contended lock waits for are inferred at each snapshot (`inference`: the kernel
//!   stacks of the threads involved, and the rwsem owner word's last reader), labelled as
//!   inferred, and replaced by the next snapshot's inference.
//!
//! The snapshot is the authority for what is in progress, and records and snapshots are ordered
//! by the kernel's monotonic clock:
//! - a snapshot carries the time taken *before* its walk: a wait is "past the threshold" only if
//!   it was so before the kernel entry was read, otherwise its end may already have gone by
//!   unstreamed and the wait would never end (the phantom waiters of issue 11);
//! - a wait or hold the model has, that began before the snapshot and that the snapshot does not
//!   show, has ended;
//! - a task whose exit record was processed is not brought back by state older than its exit;
//!   snapshots older than the last one applied are ignored;
//! - tasks carrying nothing the graph needs are reclaimed, and processes gone from /proc take
//!   their tasks and the identity of their mm with them;
//! - after the ring buffer lost records, the model's tasks are unknown until a snapshot taken
//!   after the loss confirms them, and alerts raised meanwhile are held for the next snapshot
//!   (dropped if it refutes them): a lost end must not become a false alert;
//! - every conclusion drawn from a snapshot reaches the model as an event (a correction kind of
//!   the trace format), never by changing the model behind the engine's back, so a replay of
//!   what the feed applied decides what the agent decided.
//!
//! Files: this one reconciles snapshots; `loss` holds and vets alerts after a loss;
//! `inference` infers read holders; `uffd` restores and ends userfaultfd waits and handlers.

use std::collections::{BTreeSet, HashMap};

use tracer_common::{lock_type, mode, TaskState};

use crate::{
    core::detect::{Alert, Thresholds},
    core::engine::Engine,
    core::event::{Addr, Event, EventKind, LockMode},
    core::exposure::Exposure,
    core::model::{Blocked, HoldSeen},
    kernel::decode::Decoded,
    kernel::procfs,
};

mod inference;
mod loss;
mod uffd;

pub use crate::kernel::procfs::{identify, proc_exists};

/// Whether a process or task still exists (live: `/proc/ID`). Replaceable for tests.
pub type Liveness = Box<dyn Fn(u32) -> bool + Send>;

pub struct LiveFeed {
    engine: Engine,
    wait_threshold_ns: u64,
    hold_threshold_ns: u64,
    /// When the last applied snapshot was taken.
    last_snapshot_ns: Option<u64>,
    /// Exits processed since that snapshot: tid → exit time.
    exits: HashMap<u32, u64>,
    /// The cgroup id each process's records carried last: names its workload after it exits.
    cgroups: HashMap<u32, u64>,
    alive: Liveness,
    /// The kernel's lost-record counter when last read.
    lost_seen: u64,
    /// Records lost since the feed started.
    lost: u64,
    /// When the last snapshot's walk began, if that snapshot noticed a loss itself.
    lossy_walk_ns: Option<u64>,
    /// Every event applied to the engine since the journal was last taken, in order, when
    /// asked for (`agent --record`): replayed, they decide what the engine decided here.
    journal: Option<Vec<Event>>,
}

/// CLOCK_MONOTONIC now, the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

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
    pub fn new(thresholds: Thresholds, wait_threshold_ns: u64, hold_threshold_ns: u64) -> Self {
        Self {
            engine: Engine::new(thresholds),
            wait_threshold_ns,
            hold_threshold_ns,
            last_snapshot_ns: None,
            exits: HashMap::new(),
            cgroups: HashMap::new(),
            alive: Box::new(proc_exists),
            lost_seen: 0,
            lost: 0,
            lossy_walk_ns: None,
            journal: None,
        }
    }

    /// Keeps every event applied to the engine, for `take_journal`.
    pub fn with_journal(mut self) -> Self {
        self.journal = Some(Vec::new());
        self
    }

    /// The events applied since the last call (empty without `with_journal`).
    pub fn take_journal(&mut self) -> Vec<Event> {
        self.journal
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// Applies `ev` to the engine, journaled: the one way anything reaches the model.
    fn apply(&mut self, ev: &Event) -> Vec<Alert> {
        if let Some(j) = self.journal.as_mut() {
            j.push(ev.clone());
        }
        self.engine.apply(ev)
    }

    /// Uses `alive` instead of /proc to tell whether a process or task exists.
    pub fn with_liveness(mut self, alive: Liveness) -> Self {
        self.alive = alive;
        self
    }

    /// Alerts name addresses as `exposure` says (raw by default).
    pub fn with_exposure(mut self, exposure: Exposure) -> Self {
        self.engine.set_exposure(exposure);
        self
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Records the kernel lost (ring buffer full) since the feed started.
    pub fn lost(&self) -> u64 {
        self.lost
    }

    /// The cgroup id the records of process `pid` carried, while the model knows the process.
    pub fn cgroup_of(&self, pid: u32) -> Option<u64> {
        self.cgroups.get(&pid).copied()
    }

    /// Tasks whose state is unknown since a loss, until a snapshot taken after the loss
    /// confirms or refutes it.
    pub fn unknown(&self) -> &BTreeSet<u32> {
        &self.engine.model().unknown
    }

    /// Alerts held after a loss and dropped because the next snapshot refuted them.
    pub fn suppressed(&self) -> u64 {
        self.engine.dropped()
    }

    fn waiting_on(&self, tid: u32, mm: Addr) -> bool {
        matches!(
            self.engine.model().task(tid).and_then(|t| t.blocked.as_ref()),
            Some(Blocked::MmapLock { mm: m, .. }) if *m == mm
        )
    }

    fn holding(&self, tid: u32, mm: Addr) -> bool {
        self.engine
            .model()
            .task(tid)
            .is_some_and(|t| t.holds.contains_key(&mm))
    }

    /// The owner of `mm` as far as the model knows, while that process lives: a dead owner's
    /// pid must not be stamped on a reused address.
    fn known_owner(&self, mm: Addr) -> Option<u32> {
        self.engine
            .model()
            .mm_locks
            .get(&mm)
            .filter(|l| !l.owner_gone)
            .and_then(|l| l.owner_pid)
    }

    /// Whether the engine already reflects `implied` (so applying it again would be wrong).
    fn reflects(&self, implied: &Event) -> bool {
        let blocked = self
            .engine
            .model()
            .task(implied.tid)
            .and_then(|t| t.blocked.as_ref());
        match &implied.kind {
            EventKind::MmapLockStart { mm, .. } => self.waiting_on(implied.tid, *mm),
            EventKind::MmapLockAcquire { mm, .. } => self.holding(implied.tid, *mm),
            EventKind::LockWaitBegin { lock, .. } => {
                matches!(blocked, Some(Blocked::KernelLock { lock: l, .. }) if l == lock)
            }
            EventKind::UffdWaitBegin { .. } => matches!(blocked, Some(Blocked::Uffd { .. })),
            _ => false,
        }
    }

    /// Applies one streamed record, after the earlier event it implies when the engine has not
    /// seen that one. Alerts raised while a loss is unconfirmed are held by the engine.
    pub fn on_record(&mut self, d: &Decoded) -> Vec<Alert> {
        let mut alerts = Vec::new();
        if let Some(implied) = &d.implied {
            if !self.reflects(implied) {
                alerts.extend(self.apply(implied));
            }
        }
        if let Some(id) = d.cgroup_id {
            self.cgroups.insert(d.event.pid, id);
        }
        if matches!(d.event.kind, EventKind::TaskExit {}) {
            self.exits.insert(d.event.tid, d.event.ts_ns);
        }
        alerts.extend(self.apply(&d.event));
        // A record from before a walk that followed a loss: the walk did not see what it says,
        // and records around it may be the lost ones. The task is unknown until the next
        // snapshot.
        let stale = self
            .lossy_walk_ns
            .is_some_and(|walk| d.event.ts_ns < walk && d.event.tid != 0);
        if stale && !self.engine.model().unknown.contains(&d.event.tid) {
            alerts.extend(self.apply(&Event {
                ts_ns: d.event.ts_ns,
                tid: d.event.tid,
                pid: d.event.pid,
                comm: None,
                kind: EventKind::Lost { count: 0 },
            }));
        }
        alerts
    }

    /// Applies a snapshot of the kernel's per-task map, taken (its walk started) at `taken_ns`,
    /// with the lost-record counter read just before it; then runs the timed detectors.
    pub fn on_snapshot(
        &mut self,
        states: &[(u32, TaskState)],
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
        let mut alerts = self.end_what_the_kernel_no_longer_shows(&shown, taken_ns);
        alerts.extend(self.apply_shown(states, taken_ns));
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
        taken_ns: u64,
    ) -> Vec<Alert> {
        let model = self.engine.model();
        let mut ended_waits = Vec::new();
        let mut ended_holds = Vec::new();
        for t in model.tasks.values() {
            let st = shown.get(&t.tid);
            if let Some(b) = &t.blocked {
                let still = match (b, st) {
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

    /// Applies a correction: what the feed concluded from a snapshot, as an event.
    fn correct(&mut self, tid: u32, pid: u32, ts_ns: u64, kind: EventKind) -> Vec<Alert> {
        self.apply(&Event {
            ts_ns,
            tid,
            pid,
            comm: None,
            kind,
        })
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
                        mm_pid: self.known_owner(mm),
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

#[cfg(test)]
mod tests;
