//! faultline against the real kernel: programs load, real workloads are seen as they happened.
//! Run single-threaded (they share the kernel's tracepoints): the README's test command does.

mod common;

use std::time::Duration;

use common::{
    assert_fails_without_privileges, http_get, require_root, scenario, u64_at, u64s, Faultline,
    Recording,
};
use tracer::{
    core::event::{Addr, Event, EventKind, LockMode},
    kernel::probes::{
        kernel::{tracefs_root, KernelBtf},
        AttachMode, Attached, Coverage, Detail, ProbeOptions, Probes,
    },
};

/// Whether the running kernel offers what each optional feature hooks, asked of the kernel
/// itself (its BTF for `tp_btf` hooks, tracefs for classic tracepoints), not of faultline.
fn kernel_offers(btf: &KernelBtf, feature: Coverage) -> bool {
    let tp_btf = |names: &[&str]| {
        names
            .iter()
            .all(|n| btf.has_type(&format!("btf_trace_{n}")))
    };
    let tracefs = |events: &[&str]| {
        tracefs_root().is_ok_and(|root| {
            events
                .iter()
                .all(|e| root.join("events/syscalls").join(e).is_dir())
        })
    };
    match feature {
        Coverage::LockContention => tp_btf(&["contention_begin", "contention_end"]),
        Coverage::PageFaults => tp_btf(&["page_fault_kernel"]),
        Coverage::PerFaultCounts => tp_btf(&["page_fault_user"]),
        Coverage::UffdWaits => tp_btf(&["sched_switch", "sched_waking"]),
        Coverage::UffdIoctls => {
            tracefs(&["sys_enter_ioctl", "sys_exit_ioctl", "sys_exit_userfaultfd"])
        }
    }
}

#[test]
fn every_program_passes_the_verifier_in_both_attach_modes() {
    if !require_root("every_program_passes_the_verifier_in_both_attach_modes") {
        return;
    }
    let btf = KernelBtf::load().expect("kernel tests need the running kernel's BTF");
    for detail in [Detail::Contention, Detail::Holders, Detail::Full] {
        for (mode, expect) in [
            (AttachMode::Btf, Attached::Btf),
            (AttachMode::Tracepoint, Attached::Tracepoint),
        ] {
            let probes = Probes::load(&ProbeOptions {
                attach: mode,
                detail,
                ..Default::default()
            })
            .unwrap_or_else(|e| panic!("loading {detail} in {mode:?} mode: {e}"));
            assert_eq!(probes.attached(), expect);
            assert_eq!(
                probes.detail(),
                detail,
                "no fallback to a heavier mode here"
            );
            // Every optional feature the mode asks for is reported (user-fault counters only
            // in full mode, as `--detail` documents), and each is attached exactly when the
            // kernel offers its hooks.
            let mut wanted = vec![
                Coverage::LockContention,
                Coverage::PageFaults,
                Coverage::UffdWaits,
                Coverage::UffdIoctls,
            ];
            if detail == Detail::Full {
                wanted.push(Coverage::PerFaultCounts);
            }
            let reported: Vec<Coverage> = probes.features().iter().map(|(f, _)| *f).collect();
            for f in &wanted {
                assert!(
                    reported.contains(f),
                    "{detail}: {} not reported: {:?}",
                    f.name(),
                    probes.features()
                );
            }
            assert_eq!(
                reported.len(),
                wanted.len(),
                "{detail}: a feature reported twice or one the mode does not ask for: {:?}",
                probes.features()
            );
            for (feature, result) in probes.features() {
                assert_eq!(
                    result.is_ok(),
                    kernel_offers(&btf, *feature),
                    "{detail} {mode:?}: {} is {result:?}, but the kernel {} its hooks",
                    feature.name(),
                    if kernel_offers(&btf, *feature) {
                        "has"
                    } else {
                        "lacks"
                    }
                );
            }
        }
    }
    // That `program_names()` covers every program of the object is checked against the
    // object itself by the unit test `every_shared_map_and_program_name_is_in_the_object`.
}

