//! The analysis on fixtures: the shapes `faultline diagnose` names, built by hand from the facts
//! the real workloads show (tracer/tests/diagnose.rs runs those workloads), and one snapshot
//! kept as JSON.
//!
//! (Over 500 lines: one fixture per shape, each short; splitting by shape would scatter the
//! builders they share.)

use super::*;
use crate::{
    diagnosis::snapshot::{
        AgentFacts, AgentHold, AgentUffd, MmapWaiterFacts, Syscall, UffdFd, UffdWaiterFacts,
    },
    event::Addr,
};

fn task(tid: u32, pid: u32, comm: &str, state: char) -> TaskFacts {
    TaskFacts {
        tid,
        pid,
        comm: comm.into(),
        state,
        off_cpu_ms: Some(5_000.0),
        ..Default::default()
    }
}

fn in_syscall(mut t: TaskFacts, name: &str, fd: Option<u32>) -> TaskFacts {
    t.syscall = Some(Syscall {
        name: name.into(),
        fd,
        epoll_targets: Vec::new(),
    });
    t
}

fn mutex(tid: u32, lock: u64, owner: u32) -> BlockerFacts {
    BlockerFacts {
        tid,
        kind: BlockerKind::Mutex,
        lock: Addr(lock),
        owner: Some(owner),
        readers: 0,
    }
}

fn uffd(ctx: u64, mm_pid: u32, fds: &[(u32, u32)], waiters: &[(u32, bool)]) -> UffdFacts {
    UffdFacts {
        ctx: Addr(ctx),
        mm_pid,
        fds: fds.iter().map(|&(pid, fd)| UffdFd { pid, fd }).collect(),
        waiters: waiters
            .iter()
            .map(|&(tid, message_read)| UffdWaiterFacts { tid, message_read })
            .collect(),
    }
}

fn all() -> Filter {
    Filter::default()
}

fn get(d: &Diagnosis, tid: u32) -> &DiagTask {
    d.tasks
        .iter()
        .find(|t| t.tid == tid)
        .unwrap_or_else(|| panic!("task {tid} not reported: {:#?}", d.tasks))
}

fn named(t: &DiagTask) -> Vec<u32> {
    match &t.wait {
        Wait::Uffd { candidates, .. } => candidates
            .iter()
            .filter(|c| c.named)
            .map(|c| c.tid)
            .collect(),
        other => panic!("not a userfaultfd wait: {other:?}"),
    }
}

/// The rwr convoy: 101 holds pid 100's mmap_lock for read (running), writer 102 queues, then
/// reader 103 queues behind the writer.
fn rwr() -> Snapshot {
    Snapshot {
        tasks: vec![
            task(100, 100, "rwr", 'S'),
            task(101, 100, "rwr-hold", 'R'),
            task(102, 100, "rwr-writer", 'D'),
            task(103, 100, "rwr-reader", 'D'),
        ],
        mmap_locks: vec![MmapLockFacts {
            mm: Addr(0x1000),
            mm_pid: 100,
            readers: 1,
            writer: None,
            waiters: vec![
                MmapWaiterFacts {
                    tid: 102,
                    write: true,
                },
                MmapWaiterFacts {
                    tid: 103,
                    write: false,
                },
            ],
        }],
        ..Default::default()
    }
}

