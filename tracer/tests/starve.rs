//! Clients cannot starve the agent (real kernel, root): 200 clients hammer `/metrics`,
//! `/api/graph` and `/api/graph.svg` while an mmap storm streams contended waits through the
//! ring buffer (default size) and read-write-read convoys form one after another. What must
//! hold:
//! - no record is lost (`faultline_events_lost_total` does not move): the scrapes never keep
//!   the ring-buffer consumer from the agent's lock for long;
//! - every convoy whose reader waited past the threshold plus a second is alerted within a
//!   second of the threshold (the alert's time against the reader's wait start): the timed
//!   detectors are not held up either;
//! - every client gets an answer: the view, or `503` with `Retry-After` when too many are being
//!   rendered at once, and each such refusal is counted in
//!   `faultline_api_requests_refused_total` and logged.
//!
//! The host is given a busy host's process count (idle `sleep`s), so that reading /proc costs
//! what it does in production.
//!
//! `FAULTLINE_STARVE_SECS` shortens the hammering for a quick local run (default 60).

mod common;

use std::{
    io::{Read, Write},
    net::TcpStream,
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use common::{http_get, require_root, scenario, u64_at, u64s, Faultline, SCENARIO};

const CLIENTS: usize = 200;
/// Processes on the host besides the test's own (see `Crowd`).
const CROWD: usize = 1500;
const ENDPOINTS: [&str; 3] = ["/metrics", "/api/graph", "/api/graph.svg"];
/// The rwr threshold given to the agent.
const RWR_THRESHOLD: Duration = Duration::from_millis(300);
/// How late an alert may come after its threshold.
const ALERT_SLACK: Duration = Duration::from_secs(1);

fn hammer_duration() -> Duration {
    let secs = std::env::var("FAULTLINE_STARVE_SECS")
        .ok()
        .map(|s| {
            s.parse()
                .unwrap_or_else(|e| panic!("FAULTLINE_STARVE_SECS={s:?}: not seconds: {e}"))
        })
        .unwrap_or(60);
    Duration::from_secs(secs)
}

/// The value of an unlabelled sample `name` in a Prometheus text exposition.
fn sample(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix(name)
                .and_then(|rest| rest.strip_prefix(' '))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or_else(|| panic!("no sample {name} in the metrics:\n{metrics}"))
}

/// The sum of every sample of family `name` (all label sets).
fn family_sum(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// A GET that may be refused: an answer when the agent gave one before the client gave up.
fn get(addr: &str, path: &str) -> (u16, String) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = http_get(addr, path);
        if status != 503 || Instant::now() > deadline {
            return (status, body);
        }
        thread::sleep(Duration::from_millis(200));
    }
}

/// What one request got: a status with whether `Retry-After` came with it, or no answer.
fn hit(addr: &str, path: &str) -> Option<(u16, bool)> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).ok()?;
    let text = String::from_utf8_lossy(&resp);
    let (head, _) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let retry_after = head
        .lines()
        .any(|l| l.to_ascii_lowercase().starts_with("retry-after:"));
    Some((status, retry_after))
}

/// Idle processes that make /proc as long as a busy host's: reading it is then what it costs in
/// production (tens of milliseconds), not what it costs on a test machine's short list.
struct Crowd(Vec<std::process::Child>);

impl Crowd {
    fn spawn(n: usize) -> Self {
        Self(
            (0..n)
                .map(|_| {
                    Command::new("sleep")
                        .arg("600")
                        .stdin(Stdio::null())
                        .stdout(Stdio::null())
                        .spawn()
                        .expect("spawn sleep")
                })
                .collect(),
        )
    }
}

impl Drop for Crowd {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
        }
        for c in &mut self.0 {
            let _ = c.wait();
        }
    }
}

/// Counts per endpoint: answered 200, answered 503 with Retry-After, anything else.
#[derive(Default)]
struct Tally {
    ok: [AtomicU64; 3],
    busy: [AtomicU64; 3],
    other: [AtomicU64; 3],
}

