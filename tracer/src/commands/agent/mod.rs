//! `faultline agent`: load, attach, drain the ring buffer, report. Wiring only; each job has
//! its file:
//!
//! - `state`: what the agent's tasks share (the live feed, the probes, the alert sink) and the
//!   live graph it hands out;
//! - `telemetry`: what the agent counts itself; `metrics_input`: what a scrape shows, with
//!   `process_faults`: its /proc part, cached and read off the lock;
//! - `view`: the views the HTTP sinks read (`sinks::agent_view`);
//! - `snapshot`: the kernel's per-task map and the host's userfaultfds read into the feed;
//! - `log_lines`: the lines logged for slow records;
//! - `shutdown`: detach, drain within a bound, last snapshot;
//! - `journal`: `--record`, every event the engine applied, for `replay`;
//! - `exposure`: raw addresses or opaque ids in all of the above (`--expose-addresses`).

pub mod exposure;
mod journal;
mod lock_profile;
mod log_lines;
pub mod metrics_input;
mod process_faults;
mod profile_ageing;
mod shutdown;
mod snapshot;
pub mod state;
pub mod telemetry;
mod user_lock_time;
mod user_profile;
mod view;

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
    kernel::decode::{DecodeError, Decoded},
    kernel::live::{monotonic_ns, LiveFeed},
    kernel::probes::{kernel::KernelBtf, ProbeOptions, Probes},
    kernel::procfs,
    kernel::reclaim::TaskEntryReclaimer,
    kernel::scope::{Scope, ScopeFilter},
    kernel::stats::{self, Summary},
    kernel::stop_requests::StopRequests,
    kernel::stream::EventStream,
    sinks::{
        agent_view::Agent, alerts::AlertSink, http, metrics::SeriesMemory, unix_api::UnixApi, web,
    },
};

use self::{
    journal::Journal,
    log_lines::Reporter,
    process_faults::ProcessFaults,
    shutdown::{DrainBound, DrainEnd},
    snapshot::{scan_uffds, snapshot_into},
    state::{lock, AgentState, Shared},
    telemetry::Telemetry,
};

pub use self::log_lines::describe;

/// How often the agent looks at the kernel's lost-record counter between snapshots.
const LOSS_POLL: Duration = Duration::from_millis(100);

pub struct AgentOptions {
    pub probes: ProbeOptions,
    pub thresholds: Thresholds,
    /// Address of the HTTP API.
    pub listen: SocketAddr,
    /// The Prometheus exporter-toolkit web config (TLS, basic auth, headers), if any.
    pub web_config: Option<PathBuf>,
    /// Where incidents are written; `None` keeps alerts in memory only.
    pub state_dir: Option<PathBuf>,
    pub max_incidents: usize,
    /// How often the kernel's per-task map is read into the engine and the timed detectors run.
    pub snapshot_interval: Duration,
    pub summary_interval: Duration,
    /// How long a lock-profile aggregate stays unchanged before it leaves the kernel's table.
    pub profile_idle_after: Duration,
    /// Most slow-event lines logged per summary interval; the rest are counted.
    pub max_log_lines: u32,
    /// Turn on the kernel's BPF run-time statistics for the probes' self-metrics.
    pub self_metrics: bool,
    /// Which processes to report on: the whole host, or this agent's network namespace.
    pub scope: Scope,
    /// Write every event the engine applies to this trace file (`--record`).
    pub record: Option<PathBuf>,
    /// Raw kernel and user addresses in the API, alerts, incidents and logs instead of opaque
    /// ids; refused unless `listen` is loopback.
    pub expose_addresses: bool,
}

