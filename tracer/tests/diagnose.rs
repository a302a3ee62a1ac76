//! `faultline diagnose` on real hung tasks: bounded workloads hold the hang for a few seconds
//! while diagnose looks; then they resolve and clean up.

mod common;
#[path = "common/needs.rs"]
mod needs;

use std::{
    process::{Child, Command},
    time::Duration,
};

use common::{
    assert_fails_without_privileges, require_root, scenario_held, scenario_lingering, u64s,
    Faultline, FAULTLINE,
};

/// One agent per test process (its single-agent claim): tests that start one take turns, also
/// when cargo runs this file's tests in parallel.
static AGENT_TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn agent_turn() -> std::sync::MutexGuard<'static, ()> {
    AGENT_TURN.lock().unwrap_or_else(|e| e.into_inner())
}

fn diagnose(args: &[&str]) -> serde_json::Value {
    diagnose_with_stderr(args, None).0
}

/// `faultline diagnose ARGS --json`, asking the agent whose run directory is `run_dir` (its
/// Unix socket) unless ARGS say otherwise: the document and stderr.
fn diagnose_with_stderr(
    args: &[&str],
    run_dir: Option<&std::path::Path>,
) -> (serde_json::Value, String) {
    collect(spawn_diagnose(args, run_dir))
}

fn spawn_diagnose(args: &[&str], run_dir: Option<&std::path::Path>) -> Child {
    let mut cmd = Command::new(FAULTLINE);
    cmd.arg("diagnose").args(args).arg("--json");
    if let Some(dir) = run_dir {
        cmd.env("FAULTLINE_RUN_DIR", dir);
    }
    cmd.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run diagnose")
}

fn collect(child: Child) -> (serde_json::Value, String) {
    let out = child.wait_with_output().expect("diagnose");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "diagnose: {stderr}");
    (
        serde_json::from_slice(&out.stdout).expect("one JSON document"),
        stderr,
    )
}

fn task(doc: &serde_json::Value, tid: u64) -> &serde_json::Value {
    doc["tasks"]
        .as_array()
        .expect("tasks")
        .iter()
        .find(|t| t["tid"] == tid)
        .unwrap_or_else(|| panic!("task {tid} not reported: {doc:#}"))
}

fn blocked_on(t: &serde_json::Value) -> Vec<u64> {
    u64s(t, "blocked_on")
}

/// A hold long enough for diagnose on a slow machine (~17 s under QEMU TCG), ended as soon as
/// the test waits for the scenario (stdin closes).
const UFFD_CHAIN: [&str; 4] = ["uffd-chain", "--hold-ms", "60000", "--until-stdin-closes"];

fn finish(mut child: Child) {
    let status = child.wait().expect("scenario");
    assert!(
        status.success(),
        "the scenario resolved its hang and exited cleanly"
    );
}

#[test]
fn a_thread_hung_on_a_silent_userfaultfd_monitor_names_the_context_and_the_monitor() {
    if !require_root(
        "a_thread_hung_on_a_silent_userfaultfd_monitor_names_the_context_and_the_monitor",
    ) {
        return;
    }
    let (child, r) = scenario_held(&UFFD_CHAIN);
    let doc = diagnose(&["--no-agent"]);
    let (pid, holder, monitor) = (
        r["pid"].as_u64().unwrap_or(0),
        r["holder_tid"].as_u64().unwrap_or(0),
        r["monitor_pid"].as_u64().unwrap_or(0),
    );
    let t = task(&doc, holder);
    assert_eq!(t["wait"]["kind"], "uffd", "{t:#}");
    assert!(
        t["wait"]["uffd"].as_str().is_some_and(|u| u != "0x0"),
        "the context is named: {t:#}"
    );
    assert_eq!(
        t["wait"]["mm_pid"], pid,
        "it serves the hung process's memory"
    );
    let holders: Vec<u64> = t["wait"]["holders"]
        .as_array()
        .expect("holders")
        .iter()
        .filter_map(|v| v.as_u64())
        .collect();
    assert!(
        holders.contains(&monitor),
        "the monitor process holds the userfaultfd: {t:#}"
    );
    assert!(
        blocked_on(t).contains(&monitor),
        "the monitor is named as a handler: {t:#}"
    );
    assert!(
        t["stack"]
            .as_array()
            .is_some_and(|s| s.iter().any(|f| f == "handle_userfault")),
        "{t:#}"
    );
    finish(child);
}

