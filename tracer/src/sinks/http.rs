//! The agent's HTTP API: thin adapters over the engine's views.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex, MutexGuard},
};

use axum::{
    extract::{Request, State},
    http::{header, Method, StatusCode},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
    Json, Router,
};
use serde::Serialize;
use tracer_common::ProcFaults;

use crate::{
    core::model::Blocked,
    core::views::GraphView,
    kernel::cgroup_ids,
    kernel::decode::Decoded,
    kernel::live::{self, LiveFeed},
    kernel::probes::{kernel::KernelBtf, Probes},
    kernel::scope::ScopeFilter,
    kernel::stats,
    kernel::workload,
    sinks::alerts::{AlertSink, RaisedAlert},
    sinks::metrics::{self, MetricsInput, ProcessKey},
};

/// Process names counted for slow waits; past this many distinct names, new ones count as
/// "other" (label cardinality stays bounded whatever the host runs).
const MAX_NAMES: usize = 4096;

/// What the agent itself saw, for its metrics.
#[derive(Default)]
pub struct Telemetry {
    pub events_received: u64,
    pub decode_errors: u64,
    pub slow_waits_by_process: HashMap<ProcessKey, u64>,
    pub slow_waits_by_workload: HashMap<String, u64>,
}

/// Counts one more under `name`, or under `other` once `MAX_NAMES` names are known.
fn count_bounded<K: Eq + std::hash::Hash>(map: &mut HashMap<K, u64>, name: K, other: K) {
    let key = if map.len() < MAX_NAMES || map.contains_key(&name) {
        name
    } else {
        other
    };
    *map.entry(key).or_default() += 1;
}

impl Telemetry {
    pub fn on_record(&mut self, d: &Decoded) {
        self.events_received += 1;
        if d.reasons.slow_wait() {
            let name = d.event.comm.clone().unwrap_or_else(|| "?".into());
            // The record's own cgroup first: right even once the process is gone.
            let attribution = d
                .cgroup_id
                .and_then(cgroup_ids::attribute)
                .or_else(|| workload::attribute(d.event.pid));
            count_bounded(
                &mut self.slow_waits_by_process,
                ProcessKey::new(name, attribution.as_deref()),
                ProcessKey::other(),
            );
            let workload = attribution.map_or_else(|| "unknown".into(), |a| a.label());
            count_bounded(&mut self.slow_waits_by_workload, workload, "other".into());
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
    /// Deletes kernel per-task entries that outlived their task.
    pub reclaimer: crate::kernel::reclaim::TaskEntryReclaimer,
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

/// The live graph as the engine has it, with the tasks a loss left unknown marked (cheap: call
/// under the lock).
pub fn engine_view(st: &AgentState) -> LiveView {
    let engine = st.feed.engine();
    let mut view = GraphView::build(engine.model(), &engine.graph(), engine.now_ns());
    view.mark_unknown(st.feed.unknown());
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
        view.identify(live::identify);
        view.attribute(|pid| {
            workload::attribute(pid)
                .or_else(|| cgroups.get(&pid).and_then(|id| cgroup_ids::attribute(*id)))
        });
        view
    }
}

fn graph_view(shared: &Shared) -> GraphView {
    let view = engine_view(&lock(shared));
    view.resolve()
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
    let per_fault = st.probes.detail() == crate::kernel::probes::Detail::Full;
    let mut faults: Vec<(u32, Option<String>, ProcFaults)> = if per_fault {
        kernel_faults
            .into_iter()
            .map(|(p, f)| (p, None, f))
            .collect()
    } else {
        crate::kernel::procfs::process_faults()
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
                let attribution = workload::attribute(pid);
                let key =
                    ProcessKey::new(comm.unwrap_or_else(|| comm_of(pid)), attribution.as_deref());
                let workload = key.workload.clone();
                ((key, f), (workload, f))
            } else {
                ((ProcessKey::other(), f), ("other".into(), f))
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
        task_entries_reclaimed: st.reclaimer.reclaimed(),
        task_capacity: st.probes.max_tasks(),
        proc_fault_entries,
        programs: st.probes.program_stats(),
        alerts: st.sink.counts().clone(),
        blocked,
        events_received: st.telemetry.events_received,
        decode_errors: st.telemetry.decode_errors,
        model_entries: {
            let model = st.feed.engine().model();
            [
                ("tasks", model.tasks.len()),
                ("mm_locks", model.mm_locks.len()),
                ("uffds", model.uffds.len()),
            ]
        },
        tasks_state_unknown: st.feed.unknown().len(),
        alerts_refuted: st.feed.suppressed(),
        uffd_ioctl_hooks: st.probes.ioctl_hooks_attached(),
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

/// Longest request target accepted: every route is short, and queries are ignored.
pub const MAX_URI_BYTES: usize = 1024;
/// Most header bytes accepted (names and values): a scraper or a browser sends well under 2 KiB.
pub const MAX_HEADER_BYTES: usize = 8 * 1024;

fn refuse(status: StatusCode, why: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{why}\n"),
    )
        .into_response()
}

/// The API is read-only and small: anything but a bodiless GET (or HEAD) of a short path with
/// modest headers is refused before it reaches a handler or the shared state.
async fn guard(req: Request, next: Next) -> Response {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = refuse(
            StatusCode::METHOD_NOT_ALLOWED,
            "the faultline API is read-only: only GET and HEAD",
        );
        r.headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    if req.uri().to_string().len() > MAX_URI_BYTES {
        return refuse(
            StatusCode::URI_TOO_LONG,
            &format!("request target longer than {MAX_URI_BYTES} bytes"),
        );
    }
    let header_bytes: usize = req
        .headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len())
        .sum();
    if header_bytes > MAX_HEADER_BYTES {
        return refuse(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            &format!("request headers larger than {MAX_HEADER_BYTES} bytes"),
        );
    }
    let has_body = req.headers().contains_key(header::TRANSFER_ENCODING)
        || req
            .headers()
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0");
    if has_body {
        return refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            "requests to the faultline API carry no body",
        );
    }
    next.run(req).await
}

/// The router without state, guarded: what `router` serves, testable without the kernel.
fn guarded<S: Clone + Send + Sync + 'static>(routes: Router<S>) -> Router<S> {
    routes
        .fallback(|| async { refuse(
                StatusCode::NOT_FOUND,
                "no such endpoint; try /, /api/graph, /api/graph.svg, /api/graph.dot, /api/alerts, /metrics or /healthz",
            ) })
        .layer(middleware::from_fn(guard))
}

