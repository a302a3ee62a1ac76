//! The agent's metrics against a real Prometheus (Debian's package, installed by `cargo xtask
//! setup`): it scrapes the agent on loopback, a contention workload runs, and the mmap_lock
//! histograms move in Prometheus' own answers. The scrape passes `promtool check metrics`, and
//! every metric the dashboard and the alert rules name exists in it.

mod common;
#[path = "web/pki.rs"]
mod pki;

use std::{
    io::Write,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::{http_get, require_root, scenario, Faultline};
use faultline_dashboards::{dashboard_queries, metric_names, rule_exprs, scraped_names};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

struct Prometheus {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(target: &str) -> Self {
        Self::start_with(target, "")
    }

    /// With `job` added to the scrape job's settings (indented as its keys).
    fn start_with(target: &str, job: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: faultline\n{job}    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .expect("write prometheus.yml");
        let addr = format!("127.0.0.1:{}", free_port());
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus (Debian package `prometheus`, installed by `cargo xtask setup`)");
        let p = Self {
            child,
            addr,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(&p.addr).is_ok()
                && http_get(&p.addr, "/-/ready").0 == 200
            {
                return p;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("prometheus did not become ready on {}", p.addr);
    }

    /// The value of an instant query returning one sample, if any.
    fn value(&self, query: &str) -> Option<f64> {
        let (status, body) = http_get(
            &self.addr,
            &format!("/api/v1/query?query={}", urlencode(query)),
        );
        assert_eq!(status, 200, "{query}: {body}");
        let doc: serde_json::Value = serde_json::from_str(&body).expect("query JSON");
        doc["data"]["result"][0]["value"][1]
            .as_str()
            .and_then(|v| v.parse().ok())
    }

    fn wait_for(&self, what: &str, query: &str, ok: impl Fn(f64) -> bool) -> f64 {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(v) = self.value(query) {
                if ok(v) {
                    return v;
                }
            }
            assert!(
                Instant::now() < deadline,
                "prometheus never saw {what} ({query})"
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn prometheus_scrapes_the_agent_and_sees_contention_in_the_histograms() {
    if !require_root("prometheus_scrapes_the_agent_and_sees_contention_in_the_histograms") {
        return;
    }
    let state = tempfile::tempdir().expect("tempdir");
    // Hold-time histograms of every hold need the mmap_lock hooks (`--detail holders`); the
    // default mode times contended waits only.
    let (agent, target) = Faultline::agent(state.path(), &["--detail", "holders"]);
    let prom = Prometheus::start(&target);
    prom.wait_for("the agent up", r#"up{job="faultline"}"#, |v| v == 1.0);

    // Writes that waited more than 4 ms: a quiet host has few, the convoy adds at least one.
    let slow_writes = r#"sum(faultline_mmap_lock_wait_seconds_count{mode="write"}) - sum(faultline_mmap_lock_wait_seconds_bucket{mode="write",le="0.004194304"})"#;
    let before = prom.wait_for("the wait histogram", slow_writes, |_| true);
    let report = scenario(&["rwr", "--hold-mib", "2048"]);
    assert_eq!(report["convoy"], true, "{report}");
    let after = prom.wait_for(
        "the convoy's slow write in the histogram",
        slow_writes,
        |v| v > before,
    );
    assert!(after > before);
    let holds = r#"sum(faultline_mmap_lock_hold_seconds_count{mode="read"}) - sum(faultline_mmap_lock_hold_seconds_bucket{mode="read",le="0.134217728"})"#;
    prom.wait_for("the long read hold in the hold histogram", holds, |v| {
        v >= 1.0
    });

    // The live scrape itself.
    let (status, scrape) = http_get(&target, "/metrics");
    assert_eq!(status, 200);
    let mut check = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool");
    check
        .stdin
        .take()
        .expect("stdin")
        .write_all(scrape.as_bytes())
        .expect("feed promtool");
    let out = check.wait_with_output().expect("promtool check metrics");
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let exported = scraped_names(&scrape);
    let mut named = Vec::new();
    for (panel, expr) in dashboard_queries().expect("dashboard") {
        named.extend(
            metric_names(&expr)
                .expect("parses")
                .into_iter()
                .map(|n| (panel.clone(), n)),
        );
    }
    for (alert, expr) in rule_exprs().expect("rules") {
        named.extend(
            metric_names(&expr)
                .expect("parses")
                .into_iter()
                .map(|n| (alert.clone(), n)),
        );
    }
    for (user, name) in named {
        if name == "up" {
            continue; // Prometheus' own series, checked above.
        }
        assert!(
            exported.contains(&name),
            "{user} uses {name}, which the agent does not export"
        );
    }
    let (status, _) = agent.stop();
    assert!(status.success());
}

/// The address in the agent's start line ("API on http(s)://ADDR, ...").
fn api_addr(agent: &mut Faultline, scheme: &str) -> String {
    let marker = format!("API on {scheme}://");
    let line = agent.wait_for(&marker, Duration::from_secs(1));
    line.split(marker.as_str())
        .nth(1)
        .and_then(|r| r.split([',', ' ']).next())
        .expect("the start line names the API address")
        .to_owned()
}

#[test]
fn prometheus_scrapes_the_agent_over_tls_with_a_client_certificate_and_basic_auth() {
    if !require_root(
        "prometheus_scrapes_the_agent_over_tls_with_a_client_certificate_and_basic_auth",
    ) {
        return;
    }
    let pki = pki::Pki::new();
    let web = pki.dir.path().join("web.yml");
    pki::replace(&web, &pki.tls_config("prometheus", "s3cret"));
    let state = tempfile::tempdir().expect("tempdir");
    let state_dir = state.path().to_str().expect("utf-8").to_owned();
    let web_arg = web.to_str().expect("utf-8").to_owned();
    // Beyond loopback, as the DaemonSet listens: with a web config, no warning.
    let mut agent = Faultline::start(
        &[
            "agent",
            "--listen",
            "0.0.0.0:0",
            "--state-dir",
            &state_dir,
            "--web.config.file",
            &web_arg,
        ],
        "probes attached",
    );
    let addr = api_addr(&mut agent, "https");
    let port = addr.rsplit(':').next().expect("port");
    let target = format!("127.0.0.1:{port}");
    let job = format!(
        "    scheme: https\n    basic_auth:\n      username: prometheus\n      password: s3cret\n    tls_config:\n      ca_file: {}\n      cert_file: {}\n      key_file: {}\n",
        pki.ca.display(),
        pki.client_cert.display(),
        pki.client_key.display()
    );
    let prom = Prometheus::start_with(&target, &job);
    prom.wait_for("the agent up over TLS", r#"up{job="faultline"}"#, |v| {
        v == 1.0
    });
    prom.wait_for(
        "the agent's metrics over TLS",
        r#"count({job="faultline",__name__=~"faultline_.+"})"#,
        |v| v > 10.0,
    );
    // Without credentials, the same endpoint is closed.
    assert_eq!(
        pki.get(&target, "/metrics", true, None).expect("TLS").0,
        401
    );
    assert_eq!(
        pki.get(&target, "/healthz", true, None).expect("TLS").0,
        200
    );
    let (status, lines) = agent.stop();
    assert!(status.success());
    assert!(
        !lines.iter().any(|l| l.contains("beyond loopback")),
        "warned although a web config is set: {lines:?}"
    );
}

#[test]
fn the_agent_warns_when_it_listens_beyond_loopback_without_a_web_config() {
    if !require_root("the_agent_warns_when_it_listens_beyond_loopback_without_a_web_config") {
        return;
    }
    let state = tempfile::tempdir().expect("tempdir");
    let state_dir = state.path().to_str().expect("utf-8").to_owned();
    let mut agent = Faultline::start(
        &["agent", "--listen", "0.0.0.0:0", "--state-dir", &state_dir],
        "probes attached",
    );
    let warning = agent.wait_for("beyond loopback", Duration::from_secs(1));
    assert!(warning.contains("--web.config.file"), "{warning}");
    let (status, lines) = agent.stop();
    assert!(status.success());
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.contains("beyond loopback"))
            .count(),
        1,
        "one warning line: {lines:?}"
    );
}

#[test]
fn a_scrape_answers_within_a_second_behind_a_thousand_half_open_connections() {
    if !require_root("a_scrape_answers_within_a_second_behind_a_thousand_half_open_connections") {
        return;
    }
    let state = tempfile::tempdir().expect("tempdir");
    let (agent, target) = Faultline::agent(state.path(), &[]);
    assert_eq!(http_get(&target, "/metrics").0, 200);
    // Slowloris: connections that say nothing, or start a head and never finish it.
    let mut held = Vec::new();
    for i in 0..1000 {
        let mut s = std::net::TcpStream::connect(&target).expect("half-open connection");
        if i % 2 == 1 {
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: ")
                .expect("partial head");
        }
        held.push(s);
    }
    let start = Instant::now();
    let (status, body) = http_get(&target, "/metrics");
    let took = start.elapsed();
    assert_eq!(status, 200);
    assert!(body.contains("faultline_build_info"), "{body}");
    assert!(
        took < Duration::from_secs(1),
        "the scrape took {took:?} behind 1000 half-open connections"
    );
    drop(held);
    let (status, _) = agent.stop();
    assert!(status.success());
}
