//! `faultline contention` against real contention on the real kernel (the host's and the VM
//! kernels'): a static lock (rtnl, from a private network namespace's loopback set down and up
//! by several processes), a lock inside a slab object (a tmpfs file's inode rwsem) and an `mmap_lock`
//! convoy, each named as far as the kernel allows and with the expected kernel functions in its
//! stack; a tiny table under load says what it dropped.

mod common;
#[path = "common/needs.rs"]
mod needs;

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
};

use common::{require_root, FAULTLINE, SCENARIO};

/// `faultline contention ARGS --json`, started; returns once its probes are attached.
fn start_profile(args: &[&str]) -> Child {
    let mut child = Command::new(FAULTLINE)
        .arg("contention")
        .args(args)
        .arg("--json")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("faultline contention starts");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    loop {
        match lines.next() {
            Some(Ok(l)) if l.contains("profiling kernel lock contention") => break,
            Some(Ok(_)) => continue,
            _ => {
                let _ = child.kill();
                panic!("faultline contention exited before profiling");
            }
        }
    }
    // Keep draining its stderr so it never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines.by_ref() {});
    child
}

/// Stops a profile started without a duration (SIGINT, as Ctrl-C) and reads it.
fn stop(child: Child) -> serde_json::Value {
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    finish(child)
}

fn finish(child: Child) -> serde_json::Value {
    let out = child.wait_with_output().expect("faultline contention ends");
    assert!(out.status.success(), "faultline contention failed");
    serde_json::from_slice(&out.stdout).expect("contention JSON")
}

fn rows(doc: &serde_json::Value) -> Vec<serde_json::Value> {
    doc["rows"].as_array().cloned().unwrap_or_default()
}

fn stack_has(row: &serde_json::Value, needle: &str) -> bool {
    row["stack"].as_array().is_some_and(|s| {
        s.iter()
            .any(|f| f.as_str().is_some_and(|f| f.contains(needle)))
    })
}

/// The rows of the grouping add up to the profile's totals: no row cut (`-E` is large) and no
/// sample lost or counted twice by the grouping.
fn assert_totals(doc: &serde_json::Value) {
    let rows = rows(doc);
    let sum: u64 = rows.iter().filter_map(|r| r["total_ns"].as_u64()).sum();
    let count: u64 = rows.iter().filter_map(|r| r["contended"].as_u64()).sum();
    // `--top` may cut rows: the tests ask for all of them.
    assert_eq!(
        sum,
        doc["total_wait_ns"].as_u64().expect("total"),
        "{doc:#}"
    );
    assert_eq!(
        count,
        doc["contended"].as_u64().expect("contended"),
        "{doc:#}"
    );
}

fn kallsyms_has_data() -> bool {
    std::fs::read_to_string("/proc/kallsyms")
        .unwrap_or_default()
        .lines()
        .filter(|l| {
            l.split_whitespace()
                .nth(1)
                .is_some_and(|k| matches!(k, "d" | "D" | "b" | "B"))
        })
        .take(1001)
        .count()
        > 1000
}

/// A private network namespace, deleted when dropped.
struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

#[test]
fn a_static_lock_rtnl_is_named_with_its_stack() {
    if !require_root("a_static_lock_rtnl_is_named_with_its_stack") {
        return;
    }
    let ns = Netns(format!("flc{}", std::process::id()));
    assert!(Command::new("ip")
        .args(["netns", "add", &ns.0])
        .status()
        .expect("ip (iproute2)")
        .success());
    let batch = tempfile::NamedTempFile::new().expect("batch file");
    let profile = start_profile(&["-d", "3s", "--stacks", "-E", "1000", "-Y", "mutex", "-l"]);
    // Four processes taking the namespace's loopback down and up: rtnl for every step (no
    // module needed, unlike dummy links).
    let workers: Vec<Child> = (0..4)
        .map(|w| {
            let lines: String = (0..400)
                .map(|_| "link set lo down\nlink set lo up\n".to_owned())
                .collect();
            let path = batch.path().with_extension(format!("{w}"));
            std::fs::write(&path, lines).expect("batch");
            Command::new("ip")
                .args(["-n", &ns.0, "-force", "-batch"])
                .arg(&path)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("ip -batch")
        })
        .collect();
    for mut w in workers {
        assert!(w.wait().expect("ip ends").success(), "ip -batch failed");
    }
    let doc = finish(profile);
    assert_totals(&doc);
    // By lock: the rtnl mutex's row, named by its symbol where the kernel lists data symbols
    // (Debian's kernels), else by its contending caller, said to be one.
    let data = kallsyms_has_data();
    let rows = rows(&doc);
    let rtnl = rows
        .iter()
        .find(|r| {
            let name = r["lock"]["name"].as_str().unwrap_or_default();
            if data {
                name == "rtnl_mutex"
            } else {
                r["lock"]["naming"] == "caller" && name.starts_with("rtnl")
            }
        })
        .unwrap_or_else(|| panic!("no row for the rtnl mutex (data symbols: {data}): {doc:#}"));
    assert!(rtnl["contended"].as_u64().unwrap_or(0) > 0, "{rtnl:#}");
    assert_eq!(
        rtnl["lock"]["naming"],
        if data { "symbol" } else { "caller" },
        "{rtnl:#}"
    );
    // The stack starts at the contending caller, not in the locking functions, and reaches
    // the netlink handler.
    let first = rtnl["stack"][0].as_str().unwrap_or_default();
    assert!(
        !first.starts_with("mutex_lock") && !first.starts_with("__mutex_lock"),
        "{rtnl:#}"
    );
    // rtnl_lock itself may be a tail call into mutex_lock (6.1), so look for the netlink path.
    assert!(
        stack_has(rtnl, "rtnl") || stack_has(rtnl, "netlink"),
        "{rtnl:#}"
    );
}