#[test]
fn btf_gives_the_struct_offsets_the_programs_need() {
    let btf = KernelBtf::load().expect("this kernel has BTF");
    let off = btf.offsets();
    assert!(off.task_mm > 0, "task_struct.mm offset: {off:?}");
    assert!(off.task_tgid > 0, "task_struct.tgid offset: {off:?}");
    assert!(
        off.mm_owner > 0,
        "mm_struct.owner offset (CONFIG_MEMCG): {off:?}"
    );
    assert!(btf.has_type("btf_trace_mmap_lock_acquire_returned"));
}

/// (mm, mode, success) of an mmap_lock event.
fn lock_fields(e: &Event) -> Option<(Addr, LockMode)> {
    match &e.kind {
        EventKind::MmapLockStart { mm, mode, .. }
        | EventKind::MmapLockAcquire { mm, mode, .. }
        | EventKind::MmapLockRelease { mm, mode, .. } => Some((*mm, *mode)),
        _ => None,
    }
}

fn is_acquire(e: &Event, tid: u32, mode: LockMode) -> bool {
    e.tid == tid
        && matches!(e.kind, EventKind::MmapLockAcquire { success: true, mode: m, .. } if m == mode)
}

fn is_start(e: &Event, tid: u32, mode: LockMode) -> bool {
    e.tid == tid && matches!(e.kind, EventKind::MmapLockStart { mode: m, .. } if m == mode)
}

#[test]
fn record_sees_a_read_write_read_convoy_as_it_happened() {
    if !require_root("record_sees_a_read_write_read_convoy_as_it_happened") {
        return;
    }
    // In the 6.1 TCG guest the recording twice showed the late reader getting the lock before
    // the writer while the holder held throughout: no convoy formed, though the scenario
    // thought so. Not established why; likely the writer had not queued yet (6.1's writer may
    // spin on a reader-owned lock before it queues, and a reader's fast path gets in then).
    // Such a run is run again, three times at most; the recording is what tells.
    let mut last = String::new();
    for attempt in 1..=3 {
        match record_convoy_once() {
            Ok(()) => return,
            Err(e) => {
                eprintln!("attempt {attempt}: {e}");
                last = e;
            }
        }
    }
    panic!("no convoy formed in 3 attempts; the last: {last}");
}

