//! `faultline record`: every event from the live kernel into a trace file (format v1).
//!
//! What it promises (see `docs/trace-format.md`): whole lines written at least once a second
//! (`sinks::trace_file`); a write error stops the recording at once, leaving the file on a complete line; a
//! `lost` record wherever the ring buffer dropped records; on stop, the probes are detached
//! first and the ring buffer is then drained to empty, within a bound; a second SIGTERM or
//! SIGINT ends at once.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use tokio::signal::unix::{signal, SignalKind};
use tracer_common::Counter;

use crate::{
    core::event::{Event, EventKind},
    kernel::decode::{DecodeError, Decoded},
    kernel::live::monotonic_ns,
    kernel::lock_names::Namer,
    kernel::probes::{ProbeOptions, Probes},
    kernel::stop_requests::StopRequests,
    kernel::stream::{EventStream, MAX_BATCH},
    sinks::trace_file::{self as file, TraceFile},
};

/// How often buffered lines are written out and the kernel's lost counter is read. Half a second,
/// so that "at most a second behind" holds even when a tick comes late.
const FLUSH_EVERY: Duration = Duration::from_millis(500);

/// How long the drain after detaching may take. The detached probes add nothing, so draining
/// ends when the buffer is empty; this only bounds a consumer too slow to get there.
const DRAIN_BOUND: Duration = Duration::from_secs(10);

pub struct RecordOptions {
    pub output: PathBuf,
    pub duration: Option<Duration>,
    pub probes: ProbeOptions,
}

/// What a recording produced.
#[derive(Debug)]
pub struct RecordReport {
    pub written: u64,
    /// Records the kernel dropped because the ring buffer was full (each loss is also a `lost`
    /// record in the trace).
    pub lost: u64,
    /// Records that did not decode (a build mismatch or corruption); skipped.
    pub decode_errors: u64,
}

/// The recording in progress: the file, and what was counted.
struct Recorder {
    out: TraceFile,
    written: u64,
    decode_errors: u64,
    /// The kernel's lost counter when a `lost` record last accounted for it.
    lost_reported: u64,
    /// A loss counted but not marked yet: the counter then, and how many records may still
    /// have been in the ring buffer when it was read. The marker goes after all of them (no
    /// record from before the gap may follow it): once that many have passed, or once the ring
    /// buffer has been seen empty.
    pending_loss: Option<(u64, usize)>,
    /// The first write error; the recording ends on it.
    failed: Option<file::WriteError>,
}

impl Recorder {
    fn take(&mut self, r: Result<Decoded, DecodeError>) {
        match r {
            Ok(d) => self.write(&d.event),
            Err(e) => {
                self.decode_errors += 1;
                if self.decode_errors <= 3 {
                    log::warn!("skipping record: {e}");
                }
            }
        }
    }

    fn write(&mut self, event: &Event) {
        if self.failed.is_some() {
            return;
        }
        match self.out.push(event) {
            Ok(()) => self.written += 1,
            Err(e) => self.failed = Some(e),
        }
        if let Some((total, left)) = self.pending_loss {
            match left.checked_sub(1) {
                Some(left) if left > 0 => self.pending_loss = Some((total, left)),
                _ => self.lost_up_to(total),
            }
        }
    }

    /// The kernel's lost counter now reads `total`: a marker is due for the difference.
    fn loss_counted(&mut self, total: u64, ring_records: usize) {
        let marked = self.pending_loss.map_or(self.lost_reported, |(t, _)| t);
        if total > marked {
            self.pending_loss = Some((total, ring_records));
        }
    }

    /// The ring buffer was just found empty: every record from before a counted loss is in.
    fn ring_empty(&mut self) {
        if let Some((total, _)) = self.pending_loss {
            self.lost_up_to(total);
        }
    }

    /// Writes a `lost` record for what the kernel dropped since the last one.
    fn lost_up_to(&mut self, lost_total: u64) {
        self.pending_loss = None;
        let count = lost_total.saturating_sub(self.lost_reported);
        if count == 0 || self.failed.is_some() {
            return;
        }
        self.lost_reported = lost_total;
        let marker = Event {
            // In time order with what came before: the loss happened after those events.
            ts_ns: self
                .out
                .latest_ts_ns()
                .unwrap_or_else(crate::kernel::live::monotonic_ns),
            tid: 0,
            pid: 0,
            comm: None,
            kind: EventKind::Lost { count },
        };
        if let Err(e) = self.out.push(&marker) {
            self.failed = Some(e);
        }
    }

    fn flush(&mut self) {
        if self.failed.is_none() {
            if let Err(e) = self.out.flush() {
                self.failed = Some(e);
            }
        }
    }

