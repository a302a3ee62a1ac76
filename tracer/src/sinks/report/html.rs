//! HTML building blocks shared by the live page, the replay report and incident files: escaping,
//! the style sheet, the legend, alert tables and the member lists of grouped boxes.

use std::fmt::Write as _;

use crate::core::detect::{Alert, Confidence, Severity};

use super::{
    scene::Scene,
    text::{escape, short_duration, WAIT_CLASSES},
};

/// The page style sheet (the pictures carry their own, see `svg::STYLE`).
pub const PAGE_STYLE: &str = r#"
body { font-family: "DejaVu Sans", "Liberation Sans", sans-serif; margin: 0; color: #1a1a1a; background: #f4f5f7; }
header { background: #263238; color: #fff; padding: 10px 20px; display: flex; gap: 24px; align-items: baseline; flex-wrap: wrap; }
header h1 { font-size: 20px; margin: 0; }
header .meta { color: #cfd8dc; font-size: 13px; }
main { padding: 12px 20px 40px; }
section { background: #fff; border: 1px solid #d5d9de; border-radius: 6px; padding: 12px 16px; margin-bottom: 16px; }
section h2 { font-size: 16px; margin: 0 0 8px; }
.graph { overflow: auto; max-height: 80vh; border: 1px solid #e3e6ea; background: #fff; }
.legend { font-size: 12px; color: #444; display: flex; flex-wrap: wrap; gap: 14px; margin: 6px 0 10px; align-items: center; }
.legend .sw { display: inline-block; width: 22px; height: 12px; border: 1px solid #888; vertical-align: middle; margin-right: 4px; }
.legend .w0 { background: #fff6d5; } .legend .w1 { background: #ffe2b8; } .legend .w2 { background: #ffc4a8; } .legend .w3 { background: #f59a9a; }
.legend .cyc { border: 3px solid #c62828; } .legend .hold { background: #eef3f8; }
.legend .ln { display: inline-block; width: 30px; border-top: 2px solid #444; vertical-align: middle; margin-right: 4px; }
.legend .ln.q { border-top: 2px dashed #6a4c93; } .legend .ln.c { border-top: 3px solid #c62828; }
.cycles { color: #b71c1c; font-weight: bold; margin: 4px 0 8px; }
table { border-collapse: collapse; width: 100%; font-size: 13px; }
th, td { text-align: left; padding: 5px 8px; border-bottom: 1px solid #e3e6ea; vertical-align: top; }
th { background: #f0f2f4; }
td.sev-critical { color: #fff; background: #c62828; font-weight: bold; }
td.sev-warning { background: #ffe2b8; }
td.summary { line-height: 1.4; }
td.num { white-space: nowrap; font-family: monospace; }
details.members { margin: 6px 0; font-size: 13px; }
details.members summary { cursor: pointer; }
details.members table { width: auto; }
.note { color: #555; font-size: 12px; }
.hidden-note { color: #8a4b00; font-size: 13px; }
.explain { background: #fff8f8; border-left: 4px solid #c62828; padding: 8px 12px; margin: 8px 0; line-height: 1.45; }
.explain.warning { background: #fffaf0; border-left-color: #c06a00; }
"#;

/// What colours and line styles mean.
pub fn legend() -> String {
    let mut s = String::from("<div class=\"legend\"><span>blocked for:</span>");
    for (class, _, label) in WAIT_CLASSES {
        let _ = write!(
            s,
            "<span><span class=\"sw {class}\"></span>{}</span>",
            escape(label)
        );
    }
    s.push_str(
        "<span><span class=\"sw hold\"></span>not blocked</span>\
         <span><span class=\"sw cyc\"></span>in a deadlock cycle</span>\
         <span><span class=\"ln\"></span>waits for (holder / owner / handler)</span>\
         <span><span class=\"ln q\"></span>queued behind a writer</span>\
         <span><span class=\"ln c\"></span>cycle edge</span>\
         <span>dashed box: identical waiters grouped</span></div>",
    );
    s
}

/// The cycles, named, above a picture.
pub fn cycles_line(scene: &Scene) -> String {
    if scene.cycles.is_empty() {
        return String::new();
    }
    let mut s = String::new();
    for c in &scene.cycles {
        let order = cycle_order(scene, c);
        let names: Vec<String> = order
            .iter()
            .map(|t| {
                scene
                    .nodes
                    .iter()
                    .flat_map(|n| n.members.iter())
                    .find(|m| m.tid == *t)
                    .map(|m| format!("{} ({}, pid {})", m.tid, m.comm, m.pid))
                    .unwrap_or_else(|| t.to_string())
            })
            .collect();
        let _ = writeln!(
            s,
            "<div class=\"cycles\" data-cycle=\"{}\">deadlock cycle (each waits for the next): {}</div>",
            c.iter().map(u32::to_string).collect::<Vec<_>>().join(" "),
            escape(&format!(
                "{} → {}",
                names.join(" → "),
                order.first().map(u32::to_string).unwrap_or_default()
            ))
        );
    }
    s
}

/// The members of a cycle in the order the arrows go (the cycle is a sorted set); members the
/// walk does not reach (a component with several loops) follow.
fn cycle_order(scene: &Scene, cycle: &[u32]) -> Vec<u32> {
    let tid_of = |i: usize| scene.nodes[i].members.first().map(|m| m.tid);
    let mut order: Vec<u32> = Vec::new();
    let Some(&first) = cycle.first() else {
        return order;
    };
    let mut cur = first;
    while !order.contains(&cur) {
        order.push(cur);
        let next = scene
            .edges
            .iter()
            .filter(|e| e.in_cycle && tid_of(e.from) == Some(cur))
            .filter_map(|e| tid_of(e.to))
            .find(|t| cycle.contains(t) && !order.contains(t));
        match next {
            Some(n) => cur = n,
            None => break,
        }
    }
    order.extend(
        cycle
            .iter()
            .filter(|t| !order.contains(t))
            .copied()
            .collect::<Vec<_>>(),
    );
    order
}

/// Every grouped box's tasks, one expandable list each.
pub fn member_lists(scene: &Scene) -> String {
    let mut s = String::new();
    for n in scene.nodes.iter().filter(|n| n.group) {
        let _ = write!(
            s,
            "<details class=\"members\" data-group=\"{}\"><summary>{}: show all {} tasks</summary>\
             <table><tr><th>tid</th><th>pid</th><th>comm</th><th>blocked</th></tr>",
            escape(&n.id),
            escape(&n.lines[..n.lines.len().min(3)].join(" ")),
            n.members.len()
        );
        for m in &n.members {
            let _ = write!(
                s,
                "<tr><td class=\"num\">{}</td><td class=\"num\">{}</td><td>{}</td><td class=\"num\">{}</td></tr>",
                m.tid,
                m.pid,
                escape(&m.comm),
                m.waited_ns.map(short_duration).unwrap_or_default()
            );
        }
        s.push_str("</table></details>\n");
    }
    if scene.hidden > 0 {
        let _ = writeln!(
            s,
            "<p class=\"hidden-note\">{} more tasks are not drawn (too many to read); \
             /api/graph lists them all.</p>",
            scene.hidden
        );
    }
    s
}

/// An alert's explanation as HTML: a probable alert is marked so, with what it rests on that
/// was inferred.
pub fn qualified_summary(a: &Alert) -> String {
    match a.confidence {
        Confidence::Certain => escape(&a.summary),
        Confidence::Probable => format!(
            "<span class=\"confidence probable\" data-confidence=\"probable\">probable</span> {}<ul class=\"evidence\">{}</ul>",
            escape(&a.summary),
            a.evidence
                .iter()
                .map(|e| format!("<li>inferred: {}</li>", escape(e)))
                .collect::<String>()
        ),
    }
}

pub fn severity_str(s: Severity) -> &'static str {
    match s {
        Severity::Critical => "critical",
        Severity::Warning => "warning",
    }
}

/// A table of alerts, newest first; `when` says when each happened.
pub fn alerts_table<'a>(
    alerts: impl DoubleEndedIterator<Item = &'a Alert>,
    when: impl Fn(&Alert) -> String,
) -> String {
    let mut rows = String::new();
    let mut n = 0;
    for a in alerts.rev() {
        n += 1;
        let tids: Vec<String> = a.tids.iter().map(u32::to_string).collect();
        let sev = severity_str(a.severity);
        let _ = writeln!(
            rows,
            "<tr class=\"alert\" data-kind=\"{}\" data-tids=\"{}\"><td class=\"num\">{}</td>\
             <td class=\"sev-{sev}\">{sev}</td><td>{}</td><td class=\"num\">{}</td>\
             <td class=\"summary\">{}</td></tr>",
            a.kind.as_str(),
            tids.join(" "),
            escape(&when(a)),
            a.kind.as_str(),
            escape(&tids.join(", ")),
            qualified_summary(a)
        );
    }
    if n == 0 {
        return "<p class=\"note\" id=\"no-alerts\">no alerts yet</p>".into();
    }
    format!(
        "<table class=\"alerts\"><tr><th>when</th><th>severity</th><th>kind</th><th>tasks</th>\
         <th>explanation</th></tr>\n{rows}</table>"
    )
}

/// A complete page around `body`.
pub fn page(title: &str, header_meta: &str, body: &str, script: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{}</title><style>{PAGE_STYLE}</style></head>\n<body>\
         <header><h1>{}</h1><span class=\"meta\">{header_meta}</span></header>\n\
         <main>\n{body}\n</main>{}</body></html>\n",
        escape(title),
        escape(title),
        if script.is_empty() {
            String::new()
        } else {
            format!("<script>{script}</script>")
        }
    )
}