#[test]
fn a_mutex_waiter_behind_a_userfaultfd_waiter_gives_a_two_hop_chain() {
    let name = "a_mutex_waiter_behind_a_userfaultfd_waiter_gives_a_two_hop_chain";
    // The mutex hop is read from the waiter's hung-task blocker; without it nothing in the
    // kernel names the mutex a task sleeps on.
    if !require_root(name) || !needs::kernel_has(name, &needs::TASK_BLOCKER) {
        return;
    }
    let (child, r) = scenario_held(&UFFD_CHAIN);
    let doc = diagnose(&["--no-agent"]);
    let (holder, waiter, monitor) = (
        r["holder_tid"].as_u64().unwrap_or(0),
        r["waiter_tid"].as_u64().unwrap_or(0),
        r["monitor_pid"].as_u64().unwrap_or(0),
    );
    let w = task(&doc, waiter);
    assert_eq!(w["wait"]["kind"], "mutex", "the file's f_pos_lock: {w:#}");
    assert_eq!(w["wait"]["owner"], holder, "{w:#}");
    assert_eq!(blocked_on(w), vec![holder], "hop 1: the mutex owner");
    let h = task(&doc, holder);
    assert!(
        blocked_on(h).contains(&monitor),
        "hop 2: the userfaultfd handler: {h:#}"
    );
    // Other hangs on the host (another test's deadlock) may have cycles of their own.
    assert!(
        doc["cycles"].as_array().is_some_and(|c| c
            .iter()
            .all(|c| !u64s(c, "tids").contains(&holder) && !u64s(c, "tids").contains(&waiter))),
        "a chain, not a cycle: {doc:#}"
    );

    let text = Command::new(FAULTLINE)
        .args(["diagnose", "--no-agent"])
        .output()
        .expect("text");
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("waits for mutex") && text.contains("root holder"),
        "{text}"
    );
    finish(child);
}

