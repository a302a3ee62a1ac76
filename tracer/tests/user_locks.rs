//! User-space lock waits on the real kernel: futex sleeps seen from the scheduler hooks, read as
//! glibc's mutex and rwlock layouts or the kernel's PI protocol, in the agent's live graph and
//! alerts, in `diagnose`, and in `record`/`replay`. The workloads are real glibc primitives
//! (`faultline-scenario`'s user-lock scenarios) and a third-party program (stress-ng).
//!
//! Every assertion is about the test's own processes: other processes on the host may be
//! contended or hung. Run under the shared kernel lock with `--test-threads=1`.
//!
//! Timing: the agent runs with its defaults, a cycle is confirmed once every member has waited
//! `--deadlock-confirm` (1 s), and futex sleeps enter the graph at its snapshots (every
//! `--snapshot-interval`, 250 ms). Only the deadlock alert's latency is asserted, on the
//! alert's own timestamp (CLOCK_MONOTONIC, the scenarios' clock). Everything else is only waited
//! for, for up to `PATIENCE`, which is generous for a TCG guest (where an agent's start and a
//! `diagnose` take seconds each); how long a wait takes is never asserted.

mod common;
#[path = "common/needs.rs"]
mod needs;

use std::{
    collections::{BTreeSet, HashMap},
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, Output, Stdio},
    sync::{mpsc, Mutex, MutexGuard},
    thread,
    time::{Duration, Instant},
};

use common::{http_get, read_trace, require_root, scenario, u64_at, u64s, Faultline, FAULTLINE};
use serde_json::Value;
use tracer::core::event::{Event, EventKind, FutexOutcome, UserLockKind, UserLockOwner};

/// The agent's `--deadlock-confirm` (its default): a cycle is a deadlock once every member has
/// waited this long.
const CONFIRM: Duration = Duration::from_secs(1);
/// The agent's `--snapshot-interval` (its default): the snapshot after the confirm threshold
/// raises the alert.
const SNAPSHOT: Duration = Duration::from_millis(250);
/// What the alert may take beyond that: a snapshot that runs late on a loaded host or in a TCG
/// guest (where one takes tens of milliseconds instead of a few).
const SLACK: Duration = Duration::from_secs(1);
/// How long to wait for something the agent shows within a few snapshots on the host. Only
/// bounds a wait (a TCG guest is ~20x slower); no assertion rests on it.
const PATIENCE: Duration = Duration::from_secs(60);
/// The hold of a deadlock a test looks at while it lasts: the longest the scenarios take
/// (60 s), cut short by killing the scenario once the test has seen what it needs.
const LONG_HOLD_MS: &str = "60000";

/// One test at a time in this file, also when cargo runs them in parallel: each starts an
/// agent or a recorder that sees every other test's workload.
static TURN: Mutex<()> = Mutex::new(());

fn turn() -> MutexGuard<'static, ()> {
    TURN.lock().unwrap_or_else(|e| e.into_inner())
}

/// CLOCK_MONOTONIC now: the clock of the agent's timestamps and of the scenarios' reports.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// A scenario running in the background, its JSON lines read as it prints them; killed and
/// reaped when dropped (a failed test too).
struct Workload {
    child: Child,
    lines: mpsc::Receiver<String>,
    what: String,
}

impl Workload {
    fn spawn(args: &[&str]) -> Self {
        let mut child = Command::new(&*common::SCENARIO)
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("run faultline-scenario");
        let stdout = child.stdout.take().expect("stdout piped");
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            lines,
            what: args.join(" "),
        }
    }

    /// Starts an `--announce` scenario and returns it with its announcement (printed once its
    /// threads are blocked).
    fn announced(args: &[&str]) -> (Self, Value) {
        let mut w = Self::spawn(args);
        let first = w.next_line(PATIENCE);
        (w, first)
    }

    fn pid(&self) -> u64 {
        u64::from(self.child.id())
    }

    fn running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    fn next_line(&mut self, timeout: Duration) -> Value {
        let line = self.lines.recv_timeout(timeout).unwrap_or_else(|e| {
            panic!(
                "`faultline-scenario {}` printed no line within {timeout:?} ({e})",
                self.what
            )
        });
        serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("`faultline-scenario {}` line {line:?}: {e}", self.what))
    }

    /// Waits for the final report and the exit, which must be clean.
    fn finish(mut self, timeout: Duration) -> Value {
        let report = self.next_line(timeout);
        let status = self.child.wait().expect("wait for the scenario");
        assert!(
            status.success(),
            "`faultline-scenario {}`: {status}",
            self.what
        );
        report
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        // A no-op once reaped (std remembers the status): never a recycled pid.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a command to its end, killed (and the test failed) after `timeout`.
fn run_bounded(cmd: &mut Command, timeout: Duration) -> Output {
    let what = format!("{cmd:?}");
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let pid = child.id() as i32;
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(timeout) {
        Ok(out) => out.unwrap_or_else(|e| panic!("{what}: {e}")),
        Err(_) => {
            // SAFETY: our own child, not reaped yet (its waiter is still waiting).
            unsafe { libc::kill(pid, libc::SIGKILL) };
            panic!("{what} did not finish within {timeout:?}");
        }
    }
}

/// Runs `faultline ARGS`, which must succeed and print one JSON document.
fn faultline_json(args: &[&str]) -> Value {
    let out = run_bounded(Command::new(FAULTLINE).args(args), PATIENCE);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "faultline {args:?}: {stderr}");
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("faultline {args:?} printed no JSON document ({e}): {stderr}"))
}

