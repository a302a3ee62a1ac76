//! The agent under exactly the privileges the systemd unit ships (capabilities parsed from
//! tracer/packaging/faultline.service, compiled in, an unprivileged uid via setpriv): it starts,
//! and what `faultline check` says is available matches `faultline_feature_available`; a
//! read-write-read convoy is alerted with its holder, writer and reader, and a userfaultfd
//! stall with its handler where the unit's privileges allow userfaultfd waits.

mod common;

use std::{
    os::unix::fs::PermissionsExt,
    process::Command,
    time::{Duration, Instant},
};

use common::{http_get, require_root, scenario, scenario_lingering, u64_at, u64s, FAULTLINE};

const NOBODY: &str = "65534";

/// Thresholds low enough for the workloads' alerts to come within a few seconds.
const THRESHOLDS: [&str; 8] = [
    "--wait-threshold",
    "1ms",
    "--stall-threshold",
    "150ms",
    "--rwr-threshold",
    "100ms",
    "--snapshot-interval",
    "50ms",
];

const UNIT: &str = include_str!("../packaging/faultline.service");

/// The unit's capabilities (`AmbientCapabilities=`), as setpriv names them (`+bpf,...`),
/// without those the test runner's own bounding set lacks (a container may drop some; they are
/// printed, as the run then grants less than the unit).
fn unit_caps() -> String {
    // Compiled in: the VM tests run this binary where the source tree is not.
    let unit = UNIT;
    let caps: Vec<String> = unit
        .lines()
        .find_map(|l| l.strip_prefix("AmbientCapabilities="))
        .expect("the unit grants ambient capabilities")
        .split_whitespace()
        .map(|c| c.trim_start_matches("CAP_").to_lowercase())
        .collect();
    let bounding = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("the unit bounds capabilities");
    for c in &caps {
        assert!(
            bounding.contains(&format!("CAP_{}", c.to_uppercase())),
            "ambient {c} outside the bounding set"
        );
    }
    let have = Command::new("setpriv")
        .arg("--dump")
        .output()
        .expect("setpriv --dump");
    let have = String::from_utf8_lossy(&have.stdout).to_lowercase();
    let bset = have
        .lines()
        .find_map(|l| l.strip_prefix("capability bounding set: "))
        .unwrap_or_default()
        .to_owned();
    let (kept, dropped): (Vec<_>, Vec<_>) = caps
        .into_iter()
        .partition(|c| bset.split(',').any(|b| b == c));
    if !dropped.is_empty() {
        eprintln!("the test runner lacks {dropped:?}: running with {kept:?} only");
    }
    std::iter::once("-all".to_owned())
        .chain(kept.iter().map(|c| format!("+{c}")))
        .collect::<Vec<_>>()
        .join(",")
}

fn as_unit(caps: &str) -> Command {
    let mut c = Command::new("setpriv");
    c.args([
        &format!("--reuid={NOBODY}"),
        &format!("--regid={NOBODY}"),
        "--clear-groups",
        &format!("--inh-caps={caps}"),
        &format!("--ambient-caps={caps}"),
        &format!("--bounding-set={caps}"),
    ])
    .arg(FAULTLINE);
    c
}

fn nobodys_dir() -> tempfile::TempDir {
    let d = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(d.path(), PermissionsExt::from_mode(0o700)).expect("chmod");
    std::os::unix::fs::chown(d.path(), Some(65534), Some(65534)).expect("chown to nobody");
    d
}