#[test]
fn the_rwr_chain_puts_the_reader_behind_the_writer_behind_the_read_holder() {
    let d = analyse(&rwr(), &all());
    let reader = get(&d, 103);
    assert_eq!(reader.blocked_on, vec![102], "behind the queued writer");
    assert_eq!(reader.blocked_on_sources[0].source, Source::Kernel);
    let writer = get(&d, 102);
    assert!(matches!(
        writer.wait,
        Wait::MmapLock {
            mode: "write",
            queue_position: 0,
            readers: 1,
            ..
        }
    ));
    assert_eq!(
        writer.blocked_on,
        vec![101],
        "the running thread is the guess"
    );
    assert_eq!(writer.blocked_on_sources[0].source, Source::Heuristic);
    assert!(d.cycles.is_empty());
    let text = d.to_text();
    assert!(text.contains("read-write-read"), "{text}");
    assert!(
        text.contains("101 (rwr-hold, pid 100) R [guess from /proc]: not blocked (root holder)"),
        "{text}"
    );

    // With an agent, its holders replace the guess.
    let mut snap = rwr();
    snap.agent = Some(AgentFacts {
        addr: "127.0.0.1:9".into(),
        holders: [(
            102,
            vec![AgentHold {
                tid: 101,
                source: Source::AgentInferred,
            }],
        )]
        .into(),
        uffds: Vec::new(),
    });
    let d = analyse(&snap, &all());
    assert_eq!(
        get(&d, 102).blocked_on_sources[0].source,
        Source::AgentInferred
    );
    assert!(d.to_text().contains("from the agent at 127.0.0.1:9"));
}

#[test]
fn a_sleeping_thread_in_a_read_holding_function_is_guessed_as_a_holder() {
    let mut snap = rwr();
    snap.tasks[1].state = 'S';
    snap.tasks.push(TaskFacts {
        stack: vec!["__get_user_pages".into(), "madvise_populate".into()],
        ..task(200, 200, "other", 'S')
    });
    let d = analyse(&snap, &all());
    assert_eq!(get(&d, 102).blocked_on, vec![200]);
}

/// uffd-chain: 201 write()s from a registered page nobody answers (holding the file's
/// f_pos_lock 0xf00), 202 blocks on that lock, monitor process 300 holds the userfaultfd and
/// sleeps; nobody has read the message.
fn uffd_chain() -> Snapshot {
    Snapshot {
        tasks: vec![
            in_syscall(task(200, 200, "chain", 'S'), "clock_nanosleep", None),
            in_syscall(task(201, 200, "chain", 'S'), "write", Some(4)),
            in_syscall(task(202, 200, "chain", 'D'), "write", Some(5)),
            in_syscall(task(300, 300, "monitor", 'S'), "clock_nanosleep", None),
        ],
        blockers: vec![mutex(202, 0xf00, 201)],
        uffds: vec![uffd(0xc0, 200, &[(200, 3), (300, 3)], &[(201, false)])],
        ..Default::default()
    }
}

#[test]
fn a_mutex_waiter_behind_a_userfaultfd_waiter_is_a_two_hop_chain_to_the_monitor() {
    let d = analyse(&uffd_chain(), &all());
    let w = get(&d, 202);
    assert!(matches!(
        w.wait,
        Wait::Mutex {
            owner: Some(201),
            ..
        }
    ));
    assert_eq!(w.blocked_on, vec![201]);
    let h = get(&d, 201);
    assert_eq!(
        h.blocked_on.first(),
        Some(&300),
        "the other process first: {h:#?}"
    );
    assert!(
        !h.blocked_on.contains(&202),
        "a blocked thread cannot read a pending message"
    );
    assert!(d.cycles.is_empty(), "a chain, not a cycle: {:?}", d.cycles);
    let text = d.to_text();
    assert!(
        text.contains("waits for mutex") && text.contains("root holder"),
        "{text}"
    );
}

#[test]
fn a_silent_monitor_is_named_as_the_handler_holding_the_userfaultfd() {
    let snap = Snapshot {
        tasks: vec![
            task(201, 200, "chain", 'S'),
            in_syscall(task(300, 300, "monitor", 'S'), "clock_nanosleep", None),
        ],
        uffds: vec![uffd(0xc0, 200, &[(200, 3), (300, 3)], &[(201, false)])],
        ..Default::default()
    };
    let d = analyse(&snap, &all());
    let h = get(&d, 201);
    assert_eq!(h.blocked_on, vec![300]);
    assert_eq!(h.blocked_on_sources[0].source, Source::Evidence);
    let Wait::Uffd {
        holders,
        candidates,
        mm_pid,
        ..
    } = &h.wait
    else {
        panic!("{h:#?}")
    };
    assert_eq!((holders.clone(), *mm_pid), (vec![200, 300], 200));
    assert_eq!(candidates[0].evidence.len(), 1, "only holds it open");
    let text = d.to_text();
    assert!(
        text.contains("300 (monitor, pid 300) S [handler: holds it open (fd 3 of pid 300); idle in clock_nanosleep]: not blocked (root holder)"),
        "{text}"
    );
}

