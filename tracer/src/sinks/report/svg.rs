//! A `Scene` drawn as SVG. The layout (ranks, crossings, edge routes) comes from `layout-rs`, a
//! pure-Rust implementation of the layered (Sugiyama, DOT-style) layout; the drawing is ours, so
//! every box and arrow carries classes and data attributes that CSS colours, scripts expand and
//! tests find. Nothing external: no fonts, no scripts, no links.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    panic::{catch_unwind, AssertUnwindSafe},
};

use layout::{
    core::{
        base::Orientation,
        color::Color,
        format::{ClipHandle, RenderBackend},
        geometry::Point,
        style::{LineStyleKind, StyleAttr},
    },
    std_shapes::shapes::{Arrow, Element, LineEndKind, ShapeKind},
    topo::layout::VisualGraph,
};

use super::{
    scene::{Node, Scene, SceneEdge},
    text::{escape, wait_class},
};

/// Width of a monospace character and height of a line, in px at the label font size (12px).
const CHAR_W: f64 = 7.3;
const LINE_H: f64 = 15.0;
/// The font size layout-rs sizes edge labels with (its boxes are `chars × size` wide, and
/// `lines × size` high plus padding); our labels are drawn at 11px monospace, ~6.7px a char.
const EDGE_LABEL_SIZE: usize = 7;
/// Line colour that marks an edge label as part of a cycle (layout-rs passes only the style).
const CYCLE_RGBA: u32 = 0xc6_28_28_ff;
const PLAIN_RGBA: u32 = 0x44_44_44_ff;

