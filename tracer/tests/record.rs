//! `faultline record` never loses what it wrote: a full disk ends it at once on a complete line,
//! SIGKILL leaves everything up to about a second before, a full ring buffer leaves `lost`
//! records with the count the recorder reports, and a second signal ends a long drain at once.
//! Real kernel, real workloads (`scenarios/`); run under the shared kernel lock with
//! `--test-threads=1`.

mod common;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use common::{read_trace, require_root, scenario, u64_at, Faultline};
use tracer::core::event::{Event, EventKind};

/// A small tmpfs mounted for one test, unmounted when dropped (a failed test too).
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("run mount");
        assert!(status.success(), "mount -t tmpfs failed: {status}");
        Self { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(self.dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            // Still busy (a recorder that did not exit): detach it now, freed when let go.
            let _ = Command::new("umount")
                .arg("-l")
                .arg(self.dir.path())
                .status();
        }
    }
}

fn record(out: &Path, extra: &[&str]) -> Faultline {
    let out = out.to_str().expect("utf-8 path");
    let mut args = vec!["record", "-o", out];
    args.extend_from_slice(extra);
    Faultline::start(&args, "recording to")
}

fn errors(lines: &[String]) -> Vec<&String> {
    lines
        .iter()
        .filter(|l| l.starts_with("faultline: error:"))
        .collect()
}

#[test]
fn a_full_disk_ends_the_recording_at_once_leaving_whole_lines() {
    if !require_root("a_full_disk_ends_the_recording_at_once_leaving_whole_lines") {
        return;
    }
    // Declared first, dropped last: after the recorder has exited.
    let disk = Tmpfs::mount("256k");
    let path = disk.path().join("trace.jsonl");
    let mut rec = record(&path, &[]);
    // Three records per mprotect, far more than 256 KiB of them.
    scenario(&["mprotect-loop", "--count", "20000"]);
    let waited = Instant::now();
    let status = rec.wait_exit(Duration::from_secs(20));
    assert!(
        waited.elapsed() < Duration::from_secs(5),
        "the recorder went on after the disk filled: {:?}\n{}",
        waited.elapsed(),
        rec.lines().join("\n")
    );
    assert_eq!(status.code(), Some(1), "{}", rec.lines().join("\n"));
    let errs = errors(rec.lines());
    assert_eq!(errs.len(), 1, "one error line: {:?}", rec.lines());
    let err = errs[0];
    assert!(
        err.contains(&path.display().to_string()) && err.contains("No space left on device"),
        "names the file and the problem: {err}"
    );
    let bytes = std::fs::read(&path).expect("the trace is there");
    assert!(
        bytes.len() > 128 * 1024,
        "the disk was used before giving up: {} bytes",
        bytes.len()
    );
    assert_eq!(
        bytes.last(),
        Some(&b'\n'),
        "the file ends on a complete line"
    );
    let events = read_trace(&path);
    assert!(
        err.contains(&format!("keeps the {} events", events.len())),
        "says what the file keeps ({} events): {err}",
        events.len()
    );
}

fn write_acquisitions_of(events: &[Event], tid: u32) -> usize {
    events
        .iter()
        .filter(|e| {
            e.tid == tid
                && matches!(
                    e.kind,
                    EventKind::MmapLockAcquire {
                        mode: tracer::core::event::LockMode::Write,
                        success: true,
                        ..
                    }
                )
        })
        .count()
}

#[test]
fn a_killed_recorder_leaves_every_event_up_to_the_last_second() {
    if !require_root("a_killed_recorder_leaves_every_event_up_to_the_last_second") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("trace.jsonl");
    let mut rec = record(&path, &[]);
    let report = scenario(&["mprotect-loop", "--count", "500"]);
    let tid = u64_at(&report, &["tid"]) as u32;
    std::thread::sleep(Duration::from_secs(2));
    rec.signal(libc::SIGKILL);
    rec.wait_exit(Duration::from_secs(10));
    // Strictly: every line whole (a write in progress is not cut by SIGKILL on a local file).
    let events = read_trace(&path);
    assert!(
        write_acquisitions_of(&events, tid) >= 500,
        "every mprotect of the workload, which ended 2 s before the kill, is in the file: {} of \
         500 ({} events in all)",
        write_acquisitions_of(&events, tid),
        events.len()
    );
}

