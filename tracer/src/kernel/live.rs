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
//!   holders a contended lock waits for are inferred at each snapshot (the rwsem owner word's
//!   last reader, else threads whose kernel stack is inside a function that holds the lock for
//!   read), labelled as inferred, and replaced by the next snapshot's inference.
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
//! - after the ring buffer lost records, the model's tasks are unknown until the next snapshot
//!   confirms them, and alerts raised meanwhile are held until it does (dropped if it refutes
//!   them): a lost end must not become a false alert.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use tracer_common::{lock_type, mode, TaskState};

use crate::{
    core::detect::{Alert, AlertKind, Thresholds},
    core::engine::Engine,
    core::event::{Addr, Event, EventKind, LockMode},
    core::model::{Blocked, HoldSeen, Model},
    kernel::decode::Decoded,
    kernel::procfs,
};

const HINT_EVIDENCE: &str = "the rwsem owner word names it as the last reader to take the lock";
const HINT_AND_STACK_EVIDENCE: &str =
    "the rwsem owner word names it as the last reader, and its kernel stack is inside a function that holds mmap_lock for read";
const STACK_EVIDENCE: &str = "its kernel stack is inside a function that holds mmap_lock for read";

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
    /// A loss was noticed and no snapshot has confirmed the model since.
    unconfirmed: bool,
    /// A loss was noticed since the last snapshot began: records from before that snapshot may
    /// still be in the ring buffer, so only a later snapshot can confirm the tasks' state.
    lost_since_snapshot: bool,
    /// Alerts raised while unconfirmed, waiting for that snapshot.
    held: Vec<Alert>,
    /// Alerts a snapshot refuted after a loss.
    suppressed: u64,
}