/// The style sheet of every picture (embedded in each SVG so a lone file looks the same).
pub const STYLE: &str = r#"
svg.wf { font-family: "DejaVu Sans Mono", "Liberation Mono", monospace; background: #fff; }
svg.wf .node rect { fill: #eef3f8; stroke: #5b7083; stroke-width: 1.5; }
svg.wf .node.blocked.w0 rect { fill: #fff6d5; stroke: #b08a00; }
svg.wf .node.blocked.w1 rect { fill: #ffe2b8; stroke: #c06a00; }
svg.wf .node.blocked.w2 rect { fill: #ffc4a8; stroke: #c43d00; }
svg.wf .node.blocked.w3 rect { fill: #f59a9a; stroke: #9e0000; }
svg.wf .node.group rect { stroke-dasharray: 6 3; }
svg.wf .node.cycle rect { stroke: #c62828; stroke-width: 4; }
svg.wf .node text { font-size: 12px; fill: #1a1a1a; }
svg.wf .node text .first { font-weight: bold; }
svg.wf .node.group { cursor: pointer; }
svg.wf path.edge { fill: none; stroke: #444; stroke-width: 1.6; }
svg.wf path.edge.queued { stroke-dasharray: 7 4; stroke: #6a4c93; }
svg.wf path.edge.inferred { stroke-dasharray: 2 3; }
svg.wf path.edge.cycle { stroke: #c62828; stroke-width: 3; }
svg.wf text.elabel { font-size: 11px; fill: #333; }
svg.wf rect.card { fill: #fff; fill-opacity: 0.94; stroke: #c9ced4; stroke-width: 1; }
svg.wf rect.card.cycle { stroke: #e8a0a0; }
svg.wf text.elabel.cycle { fill: #b71c1c; font-weight: bold; }
svg.wf text.empty { font-size: 14px; fill: #555; }
"#;

/// Renders `scene` as one `<svg>` element. `prefix` keeps ids (arrow heads) unique when
/// several pictures share a page.
pub fn render(scene: &Scene, prefix: &str) -> String {
    if scene.nodes.is_empty() {
        return format!(
            "<svg class=\"wf\" xmlns=\"http://www.w3.org/2000/svg\" width=\"320\" height=\"48\" \
             viewBox=\"0 0 320 48\"><style>{STYLE}</style><text class=\"empty\" x=\"12\" \
             y=\"28\">no blocked tasks</text></svg>"
        );
    }
    let mut canvas = Canvas::new(scene, prefix);
    let laid_out = catch_unwind(AssertUnwindSafe(|| {
        let mut c = Canvas::new(scene, prefix);
        layered(scene, &mut c);
        c
    }));
    match laid_out {
        Ok(c) => canvas = c,
        // layout-rs asserts on shapes it does not expect; a picture must never take the agent
        // down, so fall back to a plain grid with straight arrows.
        Err(_) => grid(scene, &mut canvas),
    }
    canvas.finish()
}

/// A standalone SVG file (the XML declaration and the picture).
pub fn document(scene: &Scene) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n{}\n",
        render(scene, "f")
    )
}

fn node_size(n: &Node) -> Point {
    let chars = n.lines.iter().map(|l| l.chars().count()).max().unwrap_or(1);
    Point::new(
        chars as f64 * CHAR_W + 20.0,
        n.lines.len() as f64 * LINE_H + 14.0,
    )
}

/// The arrows to draw: parallel edges between the same two boxes become one arrow with all
/// their words (layout-rs wants at most one edge per pair).
fn arrows(scene: &Scene) -> Vec<(usize, usize, Vec<&SceneEdge>)> {
    let mut by_pair: BTreeMap<(usize, usize), Vec<&SceneEdge>> = BTreeMap::new();
    for e in &scene.edges {
        if e.from != e.to {
            by_pair.entry((e.from, e.to)).or_default().push(e);
        }
    }
    by_pair.into_iter().map(|((f, t), es)| (f, t, es)).collect()
}

fn edge_classes(es: &[&SceneEdge]) -> String {
    let mut c = String::from("edge");
    for e in es {
        for k in [e.kind.class(), if e.in_cycle { "cycle" } else { "" }] {
            if !k.is_empty() && !c.split(' ').any(|x| x == k) {
                c.push(' ');
                c.push_str(k);
            }
        }
        if e.inferred.is_some() && !c.contains("inferred") {
            c.push_str(" inferred");
        }
    }
    c
}

fn node_attrs(
    n: &Node,
    scene_probable: &std::collections::BTreeSet<crate::core::model::Tid>,
) -> String {
    let mut class = String::from("node");
    if n.blocked {
        class.push_str(" blocked ");
        class.push_str(wait_class(n.waited_ns.unwrap_or(0)));
    } else {
        class.push_str(" holder");
    }
    if n.group {
        class.push_str(" group");
    }
    if n.in_cycle {
        class.push_str(" cycle");
    }
    let tids: Vec<String> = n.members.iter().map(|m| m.tid.to_string()).collect();
    let mut title = n.lines.join("\n");
    if n.in_cycle {
        if n.members.iter().any(|m| scene_probable.contains(&m.tid)) {
            title.push_str("\npart of a probable deadlock cycle (an edge rests on evidence, not a kernel fact)");
        } else {
            title.push_str("\npart of a deadlock cycle");
        }
    }
    if n.group {
        title.push_str("\nclick to show every task");
    }
    format!(
        "class=\"{class}\" id=\"{}\" data-node=\"{}\" data-tids=\"{}\"><title>{}</title",
        escape(&n.id),
        escape(&n.id),
        tids.join(" "),
        escape(&title)
    )
}

fn layered(scene: &Scene, canvas: &mut Canvas) {
    let mut vg = VisualGraph::new(Orientation::TopToBottom);
    let look = StyleAttr::new(Color::new(PLAIN_RGBA), 1, None, 4, 12);
    // Cycles first: layout-rs keeps the order of insertion within a rank, so the deadlock is
    // drawn at the left, in view before any scrolling.
    let mut order: Vec<usize> = (0..scene.nodes.len()).collect();
    order.sort_by_key(|&i| !scene.nodes[i].in_cycle);
    let mut handles = vec![None; scene.nodes.len()];
    for i in order {
        let n = &scene.nodes[i];
        // The box's label is its index: the canvas draws the real lines itself.
        let shape = ShapeKind::new_box(&i.to_string());
        handles[i] = Some(vg.add_node(Element::create_with_properties(
            shape,
            look.clone(),
            Orientation::TopToBottom,
            node_size(n),
            node_attrs(n, &scene.probable),
        )));
    }
    let handles: Vec<_> = handles.into_iter().flatten().collect();
    for (from, to, es) in arrows(scene) {
        let cycle = es.iter().any(|e| e.in_cycle);
        let color = if cycle { CYCLE_RGBA } else { PLAIN_RGBA };
        let text: Vec<String> = es.iter().flat_map(|e| e.lines()).collect();
        let arrow = Arrow::with_properties(
            LineEndKind::None,
            LineEndKind::Arrow,
            LineStyleKind::Normal,
            &text.join("\n"),
            &StyleAttr::new(Color::new(color), 2, None, 0, EDGE_LABEL_SIZE),
            edge_classes(&es),
            &None,
            &None,
        );
        vg.add_edge(arrow, handles[from], handles[to]);
    }
    vg.do_it(false, false, false, canvas);
}

/// The fallback: boxes in rows, straight arrows, labels at the middle.
fn grid(scene: &Scene, canvas: &mut Canvas) {
    let cols = (scene.nodes.len() as f64).sqrt().ceil().max(1.0) as usize;
    let mut centers = Vec::new();
    let (mut x, mut y, mut row_h) = (20.0, 20.0, 0.0f64);
    for (i, n) in scene.nodes.iter().enumerate() {
        let size = node_size(n);
        if i > 0 && i % cols == 0 {
            x = 20.0;
            y += row_h + 90.0;
            row_h = 0.0;
        }
        let look = StyleAttr::new(Color::new(PLAIN_RGBA), 1, None, 4, 12);
        canvas.draw_rect(
            Point::new(x, y),
            size,
            &look,
            Some(node_attrs(n, &scene.probable)),
            None,
        );
        canvas.draw_text(
            Point::new(x + size.x / 2.0, y + size.y / 2.0),
            &i.to_string(),
            &look,
        );
        centers.push(Point::new(x + size.x / 2.0, y + size.y / 2.0));
        x += size.x + 90.0;
        row_h = row_h.max(size.y);
    }
    for (from, to, es) in arrows(scene) {
        let (a, b) = (centers[from], centers[to]);
        let cycle = es.iter().any(|e| e.in_cycle);
        let look = StyleAttr::new(
            Color::new(if cycle { CYCLE_RGBA } else { PLAIN_RGBA }),
            2,
            None,
            0,
            EDGE_LABEL_SIZE,
        );
        canvas.draw_arrow(
            &[(a, a), (b, b)],
            false,
            (false, true),
            &look,
            Some(edge_classes(&es)),
            "",
        );
        let text: Vec<String> = es.iter().flat_map(|e| e.lines()).collect();
        canvas.draw_text(
            Point::new((a.x + b.x) / 2.0, (a.y + b.y) / 2.0),
            &text.join("\n"),
            &look,
        );
    }
}

/// Receives layout-rs's draw calls and writes our SVG.
struct Canvas<'a> {
    scene: &'a Scene,
    prefix: String,
    body: String,
    /// Arrow labels, drawn last so no arrow crosses them.
    labels: String,
    max: Point,
    /// A box's group is open until its label is drawn (layout-rs draws them in turn).
    open_group: bool,
}

impl<'a> Canvas<'a> {
    fn new(scene: &'a Scene, prefix: &str) -> Self {
        Self {
            scene,
            prefix: prefix.to_owned(),
            body: String::new(),
            labels: String::new(),
            max: Point::new(0.0, 0.0),
            open_group: false,
        }
    }

    fn grow(&mut self, p: Point) {
        self.max.x = self.max.x.max(p.x);
        self.max.y = self.max.y.max(p.y);
    }

    fn finish(mut self) -> String {
        if self.open_group {
            self.body.push_str("</g>\n");
        }
        let (w, h) = (self.max.x + 20.0, self.max.y + 20.0);
        let p = &self.prefix;
        format!(
            "<svg class=\"wf\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{w:.0}\" \
             height=\"{h:.0}\" viewBox=\"0 0 {w:.0} {h:.0}\"><style>{STYLE}</style>\
             <defs><marker id=\"{p}-ah\" markerWidth=\"12\" markerHeight=\"9\" refX=\"11\" \
             refY=\"4.5\" orient=\"auto-start-reverse\" markerUnits=\"userSpaceOnUse\"><polygon points=\"0 0, 12 4.5, 0 9\" fill=\"#444\"/>\
             </marker><marker id=\"{p}-ahc\" markerWidth=\"12\" markerHeight=\"9\" refX=\"11\" \
             refY=\"4.5\" orient=\"auto-start-reverse\" markerUnits=\"userSpaceOnUse\"><polygon points=\"0 0, 12 4.5, 0 9\" fill=\"#c62828\"/>\
             </marker></defs>\n{}{}</svg>",
            self.body, self.labels
        )
    }

    fn node_lines(&self, label: &str) -> Option<&'a [String]> {
        let i: usize = label.parse().ok()?;
        self.scene.nodes.get(i).map(|n| n.lines.as_slice())
    }
}

impl RenderBackend for Canvas<'_> {
    fn draw_rect(
        &mut self,
        xy: Point,
        size: Point,
        look: &StyleAttr,
        properties: Option<String>,
        _clip: Option<ClipHandle>,
    ) {
        self.grow(Point::new(xy.x + size.x, xy.y + size.y));
        if self.open_group {
            self.body.push_str("</g>\n");
        }
        // `properties` ends inside the <title> element's closing tag: see `node_attrs`.
        let _ = write!(
            self.body,
            "{}\n<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" rx=\"{}\"/>\n",
            properties
                .map(|p| format!("<g {p}>"))
                .unwrap_or_else(|| "<g>".into()),
            xy.x,
            xy.y,
            size.x,
            size.y,
            look.rounded
        );
        self.open_group = true;
    }

    fn draw_line(&mut self, _: Point, _: Point, _: &StyleAttr, _: Option<String>) {}

    fn draw_circle(&mut self, _: Point, _: Point, _: &StyleAttr, _: Option<String>) {}

    fn draw_text(&mut self, xy: Point, text: &str, look: &StyleAttr) {
        if self.open_group {
            // A box's label: its index, standing for the scene's lines.
            if let Some(lines) = self.node_lines(text) {
                let top = xy.y - (lines.len() as f64 * LINE_H) / 2.0 + LINE_H * 0.75;
                let _ = write!(self.body, "<text x=\"{:.1}\" text-anchor=\"middle\">", xy.x);
                for (i, l) in lines.iter().enumerate() {
                    let _ = write!(
                        self.body,
                        "<tspan x=\"{:.1}\" y=\"{:.1}\"{}>{}</tspan>",
                        xy.x,
                        top + i as f64 * LINE_H,
                        if i == 0 { " class=\"first\"" } else { "" },
                        escape(l)
                    );
                }
                self.body.push_str("</text>\n</g>\n");
            } else {
                self.body.push_str("</g>\n");
            }
            self.open_group = false;
            return;
        }
        // An arrow's label (a layout-rs connector).
        let lines: Vec<&str> = text.lines().collect();
        if lines.is_empty() {
            return;
        }
        let line_h = 13.0;
        let cycle = look.line_color.to_web_color() == Color::new(CYCLE_RGBA).to_web_color();
        let top = xy.y - (lines.len() as f64 * line_h) / 2.0 + line_h * 0.75;
        let width = lines.iter().map(|l| l.chars().count()).max().unwrap_or(0) as f64 * 6.7;
        let height = lines.len() as f64 * line_h;
        self.grow(Point::new(xy.x + width / 2.0, top + height));
        // On a white card over the arrow (labels are written after every arrow, see `finish`):
        // the arrow runs through the label's middle, and words on a line are hard to read.
        let _ = write!(
            self.labels,
            "<g class=\"elabel{c}\"><rect class=\"card{c}\" x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" \
             height=\"{:.1}\" rx=\"3\"/><text class=\"elabel{c}\" text-anchor=\"middle\">",
            xy.x - width / 2.0 - 4.0,
            top - line_h * 0.75 - 2.0,
            width + 8.0,
            height + 4.0,
            c = if cycle { " cycle" } else { "" }
        );
        for (i, l) in lines.iter().enumerate() {
            let _ = write!(
                self.labels,
                "<tspan x=\"{:.1}\" y=\"{:.1}\">{}</tspan>",
                xy.x,
                top + i as f64 * line_h,
                escape(l)
            );
        }
        self.labels.push_str("</text></g>\n");
    }

    fn draw_arrow(
        &mut self,
        path: &[(Point, Point)],
        _dashed: bool,
        head: (bool, bool),
        _look: &StyleAttr,
        properties: Option<String>,
        _text: &str,
    ) {
        if self.open_group {
            self.body.push_str("</g>\n");
            self.open_group = false;
        }
        if path.len() < 2 {
            return;
        }
        for (a, b) in path {
            self.grow(*a);
            self.grow(*b);
        }
        let mut d = format!(
            "M {:.1} {:.1} C {:.1} {:.1}, {:.1} {:.1}, {:.1} {:.1}",
            path[0].0.x,
            path[0].0.y,
            path[0].1.x,
            path[0].1.y,
            path[1].0.x,
            path[1].0.y,
            path[1].1.x,
            path[1].1.y
        );
        for (c, p) in path.iter().skip(2) {
            let _ = write!(d, " S {:.1} {:.1}, {:.1} {:.1}", c.x, c.y, p.x, p.y);
        }
        let classes = properties.unwrap_or_else(|| "edge".into());
        let marker = if classes.split(' ').any(|c| c == "cycle") {
            "ahc"
        } else {
            "ah"
        };
        // layout-rs reverses back edges (to keep its ranks a DAG) and moves the head to the start.
        let mut ends = String::new();
        if head.0 {
            let _ = write!(ends, " marker-start=\"url(#{}-{marker})\"", self.prefix);
        }
        if head.1 {
            let _ = write!(ends, " marker-end=\"url(#{}-{marker})\"", self.prefix);
        }
        let _ = writeln!(self.body, "<path class=\"{classes}\" d=\"{d}\"{ends}/>");
    }

    fn create_clip(&mut self, _: Point, _: Point, _: usize) -> ClipHandle {
        0
    }
}
