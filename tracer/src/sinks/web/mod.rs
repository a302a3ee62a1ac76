//! The HTTP API's TCP front: the Prometheus exporter-toolkit's web config (TLS with rustls,
//! basic authentication against bcrypt hashes, response headers), reread when its files change;
//! the Host check on loopback; and an accept loop with timeouts and a connection cap, so that
//! no client can hold the agent's descriptors. The API itself (`sinks::http::router`) knows
//! nothing of this: `serve` puts it behind the gate.

pub mod auth;
pub mod config;
pub mod gate;
pub mod host;
pub mod reload;
pub mod serve;
pub mod tls;

use std::sync::Arc;

use axum::Router;
use tokio::net::TcpListener;

pub use self::{config::WebConfigError, reload::Web, serve::Limits};

/// Serves `router` on `listener` behind the gate, and rereads the web config as it changes,
/// until the returned task is aborted.
pub fn spawn(
    listener: TcpListener,
    router: Router,
    web: Arc<Web>,
    limits: Limits,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let local = listener.local_addr()?;
    let app = gate::gated(
        router,
        gate::Gate::new(web.clone(), host::allowed_hosts(local)),
    );
    Ok(tokio::spawn(async move {
        let watch = tokio::spawn(web.clone().watch());
        // Aborting this task drops the watcher's handle, which does not stop it: stop it here.
        struct StopOnDrop(tokio::task::JoinHandle<()>);
        impl Drop for StopOnDrop {
            fn drop(&mut self) {
                self.0.abort();
            }
        }
        let _watch = StopOnDrop(watch);
        serve::serve(listener, app, web, limits).await;
    }))
}

/// The line logged at start when the API is reachable beyond loopback with no web config.
pub fn exposure_warning(local: std::net::SocketAddr, web: &Web) -> Option<String> {
    (!local.ip().is_loopback() && !web.configured()).then(|| {
        format!(
            "the HTTP API listens on {local}, beyond loopback, without --web.config.file: no TLS and no authentication, so anyone who can reach it reads the graph (process names, pids, cgroups); add a web config (TLS, basic_auth_users) or listen on 127.0.0.1"
        )
    })
}
