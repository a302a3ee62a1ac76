//! The agent's state: what its tasks (ring buffer, snapshots, HTTP) share, locked briefly and
//! never across an `.await`.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard, OnceLock},
    time::Duration,
};

use tracer_common::Counter;

use crate::{
    core::{detect::Alert, exposure::Exposure, views::GraphView},
    kernel::{
        cgroup_ids,
        decode::{DecodeError, Decoded},
        live::{self, LiveFeed},
        pidcache::PidCache,
        probes::{kernel::KernelBtf, Aggregates, Probes},
        reclaim::TaskEntryReclaimer,
        scope::ScopeFilter,
        workload,
    },
    sinks::{alerts::AlertSink, metrics::SeriesMemory},
};

use super::{journal::Journal, process_faults::ProcessFaults, telemetry::Telemetry};

pub struct AgentState {
    pub feed: LiveFeed,
    pub sink: AlertSink,
    pub probes: Probes,
    pub btf: KernelBtf,
    pub telemetry: Telemetry,
    /// What each per-process counter family has exported: no `_total` series goes down.
    pub series: SeriesMemory,
    pub kernel_release: String,
    /// Entries of the kernel's per-task map at the last snapshot (walking the map again for
    /// every scrape would repeat the snapshot's work).
    pub task_entries: usize,
    /// Deletes kernel per-task entries that outlived their task.
    pub reclaimer: TaskEntryReclaimer,
    /// Which processes this agent reports on (`--scope`).
    pub scope: ScopeFilter,
    /// Where every event the engine applied goes (`--record`), if anywhere.
    pub journal: Option<Journal>,
    /// How the views it hands out show addresses (`--expose-addresses`).
    pub exposure: Exposure,
    /// Per-process faults for `/metrics`, refreshed off the lock (`process_faults`).
    pub process_faults: Arc<ProcessFaults>,
    /// The probes' aggregate maps on their own handles: `/metrics` reads them off the lock.
    pub aggregates: Arc<Aggregates>,
    /// The in-kernel lock-contention profile, read off the lock.
    pub lock_profile: Arc<super::lock_profile::LockProfile>,
    /// The features that depend on the agent's privileges, decided at start.
    pub features: Vec<crate::kernel::privileges::Availability>,
    /// Futex waiting time by process, for `/metrics`.
    pub user_lock_time: super::user_lock_time::UserLockTime,
    /// Futex sleeps in the kernel's table at the last snapshot.
    pub futex_entries: usize,
    /// Deletes futex sleeps that outlived their task.
    pub futex_reclaimer: TaskEntryReclaimer,
    /// The user-lock profile, read off the lock.
    pub user_profile: Arc<super::user_profile::UserLockProfile>,
}

impl AgentState {
    /// One ring-buffer record into the feed, the agent's counts and the alert sink; `false`
    /// for a record of a process out of scope (another network namespace's: not ours).
    pub fn on_record(&mut self, r: &Result<Decoded, DecodeError>) -> bool {
        let d = match r {
            Ok(d) => d,
            Err(_) => {
                self.telemetry.decode_errors += 1;
                return true;
            }
        };
        if !self.scope.admits(d.event.pid) {
            return false;
        }
        self.telemetry.on_record(d);
        let mut alerts = self.feed.on_record(d);
        if !alerts.is_empty() {
            // Alerts are rare: read the loss counter only for them, so one resting on a lost
            // record waits for the next snapshot to confirm it.
            let lost = self
                .probes
                .counters()
                .ok()
                .map(|c| c.get(Counter::RingbufFull));
            alerts = self.feed.vet(alerts, lost);
        }
        self.journal_out();
        raise_all(self, alerts);
        true
    }

    /// The kernel's lost-record counter, read between snapshots: new losses mark the tasks
    /// with state unknown until the next snapshot.
    pub fn note_lost(&mut self, lost_total: u64) {
        if self.feed.note_lost(lost_total) > 0 {
            self.journal_out();
        }
    }

    /// What the feed applied, into the `--record` file's buffer.
    pub fn journal_out(&mut self) {
        if let Some(j) = self.journal.as_mut() {
            j.take_from(&mut self.feed);
        }
    }
}

pub type Shared = Arc<Mutex<AgentState>>;

pub fn lock(shared: &Mutex<AgentState>) -> MutexGuard<'_, AgentState> {
    // A panic while holding the lock leaves plain data behind; keep serving it.
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

/// The live graph as the engine has it (tasks a loss left unknown come marked from the model;
/// cheap: call under the lock).
pub fn engine_view(st: &AgentState) -> LiveView {
    engine_view_as(st, &st.exposure)
}

/// `engine_view`, with addresses shown as `exposure` says rather than as the agent's API does.
pub fn engine_view_as(st: &AgentState, exposure: &Exposure) -> LiveView {
    let engine = st.feed.engine();
    let view = GraphView::build(engine.model(), &engine.graph(), engine.now_ns(), exposure);
    let cgroups = view
        .tasks
        .iter()
        .filter_map(|t| Some((t.pid, st.feed.cgroup_of(t.pid)?)))
        .collect();
    LiveView { view, cgroups }
}

/// The engine's graph, with the cgroup ids its processes' records carried, before /proc is read.
pub struct LiveView {
    view: GraphView,
    cgroups: HashMap<u32, u64>,
}

impl LiveView {
    /// Adds what the host says of the view's tasks: the process of tasks the model never saw
    /// (/proc), and every process's cgroup and workload: /proc while it lives, else the cgroup
    /// its records came from (file reads: outside the lock where possible).
    pub fn resolve(self) -> GraphView {
        let Self { mut view, cgroups } = self;
        view.identify(identify_cached);
        view.attribute(|pid| {
            workload::attribute(pid)
                .or_else(|| cgroups.get(&pid).and_then(|id| cgroup_ids::attribute(*id)))
        });
        view
    }
}

/// Names a task the model never saw (a lock owner read from the kernel) from /proc, cached
/// briefly: every graph request asks again for the same few tasks, and a flood of requests must
/// not become a flood of /proc reads. A tid reused within `IDENTIFY_TTL` is misnamed that long.
fn identify_cached(tid: u32) -> Option<(u32, Option<String>)> {
    const IDENTIFY_TTL: Duration = Duration::from_secs(2);
    type Identities = PidCache<Option<(u32, Option<String>)>>;
    static CACHE: OnceLock<Mutex<Identities>> = OnceLock::new();
    CACHE
        .get_or_init(|| Mutex::new(PidCache::new(4096, IDENTIFY_TTL)))
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get_or_insert_with(tid, live::identify)
}

/// Hands the detectors' alerts to the alert sink with the graph they were raised on.
pub fn raise_all(st: &mut AgentState, alerts: Vec<Alert>) {
    if alerts.is_empty() {
        return;
    }
    let view = engine_view(st).resolve();
    for a in alerts {
        st.sink.raise(a, &view);
    }
}
