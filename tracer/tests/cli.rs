//! The `faultline` binary's user-facing contract: exit codes, one-line errors, JSON shapes.

use std::process::{Command, Output};

const FAULTLINE: &str = env!("CARGO_BIN_EXE_faultline");
const SEED: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/traces/uffd-cross-process-deadlock.jsonl"
);

fn faultline(args: &[&str]) -> Output {
    Command::new(FAULTLINE)
        .args(args)
        .output()
        .expect("run faultline")
}

#[test]
fn replay_json_reports_the_seed_deadlock_with_every_task() {
    let out = faultline(&["replay", "--json", SEED]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON document");
    assert_eq!(doc["events"], 9);
    let alerts = doc["alerts"].as_array().expect("alerts array");
    assert_eq!(alerts.len(), 1, "{doc:#}");
    let a = &alerts[0];
    assert_eq!(a["kind"], "deadlock");
    assert_eq!(a["severity"], "critical");
    let mut tids: Vec<u64> = a["tids"]
        .as_array()
        .expect("tids")
        .iter()
        .filter_map(|t| t.as_u64())
        .collect();
    tids.sort_unstable();
    assert_eq!(tids, vec![11, 12, 21, 22]);
    assert!(a["ts_ns"].as_u64().is_some() && a["summary"].as_str().is_some());
}

#[test]
fn replay_text_explains_the_chain_in_words() {
    let out = faultline(&["replay", SEED]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("[critical] deadlock"), "{text}");
    assert!(
        text.contains("held for read by 11 (procA, pid 10), which waits for the mmap_lock of pid 20 for read, queued behind writer 22 (procB-mmap, pid 20)"),
        "{text}"
    );
    assert!(text.contains("closing the cycle"), "{text}");
}

#[test]
fn a_shorter_confirmation_window_does_not_change_a_deadlock_and_a_longer_one_withholds_it() {
    let out = faultline(&["replay", "--json", "--deadlock-confirm", "10s", SEED]);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let kinds: Vec<&str> = doc["alerts"]
        .as_array()
        .expect("alerts")
        .iter()
        .filter_map(|a| a["kind"].as_str())
        .collect();
    assert!(
        !kinds.contains(&"deadlock"),
        "not confirmed within 2 s of trace: {kinds:?}"
    );
    assert!(
        kinds.contains(&"stall"),
        "but the tasks are stalled: {kinds:?}"
    );
}

#[test]
fn malformed_trace_lines_fail_with_their_line_number() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.jsonl");
    std::fs::write(
        &path,
        "{\"ts_ns\":1,\"tid\":1,\"pid\":1,\"kind\":\"task_exit\"}\n{\"ts_ns\":2,\"tid\":1,\"pid\":1,\"kind\":\"mmap_lock_start\",\"mm\":\"0x1\"}\n",
    )
    .expect("write");
    let out = faultline(&["replay", path.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(
        err.contains("line 2") && err.contains("write"),
        "names the line and the missing field: {err}"
    );
}

#[test]
fn a_missing_trace_file_is_one_clear_line() {
    let out = faultline(&["replay", "/nonexistent/trace.jsonl"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("faultline: error: cannot open /nonexistent/trace.jsonl"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1);
}

#[test]
fn bad_flags_are_usage_errors_naming_the_flag() {
    let out = faultline(&["agent", "--wait-threshold", "soon"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--wait-threshold"));
    let out = faultline(&["agent", "--max-tasks", "1"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--max-tasks"));
}

#[test]
fn the_systemd_unit_verifies_and_grants_only_the_bpf_capabilities() {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/packaging/faultline.service"
    ))
    .expect("unit file");
    let caps: Vec<&str> = unit
        .lines()
        .filter_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .flat_map(str::split_whitespace)
        .collect();
    assert_eq!(caps, vec!["CAP_BPF", "CAP_PERFMON", "CAP_SYS_RESOURCE"]);
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipping the systemd-analyze half: not installed");
        return;
    }
    // Verify a copy that runs the binary just built.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("faultline.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/faultline", FAULTLINE)).expect("write unit");
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("verify");
    assert!(
        out.status.success(),
        "systemd-analyze verify: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_config_file_with_an_unknown_key_is_one_clear_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("f.toml");
    std::fs::write(&path, "stall_treshold = \"1s\"\n").expect("write");
    let out = faultline(&["agent", "--config", path.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("unknown key `stall_treshold`"), "{err}");
}

#[test]
fn a_reader_that_closed_the_pipe_is_not_an_error() {
    // A pipe whose read end is closed before faultline writes: every write gets EPIPE, as in
    // `faultline replay --json trace | head -1` once head has exited.
    let mut fds = [0i32; 2];
    // SAFETY: a plain pipe(2) into a two-int array.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0, "pipe");
    // SAFETY: closing the read end we own; the write end goes to the child.
    unsafe { libc::close(fds[0]) };
    // SAFETY: fds[1] is a fresh descriptor owned by nothing else.
    let write_end = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fds[1]) };
    for args in [&["replay", "--json", SEED][..], &["replay", SEED][..]] {
        let out = Command::new(FAULTLINE)
            .args(args)
            .stdout(write_end.try_clone().expect("dup the write end"))
            .output()
            .expect("run faultline");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && !stderr.contains("panicked"),
            "{args:?}: {:?} {stderr}",
            out.status
        );
    }
}
