//! Rendering a whole scrape: bounds, labels, buckets.

use std::collections::{BTreeMap, HashMap};

use tracer_common::{Histogram as H, ProcFaults, HIST_BUCKETS};

use super::{fold::TOP_LOCKS, *};
use crate::core::{
    event::LockType,
    lock_profile::{LockName, Naming, Profile, Sample},
};

fn input() -> MetricsInput {
    let db = Attribution::from_path("/system.slice/db.service");
    let mut hists = vec![[0; HIST_BUCKETS as usize]; 21];
    hists[H::WaitWrite as usize][20] = 3; // ~1-2 ms
    hists[H::WaitWrite as usize][40] = 1; // ~18 min: beyond the last bucket
    MetricsInput {
        version: "0.1.0",
        kernel: "6.18".into(),
        counters: vec![0; tracer_common::COUNTER_COUNT as usize],
        hists,
        uffd_errors: vec![0; tracer_common::UFFD_ERROR_SLOTS as usize],
        proc_faults: (0..15)
            .map(|i| {
                (
                    ProcessKey::new(format!("p{i}"), Some(&db)),
                    ProcFaults {
                        user: i,
                        ..Default::default()
                    },
                )
            })
            .collect(),
        proc_faults_per_mode: true,
        task_entries: 1,
        task_entries_reclaimed: 0,
        task_capacity: 32768,
        proc_fault_entries: 15,
        programs: vec![("mmap_lock_start_btf".into(), 1_500_000_000, 10)],
        alerts: AlertKind::ALL
            .iter()
            .map(|k| ((*k, Confidence::Certain), 0))
            .collect(),
        blocked: BTreeMap::from([("mmap_lock", 2)]),
        events_received: 5,
        decode_errors: 0,
        model_entries: [("tasks", 0), ("mm_locks", 0), ("uffds", 0)],
        tasks_state_unknown: 0,
        alerts_refuted: 0,
        uffd_ioctl_hooks: false,
        faults_by_workload: (0..15)
            .map(|i| {
                (
                    format!("systemd:s{i}.service"),
                    ProcFaults {
                        user: i,
                        ..Default::default()
                    },
                )
            })
            .collect(),
        folded: SeriesMemory::default().fold(
            &HashMap::from([
                (ProcessKey::new("a".into(), Some(&db)), 5),
                (ProcessKey::new("a".into(), None), 7),
            ]),
            &HashMap::from([(
                ProcessKey::new("a".into(), Some(&db)),
                tracer_common::FutexTime {
                    waits: 3,
                    wait_ns: 2_500_000_000,
                },
            )]),
            &HashMap::from([("docker:0123456789ab".into(), 4)]),
            &BTreeMap::from([
                (("pod:u/c".to_string(), AlertKind::Deadlock), 2),
                (("host".to_string(), AlertKind::Stall), 1),
            ]),
        ),
        api_refused: [("render", 3), ("scrape", 0)],
        user_lock_entries: (2, 32768, 1),
        features: vec![("holder_stack", true), ("uffd_waits", false)],
        lock_profile: None,
    }
}

#[test]
fn workload_series_are_bounded_and_name_the_workload() {
    let text = render(&input()).expect("render");
    let named = text
        .lines()
        .filter(|l| l.starts_with("faultline_workload_page_faults{") && l.contains("mode=\"user\""))
        .count();
    assert_eq!(named, TOP_WORKLOADS + 1, "{text}");
    assert!(
        text.contains("faultline_workload_page_faults{workload=\"other\",mode=\"user\"} 10"),
        "{text}"
    );
    assert!(
        text.contains("faultline_workload_slow_waits_total{workload=\"docker:0123456789ab\"} 4"),
        "{text}"
    );
    assert!(
        text.contains("faultline_workload_alerts_total{workload=\"pod:u/c\",kind=\"deadlock\"} 2"),
        "{text}"
    );
    assert!(
        text.contains("faultline_workload_alerts_total{workload=\"other\",kind=\"deadlock\"} 0"),
        "{text}"
    );
}

