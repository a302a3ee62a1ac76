//! The default mode (`--detail contention`) sees `mmap_lock` only through lock contention: no
//! acquisition, no release. A writer that holds the lock is still exact evidence there (the
//! waiter reads the rwsem owner word, writer bit clear of the reader flag), and these tests
//! hold the model to it with default-mode records only (no `mmap_lock_*` kinds).

use std::{path::Path, process::Command};

use tracer::{
    core::detect::{AlertKind, Confidence, Thresholds},
    core::engine::Engine,
    core::event::{Addr, Event, EventKind, LockMode, LockType},
    core::model::HoldSeen,
    core::trace::TraceReader,
};

const SEED_001: &str = "tests/traces/seed-001-default-mode.jsonl";
const MM: Addr = Addr(0xffff_8881_00a0_a000);
const MAPPER: u32 = 101;
const MUTEX_OWNER: u32 = 102;
const BYSTANDER: u32 = 103;

fn seed_001() -> Vec<Event> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(SEED_001);
    let file = std::fs::File::open(&path).expect("the seed trace is in the repository");
    TraceReader::new(std::io::BufReader::new(file))
        .collect::<Result<_, _>>()
        .expect("the seed trace parses")
}

/// Seed 001: a driver's mmap handler (the mapper) holds `mmap_lock` for write and waits for
/// the driver's mutex, whose owner faults in `copy_to_user` and waits for `mmap_lock` for read.
#[test]
fn seed_001_deadlock_is_found_from_default_mode_records_alone() {
    let events = seed_001();
    assert!(
        events
            .iter()
            .all(|e| !e.kind.name().starts_with("mmap_lock")),
        "the trace must hold default-mode records only"
    );
    let mut engine = Engine::new(Thresholds::default());
    let mut alerts = Vec::new();
    for ev in &events {
        alerts.extend(engine.apply(ev));
    }
    alerts.extend(engine.check());

    let deadlocks: Vec<_> = alerts
        .iter()
        .filter(|a| a.kind == AlertKind::Deadlock)
        .collect();
    assert_eq!(deadlocks.len(), 1, "one deadlock: {alerts:#?}");
    let mut tids = deadlocks[0].tids.clone();
    tids.sort_unstable();
    assert_eq!(
        tids,
        vec![MAPPER, MUTEX_OWNER],
        "exactly the mapper and the mutex owner: {alerts:#?}"
    );
    assert_eq!(
        deadlocks[0].confidence,
        Confidence::Certain,
        "the owner word is exact evidence: {:#?}",
        deadlocks[0]
    );
    assert!(
        deadlocks[0].summary.contains("held for write by 101"),
        "the narration names the write holder: {}",
        deadlocks[0].summary
    );

    // The mapper's write hold is in the model as seen through the owner word, and the
    // bystander queued behind it waits for the mapper, not for nobody.
    let hold = engine
        .model()
        .task(MAPPER)
        .and_then(|t| t.holds.get(&MM).copied())
        .expect("the mapper holds the mmap_lock");
    assert_eq!(
        (hold.mode, hold.seen),
        (LockMode::Write, HoldSeen::OwnerWord)
    );
    let graph = engine.graph();
    assert!(
        graph.out(BYSTANDER).iter().any(|e| e.to == MAPPER),
        "{:?}",
        graph.out(BYSTANDER)
    );
    // A stall of the bystander, never one of the deadlocked pair.
    assert!(
        alerts
            .iter()
            .filter(|a| a.kind == AlertKind::Stall)
            .all(|a| a.tids.first() == Some(&BYSTANDER)),
        "{alerts:#?}"
    );
}

/// Once a waiter is granted the lock, the writer known only from the owner word has released
/// it: no edge to it remains, so no deadlock is raised on a writer that moved on.
#[test]
fn a_grant_ends_a_write_hold_seen_through_the_owner_word() {
    let mut events = seed_001();
    // The bystander gets the lock at 1.5 s: the mapper must have released it by then.
    events.insert(
        4,
        Event {
            ts_ns: 1_500_000_000,
            tid: BYSTANDER,
            pid: 100,
            comm: None,
            kind: EventKind::LockWaitEnd {
                lock: Addr(0xffff_8881_00a0_a070),
                ret: 0,
                mm: Some(MM),
            },
        },
    );
    let mut engine = Engine::new(Thresholds::default());
    let mut alerts = Vec::new();
    for ev in &events {
        alerts.extend(engine.apply(ev));
    }
    alerts.extend(engine.check());
    assert!(
        alerts.iter().all(|a| a.kind != AlertKind::Deadlock),
        "{alerts:#?}"
    );
    assert!(engine
        .model()
        .task(MAPPER)
        .is_some_and(|t| !t.holds.contains_key(&MM)));
    // A late reader of a stale owner word (read before the grant) does not bring it back.
    engine.apply(&Event {
        ts_ns: 1_600_000_000,
        tid: 104,
        pid: 100,
        comm: None,
        kind: EventKind::LockWaitBegin {
            lock: Addr(0xffff_8881_00a0_a070),
            lock_type: LockType::RwsemRead,
            owner_tid: Some(MAPPER),
            mm: Some(MM),
        },
    });
    assert!(
        engine
            .model()
            .task(MAPPER)
            .is_some_and(|t| t.holds.contains_key(&MM)),
        "an owner word read after the grant is new evidence and is believed"
    );
}

/// The same trace through the `faultline replay` a user runs.
#[test]
fn faultline_replay_reports_the_seed_001_deadlock() {
    let out = Command::new(env!("CARGO_BIN_EXE_faultline"))
        .args(["replay", "--json"])
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join(SEED_001))
        .output()
        .expect("run faultline replay");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json report");
    let deadlocks: Vec<&serde_json::Value> = report["alerts"]
        .as_array()
        .expect("alerts")
        .iter()
        .filter(|a| a["kind"] == "deadlock")
        .collect();
    assert_eq!(deadlocks.len(), 1, "{report:#}");
    assert_eq!(deadlocks[0]["confidence"], "certain", "{report:#}");
}
