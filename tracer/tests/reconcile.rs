//! The live model stays true under churn and loss: sequences of feed inputs (streamed records,
//! kernel snapshots, the lost-record counter) and generated traces that reproduce issue 11's
//! live bugs, with what the model must say afterwards.

use std::{
    collections::BTreeSet,
    sync::{Arc, Mutex},
};

use tracer::{
    core::detect::{Alert, AlertKind, Thresholds},
    core::engine::Engine,
    core::event::{Addr, Event, EventKind, LockMode},
    core::graph::Reason,
    kernel::decode::{Decoded, Reasons},
    kernel::live::LiveFeed,
};
use tracer_common::{mode, reason, Hold, TaskState, HOLD_SLOTS};

const MS: u64 = 1_000_000;
const MM: Addr = Addr(0xffff_8881_0000_a000);
/// The streaming thresholds of the agent in these tests.
const WAIT: u64 = 5 * MS;
const HOLD: u64 = 20 * MS;

/// Processes that no longer exist, for the feed's liveness check (instead of /proc).
#[derive(Clone, Default)]
struct Dead(Arc<Mutex<BTreeSet<u32>>>);

impl Dead {
    fn kill(&self, pid: u32) {
        self.0.lock().expect("lock").insert(pid);
    }
}

fn feed(dead: &Dead) -> LiveFeed {
    let dead = dead.clone();
    LiveFeed::new(Thresholds::default(), WAIT, HOLD).with_liveness(Box::new(move |pid| {
        !dead.0.lock().map(|d| d.contains(&pid)).unwrap_or(false)
    }))
}

/// One per-task kernel entry: an attempt in flight and holds, as `TASK_STATE` shows them.
fn task(tgid: u32, wait: Option<(LockMode, u64)>, holds: &[(LockMode, u64)]) -> TaskState {
    let m = |l: LockMode| {
        if l == LockMode::Write {
            mode::WRITE
        } else {
            mode::READ
        }
    };
    let mut st = TaskState {
        tgid,
        ..Default::default()
    };
    if let Some((l, since)) = wait {
        st.wait_mm = MM.0;
        st.wait_mode = m(l);
        st.wait_since_ns = since;
    }
    for (i, (l, since)) in holds.iter().enumerate().take(HOLD_SLOTS) {
        st.holds[i] = Hold {
            mm: MM.0,
            since_ns: *since,
            mode: m(*l),
            depth: 1,
            ..Default::default()
        };
    }
    st
}

/// A streamed record (record mode: nothing implied).
fn record(ts_ns: u64, tid: u32, pid: u32, kind: EventKind) -> Decoded {
    Decoded {
        event: Event {
            ts_ns,
            tid,
            pid,
            comm: Some(format!("t{tid}")),
            kind,
        },
        reasons: Reasons(reason::RECORD),
        since_ns: None,
        implied: None,
        cgroup_id: None,
    }
}

fn start(ts_ns: u64, tid: u32, pid: u32, l: LockMode) -> Decoded {
    record(
        ts_ns,
        tid,
        pid,
        EventKind::MmapLockStart {
            mm: MM,
            mode: l,
            mm_pid: None,
        },
    )
}

/// Unrelated activity: time passes in the stream.
fn tick(ts_ns: u64) -> Decoded {
    record(
        ts_ns,
        999,
        999,
        EventKind::PageFault {
            addr: Addr(0x1000),
            user: true,
            error_code: 6,
            under_lock: false,
        },
    )
}

fn blocked(feed: &LiveFeed) -> Vec<u32> {
    feed.engine().model().blocked.iter().copied().collect()
}

fn names_any(alerts: &[Alert], tid: u32) -> bool {
    alerts.iter().any(|a| a.tids.contains(&tid))
}

#[test]
fn a_wait_that_was_young_when_the_walk_began_is_not_taken_from_the_snapshot() {
    // The walk starts at 100 ms; the wait began at 97 ms, under the 5 ms streaming threshold,
    // so its end may be (and here is) never streamed. Dating the snapshot at the walk's end
    // (110 ms) made it "past the threshold" and left the task blocked forever.
    let dead = Dead::default();
    let mut feed = feed(&dead);
    let snap = [(41, task(41, Some((LockMode::Write, 97 * MS)), &[]))];
    feed.on_snapshot(&snap, &[], 100 * MS, 0);
    assert!(
        blocked(&feed).is_empty(),
        "young wait applied: {:?}",
        blocked(&feed)
    );
}

