//! `faultline replay`: run a trace file through the engine and report what it detects.
//!
//! One driver (`drive`) opens the trace, reads it (strictly, or setting a cut last line aside),
//! runs the engine and hands each step to its caller; the text and JSON report and the pictures
//! (`sinks::report::replay`) are both built on it.

use std::{
    fs::File,
    io::{self, BufRead, BufReader, Read as _, Write},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};
use serde::Serialize;

use crate::{
    core::detect::{Alert, Thresholds},
    core::engine::Engine,
    core::event::{Event, EventKind},
    core::exposure::Exposure,
    core::lock_profile::Profile,
    core::trace::{TraceError, TraceReader},
    core::views::GraphView,
    sinks::report::replay::{AlertPicture, Pictures},
};

/// How a trace is read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Reading {
    /// A last line cut short (a recorder stopped mid-write) is set aside with a warning.
    #[default]
    Lenient,
    /// Every line must be a whole event (`--strict`).
    Strict,
}

/// Where a trace comes from: a file, standard input, or bytes already read (standard input kept
/// for a second pass).
pub enum Input {
    File(PathBuf),
    Stdin,
    Bytes(Vec<u8>),
}

impl Input {
    /// `-` is standard input.
    pub fn new(path: &Path) -> Self {
        if path == Path::new("-") {
            Self::Stdin
        } else {
            Self::File(path.to_owned())
        }
    }

    /// An input that can be read more than once: standard input is read into memory.
    pub fn rereadable(self) -> Result<Self> {
        match self {
            Self::Stdin => {
                let mut bytes = Vec::new();
                io::stdin()
                    .lock()
                    .read_to_end(&mut bytes)
                    .context("reading <stdin>")?;
                Ok(Self::Bytes(bytes))
            }
            other => Ok(other),
        }
    }

    /// What errors and warnings call it.
    pub fn name(&self) -> String {
        match self {
            Self::File(p) => p.display().to_string(),
            Self::Stdin | Self::Bytes(_) => "<stdin>".into(),
        }
    }

    fn open(&self) -> Result<Box<dyn BufRead + '_>> {
        Ok(match self {
            Self::File(p) => Box::new(BufReader::new(
                File::open(p).with_context(|| format!("cannot open {}", p.display()))?,
            )),
            Self::Stdin => Box::new(io::stdin().lock()),
            Self::Bytes(b) => Box::new(&b[..]),
        })
    }
}

/// What a replay read, besides what the caller took from each step.
pub struct Replayed {
    /// The engine after the last event and the final check.
    pub engine: Engine,
    pub first_ts_ns: Option<u64>,
    /// Records the recorder's source dropped (the sum of the `lost` records' counts).
    pub lost: u64,
    /// When the first `lost` record came: alerts from then on may rest on missing records.
    pub first_loss_ts_ns: Option<u64>,
    /// The last line set aside because it was cut short (lenient reading only).
    pub cut_line: Option<TraceError>,
}

fn reader<R: BufRead>(input: R, reading: Reading) -> TraceReader<R> {
    match reading {
        Reading::Lenient => TraceReader::lenient(input),
        Reading::Strict => TraceReader::new(input),
    }
}

/// Reads `input` and runs the engine over it: `on_step` gets each event with the alerts it
/// raised, then `None` with the alerts of the final check. Malformed input is an error naming
/// its line.
pub fn drive(
    input: impl BufRead,
    reading: Reading,
    thresholds: Thresholds,
    mut on_step: impl FnMut(&Engine, Option<&Event>, Vec<Alert>),
) -> Result<Replayed, TraceError> {
    let mut engine = Engine::new(thresholds);
    let mut reader = reader(input, reading);
    let mut first_ts_ns = None;
    let mut lost = 0u64;
    let mut first_loss_ts_ns = None;
    for ev in reader.by_ref() {
        let ev = ev?;
        first_ts_ns.get_or_insert(ev.ts_ns);
        if let EventKind::Lost { count } = ev.kind {
            lost = lost.saturating_add(count);
            first_loss_ts_ns.get_or_insert(ev.ts_ns);
        }
        let alerts = engine.apply(&ev);
        on_step(&engine, Some(&ev), alerts);
    }
    // Alerts still held after a loss that no snapshot confirmed (a `record` trace has no
    // snapshots) are reported all the same: the report says they may rest on lost records.
    let mut alerts = engine.held().to_vec();
    alerts.extend(engine.check());
    on_step(&engine, None, alerts);
    Ok(Replayed {
        cut_line: reader.into_cut_line(),
        engine,
        first_ts_ns,
        lost,
        first_loss_ts_ns,
    })
}

/// `drive` over a named input, with the input's name on errors and the cut-line warning on
/// stderr.
fn drive_input(
    input: &Input,
    reading: Reading,
    thresholds: Thresholds,
    on_step: impl FnMut(&Engine, Option<&Event>, Vec<Alert>),
) -> Result<Replayed> {
    let name = input.name();
    let replayed =
        drive(input.open()?, reading, thresholds, on_step).with_context(|| name.clone())?;
    if let Some(cut) = &replayed.cut_line {
        eprintln!("faultline: warning: {}", cut_warning(&name, cut));
    }
    Ok(replayed)
}