/// One run of the convoy under `record`: panics on a recording that contradicts the kernel's
/// rules; `Err` when the reader got the lock before the writer while the holder held
/// throughout (the writer had not queued yet: no convoy formed).
fn record_convoy_once() -> Result<(), String> {
    let rec = Recording::start(&[]);
    let report = scenario(&["rwr"]);
    let events = rec.finish();
    assert_eq!(
        report["convoy"], true,
        "the workload did not form a convoy: {report}"
    );

    let pid = u64_at(&report, &["pid"]) as u32;
    let (holder, writer, reader) = (
        u64_at(&report, &["holder", "tid"]) as u32,
        u64_at(&report, &["writer", "tid"]) as u32,
        u64_at(&report, &["reader", "tid"]) as u32,
    );
    let ours: Vec<&Event> = events.iter().filter(|e| e.pid == pid).collect();
    assert!(!ours.is_empty(), "no events recorded for pid {pid}");

    // The writer's mprotect: its attempt and its acquisition.
    let w_start = ours
        .iter()
        .find(|e| {
            is_start(e, writer, LockMode::Write)
                && e.ts_ns >= u64_at(&report, &["writer", "start_ns"])
        })
        .unwrap_or_else(|| panic!("no write attempt by writer {writer}"));
    let (mm, _) = lock_fields(w_start).expect("mmap_lock event");
    let w_acq = ours
        .iter()
        .find(|e| is_acquire(e, writer, LockMode::Write) && e.ts_ns >= w_start.ts_ns)
        .expect("the writer's acquisition");

    // Who held the lock when the writer asked: replay acquisitions and releases up to then.
    let mut readers: Vec<u32> = Vec::new();
    for e in ours.iter().filter(|e| e.ts_ns <= w_start.ts_ns) {
        match &e.kind {
            EventKind::MmapLockAcquire {
                mm: m,
                success: true,
                mode: LockMode::Read,
                ..
            } if *m == mm => readers.push(e.tid),
            EventKind::MmapLockRelease {
                mm: m,
                mode: LockMode::Read,
                ..
            } if *m == mm => {
                if let Some(i) = readers.iter().position(|&t| t == e.tid) {
                    readers.remove(i);
                }
            }
            _ => {}
        }
    }
    assert!(
        readers.contains(&holder),
        "the holder {holder} should hold mmap_lock for read when the writer asks; holders seen: {readers:?}"
    );
    let hold_end = ours
        .iter()
        .find(|e| {
            e.tid == holder
                && e.ts_ns >= w_start.ts_ns
                && matches!(&e.kind, EventKind::MmapLockRelease { mm: m, mode: LockMode::Read, .. } if *m == mm)
        })
        .expect("the holder's release after the writer asked")
        .ts_ns;

    let write_wait = w_acq.ts_ns - w_start.ts_ns;
    let hold_left = hold_end - w_start.ts_ns;
    assert!(
        hold_left > 10_000_000,
        "hold after the writer asked is only {hold_left} ns"
    );
    assert!(
        w_acq.ts_ns >= hold_end && write_wait * 10 >= hold_left * 9,
        "the writer should wait out the read hold: waited {write_wait} ns, hold left {hold_left} ns"
    );

    // The late reader asked after the writer queued and got the lock only after the writer.
    let r_start = ours
        .iter()
        .find(|e| is_start(e, reader, LockMode::Read) && e.ts_ns > w_start.ts_ns)
        .unwrap_or_else(|| panic!("no read attempt by reader {reader} after the writer queued"));
    let r_acq = ours
        .iter()
        .find(|e| is_acquire(e, reader, LockMode::Read) && e.ts_ns >= r_start.ts_ns)
        .expect("the reader's acquisition");
    assert_eq!(
        lock_fields(r_start).map(|f| f.0),
        Some(mm),
        "reader and writer on one mm"
    );
    if r_acq.ts_ns < w_acq.ts_ns {
        // The one way a later reader may pass a queued writer: the holder let go in between
        // (a populate that retries a fault drops mmap_lock and takes it again), and on the
        // release the kernel lets a reader steal the lock before the woken writer runs (6.1's
        // reader optimistic lock stealing). The recording must show that release; a reader
        // that passed a writer while the holder held throughout fails here.
        let holder_let_go = ours.iter().any(|e| {
            e.tid == holder
                && e.ts_ns > w_start.ts_ns
                && e.ts_ns <= r_acq.ts_ns
                && matches!(&e.kind, EventKind::MmapLockRelease { mm: m, mode: LockMode::Read, .. } if *m == mm)
        });
        if !holder_let_go {
            return Err(format!(
            "the reader got the lock before the writer: reader acquired at {}, writer at {}, and the holder {holder} held throughout (its events after the writer asked: {:?})",
            r_acq.ts_ns,
            w_acq.ts_ns,
            ours.iter()
                .filter(|e| e.tid == holder && e.ts_ns > w_start.ts_ns && e.ts_ns <= w_acq.ts_ns)
                .map(|e| (e.ts_ns, e.kind.name()))
                .take(20)
                .collect::<Vec<_>>()
            ));
        }
        eprintln!(
            "the holder released mmap_lock after the writer asked and the reader stole it before the writer ran (kernel reader lock stealing)"
        );
    } else {
        assert!(
            r_acq.ts_ns - r_start.ts_ns >= (w_acq.ts_ns - r_start.ts_ns) * 9 / 10,
            "the reader's wait should cover the writer's remaining wait"
        );
    }
    Ok(())
}

