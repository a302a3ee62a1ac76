//! Counters only go up: 1,000 scrapes under process and workload churn, through the agent's own
//! path (its `Telemetry` counting slow waits, its `SeriesMemory` folding them into the top N
//! plus "other", and the metrics sink rendering the scrape), and no `_total` series ever reads
//! lower than it did before, even when its process or workload leaves the top N and returns.
//! Pure: no kernel, no agent process.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::Arc,
};

use tracer::{
    commands::agent::{metrics_input::folded_counters, telemetry::Telemetry},
    core::{detect::AlertKind, workload::Attribution},
    sinks::metrics::{render, MetricsInput, SeriesMemory, TOP_PROCESSES, TOP_WORKLOADS},
};

const SCRAPES: usize = 1000;

/// A small deterministic generator (xorshift): the churn is the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn quiet_input(folded: tracer::sinks::metrics::FoldedCounters) -> MetricsInput {
    MetricsInput {
        version: "test",
        kernel: "test".into(),
        counters: Vec::new(),
        hists: Vec::new(),
        uffd_errors: Vec::new(),
        proc_faults: Vec::new(),
        proc_faults_per_mode: false,
        task_entries: 0,
        task_entries_reclaimed: 0,
        task_capacity: 0,
        proc_fault_entries: 0,
        programs: Vec::new(),
        alerts: BTreeMap::new(),
        blocked: BTreeMap::new(),
        events_received: 0,
        decode_errors: 0,
        model_entries: [("tasks", 0), ("mm_locks", 0), ("uffds", 0)],
        tasks_state_unknown: 0,
        alerts_refuted: 0,
        uffd_ioctl_hooks: false,
        faults_by_workload: Vec::new(),
        folded,
        api_refused: [("render", 0), ("scrape", 0)],
        features: Vec::new(),
        lock_profile: None,
        user_lock_entries: (0, 0, 0),
    }
}

/// (series, value) of every `_total` sample of a scrape.
fn totals(text: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let name = series.split('{').next()?;
            name.ends_with("_total")
                .then(|| (series.to_owned(), value.parse().expect("a sample value")))
        })
        .collect()
}

/// The process label values of one family's samples.
fn named(samples: &[(String, f64)], family: &str) -> BTreeSet<String> {
    samples
        .iter()
        .filter(|(s, _)| s.starts_with(&format!("{family}{{")))
        .map(|(s, _)| s.clone())
        .collect()
}

#[test]
fn no_total_series_ever_decreases_under_process_churn() {
    let mut rng = Rng(0x5eed_f00d);
    let mut telemetry = Telemetry::default();
    let mut series = SeriesMemory::default();
    let mut alerts: BTreeMap<(String, AlertKind), u64> = BTreeMap::new();
    // Futex waiting time by process, cumulative as the agent keeps it (a process's totals
    // stay when it exits).
    let mut user_locks: HashMap<tracer::sinks::metrics::ProcessKey, tracer_common::FutexTime> =
        HashMap::new();
    let workloads: Vec<Arc<Attribution>> = (0..3 * TOP_WORKLOADS)
        .map(|w| {
            Arc::new(Attribution::from_path(&format!(
                "/system.slice/s{w}.service"
            )))
        })
        .collect();
    let mut highest: HashMap<String, f64> = HashMap::new();
    let mut decreases = Vec::new();
    let (mut last_processes, mut last_workloads) = (BTreeSet::new(), BTreeSet::new());
    let (mut process_changes, mut workload_changes) = (0, 0);
    for scrape in 0..SCRAPES {
        // Processes come and go: a new generation every 25 scrapes, each process busy for a
        // while, then quiet (its count stays, others overtake it). A few bursts a scrape make
        // processes jump into the top N and push others out to "other".
        let generation = scrape / 25;
        for _ in 0..20 {
            let p = generation * 8 + rng.below(16) as usize;
            let w = &workloads[p % workloads.len()];
            // Bursts grow with time, so a new generation overtakes the old ones.
            let burst = if rng.below(10) == 0 { 40 + scrape } else { 1 };
            for _ in 0..burst {
                telemetry.count_slow_wait(format!("proc-{p}"), Some(w.clone()));
            }
        }
        // Some slow waits with no cgroup known (a process gone before it was attributed).
        telemetry.count_slow_wait(format!("gone-{}", rng.below(50)), None);
        for _ in 0..3 {
            let w = workloads[(generation + rng.below(12) as usize) % workloads.len()].label();
            let kind = AlertKind::ALL[rng.below(AlertKind::ALL.len() as u64) as usize];
            *alerts.entry((w, kind)).or_default() += 1 + rng.below(3) * rng.below(20);
        }
        for _ in 0..10 {
            let p = generation * 8 + rng.below(16) as usize;
            let key = tracer::sinks::metrics::ProcessKey::new(
                format!("proc-{p}"),
                Some(&workloads[p % workloads.len()]),
            );
            let t = user_locks.entry(key).or_default();
            t.waits += 1 + rng.below(50);
            t.wait_ns += rng.below(5_000_000) * (1 + scrape as u64 / 10);
        }
        let folded = folded_counters(&mut series, &telemetry, &user_locks, &alerts);
        let text = render(&quiet_input(folded)).expect("a scrape renders");
        let samples = totals(&text);
        let processes = named(&samples, "faultline_process_slow_waits_total");
        let workloads_now = named(&samples, "faultline_workload_slow_waits_total");
        process_changes += usize::from(processes != last_processes);
        workload_changes += usize::from(workloads_now != last_workloads);
        (last_processes, last_workloads) = (processes, workloads_now);
        assert!(
            named(&samples, "faultline_process_slow_waits_total").len() <= TOP_PROCESSES + 1,
            "per-process series stay bounded:\n{text}"
        );
        for (s, v) in samples {
            let before = highest.entry(s.clone()).or_insert(v);
            if v < *before {
                decreases.push(format!("scrape {scrape}: {s} went from {before} to {v}"));
            }
            *before = before.max(v);
        }
    }
    assert!(
        decreases.is_empty(),
        "{} _total samples went down (rate() reads each as a counter reset):\n{}",
        decreases.len(),
        decreases
            .iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    // The churn really moved processes and workloads in and out of the top N.
    assert!(
        process_changes > SCRAPES / 10,
        "the top processes changed only {process_changes} times"
    );
    assert!(
        workload_changes > SCRAPES / 20,
        "the top workloads changed only {workload_changes} times"
    );
    let other =
        "faultline_process_slow_waits_total{process=\"other\",workload=\"other\",cgroup=\"other\"}";
    assert!(
        highest.get(other).is_some_and(|v| *v > 0.0),
        "evicted processes counted under other: {:?}",
        highest.get(other)
    );
}