#[test]
fn a_lock_in_a_slab_object_a_tmpfs_inode_is_profiled_with_its_stack() {
    if !require_root("a_lock_in_a_slab_object_a_tmpfs_inode_is_profiled_with_its_stack") {
        return;
    }
    // Two writers of one tmpfs file: the second sleeps on the inode's rwsem while the first
    // copies 128 MiB under it.
    let profile = start_profile(&["--stacks", "-E", "1000", "-Y", "rwsem", "-t"]);
    let out = Command::new(&*SCENARIO)
        .args(["file-writers", "--mib", "128"])
        .output()
        .expect("file-writers");
    assert!(out.status.success(), "file-writers failed");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("report");
    let waiter = report["waiter"]["tid"].as_u64().expect("waiter tid");
    let doc = stop(profile);
    assert_totals(&doc);
    let row = rows(&doc)
        .into_iter()
        .find(|r| {
            r["key"]
                .as_str()
                .is_some_and(|k| k.split(' ').next() == Some(&waiter.to_string()))
        })
        .unwrap_or_else(|| panic!("no rwsem wait of the waiter {waiter}: {doc:#}"));
    assert!(
        row["type"].as_str().is_some_and(|t| t.contains("rwsem:W")),
        "{row:#}"
    );
    assert!(stack_has(&row, "write"), "a write path: {row:#}");
}