#[test]
fn a_writer_queued_behind_a_long_reader_with_readers_behind_it_is_the_rwr_chain() {
    if !require_root("a_writer_queued_behind_a_long_reader_with_readers_behind_it_is_the_rwr_chain")
    {
        return;
    }
    // With an agent running, the read holder comes from what it saw; without, from /proc.
    let _turn = agent_turn();
    let state = tempfile::tempdir().expect("tempdir");
    let (agent, _) = Faultline::agent(
        state.path(),
        &["--snapshot-interval", "50ms", "--hold-threshold", "20ms"],
    );
    let (child, r) = scenario_lingering(&["rwr", "--hold-mib", "8192", "--announce"]);
    std::thread::sleep(Duration::from_millis(300));
    let (holder, writer, reader) = (
        r["holder"].as_u64().unwrap_or(0),
        r["writer"].as_u64().unwrap_or(0),
        r["reader"].as_u64().unwrap_or(0),
    );

    // Both diagnoses at once: each loads BTF and the eBPF object (~17 s in a TCG guest), and the
    // convoy lasts only as long as the populate.
    let text = Command::new(FAULTLINE)
        .args(["diagnose", "--no-agent", "--pid", &r["pid"].to_string()])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("text");
    // On the agent's Unix socket, checked: what it says counts as the agent's.
    let (doc, stderr) = diagnose_with_stderr(&[], Some(agent.run_dir()));
    assert!(
        !stderr.contains("WARN"),
        "the real agent on its socket is trusted without a warning: {stderr}"
    );
    let rd = task(&doc, reader);
    assert_eq!(rd["wait"]["kind"], "mmap_lock", "{rd:#}");
    assert_eq!(rd["wait"]["mode"], "read");
    assert_eq!(
        blocked_on(rd),
        vec![writer],
        "the reader is queued behind the writer: {rd:#}"
    );
    let wr = task(&doc, writer);
    assert_eq!(wr["wait"]["mode"], "write");
    assert_eq!(wr["wait"]["queue_position"], 0);
    assert!(
        wr["wait"]["readers"].as_u64().is_some_and(|n| n >= 1),
        "{wr:#}"
    );
    // The default agent does not see uncontended acquisitions: it infers the read holder
    // (from the rwsem owner word and the holder's stack), and diagnose labels it so.
    let from_agent = wr["blocked_on_sources"]
        .as_array()
        .expect("sources")
        .iter()
        .any(|e| e["tid"] == holder && e["source"] == "agent_inferred");
    assert!(
        from_agent,
        "the agent names the read holder, as inferred: {wr:#}"
    );

    // Without the agent, /proc still points at the holder (the only running thread of the
    // process), and the text names the shape.
    let text = text.wait_with_output().expect("text");
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("read-write-read"), "{text}");
    assert!(
        text.contains(&format!("{holder} (")) && text.contains("root holder"),
        "{text}"
    );
    finish(child);

    let other = diagnose(&["--no-agent", "--pid", "1"]);
    assert!(
        other["tasks"]
            .as_array()
            .is_some_and(|t| t.iter().all(|t| t["pid"] != r["pid"])),
        "--pid keeps to chains touching that process"
    );
    agent.stop();
}

#[test]
fn without_privileges_diagnose_says_so_and_fails() {
    if !require_root("without_privileges_diagnose_says_so_and_fails") {
        return;
    }
    assert_fails_without_privileges(&["diagnose".as_ref()]);
}

