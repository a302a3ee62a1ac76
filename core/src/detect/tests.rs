use crate::{
    engine::Engine,
    event::{Addr, Event, EventKind, LockType},
    exposure::{AddrKey, AddrKind, Exposure},
};

/// Stall alerts of a task waiting on a mutex and of one waiting on a userfaultfd, raised
/// under `exposure`, as JSON.
fn stalls(exposure: Exposure, lock: Addr, uffd: Addr) -> Vec<serde_json::Value> {
    let mut e = Engine::new(Default::default());
    e.set_exposure(exposure);
    let ev = |ts, tid, kind| Event {
        ts_ns: ts,
        tid,
        pid: tid,
        comm: None,
        kind,
    };
    let mut alerts = e.apply(&ev(
        0,
        3,
        EventKind::LockWaitBegin {
            lock,
            lock_type: LockType::Mutex,
            owner_tid: Some(1),
            mm: None,
        },
    ));
    alerts.extend(e.apply(&ev(
        1,
        4,
        EventKind::UffdWaitBegin {
            uffd,
            addr: Addr(0x7f12_3456_7000),
        },
    )));
    alerts.extend(e.apply(&ev(5_000_000_000, 0, EventKind::Snapshot {})));
    alerts
        .iter()
        .map(|a| serde_json::to_value(a).expect("JSON"))
        .collect()
}

#[test]
fn alerts_name_locks_by_the_ids_the_graph_uses() {
    let (lock, uffd) = (Addr(0xffff_8880_2222_0040), Addr(0xffff_8880_3333_0080));
    let ex = Exposure::Opaque(AddrKey::new([4; 16]));
    let (lock_id, uffd_id) = (
        ex.show(AddrKind::Lock, lock).to_string(),
        ex.show(AddrKind::Uffd, uffd).to_string(),
    );
    let opaque = stalls(ex, lock, uffd);
    assert_eq!(opaque.len(), 2, "{opaque:#?}");
    let text = serde_json::to_string(&opaque).expect("JSON");
    assert!(!text.contains("0x"), "{text}");
    assert!(
        text.contains(&format!("mutex {lock_id} owned by")),
        "{text}"
    );
    assert!(
        text.contains("userfaultfd fault at addr-") && text.contains(&format!("on {uffd_id};")),
        "{text}"
    );
    let locks: Vec<&serde_json::Value> = opaque.iter().map(|a| &a["locks"][0]).collect();
    assert!(
        locks.iter().any(|l| l["lock"] == lock_id.as_str()),
        "{text}"
    );
    assert!(
        locks.iter().any(|l| l["uffd"] == uffd_id.as_str()),
        "{text}"
    );

    let raw = serde_json::to_string(&stalls(Exposure::Raw, lock, uffd)).expect("JSON");
    assert!(raw.contains("mutex 0xffff888022220040"), "{raw}");
}

mod user_locks {
    use crate::{
        detect::{AlertKind, Confidence},
        engine::Engine,
        event::{Addr, Event, EventKind, FutexOp, FutexOutcome, UserLockKind, UserLockOwner},
        graph::Reason,
    };

    const A: Addr = Addr(0x5555_0000_1000);
    const B: Addr = Addr(0x5555_0000_2000);

    fn ev(ms: u64, tid: u32, kind: EventKind) -> Event {
        Event {
            ts_ns: ms * 1_000_000,
            tid,
            pid: 100,
            comm: None,
            kind,
        }
    }

    fn sleeps(futex: Addr, lock: UserLockKind, owner: Option<(u32, bool)>) -> EventKind {
        EventKind::FutexWaitBegin {
            futex,
            op: FutexOp::Wait,
            lock,
            lock_addr: None,
            owner: owner.map(|(tid, exact)| UserLockOwner {
                tid,
                exact,
                evidence: "read".into(),
            }),
            name: Some(format!("M{:x}", futex.0 & 0xffff)),
        }
    }

    fn deadlocks(e: &mut Engine, events: &[Event]) -> Vec<crate::detect::Alert> {
        let mut alerts = Vec::new();
        for x in events {
            alerts.extend(e.apply(x));
        }
        alerts.extend(e.apply(&ev(5_000, 0, EventKind::Snapshot {})));
        alerts
            .into_iter()
            .filter(|a| a.kind == AlertKind::Deadlock)
            .collect()
    }

    #[test]
    fn an_abba_through_glibc_owners_is_a_probable_deadlock_with_what_was_read() {
        let mut e = Engine::new(Default::default());
        let found = deadlocks(
            &mut e,
            &[
                ev(
                    1,
                    11,
                    sleeps(B, UserLockKind::PthreadMutex, Some((12, false))),
                ),
                ev(
                    2,
                    12,
                    sleeps(A, UserLockKind::PthreadMutex, Some((11, false))),
                ),
            ],
        );
        assert_eq!(found.len(), 1, "{found:#?}");
        assert_eq!(found[0].confidence, Confidence::Probable);
        assert!(found[0].summary.contains("M1000") && found[0].summary.contains("M2000"));
        assert!(
            found[0]
                .evidence
                .iter()
                .any(|s| s.contains("inferred to own")),
            "{:?}",
            found[0].evidence
        );
    }

