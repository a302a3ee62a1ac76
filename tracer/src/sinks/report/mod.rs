//! Pictures of the waits-for graph: SVG drawings, the agent's live page, replay reports and
//! incident pages. An adapter over the core's views (`GraphView`, `Alert`, events); the core
//! knows nothing of it.
//!
//! - `scene`: what a picture shows (boxes, arrows, groups of identical waiters), from the
//!   engine's graph or a `diagnose` snapshot;
//! - `svg`: the scene laid out (layout-rs) and drawn;
//! - `timeline`: who held what while whom waited;
//! - `html`: shared page parts; `page`: the live page; `replay`: `replay --html/--svg`;
//! - `text`: escaping, short durations and wait classes, shared by `html`, `svg` and the rest.

pub mod flame;
pub mod html;
pub mod page;
pub mod replay;
pub mod scene;
pub mod svg;
pub mod text;
pub mod timeline;

#[cfg(test)]
mod tests;

use std::collections::BTreeSet;

use crate::core::{detect::Alert, diagnosis::Diagnosis, views::GraphView};

use self::{
    scene::{Scene, MAX_NODES},
    timeline::Timeline,
};

/// A graph alone, as a standalone SVG file.
pub fn graph_svg(view: &GraphView) -> String {
    svg::document(
        &Scene::from_view(view)
            .grouped(&BTreeSet::new())
            .capped(MAX_NODES),
    )
}

/// `faultline diagnose --svg`: the snapshot's graph as a standalone SVG file.
pub fn diagnosis_svg(d: &Diagnosis) -> String {
    svg::document(
        &Scene::from_diagnosis(d)
            .grouped(&BTreeSet::new())
            .capped(MAX_NODES),
    )
}

/// An incident as one self-contained page: the explanation, the graph when it was raised, and
/// what each task in it was waiting for and holding, since when.
pub fn incident_html(alert: &Alert, view: &GraphView) -> String {
    let scene = Scene::from_view(view)
        .grouped(&BTreeSet::new())
        .capped(MAX_NODES);
    let sev = html::severity_str(alert.severity);
    let timeline = Timeline::from_view(view, vec![(alert.ts_ns, alert.kind.as_str().to_owned())]);
    let body = format!(
        "<section class=\"alert-picture\" data-kind=\"{kind}\"><h2>{kind} ({sev})</h2>\
         <div class=\"explain {sev}\">{}</div>{}{}<div class=\"graph\">{}</div>{}</section>\
         <section id=\"timeline\"><h2>Waits and holds in progress at detection</h2>\
         <p class=\"note\">Red bars are waits, blue bars write holds, green bars read holds, \
         each from when it began; the agent keeps no older history.</p>\
         <div class=\"graph\">{}</div></section>",
        html::qualified_summary(alert),
        html::legend(),
        html::cycles_line(&scene),
        svg::render(&scene, "inc"),
        html::member_lists(&scene),
        timeline.render(),
        kind = alert.kind.as_str(),
    );
    html::page(
        &format!("faultline incident: {}", alert.kind.as_str()),
        &format!(
            "tasks {}",
            alert
                .tids
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
        &body,
        "",
    )
}
