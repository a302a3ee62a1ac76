//! The live feed against synthetic snapshots and records.

use super::*;
use crate::core::detect::AlertKind;
use crate::core::event::LockMode;
use crate::core::model::HoldSeen;
use crate::kernel::decode::Reasons;
use tracer_common::{lock_type, mode, reason, Hold, TaskState, HOLD_SLOTS};

const MS: u64 = 1_000_000;

fn state(tgid: u32, wait: Option<(u64, u8, u64)>, holds: &[(u64, u8, u64)]) -> TaskState {
    let mut st = TaskState {
        tgid,
        ..Default::default()
    };
    if let Some((mm, m, since)) = wait {
        st.wait_mm = mm;
        st.wait_mode = m;
        st.wait_since_ns = since;
    }
    for (i, (mm, m, since)) in holds.iter().enumerate().take(HOLD_SLOTS) {
        st.holds[i] = Hold {
            mm: *mm,
            since_ns: *since,
            mode: *m,
            depth: 1,
            ..Default::default()
        };
    }
    st
}

#[test]
fn a_snapshot_of_a_convoy_in_progress_builds_its_graph() {
    let mut feed =
        LiveFeed::new(Thresholds::default(), MS, 20 * MS).with_liveness(Box::new(|_| true));
    let snap = [
        (11, state(10, None, &[(0xa, mode::READ, 0)])),
        (12, state(10, Some((0xa, mode::WRITE, 100 * MS)), &[])),
        (13, state(10, Some((0xa, mode::READ, 200 * MS)), &[])),
        // Too young to have been streamed: left out, its end will not be streamed either.
        (14, state(10, Some((0xa, mode::READ, 1_499_900_000)), &[])),
    ];
    let alerts = feed.on_snapshot(&snap, &[], 1_500 * MS, 0);
    let graph = feed.engine().graph();
    let edges: Vec<(u32, u32)> = graph.all_edges().map(|e| (e.from, e.to)).collect();
    assert_eq!(edges, vec![(12, 11), (13, 12)]);
    let kinds: Vec<&str> = alerts.iter().map(|a| a.kind.as_str()).collect();
    assert_eq!(
        kinds,
        vec!["stall", "rwr_inversion", "stall"],
        "by tid: {alerts:#?}"
    );
}

fn feed() -> LiveFeed {
    LiveFeed::new(Thresholds::default(), MS, 20 * MS).with_liveness(Box::new(|t| t != 9999))
}

#[test]
fn a_record_older_than_a_lossy_walk_makes_its_task_unknown_until_the_next_snapshot() {
    let mut feed = feed();
    let snap = [(12, state(10, Some((0xa, mode::WRITE, 100 * MS)), &[]))];
    feed.on_snapshot(&snap, &[], 1_000 * MS, 0);
    // 5 records lost before this walk: the walk covers every task, so it confirms them...
    feed.on_snapshot(&snap, &[], 2_000 * MS, 5);
    assert_eq!(feed.lost(), 5);
    assert!(feed.unknown().is_empty());
    // ...but a record from before the walk, still in the ring buffer, says what the walk did
    // not see, beside records that may be the lost ones: its task is unknown again.
    let record = |ts_ns: u64| Decoded {
        event: Event {
            ts_ns,
            tid: 12,
            pid: 10,
            comm: None,
            kind: EventKind::PageFault {
                addr: Addr(0x1000),
                user: true,
                error_code: 0,
                under_lock: false,
            },
        },
        reasons: Reasons(0),
        since_ns: None,
        implied: None,
        cgroup_id: None,
    };
    feed.on_record(&record(1_900 * MS));
    assert_eq!(feed.unknown().iter().copied().collect::<Vec<_>>(), vec![12]);
    // A record after the walk is fresh evidence, as any record of the task's own.
    feed.on_record(&record(2_100 * MS));
    assert!(feed.unknown().is_empty());
    feed.on_record(&record(1_950 * MS));
    assert_eq!(feed.unknown().len(), 1);
    // The next snapshot, with no new loss, confirms it; older records no longer mark anyone.
    feed.on_snapshot(&snap, &[], 3_000 * MS, 5);
    assert!(feed.unknown().is_empty());
    feed.on_record(&record(2_500 * MS));
    assert!(feed.unknown().is_empty());
}