/// `faultline diagnose --json` on one process, from /proc alone (no agent asked).
fn diagnose(pid: u64) -> Value {
    faultline_json(&[
        "diagnose",
        "--no-agent",
        "--pid",
        &pid.to_string(),
        "--json",
    ])
}

fn get_json(addr: &str, path: &str) -> Value {
    let (status, body) = http_get(addr, path);
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
}

fn alerts(addr: &str) -> Vec<Value> {
    get_json(addr, "/api/alerts")["alerts"]
        .as_array()
        .cloned()
        .expect("/api/alerts has an alerts array")
}

fn graph(addr: &str) -> Value {
    get_json(addr, "/api/graph")
}

/// Asks `probe` every 50 ms until it answers; panics after `timeout` with what it last said.
fn poll<T>(what: &str, timeout: Duration, mut probe: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match probe() {
            Ok(v) => return v,
            Err(last) if Instant::now() > deadline => {
                panic!("{what}: not seen within {timeout:?}; last seen:\n{last}")
            }
            Err(_) => thread::sleep(Duration::from_millis(50)),
        }
    }
}

fn set(tids: &[u64]) -> BTreeSet<u64> {
    tids.iter().copied().collect()
}

/// The deadlock alert of exactly these tasks.
fn deadlock_of<'a>(alerts: &'a [Value], tids: &[u64]) -> Option<&'a Value> {
    alerts
        .iter()
        .find(|a| a["kind"] == "deadlock" && set(&u64s(a, "tids")) == set(tids))
}

/// Deadlock alerts that involve any of these tasks.
fn deadlocks_involving<'a>(alerts: &'a [Value], tids: &[u64]) -> Vec<&'a Value> {
    alerts
        .iter()
        .filter(|a| a["kind"] == "deadlock" && u64s(a, "tids").iter().any(|t| tids.contains(t)))
        .collect()
}

/// The cycle of exactly these tasks in a `diagnose --json` document.
fn cycle_of<'a>(doc: &'a Value, tids: &[u64]) -> Option<&'a Value> {
    doc["cycles"]
        .as_array()?
        .iter()
        .find(|c| set(&u64s(c, "tids")) == set(tids))
}

/// The graph's edge from `from` to `to`.
fn edge(graph: &Value, from: u64, to: u64) -> Option<&Value> {
    graph["edges"]
        .as_array()?
        .iter()
        .find(|e| e["from"] == from && e["to"] == to)
}

/// The graph once it has every edge of `pairs` (from, to), polled.
fn graph_with_edges(addr: &str, what: &str, pairs: &[(u64, u64)]) -> Value {
    poll(what, PATIENCE, || {
        let g = graph(addr);
        if pairs.iter().all(|&(from, to)| edge(&g, from, to).is_some()) {
            Ok(g)
        } else {
            Err(format!("{g:#}"))
        }
    })
}

/// Whether no edge of the graph leaves `tid`.
fn no_edge_from(graph: &Value, tid: u64) -> bool {
    graph["edges"]
        .as_array()
        .is_some_and(|es| es.iter().all(|e| e["from"] != tid))
}

fn graph_task(graph: &Value, tid: u64) -> Option<&Value> {
    graph["tasks"].as_array()?.iter().find(|t| t["tid"] == tid)
}

/// Fails at once, in faultline's own words, when it could not attach the hooks that see futex
/// sleeps (a verifier rejection on some kernel, say): every test here rests on them, and the
/// kernel has what they hook (sched_switch), so this is a failure, not a missing feature.
fn assert_traces_user_locks(f: &Faultline) {
    if let Some(l) = f
        .lines()
        .iter()
        .find(|l| l.contains("user-space lock waits") && l.contains("unavailable"))
    {
        panic!("faultline traces no user-space lock waits here: {l}");
    }
}

/// `faultline agent` with its defaults plus `extra`, checked to trace user-space lock waits.
fn start_agent(state: &std::path::Path, extra: &[&str]) -> (Faultline, String) {
    let (agent, addr) = Faultline::agent(state, extra);
    assert_traces_user_locks(&agent);
    (agent, addr)
}

/// `faultline record` into a file of its own.
struct Recorder {
    proc: Faultline,
    path: PathBuf,
    dir: tempfile::TempDir,
}

/// A finished recording: its events, and its file for `faultline replay`.
struct Trace {
    events: Vec<Event>,
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Recorder {
    fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("trace.jsonl");
        let out = path.to_str().expect("utf-8 temp path");
        let proc = Faultline::start(&["record", "--output", out], "recording to");
        assert_traces_user_locks(&proc);
        Self { proc, path, dir }
    }

    fn finish(self) -> Trace {
        let (status, lines) = self.proc.stop();
        assert!(status.success(), "record failed: {}", lines.join("\n"));
        Trace {
            events: read_trace(&self.path),
            path: self.path,
            _dir: self.dir,
        }
    }
}

impl Trace {
    fn replay(&self) -> Value {
        faultline_json(&["replay", "--json", self.path.to_str().expect("utf-8 path")])
    }
}

