//! `faultline contention`: a one-shot kernel lock-contention profile, for a `perf lock
//! contention` user, without an agent or a perf.data file; with `--user`, the user-space lock
//! profile (futex sleeps, symbolised). Loads the probes (contention only
//! streams nothing here), waits for the duration or a stop request, reads the in-kernel profile,
//! names it, and prints it.

use std::time::Duration;

use anyhow::{Context as _, Result};

use crate::{
    core::lock_profile::{Filter, GroupBy, Profile},
    kernel::{
        lock_names::Namer,
        probes::{ProbeOptions, Probes, ProfileOptions},
        stop_requests::StopRequests,
        user_stacks::UserNamer,
    },
};

/// How often a `--user` run names the new stacks while it runs.
const PRIME_EVERY: Duration = Duration::from_millis(500);

pub struct ContentionOptions {
    pub probes: ProbeOptions,
    pub duration: Option<Duration>,
    pub group: GroupBy,
    pub filter: Filter,
    /// Profile user-space lock sleeps (futexes) instead of kernel locks.
    pub user: bool,
}

/// What one run measured: the profile (filtered) and how long it ran.
pub struct Measured {
    pub profile: Profile,
    /// With `--user`: the user-lock profile, named.
    pub user: Option<crate::core::user_profile::UserProfile>,
    pub elapsed: Duration,
}

pub async fn run(opts: ContentionOptions) -> Result<Measured> {
    let by_task = opts.group == GroupBy::Task || !opts.filter.pids.is_empty();
    let probe_opts = ProbeOptions {
        // Nothing reads the ring buffer here: stream nothing (a slow wait would only fill it).
        wait_threshold: Duration::from_secs(3600),
        hold_threshold: Duration::from_secs(3600),
        record_all: false,
        profile: ProfileOptions {
            enabled: true,
            by_task,
            ..opts.probes.profile
        },
        ..opts.probes.clone()
    };
    let probes = Probes::load(&probe_opts)?;
    let maps = probes.profile_maps()?;
    let user_maps = probes.user_profile_maps()?;
    let namer = UserNamer::new();
    if opts.user {
        crate::kernel::user_stacks::with_source_lines();
    }
    let stops = StopRequests::install()?;
    let started = std::time::Instant::now();
    let mut primed = started;
    eprintln!(
        "faultline: profiling {} contention{}",
        if opts.user {
            "user-space lock"
        } else {
            "kernel lock"
        },
        opts.duration
            .map(|d| format!(" for {}", humantime::format_duration(d)))
            .unwrap_or_else(|| ", Ctrl-C to stop".into())
    );
    loop {
        if stops.count() > 0 || opts.duration.is_some_and(|d| started.elapsed() >= d) {
            break;
        }
        let left = opts
            .duration
            .map_or(Duration::from_millis(100), |d| {
                d.saturating_sub(started.elapsed())
            })
            .min(Duration::from_millis(100));
        tokio::time::sleep(left).await;
        // Stacks are named while their processes live: a short-lived one is gone at the end.
        if opts.user && primed.elapsed() >= PRIME_EVERY {
            if let Ok(c) = probes.counters() {
                namer.prime(&user_maps.read(&c));
            }
            primed = std::time::Instant::now();
        }
    }
    let elapsed = started.elapsed();
    let counters = probes.counters().context("reading the kernel counters")?;
    let raw = maps.read(&counters);
    let user = opts.user.then(|| {
        let raw = user_maps.read(&counters);
        namer.prime_and_wait(&raw, Duration::from_secs(10));
        namer.resolve(&raw, Namer::new().symbols())
    });
    drop(probes);
    // Short waits without a stack are split over their lock's sampled stacks first, so a filter
    // on a frame or a caller keeps its share of them.
    let profile = Namer::new()
        .resolve(&raw)
        .estimated()
        .filtered(&opts.filter);
    Ok(Measured {
        profile,
        user,
        elapsed,
    })
}