    /// 11 and 12 each took their first lock through the kernel (woken by 10's unlock), then
    /// asked for the other's: every owner is named by its word and was seen taking the lock.
    fn handed_then_crossed(handed: [Option<u32>; 2], ask_after_ms: u64) -> Vec<Event> {
        let woken = |futex, waker| EventKind::FutexWaitEnd {
            futex,
            outcome: FutexOutcome::Woken,
            waker_tid: waker,
        };
        let mut events = vec![
            ev(
                1,
                11,
                sleeps(A, UserLockKind::PthreadMutex, Some((10, false))),
            ),
            ev(
                1,
                12,
                sleeps(B, UserLockKind::PthreadMutex, Some((10, false))),
            ),
        ];
        if let Some(w) = handed[0] {
            events.push(ev(2, 11, woken(A, Some(w))));
        }
        if let Some(w) = handed[1] {
            events.push(ev(2, 12, woken(B, Some(w))));
        }
        events.extend([
            ev(
                ask_after_ms,
                11,
                sleeps(B, UserLockKind::PthreadMutex, Some((12, false))),
            ),
            ev(
                ask_after_ms,
                12,
                sleeps(A, UserLockKind::PthreadMutex, Some((11, false))),
            ),
        ]);
        events
    }

    #[test]
    fn an_abba_whose_owners_were_seen_taking_their_locks_is_certain() {
        let mut e = Engine::new(Default::default());
        let found = deadlocks(&mut e, &handed_then_crossed([Some(10), Some(10)], 3));
        assert_eq!(found.len(), 1, "{found:#?}");
        assert_eq!(found[0].confidence, Confidence::Certain, "{found:#?}");
        assert!(found[0].evidence.is_empty(), "{:?}", found[0].evidence);
        assert!(
            found[0].summary.contains("seen taking it"),
            "{}",
            found[0].summary
        );
        let g = e.graph();
        assert!(g
            .all_edges()
            .all(|x| x.reason == Reason::UserLockOwnerConfirmed));
    }

    #[test]
    fn one_owner_seen_only_from_the_waiters_end_keeps_the_cycle_probable() {
        let mut e = Engine::new(Default::default());
        let found = deadlocks(&mut e, &handed_then_crossed([Some(10), None], 3));
        assert_eq!(found.len(), 1, "{found:#?}");
        assert_eq!(found[0].confidence, Confidence::Probable);
        assert_eq!(found[0].evidence.len(), 1, "{:?}", found[0].evidence);
        assert!(
            found[0].evidence[0].starts_with("12 ")
                && found[0].evidence[0].contains("is inferred to own"),
            "{:?}",
            found[0].evidence
        );
    }

    #[test]
    fn a_take_is_undone_by_waking_a_waiter_of_the_lock_or_asking_for_it() {
        // 11 took A, then woke a waiter of A (13): it let A go, and 13 took it.
        let mut e = Engine::new(Default::default());
        let mut events = handed_then_crossed([Some(10), Some(10)], 3);
        events.insert(
            4,
            ev(
                2,
                13,
                sleeps(A, UserLockKind::PthreadMutex, Some((11, false))),
            ),
        );
        events.insert(
            5,
            ev(
                2,
                13,
                EventKind::FutexWaitEnd {
                    futex: A,
                    outcome: FutexOutcome::Woken,
                    waker_tid: Some(11),
                },
            ),
        );
        for x in &events {
            e.apply(x);
        }
        assert!(!e.model().seen_taking_user_lock(11, 100, A, u64::MAX));
        assert!(e.model().seen_taking_user_lock(13, 100, A, u64::MAX));
        assert!(e.model().seen_taking_user_lock(12, 100, B, u64::MAX));
        // 12 asks for B again: it no longer holds it.
        e.apply(&ev(
            4,
            12,
            sleeps(B, UserLockKind::PthreadMutex, Some((11, false))),
        ));
        assert!(!e.model().seen_taking_user_lock(12, 100, B, u64::MAX));
        // A take after the waiter read the word corroborates nothing.
        let mut e = Engine::new(Default::default());
        for x in &handed_then_crossed([Some(10), Some(10)], 3) {
            e.apply(x);
        }
        assert!(!e.model().seen_taking_user_lock(11, 100, A, 1));
        // A wait that timed out took nothing.
        let mut e = Engine::new(Default::default());
        e.apply(&ev(
            1,
            11,
            sleeps(A, UserLockKind::PthreadMutex, Some((10, false))),
        ));
        e.apply(&ev(
            2,
            11,
            EventKind::FutexWaitEnd {
                futex: A,
                outcome: FutexOutcome::Timeout,
                waker_tid: None,
            },
        ));
        assert!(!e.model().seen_taking_user_lock(11, 100, A, u64::MAX));
    }