/// A futex sleep's begin as a trace has it.
struct Begin<'a> {
    tid: u32,
    pid: u32,
    futex: u64,
    lock: UserLockKind,
    owner: Option<&'a UserLockOwner>,
    name: Option<&'a str>,
}

fn begins(events: &[Event]) -> impl Iterator<Item = Begin<'_>> {
    events.iter().filter_map(|e| match &e.kind {
        EventKind::FutexWaitBegin {
            futex,
            lock,
            owner,
            name,
            ..
        } => Some(Begin {
            tid: e.tid,
            pid: e.pid,
            futex: futex.0,
            lock: *lock,
            owner: owner.as_ref(),
            name: name.as_deref(),
        }),
        _ => None,
    })
}

#[test]
fn a_pthread_abba_deadlock_is_alerted_live_within_a_second_of_the_confirm_threshold() {
    if !require_root(
        "a_pthread_abba_deadlock_is_alerted_live_within_a_second_of_the_confirm_threshold",
    ) {
        return;
    }
    let _turn = turn();
    let state = tempfile::tempdir().expect("tempdir");
    let (agent, addr) = start_agent(state.path(), &[]);
    let (mut abba, r) =
        Workload::announced(&["pthread-abba", "--hold-ms", LONG_HOLD_MS, "--announce"]);
    let (pid, t1, t2) = (
        u64_at(&r, &["pid"]),
        u64_at(&r, &["t1_tid"]),
        u64_at(&r, &["t2_tid"]),
    );
    let closed_ns = u64_at(&r, &["deadlocked_at_ns"]);
    let (sym_a, sym_b) = (
        r["symbol_a"].as_str().expect("symbol_a"),
        r["symbol_b"].as_str().expect("symbol_b"),
    );

    let (alert, seen_ns) = poll("a deadlock alert of abba-1 and abba-2", PATIENCE, || {
        let all = alerts(&addr);
        deadlock_of(&all, &[t1, t2])
            .map(|a| (a.clone(), monotonic_ns()))
            .ok_or_else(|| format!("{all:#?}"))
    });
    let at_ns = alert["ts_ns"].as_u64().expect("the alert's ts_ns");
    let after = Duration::from_nanos(at_ns.saturating_sub(closed_ns));
    let shown_after = Duration::from_nanos(seen_ns.saturating_sub(closed_ns));
    assert!(
        after >= CONFIRM,
        "raised {after:?} after the cycle closed, before the confirm threshold {CONFIRM:?}: {alert:#}"
    );
    assert!(
        after <= CONFIRM + SNAPSHOT + SLACK,
        "raised {after:?} after the cycle closed: more than the confirm threshold {CONFIRM:?} + a \
         snapshot interval {SNAPSHOT:?} + {SLACK:?} (the test saw it {shown_after:?} after): {alert:#}"
    );
    let summary = alert["summary"].as_str().unwrap_or_default();
    for sym in [sym_a, sym_b] {
        assert!(
            summary.contains(&format!("pthread_mutex {sym} ")),
            "the alert names mutex {sym} by its symbol: {summary}"
        );
    }
    for (tid, comm) in [(t1, "abba-1"), (t2, "abba-2")] {
        assert!(
            summary.contains(&format!("{tid} ({comm}, pid {pid})")),
            "the alert names {comm} ({tid}): {summary}"
        );
    }
    // Both owners were read from glibc's layout: inferred, so probable, with what was read.
    assert_eq!(alert["confidence"], "probable", "{alert:#}");
    let evidence = alert["evidence"].to_string();
    for owner in [t1, t2] {
        assert!(
            evidence.contains(&format!("__owner {owner},"))
                && evidence.contains(&format!("TID {owner} is a thread of pid {pid}")),
            "the evidence says what was read and checked for owner {owner}: {alert:#}"
        );
    }

    // diagnose, while the deadlock still holds, from /proc alone.
    let doc = diagnose(pid);
    assert!(
        abba.running(),
        "the deadlock held while diagnose looked (60 s)"
    );
    let cycle = cycle_of(&doc, &[t1, t2])
        .unwrap_or_else(|| panic!("diagnose shows no cycle of exactly {t1} and {t2}: {doc:#}"));
    assert_eq!(cycle["confidence"], "probable", "{cycle:#}");
    let evidence = cycle["evidence"].to_string();
    assert!(
        evidence.contains(sym_a) && evidence.contains(sym_b),
        "diagnose's evidence names both mutexes by symbol: {cycle:#}"
    );
    drop(abba);
    agent.stop();
}