pub async fn run(opts: AgentOptions) -> Result<()> {
    // First: a refused --expose-addresses must leave nothing loaded or claimed.
    let exposure = exposure::choose(opts.expose_addresses, &opts.listen)?;
    // Before anything is loaded: a second agent must leave the first one's programs alone.
    // Before anything is loaded or claimed: a web config that does not load keeps the agent
    // from starting (serving without the TLS or authentication it asks for would be worse).
    let web = web::Web::load(opts.web_config.as_deref())?;
    let claim = single::claim(&single::run_dir())?;
    // Before the start line: a stop request that follows it must find the handlers in place.
    let stops = StopRequests::install()?;
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
    let aggregates = Arc::new(probes.aggregates()?);
    let lock_profile = Arc::new(lock_profile::LockProfile::new(
        probes.profile_maps()?,
        aggregates.clone(),
        opts.probes.profile,
        opts.profile_idle_after,
    ));
    let user_profile = Arc::new(user_profile::UserLockProfile::new(
        probes.user_profile_maps()?,
        aggregates.clone(),
        lock_profile.clone(),
    ));
    // Decided once: what the agent does without each is fixed for its life, and the log says
    // so here, where an operator reading why an alert lacks a name will look.
    let features = crate::kernel::privileges::probe();
    for line in features.iter().filter_map(|a| a.missing_line()) {
        log::warn!("{line}");
    }
    let listener = tokio::net::TcpListener::bind(opts.listen)
        .await
        .with_context(|| format!("cannot listen on {} (--listen)", opts.listen))?;
    let journal = opts.record.as_deref().map(Journal::create).transpose()?;
    let exposed = exposure.is_raw();
    let feed = LiveFeed::new(
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
    )
    .with_exposure(exposure.clone());
    let shared: Shared = Arc::new(Mutex::new(AgentState {
        feed: if journal.is_some() {
            feed.with_journal()
        } else {
            feed
        },
        journal,
        sink: AlertSink::new(opts.state_dir.clone(), opts.max_incidents)?,
        probes,
        btf: KernelBtf::load()?,
        telemetry: Telemetry::default(),
        series: SeriesMemory::default(),
        kernel_release: procfs::kernel_release(),
        task_entries: 0,
        // Every 16 snapshots: every 4 s at the default interval.
        reclaimer: TaskEntryReclaimer::new(16),
        scope: ScopeFilter::new(opts.scope)?,
        exposure: exposure.clone(),
        process_faults: Arc::new(ProcessFaults::new(ScopeFilter::new(opts.scope)?)),
        aggregates,
        lock_profile,
        features,
        user_lock_time: Default::default(),
        user_profile,
        futex_entries: 0,
        futex_reclaimer: TaskEntryReclaimer::new(16),
    }));
    // Per-program run time for the self-metrics, only when asked: the kernel counts it only
    // while someone holds this fd (undone when the agent exits), and counting costs two clock
    // reads on every run of every program.
    let _stats = if opts.self_metrics {
        match stats::enable_run_time() {
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
    if let Some(warning) = web::exposure_warning(local, &web) {
        log::warn!("{warning}");
    }
    let scheme = if web.current().tls.is_some() {
        "https"
    } else {
        "http"
    };
    let server = {
        let agent: Agent = shared.clone();
        web::spawn(
            listener,
            http::router(agent),
            web.clone(),
            web::Limits::default(),
        )
        .context("serving the HTTP API")?
    };
    // The same API where only this agent's user and root can reach it: what diagnose trusts.
    let mut unix_api = UnixApi::bind(claim.dir()).with_context(|| {
        format!(
            "cannot listen on {}",
            claim.dir().join(crate::sinks::unix_api::SOCKET).display()
        )
    })?;
    let unix_server = unix_api.serve(http::router(Arc::new(view::LocalAgent(shared.clone()))));
    // Before saying it is attached: a userfaultfd already open gets its ioctl hooks now.
    scan_uffds(&mut lock(&shared), monotonic_ns())?;
    log::info!(
        "faultline agent: probes attached ({}, detail {}), API on {}://{}{} and {}, scope {}, wait threshold {}, hold threshold {}, stall threshold {}",
        attached,
        detail,
        scheme,
        local,
        if exposed { " (raw addresses)" } else { "" },
        unix_api.path().display(),
        match opts.scope {
            Scope::Host => "host",
            Scope::Netns => "netns",
        },
        humantime::format_duration(opts.probes.wait_threshold),
        humantime::format_duration(opts.probes.hold_threshold),
        humantime::format_duration(opts.thresholds.stall),
    );
    let mut last = stats::snapshot(&lock(&shared).probes)?;
    let mut summary_tick = tokio::time::interval(opts.summary_interval);
    summary_tick.tick().await;
    let mut snapshot_tick = tokio::time::interval(opts.snapshot_interval);
    snapshot_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The ring-buffer future borrows the reporter for as long as it waits, and the summary tick
    // needs it too; both run on this one task, so a RefCell is enough.
    let reporter = RefCell::new(Reporter::new(opts.max_log_lines, exposure));
    // Losses are noticed within a tenth of a second, not at the next snapshot: the tasks they
    // may affect show as unknown from then until a snapshot taken after the loss confirms
    // them. (Noticed only by the snapshot, the same pass would mark and confirm them, and
    // nobody would ever see them unknown.) One counter lookup, off the lock; the lock is
    // taken only when the count moved.
    let aggregates = lock(&shared).aggregates.clone();
    // The lock profile's ageing looks twice per idle period, off the async workers.
    let mut ageing_tick = tokio::time::interval(opts.profile_idle_after / 2);
    ageing_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let ageing_profile = lock(&shared).lock_profile.clone();
    let mut loss_tick = tokio::time::interval(LOSS_POLL);
    loss_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut lost_seen = 0;
    let on_record = |r: Result<Decoded, DecodeError>| {
        // Out of scope (another network namespace's process): not ours to report.
        if lock(&shared).on_record(&r) {
            reporter.borrow_mut().handle(r);
        }
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
            _ = ageing_tick.tick() => {
                let profile = ageing_profile.clone();
                // Fire and forget: the profile's own lock orders it with scrapes.
                drop(tokio::task::spawn_blocking(move || profile.age()));
            }
            _ = loss_tick.tick() => {
                match aggregates.counter(Counter::RingbufFull) {
                    Ok(total) if total != lost_seen => {
                        lost_seen = total;
                        lock(&shared).note_lost(total);
                    }
                    Ok(_) => {}
                    // The snapshot reads the same counter under the lock and says why it failed.
                    Err(e) => log::debug!("reading the lost-record counter: {e}"),
                }
            }
            _ = summary_tick.tick() => {
                let now = stats::snapshot(&lock(&shared).probes)?;
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
        // The signal branches wait for tokio's driver, which a busy worker delays.
        if stops.count() > 0 {
            break;
        }
    }
    server.abort();
    unix_server.abort();
    stop(&shared, &mut stream, on_record, &opts, &stops);
    let raised: u64 = lock(&shared).sink.counts().values().sum();
    log::info!("faultline agent: stopping ({raised} alerts raised)");
    Ok(())
}

/// The end of the agent's life: what the kernel already sent, a last userfaultfd scan while the
/// hooks can still follow it, then the probes detached (no new record), the ring buffer drained
/// to empty within a bound, and a last snapshot, which also confirms or drops alerts held after
/// a loss. Every alert raised is written as an incident before exit. A second stop request
/// during the drain ends it at once, without the last snapshot.
fn stop(
    shared: &Shared,
    stream: &mut EventStream,
    on_record: impl Fn(Result<Decoded, DecodeError>),
    opts: &AgentOptions,
    stops: &StopRequests,
) {
    stream.drain_now(&on_record);
    if let Err(e) = scan_uffds(&mut lock(shared), monotonic_ns()) {
        log::warn!("last userfaultfd scan at shutdown failed: {e:#}");
    }
    let detached = lock(shared).probes.detach_all();
    let drained = shutdown::drain(
        || stream.drain_now(&on_record),
        DrainBound::for_ring(opts.probes.ring_bytes),
        || stops.again(),
    );
    log::info!("faultline agent: {detached} probes detached; {drained}");
    if drained.end == DrainEnd::Interrupted {
        log::warn!("second stop request: exiting without the last snapshot");
        return;
    }
    if let Err(e) = snapshot_into(shared) {
        log::warn!("last snapshot at shutdown failed: {e:#}");
    }
    let mut st = lock(shared);
    st.journal_out();
    if let Some(j) = st.journal.as_mut() {
        j.flush();
    }
}
