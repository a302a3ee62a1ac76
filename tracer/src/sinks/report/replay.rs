//! `faultline replay --html/--svg`: a replayed trace drawn. The replay driver
//! (`commands::replay`) hands over each alert with the graph when it was raised, the graph at
//! the end, and the events again for the timeline of the tasks involved; this module only draws.

use std::{collections::BTreeSet, fmt::Write as _};

use crate::{
    core::detect::{Alert, AlertKind, Severity},
    core::engine::Engine,
    core::exposure::Exposure,
    core::lock_profile::Profile,
    core::views::GraphView,
};

use super::{
    flame, html,
    scene::{Scene, MAX_NODES},
    svg,
    text::{escape, short_duration},
    timeline::{Timeline, TimelineBuilder},
};

/// Alerts listed open in the summary; more start folded.
const FOLD_ALERTS: usize = 12;
/// Moments of detection drawn (each a graph).
const MAX_PICTURES: usize = 20;
/// Alerts of one moment written out in full above its graph.
const SPELLED_OUT: usize = 3;

/// An alert and the graph when it was raised.
pub struct AlertPicture {
    pub alert: Alert,
    pub view: GraphView,
}

impl AlertPicture {
    /// The alerts `engine` just raised, each with the graph now, as the agent's incident files
    /// keep it.
    pub fn at(engine: &Engine, alerts: Vec<Alert>) -> impl Iterator<Item = Self> + '_ {
        alerts.into_iter().map(|alert| Self {
            alert,
            view: GraphView::build(
                engine.model(),
                &engine.graph(),
                engine.now_ns(),
                &Exposure::Raw,
            ),
        })
    }
}

pub struct Pictures {
    pub events: u64,
    pub first_ts_ns: u64,
    /// Records lost while recording (the trace's `lost` records).
    pub lost: u64,
    pub alerts: Vec<AlertPicture>,
    /// The graph at the end of the trace.
    pub end_view: GraphView,
    pub timeline: Timeline,
    /// The recording's kernel lock profile (a `record` trace's `lock_profile` line), drawn as a
    /// flame graph.
    pub lock_profile: Option<Profile>,
}

fn involved(alerts: &[AlertPicture], end: &GraphView) -> BTreeSet<u32> {
    let mut tids: BTreeSet<u32> = alerts
        .iter()
        .flat_map(|a| a.alert.tids.iter().copied())
        .collect();
    for a in alerts {
        tids.extend(a.view.tasks.iter().map(|t| t.tid));
    }
    if alerts.is_empty() {
        tids.extend(end.tasks.iter().map(|t| t.tid));
    }
    tids
}

/// One mark per moment of detection, named after its most severe alert.
fn marks(alerts: &[AlertPicture]) -> Vec<(u64, String)> {
    let mut marks: Vec<(u64, String)> = Vec::new();
    for group in alerts.chunk_by(|a, b| a.alert.ts_ns == b.alert.ts_ns) {
        let worst = group
            .iter()
            .max_by_key(|a| a.alert.severity == Severity::Critical)
            .map(|a| a.alert.kind.as_str())
            .unwrap_or_default();
        let more = if group.len() > 1 {
            format!(" +{}", group.len() - 1)
        } else {
            String::new()
        };
        marks.push((group[0].alert.ts_ns, format!("{worst}{more}")));
    }
    marks
}

impl Pictures {
    /// What draws the timeline from the second pass over the events: the tasks of the alerts
    /// (or, without alerts, of the graph at the end).
    pub fn timeline_builder(alerts: &[AlertPicture], end_view: &GraphView) -> TimelineBuilder {
        TimelineBuilder::new(involved(alerts, end_view))
    }

    pub fn new(
        events: u64,
        first_ts_ns: u64,
        lost: u64,
        alerts: Vec<AlertPicture>,
        end_view: GraphView,
        timeline: TimelineBuilder,
    ) -> Self {
        let timeline = timeline.finish(marks(&alerts));
        Self {
            events,
            first_ts_ns,
            lost,
            alerts,
            end_view,
            timeline,
            lock_profile: None,
        }
    }

    pub fn with_lock_profile(mut self, profile: Option<Profile>) -> Self {
        self.lock_profile = profile;
        self
    }

    /// The graph `--svg` draws: at the first deadlock, else at the last alert, else at the end.
    pub fn main_view(&self) -> &GraphView {
        self.alerts
            .iter()
            .find(|a| a.alert.kind == AlertKind::Deadlock)
            .or(self.alerts.last())
            .map(|a| &a.view)
            .unwrap_or(&self.end_view)
    }

    pub fn svg(&self) -> String {
        svg::document(
            &Scene::from_view(self.main_view())
                .grouped(&BTreeSet::new())
                .capped(MAX_NODES),
        )
    }

    /// Records lost while recording, said above everything that may rest on them.
    fn loss_note(&self) -> String {
        if self.lost == 0 {
            return String::new();
        }
        format!(
            "<p class=\"hidden-note\" id=\"lost\">{} records were lost while recording (the ring \
             buffer was full): alerts after a loss may rest on missing records.</p>",
            self.lost
        )
    }

    fn rel(&self, ts: u64) -> String {
        format!("+{:.3}s", ts.saturating_sub(self.first_ts_ns) as f64 / 1e9)
    }

