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

/// The line logged at start when the API is reachable beyond loopback without TLS or without
/// authentication (no web config, or one that leaves either out).
pub fn exposure_warning(local: std::net::SocketAddr, web: &Web) -> Option<String> {
    if local.ip().is_loopback() {
        return None;
    }
    let active = web.current();
    let missing = match (
        active.tls.is_some(),
        active.users.is_some() || active.client_certs_required,
    ) {
        (true, true) => return None,
        (false, false) => "no TLS and no authentication",
        (false, true) => "no TLS (credentials and data cross the network in clear)",
        (true, false) => "no authentication (no basic_auth_users, no required client certificate)",
    };
    let how = if web.configured() {
        "complete the web config"
    } else {
        "add --web.config.file (TLS, basic_auth_users)"
    };
    Some(format!(
        "the HTTP API listens on {local}, beyond loopback, with {missing}: anyone who can reach it reads the graph (process names, pids, cgroups); {how}, or listen on 127.0.0.1"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn beyond_loopback_without_tls_or_authentication_is_warned_about() {
        let any: std::net::SocketAddr = "0.0.0.0:9720".parse().expect("addr");
        let lo: std::net::SocketAddr = "127.0.0.1:9720".parse().expect("addr");
        let none = Web::load(None).expect("no config");
        assert!(exposure_warning(lo, &none).is_none());
        let w = exposure_warning(any, &none).expect("warned");
        assert!(
            w.contains("no TLS and no authentication") && w.contains("--web.config.file"),
            "{w}"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("web.yml");
        let hash = bcrypt::hash("x", 4).expect("hash");
        std::fs::write(&path, format!("basic_auth_users:\n  u: '{hash}'\n")).expect("write");
        let users_only = Web::load(Some(&path)).expect("loads");
        let w = exposure_warning(any, &users_only).expect("warned");
        assert!(
            w.contains("no TLS (") && w.contains("complete the web config"),
            "{w}"
        );
    }
}
