//! The HTTP API's TCP front (`sinks::web`), served for real on loopback in this process (no
//! kernel needed: the front knows nothing of what it serves): authentication and its rate
//! limit, TLS with client certificates, the config reread from disk, half-open connections,
//! the Host check; and the agent's refusal of a bad file (before it loads anything). What needs
//! a running agent (a real Prometheus scraping it over TLS, the warning beyond loopback, a
//! scrape behind half-open connections) is in `prometheus.rs`.

#[path = "web/pki.rs"]
mod pki;

use std::{
    io::{Read, Write},
    net::TcpStream,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use axum::{routing, Router};
use base64::Engine as _;
use tracer::sinks::web::{self, Limits, Web};

/// Serves a small router (what the agent's API looks like to the front) behind the web front.
fn serve(config: Option<&Path>, limits: Limits) -> String {
    let web = Web::load(config).expect("web config loads");
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    std_listener.set_nonblocking(true).expect("nonblocking");
    let addr = std_listener.local_addr().expect("addr").to_string();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(std_listener).expect("listener");
            let app = Router::new()
                .route("/healthz", routing::get(|| async { "ok\n" }))
                .route("/metrics", routing::get(|| async { "faultline_up 1\n" }))
                .route("/api/graph", routing::get(|| async { "{}" }));
            let task = web::spawn(listener, app, web, limits).expect("serve");
            let _ = task.await;
        });
    });
    addr
}

/// A plain HTTP/1.1 request; the status (0 when the connection closed without one).
fn get(addr: &str, path: &str, host: &str, auth: Option<(&str, &str)>) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let authz = auth
        .map(|(u, p)| {
            format!(
                "Authorization: Basic {}\r\n",
                base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
            )
        })
        .unwrap_or_default();
    let _ = write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n{authz}\r\n"
    );
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

fn users_config(dir: &Path, user: &str, password: &str) -> std::path::PathBuf {
    let path = dir.join("web.yml");
    pki::replace(
        &path,
        &format!("basic_auth_users:\n  {user}: '{}'\n", pki::hash(password)),
    );
    path
}

#[test]
fn without_credentials_every_path_but_healthz_is_401_and_guessing_is_rate_limited() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = users_config(dir.path(), "prometheus", "right");
    let addr = serve(Some(&config), Limits::default());
    let host = addr.as_str();
    assert_eq!(get(&addr, "/healthz", host, None).0, 200);
    for path in ["/metrics", "/api/graph", "/", "/nope"] {
        let (status, text) = get(&addr, path, host, None);
        assert_eq!(status, 401, "{path} without credentials: {text}");
        assert!(
            text.contains("WWW-Authenticate: Basic") || text.contains("www-authenticate: Basic"),
            "{text}"
        );
    }
    assert_eq!(
        get(&addr, "/metrics", host, Some(("prometheus", "right"))).0,
        200
    );
    // Wrong passwords: 401 while the client has tokens (10), then 429 with Retry-After.
    let mut statuses = Vec::new();
    for _ in 0..14 {
        statuses.push(get(&addr, "/metrics", host, Some(("prometheus", "wrong"))).0);
    }
    assert!(statuses[..10].iter().all(|&s| s == 401), "{statuses:?}");
    assert!(
        statuses[11..].iter().all(|&s| s == 429),
        "guessing goes on unlimited: {statuses:?}"
    );
    let (_, text) = get(&addr, "/metrics", host, Some(("mallory", "x")));
    assert!(
        text.to_ascii_lowercase().contains("retry-after: "),
        "{text}"
    );
    // A known-good scraper behind the same address is not locked out.
    assert_eq!(
        get(&addr, "/metrics", host, Some(("prometheus", "right"))).0,
        200
    );
    assert_eq!(get(&addr, "/healthz", host, None).0, 200);
}

#[test]
fn tls_with_client_certificates_serves_only_verified_clients_with_credentials() {
    let pki = pki::Pki::new();
    let config = pki.dir.path().join("web.yml");
    pki::replace(&config, &pki.tls_config("prometheus", "s3cret"));
    let addr = serve(Some(&config), Limits::default());
    let (status, text) = pki
        .get(&addr, "/metrics", true, Some(("prometheus", "s3cret")))
        .expect("TLS with a client certificate");
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("faultline_up 1"), "{text}");
    assert!(
        text.to_ascii_lowercase()
            .contains("x-content-type-options: nosniff"),
        "{text}"
    );
    assert_eq!(pki.get(&addr, "/metrics", true, None).expect("TLS").0, 401);
    assert!(
        pki.get(&addr, "/healthz", false, None).is_err(),
        "a client without a certificate finished the handshake"
    );
    // Plain HTTP on the TLS port gets no answer.
    assert_eq!(get(&addr, "/healthz", &addr, None).0, 0);
}

#[test]
fn a_changed_config_file_takes_effect_without_restart_and_a_bad_one_is_ignored() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = users_config(dir.path(), "prometheus", "first");
    let addr = serve(Some(&config), Limits::default());
    let host = addr.as_str();
    assert_eq!(
        get(&addr, "/metrics", host, Some(("prometheus", "first"))).0,
        200
    );
    users_config(dir.path(), "prometheus", "second");
    let deadline = Instant::now() + web::reload::POLL * 4;
    while get(&addr, "/metrics", host, Some(("prometheus", "second"))).0 != 200 {
        assert!(
            Instant::now() < deadline,
            "the new password never took effect"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        get(&addr, "/metrics", host, Some(("prometheus", "first"))).0,
        401
    );
    // A broken file: the config in force stays.
    pki::replace(&config, "basic_auth_users:\n  prometheus: not-a-hash\n");
    std::thread::sleep(web::reload::POLL * 2);
    assert_eq!(
        get(&addr, "/metrics", host, Some(("prometheus", "second"))).0,
        200
    );
}