fn lost_counts(events: &[Event]) -> Vec<u64> {
    events
        .iter()
        .filter_map(|e| match e.kind {
            EventKind::Lost { count } => Some(count),
            _ => None,
        })
        .collect()
}

/// "faultline: warning: N events lost (ring buffer full)…" → N.
fn reported_lost(lines: &[String]) -> u64 {
    lines
        .iter()
        .find_map(|l| {
            l.strip_prefix("faultline: warning: ")?
                .split_once(" events lost (ring buffer full)")?
                .0
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

#[test]
fn a_full_ring_buffer_leaves_lost_records_counting_what_was_dropped() {
    if !require_root("a_full_ring_buffer_leaves_lost_records_counting_what_was_dropped") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("trace.jsonl");
    // The smallest ring buffer, and a storm: it overflows.
    let rec = record(&path, &["--ring-buffer-size", "4096"]);
    scenario(&["storm", "--count", "20000", "--threads", "2"]);
    // Past a flush, so a loss is marked while recording and not only at the stop.
    std::thread::sleep(Duration::from_secs(1));
    let (status, lines) = rec.stop();
    assert!(status.success(), "{}", lines.join("\n"));
    let lost = reported_lost(&lines);
    assert!(
        lost > 0,
        "a 4 KiB ring buffer under a storm drops records: {lines:?}"
    );
    let events = read_trace(&path);
    let counts = lost_counts(&events);
    assert!(!counts.is_empty(), "the trace marks the losses");
    assert_eq!(
        counts.iter().sum::<u64>(),
        lost,
        "the markers count what the recorder reports lost: {counts:?}"
    );
    assert!(
        events
            .iter()
            .filter(|e| matches!(e.kind, EventKind::Lost { .. }))
            .all(|e| e.tid == 0 && e.pid == 0),
        "a loss belongs to no task"
    );
    // replay says it.
    let out = Command::new(common::FAULTLINE)
        .args(["replay", "--json"])
        .arg(&path)
        .output()
        .expect("run replay");
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    assert_eq!(
        doc["lost"],
        lost,
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_second_signal_ends_a_long_drain_at_once() {
    if !require_root("a_second_signal_ends_a_long_drain_at_once") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let path: PathBuf = dir.path().join("trace.jsonl");
    // A big ring buffer, filled while the recorder is stopped: draining it takes seconds.
    let mut rec = record(&path, &["--ring-buffer-size", "67108864"]);
    rec.signal(libc::SIGSTOP);
    let filled = std::panic::catch_unwind(|| {
        scenario(&["storm", "--count", "150000", "--threads", "2"]);
    });
    rec.signal(libc::SIGCONT);
    assert!(filled.is_ok(), "the storm ran");
    rec.signal(libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(300));
    rec.signal(libc::SIGTERM);
    let second = Instant::now();
    let status = rec.wait_exit(Duration::from_secs(60));
    let took = second.elapsed();
    assert_eq!(
        status.code(),
        Some(1),
        "stopped by the second signal, not a finished drain: {}",
        rec.lines().join("\n")
    );
    assert!(
        took < Duration::from_secs(2),
        "ended at once: {took:?} after the second signal"
    );
    let err = errors(rec.lines());
    assert!(
        err.len() == 1 && err[0].contains("second signal"),
        "one line saying why: {:?}",
        rec.lines()
    );
    // What was drained before it is whole.
    let events = read_trace(&path);
    assert!(!events.is_empty(), "the drained records are kept");
}
