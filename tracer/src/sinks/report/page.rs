//! The agent's live page at `/`: the waits-for graph drawn now, the recent alerts, refreshed
//! every two seconds from `/ui/live` (an HTML fragment rendered here, so the page's script only
//! swaps it in). Self-contained: no CDN, no external asset.

use std::collections::BTreeSet;

use axum::{
    extract::{RawQuery, State},
    http::{header, StatusCode},
    response::{Html, IntoResponse, Response},
};

use crate::{
    core::detect::{Alert, Severity},
    sinks::{
        agent_view::{Agent, PageView as Snapshot},
        render_gate::{Refused, MAX_WAIT, RENDERS},
    },
};

use super::{
    flame, html,
    scene::{Scene, MAX_NODES},
    svg,
    text::{escape, short_duration},
};

/// Alerts listed on the page, newest first (all of them stay at /api/alerts).
const PAGE_ALERTS: usize = 50;

/// Group ids the viewer asked to expand: `expand=g…,g…` (anything else is ignored).
pub fn expand_set(query: Option<&str>) -> BTreeSet<String> {
    query
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.strip_prefix("expand="))
        .flat_map(|v| {
            v.replace("%2C", ",")
                .replace("%2c", ",")
                .split(',')
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .filter(|id| {
            id.len() == 17 && id.starts_with('g') && id[1..].bytes().all(|b| b.is_ascii_hexdigit())
        })
        .take(256)
        .collect()
}

fn snapshot(agent: &Agent) -> Snapshot {
    agent.page(PAGE_ALERTS)
}

/// The part of the page that refreshes: summary, graph, groups, alerts.
fn live_fragment(snap: &Snapshot, expand: &BTreeSet<String>) -> String {
    let scene = Scene::from_view(&snap.view)
        .grouped(expand)
        .capped(MAX_NODES);
    let blocked = snap
        .view
        .tasks
        .iter()
        .filter(|t| t.blocked.is_some())
        .count();
    let mut s = format!(
        "<section id=\"graph-section\"><h2>Waits-for graph</h2><p class=\"note\" id=\"counts\" \
         data-blocked=\"{blocked}\" data-cycles=\"{}\">{blocked} blocked task(s), {} cycle(s), \
         {} events seen. Click a dashed box to show its tasks one by one.</p>{}{}",
        snap.view.cycles.len(),
        snap.view.cycles.len(),
        snap.events,
        html::legend(),
        html::cycles_line(&scene)
    );
    for (id, n) in &scene.expanded {
        s.push_str(&format!(
            "<button class=\"collapse\" data-group=\"{}\">group these {n} tasks again</button> ",
            escape(id)
        ));
    }
    s.push_str(&format!(
        "<div class=\"graph\" id=\"graph\">{}</div>{}</section>",
        svg::render(&scene, "live"),
        html::member_lists(&scene)
    ));
    let now = snap.view.now_ns;
    // Critical alerts (deadlocks) on top, each part newest first (the table lists in reverse).
    let mut alerts: Vec<&Alert> = snap.alerts.iter().collect();
    alerts.sort_by_key(|a| a.severity == Severity::Critical);
    s.push_str(&format!(
        "<section id=\"alerts-section\"><h2>Recent alerts</h2><p class=\"note\">Critical \
         first, then the newest; all of them at /api/alerts.</p>{}</section>",
        html::alerts_table(alerts.into_iter(), |a| {
            format!("{} ago", short_duration(now.saturating_sub(a.ts_ns)))
        })
    ));
    s
}

const SCRIPT: &str = r#"
(function () {
  const expanded = new Set(JSON.parse(sessionStorage.getItem('faultline-expand') || '[]'));
  let refreshes = 0;
  const status = document.getElementById('status');
  const save = () => sessionStorage.setItem('faultline-expand', JSON.stringify([...expanded]));
  async function refresh() {
    try {
      const r = await fetch('/ui/live?expand=' + [...expanded].join(','), { cache: 'no-store' });
      if (!r.ok) { status.textContent = 'the agent answered ' + r.status; return; }
      const text = await r.text();
      document.getElementById('live').innerHTML = text;
      refreshes += 1;
      document.body.dataset.refreshes = String(refreshes);
      status.textContent = 'updated ' + new Date().toLocaleTimeString();
    } catch (e) {
      status.textContent = 'the agent does not answer (' + e + ')';
    }
  }
  document.addEventListener('click', (ev) => {
    const g = ev.target.closest('g.node.group');
    const b = ev.target.closest('button.collapse');
    if (g) { expanded.add(g.dataset.node); save(); refresh(); }
    if (b) { expanded.delete(b.dataset.group); save(); refresh(); }
  });
  const pause = document.getElementById('pause');
  setInterval(() => { if (!pause.checked) refresh(); }, 2000);
  // The flame graph reads the kernel's profile tables: every 10 s is enough for a picture of
  // where time went since the agent started.
  async function refreshFlame() {
    try {
      const r = await fetch('/ui/flame', { cache: 'no-store' });
      if (r.ok) document.getElementById('flame').innerHTML = await r.text();
    } catch (e) { /* the live part says when the agent does not answer */ }
  }
  setInterval(() => { if (!pause.checked) refreshFlame(); }, 10000);
  if (expanded.size) refresh();
})();
"#;

/// Copies the page's view under the agent's lock and draws it, off the async workers and gated
/// (`render_gate`): a large graph takes a noticeable fraction of a second, which must not stall
/// the API or the ring-buffer reader, and a flood of viewers must not queue without bound.
async fn live_off_thread(agent: Agent, expand: BTreeSet<String>) -> Result<String, Refused> {
    RENDERS
        .run(MAX_WAIT, move || live_fragment(&snapshot(&agent), &expand))
        .await
}

/// `GET /`.
pub async fn index(State(agent): State<Agent>) -> Response {
    let meta = "live · refreshes every 2 s · <label><input type=\"checkbox\" id=\"pause\"> \
         pause</label> · <span id=\"status\">rendered by the agent</span> · <a \
         style=\"color:#cfd8dc\" href=\"/api/graph\">JSON</a> · <a style=\"color:#cfd8dc\" \
         href=\"/api/graph.dot\">DOT</a>";
    let flame = match flame_off_thread(agent.clone()).await {
        Ok(f) => f,
        Err(r) => return r.into_response(),
    };
    match live_off_thread(agent, BTreeSet::new()).await {
        Ok(live) => {
            let body = format!("<div id=\"live\">{live}</div><div id=\"flame\">{flame}</div>");
            let script = format!("{SCRIPT}\n{}", flame::FLAME_SCRIPT);
            Html(html::page("faultline", meta, &body, &script)).into_response()
        }
        Err(r) => r.into_response(),
    }
}

/// The flame graph of the agent's lock profile (cumulative since it started), read and drawn
/// off the async workers and gated like the graph.
async fn flame_off_thread(agent: Agent) -> Result<String, Refused> {
    RENDERS
        .run(MAX_WAIT, move || match agent.lock_profile() {
            Ok(p) => flame::flame_section(&p, "flame-section"),
            Err(e) => format!(
                "<section id=\"flame-section\"><h2>Kernel lock wait, by lock and stack</h2>\
                 <p class=\"note\">The lock profile cannot be read: {}</p></section>",
                escape(&e)
            ),
        })
        .await
}

/// `GET /ui/flame`: the flame graph section alone (the page refreshes it every 10 s).
pub async fn flame(State(agent): State<Agent>) -> Response {
    match flame_off_thread(agent).await {
        Ok(f) => Html(f).into_response(),
        Err(r) => r.into_response(),
    }
}

/// `GET /ui/live?expand=…`: the refreshing part of the page (a refused refresh shows on the
/// page as "the agent answered 503", and the next one tries again).
pub async fn live(State(agent): State<Agent>, RawQuery(q): RawQuery) -> Response {
    match live_off_thread(agent, expand_set(q.as_deref())).await {
        Ok(live) => Html(live).into_response(),
        Err(r) => r.into_response(),
    }
}

/// `GET /api/graph.svg?expand=…`: the picture alone.
pub async fn graph_svg(State(agent): State<Agent>, RawQuery(q): RawQuery) -> Response {
    let expand = expand_set(q.as_deref());
    let drawn = RENDERS
        .run(MAX_WAIT, move || {
            let view = snapshot(&agent).view;
            svg::document(&Scene::from_view(&view).grouped(&expand).capped(MAX_NODES))
        })
        .await;
    match drawn {
        Ok(svg) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "image/svg+xml; charset=utf-8")],
            svg,
        )
            .into_response(),
        Err(r) => r.into_response(),
    }
}
