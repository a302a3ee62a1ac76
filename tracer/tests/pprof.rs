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
    // Their delays add up to the JSON's total.
    let (count, delay) = raw_totals(&text);
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
    let samples = text
        .split("Samples:")
        .nth(1)
        .and_then(|r| r.split("Locations").next())
        .expect("a Samples section");
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

    protoc_decodes(&out, count, delay);
}

/// Debian's copy of the published `profile.proto` (golang-github-google-pprof-dev).
const PROFILE_PROTO_DIR: &str = "/usr/share/gocode/src/github.com/google/pprof/proto";

/// `protoc --decode` reads the profile against the published `profile.proto`: every field is
/// one the schema knows, `string_table[0]` is "", and the samples' values add up to `count`
/// contentions and `delay` ns.
fn protoc_decodes(profile_gz: &std::path::Path, count: u64, delay: u64) {
    use std::io::{Read as _, Write as _};
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(profile_gz).expect("the profile"))
        .read_to_end(&mut raw)
        .expect("a gzipped profile");
    let mut protoc = Command::new("protoc")
        .args([
            "--decode=perftools.profiles.Profile",
            "--proto_path",
            PROFILE_PROTO_DIR,
        ])
        .arg("profile.proto")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("protoc (Debian's protobuf-compiler; `cargo xtask setup` installs it)");
    protoc
        .stdin
        .take()
        .expect("stdin")
        .write_all(&raw)
        .expect("feed protoc");
    let out = protoc.wait_with_output().expect("protoc ends");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "protoc --decode: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Unknown fields print as bare numbers ("15: 3"): the schema names every field we write.
    assert!(
        !text
            .lines()
            .any(|l| l.trim_start().starts_with(|c: char| c.is_ascii_digit())),
        "a field profile.proto does not know: {text}"
    );
    let strings: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("string_table: "))
        .collect();
    assert_eq!(
        strings.first(),
        Some(&"\"\""),
        "string_table[0] is empty: {text}"
    );
    assert!(strings.contains(&"\"contentions\"") && strings.contains(&"\"delay\""));
    // Each sample's two values, in order: contentions, then delay.
    let (mut c, mut d, mut nth) = (0u64, 0u64, 0usize);
    let mut in_sample = false;
    for l in text.lines() {
        match l.trim() {
            "sample {" => (in_sample, nth) = (true, 0),
            "}" => in_sample = false,
            v if in_sample && v.starts_with("value: ") => {
                let n: u64 = v["value: ".len()..].parse().expect("a value");
                if nth == 0 {
                    c += n
                } else {
                    d += n
                }
                nth += 1;
            }
            _ => {}
        }
    }
    assert_eq!((c, d), (count, delay), "protoc's sample values: {text}");
}

fn pprof_raw(dir: &std::path::Path, name: &str, body: &[u8]) -> String {
    let path = dir.join(name);
    std::fs::write(&path, body).expect("write the profile");
    let raw = Command::new("go")
        .args(["tool", "pprof", "-raw"])
        .arg(&path)
        .env("HOME", dir)
        .output()
        .expect("go tool pprof");
    assert!(
        raw.status.success(),
        "{}",
        String::from_utf8_lossy(&raw.stderr)
    );
    String::from_utf8_lossy(&raw.stdout).into_owned()
}

/// The contentions and the delay summed over the samples of `go tool pprof -raw`'s text (each
/// a line "  COUNT  DELAY: LOCATION IDS" in its Samples section).
fn raw_totals(text: &str) -> (u64, u64) {
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
    (count, delay)
}