#[test]
fn a_renewed_certificate_is_served_without_restart() {
    let old = pki::Pki::new();
    let config = old.dir.path().join("web.yml");
    pki::replace(&config, &old.tls_config("prometheus", "s3cret"));
    let addr = serve(Some(&config), Limits::default());
    let auth = Some(("prometheus", "s3cret"));
    assert_eq!(old.get(&addr, "/metrics", true, auth).expect("TLS").0, 200);
    // A new CA signs the new server and client certificates; the config file is untouched.
    let new = pki::Pki::new();
    assert!(
        new.get(&addr, "/metrics", true, auth).is_err(),
        "the new CA was trusted already"
    );
    for (from, to) in [
        (&new.server_cert, &old.server_cert),
        (&new.server_key, &old.server_key),
        (&new.ca, &old.ca),
    ] {
        pki::replace(to, &std::fs::read_to_string(from).expect("read pem"));
    }
    let deadline = Instant::now() + web::reload::POLL * 4;
    while new.get(&addr, "/metrics", true, auth).map(|r| r.0) != Ok(200) {
        assert!(
            Instant::now() < deadline,
            "the renewed certificate was never served"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_thousand_half_open_connections_do_not_keep_a_scrape_waiting() {
    let addr = serve(None, Limits::default());
    let host = addr.as_str();
    let mut held = Vec::new();
    for i in 0..1000 {
        let mut s = TcpStream::connect(&addr).expect("half-open connection");
        // Half say nothing, half start a head and never finish it.
        if i % 2 == 1 {
            let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: ");
        }
        held.push(s);
    }
    let start = Instant::now();
    let (status, text) = get(&addr, "/metrics", host, None);
    let took = start.elapsed();
    assert_eq!(status, 200, "{text}");
    assert!(
        took < Duration::from_secs(1),
        "the scrape took {took:?} behind 1000 half-open connections"
    );
    drop(held);
}

#[test]
fn a_connection_that_sends_no_head_is_closed_after_the_header_read_timeout() {
    let limits = Limits {
        header_read_timeout: Duration::from_millis(500),
        ..Limits::default()
    };
    let addr = serve(None, limits);
    let mut s = TcpStream::connect(&addr).expect("connect");
    let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHo");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let start = Instant::now();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "a slow head held its connection {:?}",
        start.elapsed()
    );
    // Idle after a response on a kept-alive connection: closed too.
    let mut s = TcpStream::connect(&addr).expect("connect");
    write!(s, "GET /healthz HTTP/1.1\r\nHost: {addr}\r\n\r\n").expect("request");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let start = Instant::now();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    assert!(String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 200"));
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "an idle kept-alive connection stayed open {:?}",
        start.elapsed()
    );
}

#[test]
fn a_tls_connection_that_never_finishes_its_handshake_is_closed() {
    let pki = pki::Pki::new();
    let config = pki.dir.path().join("web.yml");
    pki::replace(&config, &pki.tls_config("prometheus", "s3cret"));
    let limits = Limits {
        tls_handshake_timeout: Duration::from_millis(500),
        ..Limits::default()
    };
    let addr = serve(Some(&config), limits);
    let mut s = TcpStream::connect(&addr).expect("connect");
    // The first bytes of a ClientHello record, then nothing.
    let _ = s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00]);
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let start = Instant::now();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "a stalled handshake held its connection {:?}",
        start.elapsed()
    );
}

#[test]
fn on_loopback_only_requests_naming_the_loopback_address_are_served() {
    let addr = serve(None, Limits::default());
    let port = addr.rsplit(':').next().expect("port");
    for host in [
        addr.clone(),
        format!("localhost:{port}"),
        format!("[::1]:{port}"),
    ] {
        assert_eq!(get(&addr, "/metrics", &host, None).0, 200, "Host: {host}");
    }
    for host in [format!("evil.example:{port}"), "evil.example".to_owned()] {
        let (status, text) = get(&addr, "/metrics", &host, None);
        assert_eq!(
            status, 421,
            "Host: {host} (DNS rebinding) was served: {text}"
        );
    }
}

const FAULTLINE: &str = env!("CARGO_BIN_EXE_faultline");

#[test]
fn the_agent_refuses_to_start_on_a_bad_web_config_with_one_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("web.yml");
    std::fs::write(&config, "tls_server_config:\n  cert_file: /nonexistent/server.crt\n  key_file: /nonexistent/server.key\n").expect("write");
    let out = Command::new(FAULTLINE)
        .args(["agent", "--listen", "127.0.0.1:0", "--web.config.file"])
        .arg(&config)
        .env("FAULTLINE_RUN_DIR", dir.path().join("run"))
        .output()
        .expect("run faultline");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(
        lines[0].contains(&config.display().to_string())
            && lines[0].contains("tls_server_config.cert_file"),
        "{err}"
    );
    // The config-file key and the environment variable name the same setting.
    let toml = dir.path().join("faultline.toml");
    std::fs::write(
        &toml,
        format!("web_config_file = \"{}\"\n", config.display()),
    )
    .expect("write");
    let out = Command::new(FAULTLINE)
        .args(["agent", "--listen", "127.0.0.1:0", "--config"])
        .arg(&toml)
        .env("FAULTLINE_RUN_DIR", dir.path().join("run"))
        .output()
        .expect("run faultline");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("tls_server_config.cert_file"));
}