    /// The mixed chain, closed: 40 queues to write an mm whose lock 30 holds for read;
    /// 30 waits for a pthread mutex 50 owns; 50 faulted on a userfaultfd 60 serves; 60 faults on
    /// the same mm and queues for read behind writer 40. One cycle through three kinds of lock.
    #[test]
    fn a_cycle_through_mmap_lock_a_pthread_mutex_and_a_userfaultfd_is_one_deadlock() {
        use crate::event::{LockMode, UffdOp};
        const MM: Addr = Addr(0xffff_8880_0000_7000);
        const UFFD: Addr = Addr(0xffff_8880_0000_8000);
        let mm = |mode| EventKind::MmapLockStart {
            mm: MM,
            mode,
            mm_pid: Some(100),
        };
        let mut e = Engine::new(Default::default());
        let found = deadlocks(
            &mut e,
            &[
                ev(
                    1,
                    30,
                    EventKind::MmapLockAcquire {
                        mm: MM,
                        mode: LockMode::Read,
                        success: true,
                        mm_pid: Some(100),
                    },
                ),
                ev(2, 40, mm(LockMode::Write)),
                ev(
                    3,
                    30,
                    sleeps(A, UserLockKind::PthreadMutex, Some((50, false))),
                ),
                ev(
                    4,
                    60,
                    EventKind::UffdIoctlBegin {
                        uffd: UFFD,
                        op: UffdOp::Copy,
                    },
                ),
                ev(
                    4,
                    60,
                    EventKind::UffdIoctlEnd {
                        uffd: UFFD,
                        op: UffdOp::Copy,
                        ret: 0,
                    },
                ),
                ev(
                    5,
                    50,
                    EventKind::UffdWaitBegin {
                        uffd: UFFD,
                        addr: Addr(0x7f00_0000_0000),
                    },
                ),
                ev(6, 60, mm(LockMode::Read)),
            ],
        );
        assert_eq!(found.len(), 1, "{found:#?}");
        let a = &found[0];
        let mut tids = a.tids.clone();
        tids.sort_unstable();
        assert_eq!(tids, vec![30, 40, 50, 60], "{a:#?}");
        for part in ["mmap_lock", "pthread_mutex", "userfaultfd"] {
            assert!(a.summary.contains(part), "{part}: {}", a.summary);
        }
        // The mutex's owner is inferred: the cycle is probable, and says so.
        assert_eq!(a.confidence, Confidence::Probable);
        assert!(
            a.evidence
                .iter()
                .any(|s| s.contains("50 ") && s.contains("inferred to own")),
            "{:?}",
            a.evidence
        );
    }

    #[test]
    fn a_cycle_of_pi_owners_is_certain_and_an_ended_wait_breaks_it() {
        let mut e = Engine::new(Default::default());
        let found = deadlocks(
            &mut e,
            &[
                ev(1, 11, sleeps(B, UserLockKind::PiMutex, Some((12, true)))),
                ev(2, 12, sleeps(A, UserLockKind::PiMutex, Some((11, true)))),
            ],
        );
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].confidence, Confidence::Certain, "{found:#?}");
        let mut e = Engine::new(Default::default());
        let found = deadlocks(
            &mut e,
            &[
                ev(1, 11, sleeps(B, UserLockKind::PiMutex, Some((12, true)))),
                ev(2, 12, sleeps(A, UserLockKind::PiMutex, Some((11, true)))),
                ev(
                    3,
                    12,
                    EventKind::FutexWaitEnd {
                        futex: A,
                        outcome: FutexOutcome::Timeout,
                        waker_tid: None,
                    },
                ),
            ],
        );
        assert!(found.is_empty(), "{found:#?}");
    }

    #[test]
    fn words_without_owners_never_block_or_close_a_cycle() {
        let mut e = Engine::new(Default::default());
        let found = deadlocks(
            &mut e,
            &[
                ev(1, 11, sleeps(B, UserLockKind::Futex, None)),
                ev(
                    2,
                    12,
                    sleeps(A, UserLockKind::PthreadMutex, Some((11, false))),
                ),
            ],
        );
        assert!(found.is_empty());
        assert!(
            e.model().blocked(11).is_none(),
            "a condvar sleeper is not blocked"
        );
        assert!(e.graph().all_edges().all(|x| x.to != 12));
    }

    #[test]
    fn a_reader_held_back_by_writer_preference_waits_for_the_queued_writer() {
        let mut e = Engine::new(Default::default());
        let rw = |futex: Addr, kind| EventKind::FutexWaitBegin {
            futex,
            op: FutexOp::Wait,
            lock: kind,
            lock_addr: Some(A),
            owner: None,
            name: None,
        };
        e.apply(&ev(
            1,
            21,
            rw(Addr(A.0 + 8), UserLockKind::PthreadRwlockWrite),
        ));
        e.apply(&ev(2, 22, rw(A, UserLockKind::PthreadRwlockRead)));
        let g = e.graph();
        let edges: Vec<_> = g.out(22).iter().map(|x| (x.to, x.reason)).collect();
        assert_eq!(edges, vec![(21, Reason::QueuedBehindWriter)]);
        assert!(g.out(21).is_empty(), "glibc records no readers: no edge");
    }
}
