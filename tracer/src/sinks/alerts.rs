//! The alert sink: each alert logged once, counted, kept for the API, and written as an
//! incident (the alert and the graph at detection, JSON + DOT + a self-contained HTML page)
//! into the state directory.

use std::{
    collections::{BTreeMap, VecDeque},
    fs,
    io::Write as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};
use serde::Serialize;

use crate::{
    core::detect::{Alert, AlertKind, Confidence, Severity},
    core::views::GraphView,
    core::workload::Workload,
};

/// Alerts kept in memory for `/api/alerts`; older ones stay on disk as incidents.
const RECENT: usize = 1000;
/// Distinct (workload, kind) counters kept; past this, new workloads count as "other".
const MAX_WORKLOADS: usize = 4096;

/// An alert as the agent reports it: with the cgroup and workload of its first task (the one
/// the alert is about), when the graph knows them.
#[derive(Clone, Debug, Serialize)]
pub struct RaisedAlert {
    #[serde(flatten)]
    pub alert: Alert,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workload: Option<Workload>,
}

impl RaisedAlert {
    /// The workload label the alert counts under (see `Attribution::label`).
    pub fn workload_label(&self) -> String {
        match (&self.workload, self.cgroup.as_deref()) {
            (Some(w), _) => w.to_string(),
            (None, Some("/")) => "host".into(),
            (None, Some(c)) => format!("cgroup:{c}"),
            (None, None) => "unknown".into(),
        }
    }
}

#[derive(Serialize)]
struct Incident<'a> {
    alert: &'a RaisedAlert,
    graph: &'a GraphView,
}

pub struct AlertSink {
    recent: VecDeque<RaisedAlert>,
    counts: BTreeMap<(AlertKind, Confidence), u64>,
    by_workload: BTreeMap<(String, AlertKind), u64>,
    state_dir: Option<PathBuf>,
    /// Incident files (JSON paths) in the state directory, oldest first.
    incidents: VecDeque<PathBuf>,
    max_incidents: usize,
    seq: u64,
}

fn existing_incidents(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| {
                    p.extension().is_some_and(|x| x == "json")
                        && p.file_name()
                            .and_then(|n| n.to_str())
                            .is_some_and(|n| n.starts_with("incident-"))
                })
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
}

impl AlertSink {
    /// `state_dir`: where incidents go (created if missing); `None` keeps alerts in memory only.
    pub fn new(state_dir: Option<PathBuf>, max_incidents: usize) -> Result<Self> {
        let incidents = match &state_dir {
            Some(dir) => {
                fs::create_dir_all(dir)
                    .with_context(|| format!("cannot create state directory {}", dir.display()))?;
                existing_incidents(dir).into()
            }
            None => VecDeque::new(),
        };
        Ok(Self {
            recent: VecDeque::new(),
            counts: AlertKind::ALL
                .iter()
                .flat_map(|k| Confidence::ALL.iter().map(move |c| ((*k, *c), 0)))
                .collect(),
            by_workload: BTreeMap::new(),
            state_dir,
            incidents,
            max_incidents,
            seq: 0,
        })
    }

    pub fn raise(&mut self, alert: Alert, graph: &GraphView) {
        // A probable alert says so in its first words, and what it rests on after them.
        let qualified = match alert.confidence {
            Confidence::Certain => alert.summary.clone(),
            Confidence::Probable => format!(
                "(probable) {} [inferred: {}]",
                alert.summary,
                alert.evidence.join("; ")
            ),
        };
        match alert.severity {
            Severity::Critical => log::error!("{}: {qualified}", alert.kind.as_str()),
            Severity::Warning => log::warn!("{}: {qualified}", alert.kind.as_str()),
        }
        *self
            .counts
            .entry((alert.kind, alert.confidence))
            .or_default() += 1;
        let task = alert
            .tids
            .first()
            .and_then(|tid| graph.tasks.iter().find(|t| t.tid == *tid));
        let alert = RaisedAlert {
            cgroup: task.and_then(|t| t.cgroup.clone()),
            workload: task.and_then(|t| t.workload.clone()),
            alert,
        };
        let mut key = (alert.workload_label(), alert.alert.kind);
        if self.by_workload.len() >= MAX_WORKLOADS && !self.by_workload.contains_key(&key) {
            key.0 = "other".into();
        }
        *self.by_workload.entry(key).or_default() += 1;
        if let Err(e) = self.write_incident(&alert, graph) {
            log::warn!("incident not written: {e:#}");
        }
        if self.recent.len() == RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back(alert);
    }

