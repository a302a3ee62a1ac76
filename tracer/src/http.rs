//! The agent's HTTP API: thin adapters over the engine's views.

use std::sync::{Arc, Mutex, MutexGuard};

use axum::{extract::State, http::header, response::IntoResponse, routing::get, Json, Router};
use serde::Serialize;

use crate::{alerts::AlertSink, detect::Alert, live::LiveFeed, views::GraphView};

/// What the agent's tasks share. Locked briefly, never across an `.await`.
pub struct AgentState {
    pub feed: LiveFeed,
    pub sink: AlertSink,
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
    pub alerts: Vec<Alert>,
}

fn graph_view(shared: &Shared) -> GraphView {
    let st = lock(shared);
    let engine = st.feed.engine();
    GraphView::build(engine.model(), &engine.graph(), engine.now_ns())
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

async fn healthz() -> &'static str {
    "ok\n"
}

pub fn router(shared: Shared) -> Router {
    Router::new()
        .route("/api/graph", get(graph))
        .route("/api/graph.dot", get(graph_dot))
        .route("/api/alerts", get(alerts))
        .route("/healthz", get(healthz))
        .with_state(shared)
}