/// One line: which line, that it was ignored, that `--strict` refuses.
pub fn cut_warning(name: &str, cut: &TraceError) -> String {
    format!(
        "{name}: {cut}; ignored it and replayed the complete lines before it (--strict refuses \
         such a file)"
    )
}

#[derive(Debug, Serialize)]
pub struct ReplayReport {
    pub events: u64,
    pub alerts: Vec<Alert>,
    /// Records lost while recording (the sum of the trace's `lost` records).
    pub lost: u64,
    /// When the first loss happened; alerts from then on may rest on missing records.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_loss_ts_ns: Option<u64>,
    /// What a reader of the alerts should know: records lost, a cut last line set aside.
    pub warnings: Vec<String>,
    /// Time of the first event, for relative times in text output.
    #[serde(skip)]
    pub first_ts_ns: Option<u64>,
}

/// Replays every event of `input`, setting a cut last line aside; malformed input is an error
/// naming its line.
pub fn replay(input: impl BufRead, thresholds: Thresholds) -> Result<ReplayReport> {
    report(input, "<input>", Reading::Lenient, thresholds)
}

fn report(
    input: impl BufRead,
    name: &str,
    reading: Reading,
    thresholds: Thresholds,
) -> Result<ReplayReport> {
    let mut alerts = Vec::new();
    let replayed = drive(input, reading, thresholds, |_, _, a| alerts.extend(a))?;
    Ok(into_report(replayed, alerts, name))
}

fn into_report(replayed: Replayed, alerts: Vec<Alert>, name: &str) -> ReplayReport {
    let mut warnings = Vec::new();
    if replayed.lost > 0 {
        warnings.push(loss_warning(&replayed));
    }
    if let Some(cut) = &replayed.cut_line {
        warnings.push(cut_warning(name, cut));
    }
    ReplayReport {
        events: replayed.engine.events(),
        alerts,
        lost: replayed.lost,
        first_loss_ts_ns: replayed.first_loss_ts_ns,
        warnings,
        first_ts_ns: replayed.first_ts_ns,
    }
}

fn loss_warning(r: &Replayed) -> String {
    let at = r
        .first_loss_ts_ns
        .map(|t| {
            format!(
                " from +{:.3}s on",
                t.saturating_sub(r.first_ts_ns.unwrap_or(t)) as f64 / 1e9
            )
        })
        .unwrap_or_default();
    format!(
        "{} records were lost while recording (the ring buffer was full): alerts raised{at} may \
         rest on missing records, and tasks seen before a loss count as unknown until their next \
         event",
        r.lost
    )
}

/// `faultline replay FILE` (`-`: standard input).
pub fn replay_path(path: &Path, reading: Reading, thresholds: Thresholds) -> Result<ReplayReport> {
    let input = Input::new(path);
    let mut alerts = Vec::new();
    let replayed = drive_input(&input, reading, thresholds, |_, _, a| alerts.extend(a))?;
    Ok(into_report(replayed, alerts, &input.name()))
}

/// `faultline replay --html/--svg`: the alerts with the graph at each, and a timeline of the
/// tasks involved, read in a second pass (standard input is kept in memory for it).
pub fn pictures(path: &Path, reading: Reading, thresholds: Thresholds) -> Result<Pictures> {
    let input = Input::new(path).rereadable()?;
    let mut shots: Vec<AlertPicture> = Vec::new();
    let mut lock_profile = None;
    let replayed = drive_input(&input, reading, thresholds, |engine, ev, alerts| {
        if let Some(Event {
            kind: EventKind::LockProfile { samples, drops },
            ..
        }) = ev
        {
            // A profile may span several lines: their samples join, their drops add up.
            let p = lock_profile.get_or_insert_with(Profile::default);
            p.samples.extend(samples.iter().cloned());
            p.drops.add(drops);
        }
        shots.extend(AlertPicture::at(engine, alerts))
    })?;
    let engine = &replayed.engine;
    let end_view = GraphView::build(
        engine.model(),
        &engine.graph(),
        engine.now_ns(),
        &Exposure::Raw,
    );
    let mut timeline = Pictures::timeline_builder(&shots, &end_view);
    // The second pass reads what the first did (a cut line was reported once already); it
    // needs the events only, not the engine.
    for ev in reader(input.open()?, reading) {
        timeline.apply(&ev.with_context(|| input.name())?);
    }
    Ok(Pictures::new(
        engine.events(),
        replayed.first_ts_ns.unwrap_or(0),
        replayed.lost,
        shots,
        end_view,
        timeline,
    )
    .with_lock_profile(lock_profile))
}

pub fn print_text(report: &ReplayReport, out: &mut impl Write) -> io::Result<()> {
    writeln!(
        out,
        "{} events, {} alerts",
        report.events,
        report.alerts.len()
    )?;
    for w in &report.warnings {
        writeln!(out, "warning: {w}")?;
    }
    for a in &report.alerts {
        let rel = a
            .ts_ns
            .saturating_sub(report.first_ts_ns.unwrap_or(a.ts_ns));
        let after_loss = if report.first_loss_ts_ns.is_some_and(|t| a.ts_ns >= t) {
            " (after a loss of records)"
        } else {
            ""
        };
        writeln!(
            out,
            "\n[{}] {} at +{:.3}s{after_loss}\n  {}",
            serde_json::to_value(a.severity)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
            a.kind.as_str(),
            rel as f64 / 1e9,
            a.summary
        )?;
    }
    Ok(())
}