#[test]
fn log2_buckets_become_cumulative_le_buckets_in_seconds() {
    let text = render(&input()).expect("render");
    // 2^21 ns = 0.002097152 s holds the three ~1 ms waits, and so does every bucket above.
    assert!(
        text.contains(
            "faultline_mmap_lock_wait_seconds_bucket{mode=\"write\",le=\"0.002097152\"} 3"
        ),
        "{text}"
    );
    assert!(
        text.contains(
            "faultline_mmap_lock_wait_seconds_bucket{mode=\"write\",le=\"68.719476736\"} 3"
        ),
        "{text}"
    );
    assert!(
        text.contains("faultline_mmap_lock_wait_seconds_bucket{mode=\"write\",le=\"+Inf\"} 4"),
        "{text}"
    );
    assert!(
        text.contains("faultline_mmap_lock_wait_seconds_count{mode=\"write\"} 4"),
        "{text}"
    );
}

#[test]
fn a_quiet_host_still_renders_every_family() {
    let mut m = input();
    m.proc_faults.clear();
    m.folded = SeriesMemory::default().fold(
        &HashMap::new(),
        &HashMap::new(),
        &HashMap::new(),
        &BTreeMap::new(),
    );
    m.programs.clear();
    let text = render(&m).expect("a scrape of a quiet host renders");
    assert!(
        text.contains(
            "faultline_process_slow_waits_total{process=\"other\",workload=\"other\",cgroup=\"other\"} 0"
        ),
        "{text}"
    );
    assert!(
        text.contains(
            "faultline_top_process_page_faults{process=\"other\",workload=\"other\",cgroup=\"other\",mode=\"user\"} 0"
        ),
        "{text}"
    );
}

#[test]
fn per_process_series_are_bounded_to_the_top_n_plus_other() {
    let text = render(&input()).expect("render");
    let procs = text
        .lines()
        .filter(|l| {
            l.starts_with("faultline_top_process_page_faults{") && l.contains("mode=\"user\"")
        })
        .count();
    assert_eq!(procs, TOP_PROCESSES + 1, "{text}");
    // p0..p4 are the smallest: folded into other = 0+1+2+3+4.
    assert!(
        text.contains(
            "faultline_top_process_page_faults{process=\"other\",workload=\"other\",cgroup=\"other\",mode=\"user\"} 10"
        ),
        "{text}"
    );
    // One name in two cgroups is two series, each with its workload and cgroup.
    assert!(
        text.contains(
            "faultline_process_slow_waits_total{process=\"a\",workload=\"systemd:db.service\",cgroup=\"/system.slice/db.service\"} 5"
        ),
        "{text}"
    );
    assert!(
        text.contains(
            "faultline_process_slow_waits_total{process=\"a\",workload=\"unknown\",cgroup=\"unknown\"} 7"
        ),
        "{text}"
    );
    assert!(
        text.contains("faultline_probe_run_seconds_total{program=\"mmap_lock_start_btf\"} 1.5"),
        "{text}"
    );
    // Futex waiting time by process: its waits and seconds, "other" present at zero.
    for line in [
        "faultline_process_user_lock_waits_total{process=\"a\",workload=\"systemd:db.service\",cgroup=\"/system.slice/db.service\"} 3",
        "faultline_process_user_lock_wait_seconds_total{process=\"a\",workload=\"systemd:db.service\",cgroup=\"/system.slice/db.service\"} 2.5",
        "faultline_process_user_lock_wait_seconds_total{process=\"other\",workload=\"other\",cgroup=\"other\"} 0",
    ] {
        assert!(text.contains(line), "{line} missing:\n{text}");
    }
}

#[test]
fn requests_the_api_refused_are_counted_by_gate() {
    let text = render(&input()).expect("render");
    for line in [
        "faultline_api_requests_refused_total{gate=\"render\"} 3",
        "faultline_api_requests_refused_total{gate=\"scrape\"} 0",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} in:\n{text}");
    }
}

#[test]
fn each_privilege_dependent_feature_is_a_gauge_of_one_or_zero() {
    let text = render(&input()).expect("render");
    assert!(text.contains("faultline_feature_available{feature=\"holder_stack\"} 1\n"));
    assert!(text.contains("faultline_feature_available{feature=\"uffd_waits\"} 0\n"));
}

