//! The agent's HTTP API: thin adapters over the engine's views.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex, MutexGuard},
};

use axum::{
    extract::State,
    http::{header, StatusCode},
    response::IntoResponse,
    routing::get,
    Json, Router,
};
use serde::Serialize;
use tracer_common::ProcFaults;

use crate::{
    alerts::{AlertSink, RaisedAlert},
    decode::Decoded,
    live::LiveFeed,
    metrics::{self, MetricsInput},
    model::Blocked,
    probes::{kernel::KernelBtf, Probes},
    scope::ScopeFilter,
    stats,
    views::GraphView,
    workload,
};

/// Process names counted for slow waits; past this many distinct names, new ones count as
/// "other" (label cardinality stays bounded whatever the host runs).
const MAX_NAMES: usize = 4096;

/// What the agent itself saw, for its metrics.
#[derive(Default)]
pub struct Telemetry {
    pub events_received: u64,
    pub decode_errors: u64,
    pub slow_waits_by_process: HashMap<String, u64>,
    pub slow_waits_by_workload: HashMap<String, u64>,
}

/// Counts one more under `name`, or under "other" once `MAX_NAMES` names are known.
fn count_bounded(map: &mut HashMap<String, u64>, name: String) {
    let key = if map.len() < MAX_NAMES || map.contains_key(&name) {
        name
    } else {
        "other".into()
    };
    *map.entry(key).or_default() += 1;
}

impl Telemetry {
    pub fn on_record(&mut self, d: &Decoded) {
        self.events_received += 1;
        if d.reasons.slow_wait() {
            let name = d.event.comm.clone().unwrap_or_else(|| "?".into());
            let key = if self.slow_waits_by_process.len() < MAX_NAMES
                || self.slow_waits_by_process.contains_key(&name)
            {
                name
            } else {
                "other".into()
            };
            *self.slow_waits_by_process.entry(key).or_default() += 1;
            let workload =
                workload::attribute(d.event.pid).map_or_else(|| "unknown".into(), |a| a.label());
            count_bounded(&mut self.slow_waits_by_workload, workload);
        }
    }
}

/// What the agent's tasks share. Locked briefly, never across an `.await`.
pub struct AgentState {
    pub feed: LiveFeed,
    pub sink: AlertSink,
    pub probes: Probes,
    pub btf: KernelBtf,
    pub telemetry: Telemetry,
    pub kernel_release: String,
    /// Entries of the kernel's per-task map at the last snapshot (walking the map again for
    /// every scrape would repeat the snapshot's work).
    pub task_entries: usize,
    /// Which processes this agent reports on (`--scope`).
    pub scope: ScopeFilter,
}

pub type Shared = Arc<Mutex<AgentState>>;

pub fn lock(shared: &Shared) -> MutexGuard<'_, AgentState> {
    // A panic while holding the lock leaves plain data behind; keep serving it.
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

/// `/api/alerts`: the same document `faultline replay --json` prints.
#[derive(Serialize)]
pub struct AlertsDoc {
    pub events: u64,
    pub alerts: Vec<RaisedAlert>,
}

fn graph_view(shared: &Shared) -> GraphView {
    let mut view = {
        let st = lock(shared);
        let engine = st.feed.engine();
        GraphView::build(engine.model(), &engine.graph(), engine.now_ns())
    };
    view.attribute(workload::attribute);
    view
}

async fn graph(State(shared): State<Shared>) -> Json<GraphView> {
    Json(graph_view(&shared))
}

async fn graph_dot(State(shared): State<Shared>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/vnd.graphviz; charset=utf-8")],
        graph_view(&shared).to_dot(),
    )
}

async fn alerts(State(shared): State<Shared>) -> Json<AlertsDoc> {
    let st = lock(&shared);
    Json(AlertsDoc {
        events: st.feed.engine().events(),
        alerts: st.sink.recent().cloned().collect(),
    })
}

fn comm_of(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim_end().to_owned())
        .unwrap_or_else(|_| "?".into())
}

/// Names only the processes that can make the top N: the rest are "other" without a /proc read.
const NAMED_PROCESSES: usize = 3 * metrics::TOP_PROCESSES;