#[test]
fn two_hundred_clients_hammering_the_api_lose_no_record_and_delay_no_alert() {
    if !require_root("two_hundred_clients_hammering_the_api_lose_no_record_and_delay_no_alert") {
        return;
    }
    let _crowd = Crowd::spawn(CROWD);
    let state = tempfile::tempdir().expect("tempdir");
    let threshold = format!("{}ms", RWR_THRESHOLD.as_millis());
    // The default detail with every contended wait streamed: the storm's bursts load the ring
    // buffer (default size) with thousands of records a second. (Every hold streamed, `--detail
    // holders --hold-threshold 0s`, is more than a debug agent drains on two cores even
    // without clients.)
    let (mut agent, addr) = Faultline::agent(
        state.path(),
        &[
            "--wait-threshold",
            "0s",
            "--rwr-threshold",
            &threshold,
            "--summary-interval",
            "60s",
        ],
    );
    let (status, m) = get(&addr, "/metrics");
    assert_eq!(status, 200, "{m}");
    let lost_before = sample(&m, "faultline_events_lost_total");
    let events_before = sample(&m, "faultline_events_total");

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let (stop, tally, addr) = (stop.clone(), tally.clone(), addr.clone());
            thread::spawn(move || {
                let mut n = i;
                while !stop.load(Ordering::Relaxed) {
                    let e = n % ENDPOINTS.len();
                    n += 1;
                    let slot = match hit(&addr, ENDPOINTS[e]) {
                        Some((200, _)) => &tally.ok[e],
                        Some((503, true)) => &tally.busy[e],
                        _ => &tally.other[e],
                    };
                    slot.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let storm = {
        let stop = stop.clone();
        thread::spawn(move || {
            let mut runs = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let out = Command::new(&*SCENARIO)
                    // Short bursts back to back: the two threads contend on their mmap_lock.
                    .args(["storm", "--count", "2000", "--threads", "2"])
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .output()
                    .expect("run the storm");
                assert!(
                    out.status.success(),
                    "the storm failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                runs += 1;
            }
            runs
        })
    };

    // Convoys one after another while the clients hammer.
    let started = Instant::now();
    let mut convoys = Vec::new();
    while started.elapsed() < hammer_duration() {
        let r = scenario(&["rwr", "--hold-mib", "2048"]);
        if r["convoy"] == true {
            convoys.push(r);
        }
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().expect("client thread");
    }
    let storms = storm.join().expect("storm thread");

    let (status, m) = get(&addr, "/metrics");
    assert_eq!(status, 200, "{m}");
    let lost = sample(&m, "faultline_events_lost_total") - lost_before;
    let events = sample(&m, "faultline_events_total") - events_before;
    let count =
        |a: &[AtomicU64; 3]| -> Vec<u64> { a.iter().map(|c| c.load(Ordering::Relaxed)).collect() };
    let (ok, busy, other) = (count(&tally.ok), count(&tally.busy), count(&tally.other));
    eprintln!(
        "{CLIENTS} clients for {:?} on {ENDPOINTS:?}: 200 {ok:?}, 503 {busy:?}, other {other:?}; \
         {storms} storms, {} convoys, {events} records received, {lost} lost",
        hammer_duration(),
        convoys.len()
    );

    assert_eq!(
        lost, 0.0,
        "records lost while {CLIENTS} clients hammered the API ({events} received)"
    );
    // Tens a second on two shared cores (the clients take most of the CPU, so the storm's
    // threads contend less than on an idle host); at least some, or nothing was tested.
    assert!(
        events >= 100.0,
        "the storm streamed records through the ring buffer ({events} received)"
    );
    assert_eq!(
        other,
        vec![0; 3],
        "every request is answered 200, or 503 with Retry-After"
    );
    assert!(
        ok.iter().all(|n| *n > 0),
        "every endpoint still serves under the load: 200s {ok:?}"
    );
    // The scrapes' work must not hold the lock the other views need: the graph and the SVG are
    // rarely refused (a few in a thousand here; three in four when a scrape walks /proc under
    // the lock).
    for e in 1..ENDPOINTS.len() {
        assert!(
            busy[e] * 10 <= ok[e] + busy[e],
            "{} refused {} of {} requests: something holds the agent's lock too long",
            ENDPOINTS[e],
            busy[e],
            ok[e] + busy[e]
        );
    }
    let refused: u64 = busy.iter().sum();
    assert_eq!(
        family_sum(&m, "faultline_api_requests_refused_total"),
        refused as f64,
        "every 503 the clients got is counted"
    );
    if refused > 0 {
        agent.wait_for("refused", Duration::from_secs(5));
    }

    // Each convoy whose reader waited past threshold + slack was alerted by then.
    let (status, body) = get(&addr, "/api/alerts");
    assert_eq!(status, 200, "{body}");
    let doc: serde_json::Value = serde_json::from_str(&body).expect("alerts JSON");
    let alerts = doc["alerts"].as_array().cloned().unwrap_or_default();
    let threshold_ns = RWR_THRESHOLD.as_nanos() as u64;
    let slack_ns = ALERT_SLACK.as_nanos() as u64;
    let mut judged = Vec::new();
    for r in &convoys {
        let reader = u64_at(r, &["reader", "tid"]);
        let asked = u64_at(r, &["reader", "start_ns"]);
        let waited = u64_at(r, &["reader", "end_ns"]).saturating_sub(asked);
        if waited < threshold_ns + slack_ns {
            continue;
        }
        let alert = alerts
            .iter()
            .find(|a| a["kind"] == "rwr_inversion" && u64s(a, "tids").first() == Some(&reader))
            .unwrap_or_else(|| {
                panic!("the convoy of reader {reader} (waited {waited} ns) was not alerted: {r}")
            });
        let at = alert["ts_ns"].as_u64().expect("alert ts_ns");
        let late = at.saturating_sub(asked + threshold_ns);
        judged.push(late);
        assert!(
            late <= slack_ns,
            "the convoy of reader {reader} was alerted {late} ns after its threshold (at most {slack_ns}): {alert}"
        );
    }
    eprintln!("convoy alerts, ns after the threshold: {judged:?}");
    assert!(
        !judged.is_empty(),
        "no convoy held its reader past threshold + slack: {convoys:?}"
    );
    let (status, _) = agent.stop();
    assert!(status.success(), "the agent exits cleanly");
}