/// The same ABBA, but each side took its first mutex through the kernel (the main thread held
/// both, and its unlocks woke them): each owner is named by the mutex's word (the waiter's end)
/// and was seen taking it (the owner's end), so the deadlock is certain, with no inference in
/// its evidence, and the graph's edges say why.
#[test]
fn a_pthread_abba_whose_owners_were_seen_taking_their_mutexes_is_a_certain_deadlock() {
    if !require_root(
        "a_pthread_abba_whose_owners_were_seen_taking_their_mutexes_is_a_certain_deadlock",
    ) {
        return;
    }
    let _turn = turn();
    let state = tempfile::tempdir().expect("tempdir");
    let (agent, addr) = start_agent(state.path(), &[]);
    let (abba, r) = Workload::announced(&[
        "pthread-abba",
        "--hold-ms",
        LONG_HOLD_MS,
        "--handed-ms",
        "500",
        "--announce",
    ]);
    let (t1, t2) = (u64_at(&r, &["t1_tid"]), u64_at(&r, &["t2_tid"]));
    let alert = poll("a deadlock alert of abba-1 and abba-2", PATIENCE, || {
        let all = alerts(&addr);
        deadlock_of(&all, &[t1, t2])
            .cloned()
            .ok_or_else(|| format!("{all:#?}"))
    });
    assert_eq!(alert["confidence"], "certain", "{alert:#}");
    assert_eq!(
        alert["evidence"],
        Value::Null,
        "nothing inferred: {alert:#}"
    );
    let summary = alert["summary"].as_str().unwrap_or_default();
    assert_eq!(
        summary.matches("seen taking it").count(),
        2,
        "both owners named as seen taking their mutex: {summary}"
    );
    let g = graph(&addr);
    for (from, to) in [(t1, t2), (t2, t1)] {
        let e = edge(&g, from, to).unwrap_or_else(|| panic!("no edge {from} -> {to}: {g:#}"));
        assert_eq!(e["reason"], "user_lock_owner_confirmed", "{e:#}");
    }
    drop(abba);
    agent.stop();
}

#[test]
fn a_userfaultfd_monitor_waiting_for_the_mutex_its_faulting_thread_holds_is_a_live_deadlock() {
    if !require_root(
        "a_userfaultfd_monitor_waiting_for_the_mutex_its_faulting_thread_holds_is_a_live_deadlock",
    ) {
        return;
    }
    let _turn = turn();
    let state = tempfile::tempdir().expect("tempdir");
    let (agent, addr) = start_agent(state.path(), &[]);
    let (mut um, r) = Workload::announced(&["uffd-mutex", "--hold-ms", LONG_HOLD_MS, "--announce"]);
    let (pid, fault, monitor) = (
        u64_at(&r, &["pid"]),
        u64_at(&r, &["fault_tid"]),
        u64_at(&r, &["monitor_tid"]),
    );
    let sym = r["symbol"].as_str().expect("symbol");
    assert_eq!(sym, "FAULTLINE_UFFD_MUTEX");

    let alert = poll(
        "a deadlock alert of um-monitor and um-fault",
        PATIENCE,
        || {
            let all = alerts(&addr);
            deadlock_of(&all, &[monitor, fault])
                .cloned()
                .ok_or_else(|| format!("{all:#?}"))
        },
    );
    let summary = alert["summary"].as_str().unwrap_or_default();
    assert!(
        summary.contains(&format!("{monitor} (um-monitor, pid {pid})"))
            && summary.contains(&format!("{fault} (um-fault, pid {pid})")),
        "the alert names the monitor and the faulting thread: {summary}"
    );
    assert!(
        summary.contains("userfaultfd"),
        "one hop is the userfaultfd: {summary}"
    );
    let evidence = alert["evidence"].to_string();
    assert!(
        evidence.contains(sym),
        "the evidence names the mutex {sym}: {alert:#}"
    );
    assert_eq!(
        alert["confidence"], "probable",
        "an inferred owner and an inferred handler: {alert:#}"
    );

    let doc = diagnose(pid);
    assert!(um.running(), "the deadlock held while diagnose looked");
    let cycle = cycle_of(&doc, &[monitor, fault]).unwrap_or_else(|| {
        panic!("diagnose shows no cycle of exactly {monitor} and {fault}: {doc:#}")
    });
    assert!(
        cycle["evidence"].to_string().contains(sym),
        "diagnose's evidence names the mutex {sym}: {cycle:#}"
    );
    drop(um);
    agent.stop();
}

#[test]
fn a_pi_mutex_chain_is_in_the_graph_with_exact_owners() {
    if !require_root("a_pi_mutex_chain_is_in_the_graph_with_exact_owners") {
        return;
    }
    let _turn = turn();
    let state = tempfile::tempdir().expect("tempdir");
    let (agent, addr) = start_agent(state.path(), &[]);
    let (pi, r) = Workload::announced(&["pi-chain", "--hold-ms", LONG_HOLD_MS, "--announce"]);
    let (pid, pi1, pi2, pi3) = (
        u64_at(&r, &["pid"]),
        u64_at(&r, &["pi1_tid"]),
        u64_at(&r, &["pi2_tid"]),
        u64_at(&r, &["pi3_tid"]),
    );

    let g = graph_with_edges(
        &addr,
        "the edges pi-3 → pi-2 → pi-1",
        &[(pi3, pi2), (pi2, pi1)],
    );
    // Each waiter's owner is the kernel's own record (the PI futex word): exact.
    for (from, to, mutex) in [(pi3, pi2, "FAULTLINE_PI_2"), (pi2, pi1, "FAULTLINE_PI_1")] {
        let e = edge(&g, from, to).expect("seen above");
        assert_eq!(e["reason"], "user_lock_owner", "{e:#}");
        assert_eq!(e["lock"]["lock_type"], "pi_mutex", "{e:#}");
        assert_eq!(e["lock"]["pid"], pid, "{e:#}");
        let t = graph_task(&g, from).unwrap_or_else(|| panic!("task {from} in the graph: {g:#}"));
        let b = &t["blocked"];
        assert_eq!(b["owner"], to, "{t:#}");
        assert_eq!(b["exact"], true, "a PI owner is exact: {t:#}");
        assert_eq!(b["name"], mutex, "named by its symbol: {t:#}");
        assert!(
            b["evidence"]
                .as_str()
                .is_some_and(|s| s.contains("PI futex word") && s.contains(&format!("TID {to}"))),
            "{t:#}"
        );
    }
    // pi-1 holds PI_1 and sleeps outside any lock: no edge leaves it, and a chain is no cycle.
    assert!(no_edge_from(&g, pi1), "pi-1 waits for nobody: {g:#}");
    let all = alerts(&addr);
    assert!(
        deadlocks_involving(&all, &[pi1, pi2, pi3]).is_empty(),
        "a chain is no deadlock: {all:#?}"
    );
    drop(pi);
    agent.stop();
}