fn lock_sample(lock: u64, name: &str, naming: Naming, t: LockType, n: u64, ns: u64) -> Sample {
    Sample {
        lock,
        lock_name: LockName {
            name: name.into(),
            naming,
        },
        lock_type: t,
        stack: vec!["f".into()],
        cgroup: None,
        workload: None,
        task: None,
        owner: None,
        contended: n,
        total_ns: ns,
        max_ns: ns,
        stack_sampling: Default::default(),
        comm: None,
        pod: None,
    }
}

#[test]
fn lock_series_name_the_top_locks_never_an_address_and_never_go_down() {
    let mut memory = LockSeriesMemory::default();
    let mut profile = Profile::default();
    // Eleven callers-named locks of small waits, then the heavy ones.
    for i in 0..11u64 {
        profile.samples.push(lock_sample(
            i,
            &format!("f{i}"),
            Naming::Caller,
            LockType::Mutex,
            1,
            10 + i,
        ));
    }
    profile.samples.push(lock_sample(
        100,
        "rtnl_mutex",
        Naming::Symbol,
        LockType::Mutex,
        3,
        3_000_000_000,
    ));
    profile.samples.push(lock_sample(
        101,
        "0xffff888012345678",
        Naming::Unnamed,
        LockType::Spinlock,
        2,
        500,
    ));
    profile.samples.push(lock_sample(
        102,
        "mmap_lock of 7 (seed)",
        Naming::MmapLock,
        LockType::RwsemWrite,
        4,
        2_000,
    ));
    let mut m = input();
    m.lock_profile = Some(ProfileScrape {
        series: memory.fold(&profile),
        entries: (14, 16384),
        stacks: (1, 8192),
        aged_out: 0,
    });
    let text = render(&m).expect("render");
    assert!(!text.contains("0xffff"), "an address leaked: {text}");
    assert!(
        text.contains("faultline_map_entries{map=\"lock_profile\"} 14"),
        "{text}"
    );
    assert!(
        text.contains("faultline_map_capacity{map=\"lock_stacks\"} 8192"),
        "{text}"
    );
    assert!(
        text.contains("faultline_lock_wait_seconds_total{lock=\"rtnl_mutex\",type=\"mutex\"} 3"),
        "{text}"
    );
    assert!(
        text.contains("faultline_lock_contentions_total{lock=\"unnamed\",type=\"spinlock\"} 2"),
        "{text}"
    );
    let named = |text: &str| {
        text.lines()
            .filter(|l| l.starts_with("faultline_lock_contentions_total{"))
            .filter(|l| !l.contains("lock=\"other\""))
            .map(|l| l.split("type").next().unwrap_or("").to_owned())
            .collect::<std::collections::BTreeSet<_>>()
            .len()
    };
    assert_eq!(named(&text), TOP_LOCKS, "{text}");
    // The top 10 by wait: rtnl, the mmap_lock, unnamed, f10..f4; f3..f0 (4 waits) are other.
    assert!(
        text.contains("faultline_lock_contentions_total{lock=\"other\",type=\"mutex\"} 4"),
        "{text}"
    );
    // The process exits: its comm is gone, its series keeps its name and its count.
    profile.samples[13].lock_name.name = "mmap_lock of 7".into();
    profile.samples[13].contended = 5;
    m.lock_profile = Some(ProfileScrape {
        series: memory.fold(&profile),
        entries: (14, 16384),
        stacks: (1, 8192),
        aged_out: 0,
    });
    let text = render(&m).expect("render");
    assert!(
        text.contains(
            "faultline_lock_contentions_total{lock=\"mmap_lock of 7 (seed)\",type=\"rwsem:W\"} 5"
        ),
        "{text}"
    );
    assert!(!text.contains("lock=\"mmap_lock of 7\""), "{text}");
    // Its mm's address reused by a new process: another lock, under its own name.
    profile.samples[13].lock_name.name = "mmap_lock of 9 (next)".into();
    profile.samples[13].contended = 1;
    profile.samples[13].total_ns = 9_000_000_000;
    m.lock_profile = Some(ProfileScrape {
        series: memory.fold(&profile),
        entries: (14, 16384),
        stacks: (1, 8192),
        aged_out: 0,
    });
    let text = render(&m).expect("render");
    assert!(
        text.contains(
            "faultline_lock_contentions_total{lock=\"mmap_lock of 9 (next)\",type=\"rwsem:W\"} 1"
        ),
        "{text}"
    );
}