#[test]
fn a_snapshot_gives_the_writer_in_a_waiters_owner_word_a_write_hold_until_none_names_it() {
    let mut feed = feed();
    let mut waiter = state(10, Some((0xa, mode::READ, 100 * MS)), &[]);
    waiter.lock = 0xa70;
    waiter.lock_since_ns = 100 * MS;
    waiter.lock_type = lock_type::RWSEM_READ;
    waiter.lock_owner = 11;
    let alerts = feed.on_snapshot(&[(12, waiter)], &[], 1_500 * MS, 0);
    let model = feed.engine().model();
    let hold = model
        .task(11)
        .and_then(|t| t.holds.get(&Addr(0xa)).copied());
    assert_eq!(
        hold.map(|h| (h.mode, h.seen)),
        Some((LockMode::Write, HoldSeen::OwnerWord))
    );
    let graph = feed.engine().graph();
    assert_eq!(
        graph.out(12).iter().map(|e| e.to).collect::<Vec<_>>(),
        vec![11]
    );
    assert!(alerts
        .iter()
        .any(|a| a.kind == AlertKind::Stall && a.summary.contains("held for write by 11")));
    // The reader hint is not a writer: no hold from it.
    let mut hinted = waiter;
    hinted.lock_owner_reader = 1;
    hinted.lock_owner = 13;
    feed.on_snapshot(&[(12, hinted)], &[], 2_000 * MS, 0);
    let model = feed.engine().model();
    assert!(model.task(13).is_none_or(|t| t.holds.is_empty()));
    // No waiter names 11 any more: its hold has ended.
    assert!(model.task(11).is_none_or(|t| t.holds.is_empty()));
}

#[test]
fn the_kernels_handler_table_restores_a_handler_whose_record_was_lost() {
    let mut feed = feed();
    let me = std::process::id();
    let (alerts, gone) = feed.on_uffd_handlers(
        &[
            (0xc0, me, tracer_common::handler_role::RESOLVER),
            (0xc0, 9999, tracer_common::handler_role::SETUP),
        ],
        10 * MS,
    );
    assert!(alerts.is_empty());
    assert_eq!(
        gone,
        vec![(0xc0, 9999)],
        "a gone task's entry is to be deleted"
    );
    let model = feed.engine().model();
    let ctx = model.uffds.get(&Addr(0xc0)).expect("the context is known");
    assert!(ctx.resolvers.contains(&me));
    assert_eq!(model.task(me).map(|t| t.pid), Some(me));
    // Known now: a second snapshot of the same table applies nothing.
    let events = feed.engine().events();
    feed.on_uffd_handlers(
        &[(0xc0, me, tracer_common::handler_role::RESOLVER)],
        20 * MS,
    );
    assert_eq!(feed.engine().events(), events);
}

#[test]
fn a_streamed_slow_acquisition_implies_its_start() {
    let mut feed =
        LiveFeed::new(Thresholds::default(), MS, 20 * MS).with_liveness(Box::new(|_| true));
    let d = Decoded {
        event: Event {
            ts_ns: 50 * MS,
            tid: 5,
            pid: 5,
            comm: None,
            kind: EventKind::MmapLockAcquire {
                mm: Addr(0xa),
                mode: LockMode::Write,
                success: true,
                mm_pid: None,
            },
        },
        reasons: Reasons(reason::SLOW_WAIT),
        since_ns: Some(10 * MS),
        implied: Some(Event {
            ts_ns: 10 * MS,
            tid: 5,
            pid: 5,
            comm: None,
            kind: EventKind::MmapLockStart {
                mm: Addr(0xa),
                mode: LockMode::Write,
                mm_pid: None,
            },
        }),
        cgroup_id: None,
    };
    feed.on_record(&d);
    assert_eq!(
        feed.engine().events(),
        2,
        "the implied start, then the acquisition"
    );
    let hold = feed
        .engine()
        .model()
        .task(5)
        .and_then(|t| t.holds.get(&Addr(0xa)).copied());
    assert_eq!(hold.map(|h| h.mode), Some(LockMode::Write));
}

#[test]
fn a_waiter_on_another_process_mm_leaves_that_mm_its_owners() {
    let mut feed = feed();
    // Process 20 (tids 5, 6) reads process 10's /proc/PID/cmdline behind 10's writer (tid 12):
    // met first (lower tids), it must not make 0xa process 20's.
    let foreign = |tid_wait: u64| {
        let mut st = state(20, Some((0xa, mode::READ, tid_wait)), &[]);
        st.wait_mm_tgid = 10;
        st
    };
    let snap = [
        (5, foreign(200 * MS)),
        (6, foreign(210 * MS)),
        (11, state(10, None, &[(0xa, mode::READ, 0)])),
        (12, state(10, Some((0xa, mode::WRITE, 100 * MS)), &[])),
    ];
    feed.on_snapshot(&snap, &[], 1_500 * MS, 0);
    let owner = feed
        .engine()
        .model()
        .mm_locks
        .get(&Addr(0xa))
        .and_then(|l| l.owner_pid);
    assert_eq!(
        owner,
        Some(10),
        "the mm of the process whose threads own it"
    );
    // A waiter on its own mm says so with MM_OWN (0): the default of the state above.
    assert_eq!(state(10, None, &[]).wait_mm_tgid, tracer_common::MM_OWN);
}
