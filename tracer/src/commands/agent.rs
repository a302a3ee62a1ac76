//! `faultline agent`: load, attach, drain the ring buffer, report.

use std::{
    cell::RefCell,
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context as _, Result};
use tracer_common::Counter;

use crate::{
    commands::single,
    core::detect::Thresholds,
    core::event::EventKind,
    kernel::decode::{DecodeError, Decoded},
    kernel::live::{monotonic_ns, proc_exists, LiveFeed},
    kernel::probes::{kernel::KernelBtf, ProbeOptions, Probes},
    kernel::reclaim::TaskEntryReclaimer,
    kernel::scope::{Scope, ScopeFilter},
    kernel::stats::{self, Summary},
    kernel::stream::EventStream,
    sinks::alerts::AlertSink,
    sinks::http::{self, AgentState, Shared, Telemetry},
};

pub struct AgentOptions {
    pub probes: ProbeOptions,
    pub thresholds: Thresholds,
    /// Address of the HTTP API.
    pub listen: SocketAddr,
    /// Where incidents are written; `None` keeps alerts in memory only.
    pub state_dir: Option<PathBuf>,
    pub max_incidents: usize,
    /// How often the kernel's per-task map is read into the engine and the timed detectors run.
    pub snapshot_interval: Duration,
    pub summary_interval: Duration,
    /// Most slow-event lines logged per summary interval; the rest are counted.
    pub max_log_lines: u32,
    /// Turn on the kernel's BPF run-time statistics for the probes' self-metrics.
    pub self_metrics: bool,
    /// Which processes to report on: the whole host, or this agent's network namespace.
    pub scope: Scope,
}

/// One human line for a record worth reporting, or `None` for one that is not.
pub fn describe(d: &Decoded) -> Option<String> {
    let ev = &d.event;
    let who = format!(
        "tid {} ({}) pid {}",
        ev.tid,
        ev.comm.as_deref().unwrap_or("?"),
        ev.pid
    );
    let whose = |mm_pid: &Option<u32>| match mm_pid {
        Some(p) => format!("pid {p}'s mmap_lock"),
        None => "its own mmap_lock".to_string(),
    };
    let dur = |since: u64| {
        humantime::format_duration(Duration::from_micros(ev.ts_ns.saturating_sub(since) / 1000))
    };
    match (&ev.kind, d.since_ns) {
        (EventKind::MmapLockAcquire { mode, mm_pid, mm, .. }, Some(since)) if d.reasons.slow_wait() => {
            Some(format!("{who} waited {} for {} ({mode}, mm {mm})", dur(since), whose(mm_pid)))
        }
        (EventKind::MmapLockRelease { mode, mm_pid, mm }, Some(since)) if d.reasons.long_hold() => {
            Some(format!("{who} held {} for {} ({mode}, mm {mm})", whose(mm_pid), dur(since)))
        }
        (EventKind::LockWaitEnd { lock, .. }, Some(since)) if d.reasons.slow_wait() => {
            let (kind, owner) = match d.implied.as_ref().map(|i| &i.kind) {
                Some(EventKind::LockWaitBegin { lock_type, owner_tid, .. }) => (
                    serde_json::to_value(lock_type)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_else(|| "lock".into()),
                    owner_tid.map(|o| format!(" owned by tid {o}")).unwrap_or_default(),
                ),
                _ => ("lock".into(), String::new()),
            };
            Some(format!("{who} waited {} for {kind} {lock}{owner}", dur(since)))
        }
        (EventKind::UffdWaitBegin { uffd, addr }, _) => Some(format!(
            "{who} waits for userfaultfd {uffd} to resolve a fault at {addr}"
        )),
        (EventKind::UffdIoctlEnd { op, ret, .. }, _) if *ret < 0 => Some(format!(
            "{who}: userfaultfd ioctl {op:?} failed with errno {}",
            -ret
        )),
        (EventKind::MmapLockStart { mm_pid, mm, .. }, _) if d.reasons.recursive() => Some(format!(
            "{who} asks for {} for read while already holding it for read (recursive read, mm {mm}): deadlocks if a writer queues"
            , whose(mm_pid)
        )),
        _ => None,
    }
}

/// Logs what the kernel streamed, at most `max_lines` lines per summary interval.
struct Reporter {
    max_lines: u32,
    logged: u32,
    suppressed: u64,
    decode_errors: u64,
}

impl Reporter {
    fn new(max_lines: u32) -> Self {
        Self {
            max_lines,
            logged: 0,
            suppressed: 0,
            decode_errors: 0,
        }
    }

    fn handle(&mut self, r: Result<Decoded, DecodeError>) {
        match r {
            Ok(d) => {
                if let Some(line) = describe(&d) {
                    if self.logged < self.max_lines {
                        self.logged += 1;
                        log::warn!("{line}");
                    } else {
                        self.suppressed += 1;
                    }
                }
            }
            Err(e) => {
                self.decode_errors += 1;
                log::debug!("skipping record: {e}");
            }
        }
    }