#[test]
fn a_lock_owner_that_is_not_blocked_is_the_root_holder() {
    let snap = Snapshot {
        tasks: vec![task(401, 400, "waiter", 'D'), task(402, 400, "owner", 'R')],
        blockers: vec![mutex(401, 0xa00, 402)],
        ..Default::default()
    };
    let d = analyse(&snap, &all());
    assert_eq!(get(&d, 401).blocked_on, vec![402]);
    assert_eq!(d.others.get(&402), Some(&(400, "owner".to_owned(), 'R')));
    assert!(d
        .to_text()
        .contains("-> 402 (owner, pid 400) R: not blocked (root holder)"));
    assert!(d
        .to_dot()
        .contains("t402 [label=\"402\\nowner (pid 400)\\nroot holder\"]"));
}

/// The deadlock of issue 11, as gathered from `faultline-scenario uffd-monitor-deadlock`.
fn monitor_deadlock() -> Snapshot {
    serde_json::from_str(include_str!(
        "../../../tests/fixtures/diagnose/uffd-monitor-deadlock.json"
    ))
    .expect("the fixture parses")
}

#[test]
fn a_monitor_blocked_behind_the_fault_it_read_is_a_probable_deadlock_not_the_idle_watchdog() {
    let d = analyse(&monitor_deadlock(), &all());
    let faulter = get(&d, 11983);
    assert_eq!(
        faulter.blocked_on,
        vec![11982],
        "the monitor, not the watchdog"
    );
    assert_eq!(named(faulter), vec![11982]);
    let Wait::Uffd {
        candidates,
        message_read,
        ..
    } = &faulter.wait
    else {
        unreachable!()
    };
    assert!(*message_read);
    let watchdog = candidates
        .iter()
        .find(|c| c.tid == 11984)
        .expect("the watchdog is a candidate");
    assert!(!watchdog.named);
    assert_eq!(
        watchdog.describe(),
        "holds it open (fd 3 of pid 11981); idle in clock_nanosleep"
    );
    assert_eq!(d.cycles.len(), 1, "{:#?}", d.cycles);
    let c = &d.cycles[0];
    assert_eq!(c.tids, vec![11982, 11983]);
    assert_eq!(c.confidence, Confidence::Probable);
    assert!(
        c.evidence.iter().any(|e| e.contains("owned by 11983")),
        "the kernel edge: {:?}",
        c.evidence
    );
    assert!(
        c.evidence.iter().any(|e| e.contains("a handler read and has not answered")
            && e.contains("handler 11982 (md-monitor, pid 11981): holds it open (fd 3 of pid 11981); blocked itself")
            && e.contains("not named: ")
            && e.contains("11984 (md-watchdog, pid 11981) (holds it open (fd 3 of pid 11981); idle in clock_nanosleep)")),
        "the handler edge: {:?}",
        c.evidence
    );
    let json = serde_json::to_value(&d).expect("JSON");
    assert_eq!(json["cycles"][0]["confidence"], "probable");
    assert_eq!(json["cycles"][0]["tids"], serde_json::json!([11982, 11983]));
    let text = d.to_text();
    assert!(
        text.contains(
            "PROBABLE DEADLOCK: 11982 (md-monitor, pid 11981) -> 11983 (md-faulter, pid 11981)"
        ),
        "{text}"
    );
    assert!(text.contains("  evidence: "), "{text}");
    assert!(!text.contains("root holder"), "{text}");
    let dot = d.to_dot();
    assert!(
        dot.contains("t11983 -> t11982 [style=dashed, color=red, label=\"probable\"];"),
        "{dot}"
    );
    assert!(dot.contains("fillcolor=\"#ffc090\""), "{dot}");
}