/// A PI cycle never forms: the kernel's PI chain walk refuses the wait that would close it
/// (FUTEX_LOCK_PI fails with EDEADLK), and glibc then sleeps until the deadline on a word of
/// its own (no owner semantics). faultline shows what is there, the exact chain pi-3 → pi-2 →
/// pi-1, and invents no edge out of pi-1 and no deadlock, past the confirmation threshold.
#[test]
fn a_pi_cycle_the_kernel_refuses_leaves_the_exact_chain_and_no_invented_deadlock() {
    if !require_root(
        "a_pi_cycle_the_kernel_refuses_leaves_the_exact_chain_and_no_invented_deadlock",
    ) {
        return;
    }
    let _turn = turn();
    let state = tempfile::tempdir().expect("tempdir");
    let (agent, addr) = start_agent(state.path(), &[]);
    let (pi, r) = Workload::announced(&[
        "pi-chain",
        "--hold-ms",
        LONG_HOLD_MS,
        "--announce",
        "--cycle",
    ]);
    let (pi1, pi2, pi3) = (
        u64_at(&r, &["pi1_tid"]),
        u64_at(&r, &["pi2_tid"]),
        u64_at(&r, &["pi3_tid"]),
    );
    let g = graph_with_edges(
        &addr,
        "the edges pi-3 → pi-2 → pi-1",
        &[(pi3, pi2), (pi2, pi1)],
    );
    for (from, to) in [(pi3, pi2), (pi2, pi1)] {
        let e = edge(&g, from, to).expect("seen above");
        assert_eq!(e["reason"], "user_lock_owner", "exact: {e:#}");
    }
    // Past the confirmation (1 s) and a few snapshots: still no edge out of pi-1, no deadlock.
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let g = graph(&addr);
    assert!(
        no_edge_from(&g, pi1),
        "pi-1 sleeps on glibc's private word after EDEADLK: no owner to follow: {g:#}"
    );
    let all = alerts(&addr);
    assert!(
        deadlocks_involving(&all, &[pi1, pi2, pi3]).is_empty(),
        "the kernel refused the cycle: {all:#?}"
    );
    drop(pi);
    agent.stop();
}