#[test]
fn under_the_units_capabilities_check_and_the_gauge_agree_on_every_feature() {
    if !require_root("under_the_units_capabilities_check_and_the_gauge_agree_on_every_feature") {
        return;
    }
    let caps = unit_caps();
    let out = as_unit(&caps)
        .args(["check", "--json"])
        .output()
        .expect("check runs");
    let items: serde_json::Value = serde_json::from_slice(&out.stdout).expect("check JSON");
    let mut from_check: Vec<(String, bool)> = items
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|i| {
            let name = i["name"].as_str()?.strip_prefix("privilege: ")?;
            Some((name.to_owned(), i["available"].as_bool()?))
        })
        .collect();
    from_check.sort();
    assert!(!from_check.is_empty(), "check lists the privilege items");

    let (run, state) = (nobodys_dir(), nobodys_dir());
    let log = tempfile::NamedTempFile::new().expect("log file");
    let mut agent = as_unit(&caps)
        .args(["agent", "--listen", "127.0.0.1:0", "--state-dir"])
        .arg(state.path())
        .args(THRESHOLDS)
        .env("RUST_LOG", "info")
        .env("FAULTLINE_RUN_DIR", run.path())
        .stderr(log.reopen().expect("log"))
        .spawn()
        .expect("the agent starts");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let text = loop {
        let t = std::fs::read_to_string(log.path()).unwrap_or_default();
        if t.contains("API on http://") || std::time::Instant::now() > deadline {
            break t;
        }
        if let Ok(Some(status)) = agent.try_wait() {
            panic!("the agent exited ({status}) under the unit's privileges:\n{t}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let addr = text
        .split("API on http://")
        .nth(1)
        .and_then(|r| r.split([',', ' ']).next())
        .unwrap_or_else(|| panic!("no start line:\n{text}"))
        .to_owned();
    let agent = KillOnDrop(agent);
    let (status, body) = http_get(&addr, "/metrics");
    assert_eq!(status, 200, "{body}");
    let mut from_gauge: Vec<(String, bool)> = body
        .lines()
        .filter_map(|l| l.strip_prefix("faultline_feature_available{feature=\""))
        .filter_map(|l| {
            let (name, value) = l.split_once("\"} ")?;
            Some((name.to_owned(), value.trim() == "1"))
        })
        .collect();
    from_gauge.sort();
    assert_eq!(from_check, from_gauge, "check and the gauge disagree");
    // Every missing feature has its start-up line saying why and what grants it.
    for (name, ok) in &from_gauge {
        if !ok {
            assert!(
                text.lines()
                    .any(|l| l.contains(&format!("feature {name} unavailable: "))
                        && l.contains("; needs ")),
                "no start-up line for {name}:\n{text}"
            );
        }
    }
    let available = |f: &str| from_gauge.iter().any(|(n, ok)| n == f && *ok);

    // What the docs promise under these privileges: a convoy alert names its holder, writer
    // and reader. The holder's kernel stack needs CAP_SYS_ADMIN, which the unit does not grant;
    // the owner word still names the holder (as inferred).
    let (child, convoy) = scenario_lingering(&["rwr", "--hold-mib", "2048", "--announce"]);
    let child = KillOnDrop(child);
    let (holder, writer, reader) = (
        u64_at(&convoy, &["holder"]),
        u64_at(&convoy, &["writer"]),
        u64_at(&convoy, &["reader"]),
    );
    let inversion = alert_for(&addr, "rwr_inversion", reader, Duration::from_secs(20));
    assert_eq!(
        u64s(&inversion, "tids"),
        vec![reader, writer, holder],
        "reader, writer, holder under the unit's privileges: {inversion:#}"
    );
    drop(child);

    // A userfaultfd stall names its handler where uffd_waits is available; where it is not,
    // check, the gauge and the start-up line said so above.
    if available("uffd_waits") {
        let uffd = scenario(&["uffd-stall", "--delay-ms", "1500"]);
        let faulter = u64_at(&uffd, &["faulter", "tid"]);
        let monitor = u64_at(&uffd, &["monitor_tid"]);
        let stall = alert_for(&addr, "uffd_stall", faulter, Duration::from_secs(10));
        assert!(
            stall.to_string().contains(&monitor.to_string()),
            "the stall names its handler {monitor}: {stall:#}"
        );
    } else {
        eprintln!("uffd_waits unavailable under the unit's privileges: its stall not checked");
    }
    drop(agent);
}

/// Kills the agent or workload when the test ends, a failed one too.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The first alert of `kind` whose chain starts at `tid`, waited for up to `limit`.
fn alert_for(addr: &str, kind: &str, tid: u64, limit: Duration) -> serde_json::Value {
    let deadline = Instant::now() + limit;
    loop {
        let (status, body) = http_get(addr, "/api/alerts");
        let doc: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        let found = doc["alerts"].as_array().and_then(|a| {
            a.iter()
                .find(|a| a["kind"] == kind && u64s(a, "tids").first() == Some(&tid))
                .cloned()
        });
        if let Some(a) = found {
            return a;
        }
        assert!(
            Instant::now() < deadline,
            "no {kind} alert for {tid} within {limit:?} ({status}): {body}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
