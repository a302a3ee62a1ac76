//! No kernel or foreign user address leaves the agent unless asked for, and only on loopback:
//! every endpoint, incident file and log line of a real convoy, checked against the addresses
//! a recording of the same convoy saw. Run under the kernel lock, single-threaded.

mod common;

use std::{
    collections::BTreeSet,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::{
    assert_no_shm_left, http_get, require_root, scenario_lingering, Faultline, Recording, FAULTLINE,
};

/// Every page and document the API serves.
const ENDPOINTS: [&str; 8] = [
    "/",
    "/ui/live",
    "/ui/flame",
    "/api/graph",
    "/api/graph.dot",
    "/api/graph.svg",
    "/api/alerts",
    "/metrics",
];

const AGENT_FLAGS: [&str; 12] = [
    "--wait-threshold",
    "1ms",
    "--hold-threshold",
    "20ms",
    "--stall-threshold",
    "150ms",
    "--rwr-threshold",
    "100ms",
    "--snapshot-interval",
    "50ms",
    "--summary-interval",
    "1s",
];

/// What looks like an address: `0x` and 8 hex digits or more, or a bare run of exactly 16 hex
/// digits (an address printed without its prefix; a container id in a cgroup path has 64).
fn address_like(text: &str) -> Vec<String> {
    let b = text.as_bytes();
    let mut found = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let prefixed = b[i..].starts_with(b"0x") || b[i..].starts_with(b"0X");
        let start = if prefixed { i + 2 } else { i };
        let mut end = start;
        while end < b.len() && b[end].is_ascii_hexdigit() {
            end += 1;
        }
        let digits = end - start;
        // A bare run of 16 digits stands alone: not inside a word, and not the fraction of a
        // decimal number (`1.6121855999999999`, a histogram's sum).
        let fraction = i >= 2 && b[i - 1] == b'.' && b[i - 2].is_ascii_digit();
        // Nor a file name's hash (`librustc_driver-6108105cd7e839cf.so`, a module in the
        // user-lock profile).
        let file_hash = i >= 1 && b[i - 1] == b'-' && end < b.len() && b[end] == b'.';
        let alone = (i == 0 || !b[i - 1].is_ascii_alphanumeric())
            && !fraction
            && !file_hash
            && (end == b.len() || !b[end].is_ascii_alphanumeric());
        if (prefixed && digits >= 8) || (alone && digits == 16) {
            found.push(text[i..end].to_owned());
        }
        i = end.max(i + 1);
    }
    found
}

/// A raw kernel address as the API prints it: `0x` and the upper half of the address space.
/// Not "0xffff…": with 5-level paging the direct map starts at 0xff11… (a QEMU guest of
/// Debian's 6.1 showed mm 0xff3a8733c0054900).
fn is_kernel_address(shown: &str) -> bool {
    shown
        .strip_prefix("0x")
        .and_then(|h| u64::from_str_radix(h, 16).ok())
        .is_some_and(|a| a >= 1 << 63)
}

#[test]
fn kernel_addresses_are_told_by_their_half_not_by_a_prefix() {
    assert!(is_kernel_address("0xffff888012345000"));
    assert!(is_kernel_address("0xff3a8733c0054900"));
    assert!(!is_kernel_address("0x7f1234567000"));
    assert!(!is_kernel_address("mm-3f9a1c2b0e4d"));
}

#[test]
fn the_address_scanner_finds_prefixed_and_bare_addresses_only() {
    assert_eq!(
        address_like("mm 0xffff888012345000, at 0x7f1234567000; ffff888012345000."),
        vec!["0xffff888012345000", "0x7f1234567000", "ffff888012345000"]
    );
    assert!(address_like(&format!(
        "mm-3f9a1c2b0e4d lock-3f9a1c2b0e4d #ffe0e0 0x10 pid 123456 docker-{}.scope sum 1.6121855999999999 /lib/librustc_driver-6108105cd7e839cf.so",
        "ab".repeat(32)
    ))
    .is_empty());
    // After a word's full stop it is still an address.
    assert_eq!(
        address_like("at x.ffff888012345000"),
        vec!["ffff888012345000"]
    );
}

/// The addresses (8 hex digits or more: short ones are test fixtures, and would match any
/// number) that a trace's events carry.
fn addresses_in(events: &[tracer::core::event::Event]) -> BTreeSet<u64> {
    let mut out = BTreeSet::new();
    for e in events {
        let v = serde_json::to_value(e).expect("event JSON");
        for field in ["mm", "lock", "uffd", "addr", "futex", "lock_addr"] {
            let Some(hex) = v[field].as_str().and_then(|s| s.strip_prefix("0x")) else {
                continue;
            };
            if let Ok(a) = u64::from_str_radix(hex, 16) {
                if a >= 1 << 32 {
                    out.insert(a);
                }
            }
        }
    }
    out
}