#[test]
fn condvar_barrier_and_semaphore_sleeps_under_load_get_no_edge_and_no_deadlock() {
    if !require_root("condvar_barrier_and_semaphore_sleeps_under_load_get_no_edge_and_no_deadlock")
    {
        return;
    }
    let _turn = turn();
    let state = tempfile::tempdir().expect("tempdir");
    let journal_dir = tempfile::tempdir().expect("tempdir");
    let journal = journal_dir.path().join("agent.jsonl");
    // The agent's own record of every event it applied: what it made of the workload.
    let (agent, addr) = start_agent(
        state.path(),
        &["--record", journal.to_str().expect("utf-8 path")],
    );
    // Beside it, a recording, which keeps every futex sleep (the agent applies only lock-shaped
    // ones past its wait threshold): that the run's sleeps were seen at all.
    let rec = Recorder::start();
    // The scenario's default: 4 barrier threads, 2 condition-variable pairs, 2 producers and 2
    // consumers, 12 threads on a few CPUs, so sleeps past the 1 ms threshold are common. (With 4
    // the barrier's round counter steps by 4, so its word has glibc rwlock's reader-waiting bit
    // every other round: a layout reading must not take it for one.)
    const THREADS: usize = 4;
    let mut benign = Workload::spawn(&[
        "futex-benign",
        "--millis",
        "3000",
        "--threads",
        &THREADS.to_string(),
    ]);
    let pid = benign.pid();
    // The graph, several times during the run (its tids are known at its end).
    let mut samples = Vec::new();
    let deadline = Instant::now() + PATIENCE;
    while benign.running() && Instant::now() < deadline {
        samples.push(graph(&addr));
        thread::sleep(Duration::from_millis(200));
    }
    let r = benign.finish(PATIENCE);
    assert_eq!(u64_at(&r, &["pid"]), pid);
    let tids = u64s(&r, "tids");
    assert!(
        u64_at(&r, &["condvar_round_trips"]) > 0
            && u64_at(&r, &["barrier_crossings"]) > 0
            && u64_at(&r, &["semaphore_posts"]) > 0,
        "every primitive was used: {r}"
    );
    assert!(
        samples.len() >= 3,
        "the graph was looked at {} times during the run",
        samples.len()
    );
    for g in &samples {
        let ours: Vec<&Value> = g["edges"]
            .as_array()
            .expect("edges")
            .iter()
            .filter(|e| {
                [&e["from"], &e["to"]]
                    .iter()
                    .any(|t| t.as_u64().is_some_and(|t| tids.contains(&t)))
            })
            .collect();
        assert!(ours.is_empty(), "edges of pid {pid}'s threads: {ours:#?}");
        let blocked: Vec<&Value> = g["tasks"]
            .as_array()
            .expect("tasks")
            .iter()
            .filter(|t| t["pid"] == pid && t["blocked"]["kind"] == "user_lock")
            .collect();
        assert!(
            blocked.is_empty(),
            "sleeps with no owner semantics never enter the graph: {blocked:#?}"
        );
    }
    let all = alerts(&addr);
    let deadlocks = deadlocks_involving(&all, &tids);
    assert!(deadlocks.is_empty(), "no deadlock: {deadlocks:#?}");
    // The run's sleeps were seen, on words with no owner, in each kind of worker: cv-*, then
    // bar-*, then sem-* (the scenario's order).
    let recorded = rec.finish();
    let kinds = [
        ("condition variable", &tids[..2 * (THREADS / 2)]),
        (
            "barrier",
            &tids[2 * (THREADS / 2)..2 * (THREADS / 2) + THREADS],
        ),
        ("semaphore", &tids[2 * (THREADS / 2) + THREADS..]),
    ];
    for (kind, workers) in kinds {
        assert!(
            begins(&recorded.events).any(|b| {
                workers.contains(&u64::from(b.tid))
                    && b.lock == UserLockKind::Futex
                    && b.owner.is_none()
            }),
            "no {kind} sleep of pid {pid} recorded as a futex with no owner"
        );
    }
    let (status, lines) = agent.stop();
    assert!(status.success(), "{}", lines.join("\n"));

    // What the agent applied of them (lock-shaped sleeps past the wait threshold): none with an
    // owner, and none of a barrier or semaphore read as a lock. Workers are cv-*, then bar-*,
    // then sem-* (the scenario's order).
    let events = read_trace(&journal);
    let seen: Vec<Begin> = begins(&events)
        .filter(|b| u64::from(b.pid) == pid)
        .collect();
    let owned: Vec<(u32, u32)> = seen
        .iter()
        .filter_map(|b| b.owner.map(|o| (b.tid, o.tid)))
        .collect();
    assert!(
        owned.is_empty(),
        "sleeps of pid {pid} given an owner (waiter, owner): {owned:?}"
    );
    let barrier_or_semaphore = &tids[2 * (THREADS / 2)..];
    let mut as_locks: HashMap<(u32, UserLockKind), usize> = HashMap::new();
    for b in &seen {
        if barrier_or_semaphore.contains(&u64::from(b.tid)) && b.lock != UserLockKind::Futex {
            *as_locks.entry((b.tid, b.lock)).or_default() += 1;
        }
    }
    assert!(
        as_locks.is_empty(),
        "barrier and semaphore sleeps read as lock waits, of {} sleeps the agent applied \
         ((tid, kind): count): {as_locks:?}",
        seen.len()
    );
}

#[test]
fn a_reader_queued_behind_a_writer_on_a_writer_preferring_rwlock_has_an_edge_to_it() {
    if !require_root(
        "a_reader_queued_behind_a_writer_on_a_writer_preferring_rwlock_has_an_edge_to_it",
    ) {
        return;
    }
    let _turn = turn();
    let state = tempfile::tempdir().expect("tempdir");
    let (agent, addr) = start_agent(state.path(), &[]);
    let (rw, r) = Workload::announced(&[
        "rwlock-queue",
        "--prefer",
        "writer",
        "--hold-ms",
        LONG_HOLD_MS,
        "--announce",
    ]);
    let (pid, writer, reader) = (
        u64_at(&r, &["pid"]),
        u64_at(&r, &["writer_tid"]),
        u64_at(&r, &["reader_tid"]),
    );
    let g = poll("the late reader's edge to the writer", PATIENCE, || {
        let g = graph(&addr);
        match edge(&g, reader, writer) {
            Some(_) => Ok(g),
            None => Err(format!("{g:#}")),
        }
    });
    let e = edge(&g, reader, writer).expect("seen above");
    assert_eq!(e["reason"], "queued_behind_writer", "{e:#}");
    assert_eq!(e["lock"]["lock_type"], "pthread_rwlock_read", "{e:#}");
    assert_eq!(e["lock"]["pid"], pid, "{e:#}");
    let w = graph_task(&g, writer).unwrap_or_else(|| panic!("the writer in the graph: {g:#}"));
    assert_eq!(w["blocked"]["lock_type"], "pthread_rwlock_write", "{w:#}");
    assert_eq!(
        w["blocked"]["lock"], e["lock"]["lock"],
        "the reader and the writer wait on one lock: {g:#}"
    );
    assert_eq!(w["blocked"]["name"], "FAULTLINE_RWLOCK", "{w:#}");
    drop(rw);
    agent.stop();
}

