//! Bounds the work the API does at once for its clients.
//!
//! Every view the API serves is copied out under the agent's lock and then rendered (JSON,
//! DOT, SVG, HTML, the Prometheus text). Both steps block a thread: the lock wait, and a large
//! graph's layout (a noticeable fraction of a second). Run on the async workers, they would stop
//! the timers and the ring buffer's readiness that those workers also drive; run on tokio's
//! blocking pool without a bound, a flood of clients would queue hundreds of threads, each one
//! taking the agent's lock in turn ahead of the ring-buffer consumer. So each request takes a
//! permit from a small gate, waits for one at most `MAX_WAIT`, and is otherwise answered
//! `503 Service Unavailable` with `Retry-After`: a client that asks too often is told to come
//! back, and the agent keeps draining.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use axum::{
    http::{header, StatusCode},
    response::{IntoResponse, Response},
};
use tokio::sync::Semaphore;

/// How long a request waits for a permit before it is refused: long enough for a scrape that
/// arrives while another one renders, short enough that a flood does not pile up.
pub const MAX_WAIT: Duration = Duration::from_secs(1);
/// What a refused client is told (`Retry-After`, seconds).
pub const RETRY_AFTER_SECS: u64 = 1;
/// Refusals are logged at most this often (with the count since the last line): a flood of
/// clients must not become a flood of log lines.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// Why a gated render gave no result.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("too many requests are being rendered at once; retry in {RETRY_AFTER_SECS} s")]
    Busy,
    #[error("rendering failed: {0}")]
    Failed(String),
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        let body = format!("{self}\n");
        match self {
            Self::Busy => (
                StatusCode::SERVICE_UNAVAILABLE,
                [
                    (header::CONTENT_TYPE, "text/plain; charset=utf-8".to_owned()),
                    (header::RETRY_AFTER, RETRY_AFTER_SECS.to_string()),
                ],
                body,
            )
                .into_response(),
            Self::Failed(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8".to_owned())],
                body,
            )
                .into_response(),
        }
    }
}

/// A bound on concurrent renders of one kind, with a count of what it refused.
pub struct RenderGate {
    name: &'static str,
    size: usize,
    permits: Semaphore,
    refused: AtomicU64,
    /// Refusals not yet logged, and when the last line was (`None`: never).
    unlogged: std::sync::Mutex<(u64, Option<Instant>)>,
}

impl RenderGate {
    pub const fn new(name: &'static str, permits: usize) -> Self {
        Self {
            name,
            size: permits,
            permits: Semaphore::const_new(permits),
            refused: AtomicU64::new(0),
            unlogged: std::sync::Mutex::new((0, None)),
        }
    }

    /// Requests refused since the agent started.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Runs `work` (copy under the agent's lock, then render) on a blocking thread once a
    /// permit is free; `Busy` when none freed within `wait`.
    pub async fn run<T: Send + 'static>(
        &'static self,
        wait: Duration,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Refused> {
        let permit = match tokio::time::timeout(wait, self.permits.acquire()).await {
            Ok(Ok(p)) => p,
            // Timed out, or (never: the gate is not closed) closed.
            _ => {
                self.note_refusal();
                return Err(Refused::Busy);
            }
        };
        let done = tokio::task::spawn_blocking(work).await;
        drop(permit);
        done.map_err(|e| Refused::Failed(e.to_string()))
    }

    fn note_refusal(&self) {
        self.refused.fetch_add(1, Ordering::Relaxed);
        let mut u = self.unlogged.lock().unwrap_or_else(|e| e.into_inner());
        u.0 += 1;
        let now = Instant::now();
        if u.1.is_none_or(|last| now.duration_since(last) >= LOG_EVERY) {
            log::warn!(
                "HTTP API: refused {} {} request(s) with 503 since the last such line: more clients at once than the agent renders ({} at a time); faultline_api_requests_refused_total counts them",
                u.0,
                self.name,
                self.size,
            );
            *u = (0, Some(now));
        }
    }
}

/// Views drawn or serialized for a client at once: the live page, SVG, the graph as JSON or
/// DOT, the alerts. Two: the host has other work, and a render rarely takes long.
const RENDER_PERMITS: usize = 2;
/// `/metrics` scrapes at once: their own gate, so a page left open in many browsers cannot
/// refuse Prometheus.
const SCRAPE_PERMITS: usize = 2;

pub static RENDERS: RenderGate = RenderGate::new("render", RENDER_PERMITS);
pub static SCRAPES: RenderGate = RenderGate::new("scrape", SCRAPE_PERMITS);

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_gate_runs_at_most_its_permits_and_refuses_past_the_wait() {
        static GATE: RenderGate = RenderGate::new("test", 1);
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let first = tokio::spawn(GATE.run(Duration::from_secs(5), move || {
            started_tx.send(()).expect("started");
            release_rx.recv().expect("released");
            1
        }));
        tokio::task::spawn_blocking(move || started_rx.recv().expect("first started"))
            .await
            .expect("join");
        // The only permit is taken: a second request waits, then is refused.
        let second = GATE.run(Duration::from_millis(50), || 2).await;
        assert!(matches!(second, Err(Refused::Busy)), "{second:?}");
        assert_eq!(GATE.refused(), 1);
        release_tx.send(()).expect("release");
        assert_eq!(first.await.expect("join").expect("first ran"), 1);
        // Free again: served.
        assert_eq!(
            GATE.run(Duration::from_millis(50), || 3)
                .await
                .expect("ran"),
            3
        );
        assert_eq!(GATE.refused(), 1);
    }
}