pub fn router(shared: Shared) -> Router {
    guarded(
        Router::new()
            .route("/", get(crate::sinks::report::page::index))
            .route("/ui/live", get(crate::sinks::report::page::live))
            .route("/api/graph.svg", get(crate::sinks::report::page::graph_svg))
            .route("/api/graph", get(graph))
            .route("/api/graph.dot", get(graph_dot))
            .route("/api/alerts", get(alerts))
            .route("/metrics", get(metrics_text))
            .route("/healthz", get(healthz)),
    )
    .with_state(shared)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{
        io::{Read, Write},
        net::TcpStream,
        time::Duration,
    };

    /// Serves the guarded router (with only /healthz, which needs no state) on loopback.
    fn serve() -> String {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        std_listener.set_nonblocking(true).expect("nonblocking");
        let addr = std_listener.local_addr().expect("addr").to_string();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(std_listener).expect("listener");
                let app: Router = guarded(Router::new().route("/healthz", get(healthz)));
                let _ = axum::serve(listener, app).await;
            });
        });
        addr
    }

    /// Sends raw bytes; returns the status code, or 0 when the server closed without one.
    fn send(addr: &str, raw: &[u8]) -> (u16, String) {
        let mut s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let _ = s.write_all(raw);
        let mut resp = Vec::new();
        let _ = s.read_to_end(&mut resp);
        let text = String::from_utf8_lossy(&resp).into_owned();
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        (status, text)
    }

    fn request(path: &str, extra: &str) -> Vec<u8> {
        format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{extra}\r\n").into_bytes()
    }

    #[test]
    fn the_api_refuses_writes_bodies_oversized_and_malformed_requests() {
        let addr = serve();
        assert_eq!(send(&addr, &request("/healthz", "")).0, 200);
        for method in ["POST", "PUT", "DELETE", "PATCH"] {
            let raw = format!("{method} /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 0\r\n\r\n");
            let (status, text) = send(&addr, raw.as_bytes());
            assert_eq!(status, 405, "{method}: {text}");
            assert!(text.contains("GET, HEAD"), "{text}");
        }
        let (status, text) = send(
            &addr,
            &request("/healthz", "Content-Length: 5\r\n")
                .into_iter()
                .chain(*b"hello")
                .collect::<Vec<u8>>(),
        );
        assert_eq!(status, 413, "{text}");
        let long = format!("/healthz?{}", "a".repeat(2 * MAX_URI_BYTES));
        assert_eq!(send(&addr, &request(&long, "")).0, 414);
        let big = format!("X-Junk: {}\r\n", "b".repeat(2 * MAX_HEADER_BYTES));
        assert_eq!(send(&addr, &request("/healthz", &big)).0, 431);
        // Far past any limit: refused by the HTTP layer itself, never a 200.
        let huge = format!("X-Junk: {}\r\n", "c".repeat(4 << 20));
        assert_ne!(send(&addr, &request("/healthz", &huge)).0, 200);
        assert_eq!(send(&addr, b"HELLO THERE\r\n\r\n").0, 400);
        assert_eq!(send(&addr, &request("/nope", "")).0, 404);
        // Still serving after all of it.
        let (status, text) = send(&addr, &request("/healthz", ""));
        assert_eq!(status, 200);
        assert!(text.ends_with("ok\n"), "{text}");
    }
}