#[test]
fn a_late_reader_on_a_reader_preferring_rwlock_is_not_held_back_by_the_queued_writer() {
    if !require_root(
        "a_late_reader_on_a_reader_preferring_rwlock_is_not_held_back_by_the_queued_writer",
    ) {
        return;
    }
    let _turn = turn();
    let state = tempfile::tempdir().expect("tempdir");
    let journal_dir = tempfile::tempdir().expect("tempdir");
    let journal = journal_dir.path().join("agent.jsonl");
    let (agent, addr) = start_agent(
        state.path(),
        &["--record", journal.to_str().expect("utf-8 path")],
    );
    // The holder holds 8 s: time for the agent to show the queued writer (the sign it watches
    // this lock) before the final report, which says whether the reader was held back.
    let (mut rw, r) = Workload::announced(&[
        "rwlock-queue",
        "--prefer",
        "reader",
        "--hold-ms",
        "8000",
        "--announce",
    ]);
    let (writer, reader) = (u64_at(&r, &["writer_tid"]), u64_at(&r, &["reader_tid"]));
    let mut samples = Vec::new();
    let mut writer_seen = false;
    while rw.running() && !(writer_seen && samples.len() >= 4) {
        let g = graph(&addr);
        writer_seen |= graph_task(&g, writer).is_some_and(|t| {
            t["blocked"]["lock_type"] == "pthread_rwlock_write"
                && t["blocked"]["name"] == "FAULTLINE_RWLOCK"
        });
        samples.push(g);
        thread::sleep(Duration::from_millis(200));
    }
    let last = rw.finish(PATIENCE);
    assert!(
        writer_seen,
        "the agent never showed the writer queued on FAULTLINE_RWLOCK: {:#}",
        samples.last().cloned().unwrap_or_default()
    );
    assert_eq!(
        last["reader_blocked"], false,
        "the reader got in at once: {last}"
    );
    for g in &samples {
        let from_reader: Vec<&Value> = g["edges"]
            .as_array()
            .expect("edges")
            .iter()
            .filter(|e| e["from"] == reader)
            .collect();
        assert!(
            from_reader.is_empty(),
            "the late reader waits for nobody: {from_reader:#?}"
        );
    }
    let (status, lines) = agent.stop();
    assert!(status.success(), "{}", lines.join("\n"));
    let events = read_trace(&journal);
    let reader_sleeps: Vec<UserLockKind> = begins(&events)
        .filter(|b| u64::from(b.tid) == reader && b.lock != UserLockKind::Futex)
        .map(|b| b.lock)
        .collect();
    assert!(
        reader_sleeps.is_empty(),
        "the agent saw the late reader sleep on a lock: {reader_sleeps:?}"
    );
}

/// The processes of a process tree two levels deep (`root` and its children: stress-ng and its
/// stressors) and their threads now: tid → pid.
fn threads_under(root: u32) -> HashMap<u32, u32> {
    let mut pids = vec![root];
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        // "pid (comm) state ppid ...": the comm may hold spaces and parentheses.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(root) {
            pids.push(pid);
        }
    }
    let mut threads = HashMap::new();
    for pid in pids {
        for t in std::fs::read_dir(format!("/proc/{pid}/task"))
            .into_iter()
            .flatten()
            .flatten()
        {
            if let Some(tid) = t.file_name().to_str().and_then(|n| n.parse().ok()) {
                threads.insert(tid, pid);
            }
        }
    }
    threads
}

/// Where `prog` is on PATH.
fn on_path(prog: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(prog))
        .find(|p| p.is_file())
}

/// A process group, killed whole when dropped.
struct Group(Child);

impl Drop for Group {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            // SAFETY: the group of our own child, which has not been reaped.
            unsafe { libc::kill(-(self.0.id() as i32), libc::SIGKILL) };
        }
        let _ = self.0.wait();
    }
}