#[test]
fn a_wait_the_next_snapshot_no_longer_shows_ends_and_raises_no_stall() {
    let dead = Dead::default();
    let mut feed = feed(&dead);
    // A short-lived process's write attempt, past the threshold when the walk began.
    let snap = [(41, task(41, Some((LockMode::Write, 10 * MS)), &[]))];
    feed.on_snapshot(&snap, &[], 100 * MS, 0);
    assert_eq!(blocked(&feed), vec![41]);
    // Its end never reaches the engine (lost, or the task exited before its record was read);
    // the next snapshot, taken after, does not show the wait: it has ended.
    let mut alerts = feed.on_snapshot(&[], &[], 350 * MS, 0);
    assert!(
        blocked(&feed).is_empty(),
        "phantom waiter: {:?}",
        blocked(&feed)
    );
    assert!(
        feed.engine().model().task(41).is_none(),
        "the idle task is reclaimed"
    );
    alerts.extend(feed.on_snapshot(&[], &[], 3_000 * MS, 0));
    assert!(
        !names_any(&alerts, 41),
        "alert for a wait that ended: {alerts:#?}"
    );
}

#[test]
fn a_kernel_entry_that_outlives_its_task_is_not_a_waiter() {
    // Seen under stress-ng: the kernel's per-task entry of a task that is gone still shows a
    // read attempt in flight, snapshot after snapshot. Its task is gone from the host: the wait
    // is not taken, and a task that was taken while it lived is dropped once it is gone.
    let dead = Dead::default();
    let mut feed = feed(&dead);
    let stale = [(81, task(80, Some((LockMode::Read, 10 * MS)), &[]))];
    feed.on_snapshot(&stale, &[], 100 * MS, 0);
    assert_eq!(blocked(&feed), vec![81]);
    dead.kill(81);
    let mut alerts = feed.on_snapshot(&stale, &[], 350 * MS, 0);
    assert!(
        blocked(&feed).is_empty(),
        "phantom waiter: {:?}",
        blocked(&feed)
    );
    alerts.extend(feed.on_snapshot(&stale, &[], 3_000 * MS, 0));
    assert!(
        blocked(&feed).is_empty(),
        "taken again: {:?}",
        blocked(&feed)
    );
    assert!(!names_any(&alerts, 81), "{alerts:#?}");
}

#[test]
fn a_hold_the_snapshot_no_longer_shows_ends() {
    let dead = Dead::default();
    let mut feed = feed(&dead);
    let snap = [(51, task(50, None, &[(LockMode::Read, 10 * MS)]))];
    feed.on_snapshot(&snap, &[], 100 * MS, 0);
    assert!(feed.engine().model().mm_locks[&MM]
        .readers
        .contains_key(&51));
    feed.on_snapshot(&[], &[], 350 * MS, 0);
    assert!(
        !feed.engine().model().mm_locks.contains_key(&MM),
        "a released lock stays in the table"
    );
}

#[test]
fn a_wait_that_began_after_the_snapshot_walk_is_kept() {
    // Streamed after the walk started: the snapshot cannot show it and is no evidence against it.
    let dead = Dead::default();
    let mut feed = feed(&dead);
    feed.on_record(&start(120 * MS, 41, 41, LockMode::Write));
    feed.on_snapshot(&[], &[], 100 * MS, 0);
    assert_eq!(blocked(&feed), vec![41]);
}

#[test]
fn a_stale_snapshot_does_not_resurrect_a_task_whose_exit_was_processed() {
    let dead = Dead::default();
    let mut feed = feed(&dead);
    feed.on_snapshot(&[], &[], 50 * MS, 0);
    // The task exits at 200 ms and its exit record is processed …
    feed.on_record(&record(200 * MS, 41, 41, EventKind::TaskExit {}));
    // … then a snapshot whose walk began before the exit is applied.
    let before_exit = [(41, task(41, Some((LockMode::Write, 10 * MS)), &[]))];
    feed.on_snapshot(&before_exit, &[], 150 * MS, 0);
    assert!(
        feed.engine().model().task(41).is_none(),
        "resurrected by a stale snapshot"
    );
    // A later snapshot cannot show state from before the exit either (the kernel dropped the
    // entry then); such state is not taken.
    feed.on_snapshot(&before_exit, &[], 300 * MS, 0);
    assert!(
        feed.engine().model().task(41).is_none(),
        "state older than the exit taken"
    );
    // An older snapshot than the last applied one is ignored entirely.
    let fresh = [(42, task(42, Some((LockMode::Write, 10 * MS)), &[]))];
    feed.on_snapshot(&fresh, &[], 250 * MS, 0);
    assert!(
        feed.engine().model().task(42).is_none(),
        "out-of-order snapshot applied"
    );
}