#[test]
fn a_monitor_blocked_behind_the_fault_it_read_is_a_probable_deadlock_naming_it_not_the_idle_watchdog(
) {
    let test =
        "a_monitor_blocked_behind_the_fault_it_read_is_a_probable_deadlock_naming_it_not_the_idle_watchdog";
    // The cycle's other edge is the monitor's wait for the f_pos_lock mutex, which only the
    // kernel's blocker field names.
    if !require_root(test) || !needs::kernel_has(test, &needs::TASK_BLOCKER) {
        return;
    }
    // The monitor reads the fault message, then blocks on the f_pos_lock the faulting thread
    // holds across its fault; a watchdog holding the same userfaultfd sleeps until it releases
    // the deadlock after the hold (or when the test is done looking).
    let (child, r) = scenario_held(&[
        "uffd-monitor-deadlock",
        "--hold-ms",
        "60000",
        "--until-stdin-closes",
    ]);
    let (monitor, faulter, watchdog) = (
        r["monitor_tid"].as_u64().unwrap_or(0),
        r["faulter_tid"].as_u64().unwrap_or(0),
        r["watchdog_tid"].as_u64().unwrap_or(0),
    );
    let doc = diagnose(&["--no-agent"]);
    let m = task(&doc, monitor);
    assert_eq!(m["wait"]["kind"], "mutex", "the f_pos_lock: {m:#}");
    assert_eq!(m["wait"]["owner"], faulter, "{m:#}");
    let f = task(&doc, faulter);
    assert_eq!(f["wait"]["kind"], "uffd", "{f:#}");
    assert_eq!(
        f["wait"]["message_read"], true,
        "the kernel shows the message taken: {f:#}"
    );
    assert_eq!(
        blocked_on(f),
        vec![monitor],
        "the monitor is the handler, the watchdog is not: {f:#}"
    );
    let candidates = f["wait"]["candidates"].as_array().expect("candidates");
    let named: Vec<&serde_json::Value> = candidates.iter().filter(|c| c["named"] == true).collect();
    assert_eq!(named.len(), 1, "{f:#}");
    assert!(
        named[0]["evidence"]
            .as_array()
            .is_some_and(|e| e.iter().any(|e| e["kind"] == "holds_open")),
        "with its evidence: {f:#}"
    );
    let w = candidates
        .iter()
        .find(|c| c["tid"] == watchdog)
        .unwrap_or_else(|| panic!("the watchdog is a candidate: {f:#}"));
    assert_eq!(w["named"], false);
    assert_eq!(
        w["activity"]["syscall"], "clock_nanosleep",
        "idle in its sleep: {w:#}"
    );

    let cycle = doc["cycles"]
        .as_array()
        .and_then(|c| {
            c.iter()
                .find(|c| u64s(c, "tids").contains(&faulter))
                .cloned()
        })
        .unwrap_or_else(|| panic!("a cycle through the faulter: {doc:#}"));
    let mut tids = u64s(&cycle, "tids");
    tids.sort_unstable();
    let mut expected = vec![monitor, faulter];
    expected.sort_unstable();
    assert_eq!(tids, expected, "{cycle:#}");
    assert_eq!(cycle["confidence"], "probable", "{cycle:#}");
    assert!(
        cycle["evidence"].as_array().is_some_and(|e| e.len() == 2
            && e.iter().any(|l| l
                .as_str()
                .is_some_and(|l| l.contains("not named") && l.contains("clock_nanosleep")))),
        "{cycle:#}"
    );

    let text = Command::new(FAULTLINE)
        .args(["diagnose", "--no-agent", "--pid", &r["pid"].to_string()])
        .output()
        .expect("text");
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("PROBABLE DEADLOCK: "), "{text}");
    assert!(
        !text.contains(&format!(
            "{watchdog} (md-watchdog, pid {}) S: not blocked (root holder)",
            r["pid"]
        )),
        "{text}"
    );
    let dot = Command::new(FAULTLINE)
        .args([
            "diagnose",
            "--no-agent",
            "--dot",
            "--pid",
            &r["pid"].to_string(),
        ])
        .output()
        .expect("dot");
    let dot = String::from_utf8_lossy(&dot.stdout);
    assert!(
        dot.contains(&format!(
            "t{faulter} -> t{monitor} [style=dashed, color=red, label=\"probable\"];"
        )),
        "{dot}"
    );
    finish(child);
}