#[test]
fn stress_ng_mutex_waits_are_recorded_with_owners_of_their_own_process_and_no_deadlock() {
    let name =
        "stress_ng_mutex_waits_are_recorded_with_owners_of_their_own_process_and_no_deadlock";
    if !require_root(name) {
        return;
    }
    let Some(stress_ng) = on_path("stress-ng") else {
        needs::machine_lacks(name, "stress-ng (Debian's package stress-ng)");
        return;
    };
    let _turn = turn();
    let rec = Recorder::start();
    let mut stress = {
        use std::os::unix::process::CommandExt as _;
        Group(
            Command::new(stress_ng)
                .args(["--mutex", "4", "--timeout", "3s"])
                .stdout(Stdio::null())
                .process_group(0)
                .spawn()
                .expect("run stress-ng"),
        )
    };
    let root = stress.0.id();
    // Its processes and threads, as /proc shows them while it runs.
    let mut threads: HashMap<u32, u32> = HashMap::new();
    let deadline = Instant::now() + PATIENCE;
    let status = loop {
        threads.extend(threads_under(root));
        if let Some(status) = stress.0.try_wait().expect("try_wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "stress-ng ran past {PATIENCE:?}");
        thread::sleep(Duration::from_millis(20));
    };
    // Exit status 3 is stress-ng's "no resource": a hog could not create its threads (seen
    // once in a TCG guest: pthread_create's EAGAIN, one hog of four). The hogs that ran are
    // what is judged below, and they must have waited.
    assert!(
        status.success() || status.code() == Some(3),
        "stress-ng: {status}"
    );
    if !status.success() {
        eprintln!("stress-ng: {status}: a hog lacked the resources to start its threads");
    }
    let trace = rec.finish();
    let pids: BTreeSet<u32> = threads.values().copied().collect();

    let waits: Vec<Begin> = begins(&trace.events)
        .filter(|b| pids.contains(&b.pid))
        .collect();
    assert!(
        waits.iter().any(|b| b.lock == UserLockKind::PthreadMutex),
        "no pthread mutex wait of stress-ng's processes {pids:?} recorded ({} futex sleeps)",
        waits.len()
    );
    // Which process each thread is in, as the kernel put it in the trace's own records (a
    // second source, for threads the sampling of /proc missed).
    let in_trace: HashMap<u32, u32> = trace
        .events
        .iter()
        .filter(|e| e.tid != 0)
        .map(|e| (e.tid, e.pid))
        .collect();
    let mut owners = 0;
    for b in &waits {
        let Some(o) = b.owner else { continue };
        owners += 1;
        assert_ne!(
            o.tid, b.tid,
            "a waiter is not its own owner: {}",
            o.evidence
        );
        let said = [threads.get(&o.tid), in_trace.get(&o.tid)];
        assert!(
            said.iter().any(Option::is_some) && said.iter().flatten().all(|&&p| p == b.pid),
            "the owner {} of {}'s wait is a thread of its process {} ({}): /proc and the \
             trace put it in {said:?}",
            o.tid,
            b.tid,
            b.pid,
            o.evidence
        );
    }
    assert!(
        owners > 0,
        "no owner named in {} futex sleeps of stress-ng",
        waits.len()
    );

    let replayed = trace.replay();
    let alerts = replayed["alerts"].as_array().cloned().unwrap_or_default();
    let tids: Vec<u64> = threads.keys().map(|&t| u64::from(t)).collect();
    let deadlocks = deadlocks_involving(&alerts, &tids);
    assert!(
        deadlocks.is_empty(),
        "stress-ng's mutex convoy is no deadlock: {deadlocks:#?}"
    );
}

#[test]
fn a_recorded_pthread_abba_deadlock_names_both_owners_and_replays_to_the_deadlock() {
    if !require_root(
        "a_recorded_pthread_abba_deadlock_names_both_owners_and_replays_to_the_deadlock",
    ) {
        return;
    }
    let _turn = turn();
    let rec = Recorder::start();
    // Held 3 s: three times the confirm threshold.
    let r = scenario(&["pthread-abba", "--hold-ms", "3000"]);
    let trace = rec.finish();
    let (pid, t1, t2) = (
        u64_at(&r, &["pid"]) as u32,
        u64_at(&r, &["t1_tid"]) as u32,
        u64_at(&r, &["t2_tid"]) as u32,
    );
    assert_eq!(
        (r["t1_timed_out"].as_bool(), r["t2_timed_out"].as_bool()),
        (Some(true), Some(true)),
        "both asks timed out: a real deadlock: {r}"
    );
    let addr = |field: &str| {
        let hex = r[field]
            .as_str()
            .unwrap_or_else(|| panic!("{field} in {r}"));
        u64::from_str_radix(hex.trim_start_matches("0x"), 16).expect("a hex address")
    };
    // abba-1 holds A and asks for B, owned by abba-2; abba-2 the reverse.
    let asks = [
        (t1, t2, "FAULTLINE_MUTEX_B", addr("mutex_b")),
        (t2, t1, "FAULTLINE_MUTEX_A", addr("mutex_a")),
    ];
    for (waiter, owner, mutex, futex) in asks {
        let on_it = |e: &&Event| {
            e.tid == waiter
                && matches!(e.kind, EventKind::FutexWaitBegin { futex: f, .. }
                    | EventKind::FutexWaitEnd { futex: f, .. } if f.0 == futex)
        };
        let seen: Vec<&Event> = trace.events.iter().filter(on_it).collect();
        let ask = begins(&trace.events)
            .find(|b| b.tid == waiter && b.futex == futex)
            .unwrap_or_else(|| panic!("no futex_wait_begin of {waiter} on {mutex}: {seen:#?}"));
        assert_eq!(ask.pid, pid, "{seen:#?}");
        assert_eq!(ask.lock, UserLockKind::PthreadMutex, "{seen:#?}");
        assert!(
            ask.owner.is_some_and(|o| o.tid == owner && !o.exact),
            "{waiter}'s wait names {owner} as the owner, inferred: {seen:#?}"
        );
        assert_eq!(
            ask.name,
            Some(mutex),
            "{waiter}'s wait names the mutex by its symbol: {seen:#?}"
        );
        assert!(
            seen.iter().any(|e| matches!(
                e.kind,
                EventKind::FutexWaitEnd {
                    outcome: FutexOutcome::Timeout,
                    ..
                }
            )),
            "{waiter}'s wait on {mutex} ended by its timeout: {seen:#?}"
        );
    }

    let replayed = trace.replay();
    let alerts = replayed["alerts"].as_array().cloned().unwrap_or_default();
    let (t1, t2) = (u64::from(t1), u64::from(t2));
    let alert = deadlock_of(&alerts, &[t1, t2])
        .unwrap_or_else(|| panic!("replay reports no deadlock of {t1} and {t2}: {replayed:#}"));
    assert_eq!(alert["confidence"], "probable", "{alert:#}");
    let at = alert["ts_ns"].as_u64().expect("ts_ns");
    let closed = u64_at(&r, &["deadlocked_at_ns"]);
    assert!(
        at >= closed + CONFIRM.as_nanos() as u64 && at <= u64_at(&r, &["ended_at_ns"]),
        "raised in trace time between the confirm threshold and the end: alert at {at}, closed \
         at {closed}: {alert:#}"
    );
}