    /// One self-contained HTML document.
    pub fn html(&self, source: &str) -> String {
        let mut body = String::new();
        // Many alerts (a convoy raises one per reader) make a long table: past a screenful it
        // starts folded, with the count by kind in view.
        let mut by_kind: std::collections::BTreeMap<&str, usize> = Default::default();
        for a in &self.alerts {
            *by_kind.entry(a.alert.kind.as_str()).or_default() += 1;
        }
        let counts: Vec<String> = by_kind.iter().map(|(k, n)| format!("{n} {k}")).collect();
        let _ =
            write!(
            body,
            "<section id=\"summary\"><h2>Summary</h2><p>{} events replayed from <code>{}</code>, \
             {} alert(s){}, trace time {}.</p>{}<details class=\"members\"{}><summary>every alert \
             with its explanation</summary>{}</details></section>",
            self.events,
            escape(source),
            self.alerts.len(),
            if counts.is_empty() {
                String::new()
            } else {
                format!(" ({})", counts.join(", "))
            },
            short_duration(self.timeline.end_ns.saturating_sub(self.first_ts_ns)),
            self.loss_note(),
            if self.alerts.len() <= FOLD_ALERTS { " open" } else { "" },
            html::alerts_table(self.alerts.iter().map(|a| &a.alert), |a| self.rel(a.ts_ns))
        );
        // One picture per moment of detection: alerts raised together share a graph.
        let mut moments: Vec<&[AlertPicture]> = self
            .alerts
            .chunk_by(|a, b| a.alert.ts_ns == b.alert.ts_ns)
            .collect();
        let dropped = moments.len().saturating_sub(MAX_PICTURES);
        moments.truncate(MAX_PICTURES);
        for (i, group) in moments.iter().enumerate() {
            let first = &group[0];
            let scene = Scene::from_view(&first.view)
                .grouped(&BTreeSet::new())
                .capped(MAX_NODES);
            // The most severe first; a handful are spelled out, the rest listed.
            let mut order: Vec<&AlertPicture> = group.iter().collect();
            order.sort_by_key(|a| std::cmp::Reverse(a.alert.severity == Severity::Critical));
            let mut kind_counts: std::collections::BTreeMap<&str, usize> = Default::default();
            for a in &order {
                *kind_counts.entry(a.alert.kind.as_str()).or_default() += 1;
            }
            let kinds: Vec<String> = kind_counts
                .iter()
                .map(|(k, n)| {
                    if *n == 1 {
                        (*k).to_owned()
                    } else {
                        format!("{n} {k}")
                    }
                })
                .collect();
            let mut explain = String::new();
            for a in order.iter().take(SPELLED_OUT) {
                let sev = html::severity_str(a.alert.severity);
                let _ = write!(
                    explain,
                    "<div class=\"explain {sev}\" data-kind=\"{}\"><b>{} ({sev})</b>: {}</div>",
                    a.alert.kind.as_str(),
                    a.alert.kind.as_str(),
                    html::qualified_summary(&a.alert)
                );
            }
            if order.len() > SPELLED_OUT {
                let _ = write!(
                    explain,
                    "<details class=\"members\"><summary>{} more alerts at this moment</summary>{}</details>",
                    order.len() - SPELLED_OUT,
                    html::alerts_table(order[SPELLED_OUT..].iter().map(|a| &a.alert), |a| self.rel(a.ts_ns))
                );
            }
            let _ = write!(
                body,
                "<section class=\"alert-picture\" id=\"moment-{i}\" data-kind=\"{}\">\
                 <h2>{} at {}</h2>{explain}{}{}<div class=\"graph\">{}</div>{}</section>",
                first.alert.kind.as_str(),
                escape(&kinds.join(", ")),
                self.rel(first.alert.ts_ns),
                html::legend(),
                html::cycles_line(&scene),
                svg::render(&scene, &format!("a{i}")),
                html::member_lists(&scene)
            );
        }
        if dropped > 0 {
            let _ = write!(
                body,
                "<p class=\"hidden-note\">{dropped} later moments with alerts are not drawn; \
                 the table above lists every alert.</p>"
            );
        }
        if self.alerts.is_empty() {
            let scene = Scene::from_view(&self.end_view)
                .grouped(&BTreeSet::new())
                .capped(MAX_NODES);
            let _ = write!(
                body,
                "<section id=\"end-graph\"><h2>Graph at the end of the trace</h2>{}{}\
                 <div class=\"graph\">{}</div>{}</section>",
                html::legend(),
                html::cycles_line(&scene),
                svg::render(&scene, "end"),
                html::member_lists(&scene)
            );
        }
        let _ = write!(
            body,
            "<section id=\"timeline\"><h2>Timeline of the tasks involved</h2>\
             <p class=\"note\">Each row is a task: red bars are waits, blue bars write holds, \
             green bars read holds; the dashed lines are the alerts. Hover a bar for its lock and \
             length.</p><div class=\"graph\">{}</div></section>",
            self.timeline.render()
        );
        let script = match &self.lock_profile {
            Some(profile) => {
                body.push_str(&flame::flame_section(profile, "lock-flame"));
                flame::FLAME_SCRIPT
            }
            None => "",
        };
        html::page("faultline replay report", &escape(source), &body, script)
    }
}