#[test]
fn with_an_agent_the_thread_that_set_the_userfaultfd_up_is_named_and_closes_a_probable_cycle() {
    let test =
        "with_an_agent_the_thread_that_set_the_userfaultfd_up_is_named_and_closes_a_probable_cycle";
    // The handler's wait for the holder's f_pos_lock closes the cycle: the blocker field names it.
    if !require_root(test) || !needs::kernel_has(test, &needs::TASK_BLOCKER) {
        return;
    }
    // uffd-deadlock: the handler sets the userfaultfd up and never reads it, then blocks on the
    // f_pos_lock the holder keeps across its fault; a rescuer sleeps holding the descriptor.
    // Nothing in /proc tells the handler from the rescuer; the agent saw the set-up ioctls,
    // which it sees only with its ioctl hooks attached before the userfaultfd is set up (by
    // default they attach at the next snapshot after one exists: docs/design.md). Diagnose
    // matches the agent's contexts to its own by address: the agent's Unix socket shows them
    // raw (its HTTP API shows opaque ids by default).
    let _turn = agent_turn();
    let state = tempfile::tempdir().expect("tempdir");
    let (agent, _) = Faultline::agent(
        state.path(),
        &[
            "--snapshot-interval",
            "50ms",
            "--uffd-ioctl-hooks",
            "always",
        ],
    );
    let (child, r) = scenario_held(&[
        "uffd-deadlock",
        "--hold-ms",
        "60000",
        "--until-stdin-closes",
    ]);
    let (holder, handler, rescuer) = (
        r["holder_tid"].as_u64().unwrap_or(0),
        r["handler_tid"].as_u64().unwrap_or(0),
        r["rescuer_tid"].as_u64().unwrap_or(0),
    );
    std::thread::sleep(Duration::from_millis(300));

    let without = diagnose(&["--no-agent"]);
    assert_eq!(
        blocked_on(task(&without, holder)),
        vec![rescuer],
        "without the agent, the message pending, the only free thread could read it"
    );

    let (doc, _) = diagnose_with_stderr(&[], Some(agent.run_dir()));
    let h = task(&doc, holder);
    assert_eq!(blocked_on(h), vec![handler], "{h:#}");
    let named = h["wait"]["candidates"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["tid"] == handler).cloned())
        .unwrap_or_else(|| panic!("the handler is a candidate: {h:#}"));
    assert!(
        named["evidence"]
            .as_array()
            .is_some_and(|e| e.iter().any(|e| e["kind"] == "set_up")),
        "on the agent's evidence: {named:#}"
    );
    let cycle = doc["cycles"]
        .as_array()
        .and_then(|c| {
            c.iter()
                .find(|c| u64s(c, "tids").contains(&holder))
                .cloned()
        })
        .unwrap_or_else(|| panic!("a cycle through the holder: {doc:#}"));
    assert_eq!(cycle["confidence"], "probable", "{cycle:#}");
    assert!(u64s(&cycle, "tids").contains(&handler), "{cycle:#}");
    finish(child);
    agent.stop();
}

#[test]
fn a_monitor_waiting_in_epoll_on_the_userfaultfd_is_named_from_that_evidence_and_no_cycle_is_claimed(
) {
    let test = "a_monitor_waiting_in_epoll_on_the_userfaultfd_is_named_from_that_evidence_and_no_cycle_is_claimed";
    if !require_root(test) {
        return;
    }
    // The monitor read the fault message, forgot to answer, and waits in epoll for the next:
    // it serves the userfaultfd (a bug, not a deadlock), and the idle watchdog is not named.
    let (child, r) = scenario_held(&[
        "uffd-monitor-deadlock",
        "--forgetful-monitor",
        "--hold-ms",
        "60000",
        "--until-stdin-closes",
    ]);
    let (monitor, faulter) = (
        r["monitor_tid"].as_u64().unwrap_or(0),
        r["faulter_tid"].as_u64().unwrap_or(0),
    );
    let uffd = r["uffd"].as_u64().unwrap_or(0);
    let doc = diagnose(&["--no-agent"]);
    let f = task(&doc, faulter);
    assert_eq!(blocked_on(f), vec![monitor], "{f:#}");
    let m = f["wait"]["candidates"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["tid"] == monitor).cloned())
        .unwrap_or_else(|| panic!("the monitor is a candidate: {f:#}"));
    assert!(
        m["evidence"]
            .as_array()
            .is_some_and(|e| e.iter().any(|e| e["kind"] == "epolls" && e["fd"] == uffd)),
        "its epoll instance watches the userfaultfd's descriptor: {m:#}"
    );
    assert!(
        doc["cycles"]
            .as_array()
            .is_some_and(|c| c.iter().all(|c| !u64s(c, "tids").contains(&faulter))),
        "{doc:#}"
    );
    finish(child);
}

/// Answers `connections` requests on `listener` with `body` as a 200 JSON response: a stand-in
/// for the agent that any local user could run.
fn fake_agent<S: std::io::Read + std::io::Write>(
    mut accept: impl FnMut() -> std::io::Result<S> + Send + 'static,
    connections: usize,
    body: String,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        for _ in 0..connections {
            let Ok(mut conn) = accept() else { continue };
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                match conn.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
            }
            let _ = write!(
                conn,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    })
}