/// The process of thread `tid`, when it still exists.
fn tgid_of(tid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{tid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Tgid:"))
        .and_then(|v| v.trim().parse().ok())
}

fn comm_of(tid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{tid}/comm"))
        .ok()
        .map(|s| s.trim_end().to_owned())
}

/// The process and comm of a task that still exists (for tasks the model never saw).
pub fn identify(tid: u32) -> Option<(u32, Option<String>)> {
    tgid_of(tid).map(|pid| (pid, comm_of(tid)))
}

/// Whether /proc has this process or task (threads are reachable by tid though not listed).
pub fn proc_exists(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
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

/// The writer a contended `mmap_lock` waiter found in the rwsem's owner word, if any.
fn names_writer(st: &TaskState) -> Option<u32> {
    let rwsem = matches!(st.lock_type, lock_type::RWSEM_READ | lock_type::RWSEM_WRITE);
    (st.wait_mm != 0 && st.lock != 0 && rwsem && st.lock_owner != 0 && st.lock_owner_reader == 0)
        .then_some(st.lock_owner)
}

/// Whether an alert raised before a loss still describes the model after a snapshot corrected it.
fn still_true(model: &Model, a: &Alert) -> bool {
    let blocked_since = |tid: u32| {
        model
            .task(tid)
            .and_then(|t| t.blocked.as_ref())
            .map(Blocked::since_ns)
    };
    let Some(&subject) = a.tids.first() else {
        return false;
    };
    match a.kind {
        AlertKind::Deadlock => a.tids.iter().all(|&t| blocked_since(t).is_some()),
        // The read hold the second request came on top of, still there: one taken after the
        // alert is another hold, and does not confirm it.
        AlertKind::RecursiveRead => model.task(subject).is_some_and(|t| {
            t.holds
                .values()
                .any(|h| h.mode == LockMode::Read && h.since_ns < a.ts_ns)
        }),
        AlertKind::Stall | AlertKind::UffdStall | AlertKind::RwrInversion => {
            blocked_since(subject).is_some_and(|s| s <= a.ts_ns)
        }
    }
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
            unconfirmed: false,
            lost_since_snapshot: false,
            held: Vec::new(),
            suppressed: 0,
        }
    }

    /// Uses `alive` instead of /proc to tell whether a process or task exists.
    pub fn with_liveness(mut self, alive: Liveness) -> Self {
        self.alive = alive;
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
        self.suppressed
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
    /// seen that one. Alerts raised while a loss is unconfirmed are held (see `vet`).
    pub fn on_record(&mut self, d: &Decoded) -> Vec<Alert> {
        let mut alerts = Vec::new();
        if let Some(implied) = &d.implied {
            if !self.reflects(implied) {
                alerts.extend(self.engine.apply(implied));
            }
        }
        if let Some(id) = d.cgroup_id {
            self.cgroups.insert(d.event.pid, id);
        }
        if matches!(d.event.kind, EventKind::TaskExit {}) {
            self.exits.insert(d.event.tid, d.event.ts_ns);
        }
        alerts.extend(self.engine.apply(&d.event));
        self.hold_if_unconfirmed(alerts)
    }

    fn hold_if_unconfirmed(&mut self, alerts: Vec<Alert>) -> Vec<Alert> {
        if self.unconfirmed {
            self.held.extend(alerts);
            Vec::new()
        } else {
            alerts
        }
    }

    /// Notes the kernel's lost-record counter. New losses make every task with state unknown
    /// until the next snapshot; returns how many records were newly lost.
    pub fn note_lost(&mut self, lost_total: u64) -> u64 {
        // A counter that went backwards (the programs were reloaded) starts a new count.
        let new = lost_total.saturating_sub(self.lost_seen);
        self.lost_seen = lost_total;
        if new == 0 {
            return 0;
        }
        self.lost += new;
        // The loss is an event like any other change to the model: a replay of a recording
        // that carries it marks the same tasks unknown.
        let _ = self.engine.apply(&Event {
            ts_ns: monotonic_ns(),
            tid: 0,
            pid: 0,
            comm: None,
            kind: EventKind::Lost { count: new },
        });
        if !self.unconfirmed {
            log::warn!(
                "{new} events lost (ring buffer full): {} tasks' state unknown until a snapshot taken after the loss confirms it; alerts held until then",
                self.unknown().len()
            );
        }
        self.unconfirmed = true;
        self.lost_since_snapshot = true;
        new
    }

    /// Alerts from `on_record`, checked against the lost-record counter read after them (when
    /// it could be read): alerts that may rest on a lost record are held for the next snapshot.
    pub fn vet(&mut self, alerts: Vec<Alert>, lost_total: Option<u64>) -> Vec<Alert> {
        if let Some(total) = lost_total {
            self.note_lost(total);
        }
        self.hold_if_unconfirmed(alerts)
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
        // A loss noticed before this walk began may still have records of before the walk in
        // the ring buffer (they are applied after it): this snapshot cannot confirm it.
        self.note_lost(lost_total);
        let confirms = self.unconfirmed && !std::mem::take(&mut self.lost_since_snapshot);
        let shown: HashMap<u32, &TaskState> = states.iter().map(|(t, s)| (*t, s)).collect();
        self.end_what_the_kernel_no_longer_shows(&shown, taken_ns);
        let mut alerts = self.apply_shown(states, taken_ns);
        self.reclaim(&shown);
        self.infer_read_holders(states, taken_ns);
        self.exits.retain(|_, &mut e| e >= taken_ns);
        self.last_snapshot_ns = Some(taken_ns);
        alerts.extend(self.uffd_waits_ended(taken_ns));
        alerts.extend(self.engine.advance_to(taken_ns));
        if self.unconfirmed {
            self.confirm_held(&mut alerts, confirms);
        }
        alerts
    }

    /// The snapshot is the authority: what began before it and is not in it has ended.
    fn end_what_the_kernel_no_longer_shows(
        &mut self,
        shown: &HashMap<u32, &TaskState>,
        taken_ns: u64,
    ) {
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
                    ended_waits.push(t.tid);
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
                    ended_holds.push((t.tid, *mm));
                }
            }
        }
        let model = self.engine.model_mut();
        for tid in ended_waits {
            model.end_wait(tid);
        }
        for (tid, mm) in ended_holds {
            model.end_hold(tid, mm);
        }
    }

    /// Applies the waits and holds the snapshot shows past the streaming thresholds (whose ends
    /// the kernel will therefore stream), with their real start times.
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
                comm: comm_of(*tid),
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
                    alerts.extend(self.engine.apply(&ev));
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
                if let Ok(lock_type) = crate::kernel::decode::lock_type_of(st.lock_type) {
                    let ev = base(
                        st.lock_since_ns,
                        EventKind::LockWaitBegin {
                            lock: Addr(st.lock),
                            lock_type,
                            owner_tid: (st.lock_owner != 0).then_some(st.lock_owner),
                            mm: None,
                        },
                    );
                    alerts.extend(self.engine.apply(&ev));
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
                alerts.extend(self.engine.apply(&ev));
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
                    if let Ok(lock_type) = crate::kernel::decode::lock_type_of(st.lock_type) {
                        let ev = base(
                            st.lock_since_ns,
                            EventKind::LockWaitBegin {
                                lock: Addr(st.lock),
                                lock_type,
                                owner_tid: Some(writer),
                                mm: Some(mm),
                            },
                        );
                        alerts.extend(self.engine.apply(&ev));
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
                alerts.extend(self.engine.apply(&ev));
            }
        }
        alerts
    }

    /// Infers the read holders of every contended `mmap_lock` whose holders nobody saw
    /// acquiring it, and drops the inference of locks nobody waits for any more.
    fn infer_read_holders(&mut self, states: &[(u32, TaskState)], now_ns: u64) {
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
        for (mm, waiters) in work {
            let readers = if waiters.is_empty() {
                Vec::new()
            } else {
                self.read_holders_of(mm, &waiters, hints.get(&mm))
            };
            self.engine.infer_readers(mm, &readers, now_ns);
        }
    }

    /// Candidates for the read holders of `mm`, each with its evidence.
    fn read_holders_of(
        &self,
        mm: Addr,
        waiters: &[u32],
        hints: Option<&BTreeSet<u32>>,
    ) -> Vec<(u32, u32, Option<String>, &'static str)> {
        let in_holder_frame = |pid: u32, tid: u32| {
            procfs::stack(pid, tid)
                .iter()
                .any(|f| procfs::READ_HOLDER_FRAMES.contains(&f.as_str()))
        };
        let mut out = Vec::new();
        for &h in hints.into_iter().flatten() {
            if waiters.contains(&h) {
                continue;
            }
            let Some(pid) = tgid_of(h) else {
                continue; // gone: it holds nothing
            };
            let why = if in_holder_frame(pid, h) {
                HINT_AND_STACK_EVIDENCE
            } else {
                HINT_EVIDENCE
            };
            out.push((h, pid, comm_of(h), why));
        }
        if !out.is_empty() {
            return out;
        }
        // No hint: threads of the processes involved whose stack shows a read hold.
        let model = self.engine.model();
        let pids: BTreeSet<u32> = model
            .mm_locks
            .get(&mm)
            .and_then(|l| l.owner_pid)
            .into_iter()
            .chain(waiters.iter().filter_map(|w| model.task(*w).map(|t| t.pid)))
            .collect();
        for pid in pids {
            for tid in procfs::threads(pid) {
                if !waiters.contains(&tid) && in_holder_frame(pid, tid) {
                    out.push((tid, pid, comm_of(tid), STACK_EVIDENCE));
                }
            }
        }
        out
    }

    /// Reclaims what the kernel has let go: tasks that carry nothing the graph needs, tasks
    /// gone from the host (the kernel's entry of a task can outlive it, showing a wait that
    /// never ends: observed under stress-ng), and processes gone from the host, with their
    /// tasks and their mm's identity. Only tasks with state cost a /proc lookup.
    fn reclaim(&mut self, shown: &HashMap<u32, &TaskState>) {
        let model = self.engine.model();
        let idle: Vec<u32> = model
            .tasks
            .keys()
            .copied()
            .filter(|&t| {
                if model.is_idle(t) {
                    shown.get(&t).is_none_or(|s| s.uffd_ctx == 0)
                } else {
                    !(self.alive)(t)
                }
            })
            .collect();
        let mut pids: BTreeSet<u32> = model.pids().collect();
        pids.extend(model.mm_locks.values().filter_map(|l| l.owner_pid));
        let gone: Vec<u32> = pids.into_iter().filter(|&p| !(self.alive)(p)).collect();
        let model = self.engine.model_mut();
        for tid in idle {
            model.forget_task(tid);
        }
        for pid in gone {
            self.cgroups.remove(&pid);
            model.process_exit(pid);
        }
    }

    /// After a loss, each snapshot vets the alerts held since the last one: those it still
    /// supports are published (while the loss is unconfirmed they carry its doubt, as the
    /// detectors qualify alerts on unknown tasks), the rest are dropped. `confirmed`: this
    /// snapshot was taken after every loss noticed, so the tasks' state is known again.
    fn confirm_held(&mut self, alerts: &mut Vec<Alert>, confirmed: bool) {
        let held = std::mem::take(&mut self.held);
        let total = held.len();
        let model = self.engine.model();
        let kept: Vec<Alert> = held.into_iter().filter(|a| still_true(model, a)).collect();
        let dropped = total - kept.len();
        self.suppressed += dropped as u64;
        if total > 0 {
            log::info!(
                "snapshot after the loss confirmed {} of {total} held alerts; {dropped} dropped",
                kept.len()
            );
        }
        alerts.splice(0..0, kept);
        if confirmed {
            self.engine.model_mut().confirm_all();
            self.unconfirmed = false;
        }
    }

    /// A signal, not a handler, can end a userfaultfd wait, and then no wake-up marks its end:
    /// ask the scheduler (`wchan`) whether each such waiter still sleeps in handle_userfault.
    fn uffd_waits_ended(&mut self, now_ns: u64) -> Vec<Alert> {
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
            alerts.extend(self.engine.apply(&Event {
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
                None => match identify(tid) {
                    Some(found) => found,
                    None => {
                        gone.push((ctx, tid));
                        continue;
                    }
                },
            };
            alerts.extend(self.engine.apply(&Event {
                ts_ns: now_ns,
                tid,
                pid,
                comm,
                kind: EventKind::UffdHandlerSeen { uffd, resolver },
            }));
        }
        (self.hold_if_unconfirmed(alerts), gone)
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
            alerts.extend(self.engine.apply(&Event {
                ts_ns: since_ns,
                tid,
                pid,
                comm: comm_of(tid),
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
            alerts.extend(self.engine.apply(&Event {
                ts_ns: now_ns,
                tid: pid,
                pid,
                comm: comm_of(pid),
                kind: EventKind::UffdHeld { uffd },
            }));
        }
        alerts
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::decode::Reasons;
    use tracer_common::{reason, Hold, HOLD_SLOTS};

    const MS: u64 = 1_000_000;

    fn state(tgid: u32, wait: Option<(u64, u8, u64)>, holds: &[(u64, u8, u64)]) -> TaskState {
        let mut st = TaskState {
            tgid,
            ..Default::default()
        };
        if let Some((mm, m, since)) = wait {
            st.wait_mm = mm;
            st.wait_mode = m;
            st.wait_since_ns = since;
        }
        for (i, (mm, m, since)) in holds.iter().enumerate().take(HOLD_SLOTS) {
            st.holds[i] = Hold {
                mm: *mm,
                since_ns: *since,
                mode: *m,
                depth: 1,
                ..Default::default()
            };
        }
        st
    }

    #[test]
    fn a_snapshot_of_a_convoy_in_progress_builds_its_graph() {
        let mut feed =
            LiveFeed::new(Thresholds::default(), MS, 20 * MS).with_liveness(Box::new(|_| true));
        let snap = [
            (11, state(10, None, &[(0xa, mode::READ, 0)])),
            (12, state(10, Some((0xa, mode::WRITE, 100 * MS)), &[])),
            (13, state(10, Some((0xa, mode::READ, 200 * MS)), &[])),
            // Too young to have been streamed: left out, its end will not be streamed either.
            (14, state(10, Some((0xa, mode::READ, 1_499_900_000)), &[])),
        ];
        let alerts = feed.on_snapshot(&snap, 1_500 * MS, 0);
        let graph = feed.engine().graph();
        let edges: Vec<(u32, u32)> = graph.all_edges().map(|e| (e.from, e.to)).collect();
        assert_eq!(edges, vec![(12, 11), (13, 12)]);
        let kinds: Vec<&str> = alerts.iter().map(|a| a.kind.as_str()).collect();
        assert_eq!(
            kinds,
            vec!["stall", "rwr_inversion", "stall"],
            "by tid: {alerts:#?}"
        );
    }

    fn feed() -> LiveFeed {
        LiveFeed::new(Thresholds::default(), MS, 20 * MS).with_liveness(Box::new(|t| t != 9999))
    }

    #[test]
    fn a_loss_noticed_at_a_snapshot_is_confirmed_only_by_a_later_one() {
        let mut feed = feed();
        let snap = [(12, state(10, Some((0xa, mode::WRITE, 100 * MS)), &[]))];
        feed.on_snapshot(&snap, 1_000 * MS, 0);
        assert!(feed.unknown().is_empty());
        // 5 records lost before this snapshot's walk: the waiter's state is unknown, and stays
        // so through this snapshot, whose walk may predate records still in the ring buffer.
        feed.on_snapshot(&snap, 2_000 * MS, 5);
        assert_eq!(feed.unknown().iter().copied().collect::<Vec<_>>(), vec![12]);
        assert_eq!(feed.lost(), 5);
        // The next snapshot, with no new loss, confirms it.
        feed.on_snapshot(&snap, 3_000 * MS, 5);
        assert!(feed.unknown().is_empty());
    }

    #[test]
    fn a_snapshot_gives_the_writer_in_a_waiters_owner_word_a_write_hold_until_none_names_it() {
        let mut feed = feed();
        let mut waiter = state(10, Some((0xa, mode::READ, 100 * MS)), &[]);
        waiter.lock = 0xa70;
        waiter.lock_since_ns = 100 * MS;
        waiter.lock_type = lock_type::RWSEM_READ;
        waiter.lock_owner = 11;
        let alerts = feed.on_snapshot(&[(12, waiter)], 1_500 * MS, 0);
        let model = feed.engine().model();
        let hold = model
            .task(11)
            .and_then(|t| t.holds.get(&Addr(0xa)).copied());
        assert_eq!(
            hold.map(|h| (h.mode, h.seen)),
            Some((LockMode::Write, HoldSeen::OwnerWord))
        );
        let graph = feed.engine().graph();
        assert_eq!(
            graph.out(12).iter().map(|e| e.to).collect::<Vec<_>>(),
            vec![11]
        );
        assert!(alerts
            .iter()
            .any(|a| a.kind == AlertKind::Stall && a.summary.contains("held for write by 11")));
        // The reader hint is not a writer: no hold from it.
        let mut hinted = waiter;
        hinted.lock_owner_reader = 1;
        hinted.lock_owner = 13;
        feed.on_snapshot(&[(12, hinted)], 2_000 * MS, 0);
        let model = feed.engine().model();
        assert!(model.task(13).is_none_or(|t| t.holds.is_empty()));
        // No waiter names 11 any more: its hold has ended.
        assert!(model.task(11).is_none_or(|t| t.holds.is_empty()));
    }

    #[test]
    fn the_kernels_handler_table_restores_a_handler_whose_record_was_lost() {
        let mut feed = feed();
        let me = std::process::id();
        let (alerts, gone) = feed.on_uffd_handlers(
            &[
                (0xc0, me, tracer_common::handler_role::RESOLVER),
                (0xc0, 9999, tracer_common::handler_role::SETUP),
            ],
            10 * MS,
        );
        assert!(alerts.is_empty());
        assert_eq!(
            gone,
            vec![(0xc0, 9999)],
            "a gone task's entry is to be deleted"
        );
        let model = feed.engine().model();
        let ctx = model.uffds.get(&Addr(0xc0)).expect("the context is known");
        assert!(ctx.resolvers.contains(&me));
        assert_eq!(model.task(me).map(|t| t.pid), Some(me));
        // Known now: a second snapshot of the same table applies nothing.
        let events = feed.engine().events();
        feed.on_uffd_handlers(
            &[(0xc0, me, tracer_common::handler_role::RESOLVER)],
            20 * MS,
        );
        assert_eq!(feed.engine().events(), events);
    }

    #[test]
    fn a_streamed_slow_acquisition_implies_its_start() {
        let mut feed =
            LiveFeed::new(Thresholds::default(), MS, 20 * MS).with_liveness(Box::new(|_| true));
        let d = Decoded {
            event: Event {
                ts_ns: 50 * MS,
                tid: 5,
                pid: 5,
                comm: None,
                kind: EventKind::MmapLockAcquire {
                    mm: Addr(0xa),
                    mode: LockMode::Write,
                    success: true,
                    mm_pid: None,
                },
            },
            reasons: Reasons(reason::SLOW_WAIT),
            since_ns: Some(10 * MS),
            implied: Some(Event {
                ts_ns: 10 * MS,
                tid: 5,
                pid: 5,
                comm: None,
                kind: EventKind::MmapLockStart {
                    mm: Addr(0xa),
                    mode: LockMode::Write,
                    mm_pid: None,
                },
            }),
            cgroup_id: None,
        };
        feed.on_record(&d);
        assert_eq!(
            feed.engine().events(),
            2,
            "the implied start, then the acquisition"
        );
        let hold = feed
            .engine()
            .model()
            .task(5)
            .and_then(|t| t.holds.get(&Addr(0xa)).copied());
        assert_eq!(hold.map(|h| h.mode), Some(LockMode::Write));
    }
}