    /// The write error that ends the recording, if any.
    fn check(&mut self) -> Result<()> {
        match self.failed.take() {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }
}

fn lost_counter(probes: &Probes) -> Result<u64> {
    Ok(probes
        .counters()
        .context("reading the kernel's lost-record counter")?
        .get(Counter::RingbufFull))
}

/// Records the ring buffer can hold at most: every record takes an 8-byte header and at least 8
/// bytes of event. Once this many have been read, every record that was in it has.
fn ring_capacity_records(ring_bytes: u32) -> usize {
    ring_bytes as usize / 16
}

pub async fn run(opts: RecordOptions) -> Result<RecordReport> {
    // A trace is for replay, which wants every acquisition and release: record everything.
    let probe_opts = ProbeOptions {
        record_all: true,
        detail: crate::kernel::probes::Detail::Full,
        // Nothing here scans for userfaultfds, and a trace should miss no ioctl.
        uffd_ioctls: crate::kernel::probes::IoctlHooks::Always,
        ..opts.probes.clone()
    };
    let ring_records = ring_capacity_records(probe_opts.ring_bytes);
    let mut probes = Probes::load(&probe_opts)?;
    // Created only once the probes are up, so a failed start leaves no empty trace behind.
    let out = TraceFile::create(&opts.output)
        .with_context(|| format!("cannot create {}", opts.output.display()))?;
    let lost_before = lost_counter(&probes)?;
    let mut rec = Recorder {
        out,
        written: 0,
        decode_errors: 0,
        lost_reported: lost_before,
        pending_loss: None,
        failed: None,
    };
    let mut stream = EventStream::new(probes.take_events()?).context("ring buffer")?;
    let stops = StopRequests::install()?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing a SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing a SIGINT handler")?;
    eprintln!(
        "faultline: recording to {} (probes: {}){}",
        opts.output.display(),
        probes.attached(),
        opts.duration
            .map(|d| format!(" for {}", humantime::format_duration(d)))
            .unwrap_or_else(|| ", Ctrl-C to stop".into())
    );

    let deadline = async {
        match opts.duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(deadline);
    let mut tick = tokio::time::interval(FLUSH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            r = stream.next_batch(|r| rec.take(r)) => {
                if r.context("reading the ring buffer")? < MAX_BATCH {
                    rec.ring_empty();
                }
            }
            _ = tick.tick() => {
                // A quiet ring buffer wakes nothing: look here whether it is empty.
                if stream.drain_now(|r| rec.take(r)) < MAX_BATCH {
                    rec.ring_empty();
                }
                rec.loss_counted(lost_counter(&probes)?, ring_records);
                rec.flush();
            }
            _ = &mut deadline => break,
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
        }
        rec.check()?;
        // The signal branches wait for tokio's driver, which a busy worker delays.
        if stops.count() > 0 {
            break;
        }
    }

    // Stop: count the last losses while the counters can still be read, then detach every
    // program (dropping them does), so the drain below has an end. A record dropped in the
    // instant between reading the counter and detaching is not counted (`Probes` offers no
    // detach that keeps its maps readable).
    let lost_total = lost_counter(&probes)?;
    let profile = lock_profile(&probes, &opts.probes);
    drop(probes);
    let stop = stop_draining(&mut stream, &mut rec, &stops);
    rec.check()?;
    rec.lost_up_to(lost_total);
    for line in &profile {
        rec.write(line);
    }
    rec.flush();
    rec.check()?;
    stop?;
    Ok(RecordReport {
        written: rec.written,
        lost: lost_total.saturating_sub(lost_before),
        decode_errors: rec.decode_errors,
    })
}

/// Serialised samples per `lock_profile` line at most: well under the trace reader's line
/// limit (`MAX_LINE_BYTES`), whatever the profile holds.
const PROFILE_LINE_BYTES: usize = 48 * 1024;

/// The lock profile of the whole recording, named, as the trace's last lines (`replay --html`
/// draws it): its samples split over as many `lock_profile` lines as keep each line short, the
/// drops on the first; empty with the profile off. A profile that cannot be read costs the
/// trace only those lines, said in the log.
fn lock_profile(probes: &Probes, opts: &ProbeOptions) -> Vec<Event> {
    if !opts.profile.enabled {
        return Vec::new();
    }
    let read = || -> Result<Vec<Event>> {
        let counters = probes.aggregates()?.counters()?;
        let raw = probes.profile_maps()?.read(&counters);
        let profile = Namer::new().resolve(&raw);
        let ts_ns = monotonic_ns();
        let line = |samples, drops| Event {
            ts_ns,
            tid: 0,
            pid: 0,
            comm: None,
            kind: EventKind::LockProfile { samples, drops },
        };
        let mut lines = Vec::new();
        let mut chunk = Vec::new();
        let mut bytes = 0;
        let mut drops = Some(profile.drops);
        for s in profile.samples {
            let size = serde_json::to_vec(&s).map_or(0, |v| v.len());
            if !chunk.is_empty() && bytes + size > PROFILE_LINE_BYTES {
                lines.push(line(
                    std::mem::take(&mut chunk),
                    drops.take().unwrap_or_default(),
                ));
                bytes = 0;
            }
            bytes += size;
            chunk.push(s);
        }
        if !chunk.is_empty() || lines.is_empty() {
            lines.push(line(chunk, drops.take().unwrap_or_default()));
        }
        Ok(lines)
    };
    read()
        .inspect_err(|e| log::warn!("the trace ends without its lock profile: {e:#}"))
        .unwrap_or_default()
}

/// Drains the detached ring buffer to empty, within `DRAIN_BOUND`; a second SIGTERM or SIGINT
/// ends it at once. What was drained is kept either way. Synchronous: all work, no waiting.
fn stop_draining(stream: &mut EventStream, rec: &mut Recorder, stops: &StopRequests) -> Result<()> {
    let started = Instant::now();
    loop {
        let got = stream.drain_now(|r| rec.take(r));
        if got < MAX_BATCH || rec.failed.is_some() {
            return Ok(());
        }
        if started.elapsed() > DRAIN_BOUND {
            anyhow::bail!(
                "the ring buffer was still not empty {} after stopping; the trace ends at its \
                 last complete line without the rest",
                humantime::format_duration(DRAIN_BOUND)
            );
        }
        // Between batches, a second stop request ends the drain.
        if stops.again() {
            anyhow::bail!(SECOND_SIGNAL);
        }
    }
}

const SECOND_SIGNAL: &str = "stopped by a second signal before the ring buffer was drained; the \
                             trace ends at its last complete line without the rest";