#[test]
fn mprotect_loop_gives_exact_write_acquisitions_for_its_tid_and_pid() {
    if !require_root("mprotect_loop_gives_exact_write_acquisitions_for_its_tid_and_pid") {
        return;
    }
    let rec = Recording::start(&[]);
    let recorder = rec.pid();
    let report = scenario(&["mprotect-loop", "--count", "2000"]);
    let events = rec.finish();
    assert!(
        !events.iter().any(|e| e.pid == recorder),
        "the recorder's own events are filtered in the kernel"
    );
    let (pid, tid) = (
        u64_at(&report, &["pid"]) as u32,
        u64_at(&report, &["tid"]) as u32,
    );
    let (from, to) = (u64_at(&report, &["start_ns"]), u64_at(&report, &["end_ns"]));
    let writes: Vec<&Event> = events
        .iter()
        .filter(|e| e.ts_ns >= from && e.ts_ns <= to && is_acquire(e, tid, LockMode::Write))
        .collect();
    assert!(
        writes.len() >= 2000,
        "2000 mprotect calls gave {} write acquisitions",
        writes.len()
    );
    assert!(
        writes.iter().all(|e| e.pid == pid),
        "attributed to pid {pid}"
    );
    let mms: std::collections::HashSet<_> = writes
        .iter()
        .filter_map(|e| lock_fields(e))
        .map(|f| f.0)
        .collect();
    assert_eq!(mms.len(), 1, "all on the process's own mm: {mms:?}");
    let releases = events
        .iter()
        .filter(|e| e.tid == tid && e.ts_ns >= from && e.ts_ns <= to)
        .filter(|e| {
            matches!(
                e.kind,
                EventKind::MmapLockRelease {
                    mode: LockMode::Write,
                    mm_pid: None,
                    ..
                }
            )
        })
        .count();
    assert!(
        releases >= 2000,
        "each write acquisition is released: {releases}"
    );
}

#[test]
fn the_classic_tracepoint_fallback_sees_the_same_acquisitions() {
    if !require_root("the_classic_tracepoint_fallback_sees_the_same_acquisitions") {
        return;
    }
    let rec = Recording::start(&["--attach", "tracepoint"]);
    let report = scenario(&["mprotect-loop", "--count", "500"]);
    let events = rec.finish();
    let tid = u64_at(&report, &["tid"]) as u32;
    let (from, to) = (u64_at(&report, &["start_ns"]), u64_at(&report, &["end_ns"]));
    let mine = |pred: fn(&Event) -> bool| {
        events
            .iter()
            .filter(|e| e.tid == tid && e.ts_ns >= from && e.ts_ns <= to && pred(e))
            .count()
    };
    let starts = mine(|e| {
        matches!(
            e.kind,
            EventKind::MmapLockStart {
                mode: LockMode::Write,
                ..
            }
        )
    });
    let acquires = mine(|e| {
        matches!(
            e.kind,
            EventKind::MmapLockAcquire {
                mode: LockMode::Write,
                success: true,
                ..
            }
        )
    });
    let releases = mine(|e| {
        matches!(
            e.kind,
            EventKind::MmapLockRelease {
                mode: LockMode::Write,
                ..
            }
        )
    });
    assert!(
        starts >= 500 && acquires >= 500 && releases >= 500,
        "classic tracepoints: {starts} starts, {acquires} acquisitions, {releases} releases for 500 mprotects"
    );
}

#[test]
fn reading_another_process_names_the_owner_of_its_mm() {
    if !require_root("reading_another_process_names_the_owner_of_its_mm") {
        return;
    }
    let rec = Recording::start(&[]);
    let report = scenario(&["foreign-read", "--count", "50"]);
    let events = rec.finish();
    let tid = u64_at(&report, &["tid"]) as u32;
    let target = u64_at(&report, &["target_pid"]) as u32;
    let foreign = events
        .iter()
        .filter(|e| e.tid == tid)
        .filter(|e| matches!(e.kind, EventKind::MmapLockAcquire { mm_pid: Some(p), mode: LockMode::Read, success: true, .. } if p == target))
        .count();
    assert!(
        foreign >= 50,
        "50 process_vm_readv calls gave {foreign} read acquisitions of pid {target}'s mm"
    );
}