/// Everything the agent lets out: each endpoint, each incident file, its log.
fn outputs(addr: &str, state: &std::path::Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for path in ENDPOINTS {
        let (status, body) = http_get(addr, path);
        assert_eq!(status, 200, "{path}: {body}");
        out.push((path.to_owned(), body));
    }
    // The lock profiles are gzipped protobuf: their strings (lock names, frames, modules,
    // labels) are what could carry an address.
    for path in ["/debug/pprof/kernel_lock", "/debug/pprof/user_lock"] {
        let (status, body) = common::http_get_bytes(addr, path);
        assert_eq!(status, 200, "{path}");
        let mut profile = Vec::new();
        std::io::Read::read_to_end(
            &mut flate2::read::GzDecoder::new(body.as_slice()),
            &mut profile,
        )
        .expect("a gzipped profile");
        out.push((
            path.to_owned(),
            String::from_utf8_lossy(&profile).into_owned(),
        ));
    }
    for f in std::fs::read_dir(state).expect("state dir").flatten() {
        let text = std::fs::read_to_string(f.path()).expect("incident file");
        out.push((f.path().display().to_string(), text));
    }
    out
}

/// Waits for a lingering scenario to end on its own; kills it past `limit`.
fn reap(mut child: Child, limit: Duration) {
    let pid = child.id();
    let deadline = Instant::now() + limit;
    while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    assert_no_shm_left(pid);
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// The mmap_lock ids an `/api/graph` document (or an incident's `graph`) names.
fn mm_ids(graph: &serde_json::Value) -> BTreeSet<String> {
    let mut ids = BTreeSet::new();
    for e in graph["edges"].as_array().into_iter().flatten() {
        ids.extend(e["lock"]["mm"].as_str().map(str::to_owned));
    }
    for t in graph["tasks"].as_array().into_iter().flatten() {
        ids.extend(t["blocked"]["mm"].as_str().map(str::to_owned));
        for h in t["holds"].as_array().into_iter().flatten() {
            ids.extend(h["mm"].as_str().map(str::to_owned));
        }
    }
    ids
}

#[test]
fn no_kernel_or_user_address_leaves_the_agent_by_default() {
    if !require_root("no_kernel_or_user_address_leaves_the_agent_by_default") {
        return;
    }
    // The recording sees the same convoy with its raw addresses: the ones that must not leak.
    let recording = Recording::start(&["--wait-threshold", "1ms", "--hold-threshold", "20ms"]);
    let state = tempfile::tempdir().expect("tempdir");
    let (mut agent, addr) = Faultline::agent(state.path(), &AGENT_FLAGS);

    let (child, r) = scenario_lingering(&["rwr", "--hold-mib", "4096", "--announce"]);
    let reader = r["reader"].as_u64().unwrap_or(0);
    agent.wait_for_all(
        &["rwr_inversion:", &format!("{reader} (")],
        Duration::from_secs(10),
    );
    // While the convoy lasts: the graph and the alerts at one moment.
    let (_, graph_now) = http_get(&addr, "/api/graph");
    let (_, alerts_now) = http_get(&addr, "/api/alerts");
    reap(child, Duration::from_secs(120));
    // A user-space deadlock too: its futex words are user addresses of that process, which
    // the graph, the alert, the incident and the user-lock profile must not show either.
    let (abba, d) = scenario_lingering(&["pthread-abba", "--hold-ms", "2500", "--announce"]);
    let t1 = d["t1_tid"].as_u64().unwrap_or(0);
    agent.wait_for_all(
        &["deadlock:", &format!("{t1} ("), "FAULTLINE_MUTEX_A"],
        Duration::from_secs(10),
    );
    let (_, user_graph) = http_get(&addr, "/api/graph");
    reap(abba, Duration::from_secs(30));
    let mut outs = outputs(&addr, state.path());
    outs.push(("/api/graph during the ABBA deadlock".into(), user_graph));
    outs.push(("/api/graph during the convoy".into(), graph_now.clone()));
    outs.push(("/api/alerts during the convoy".into(), alerts_now.clone()));
    let (status, log) = agent.stop();
    assert!(status.success(), "{}", log.join("\n"));
    outs.push(("the agent's log".into(), log.join("\n")));
    let events = recording.finish();

    let pid = r["pid"].as_u64().unwrap_or(0);
    let raw = addresses_in(&events);
    assert!(
        events.iter().any(|e| u64::from(e.pid) == pid
            && serde_json::to_value(e).is_ok_and(|v| v["mm"].is_string())),
        "the recording saw the convoy's mmap_lock, so its mm is among the addresses checked"
    );
    for (name, text) in &outs {
        let shapes = address_like(text);
        assert!(
            shapes.is_empty(),
            "{name} shows addresses {shapes:?}:\n{text}"
        );
        for a in &raw {
            assert!(
                !text.contains(&format!("{a:x}")),
                "{name} shows the recorded address {a:#x}:\n{text}"
            );
        }
    }

    // One id per lock across endpoints: the alert's lock is the graph's, and the incident's.
    let alerts = json(&alerts_now);
    let inversion = alerts["alerts"]
        .as_array()
        .and_then(|a| {
            a.iter()
                .find(|a| a["kind"] == "rwr_inversion" && a["tids"][0] == reader)
        })
        .unwrap_or_else(|| panic!("an rwr_inversion for reader {reader}: {alerts:#}"));
    let lock = &inversion["locks"][0];
    let mm = lock["mm"].as_str().unwrap_or_default();
    assert!(
        lock["kind"] == "mmap_lock" && mm.starts_with("mm-") && mm.len() == 15,
        "the alert names its lock by an opaque id: {inversion:#}"
    );
    let graph = json(&graph_now);
    assert!(
        mm_ids(&graph).contains(mm),
        "{mm} of the alert is the convoy's lock in /api/graph: {graph:#}"
    );
    let incident = outs
        .iter()
        .find(|(n, _)| n.ends_with("-rwr_inversion.json"))
        .map(|(_, t)| json(t))
        .expect("an rwr_inversion incident");
    assert!(
        mm_ids(&incident["graph"]).contains(mm),
        "{mm} in the incident's graph: {incident:#}"
    );
}

#[test]
fn expose_addresses_on_loopback_shows_the_raw_addresses() {
    if !require_root("expose_addresses_on_loopback_shows_the_raw_addresses") {
        return;
    }
    let state = tempfile::tempdir().expect("tempdir");
    let mut flags = AGENT_FLAGS.to_vec();
    flags.push("--expose-addresses");
    let (mut agent, addr) = Faultline::agent(state.path(), &flags);
    assert!(
        agent
            .wait_for("API on http://", Duration::from_secs(1))
            .contains("(raw addresses)"),
        "the start line says addresses are exposed"
    );
    let (child, r) = scenario_lingering(&["rwr", "--hold-mib", "4096", "--announce"]);
    let reader = r["reader"].as_u64().unwrap_or(0);
    agent.wait_for_all(
        &["rwr_inversion:", &format!("{reader} (")],
        Duration::from_secs(10),
    );
    let (_, graph) = http_get(&addr, "/api/graph");
    let (_, alerts) = http_get(&addr, "/api/alerts");
    reap(child, Duration::from_secs(120));
    agent.stop();
    let ids = mm_ids(&json(&graph));
    assert!(
        !ids.is_empty() && ids.iter().all(|m| is_kernel_address(m)),
        "kernel mm addresses: {graph}"
    );
    let alerts = json(&alerts);
    assert!(
        alerts["alerts"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|a| a["locks"][0]["mm"]
                .as_str()
                .is_some_and(|m| ids.contains(m))),
        "an alert names a lock of the graph by its address: {alerts:#}"
    );
}

/// `faultline agent` with `args` and `env`; its exit status and stderr. An agent that starts
/// instead of refusing is stopped after a few seconds (and fails the test).
fn agent_refusal(args: &[&str], env: &[(&str, &str)]) -> (std::process::ExitStatus, String) {
    let state = tempfile::tempdir().expect("tempdir");
    let run = common::run_dir();
    let mut child = Command::new(FAULTLINE)
        .arg("agent")
        .args(["--state-dir", state.path().to_str().expect("utf-8")])
        .args(args)
        .envs(env.iter().copied())
        .env("FAULTLINE_RUN_DIR", run.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run faultline agent");
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let out = child.wait_with_output().expect("faultline agent output");
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn expose_addresses_beyond_loopback_is_refused_in_one_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("faultline.toml");
    std::fs::write(
        &config,
        "listen = \"0.0.0.0:19721\"\nexpose_addresses = true\n",
    )
    .expect("config");
    let config = config.to_str().expect("utf-8");
    for (how, args, env) in [
        (
            "flags",
            vec!["--listen", "0.0.0.0:19721", "--expose-addresses"],
            vec![],
        ),
        (
            "environment",
            vec!["--listen", "[::]:19721"],
            vec![("FAULTLINE_EXPOSE_ADDRESSES", "true")],
        ),
        ("config file", vec!["--config", config], vec![]),
    ] {
        let started = Instant::now();
        let (status, stderr) = agent_refusal(&args, &env);
        assert!(!status.success(), "{how}: {stderr}");
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{how}: one line: {stderr}");
        assert!(
            lines[0].contains("--expose-addresses") && lines[0].contains("loopback"),
            "{how}: {stderr}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{how}: refused before loading anything"
        );
    }
}

#[test]
fn a_trace_is_written_for_its_owner_only() {
    use std::os::unix::fs::PermissionsExt as _;
    if !require_root("a_trace_is_written_for_its_owner_only") {
        return;
    }
    // Traces keep raw addresses: even a file that was world-readable before is narrowed.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("trace.jsonl");
    std::fs::write(&path, "").expect("an existing file");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let out = path.to_str().expect("utf-8");
    let mut rec = Faultline::start(&["record", "-o", out, "-d", "1s"], "recording to");
    assert!(rec.wait_exit(Duration::from_secs(30)).success());
    let mode = std::fs::metadata(&path)
        .expect("trace")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "the trace's mode: {mode:o}");
}