    fn end_interval(&mut self) {
        if self.suppressed > 0 {
            log::info!(
                "{} more slow events not logged (--max-log-lines)",
                self.suppressed
            );
        }
        if self.decode_errors > 0 {
            log::warn!("{} ring-buffer records did not decode", self.decode_errors);
        }
        *self = Self::new(self.max_lines);
    }
}

fn raise_all(st: &mut AgentState, alerts: Vec<crate::core::detect::Alert>) {
    if alerts.is_empty() {
        return;
    }
    let view = http::engine_view(st).resolve();
    for a in alerts {
        st.sink.raise(a, &view);
    }
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}

pub async fn run(opts: AgentOptions) -> Result<()> {
    // Before anything is loaded: a second agent must leave the first one's programs alone.
    let _claim = single::claim(&single::instance_name())?;
    // Before the start line: a stop request that follows it must find the handlers in place.
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing a SIGTERM handler")?;
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .context("installing a SIGINT handler")?;
    let mut probes = Probes::load(&opts.probes)?;
    let mut stream = EventStream::new(probes.take_events()?).context("ring buffer")?;
    let attached = probes.attached();
    let detail = probes.detail();
    for lost in detail.gives_up() {
        log::info!("detail {detail}: without {lost}");
    }
    let listener = tokio::net::TcpListener::bind(opts.listen)
        .await
        .with_context(|| format!("cannot listen on {} (--listen)", opts.listen))?;
    let shared: Shared = Arc::new(Mutex::new(AgentState {
        feed: LiveFeed::new(
            opts.thresholds,
            opts.probes
                .wait_threshold
                .as_nanos()
                .try_into()
                .unwrap_or(u64::MAX),
            opts.probes
                .hold_threshold
                .as_nanos()
                .try_into()
                .unwrap_or(u64::MAX),
        ),
        sink: AlertSink::new(opts.state_dir.clone(), opts.max_incidents)?,
        probes,
        btf: KernelBtf::load()?,
        telemetry: Telemetry::default(),
        kernel_release: kernel_release(),
        task_entries: 0,
        // Every 16 snapshots: every 4 s at the default interval.
        reclaimer: TaskEntryReclaimer::new(16),
        scope: ScopeFilter::new(opts.scope)?,
    }));
    // Per-program run time for the self-metrics, only when asked: the kernel counts it only
    // while someone holds this fd (undone when the agent exits), and counting costs two clock
    // reads on every run of every program.
    let _stats = if opts.self_metrics {
        match aya::sys::enable_stats(aya::sys::Stats::RunTime) {
            Ok(fd) => Some(fd),
            Err(e) => {
                log::warn!("BPF run-time statistics unavailable ({e}); faultline_probe_run_seconds_total stays 0");
                None
            }
        }
    } else {
        None
    };
    let local = listener.local_addr().context("listening address")?;
    let server = {
        let app = http::router(shared.clone());
        tokio::spawn(async move { axum::serve(listener, app).await })
    };
    // Before saying it is attached: a userfaultfd already open gets its ioctl hooks now.
    scan_uffds(&mut http::lock(&shared), monotonic_ns())?;
    log::info!(
        "faultline agent: probes attached ({}, detail {}), API on http://{}, scope {}, wait threshold {}, hold threshold {}, stall threshold {}",
        attached,
        detail,
        local,
        match opts.scope {
            Scope::Host => "host",
            Scope::Netns => "netns",
        },
        humantime::format_duration(opts.probes.wait_threshold),
        humantime::format_duration(opts.probes.hold_threshold),
        humantime::format_duration(opts.thresholds.stall),
    );
    let mut last = stats::snapshot(&http::lock(&shared).probes)?;
    let mut summary_tick = tokio::time::interval(opts.summary_interval);
    summary_tick.tick().await;
    let mut snapshot_tick = tokio::time::interval(opts.snapshot_interval);
    snapshot_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The ring-buffer future borrows the reporter for as long as it waits, and the summary tick
    // needs it too; both run on this one task, so a RefCell is enough.
    let reporter = RefCell::new(Reporter::new(opts.max_log_lines));
    let on_record = |r: Result<Decoded, DecodeError>| {
        {
            let mut st = http::lock(&shared);
            // Out of scope (another network namespace's process): not ours to report.
            if let Ok(d) = &r {
                if !st.scope.admits(d.event.pid) {
                    return;
                }
            }
            match &r {
                Ok(d) => {
                    st.telemetry.on_record(d);
                    let mut alerts = st.feed.on_record(d);
                    if !alerts.is_empty() {
                        // Alerts are rare: read the loss counter only for them, so one resting
                        // on a lost record waits for the next snapshot to confirm it.
                        let lost = st
                            .probes
                            .counters()
                            .ok()
                            .map(|c| c.get(Counter::RingbufFull));
                        alerts = st.feed.vet(alerts, lost);
                    }
                    raise_all(&mut st, alerts);
                }
                Err(_) => st.telemetry.decode_errors += 1,
            }
        }
        reporter.borrow_mut().handle(r);
    };
    loop {
        tokio::select! {
            r = stream.next_batch(on_record) => {
                r.context("reading the ring buffer")?;
            }
            _ = snapshot_tick.tick() => {
                // Records already in the ring buffer first, so the model is as of the moment
                // the walk starts.
                stream.drain_now(on_record);
                snapshot_into(&shared)?;
            }
            _ = summary_tick.tick() => {
                let now = stats::snapshot(&http::lock(&shared).probes)?;
                let delta = now.since(&last);
                log::info!("{}", Summary(&delta));
                if delta.lost() > 0 {
                    log::warn!(
                        "{} events lost: the ring buffer was full (raise --wait-threshold or --hold-threshold)",
                        delta.lost()
                    );
                }
                reporter.borrow_mut().end_interval();
                last = now;
            }
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
        }
    }
    // Flush: what the kernel already sent, and a last snapshot, which also confirms or drops
    // alerts held after a loss; every alert raised is written as an incident before exit.
    server.abort();
    stream.drain_now(on_record);
    if let Err(e) = snapshot_into(&shared) {
        log::warn!("last snapshot at shutdown failed: {e:#}");
    }
    let raised: u64 = http::lock(&shared).sink.counts().values().sum();
    log::info!("faultline agent: stopping ({raised} alerts raised)");
    Ok(())
}