#[test]
fn the_agent_builds_the_live_graph_of_a_convoy_and_raises_its_alerts() {
    if !require_root("the_agent_builds_the_live_graph_of_a_convoy_and_raises_its_alerts") {
        return;
    }
    let state = tempfile::tempdir().expect("tempdir");
    let journal_dir = tempfile::tempdir().expect("tempdir");
    let journal = journal_dir.path().join("agent.jsonl");
    let thresholds = ["--stall-threshold", "150ms", "--rwr-threshold", "100ms"];
    let mut args = vec![
        "--wait-threshold",
        "1ms",
        "--hold-threshold",
        "20ms",
        "--snapshot-interval",
        "50ms",
        "--summary-interval",
        "1s",
        "--record",
        journal.to_str().expect("utf-8 path"),
    ];
    args.extend(thresholds);
    let (mut agent, addr) = Faultline::agent(state.path(), &args);

    let report = scenario(&["rwr", "--hold-mib", "2048"]);
    assert_eq!(
        report["convoy"], true,
        "the workload did not form a convoy: {report}"
    );
    let tid = |who: &str| u64_at(&report, &[who, "tid"]);
    let (holder, writer, reader) = (tid("holder"), tid("writer"), tid("reader"));

    // The slow-wait log line for the writer (streamed when it finally got the lock).
    // Its write wait: a slow guest also shows the threads' start-up waits (a stack's mmap).
    let line = agent.wait_for_all(
        &[&format!("tid {writer} "), "for rwsem_write"],
        Duration::from_secs(10),
    );
    assert!(
        line.contains("waited") && line.contains("write"),
        "slow-wait line: {line}"
    );
    agent.wait_for("rwr_inversion:", Duration::from_secs(5));

    let (status, body) = http_get(&addr, "/api/alerts");
    assert_eq!(status, 200, "{body}");
    let doc: serde_json::Value = serde_json::from_str(&body).expect("alerts JSON");
    let alerts = doc["alerts"].as_array().expect("alerts array");
    let tids_of = |a: &serde_json::Value| u64s(a, "tids");
    let inversion = alerts
        .iter()
        .find(|a| a["kind"] == "rwr_inversion" && tids_of(a).first() == Some(&reader))
        .unwrap_or_else(|| panic!("no rwr_inversion for reader {reader}: {doc:#}"));
    assert_eq!(
        tids_of(inversion),
        vec![reader, writer, holder],
        "reader, writer, root holder: {inversion:#}"
    );
    // The default mode does not see the holder acquire: it names it as inferred, with why.
    let summary = inversion["summary"].as_str().unwrap_or_default();
    assert!(
        summary.contains(&format!("{holder} (")) && summary.contains("(inferred: "),
        "the holder is named as inferred: {summary}"
    );
    // An alert resting on an inferred edge is probable, never certain, and says what the
    // inference rests on.
    assert_eq!(
        inversion["confidence"], "probable",
        "an inversion through an inferred read holder: {inversion:#}"
    );
    let evidence = inversion["evidence"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        evidence
            .iter()
            .any(|e| e.to_string().contains(&holder.to_string())),
        "the evidence names the inferred holder {holder}: {inversion:#}"
    );
    let stall = alerts
        .iter()
        .find(|a| a["kind"] == "stall" && tids_of(a).first() == Some(&writer))
        .unwrap_or_else(|| panic!("no stall for writer {writer}: {doc:#}"));
    assert_eq!(tids_of(stall), vec![writer, holder], "{stall:#}");
    // Only the convoy's own tasks are judged: another process of the host may be deadlocked.
    let ours = [reader, writer, holder];
    assert!(
        !alerts
            .iter()
            .any(|a| a["kind"] == "deadlock" && tids_of(a).iter().any(|t| ours.contains(t))),
        "a convoy that drains is no deadlock: {doc:#}"
    );

    let incidents: Vec<_> = std::fs::read_dir(state.path())
        .expect("state dir")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        incidents.iter().any(|n| n.ends_with("-rwr_inversion.json"))
            && incidents.iter().any(|n| n.ends_with("-rwr_inversion.dot")),
        "incident files: {incidents:?}"
    );

    let (status, body) = http_get(&addr, "/api/graph");
    assert_eq!(status, 200);
    let graph: serde_json::Value = serde_json::from_str(&body).expect("graph JSON");
    assert!(graph["edges"].is_array() && graph["tasks"].is_array() && graph["cycles"].is_array());
    let (status, body) = http_get(&addr, "/api/graph.dot");
    assert_eq!(status, 200);
    assert!(body.starts_with("digraph waits_for {"), "{body}");

    agent.wait_for("mmap_lock: acquired", Duration::from_secs(5));
    let (status, _) = agent.stop();
    assert!(status.success(), "agent exits cleanly on SIGTERM");

    // `--record` kept every event the agent's engine applied, the snapshots' conclusions
    // included (the holder was inferred, never seen acquiring): replayed, they raise exactly
    // the alerts the agent raised, on this host's other processes too.
    let mode = std::fs::metadata(&journal)
        .expect("the journal")
        .permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o600,
        "a trace keeps raw addresses: owner only"
    );
    let text = std::fs::read_to_string(&journal).expect("the journal");
    assert!(
        text.contains("\"kind\":\"read_holders_inferred\"")
            && text.contains("\"kind\":\"snapshot\""),
        "the journal has the snapshots' conclusions"
    );
    let mut replay_args = vec!["replay", "--json"];
    replay_args.extend(thresholds);
    replay_args.push(journal.to_str().expect("utf-8 path"));
    let out = std::process::Command::new(common::FAULTLINE)
        .args(&replay_args)
        .output()
        .expect("faultline replay");
    assert!(
        out.status.success(),
        "replay: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let replayed: serde_json::Value = serde_json::from_slice(&out.stdout).expect("replay JSON");
    let key = |a: &serde_json::Value| {
        (
            a["kind"].as_str().unwrap_or("?").to_owned(),
            u64s(a, "tids"),
            a["confidence"].as_str().unwrap_or("?").to_owned(),
        )
    };
    let mut from_replay: Vec<_> = replayed["alerts"]
        .as_array()
        .expect("alerts")
        .iter()
        .map(key)
        .collect();
    let mut from_agent: Vec<_> = std::fs::read_dir(state.path())
        .expect("state dir")
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter_map(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .map(|doc| key(&doc["alert"]))
        .collect();
    from_replay.sort();
    from_agent.sort();
    assert!(
        from_agent
            .iter()
            .any(|(k, t, _)| k == "rwr_inversion" && t.first() == Some(&reader)),
        "{from_agent:?}"
    );
    assert_eq!(
        from_replay, from_agent,
        "replaying the agent's journal raises what the agent raised"
    );
}

#[test]
fn without_privileges_record_fails_with_one_clear_line() {
    if !require_root("without_privileges_record_fails_with_one_clear_line") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .expect("chmod");
    let out_path = dir.path().join("t.jsonl");
    assert_fails_without_privileges(&[
        "record".as_ref(),
        "-o".as_ref(),
        out_path.as_os_str(),
        "-d".as_ref(),
        "1s".as_ref(),
    ]);
    assert!(!out_path.exists(), "no empty trace left behind");
}

#[test]
fn the_agent_takes_its_settings_from_a_config_file_and_flags_override_it() {
    if !require_root("the_agent_takes_its_settings_from_a_config_file_and_flags_override_it") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let config = dir.path().join("faultline.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{port}\"\nstall_threshold = \"250ms\"\nhold_threshold = \"7ms\"\nstate_dir = \"{}\"\n",
            dir.path().display()
        ),
    )
    .expect("write config");
    let config = config.to_str().expect("utf-8");
    let mut agent = Faultline::start(
        &["agent", "--config", config, "--hold-threshold", "9ms"],
        "probes attached",
    );
    let line = agent.wait_for("API on http://", Duration::from_secs(1));
    assert!(
        line.contains(&format!("API on http://127.0.0.1:{port}")),
        "listen from the file: {line}"
    );
    assert!(
        line.contains("stall threshold 250ms"),
        "stall threshold from the file: {line}"
    );
    assert!(
        line.contains("hold threshold 9ms"),
        "the flag overrides the file: {line}"
    );
    let (status, _) = http_get(&format!("127.0.0.1:{port}"), "/healthz");
    assert_eq!(status, 200);
    agent.stop();
}