#[test]
fn after_mm_reuse_the_convoy_alert_names_the_convoy_and_its_process_only() {
    // Issue 11: pid 31404's write attempt on MM was taken from a snapshot; the process died and
    // its `mm_struct` address was reused by the convoy's process 500. The alert said the convoy's
    // writer was "queued behind writer 31404" on "the mmap_lock of pid 31404".
    let dead = Dead::default();
    let mut feed = feed(&dead);
    let phantom = [(31404, task(31404, Some((LockMode::Write, 100 * MS)), &[]))];
    feed.on_snapshot(&phantom, &[], 1_000 * MS, 0);
    dead.kill(31404);
    // The convoy: 501 reads, 502 queues to write, 503 reads behind it; all long enough to be
    // taken from the next snapshot, which no longer shows 31404.
    let convoy = [
        (501, task(500, None, &[(LockMode::Read, 1_100 * MS)])),
        (502, task(500, Some((LockMode::Write, 1_200 * MS)), &[])),
        (503, task(500, Some((LockMode::Read, 1_300 * MS)), &[])),
    ];
    let mut alerts = feed.on_snapshot(&convoy, &[], 1_400 * MS, 0);
    alerts.extend(feed.on_snapshot(&convoy, &[], 2_500 * MS, 0));
    let model = feed.engine().model();
    assert_eq!(model.mm_locks[&MM].owner_pid, Some(500));
    let graph = feed.engine().graph();
    let edges: Vec<(u32, u32, Reason)> = graph
        .all_edges()
        .map(|e| (e.from, e.to, e.reason))
        .collect();
    assert_eq!(
        edges,
        vec![
            (502, 501, Reason::Holds),
            (503, 502, Reason::QueuedBehindWriter)
        ]
    );
    let rwr: Vec<&Alert> = alerts
        .iter()
        .filter(|a| a.kind == AlertKind::RwrInversion)
        .collect();
    assert_eq!(rwr.len(), 1, "{alerts:#?}");
    assert_eq!(rwr[0].tids, vec![503, 502, 501]);
    assert!(
        rwr[0].summary.contains("pid 500") && !rwr[0].summary.contains("31404"),
        "{}",
        rwr[0].summary
    );
    assert!(!names_any(&alerts, 31404), "{alerts:#?}");
}

#[test]
fn a_process_gone_from_the_host_takes_its_tasks_with_it() {
    // Its exit records were lost: the process's disappearance is the evidence.
    let dead = Dead::default();
    let mut feed = feed(&dead);
    feed.on_record(&start(10 * MS, 61, 60, LockMode::Write));
    feed.on_record(&start(11 * MS, 62, 60, LockMode::Read));
    // Not in the snapshot because it began after the walk; but the process is gone.
    dead.kill(60);
    feed.on_snapshot(&[], &[], 5 * MS, 0);
    let model = feed.engine().model();
    assert!(model.task(61).is_none() && model.task(62).is_none());
    assert!(model.mm_locks.is_empty(), "{:?}", model.mm_locks.keys());
}

#[test]
fn a_reused_mm_address_starts_with_a_clean_lock_table_in_a_replay() {
    // A foreign reader (pid 20) held process 10's mm and its release was lost. Process 10
    // exits; its mm is freed and the address reused by process 30, whose writer then waits.
    // The stale reader must not be named as the new writer's blocker.
    let ev = |ms: u64, tid: u32, pid: u32, kind: EventKind| Event {
        ts_ns: ms * MS,
        tid,
        pid,
        comm: None,
        kind,
    };
    let trace = [
        ev(
            0,
            11,
            10,
            EventKind::MmapLockAcquire {
                mm: MM,
                mode: LockMode::Read,
                success: true,
                mm_pid: None,
            },
        ),
        ev(
            1,
            21,
            20,
            EventKind::MmapLockStart {
                mm: MM,
                mode: LockMode::Read,
                mm_pid: Some(10),
            },
        ),
        ev(
            1,
            21,
            20,
            EventKind::MmapLockAcquire {
                mm: MM,
                mode: LockMode::Read,
                success: true,
                mm_pid: Some(10),
            },
        ),
        ev(
            5,
            11,
            10,
            EventKind::MmapLockRelease {
                mm: MM,
                mode: LockMode::Read,
                mm_pid: None,
            },
        ),
        ev(6, 11, 10, EventKind::TaskExit {}),
        ev(
            100,
            31,
            30,
            EventKind::MmapLockStart {
                mm: MM,
                mode: LockMode::Write,
                mm_pid: None,
            },
        ),
        ev(2_000, 999, 999, EventKind::TaskExit {}),
    ];
    let mut engine = Engine::new(Thresholds::default());
    let mut alerts = Vec::new();
    for e in &trace {
        alerts.extend(engine.apply(e));
    }
    alerts.extend(engine.check());
    assert!(
        engine.graph().out(31).is_empty(),
        "{:?}",
        engine.graph().out(31)
    );
    let stalls: Vec<&Alert> = alerts
        .iter()
        .filter(|a| a.kind == AlertKind::Stall)
        .collect();
    assert_eq!(stalls.len(), 1, "{alerts:#?}");
    assert_eq!(stalls[0].tids, vec![31], "{}", stalls[0].summary);
    assert_eq!(engine.model().mm_locks[&MM].owner_pid, Some(30));
}