#[test]
fn with_the_message_still_pending_the_idle_watchdog_could_read_it_and_no_cycle_is_claimed() {
    let mut snap = monitor_deadlock();
    for w in snap.uffds.iter_mut().flat_map(|u| u.waiters.iter_mut()) {
        w.message_read = false;
    }
    let d = analyse(&snap, &all());
    assert!(d.cycles.is_empty(), "{:#?}", d.cycles);
    let named = named(get(&d, 11983));
    assert!(
        named.contains(&11984) && !named.contains(&11982),
        "{named:?}"
    );
}

#[test]
fn a_thread_reading_the_userfaultfd_now_is_the_handler_and_there_is_no_cycle() {
    let mut snap = monitor_deadlock();
    snap.tasks.push(in_syscall(
        task(11990, 11981, "md-reader", 'S'),
        "read",
        Some(3),
    ));
    let d = analyse(&snap, &all());
    assert_eq!(get(&d, 11983).blocked_on, vec![11990]);
    assert!(d.cycles.is_empty());
}

#[test]
fn with_the_agent_the_thread_that_set_the_userfaultfd_up_closes_the_cycle() {
    // uffd-deadlock: the handler set the userfaultfd up and never read it; it blocks on the
    // f_pos_lock the holder keeps; a rescuer sleeps.
    let mut snap = Snapshot {
        tasks: vec![
            in_syscall(task(601, 600, "dl-handler", 'D'), "write", Some(5)),
            in_syscall(task(602, 600, "dl-holder", 'S'), "write", Some(4)),
            in_syscall(task(603, 600, "dl-rescuer", 'S'), "clock_nanosleep", None),
        ],
        blockers: vec![mutex(601, 0xf00, 602)],
        uffds: vec![uffd(0xc0, 600, &[(600, 3)], &[(602, false)])],
        ..Default::default()
    };
    let d = analyse(&snap, &all());
    assert_eq!(
        get(&d, 602).blocked_on,
        vec![603],
        "without the agent: the free thread"
    );
    assert!(d.cycles.is_empty());

    snap.agent = Some(AgentFacts {
        addr: "127.0.0.1:9".into(),
        uffds: vec![AgentUffd {
            uffd: Addr(0xc0),
            resolvers: Vec::new(),
            setup: vec![601],
        }],
        ..Default::default()
    });
    let d = analyse(&snap, &all());
    assert_eq!(get(&d, 602).blocked_on, vec![601]);
    assert_eq!(d.cycles.len(), 1);
    assert_eq!(d.cycles[0].confidence, Confidence::Probable);
    assert!(
        d.cycles[0]
            .evidence
            .iter()
            .any(|e| e.contains("set it up (agent)")),
        "{:?}",
        d.cycles[0].evidence
    );
}

#[test]
fn one_named_handler_outside_the_chain_may_still_answer_so_there_is_no_cycle() {
    // Both threads are busy after the message was read; only 702 is blocked behind the faulter.
    let snap = Snapshot {
        tasks: vec![
            task(701, 700, "faulter", 'S'),
            task(702, 700, "busy-in-chain", 'D'),
            in_syscall(task(703, 700, "busy-elsewhere", 'S'), "write", Some(9)),
        ],
        blockers: vec![mutex(702, 0xf00, 701)],
        uffds: vec![uffd(0xc0, 700, &[(700, 3)], &[(701, true)])],
        ..Default::default()
    };
    let d = analyse(&snap, &all());
    assert_eq!(get(&d, 701).blocked_on, vec![702, 703]);
    assert!(d.cycles.is_empty(), "{:#?}", d.cycles);
}