fn metrics_input(st: &mut AgentState) -> Result<MetricsInput, String> {
    let snap = stats::snapshot(&st.probes).map_err(|e| e.to_string())?;
    // Per-fault counters exist in full mode only; otherwise the kernel's own per-process
    // counts (minor + major faults, /proc) stand in, with the mode label saying so.
    let kernel_faults = st.probes.proc_faults().map_err(|e| e.to_string())?;
    let proc_fault_entries = kernel_faults.len();
    let per_fault = st.probes.detail() == crate::probes::Detail::Full;
    let mut faults: Vec<(u32, Option<String>, ProcFaults)> = if per_fault {
        kernel_faults
            .into_iter()
            .map(|(p, f)| (p, None, f))
            .collect()
    } else {
        crate::diagnose::procfs::process_faults()
            .into_iter()
            .map(|(pid, comm, minor, major)| {
                let f = ProcFaults {
                    user: minor + major,
                    ..ProcFaults::default()
                };
                (pid, Some(comm), f)
            })
            .collect()
    };
    if !st.scope.is_host() {
        faults.retain(|(pid, _, _)| st.scope.admits(*pid));
    }
    faults.sort_by_key(|(_, _, f)| std::cmp::Reverse(f.user + f.kernel));
    let (proc_faults, faults_by_workload) = faults
        .into_iter()
        .enumerate()
        .map(|(i, (pid, comm, f))| {
            if i < NAMED_PROCESSES {
                let workload =
                    workload::attribute(pid).map_or_else(|| "unknown".into(), |a| a.label());
                ((comm.unwrap_or_else(|| comm_of(pid)), f), (workload, f))
            } else {
                (("other".into(), f), ("other".into(), f))
            }
        })
        .unzip();
    let mut blocked: BTreeMap<&'static str, u64> = ["mmap_lock", "kernel_lock", "uffd"]
        .iter()
        .map(|k| (*k, 0))
        .collect();
    let model = st.feed.engine().model();
    for tid in &model.blocked {
        let kind = match model.task(*tid).and_then(|t| t.blocked.as_ref()) {
            Some(Blocked::MmapLock { .. }) => "mmap_lock",
            Some(Blocked::KernelLock { .. }) => "kernel_lock",
            Some(Blocked::Uffd { .. }) => "uffd",
            None => continue,
        };
        *blocked.entry(kind).or_default() += 1;
    }
    Ok(MetricsInput {
        version: env!("CARGO_PKG_VERSION"),
        kernel: st.kernel_release.clone(),
        counters: snap.counters.0.clone(),
        hists: snap.hists.clone(),
        uffd_errors: st.probes.uffd_errors().map_err(|e| e.to_string())?,
        proc_faults,
        proc_faults_per_mode: per_fault,
        slow_waits_by_process: st
            .telemetry
            .slow_waits_by_process
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect(),
        task_entries: st.task_entries,
        task_capacity: st.probes.max_tasks(),
        proc_fault_entries,
        programs: st.probes.program_stats(&st.btf),
        alerts: st.sink.counts().clone(),
        blocked,
        events_received: st.telemetry.events_received,
        decode_errors: st.telemetry.decode_errors,
        faults_by_workload,
        slow_waits_by_workload: st
            .telemetry
            .slow_waits_by_workload
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect(),
        alerts_by_workload: st.sink.counts_by_workload().clone(),
    })
}

async fn metrics_text(State(shared): State<Shared>) -> impl IntoResponse {
    let rendered = {
        let mut st = lock(&shared);
        metrics_input(&mut st).and_then(|m| metrics::render(&m).map_err(|e| e.to_string()))
    };
    match rendered {
        Ok(text) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            text,
        ),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("reading the probes' maps failed: {e}\n"),
        ),
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

pub fn router(shared: Shared) -> Router {
    Router::new()
        .route("/", get(crate::report::page::index))
        .route("/ui/live", get(crate::report::page::live))
        .route("/api/graph.svg", get(crate::report::page::graph_svg))
        .route("/api/graph", get(graph))
        .route("/api/graph.dot", get(graph_dot))
        .route("/api/alerts", get(alerts))
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(healthz))
        .with_state(shared)
}
