//! The agent's HTTP API: thin adapters over the views the agent hands out (`AgentView`).

use axum::{
    extract::{Request, State},
    http::{header, Method, StatusCode},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
    Router,
};

use crate::sinks::{
    agent_view::Agent,
    metrics, pprof,
    render_gate::{Refused, MAX_WAIT, RENDERS, SCRAPES},
    report::page,
};

async fn graph(State(agent): State<Agent>) -> Response {
    // Copied under the agent's lock and serialized on a gated blocking thread (`render_gate`).
    let body = RENDERS
        .run(MAX_WAIT, move || serde_json::to_vec(&agent.graph()))
        .await;
    json(body)
}

/// A JSON document serialized off the async workers, or why there is none.
fn json(body: Result<serde_json::Result<Vec<u8>>, Refused>) -> Response {
    match body {
        Ok(Ok(doc)) => ([(header::CONTENT_TYPE, "application/json")], doc).into_response(),
        Ok(Err(e)) => Refused::Failed(e.to_string()).into_response(),
        Err(r) => r.into_response(),
    }
}

async fn graph_dot(State(agent): State<Agent>) -> Response {
    match RENDERS.run(MAX_WAIT, move || agent.graph().to_dot()).await {
        Ok(dot) => (
            [(header::CONTENT_TYPE, "text/vnd.graphviz; charset=utf-8")],
            dot,
        )
            .into_response(),
        Err(r) => r.into_response(),
    }
}

async fn alerts(State(agent): State<Agent>) -> Response {
    json(
        RENDERS
            .run(MAX_WAIT, move || serde_json::to_vec(&agent.alerts()))
            .await,
    )
}

async fn metrics_text(State(agent): State<Agent>) -> Response {
    // Gathered from a snapshot the agent copies under its lock (its /proc reads cached, off
    // the lock), rendered outside it; at most `SCRAPE_PERMITS` scrapes at once.
    let rendered = SCRAPES
        .run(MAX_WAIT, move || {
            agent.metrics().and_then(|mut m| {
                m.api_refused = [("render", RENDERS.refused()), ("scrape", SCRAPES.refused())];
                metrics::render(&m).map_err(|e| e.to_string())
            })
        })
        .await;
    match rendered {
        Ok(Ok(text)) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Ok(Err(e)) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("reading the probes' maps failed: {e}\n"),
        )
            .into_response(),
        Err(r) => r.into_response(),
    }
}

/// Longest `?seconds=` window of `/debug/pprof/kernel_lock`: a client waiting longer would hold
/// one of the capped connections for nothing a scraper needs (Parca and Alloy ask for ~10 s).
pub const MAX_PROFILE_SECONDS: u64 = 300;

/// `seconds` of a query string (`seconds=10&x=y`): `Ok(None)` when absent, `Err` when not a
/// whole number of seconds within `MAX_PROFILE_SECONDS`.
fn profile_seconds(query: Option<&str>) -> Result<Option<u64>, String> {
    let Some(v) = query
        .unwrap_or_default()
        .split('&')
        .find_map(|kv| kv.strip_prefix("seconds="))
    else {
        return Ok(None);
    };
    match v.parse::<u64>() {
        Ok(0) => Ok(None),
        Ok(n) if n <= MAX_PROFILE_SECONDS => Ok(Some(n)),
        _ => Err(format!(
            "seconds={v}: a whole number of seconds up to {MAX_PROFILE_SECONDS}"
        )),
    }
}

/// A profile as gzipped pprof: cumulative since the agent started, or with `?seconds=N` what
/// the next N seconds added (Go's net/http/pprof convention, which Parca's and Alloy's delta
/// scrapes use). `read` takes it from the agent, `since` makes the window, `encode` writes it.
async fn pprof_response<P: Send + 'static>(
    agent: Agent,
    uri: axum::http::Uri,
    read: fn(&Agent) -> Result<P, String>,
    since: fn(&P, &P) -> P,
    encode: fn(&P, i64, i64) -> Vec<u8>,
    filename: &'static str,
) -> Response {
    let seconds = match profile_seconds(uri.query()) {
        Ok(s) => s,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, &e),
    };
    let take = |agent: Agent| RENDERS.run(MAX_WAIT, move || read(&agent));
    let first = match take(agent.clone()).await {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => return Refused::Failed(e).into_response(),
        Err(r) => return r.into_response(),
    };
    let (profile, window) = match seconds {
        None => (first, std::time::Duration::ZERO),
        Some(n) => {
            let window = std::time::Duration::from_secs(n);
            tokio::time::sleep(window).await;
            match take(agent).await {
                Ok(Ok(later)) => (since(&later, &first), window),
                Ok(Err(e)) => return Refused::Failed(e).into_response(),
                Err(r) => return r.into_response(),
            }
        }
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
    let window = i64::try_from(window.as_nanos()).unwrap_or(i64::MAX);
    match RENDERS
        .run(MAX_WAIT, move || encode(&profile, now, window))
        .await
    {
        Ok(body) => (
            [
                (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
                (
                    header::CONTENT_DISPOSITION,
                    format!("attachment; filename=\"{filename}\""),
                ),
            ],
            body,
        )
            .into_response(),
        Err(r) => r.into_response(),
    }
}

/// The kernel lock-contention profile (`/debug/pprof/kernel_lock`). Named `kernel_lock`,
/// never `mutex`.
async fn kernel_lock_profile(State(agent): State<Agent>, uri: axum::http::Uri) -> Response {
    pprof_response(
        agent,
        uri,
        |a| a.lock_profile(),
        |later, first| later.since(first),
        pprof::encode,
        "kernel_lock.pb.gz",
    )
    .await
}

/// The user-lock profile (`/debug/pprof/user_lock`), with the same conventions.
async fn user_lock_profile(State(agent): State<Agent>, uri: axum::http::Uri) -> Response {
    pprof_response(
        agent,
        uri,
        |a| a.user_lock_profile(),
        |later, first| later.since(first),
        pprof::user::encode,
        "user_lock.pb.gz",
    )
    .await
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// Longest request target accepted: every route is short, and only the profile reads a query.
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

/// The API over the agent's views.
pub fn router(agent: Agent) -> Router {
    guarded(
        Router::new()
            .route("/", get(page::index))
            .route("/ui/live", get(page::live))
            .route("/ui/flame", get(page::flame))
            .route("/api/graph.svg", get(page::graph_svg))
            .route("/api/graph", get(graph))
            .route("/api/graph.dot", get(graph_dot))
            .route("/api/alerts", get(alerts))
            .route("/metrics", get(metrics_text))
            .route("/debug/pprof/kernel_lock", get(kernel_lock_profile))
            .route("/debug/pprof/user_lock", get(user_lock_profile))
            .route("/healthz", get(healthz)),
    )
    .with_state(agent)
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

    #[test]
    fn the_profile_window_is_read_from_the_query_and_bounded() {
        assert_eq!(profile_seconds(None), Ok(None));
        assert_eq!(profile_seconds(Some("seconds=10")), Ok(Some(10)));
        assert_eq!(profile_seconds(Some("debug=1&seconds=5")), Ok(Some(5)));
        assert_eq!(profile_seconds(Some("seconds=0")), Ok(None));
        assert!(profile_seconds(Some("seconds=301")).is_err());
        assert!(profile_seconds(Some("seconds=ten")).is_err());
    }
}
