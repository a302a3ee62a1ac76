//! `faultline agent`: load, attach, drain the ring buffer, report.

use std::{cell::RefCell, time::Duration};

use anyhow::{Context as _, Result};

use crate::{
    decode::{DecodeError, Decoded},
    event::EventKind,
    probes::{ProbeOptions, Probes},
    stats::{self, Summary},
    stream::EventStream,
};

pub struct AgentOptions {
    pub probes: ProbeOptions,
    pub summary_interval: Duration,
    /// Most slow-event lines logged per summary interval; the rest are counted.
    pub max_log_lines: u32,
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

pub async fn run(opts: AgentOptions) -> Result<()> {
    let mut probes = Probes::load(&opts.probes)?;
    let mut stream = EventStream::new(probes.take_events()?).context("ring buffer")?;
    log::info!(
        "faultline agent: probes attached ({}), wait threshold {}, hold threshold {}",
        probes.attached(),
        humantime::format_duration(opts.probes.wait_threshold),
        humantime::format_duration(opts.probes.hold_threshold)
    );
    let mut last = stats::snapshot(&probes)?;
    let mut tick = tokio::time::interval(opts.summary_interval);
    tick.tick().await;
    // The ring-buffer future borrows the reporter for as long as it waits, and the summary tick
    // needs it too; both run on this one task, so a RefCell is enough.
    let reporter = RefCell::new(Reporter::new(opts.max_log_lines));
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing a SIGTERM handler")?;
    loop {
        tokio::select! {
            r = stream.next_batch(|r| reporter.borrow_mut().handle(r)) => {
                r.context("reading the ring buffer")?;
            }
            _ = tick.tick() => {
                let now = stats::snapshot(&probes)?;
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
            _ = tokio::signal::ctrl_c() => break,
            _ = sigterm.recv() => break,
        }
    }
    log::info!("faultline agent: stopping");
    Ok(())
}