#[test]
fn an_mmap_lock_convoy_is_named_with_its_process() {
    if !require_root("an_mmap_lock_convoy_is_named_with_its_process") {
        return;
    }
    let profile = start_profile(&["--stacks", "-E", "1000", "-l"]);
    let child = Command::new(&*SCENARIO)
        .args(["rwr", "--hold-mib", "512"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("rwr");
    let pid = child.id();
    let out = child.wait_with_output().expect("rwr ends");
    assert!(out.status.success(), "rwr failed");
    let doc = stop(profile);
    assert_totals(&doc);
    let ours = format!("mmap_lock of {pid}");
    let row = rows(&doc)
        .into_iter()
        .find(|r| r["key"].as_str().is_some_and(|k| k.starts_with(&ours)))
        .unwrap_or_else(|| panic!("no row for {ours}: {doc:#}"));
    assert_eq!(row["lock"]["naming"], "mmap_lock", "{row:#}");
    assert!(
        row["type"].as_str().is_some_and(|t| t.contains("rwsem")),
        "{row:#}"
    );
    assert!(
        ["mmap", "mprotect", "fault", "vma", "cmdline", "remote_vm"]
            .iter()
            .any(|f| stack_has(&row, f)),
        "an mm path: {row:#}"
    );
}

#[test]
fn a_tiny_table_under_load_says_what_it_dropped() {
    if !require_root("a_tiny_table_under_load_says_what_it_dropped") {
        return;
    }
    let profile = start_profile(&["--profile-entries", "16", "-E", "1000", "-l"]);
    // 24 runs at once, each with a thread waiting on the f_pos_lock of its own file while the
    // holder's fault waits on a userfaultfd: 24 contended locks whatever the CPUs, more keys
    // than the table holds. At once, so the 24 files live together and their locks are 24
    // addresses (runs one after another can get the same file memory back: one key).
    let runs: Vec<_> = (0..24)
        .map(|_| {
            Command::new(&*SCENARIO)
                .args(["uffd-chain", "--hold-ms", "300"])
                .stdout(Stdio::null())
                .spawn()
                .expect("uffd-chain")
        })
        .collect();
    for mut r in runs {
        assert!(
            r.wait().expect("uffd-chain ends").success(),
            "uffd-chain failed"
        );
    }
    let doc = stop(profile);
    let drops = &doc["drops"];
    assert!(
        drops["table_full"].as_u64().unwrap_or(0) > 0,
        "a 16-entry table dropped nothing: {doc:#}"
    );
    assert!(rows(&doc).len() <= 16, "{doc:#}");
    assert_totals(&doc);
}

/// The parts of a pprof profile the totals need (`profile.proto`'s field numbers), decoded
/// here rather than with the agent's own types, so the wire format is checked too.
mod pprof_wire {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Profile {
        #[prost(message, repeated, tag = "2")]
        pub sample: Vec<Sample>,
        #[prost(string, repeated, tag = "6")]
        pub string_table: Vec<String>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Sample {
        #[prost(int64, repeated, tag = "2")]
        pub value: Vec<i64>,
        #[prost(message, repeated, tag = "3")]
        pub label: Vec<Label>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Label {
        #[prost(int64, tag = "1")]
        pub key: i64,
        #[prost(int64, tag = "2")]
        pub str: i64,
    }
}

/// (contentions, wait ns) of the samples whose `lock` label starts with `prefix`.
fn pprof_totals(gz: &[u8], prefix: &str) -> (u64, u64) {
    use prost::Message as _;
    use std::io::Read as _;
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(gz)
        .read_to_end(&mut raw)
        .expect("a gzipped profile");
    let p = pprof_wire::Profile::decode(raw.as_slice()).expect("a pprof profile");
    let s = |i: i64| p.string_table.get(i as usize).map_or("", String::as_str);
    p.sample
        .iter()
        .filter(|x| {
            x.label
                .iter()
                .any(|l| s(l.key) == "lock" && s(l.str).starts_with(prefix))
        })
        .fold((0, 0), |(c, t), x| {
            (c + x.value[0] as u64, t + x.value[1] as u64)
        })
}

/// (contentions, wait ns) of the `/metrics` series whose `lock` label starts with `prefix`.
fn metrics_totals(text: &str, prefix: &str) -> (u64, u64) {
    let want = format!("{{lock=\"{prefix}");
    let sum = |family: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with(family) && l[family.len()..].starts_with(&want))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    (
        sum("faultline_lock_contentions_total") as u64,
        (sum("faultline_lock_wait_seconds_total") * 1e9).round() as u64,
    )
}

fn within_1pct(what: &str, a: u64, b: u64) {
    let (lo, hi) = (a.min(b) as f64, a.max(b) as f64);
    assert!(
        hi > 0.0 && (hi - lo) / hi <= 0.01,
        "{what}: {a} and {b} differ by more than 1%"
    );
}

#[test]
fn the_profile_metrics_and_the_cli_agree_on_a_locks_waits() {
    if !require_root("the_profile_metrics_and_the_cli_agree_on_a_locks_waits") {
        return;
    }
    let state = tempfile::tempdir().expect("tempdir");
    // Without user-lock tracing: naming a process's futex waits reads its maps, which takes its
    // mmap_lock, and a read that comes as the convoy forms waits in it (seen in the 6.1 guest:
    // the CLI counted one more wait, the agent's own, which the agent leaves out of its profile
    // as it leaves out all its tasks). The agent puts such reads off while a process's lock has
    // waiters, but it learns that at its snapshots.
    let (agent, addr) = common::Faultline::agent(state.path(), &["--no-user-locks"]);
    let cli = start_profile(&["-E", "100000", "-l"]);
    // The window: both are attached before the workload starts and read after it ended, so
    // each saw every wait on its mmap_lock (a lock no other process takes).
    let child = Command::new(&*SCENARIO)
        .args(["rwr", "--hold-mib", "256"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("rwr");
    let pid = child.id();
    let out = child.wait_with_output().expect("rwr ends");
    assert!(out.status.success(), "rwr failed");
    let doc = stop(cli);
    let ours = format!("mmap_lock of {pid}");
    let cli_totals = rows(&doc)
        .iter()
        .filter(|r| r["key"].as_str().is_some_and(|k| k.starts_with(&ours)))
        .fold((0, 0), |(c, t), r| {
            (
                c + r["contended"].as_u64().unwrap_or(0),
                t + r["total_ns"].as_u64().unwrap_or(0),
            )
        });
    let (status, metrics) = common::http_get(&addr, "/metrics");
    assert_eq!(status, 200);
    let (status, body) = common::http_get_bytes(&addr, "/debug/pprof/kernel_lock");
    assert_eq!(status, 200);
    let from_metrics = metrics_totals(&metrics, &ours);
    let from_pprof = pprof_totals(&body, &ours);
    agent.stop();
    eprintln!("{ours}: cli {cli_totals:?}, metrics {from_metrics:?}, pprof {from_pprof:?}");
    assert!(cli_totals.0 > 0, "the CLI saw no wait on {ours}: {doc:#}");
    within_1pct("contentions, CLI vs /metrics", cli_totals.0, from_metrics.0);
    within_1pct("contentions, CLI vs pprof", cli_totals.0, from_pprof.0);
    within_1pct("wait, CLI vs /metrics", cli_totals.1, from_metrics.1);
    within_1pct("wait, CLI vs pprof", cli_totals.1, from_pprof.1);
}

#[test]
fn a_processs_siglock_is_named_as_the_well_known_lock_it_is() {
    if !require_root("a_processs_siglock_is_named_as_the_well_known_lock_it_is") {
        return;
    }
    let profile = start_profile(&["--stacks", "-E", "1000", "-l"]);
    let out = Command::new(&*SCENARIO)
        .args(["sig-churn", "--threads", "4", "--millis", "1500"])
        .output()
        .expect("sig-churn");
    assert!(out.status.success(), "sig-churn failed");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("report");
    let pid = report["pid"].as_u64().expect("pid");
    let doc = stop(profile);
    assert_totals(&doc);
    if !rows(&doc).iter().any(|r| stack_has(r, "sigprocmask")) {
        // No contended wait from the signal-mask path at all, named or not: the vCPUs of an
        // emulated (TCG) guest rarely run two critical sections at one moment.
        needs::machine_lacks(
            "a_processs_siglock_is_named_as_the_well_known_lock_it_is",
            "siglock contention (no contended wait from sigprocmask on this machine: an emulated guest)",
        );
        return;
    }
    let ours = format!("siglock of {pid}");
    let row = rows(&doc)
        .into_iter()
        .find(|r| r["key"].as_str().is_some_and(|k| k.starts_with(&ours)))
        .unwrap_or_else(|| panic!("no row for {ours}: {doc:#}"));
    assert_eq!(row["lock"]["naming"], "well_known", "{row:#}");
    assert_eq!(row["type"], "spinlock", "{row:#}");
    assert!(
        stack_has(&row, "sigprocmask"),
        "the signal-mask path: {row:#}"
    );
}

#[test]
fn the_agent_moves_idle_aggregates_out_of_the_kernels_table_and_loses_none() {
    if !require_root("the_agent_moves_idle_aggregates_out_of_the_kernels_table_and_loses_none") {
        return;
    }
    let state = tempfile::tempdir().expect("tempdir");
    let (agent, addr) = common::Faultline::agent(state.path(), &["--profile-idle-after", "1s"]);
    let child = Command::new(&*SCENARIO)
        .args(["rwr", "--hold-mib", "256"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("rwr");
    let pid = child.id();
    let out = child.wait_with_output().expect("rwr ends");
    assert!(out.status.success(), "rwr failed");
    let ours = format!("mmap_lock of {pid}");
    let profile = |addr: &str| {
        let (status, body) = common::http_get_bytes(addr, "/debug/pprof/kernel_lock");
        assert_eq!(status, 200);
        pprof_totals(&body, &ours)
    };
    let aged_out = |addr: &str| {
        let (status, page) = common::http_get(addr, "/metrics");
        assert_eq!(status, 200);
        page.lines()
            .find_map(|l| l.strip_prefix("faultline_lock_profile_aged_out "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let before = profile(&addr);
    assert!(before.0 > 0, "the convoy's waits are in the profile");
    // Its process is gone: its aggregates are idle. Two looks of the agent's timer (every
    // half second here) a second apart move them.
    std::thread::sleep(std::time::Duration::from_millis(3000));
    let moved = aged_out(&addr);
    let after = profile(&addr);
    agent.stop();
    assert!(
        moved >= 1.0,
        "idle aggregates were moved out of the kernel's table: {moved}"
    );
    assert_eq!(after, before, "moving them lost nothing: {ours}");
}