#[test]
fn a_cycle_of_kernel_lock_owners_is_certain() {
    let snap = Snapshot {
        tasks: vec![task(801, 800, "a", 'D'), task(802, 800, "b", 'D')],
        blockers: vec![mutex(801, 0xa00, 802), mutex(802, 0xb00, 801)],
        ..Default::default()
    };
    let d = analyse(&snap, &all());
    assert_eq!(d.cycles.len(), 1);
    assert_eq!(d.cycles[0].confidence, Confidence::Certain);
    assert_eq!(d.cycles[0].evidence.len(), 2);
    let text = d.to_text();
    assert!(
        text.contains("\nDEADLOCK: 801 (a, pid 800) -> 802 (b, pid 800)"),
        "{text}"
    );
    assert!(!text.contains("evidence:"), "{text}");
}

#[test]
fn an_old_kernel_with_only_proc_facts_lists_the_sleepers_without_edges() {
    // 6.1: no task.blocker, so no blocker records; only /proc says a task is in D.
    let snap: Snapshot = serde_json::from_str(
        r#"{"tasks":[{"tid":5,"pid":5,"comm":"stuck","state":"D","wchan":"fdget_pos",
            "stack":["fdget_pos","ksys_write"]},{"tid":6,"pid":6,"comm":"idle","state":"S"}]}"#,
    )
    .expect("a minimal snapshot parses");
    let d = analyse(&snap, &all());
    assert_eq!(d.tasks.len(), 1);
    assert!(matches!(&d.tasks[0].wait, Wait::Other { wchan } if wchan == "fdget_pos"));
    assert!(d.tasks[0].blocked_on.is_empty());
    assert!(d.to_text().contains("sleeps in fdget_pos"));
}

#[test]
fn the_filters_keep_long_enough_chains_of_the_asked_process() {
    let mut snap = uffd_chain();
    snap.tasks.push(task(900, 900, "elsewhere", 'D'));
    let d = analyse(
        &snap,
        &Filter {
            pid: Some(200),
            min_blocked: Duration::ZERO,
        },
    );
    assert!(d.tasks.iter().all(|t| t.pid == 200), "{:#?}", d.tasks);
    let d = analyse(
        &snap,
        &Filter {
            pid: None,
            min_blocked: Duration::from_secs(60),
        },
    );
    assert!(d.tasks.is_empty(), "all were off CPU 5 s only");
}

#[test]
fn a_waiter_queued_into_a_probable_cycle_reads_as_a_tree_that_comes_back_probable() {
    // A forked child sharing the open file: it queues on the same f_pos_lock but does not hold
    // the userfaultfd.
    let mut snap = monitor_deadlock();
    snap.tasks.push(task(12000, 12000, "md-child", 'D'));
    let lock = snap.blockers[0].lock.0;
    snap.blockers.push(mutex(12000, lock, 11983));
    let d = analyse(&snap, &all());
    assert_eq!(d.cycles.len(), 1);
    assert_eq!(
        d.cycles[0].tids,
        vec![11982, 11983],
        "the child waits, outside it"
    );
    let text = d.to_text();
    assert!(
        text.contains("\n12000 (md-child, pid 12000) D, waits for mutex"),
        "{text}"
    );
    assert!(
        text.contains("[handler: holds it open (fd 3 of pid 11981); blocked itself]"),
        "{text}"
    );
    assert!(
        text.contains("-> 11983 (md-faulter, pid 11981): back in the cycle (probable deadlock)"),
        "{text}"
    );
}

#[test]
fn every_thread_holding_the_userfaultfd_and_blocked_behind_the_fault_may_have_read_it() {
    // Another thread of the process queues on the same f_pos_lock: it holds the descriptor too,
    // and nothing without an agent tells which of the two read the message. Both are named;
    // both wait for the faulter, so the deadlock stands, with both in it.
    let mut snap = monitor_deadlock();
    snap.tasks.push(task(11990, 11981, "md-writer", 'D'));
    let lock = snap.blockers[0].lock.0;
    snap.blockers.push(mutex(11990, lock, 11983));
    let d = analyse(&snap, &all());
    assert_eq!(named(get(&d, 11983)), vec![11982, 11990]);
    assert_eq!(d.cycles.len(), 1);
    assert_eq!(d.cycles[0].tids, vec![11982, 11983, 11990]);
    assert_eq!(d.cycles[0].confidence, Confidence::Probable);
}