/// The userfaultfd scan (`uffd_gate`): attaches or detaches the ioctl hooks, and gives the
/// model the processes holding each context in scope.
fn scan_uffds(st: &mut AgentState, taken: u64) -> Result<()> {
    if !st.probes.ioctls_gated() {
        return Ok(());
    }
    let scan = st.probes.scan_uffds(std::time::Instant::now())?;
    match scan.switched {
        Some(true) => log::info!(
            "userfaultfd in use ({} descriptors): ioctl hooks attached",
            scan.files.len()
        ),
        Some(false) => log::info!(
            "no userfaultfd for {}: ioctl hooks detached",
            humantime::format_duration(crate::kernel::probes::uffd_gate::LINGER)
        ),
        None => {}
    }
    let held: Vec<(u32, u64)> = scan
        .files
        .iter()
        .filter(|f| st.scope.admits(f.tgid))
        .map(|f| (f.tgid, f.ctx))
        .collect();
    let waiters: Vec<(u32, u32, u64, u64)> = scan
        .waiters
        .iter()
        .copied()
        .filter(|(_, pid, _, _)| st.scope.admits(*pid))
        .collect();
    let alerts = st.feed.on_uffd_scan(&held, &waiters, taken);
    raise_all(st, alerts);
    Ok(())
}

/// Reads the kernel's per-task map into the feed. The lost-record counter is read first and
/// the time the walk starts (not its end) dates the snapshot.
/// Handlers whose first ioctl record was lost come back from the kernel's handler table; the
/// entries of tasks gone are deleted, as nothing in the kernel finds them at exit.
fn restore_uffd_handlers(st: &mut AgentState, taken: u64) -> Result<()> {
    let table = st.probes.uffd_handlers()?;
    if table.is_empty() {
        return Ok(());
    }
    let (alerts, gone) = st.feed.on_uffd_handlers(&table, taken);
    raise_all(st, alerts);
    if !gone.is_empty() {
        let deleted = st.probes.forget_uffd_handlers(&gone)?;
        log::debug!("deleted {deleted} userfaultfd handler entries of tasks gone");
    }
    Ok(())
}

fn snapshot_into(shared: &Shared) -> Result<()> {
    let mut st = http::lock(shared);
    let lost = st.probes.counters()?.get(Counter::RingbufFull);
    let taken = monotonic_ns();
    scan_uffds(&mut st, taken)?;
    restore_uffd_handlers(&mut st, taken)?;
    st.probes.prune_exited(proc_exists);
    let mut states = st.probes.task_states()?;
    st.task_entries = states.len();
    let stale = st
        .reclaimer
        .due(states.iter().map(|(tid, _)| *tid), proc_exists);
    if !stale.is_empty() {
        let deleted = st.probes.forget_tasks(&stale)?;
        st.reclaimer.deleted(deleted);
        log::debug!("deleted {deleted} kernel task entries of tasks gone from the host");
        states.retain(|(tid, _)| !stale.contains(tid));
    }
    if !st.scope.is_host() {
        states.retain(|(_, s)| st.scope.admits(s.tgid));
    }
    let alerts = st.feed.on_snapshot(&states, taken, lost);
    raise_all(&mut st, alerts);
    Ok(())
}
