//! Loss and overload against the real kernel (root): a ring buffer far too small for the load
//! loses records; the loss is counted in the metrics and the log, the touched tasks are marked
//! unknown until a snapshot confirms them, and no alert rests on what was lost.

mod common;

use std::{
    thread,
    time::{Duration, Instant},
};

use common::{http_get, require_root, scenario, Faultline};

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

fn metrics(addr: &str) -> String {
    let (status, body) = http_get(addr, "/metrics");
    assert_eq!(status, 200, "/metrics: {body}");
    body
}

#[test]
fn a_ring_buffer_overflow_is_counted_marks_tasks_unknown_and_raises_no_false_alert() {
    if !require_root(
        "a_ring_buffer_overflow_is_counted_marks_tasks_unknown_and_raises_no_false_alert",
    ) {
        return;
    }
    let state = tempfile::tempdir().expect("tempdir");
    // One page of ring buffer, and every hold and wait streamed: the storm below produces
    // hundreds of thousands of records, far more than the agent can drain through 4 KiB.
    let (mut agent, addr) = Faultline::agent(
        state.path(),
        &[
            "--ring-buffer-size",
            "4096",
            "--detail",
            "holders",
            "--hold-threshold",
            "0s",
            "--wait-threshold",
            "0s",
            "--summary-interval",
            "60s",
        ],
    );
    assert_eq!(
        sample(&metrics(&addr), "faultline_events_lost_total"),
        0.0,
        "records lost before any load"
    );

    let storm = scenario(&["storm", "--count", "200000", "--threads", "2"]);
    let storm_pid = storm["pid"].as_u64().expect("storm report has its pid");

    let lost = sample(&metrics(&addr), "faultline_events_lost_total");
    assert!(
        lost > 0.0,
        "a 4 KiB ring buffer under a 200k-op storm lost nothing"
    );
    let line = agent.wait_for("events lost (ring buffer full)", Duration::from_secs(5));
    assert!(
        line.contains("state unknown until the next snapshot"),
        "the loss line says what it means for the model: {line}"
    );

    // The storm is over: within a few snapshots (250 ms each) the model is confirmed again,
    // nothing of the storm is left blocked, and no task is still marked unknown.
    let deadline = Instant::now() + Duration::from_secs(5);
    let graph = loop {
        let (status, body) = http_get(&addr, "/api/graph");
        assert_eq!(status, 200, "/api/graph: {body}");
        let graph: serde_json::Value = serde_json::from_str(&body).expect("graph JSON");
        let tasks = graph["tasks"].as_array().cloned().unwrap_or_default();
        let stale = tasks.iter().any(|t| {
            t["pid"].as_u64() == Some(storm_pid) || t["state_unknown"].as_bool() == Some(true)
        });
        if !stale {
            break graph;
        }
        assert!(
            Instant::now() < deadline,
            "5 s after the storm the graph still shows its tasks or unknown state: {graph}"
        );
        thread::sleep(Duration::from_millis(200));
    };
    assert!(
        graph["cycles"].as_array().is_some_and(|c| c.is_empty()),
        "{graph}"
    );
    assert_eq!(
        sample(&metrics(&addr), "faultline_tasks_state_unknown"),
        0.0,
        "a snapshot after the load confirmed every task"
    );

    // The storm's waits are real but short (default stall thresholds are seconds): nothing of
    // it is a deadlock, a stall or an inversion, lost records or not.
    let (status, body) = http_get(&addr, "/api/alerts");
    assert_eq!(status, 200, "/api/alerts: {body}");
    let doc: serde_json::Value = serde_json::from_str(&body).expect("alerts JSON");
    // The test runs alone in its binary, on a host otherwise idle: any alert is a false one.
    let alerts = doc["alerts"].as_array().cloned().unwrap_or_default();
    assert!(alerts.is_empty(), "alerts after the overflow: {alerts:?}");
    let (status, _) = agent.stop();
    assert!(
        status.success(),
        "the agent exits cleanly after the overflow"
    );
}
