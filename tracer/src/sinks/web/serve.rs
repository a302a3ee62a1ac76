//! The accept loop: what `axum::serve` does, plus what it leaves out and a slow client would
//! use to starve the agent of descriptors. Each connection gets a TLS handshake timeout and a
//! header-read timeout; and connections are capped.
//!
//! The header-read timeout is also the idle timeout: hyper starts it whenever it waits for a
//! request head, on a fresh connection and between two requests on a kept-alive one alike, so a
//! connection that says nothing for that long is closed either way.
//!
//! The cap: at most `max_connections` at once. A new connection past the cap closes the oldest
//! one that has no request in flight (one still in its handshake, sending its head slowly, or
//! idle between requests): a real client sends its request as soon as it is connected, so only
//! connections that hold a slot without using it are pushed out, and a flood of half-open
//! connections cannot keep a scraper away. When every connection has a request in flight, the
//! new one is closed at once.

use std::{
    collections::BTreeMap,
    convert::Infallible,
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use axum::{body::Body, extract::Request, Router};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpListener,
    sync::oneshot,
};
use tower_service::Service as _;

use super::reload::Web;

/// How often reaching the cap is logged at most.
const FULL_LOG_EVERY: Duration = Duration::from_secs(60);

/// The client's address, put in each request's extensions for the rate limit.
#[derive(Clone, Copy, Debug)]
pub struct PeerAddr(pub SocketAddr);

/// What bounds a connection.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// From connecting (or the end of the last response) to the end of a request head.
    pub header_read_timeout: Duration,
    pub tls_handshake_timeout: Duration,
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            // Scrapers and browsers send their head in one packet; 10 s is patient for a slow
            // link and short against a slowloris.
            header_read_timeout: Duration::from_secs(10),
            tls_handshake_timeout: Duration::from_secs(10),
            // Far above what scrapers and a few browser tabs use, and below the 1024
            // descriptors a service gets by default.
            max_connections: 512,
        }
    }
}

struct Slot {
    in_flight: Arc<AtomicUsize>,
    close: oneshot::Sender<()>,
}

/// The open connections, oldest first (ids only grow).
#[derive(Default)]
struct Slots {
    next: u64,
    open: BTreeMap<u64, Slot>,
}

type Shared = Arc<Mutex<Slots>>;

fn lock(s: &Shared) -> std::sync::MutexGuard<'_, Slots> {
    s.lock().unwrap_or_else(|e| e.into_inner())
}

/// Makes room for a new connection; `None` when every slot has a request in flight.
fn admit(slots: &Shared, max: usize) -> Option<(u64, Arc<AtomicUsize>, oneshot::Receiver<()>)> {
    let mut s = lock(slots);
    if s.open.len() >= max {
        let idle = s
            .open
            .iter()
            .find(|(_, slot)| slot.in_flight.load(Ordering::Acquire) == 0)
            .map(|(id, _)| *id)?;
        if let Some(slot) = s.open.remove(&idle) {
            let _ = slot.close.send(());
        }
    }
    let id = s.next;
    s.next += 1;
    let in_flight = Arc::new(AtomicUsize::new(0));
    let (close, closed) = oneshot::channel();
    s.open.insert(
        id,
        Slot {
            in_flight: in_flight.clone(),
            close,
        },
    );
    Some((id, in_flight, closed))
}

/// Frees the slot when the connection's task ends, however it ends.
struct Release(Shared, u64);

impl Drop for Release {
    fn drop(&mut self) {
        lock(&self.0).open.remove(&self.1);
    }
}

/// A request in flight on a connection (not to be pushed out for a new one).
struct Busy(Arc<AtomicUsize>);

impl Busy {
    fn new(c: &Arc<AtomicUsize>) -> Self {
        c.fetch_add(1, Ordering::AcqRel);
        Self(c.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

async fn http1<IO>(
    io: IO,
    app: Router,
    peer: SocketAddr,
    in_flight: Arc<AtomicUsize>,
    limits: Limits,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        req.extensions_mut().insert(PeerAddr(peer));
        let busy = Busy::new(&in_flight);
        let mut app = app.clone();
        async move {
            let resp: Result<axum::response::Response, Infallible> =
                app.call(req.map(Body::new)).await;
            drop(busy);
            resp
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .serve_connection(TokioIo::new(io), svc);
    // Errors here are the client's (a reset, a malformed or late head): nothing to report.
    let _ = conn.await;
}

/// Serves `app` on `listener` until the task is dropped, with TLS when the web config in force
/// has it (read per connection, so a reload applies to the next one).
pub async fn serve(listener: TcpListener, app: Router, web: Arc<Web>, limits: Limits) {
    let slots: Shared = Arc::default();
    let mut refused_logged = false;
    let mut last_full: Option<std::time::Instant> = None;
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of descriptors or memory: wait for connections to end instead of
                // spinning, and say it once.
                if !refused_logged {
                    log::warn!("HTTP API: accepting a connection failed: {e}");
                    refused_logged = true;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Only this loop adds connections: the count read here is the one `admit` sees.
        let full = lock(&slots).open.len() >= limits.max_connections;
        if full && last_full.is_none_or(|t| t.elapsed() >= FULL_LOG_EVERY) {
            log::warn!(
                "HTTP API: {} connections open, the most allowed; closing idle ones for new ones (a client is holding connections open)",
                limits.max_connections
            );
            last_full = Some(std::time::Instant::now());
        }
        let Some((id, in_flight, closed)) = admit(&slots, limits.max_connections) else {
            // Every slot busy with a request: this one is closed (dropped) unanswered.
            continue;
        };
        let _ = stream.set_nodelay(true);
        let release = Release(slots.clone(), id);
        let tls = web.current().tls.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let _release = release;
            let work = async move {
                match tls {
                    Some(config) => {
                        let accept = tokio_rustls::TlsAcceptor::from(config).accept(stream);
                        if let Ok(Ok(tls_stream)) =
                            tokio::time::timeout(limits.tls_handshake_timeout, accept).await
                        {
                            http1(tls_stream, app, peer, in_flight, limits).await;
                        }
                    }
                    None => http1(stream, app, peer, in_flight, limits).await,
                }
            };
            tokio::select! {
                _ = work => {}
                // Pushed out for a newer connection: dropping closes it.
                _ = closed => {}
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn past_the_cap_the_oldest_idle_connection_makes_room() {
        let slots: Shared = Arc::default();
        let (a, a_busy, _a_closed) = admit(&slots, 2).expect("room");
        let (_b, _, mut b_closed) = admit(&slots, 2).expect("room");
        let _busy = Busy::new(&a_busy);
        // a has a request in flight; b is idle and goes.
        let (c, c_busy, _c_closed) = admit(&slots, 2).expect("b makes room");
        assert!(b_closed.try_recv().is_ok(), "b was told to close");
        assert_eq!(
            lock(&slots).open.keys().copied().collect::<Vec<_>>(),
            vec![a, c]
        );
        let _busy_c = Busy::new(&c_busy);
        assert!(
            admit(&slots, 2).is_none(),
            "all busy: the new one is refused"
        );
        drop(Release(slots.clone(), a));
        assert!(admit(&slots, 2).is_some());
    }
}
