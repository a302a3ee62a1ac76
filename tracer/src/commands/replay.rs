//! `faultline replay`: run a trace file through the engine and report what it detects.

use std::{
    fs::File,
    io::{self, BufRead, BufReader, Write},
    path::Path,
};

use anyhow::{Context as _, Result};
use serde::Serialize;

use crate::{
    core::detect::{Alert, Thresholds},
    core::engine::Engine,
    core::trace::TraceReader,
};

#[derive(Debug, Serialize)]
pub struct ReplayReport {
    pub events: u64,
    pub alerts: Vec<Alert>,
    /// Time of the first event, for relative times in text output.
    #[serde(skip)]
    pub first_ts_ns: Option<u64>,
}

/// Replays every event of `input`; malformed input is an error naming its line.
pub fn replay(input: impl BufRead, thresholds: Thresholds) -> Result<ReplayReport> {
    let mut engine = Engine::new(thresholds);
    let mut alerts = Vec::new();
    let mut first_ts_ns = None;
    for ev in TraceReader::new(input) {
        let ev = ev?;
        first_ts_ns.get_or_insert(ev.ts_ns);
        alerts.extend(engine.apply(&ev));
    }
    alerts.extend(engine.check());
    Ok(ReplayReport {
        events: engine.events(),
        alerts,
        first_ts_ns,
    })
}

pub fn replay_path(path: &Path, thresholds: Thresholds) -> Result<ReplayReport> {
    if path == Path::new("-") {
        return replay(io::stdin().lock(), thresholds).context("<stdin>");
    }
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    replay(BufReader::new(file), thresholds).with_context(|| path.display().to_string())
}

pub fn print_text(report: &ReplayReport, out: &mut impl Write) -> io::Result<()> {
    writeln!(
        out,
        "{} events, {} alerts",
        report.events,
        report.alerts.len()
    )?;
    for a in &report.alerts {
        let rel = a
            .ts_ns
            .saturating_sub(report.first_ts_ns.unwrap_or(a.ts_ns));
        writeln!(
            out,
            "\n[{}] {} at +{:.3}s\n  {}",
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