/// Anonymous page faults and the mmap_lock: with per-VMA locks (6.4+, `vm_area_struct` has
/// `vm_lock_seq` in BTF) they take the VMA's own lock and almost never the mmap_lock; without
/// them (6.1) every fault takes it for read. Never for write, either way.
#[test]
fn a_fault_in_workload_takes_the_mmap_lock_for_read_only_without_per_vma_locks() {
    if !require_root("a_fault_in_workload_takes_the_mmap_lock_for_read_only_without_per_vma_locks")
    {
        return;
    }
    let per_vma_locks = KernelBtf::load()
        .expect("this kernel has BTF")
        .member_offset("vm_area_struct", "vm_lock_seq")
        .is_some();
    let pages = 2000u64;
    let rec = Recording::start(&[]);
    let report = scenario(&["fault-in", "--pages", &pages.to_string()]);
    let events = rec.finish();
    let pid = u64_at(&report, &["pid"]) as u32;
    let (from, to) = (u64_at(&report, &["start_ns"]), u64_at(&report, &["end_ns"]));
    // The faulting thread is the scenario's worker: only the pid and the window name it.
    let acquired = |want: LockMode| {
        events
            .iter()
            .filter(|e| e.pid == pid && e.ts_ns >= from && e.ts_ns <= to)
            .filter(|e| {
                matches!(e.kind, EventKind::MmapLockAcquire { mode, success: true, .. } if mode == want)
            })
            .count() as u64
    };
    let (reads, writes) = (acquired(LockMode::Read), acquired(LockMode::Write));
    // The worker's own exit may unmap (its stack or TLS) inside the window: seen here once
    // in a few runs, as one write by the worker in the last few percent of the window.
    assert!(
        writes <= 2,
        "faults never take the mmap_lock for write: {writes} writes, {reads} reads"
    );
    if per_vma_locks {
        assert!(
            reads < pages / 10,
            "per-VMA locks: {reads} read acquisitions for {pages} faults"
        );
    } else {
        // The worker starts faulting as soon as the gate opens, possibly before the scenario
        // reads the clock: the first faults may fall before the window (22 of 2000 once).
        assert!(
            reads >= pages * 9 / 10,
            "no per-VMA locks: one read acquisition per fault, got {reads} for {pages}"
        );
    }
}