#[test]
fn the_agent_serves_the_profile_cumulative_and_as_a_delta_over_seconds() {
    if !require_root("the_agent_serves_the_profile_cumulative_and_as_a_delta_over_seconds") {
        return;
    }
    let state = tempfile::tempdir().expect("tempdir");
    let (agent, addr) = common::Faultline::agent(state.path(), &[]);
    let (status, _) = common::http_get_bytes(&addr, "/debug/pprof/kernel_lock?seconds=ten");
    assert_eq!(status, 400, "a bad window is refused");

    // The delta over the next 3 s, while a writer waits on a tmpfs inode's lock.
    let delta = {
        let addr = addr.clone();
        std::thread::spawn(move || {
            common::http_get_bytes(&addr, "/debug/pprof/kernel_lock?seconds=3")
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(500));
    let w = Command::new(&*SCENARIO)
        .args(["file-writers", "--mib", "128"])
        .output()
        .expect("file-writers");
    assert!(w.status.success());
    let (status, body) = delta.join().expect("the delta request");
    assert_eq!(status, 200);
    let dir = tempfile::tempdir().expect("tempdir");
    let text = pprof_raw(dir.path(), "delta.pb.gz", &body);
    assert!(text.contains("Duration: 3"), "{text}");
    assert!(
        text.contains("contentions/count[dflt] delay/nanoseconds"),
        "{text}"
    );
    assert!(text.contains("[rwsem:W]"), "the writer's wait: {text}");

    // Cumulative: at least what the delta saw.
    let (status, body) = common::http_get_bytes(&addr, "/debug/pprof/kernel_lock");
    assert_eq!(status, 200);
    let all = pprof_raw(dir.path(), "all.pb.gz", &body);
    assert!(all.contains("[rwsem:W]"), "{all}");
    assert!(!all.contains("0xffff"), "no address: {all}");
    agent.stop();
}

/// `faultline contention --user` during a real pthread mutex convoy: its row names the lock by
/// its symbol with the sleepers' user stack, each frame in its module with the module's build
/// id; `go tool pprof` reads the user_lock profile it writes (types, the lock's root frame, a
/// mapping with the build id, totals equal to the JSON's) and protoc decodes it against the
/// published schema.
#[test]
fn the_user_lock_profile_names_a_pthread_mutex_convoy_and_go_tool_pprof_reads_it() {
    if !require_root(
        "the_user_lock_profile_names_a_pthread_mutex_convoy_and_go_tool_pprof_reads_it",
    ) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("user_lock.pb.gz");
    let mut profile = Command::new(FAULTLINE)
        .args(["contention", "--user", "-E", "100000", "--json", "-o"])
        .arg(&out)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("faultline contention --user");
    let mut lines = BufReader::new(profile.stderr.take().expect("stderr")).lines();
    assert!(
        lines
            .by_ref()
            .map_while(Result::ok)
            .any(|l| l.contains("profiling user-space lock contention")),
        "faultline contention --user exited before profiling"
    );
    std::thread::spawn(move || for _ in lines {});
    let convoy = common::scenario(&["mutex-convoy", "--threads", "4", "--millis", "1500"]);
    let pid = convoy["pid"].as_u64().expect("pid");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(profile.id() as i32, libc::SIGINT) };
    let done = profile.wait_with_output().expect("contention ends");
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&done.stdout).expect("JSON");
    let rows = doc["rows"].as_array().expect("rows");
    let row = rows
        .iter()
        .find(|r| r["pid"].as_u64() == Some(pid) && r["lock"] == "FAULTLINE_CONVOY_MUTEX")
        .unwrap_or_else(|| panic!("no row for the convoy's mutex (pid {pid}): {doc:#}"));
    assert!(row["contended"].as_u64().unwrap_or(0) > 0, "{row:#}");
    assert_eq!(
        row["op"], "wait",
        "glibc's mutex waiters use FUTEX_WAIT: {row:#}"
    );
    let stack = row["stack"].as_array().expect("stack");
    let libc_frame = stack.iter().find(|f| {
        f["module"].as_str().is_some_and(|m| m.contains("libc.so"))
            && f["build_id"].as_str().is_some_and(|b| b.len() >= 32)
    });
    assert!(
        libc_frame.is_some(),
        "the sleeper's leaf is in the C library, with its build id: {row:#}"
    );

    let raw = Command::new("go")
        .args(["tool", "pprof", "-raw"])
        .arg(&out)
        .env("HOME", dir.path())
        .output()
        .expect("go tool pprof");
    let text = String::from_utf8_lossy(&raw.stdout);
    assert!(
        raw.status.success(),
        "{}",
        String::from_utf8_lossy(&raw.stderr)
    );
    assert!(text.contains("PeriodType: contentions count"), "{text}");
    assert!(
        text.contains("user_lock:FAULTLINE_CONVOY_MUTEX [wait]"),
        "{text}"
    );
    // A mapping of the C library with its build id (what a remote symboliser needs).
    let mappings = text.split("Mappings").nth(1).expect("Mappings");
    assert!(
        mappings
            .lines()
            .any(|l| l.contains("libc.so") && l.split_whitespace().any(|w| w.len() == 40)),
        "{text}"
    );
    let (count, delay) = raw_totals(&text);
    assert_eq!(
        count,
        doc["contended"].as_u64().expect("contended"),
        "{text}"
    );
    assert_eq!(
        delay,
        doc["total_wait_ns"].as_u64().expect("total"),
        "{text}"
    );
    // No address of the process: frames are file offsets, so nothing near a mapping's start.
    assert!(!text.contains("0x7f"), "{text}");
    protoc_decodes(&out, count, delay);
}
