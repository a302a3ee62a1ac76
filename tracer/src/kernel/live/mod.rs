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
//! Files: this one applies streamed records; `snapshot` reconciles snapshots; `loss` holds
//! and vets alerts after a loss;
//! `inference` infers read holders; `uffd` restores and ends userfaultfd waits and handlers.

use std::collections::{BTreeSet, HashMap};

use crate::{
    core::detect::{Alert, Thresholds},
    core::engine::Engine,
    core::event::{Addr, Event, EventKind},
    core::exposure::Exposure,
    core::model::Blocked,
    kernel::decode::Decoded,
};

mod inference;
mod loss;
mod snapshot;
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
    /// User locks (pid, lock) a snapshot tried to name again and could not: not tried again
    /// (a lock on the heap has no name to find).
    pub(crate) unnamable: std::collections::HashSet<(u32, u64)>,
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

impl LiveFeed {
    pub fn new(thresholds: Thresholds, wait_threshold_ns: u64, hold_threshold_ns: u64) -> Self {
        Self {
            engine: Engine::new(thresholds),
            wait_threshold_ns,
            hold_threshold_ns,
            last_snapshot_ns: None,
            exits: HashMap::new(),
            unnamable: Default::default(),
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
            // A snapshot applied it already, with its owner; the end's own begin has none.
            EventKind::FutexWaitBegin { futex, .. } => {
                matches!(blocked, Some(Blocked::UserLock { futex: f, .. }) if f == futex)
            }
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
}

#[cfg(test)]
mod tests;