    fn write_incident(&mut self, raised: &RaisedAlert, graph: &GraphView) -> Result<()> {
        let Some(dir) = &self.state_dir else {
            return Ok(());
        };
        let alert = &raised.alert;
        self.seq += 1;
        let stem = format!(
            "incident-{:020}-{:04}-{}",
            alert.ts_ns,
            self.seq % 10_000,
            alert.kind.as_str()
        );
        let json = dir.join(format!("{stem}.json"));
        let dot = dir.join(format!("{stem}.dot"));
        let mut f = fs::File::create(&json).with_context(|| json.display().to_string())?;
        serde_json::to_writer_pretty(
            &mut f,
            &Incident {
                alert: raised,
                graph,
            },
        )
        .with_context(|| json.display().to_string())?;
        f.write_all(b"\n")?;
        fs::write(&dot, graph.to_dot()).with_context(|| dot.display().to_string())?;
        let html = dir.join(format!("{stem}.html"));
        fs::write(&html, crate::sinks::report::incident_html(alert, graph))
            .with_context(|| html.display().to_string())?;
        self.incidents.push_back(json);
        // Bounded disk use: the oldest incidents go first.
        while self.incidents.len() > self.max_incidents {
            if let Some(old) = self.incidents.pop_front() {
                let _ = fs::remove_file(&old);
                let _ = fs::remove_file(old.with_extension("dot"));
                let _ = fs::remove_file(old.with_extension("html"));
            }
        }
        Ok(())
    }

    pub fn recent(&self) -> impl Iterator<Item = &RaisedAlert> {
        self.recent.iter()
    }

    /// Alerts raised, by (workload label, kind).
    pub fn counts_by_workload(&self) -> &BTreeMap<(String, AlertKind), u64> {
        &self.by_workload
    }

    /// Alerts raised by kind and confidence (every pair present from the start, at 0).
    pub fn counts(&self) -> &BTreeMap<(AlertKind, Confidence), u64> {
        &self.counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{core::engine::Engine, core::exposure::Exposure, core::views::GraphView};

    fn alert(ts: u64) -> Alert {
        Alert {
            kind: AlertKind::Stall,
            severity: Severity::Warning,
            ts_ns: ts,
            tids: vec![1],
            summary: "s".into(),
            confidence: crate::core::detect::Confidence::Certain,
            evidence: Vec::new(),
            locks: Vec::new(),
        }
    }

    #[test]
    fn incidents_are_written_counted_and_bounded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut sink = AlertSink::new(Some(dir.path().to_path_buf()), 2).expect("sink");
        let e = Engine::new(Default::default());
        let view = GraphView::build(e.model(), &e.graph(), 0, &Exposure::Raw);
        for ts in 1..=3 {
            sink.raise(alert(ts), &view);
        }
        assert_eq!(sink.counts()[&(AlertKind::Stall, Confidence::Certain)], 3);
        assert_eq!(sink.recent().count(), 3);
        let files = existing_incidents(dir.path());
        assert_eq!(
            files.len(),
            2,
            "only the newest two incidents stay: {files:?}"
        );
        let text = fs::read_to_string(&files[1]).expect("read incident");
        let doc: serde_json::Value = serde_json::from_str(&text).expect("incident is JSON");
        assert_eq!(doc["alert"]["ts_ns"], 3);
        assert!(doc["graph"]["edges"].is_array());
        assert!(files[1].with_extension("dot").exists());
        assert!(files[1].with_extension("html").exists());
        let html_files = fs::read_dir(dir.path())
            .expect("state dir")
            .filter_map(Result::ok)
            .filter(|e| e.path().extension().is_some_and(|x| x == "html"))
            .count();
        assert_eq!(
            html_files, 2,
            "the oldest incident's page is deleted with it"
        );
    }

    #[test]
    fn an_alert_carries_the_workload_of_its_first_task_and_counts_under_it() {
        use crate::core::{views::TaskView, workload::Attribution};
        let mut sink = AlertSink::new(None, 10).expect("sink");
        let a = Attribution::from_path("/system.slice/db.service");
        let task = |tid, pid| TaskView {
            tid,
            pid,
            comm: None,
            blocked: None,
            holds: Vec::new(),
            cgroup: Some(a.cgroup.clone()),
            workload: a.workload.clone(),
            state_unknown: false,
        };
        let view = GraphView {
            now_ns: 0,
            tasks: vec![task(1, 1)],
            edges: Vec::new(),
            cycles: Vec::new(),
            uffds: Vec::new(),
        };
        sink.raise(alert(1), &view);
        let raised = sink.recent().next().expect("kept");
        assert_eq!(raised.cgroup.as_deref(), Some("/system.slice/db.service"));
        let json = serde_json::to_value(raised).expect("JSON");
        assert_eq!(json["workload"]["unit"], "db.service", "{json}");
        assert_eq!(
            json["kind"], "stall",
            "the alert's own fields stay flat: {json}"
        );
        assert_eq!(
            sink.counts_by_workload()
                .get(&("systemd:db.service".to_string(), AlertKind::Stall)),
            Some(&1)
        );
    }
}
