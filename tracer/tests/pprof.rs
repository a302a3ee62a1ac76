//! The lock-contention profile read by a real pprof reader: `go tool pprof` (Debian's
//! golang-go) reads what `faultline contention -o` writes during real contention, with its
//! sample types, a root frame per lock, and the same totals as the JSON report.

mod common;

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
};

use common::{require_root, FAULTLINE, SCENARIO};

#[test]
fn go_tool_pprof_reads_the_profile_with_its_types_roots_and_totals() {
    if !require_root("go_tool_pprof_reads_the_profile_with_its_types_roots_and_totals") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("kernel_lock.pb.gz");
    let mut profile = Command::new(FAULTLINE)
        .args(["contention", "-E", "100000", "--json", "-o"])
        .arg(&out)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("faultline contention");
    // Once its probes are attached (it says so), and its stop handler is in place.
    let mut lines = BufReader::new(profile.stderr.take().expect("stderr")).lines();
    assert!(
        lines
            .by_ref()
            .map_while(Result::ok)
            .any(|l| l.contains("profiling kernel lock contention")),
        "faultline contention exited before profiling"
    );
    std::thread::spawn(move || for _ in lines {});
    // A tmpfs file's inode lock, waited on for real.
    let w = Command::new(&*SCENARIO)
        .args(["file-writers", "--mib", "128"])
        .output()
        .expect("file-writers");
    assert!(w.status.success());
    // SAFETY: signalling our own child.
    unsafe { libc::kill(profile.id() as i32, libc::SIGINT) };
    let done = profile.wait_with_output().expect("contention ends");
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&done.stdout).expect("JSON");

    let raw = Command::new("go")
        .args(["tool", "pprof", "-raw"])
        .arg(&out)
        .env("HOME", dir.path())
        .output()
        .expect("go tool pprof (Debian's golang-go; `cargo xtask setup` installs it)");
    let text = String::from_utf8_lossy(&raw.stdout);
    assert!(
        raw.status.success(),
        "{}",
        String::from_utf8_lossy(&raw.stderr)
    );
    assert!(text.contains("PeriodType: contentions count"), "{text}");
    assert!(
        text.contains("contentions/count[dflt] delay/nanoseconds"),
        "{text}"
    );
    // Samples: "  COUNT  DELAY: LOCATION IDS"; their delays add up to the JSON's total.
    let samples = text
        .split("Samples:")
        .nth(1)
        .and_then(|r| r.split("Locations").next())
        .expect("a Samples section");
    let (mut count, mut delay) = (0u64, 0u64);
    for l in samples.lines() {
        let Some((values, _)) = l.split_once(':') else {
            continue;
        };
        let v: Vec<u64> = values
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        if let [c, d] = v[..] {
            count += c;
            delay += d;
        }
    }
    assert_eq!(
        delay,
        doc["total_wait_ns"].as_u64().expect("total"),
        "{text}"
    );
    assert_eq!(
        count,
        doc["contended"].as_u64().expect("contended"),
        "{text}"
    );
    assert!(count > 0, "the writers contended: {text}");
    // Every sample ends in its lock's root frame; a write path is among the frames.
    let locations = text.split("Locations").nth(1).expect("Locations");
    assert!(locations.contains(" lock:"), "{text}");
    assert!(locations.contains("[rwsem:W]"), "{text}");
    assert!(locations.to_lowercase().contains("write"), "{text}");
    // The lock's label, and no raw address anywhere.
    assert!(samples.contains("lock:["), "{text}");
    assert!(!text.contains("0xffff"), "{text}");

    let top = Command::new("go")
        .args(["tool", "pprof", "-top", "-sample_index=delay"])
        .arg(&out)
        .env("HOME", dir.path())
        .output()
        .expect("go tool pprof -top");
    assert!(top.status.success());
    assert!(String::from_utf8_lossy(&top.stdout).contains("Type: delay"));
}
