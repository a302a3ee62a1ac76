//! The request layer every TCP request passes before the API: the Host check on loopback, basic
//! authentication when users are configured (all paths but `/healthz`, which says only that
//! the agent runs, for a liveness probe that has no credentials), and the configured response
//! headers.

use std::{net::IpAddr, sync::Arc};

use axum::{
    extract::{Request, State},
    http::{header, HeaderValue, StatusCode},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    Router,
};
use tokio::sync::Semaphore;

use super::{
    auth::{basic_credentials, Limiter},
    host::host_ok,
    reload::Web,
    serve::PeerAddr,
};

/// What the layer needs: the config in force, the loopback names, the wrong-credential limit.
pub struct Gate {
    web: Arc<Web>,
    hosts: Option<Vec<String>>,
    limiter: Limiter,
    /// bcrypt checks at once: each takes a core for tens of milliseconds.
    checks: Semaphore,
}

impl Gate {
    pub fn new(web: Arc<Web>, hosts: Option<Vec<String>>) -> Arc<Self> {
        Arc::new(Self {
            web,
            hosts,
            limiter: Limiter::default(),
            checks: Semaphore::new(2),
        })
    }
}

fn text(status: StatusCode, why: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{why}\n"),
    )
        .into_response()
}

fn unauthorized(why: &str) -> Response {
    let mut r = text(StatusCode::UNAUTHORIZED, why.to_owned());
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"faultline\", charset=\"UTF-8\""),
    );
    r
}

/// What the gate reads of a request (the request itself is not `Sync`, so it is not held
/// across the password check's await).
struct Asked {
    host: Option<Vec<u8>>,
    healthz: bool,
    credentials: Option<(String, String)>,
    peer: Option<IpAddr>,
}

impl Asked {
    fn of(req: &Request) -> Self {
        Self {
            host: req
                .headers()
                .get(header::HOST)
                .map(|h| h.as_bytes().to_vec()),
            healthz: req.uri().path() == "/healthz",
            credentials: req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|h| basic_credentials(h.as_bytes())),
            peer: req.extensions().get::<PeerAddr>().map(|p| p.0.ip()),
        }
    }
}

async fn check(gate: &Gate, req: Asked) -> Result<(), Response> {
    if let Some(hosts) = &gate.hosts {
        if !host_ok(hosts, req.host.as_deref()) {
            return Err(text(
                StatusCode::MISDIRECTED_REQUEST,
                format!(
                    "this agent listens on loopback and answers only to {}; the Host header named something else",
                    hosts.join(", ")
                ),
            ));
        }
    }
    let active = gate.web.current();
    let Some(users) = &active.users else {
        return Ok(());
    };
    if req.healthz {
        return Ok(());
    }
    let Some((user, pass)) = req.credentials else {
        return Err(unauthorized("authentication required (HTTP basic)"));
    };
    if users.remembered(&user, &pass) {
        return Ok(());
    }
    // No peer address (not from the TCP accept loop): one shared bucket.
    let ip = req.peer.unwrap_or(IpAddr::from([0, 0, 0, 0]));
    if let Err(wait) = gate.limiter.check(ip) {
        let mut r = text(
            StatusCode::TOO_MANY_REQUESTS,
            "too many wrong credentials from this address; wait and retry".to_owned(),
        );
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        return Err(r);
    }
    let good = {
        let _permit = gate
            .checks
            .acquire()
            .await
            .map_err(|_| text(StatusCode::SERVICE_UNAVAILABLE, "shutting down".to_owned()))?;
        let active = active.clone();
        tokio::task::spawn_blocking(move || {
            active
                .users
                .as_ref()
                .is_some_and(|u| u.verify(&user, &pass))
        })
        .await
        .unwrap_or(false)
    };
    if good {
        Ok(())
    } else {
        gate.limiter.failed(ip);
        Err(unauthorized("wrong user name or password"))
    }
}

async fn gate(State(gate): State<Arc<Gate>>, req: Request, next: Next) -> Response {
    let active = gate.web.current();
    let asked = Asked::of(&req);
    let mut resp = match check(&gate, asked).await {
        Ok(()) => next.run(req).await,
        Err(r) => r,
    };
    for (name, value) in &active.headers {
        resp.headers_mut().insert(name.clone(), value.clone());
    }
    resp
}

/// `router` behind the gate: what the TCP listener serves. (A Unix-socket listener, whose
/// peers are checked by the kernel, serves `router` as it is.)
pub fn gated(router: Router, gate: Arc<Gate>) -> Router {
    router.layer(middleware::from_fn_with_state(gate, self::gate))
}
