//! The engine on traces: the seeds' deadlock shapes in, the expected alerts out; healthy traces
//! with every tricky semantic raise nothing.

use std::collections::BTreeSet;

use proptest::prelude::*;
use tracer::{
    core::detect::{Alert, AlertKind, Thresholds},
    core::engine::Engine,
    core::event::{Addr, Event, EventKind, LockMode, LockType, UffdOp},
};

const MS: u64 = 1_000_000;
const MM_A: Addr = Addr(0xffff_8881_0000_a000);
const MM_B: Addr = Addr(0xffff_8881_0000_b000);
const MUTEX: Addr = Addr(0xffff_ffff_c000_1000);
const UFFD: Addr = Addr(0xffff_8882_0000_0100);

/// Builds traces: `t.at(ms).on(tid, pid).start(mm, write)`…
struct Trace {
    events: Vec<Event>,
    now: u64,
}

impl Trace {
    fn new() -> Self {
        Self {
            events: Vec::new(),
            now: 0,
        }
    }
    fn at(&mut self, ms: u64) -> &mut Self {
        self.now = ms * MS;
        self
    }
    fn push(&mut self, tid: u32, pid: u32, kind: EventKind) -> &mut Self {
        self.events.push(Event {
            ts_ns: self.now,
            tid,
            pid,
            comm: Some(format!("t{tid}")),
            kind,
        });
        self
    }
    fn start(
        &mut self,
        tid: u32,
        pid: u32,
        mm: Addr,
        mode: LockMode,
        mm_pid: Option<u32>,
    ) -> &mut Self {
        self.push(tid, pid, EventKind::MmapLockStart { mm, mode, mm_pid })
    }
    fn acquire(
        &mut self,
        tid: u32,
        pid: u32,
        mm: Addr,
        mode: LockMode,
        success: bool,
    ) -> &mut Self {
        self.push(
            tid,
            pid,
            EventKind::MmapLockAcquire {
                mm,
                mode,
                success,
                mm_pid: None,
            },
        )
    }
    fn take(&mut self, tid: u32, pid: u32, mm: Addr, mode: LockMode) -> &mut Self {
        self.start(tid, pid, mm, mode, None)
            .acquire(tid, pid, mm, mode, true)
    }
    fn release(&mut self, tid: u32, pid: u32, mm: Addr, mode: LockMode) -> &mut Self {
        self.push(
            tid,
            pid,
            EventKind::MmapLockRelease {
                mm,
                mode,
                mm_pid: None,
            },
        )
    }
    /// An unrelated task doing something: time passes in the trace.
    fn tick(&mut self, ms: u64) -> &mut Self {
        self.at(ms).push(
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
}

fn run(trace: &Trace) -> Vec<Alert> {
    let mut engine = Engine::new(Thresholds::default());
    let mut alerts = Vec::new();
    for ev in &trace.events {
        alerts.extend(engine.apply(ev));
    }
    alerts.extend(engine.check());
    alerts
}

fn of_kind(alerts: &[Alert], kind: AlertKind) -> Vec<&Alert> {
    alerts.iter().filter(|a| a.kind == kind).collect()
}

fn tid_set(a: &Alert) -> BTreeSet<u32> {
    a.tids.iter().copied().collect()
}

use LockMode::{Read, Write};

#[test]
fn the_userfaultfd_seed_four_thread_cross_process_deadlock() {
    // Process 10 and 20: each has a reader holding its own mmap_lock and a writer queued on it;
    // then each reader reads the other's mmap_lock (UFFDIO_COPY from the other's memory).
    let mut t = Trace::new();
    t.at(0).take(11, 10, MM_A, Read).take(21, 20, MM_B, Read);
    t.at(10)
        .start(12, 10, MM_A, Write, None)
        .start(22, 20, MM_B, Write, None);
    t.at(20)
        .start(11, 10, MM_B, Read, Some(20))
        .start(21, 20, MM_A, Read, Some(10));
    t.tick(1500);
    let alerts = run(&t);
    let deadlocks = of_kind(&alerts, AlertKind::Deadlock);
    assert_eq!(deadlocks.len(), 1, "one deadlock: {alerts:#?}");
    let d = deadlocks[0];
    assert_eq!(tid_set(d), BTreeSet::from([11, 12, 21, 22]), "{d:#?}");
    assert!(d.summary.contains("read-write-read"), "{}", d.summary);
    assert!(d.summary.contains("queued behind writer"), "{}", d.summary);
    assert!(
        d.summary.contains("the mmap_lock of pid 20"),
        "{}",
        d.summary
    );
    assert!(
        of_kind(&alerts, AlertKind::Stall).is_empty(),
        "members of a deadlock are reported once, as the deadlock: {alerts:#?}"
    );
}

#[test]
fn the_driver_mutex_seed_closes_a_cycle_through_a_mutex_owner() {
    // T1 owns a driver mutex; T2 faults (mmap_lock read held) and waits for the mutex; T3 queues
    // for write; T1's copy_to_user faults and queues behind T3.
    let mut t = Trace::new();
    t.at(0).take(2, 1, MM_A, Read);
    t.at(1).push(
        2,
        1,
        EventKind::LockWaitBegin {
            lock: MUTEX,
            lock_type: LockType::Mutex,
            owner_tid: Some(1),
            mm: None,
        },
    );
    t.at(5).start(3, 1, MM_A, Write, None);
    t.at(20).start(1, 1, MM_A, Read, None);
    t.tick(1200);
    let alerts = run(&t);
    let d = of_kind(&alerts, AlertKind::Deadlock);
    assert_eq!(d.len(), 1, "{alerts:#?}");
    assert_eq!(tid_set(d[0]), BTreeSet::from([1, 2, 3]));
    assert!(d[0].summary.contains("mutex"), "{}", d[0].summary);
    assert!(d[0].summary.contains("read-write-read"), "{}", d[0].summary);
}

#[test]
fn a_recursive_read_behind_a_queued_writer_is_flagged_then_confirmed_as_deadlock() {
    let mut t = Trace::new();
    t.at(0).take(5, 5, MM_A, Read);
    t.at(10).start(6, 5, MM_A, Write, None);
    t.at(20).start(5, 5, MM_A, Read, None);
    t.tick(1100);
    let alerts = run(&t);
    let rec = of_kind(&alerts, AlertKind::RecursiveRead);
    assert_eq!(rec.len(), 1, "{alerts:#?}");
    assert_eq!(rec[0].tids, vec![5]);
    assert_eq!(
        rec[0].ts_ns,
        20 * MS,
        "raised at the moment of the second read"
    );
    assert!(
        rec[0].summary.contains("already queued"),
        "{}",
        rec[0].summary
    );
    let d = of_kind(&alerts, AlertKind::Deadlock);
    assert_eq!(d.len(), 1, "{alerts:#?}");
    assert_eq!(tid_set(d[0]), BTreeSet::from([5, 6]));
}

#[test]
fn a_long_reader_convoy_that_drains_is_a_stall_and_an_inversion_never_a_deadlock() {
    let mut t = Trace::new();
    t.at(0).take(1, 1, MM_A, Read);
    t.at(100).start(2, 1, MM_A, Write, None);
    t.at(200).start(3, 1, MM_A, Read, None);
    t.tick(1500).tick(2500);
    t.at(3000).release(1, 1, MM_A, Read);
    t.acquire(2, 1, MM_A, Write, true)
        .at(3001)
        .release(2, 1, MM_A, Write);
    t.acquire(3, 1, MM_A, Read, true)
        .at(3002)
        .release(3, 1, MM_A, Read);
    t.tick(5000);
    let alerts = run(&t);
    assert!(
        of_kind(&alerts, AlertKind::Deadlock).is_empty(),
        "{alerts:#?}"
    );
    let inv = of_kind(&alerts, AlertKind::RwrInversion);
    assert_eq!(inv.len(), 1, "{alerts:#?}");
    assert_eq!(inv[0].tids, vec![3, 2, 1], "reader, writer, holder");
    assert!(inv[0].summary.contains("root holder"), "{}", inv[0].summary);
    let stalls = of_kind(&alerts, AlertKind::Stall);
    let stalled: BTreeSet<u32> = stalls.iter().map(|a| a.tids[0]).collect();
    assert_eq!(stalled, BTreeSet::from([2, 3]), "{alerts:#?}");
    let writer_stall = stalls
        .iter()
        .find(|a| a.tids[0] == 2)
        .expect("writer stall");
    assert_eq!(
        writer_stall.tids,
        vec![2, 1],
        "the chain names the root holder"
    );
}

#[test]
fn a_writer_waiting_on_read_holders_nobody_saw_is_never_called_the_root_holder() {
    // The default mode's shape when its read-holder inference finds nothing: a reader queued
    // behind a writer whose own wait has no known holder.
    let mut t = Trace::new();
    t.at(100).start(2, 1, MM_A, Write, None);
    t.at(200).start(3, 1, MM_A, Read, None);
    t.tick(1500);
    let alerts = run(&t);
    let reader = of_kind(&alerts, AlertKind::Stall)
        .into_iter()
        .find(|a| a.tids[0] == 3)
        .unwrap_or_else(|| panic!("no stall for the reader: {alerts:#?}"));
    assert!(
        !reader.summary.contains("root holder")
            && reader
                .summary
                .contains("waits too, on a holder that is not known"),
        "{}",
        reader.summary
    );
}

#[test]
fn healthy_traces_with_every_tricky_semantic_raise_nothing() {
    let mut t = Trace::new();
    // Downgrade: write, then acquire(read) with no start and no write release.
    t.at(0)
        .take(1, 1, MM_A, Write)
        .acquire(1, 1, MM_A, Read, true);
    t.at(1).release(1, 1, MM_A, Read);
    // Failed trylock and killable attempts.
    t.at(2).take(2, 1, MM_A, Write);
    t.start(3, 1, MM_A, Read, None)
        .acquire(3, 1, MM_A, Read, false);
    t.at(3).release(2, 1, MM_A, Write);
    // A release by a non-owner (irq-context trylock holder) and one of a pre-trace hold.
    t.at(4).take(4, 1, MM_B, Read);
    t.push(
        77,
        77,
        EventKind::MmapLockRelease {
            mm: MM_B,
            mode: Read,
            mm_pid: Some(1),
        },
    );
    t.release(5, 1, MM_A, Read);
    // Another process's mm (process_vm_readv).
    t.at(5).start(8, 8, MM_A, Read, Some(1));
    t.push(
        8,
        8,
        EventKind::MmapLockAcquire {
            mm: MM_A,
            mode: Read,
            success: true,
            mm_pid: Some(1),
        },
    );
    t.at(6).push(
        8,
        8,
        EventKind::MmapLockRelease {
            mm: MM_A,
            mode: Read,
            mm_pid: Some(1),
        },
    );
    // A task exits while we believe it holds a lock; a writer then gets it.
    t.at(7)
        .take(9, 1, MM_A, Read)
        .push(9, 1, EventKind::TaskExit {});
    t.at(8).take(10, 1, MM_A, Write).release(10, 1, MM_A, Write);
    // A uffd fault served promptly.
    t.at(9).push(
        12,
        2,
        EventKind::UffdIoctlBegin {
            uffd: UFFD,
            op: UffdOp::Register,
        },
    );
    t.push(
        11,
        1,
        EventKind::UffdWaitBegin {
            uffd: UFFD,
            addr: Addr(0x7000),
        },
    );
    t.at(10).push(
        12,
        2,
        EventKind::UffdIoctlBegin {
            uffd: UFFD,
            op: UffdOp::Copy,
        },
    );
    t.push(11, 1, EventKind::UffdWaitEnd { uffd: UFFD });
    // The rwsem slow path reports its own contention inside an mmap_lock attempt.
    t.at(11)
        .take(13, 1, MM_B, Read)
        .start(14, 1, MM_B, Write, None);
    t.push(
        14,
        1,
        EventKind::LockWaitBegin {
            lock: Addr(0xb8),
            lock_type: LockType::RwsemWrite,
            owner_tid: None,
            mm: None,
        },
    );
    t.at(12).release(13, 1, MM_B, Read);
    t.push(
        14,
        1,
        EventKind::LockWaitEnd {
            lock: Addr(0xb8),
            ret: 0,
            mm: None,
        },
    );
    t.acquire(14, 1, MM_B, Write, true)
        .release(14, 1, MM_B, Write);
    t.tick(5000);
    let alerts = run(&t);
    assert!(alerts.is_empty(), "a healthy trace raised: {alerts:#?}");
}

#[test]
fn a_lost_release_does_not_make_a_deadlock() {
    let mut t = Trace::new();
    t.at(0).take(1, 1, MM_A, Read); // its release is lost
    t.at(5).take(1, 1, MM_B, Read).release(1, 1, MM_B, Read); // task 1 keeps running
    t.at(10).start(2, 1, MM_A, Write, None);
    t.at(20).start(3, 1, MM_A, Read, None);
    t.at(30)
        .acquire(2, 1, MM_A, Write, true)
        .release(2, 1, MM_A, Write);
    t.acquire(3, 1, MM_A, Read, true).release(3, 1, MM_A, Read);
    // Task 1 reads MM_A again: not recursive, the write acquisition proved its hold gone.
    t.at(40).take(1, 1, MM_A, Read).release(1, 1, MM_A, Read);
    t.tick(3000);
    let alerts = run(&t);
    assert!(alerts.is_empty(), "{alerts:#?}");
}

#[test]
fn a_uffd_fault_with_a_silent_monitor_names_the_handler() {
    let mut t = Trace::new();
    t.at(0).push(
        31,
        30,
        EventKind::UffdIoctlBegin {
            uffd: UFFD,
            op: UffdOp::Api,
        },
    );
    t.push(
        31,
        30,
        EventKind::UffdIoctlEnd {
            uffd: UFFD,
            op: UffdOp::Api,
            ret: 0,
        },
    );
    t.at(1).push(
        40,
        40,
        EventKind::UffdWaitBegin {
            uffd: UFFD,
            addr: Addr(0x7f00_0000),
        },
    );
    t.tick(1500);
    let alerts = run(&t);
    let s = of_kind(&alerts, AlertKind::UffdStall);
    assert_eq!(s.len(), 1, "{alerts:#?}");
    assert_eq!(s[0].tids, vec![40, 31]);
    assert!(
        s[0].summary.contains("31 (t31, pid 30)"),
        "{}",
        s[0].summary
    );
}

#[test]
fn a_uffd_fault_whose_setup_went_unseen_names_the_processes_holding_it() {
    // The agent's ioctl hooks attached after the setup: only its scan of open files knows
    // who holds the context, and that is what the alert names (as holders, not setup).
    let mut t = Trace::new();
    t.at(0).push(30, 30, EventKind::UffdHeld { uffd: UFFD });
    t.at(1).push(
        40,
        40,
        EventKind::UffdWaitBegin {
            uffd: UFFD,
            addr: Addr(0x7f00_0000),
        },
    );
    t.tick(1500);
    let alerts = run(&t);
    let s = of_kind(&alerts, AlertKind::UffdStall);
    assert_eq!(s.len(), 1, "{alerts:#?}");
    assert_eq!(s[0].tids, vec![40, 30]);
    assert!(
        s[0].summary
            .contains("no ioctl on it was seen; it is held open by 30 ("),
        "{}",
        s[0].summary
    );
}

// --- property tests ---------------------------------------------------------------------------

fn arb_event() -> impl Strategy<Value = (u64, u32, EventKind)> {
    let mm = prop_oneof![Just(MM_A), Just(MM_B)];
    let mode = prop_oneof![Just(Read), Just(Write)];
    let tid = 1u32..6;
    let kind = prop_oneof![
        (mm.clone(), mode.clone()).prop_map(|(mm, mode)| EventKind::MmapLockStart {
            mm,
            mode,
            mm_pid: None
        }),
        (mm.clone(), mode.clone(), any::<bool>()).prop_map(|(mm, mode, success)| {
            EventKind::MmapLockAcquire {
                mm,
                mode,
                success,
                mm_pid: None,
            }
        }),
        (mm, mode).prop_map(|(mm, mode)| EventKind::MmapLockRelease {
            mm,
            mode,
            mm_pid: None
        }),
        (tid.clone()).prop_map(|o| EventKind::LockWaitBegin {
            lock: MUTEX,
            lock_type: LockType::Mutex,
            owner_tid: Some(o),
            mm: None,
        }),
        Just(EventKind::LockWaitEnd {
            lock: MUTEX,
            ret: 0,
            mm: None,
        }),
        Just(EventKind::UffdWaitBegin {
            uffd: UFFD,
            addr: Addr(0x1000)
        }),
        Just(EventKind::UffdIoctlBegin {
            uffd: UFFD,
            op: UffdOp::Copy
        }),
        Just(EventKind::UffdHeld { uffd: UFFD }),
        Just(EventKind::TaskExit {}),
    ];
    (0u64..400, tid, kind)
}

/// The test's own oracle for "these tasks are one deadlock", independent of the detector's
/// cycle search (Tarjan's SCCs in `core/src/graph.rs`): from the graph's plain (from, to)
/// pairs, the transitive closure by Warshall's algorithm; a deadlock is a set of at least two
/// tasks that all reach one another and that no other task both reaches and is reached from
/// (a whole strongly connected component, not a piece of one).
fn is_whole_cycle(edges: &[(u32, u32)], set: &BTreeSet<u32>) -> Result<(), String> {
    let nodes: Vec<u32> = edges
        .iter()
        .flat_map(|&(a, b)| [a, b])
        .chain(set.iter().copied())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let at = |t: u32| nodes.iter().position(|&n| n == t).unwrap_or(usize::MAX);
    let n = nodes.len();
    let mut reach = vec![vec![false; n]; n];
    for &(a, b) in edges {
        reach[at(a)][at(b)] = true;
    }
    for k in 0..n {
        for i in 0..n {
            for j in 0..n {
                if reach[i][k] && reach[k][j] {
                    reach[i][j] = true;
                }
            }
        }
    }
    if set.len() < 2 {
        return Err(format!("{set:?}: a deadlock needs two tasks"));
    }
    for &a in set {
        for &b in set {
            if a != b && !reach[at(a)][at(b)] {
                return Err(format!("{set:?}: {a} does not reach {b} over {edges:?}"));
            }
        }
    }
    let first = at(*set.iter().next().unwrap_or(&0));
    for (i, &t) in nodes.iter().enumerate() {
        if !set.contains(&t) && reach[first][i] && reach[i][first] {
            return Err(format!(
                "{set:?}: {t} is in the same cycle but not in the alert"
            ));
        }
    }
    Ok(())
}

fn edge_pairs(engine: &Engine) -> Vec<(u32, u32)> {
    engine.graph().all_edges().map(|e| (e.from, e.to)).collect()
}

#[test]
fn the_cycle_oracle_tells_whole_cycles_from_pieces_and_chains() {
    // The oracle itself, on graphs whose answer is known by hand.
    let edges = [(1, 2), (2, 3), (3, 1), (4, 1), (5, 6)];
    assert!(is_whole_cycle(&edges, &[1, 2, 3].into()).is_ok());
    assert!(is_whole_cycle(&edges, &[1, 2].into()).is_err(), "a piece");
    assert!(
        is_whole_cycle(&edges, &[1, 2, 3, 4].into()).is_err(),
        "4 only waits"
    );
    assert!(is_whole_cycle(&edges, &[5, 6].into()).is_err(), "a chain");
}

/// A functional waits-for graph: task `i + 1` waits for a mutex owned by `owners[i]` (or runs
/// when `None`). Each task waits for one owner, so its deadlocks are exactly the loops found by
/// following owners, which the test computes itself.
fn arb_owners() -> impl Strategy<Value = Vec<Option<u32>>> {
    (2usize..9)
        .prop_flat_map(|n| prop::collection::vec(prop::option::weighted(0.8, 1..=n as u32), n))
}

fn expected_loops(owners: &[Option<u32>]) -> BTreeSet<BTreeSet<u32>> {
    let next = |t: u32| -> Option<u32> {
        owners
            .get(t as usize - 1)
            .copied()
            .flatten()
            .filter(|&o| o != t)
    };
    let mut loops = BTreeSet::new();
    for start in 1..=owners.len() as u32 {
        // Walk at most n steps; a task met twice closes a loop, which holds `start` only when
        // the walk comes back to it.
        let mut path = vec![start];
        let mut cur = start;
        while let Some(o) = next(cur) {
            if o == start {
                loops.insert(path.iter().copied().collect());
                break;
            }
            if path.contains(&o) {
                break;
            }
            path.push(o);
            cur = o;
        }
    }
    loops
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn random_traces_never_panic_and_every_deadlock_is_a_real_cycle(
        steps in prop::collection::vec(arb_event(), 1..120)
    ) {
        let mut engine = Engine::new(Thresholds::default());
        let mut ts = 0;
        for (dt_ms, tid, kind) in steps {
            ts += dt_ms * MS;
            let ev = Event { ts_ns: ts, tid, pid: 1, comm: None, kind };
            // The timed detectors judge the graph as it stood until this event (a snapshot's,
            // after its corrections: as it stands once the snapshot is applied).
            let before = edge_pairs(&engine);
            let snapshot = matches!(ev.kind, EventKind::Snapshot {});
            let alerts = engine.apply(&ev);
            let edges = if snapshot { edge_pairs(&engine) } else { before };
            for a in alerts.iter().filter(|a| a.kind == AlertKind::Deadlock) {
                let verdict = is_whole_cycle(&edges, &tid_set(a));
                prop_assert!(verdict.is_ok(), "deadlock {:?}: {:?}", a, verdict);
            }
        }
        let alerts = engine.check();
        let edges = edge_pairs(&engine);
        for a in alerts.iter().filter(|a| a.kind == AlertKind::Deadlock) {
            let verdict = is_whole_cycle(&edges, &tid_set(a));
            prop_assert!(verdict.is_ok(), "deadlock {:?}: {:?}", a, verdict);
        }
    }

    #[test]
    fn mutex_waits_alert_exactly_the_loops_of_who_waits_for_whom(owners in arb_owners()) {
        let mut t = Trace::new();
        t.at(0);
        for (i, owner) in owners.iter().enumerate() {
            let Some(owner) = owner.filter(|&o| o != i as u32 + 1) else { continue };
            // One mutex per owner: the owner holds it, the waiter sleeps on it.
            t.push(
                i as u32 + 1,
                100,
                EventKind::LockWaitBegin {
                    lock: Addr(MUTEX.0 + u64::from(owner) * 0x40),
                    lock_type: LockType::Mutex,
                    owner_tid: Some(owner),
                    mm: None,
                },
            );
        }
        // Past the deadlock confirmation (1 s by default).
        t.tick(1500);
        let alerts = run(&t);
        let got: BTreeSet<BTreeSet<u32>> =
            of_kind(&alerts, AlertKind::Deadlock).into_iter().map(tid_set).collect();
        let want = expected_loops(&owners);
        prop_assert_eq!(&got, &want, "owners {:?}: {:#?}", owners, alerts);
        // Each loop is alerted once.
        prop_assert_eq!(of_kind(&alerts, AlertKind::Deadlock).len(), want.len());
    }
}