#[test]
fn holds_from_an_agent_diagnose_cannot_verify_never_make_a_deadlock_certain() {
    let test = "holds_from_an_agent_diagnose_cannot_verify_never_make_a_deadlock_certain";
    if !require_root(test) {
        return;
    }
    // A real read-held mmap_lock with a writer queued behind it and a reader behind the writer;
    // the fakes claim the reader holds the lock the writer waits for, which with the kernel's
    // reader-behind-writer edge would make a certain deadlock if believed.
    let (child, r) = scenario_lingering(&["rwr", "--hold-mib", "8192", "--announce"]);
    std::thread::sleep(Duration::from_millis(300));
    let (writer, reader) = (
        r["writer"].as_u64().unwrap_or(0),
        r["reader"].as_u64().unwrap_or(0),
    );
    let body = format!(
        r#"{{"now_ns":1,"tasks":[],"cycles":[],"edges":[{{"from":{writer},"to":{reader},"reason":"holds"}}],"uffds":[]}}"#
    );
    let never_certain = |doc: &serde_json::Value, how: &str| {
        let wr = task(doc, writer);
        assert!(
            wr["blocked_on_sources"]
                .as_array()
                .is_some_and(|s| s.iter().all(|e| e["source"] != "agent")),
            "{how}: the fake's hold is not counted as the agent's: {wr:#}"
        );
        let certain: Vec<_> = doc["cycles"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| c["confidence"] == "certain" && u64s(c, "tids").contains(&writer))
            .collect();
        assert!(
            certain.is_empty(),
            "{how}: no certain deadlock: {certain:#?}"
        );
    };
    let warnings = |stderr: &str| stderr.lines().filter(|l| l.contains("WARN")).count();

    // Both diagnoses at once: the convoy lasts only as long as the populate.
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = tcp.local_addr().expect("addr").to_string();
    let served_tcp = fake_agent(move || tcp.accept().map(|(c, _)| c), 1, body.clone());
    let run = common::run_dir();
    let unix = std::os::unix::net::UnixListener::bind(run.path().join("agent.sock")).expect("bind");
    let served_unix = fake_agent(move || unix.accept().map(|(c, _)| c), 1, body);
    let over_tcp = spawn_diagnose(&["--agent", &addr], None);
    let over_unix = spawn_diagnose(&[], Some(run.path()));

    // Over TCP, given explicitly: used, but only as unverified, and said so once.
    let (doc, stderr) = collect(over_tcp);
    served_tcp.join().expect("fake TCP agent");
    never_certain(&doc, "over TCP");
    let wr = task(&doc, writer);
    assert!(
        wr["blocked_on_sources"].as_array().is_some_and(|s| s
            .iter()
            .any(|e| e["tid"] == reader && e["source"] == "agent_unverified")),
        "the TCP answer is shown, labelled unverified: {wr:#}"
    );
    assert_eq!(warnings(&stderr), 1, "one warning line: {stderr}");
    assert!(stderr.contains("unverified"), "{stderr}");

    // On a Unix socket in a safe directory, but served by a program that is not faultline:
    // ignored, with one warning line naming it.
    let (doc, stderr) = collect(over_unix);
    never_certain(&doc, "an impostor on the socket");
    let wr = task(&doc, writer);
    assert!(
        wr["blocked_on_sources"].as_array().is_some_and(|s| s
            .iter()
            .all(|e| !e["source"].as_str().is_some_and(|s| s.starts_with("agent")))),
        "nothing of the impostor's is used: {wr:#}"
    );
    assert_eq!(warnings(&stderr), 1, "one warning line: {stderr}");
    assert!(
        stderr.contains("ignoring") && stderr.contains("not faultline"),
        "{stderr}"
    );
    // The impostor was connected to (and dropped) without being asked anything.
    served_unix.join().expect("fake Unix agent");
    finish(child);
}