/// A process that reads another's /proc/PID/cmdline takes that process's `mmap_lock` for
/// read: queued behind a convoy's writer, it waits on the convoy's mm, which stays the convoy
/// process's in the graph. The kernel side must tell the cat's wait from a wait on its own mm
/// (a wait said to be on the cat's own would make the mm the cat's); which waiter a snapshot
/// meets first is the unit test's (live::tests).
#[test]
fn a_reader_of_another_process_cmdline_waits_on_that_process_mm() {
    if !require_root("a_reader_of_another_process_cmdline_waits_on_that_process_mm") {
        return;
    }
    let state = tempfile::tempdir().expect("tempdir");
    let (agent, addr) = Faultline::agent(
        state.path(),
        &["--wait-threshold", "1ms", "--snapshot-interval", "50ms"],
    );
    let (mut convoy, who) =
        common::scenario_lingering(&["rwr", "--hold-mib", "2048", "--announce"]);
    let pid = u64_at(&who, &["pid"]);
    let writer = u64_at(&who, &["writer"]);
    let mut cat = std::process::Command::new("cat")
        .arg(format!("/proc/{pid}/cmdline"))
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("cat");
    let cat_pid = u64::from(cat.id());
    // The cat's edge: queued behind the convoy's writer, on the mmap_lock of the convoy.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let edge = loop {
        let (_, body) = http_get(&addr, "/api/graph");
        let graph: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        let found = graph["edges"].as_array().and_then(|edges| {
            edges
                .iter()
                .find(|e| e["from"].as_u64() == Some(cat_pid))
                .cloned()
        });
        if let Some(e) = found {
            break e;
        }
        if std::time::Instant::now() > deadline || cat.try_wait().ok().flatten().is_some() {
            let _ = convoy.kill();
            let _ = convoy.wait();
            panic!("the cat ({cat_pid}) never waited in the graph: {body}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = cat.wait();
    let _ = convoy.wait();
    agent.stop();
    assert_eq!(edge["lock"]["kind"], "mmap_lock", "{edge:#}");
    assert_eq!(edge["to"].as_u64(), Some(writer), "{edge:#}");
    assert_eq!(
        edge["lock"]["owner_pid"].as_u64(),
        Some(pid),
        "the convoy's mm is the convoy process's, not its reader's ({cat_pid}): {edge:#}"
    );
}