/// A writer whose end was lost: its stall alert rests on missing evidence.
fn lost_end_setup(feed: &mut LiveFeed) -> Vec<Alert> {
    let snap = [(71, task(70, Some((LockMode::Write, 10 * MS)), &[]))];
    let mut out = feed.on_snapshot(&snap, &[], 100 * MS, 0);
    // The acquisition record is lost; other records keep time moving past the stall threshold.
    for ms in (200..=1_500).step_by(100) {
        let alerts = feed.on_record(&tick(ms * MS));
        out.extend(feed.vet(alerts, Some(1)));
    }
    out
}

#[test]
fn after_a_loss_an_alert_the_next_snapshot_refutes_is_never_raised() {
    let dead = Dead::default();
    let mut feed = feed(&dead);
    let raised = lost_end_setup(&mut feed);
    assert!(raised.is_empty(), "raised before confirmation: {raised:#?}");
    assert_eq!(feed.lost(), 1);
    assert!(feed.unknown().contains(&71), "{:?}", feed.unknown());
    // The next snapshot: the writer is not waiting any more.
    let after = feed.on_snapshot(&[], &[], 1_600 * MS, 1);
    assert!(after.is_empty(), "false alert after a loss: {after:#?}");
    assert_eq!(feed.suppressed(), 1);
    assert!(feed.unknown().is_empty());
    assert!(blocked(&feed).is_empty());
}

#[test]
fn after_a_loss_an_alert_the_next_snapshot_confirms_is_raised_then() {
    let dead = Dead::default();
    let mut feed = feed(&dead);
    assert!(lost_end_setup(&mut feed).is_empty());
    let still = [(71, task(70, Some((LockMode::Write, 10 * MS)), &[]))];
    let after = feed.on_snapshot(&still, &[], 1_600 * MS, 1);
    let stalls: Vec<&Alert> = after
        .iter()
        .filter(|a| a.kind == AlertKind::Stall)
        .collect();
    assert_eq!(stalls.len(), 1, "{after:#?}");
    assert_eq!(stalls[0].tids, vec![71]);
    assert_eq!(feed.suppressed(), 0);
}

#[test]
fn without_a_loss_alerts_are_raised_at_once() {
    let dead = Dead::default();
    let mut feed = feed(&dead);
    let snap = [(71, task(70, Some((LockMode::Write, 10 * MS)), &[]))];
    feed.on_snapshot(&snap, &[], 100 * MS, 0);
    let mut raised = Vec::new();
    for ms in (200..=1_500).step_by(100) {
        let alerts = feed.on_record(&tick(ms * MS));
        raised.extend(feed.vet(alerts, Some(0)));
    }
    assert!(
        raised
            .iter()
            .any(|a| a.kind == AlertKind::Stall && a.tids == [71]),
        "{raised:#?}"
    );
}

#[test]
fn after_a_lost_release_a_recursive_read_is_refuted_by_a_newer_hold_on_the_same_mm() {
    // Seen in CI under a ring-buffer overflow: a read hold's release record was lost, the same
    // thread's next read request looked recursive, and the next snapshot, which showed a newer
    // read hold on the same mm, confirmed the alert because it matched holds by mm alone.
    let dead = Dead::default();
    let mut feed = feed(&dead);
    let acquire = |ts| {
        record(
            ts,
            81,
            80,
            EventKind::MmapLockAcquire {
                mm: MM,
                mode: LockMode::Read,
                success: true,
                mm_pid: None,
            },
        )
    };
    feed.on_record(&acquire(10 * MS));
    // The release at 11 ms is lost; the next read request, at 20 ms, looks recursive.
    let alerts = feed.on_record(&start(20 * MS, 81, 80, LockMode::Read));
    let held = feed.vet(alerts, Some(1));
    assert!(held.is_empty(), "raised before confirmation: {held:#?}");
    // The kernel shows the hold taken at 20 ms, not the one from 10 ms.
    let now = [(81, task(80, None, &[(LockMode::Read, 20 * MS)]))];
    let after = feed.on_snapshot(&now, &[], 100 * MS, 1);
    assert!(
        after.iter().all(|a| a.kind != AlertKind::RecursiveRead),
        "a recursive read confirmed by a newer hold: {after:#?}"
    );
    assert_eq!(feed.suppressed(), 1);
    let holds = &feed.engine().model().task(81).expect("the task").holds;
    assert_eq!(
        holds.values().map(|h| h.since_ns).collect::<Vec<_>>(),
        vec![20 * MS],
        "the model's hold is the kernel's"
    );
}
