//! A flame graph of kernel lock wait time: which locks the kernel's waiters queued on, and from
//! which stacks, weighted by how long they waited. Drawn here, as plain SVG, from the resolved
//! contention profile (`core::lock_profile::Profile`).
//!
//! The tree is `all` → one tower per lock (`lock:<label> [<type>]`) → the waiter's stack from
//! its outermost frame down to the contending caller. Every tower is coloured by its lock, so a
//! lock is recognisable wherever its towers stand. No kernel address is ever drawn: an unnamed
//! lock is `unnamed` (all of them one group), a frame kallsyms could not name is `[unknown]`.

use std::{
    collections::{BTreeMap, HashMap},
    fmt::Write as _,
};

use crate::core::lock_profile::{human_ns, public_frame, Profile, Sample};

use super::text::escape;

/// The drawing's width; fixed, so that widths compare between refreshes and views.
const WIDTH: f64 = 1200.0;
/// Margin left, right and below the root.
const PAD: f64 = 10.0;
/// Room above the tallest tower for the heading line.
const TOP: f64 = 28.0;
/// One frame's row.
const ROW: f64 = 16.0;
/// Frames narrower than this are not drawn (nor anything above them): they cannot be seen,
/// and a large profile would otherwise be tens of thousands of invisible rectangles.
const MIN_PX: f64 = 0.5;
/// The width of one character of 12 px monospace, near enough for every browser's font.
const CHAR_PX: f64 = 7.25;
/// A label shorter than this says nothing; the frame is left unlabelled (its title remains).
const MIN_CHARS: usize = 3;
/// Lock views offered by a section: the heaviest ones; the rest remain in the all-locks view.
const MAX_LOCK_VIEWS: usize = 20;
/// The view, `data-lock` and `<option>` value meaning every lock.
const ALL: &str = "*";
/// The root frame's name.
const ROOT: &str = "all";

/// One frame of the merged tree: its wait time and contentions, everything above it included.
#[derive(Debug, Default)]
struct Node {
    /// The lock label the frame's tower belongs to (what `data-lock` says).
    lock: String,
    total_ns: u64,
    contended: u64,
    /// By display name: frames that read alike are one frame, and a `BTreeMap` keeps the
    /// order alphabetical, so towers do not jump around as weights change between refreshes.
    children: BTreeMap<String, Node>,
}

impl Node {
    /// The child `name` of tower `lock`, made on first use.
    fn child(&mut self, name: String, lock: &str) -> &mut Node {
        self.children.entry(name).or_insert_with(|| Node {
            lock: lock.to_owned(),
            ..Node::default()
        })
    }

    fn add(&mut self, s: &Sample) {
        self.total_ns = self.total_ns.saturating_add(s.total_ns);
        self.contended = self.contended.saturating_add(s.contended);
    }
}

/// A sample's lock as drawn (never an address: all unnamed locks are one `unnamed` group).
fn lock_label(s: &Sample) -> String {
    s.lock_name.public_label()
}

/// The whole profile merged into one tree, every lock under the root.
fn build(profile: &Profile) -> Node {
    // Short waits without a stack, split over their lock's sampled stacks.
    let profile = &profile.estimated();
    let mut root = Node {
        lock: ALL.to_owned(),
        ..Node::default()
    };
    for s in &profile.samples {
        let lock = lock_label(s);
        root.add(s);
        let mut node = root.child(format!("lock:{lock} [{}]", s.lock_type.name()), &lock);
        node.add(s);
        if s.stack.is_empty() {
            node.child("(no stack)".to_owned(), &lock).add(s);
        }
        // Outermost frame first: the stack is stored leaf first.
        for f in s.stack.iter().rev() {
            node = node.child(public_frame(f), &lock);
            node.add(s);
        }
    }
    root
}

/// What one picture shows: all towers, or those of one lock, and what they add up to (the
/// root is drawn over exactly these, so one lock's view fills the width).
struct View<'a> {
    lock: &'a str,
    towers: Vec<(&'a str, &'a Node)>,
    total_ns: u64,
    contended: u64,
    /// Distinct lock labels among the towers (one lock can wait as several types).
    locks: usize,
}

fn view<'a>(root: &'a Node, only_lock: Option<&'a str>) -> View<'a> {
    let towers: Vec<(&str, &Node)> = root
        .children
        .iter()
        .filter(|(_, n)| only_lock.is_none_or(|l| n.lock == l))
        .map(|(name, n)| (name.as_str(), n))
        .collect();
    let mut labels: Vec<&str> = towers.iter().map(|(_, n)| n.lock.as_str()).collect();
    labels.sort_unstable();
    labels.dedup();
    View {
        lock: only_lock.unwrap_or(ALL),
        total_ns: towers.iter().map(|(_, n)| n.total_ns).sum(),
        contended: towers.iter().map(|(_, n)| n.contended).sum(),
        locks: labels.len(),
        towers,
    }
}

/// A frame placed: where it is drawn, in pixels, and on which row (0: the root).
struct Placed<'a> {
    name: &'a str,
    lock: &'a str,
    total_ns: u64,
    contended: u64,
    x: f64,
    w: f64,
    depth: usize,
}

/// Places a frame at `offset_ns` of the total on row `depth`, then what stands on it, left to
/// right. Positions come from nanoseconds, not from summed pixel widths, so rounding does not
/// drift along a row.
fn place<'a>(
    name: &'a str,
    node: &'a Node,
    offset_ns: u64,
    depth: usize,
    scale: f64,
    out: &mut Vec<Placed<'a>>,
) {
    let w = node.total_ns as f64 * scale;
    if w < MIN_PX {
        return;
    }
    out.push(Placed {
        name,
        lock: &node.lock,
        total_ns: node.total_ns,
        contended: node.contended,
        x: PAD + offset_ns as f64 * scale,
        w,
        depth,
    });
    let mut at = offset_ns;
    for (child_name, child) in &node.children {
        place(child_name, child, at, depth + 1, scale, out);
        at = at.saturating_add(child.total_ns);
    }
}

/// The view's frames, the root first. The root spans the width; the total is not zero.
fn layout<'a>(v: &View<'a>) -> Vec<Placed<'a>> {
    let scale = (WIDTH - 2.0 * PAD) / v.total_ns as f64;
    let mut out = vec![Placed {
        name: ROOT,
        lock: v.lock,
        total_ns: v.total_ns,
        contended: v.contended,
        x: PAD,
        w: WIDTH - 2.0 * PAD,
        depth: 0,
    }];
    let mut at = 0u64;
    for (name, node) in &v.towers {
        place(name, node, at, 1, scale, &mut out);
        at = at.saturating_add(node.total_ns);
    }
    out
}

/// FNV-1a: a hash that is the same in every run and build, so a lock keeps its colour.
fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A warm colour of the lock (hue and saturation), a little lighter or darker by frame so
/// that neighbours in a tower stay apart. The root, which is every lock, is grey.
fn colour(lock: &str, name: &str) -> String {
    if lock == ALL {
        return "hsl(0,0%,80%)".to_owned();
    }
    let h = fnv(lock);
    let hue = h % 50;
    let sat = 60 + (h >> 16) % 35;
    let light = 52 + fnv(name) % 14;
    format!("hsl({hue},{sat}%,{light}%)")
}

/// The label that fits in `w` pixels, cut with `…`; none when under `MIN_CHARS` would fit.
fn fitted(name: &str, w: f64) -> Option<String> {
    let fit = ((w - 6.0) / CHAR_PX).floor();
    if fit < MIN_CHARS as f64 {
        return None;
    }
    let fit = fit as usize;
    if name.chars().count() <= fit {
        return Some(name.to_owned());
    }
    let mut cut: String = name.chars().take(fit - 1).collect();
    cut.push('…');
    Some(cut)
}

/// `frame — lock LOCK — wait 1.23 ms (45.6%), 123 contentions`; the root has no one lock.
fn title(p: &Placed, total_ns: u64) -> String {
    let pct = p.total_ns as f64 * 100.0 / total_ns as f64;
    let lock = if p.lock == ALL {
        String::new()
    } else {
        format!(" — lock {}", p.lock)
    };
    let s = if p.contended == 1 { "" } else { "s" };
    format!(
        "{}{lock} — wait {} ({pct:.1}%), {} contention{s}",
        p.name,
        human_ns(p.total_ns),
        p.contended
    )
}

fn frame_svg(out: &mut String, p: &Placed, y: f64, total_ns: u64) {
    let _ = write!(
        out,
        "<g class=\"frame\" data-lock=\"{}\"><title>{}</title>\
         <rect x=\"{:.2}\" y=\"{y:.0}\" width=\"{:.2}\" height=\"{:.0}\" rx=\"2\" fill=\"{}\"/>",
        escape(p.lock),
        escape(&title(p, total_ns)),
        p.x,
        p.w,
        ROW - 1.0,
        // The root is every lock of the view, even in a one-lock view: neutral.
        colour(if p.depth == 0 { ALL } else { p.lock }, p.name),
    );
    if let Some(label) = fitted(p.name, p.w) {
        let _ = write!(
            out,
            "<text x=\"{:.2}\" y=\"{:.0}\">{}</text>",
            p.x + 3.0,
            y + ROW - 4.0,
            escape(&label)
        );
    }
    out.push_str("</g>");
}

/// The `<svg>` opening tag; `extra`: further attributes, already escaped.
fn svg_open(height: f64, total_ns: u64, locks: usize, extra: &str) -> String {
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"flame\" width=\"{WIDTH:.0}\" \
         height=\"{height:.0}\" viewBox=\"0 0 {WIDTH:.0} {height:.0}\" font-family=\"monospace\" \
         font-size=\"12\" data-total-ns=\"{total_ns}\" data-locks=\"{locks}\"{extra}>"
    )
}

/// A small picture that says there is nothing to draw.
fn empty_svg(only_lock: Option<&str>, extra: &str) -> String {
    let what = match only_lock {
        Some(l) => format!("No contended waits were seen on lock {}.", escape(l)),
        None => "No contended kernel lock waits were seen.".to_owned(),
    };
    format!(
        "{}<text x=\"{PAD:.0}\" y=\"24\">{what}</text></svg>",
        svg_open(40.0, 0, 0, extra)
    )
}

/// The picture of one view of the tree.
fn render(root: &Node, only_lock: Option<&str>, extra: &str) -> String {
    let v = view(root, only_lock);
    if v.total_ns == 0 {
        return empty_svg(only_lock, extra);
    }
    let frames = layout(&v);
    let rows = frames.iter().map(|p| p.depth).max().unwrap_or(0) + 1;
    let height = TOP + rows as f64 * ROW + PAD;
    let heading = match only_lock {
        Some(l) => format!("Lock {}", escape(l)),
        None => format!("{} lock{}", v.locks, if v.locks == 1 { "" } else { "s" }),
    };
    let mut out = svg_open(height, v.total_ns, v.locks, extra);
    // Scoped to flame graphs: inline SVG styles apply to the whole page.
    out.push_str(
        "<style>svg.flame g.frame:hover rect{stroke:#222;stroke-width:1}\
         svg.flame text{pointer-events:none;fill:#111}</style>",
    );
    let _ = write!(
        out,
        "<text x=\"{PAD:.0}\" y=\"18\">{heading}: waited {} over {} contention{}</text>",
        human_ns(v.total_ns),
        v.contended,
        if v.contended == 1 { "" } else { "s" }
    );
    for p in &frames {
        // The root at the bottom, towers growing up.
        let y = height - PAD - (p.depth + 1) as f64 * ROW;
        frame_svg(&mut out, p, y, v.total_ns);
    }
    out.push_str("</svg>");
    out
}

/// The flame graph of `profile` as a standalone SVG: every lock, or with `only_lock` (a lock
/// label, as in `data-lock`) that lock's towers alone, scaled to the full width.
pub fn flame_svg(profile: &Profile, only_lock: Option<&str>) -> String {
    render(&build(profile), only_lock, "")
}

/// Lock labels by wait time, heaviest first (ties by label, so the order is stable).
fn locks_by_weight(root: &Node) -> Vec<(&str, u64)> {
    let mut by: HashMap<&str, u64> = HashMap::new();
    for n in root.children.values() {
        let e = by.entry(n.lock.as_str()).or_default();
        *e = e.saturating_add(n.total_ns);
    }
    let mut locks: Vec<(&str, u64)> = by.into_iter().collect();
    locks.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    locks
}

fn select_html(locks: &[(&str, u64)]) -> String {
    let mut out = format!(
        "<label>Lock <select class=\"flame-lock\"><option value=\"{ALL}\">all locks</option>"
    );
    for (label, ns) in locks {
        let _ = write!(
            out,
            "<option value=\"{0}\">{0} ({1})</option>",
            escape(label),
            human_ns(*ns)
        );
    }
    out.push_str("</select></label>");
    out
}

/// An HTML section with the flame graph of every lock, a view per lock (the heaviest
/// `MAX_LOCK_VIEWS`) chosen with a `<select>` (see `FLAME_SCRIPT`), and what was dropped.
pub fn flame_section(profile: &Profile, id: &str) -> String {
    let root = build(profile);
    let all = locks_by_weight(&root);
    let listed = &all[..all.len().min(MAX_LOCK_VIEWS)];
    let mut out = format!(
        "<section id=\"{}\" class=\"flame-section\"><h2>Kernel lock wait, by lock and stack</h2>\
         <p>{}",
        escape(id),
        select_html(listed)
    );
    if all.len() > listed.len() {
        let _ = write!(
            out,
            " <span class=\"note\">the {} heaviest of {} locks are listed; all are in the \
             all-locks view</span>",
            listed.len(),
            all.len()
        );
    }
    out.push_str("</p>");
    let drops = profile.drops.lines();
    if !drops.is_empty() {
        let lines: Vec<String> = drops.iter().map(|l| escape(l)).collect();
        let _ = write!(out, "<p class=\"note\">{}</p>", lines.join("<br>"));
    }
    out.push_str(&render(&root, None, &format!(" data-lock-view=\"{ALL}\"")));
    for &(label, _) in listed {
        let extra = format!(
            " data-lock-view=\"{}\" style=\"display:none\"",
            escape(label)
        );
        out.push_str(&render(&root, Some(label), &extra));
    }
    out.push_str("</section>");
    out
}

/// Switches a section's view when its `select.flame-lock` changes. Installed once per page and
/// by delegation on `document`, so it survives the live page replacing the section (and being
/// run again); the chosen lock is kept per section and in the URL hash
/// (`#flame-lock=<label, URL-encoded>`), and put back whenever new sections appear.
pub const FLAME_SCRIPT: &str = r#"
(function () {
  if (window.faultlineFlame) { window.faultlineFlame.apply(); return; }
  const chosen = new Map();
  const fromHash = () => {
    const m = /^#flame-lock=(.*)$/.exec(location.hash);
    if (!m) return null;
    try { return decodeURIComponent(m[1]); } catch (e) { return null; }
  };
  let hashLock = fromHash();
  const show = (select) => {
    const section = select.closest('section') || document;
    const views = [...section.querySelectorAll('[data-lock-view]')];
    const want = chosen.get(section.id) || hashLock || '*';
    const lock = views.some((v) => v.dataset.lockView === want) ? want : '*';
    if (select.value !== lock) select.value = lock;
    views.forEach((v) => { v.style.display = v.dataset.lockView === lock ? '' : 'none'; });
  };
  const apply = () => document.querySelectorAll('select.flame-lock').forEach(show);
  document.addEventListener('change', (ev) => {
    const select = ev.target.closest && ev.target.closest('select.flame-lock');
    if (!select) return;
    const section = select.closest('section');
    chosen.set(section ? section.id : '', select.value);
    hashLock = select.value === '*' ? null : select.value;
    const hash = hashLock === null ? '' : '#flame-lock=' + encodeURIComponent(hashLock);
    history.replaceState(null, '', location.pathname + location.search + hash);
    show(select);
  });
  window.addEventListener('hashchange', () => { hashLock = fromHash(); chosen.clear(); apply(); });
  new MutationObserver(apply).observe(document.documentElement, { childList: true, subtree: true });
  window.faultlineFlame = { apply };
  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', apply);
  else apply();
})();
"#;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::{
        event::LockType,
        lock_profile::{Drops, LockName, Naming},
    };

    fn sample(name: &str, naming: Naming, t: LockType, stack: &[&str], n: u64, ns: u64) -> Sample {
        Sample {
            lock: 0xffff_8880_0000_1000,
            lock_name: LockName {
                name: name.into(),
                naming,
            },
            lock_type: t,
            stack: stack.iter().map(|s| s.to_string()).collect(),
            cgroup: None,
            workload: None,
            task: None,
            owner: None,
            contended: n,
            total_ns: ns,
            max_ns: ns,
            stack_sampling: Default::default(),
            comm: None,
            pod: None,
        }
    }

    /// rtnl_mutex: 4 ms in two stacks sharing their two outer frames (at different offsets);
    /// two unnamed spinlocks at different addresses: 1 ms, part of it without a stack.
    fn profile() -> Profile {
        let rtnl = |stack: &[&str], n, ns| {
            sample("rtnl_mutex", Naming::Symbol, LockType::Mutex, stack, n, ns)
        };
        Profile {
            samples: vec![
                rtnl(
                    &[
                        "rtnl_lock+0x15",
                        "rtnetlink_rcv_msg+0x12c",
                        "__sys_sendmsg+0x80",
                        "entry_SYSCALL_64+0x76",
                    ],
                    30,
                    3_000_000,
                ),
                rtnl(
                    &[
                        "rtnl_lock+0x15",
                        "dev_ioctl+0x2f0",
                        "__sys_sendmsg+0x91",
                        "entry_SYSCALL_64+0x80",
                    ],
                    10,
                    1_000_000,
                ),
                sample(
                    "0xffff8880deadbeef",
                    Naming::Unnamed,
                    LockType::Spinlock,
                    &[
                        "0xffffffffc0a01234",
                        "do_thing+0x5",
                        "entry_SYSCALL_64+0x76",
                    ],
                    5,
                    600_000,
                ),
                sample(
                    "0xffff8880cafef00d",
                    Naming::Unnamed,
                    LockType::Spinlock,
                    &[],
                    4,
                    400_000,
                ),
            ],
            drops: Drops {
                waits: 50,
                no_stack: 4,
                ..Drops::default()
            },
        }
    }

    /// Each frame's (name from its title, x, width, rect y), in drawing order.
    fn frames(svg: &str) -> Vec<(String, f64, f64, f64)> {
        let attr = |g: &str, a: &str| -> f64 {
            let from = g.find(&format!(" {a}=\"")).expect("attribute") + a.len() + 3;
            let len = g[from..].find('"').expect("closing quote");
            g[from..from + len].parse().expect("a number")
        };
        svg.split("<g class=\"frame\"")
            .skip(1)
            .map(|g| {
                let t = &g[g.find("<title>").expect("title") + 7..];
                let name = t[..t.find(" — ").expect("dash")].to_owned();
                let rect = &g[g.find("<rect").expect("rect")..];
                (name, attr(rect, "x"), attr(rect, "width"), attr(rect, "y"))
            })
            .collect()
    }

    fn width_of(svg: &str, name: &str) -> f64 {
        frames(svg)
            .into_iter()
            .find(|f| f.0 == name)
            .map(|f| f.2)
            .unwrap_or_else(|| panic!("no frame {name} in {svg}"))
    }

    #[test]
    fn root_children_are_the_locks_labelled_with_their_type() {
        let root = build(&profile());
        let names: Vec<&str> = root.children.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            ["lock:rtnl_mutex [mutex]", "lock:unnamed [spinlock]"]
        );
        assert_eq!(root.total_ns, 5_000_000);
        assert_eq!(root.contended, 49);
        let unnamed = &root.children["lock:unnamed [spinlock]"];
        assert_eq!((unnamed.total_ns, unnamed.contended), (1_000_000, 9));
        assert_eq!(unnamed.children["(no stack)"].total_ns, 400_000);
        let svg = flame_svg(&profile(), None);
        assert!(svg.contains("data-total-ns=\"5000000\""), "{svg}");
        assert!(svg.contains("data-locks=\"2\""), "{svg}");
        assert!(svg.contains("<g class=\"frame\" data-lock=\"rtnl_mutex\">"));
        assert!(svg.contains("<g class=\"frame\" data-lock=\"unnamed\">"));
    }

    #[test]
    fn tower_widths_are_their_share_of_the_wait() {
        let svg = flame_svg(&profile(), None);
        let full = WIDTH - 2.0 * PAD;
        assert!((width_of(&svg, "all") - full).abs() < 0.01);
        let rtnl = width_of(&svg, "lock:rtnl_mutex [mutex]");
        assert!((rtnl - 0.8 * full).abs() < 1.0, "rtnl is {rtnl} px");
        assert!((width_of(&svg, "dev_ioctl") - 0.2 * full).abs() < 1.0);
        // The root at the bottom, the rtnl tower's leaf five rows above it.
        let f = frames(&svg);
        let y = |n: &str| f.iter().find(|x| x.0 == n).map(|x| x.3).expect("frame");
        assert!(y("all") > y("lock:rtnl_mutex [mutex]"));
        assert_eq!(y("all") - y("rtnl_lock"), 5.0 * ROW);
        // Towers side by side: the unnamed one starts where rtnl's ends.
        let x = |n: &str| f.iter().find(|x| x.0 == n).map(|x| x.1).expect("frame");
        assert!((x("lock:unnamed [spinlock]") - (PAD + 0.8 * full)).abs() < 0.01);
    }

    #[test]
    fn shared_frames_are_merged_once_offsets_and_all() {
        let svg = flame_svg(&profile(), None);
        let f = frames(&svg);
        let count = |n: &str| f.iter().filter(|x| x.0 == n).count();
        // One under each lock; rtnl's two stacks (offsets 0x76 and 0x80) are one frame.
        assert_eq!(count("entry_SYSCALL_64"), 2);
        assert_eq!(count("__sys_sendmsg"), 1);
        assert_eq!(count("rtnl_lock"), 2, "one above each of the two callers");
        assert!(!svg.contains("+0x"), "{svg}");
        let root = build(&profile());
        let sendmsg = &root.children["lock:rtnl_mutex [mutex]"].children["entry_SYSCALL_64"]
            .children["__sys_sendmsg"];
        assert_eq!((sendmsg.total_ns, sendmsg.contended), (4_000_000, 40));
        assert_eq!(sendmsg.children.len(), 2);
    }

    #[test]
    fn module_frames_keep_their_module_and_unknown_ones_are_unknown() {
        assert_eq!(
            public_frame("nf_hook_slow+0x3c [nf_tables]"),
            "nf_hook_slow [nf_tables]"
        );
        assert_eq!(public_frame("0xffffffffc0a01234"), "[unknown]");
        assert_eq!(public_frame("schedule"), "schedule");
    }

    #[test]
    fn no_kernel_address_is_drawn() {
        let p = profile();
        for out in [
            flame_svg(&p, None),
            flame_svg(&p, Some("unnamed")),
            flame_section(&p, "flame"),
        ] {
            assert!(!out.contains("0xffff"), "{out}");
            assert!(!out.contains("deadbeef") && !out.contains("cafef00d"));
        }
        assert!(flame_svg(&p, None).contains("[unknown]"));
    }

    #[test]
    fn one_lock_fills_the_width() {
        let svg = flame_svg(&profile(), Some("unnamed"));
        let full = WIDTH - 2.0 * PAD;
        assert!(svg.contains("data-total-ns=\"1000000\""), "{svg}");
        assert!(svg.contains("data-locks=\"1\""));
        assert!(!svg.contains("rtnl"), "{svg}");
        assert!((width_of(&svg, "lock:unnamed [spinlock]") - full).abs() < 0.01);
        assert!((width_of(&svg, "(no stack)") - 0.4 * full).abs() < 1.0);
        assert!(
            svg.contains("wait 400.00 us (40.0%), 4 contentions"),
            "{svg}"
        );
        let none = flame_svg(&profile(), Some("nosuch"));
        assert!(none.contains("No contended waits were seen on lock nosuch."));
    }

    #[test]
    fn titles_say_frame_lock_wait_share_and_contentions() {
        let svg = flame_svg(&profile(), None);
        assert!(
            svg.contains(
                "<title>dev_ioctl — lock rtnl_mutex — wait 1.00 ms (20.0%), 10 contentions\
                 </title>"
            ),
            "{svg}"
        );
        assert!(svg.contains("<title>all — wait 5.00 ms (100.0%), 49 contentions</title>"));
    }

    #[test]
    fn narrow_frames_are_left_out_but_weigh_in_their_parent() {
        let mut p = profile();
        // 1 ns of 5 ms is far under half a pixel.
        p.samples.push(sample(
            "rtnl_mutex",
            Naming::Symbol,
            LockType::Mutex,
            &["tiny_caller+0x1", "entry_SYSCALL_64+0x76"],
            1,
            1,
        ));
        let svg = flame_svg(&p, None);
        assert!(!svg.contains("tiny_caller"), "{svg}");
        assert!(svg.contains("data-total-ns=\"5000001\""));
        assert!(svg.contains("lock rtnl_mutex — wait 4.00 ms (80.0%), 41 contentions"));
    }

    #[test]
    fn labels_are_cut_to_fit_or_left_out() {
        assert_eq!(fitted("rtnl_lock", 200.0).as_deref(), Some("rtnl_lock"));
        // 50 px: 6 characters, so 5 and the ellipsis.
        assert_eq!(fitted("rtnetlink_rcv_msg", 50.0).as_deref(), Some("rtnet…"));
        assert_eq!(fitted("rtnetlink_rcv_msg", 20.0), None);
    }

    #[test]
    fn profile_text_is_escaped() {
        let mut p = profile();
        p.samples.push(sample(
            "x\"><script>",
            Naming::Caller,
            LockType::Mutex,
            &["a<b>&\"c+0x10", "entry_SYSCALL_64+0x76"],
            100,
            100_000_000,
        ));
        let svg = flame_svg(&p, None);
        assert!(svg.contains("a&lt;b&gt;&amp;&quot;c"), "{svg}");
        assert!(!svg.contains("a<b>"));
        let section = flame_section(&p, "flame");
        assert!(section.contains("<option value=\"caller:x&quot;&gt;&lt;script&gt;\">"));
        assert!(section.contains("data-lock-view=\"caller:x&quot;&gt;&lt;script&gt;\""));
        assert!(!section.contains("<script>"), "{section}");
    }

    #[test]
    fn the_section_offers_each_lock_heaviest_first() {
        let html = flame_section(&profile(), "lock-flame");
        assert!(html.starts_with("<section id=\"lock-flame\""));
        assert!(html.contains("<h2>Kernel lock wait, by lock and stack</h2>"));
        assert!(
            html.contains("<select class=\"flame-lock\"><option value=\"*\">all locks</option>")
        );
        let rtnl = html
            .find("<option value=\"rtnl_mutex\">")
            .expect("rtnl option");
        let unnamed = html
            .find("<option value=\"unnamed\">")
            .expect("unnamed option");
        assert!(rtnl < unnamed, "heaviest first");
        assert_eq!(html.matches("<option ").count(), 3);
        assert!(html.contains("<p class=\"note\">4 of 50 waits without a stack"));
        assert_eq!(html.matches("<svg ").count(), 3);
        assert!(html.contains("data-lock-view=\"*\">"));
        assert!(html.contains("data-lock-view=\"rtnl_mutex\" style=\"display:none\">"));
        assert!(html.contains("data-lock-view=\"unnamed\" style=\"display:none\">"));
    }

    #[test]
    fn a_section_lists_at_most_twenty_locks() {
        let p = Profile {
            samples: (0..25u64)
                .map(|i| {
                    sample(
                        &format!("lock{i:02}"),
                        Naming::Symbol,
                        LockType::Mutex,
                        &["f"],
                        1,
                        1_000 * (i + 1),
                    )
                })
                .collect(),
            drops: Drops::default(),
        };
        let html = flame_section(&p, "f");
        assert_eq!(html.matches("<option ").count(), 21);
        assert!(html.contains("<option value=\"lock24\">") && !html.contains("value=\"lock04\""));
        assert!(html.contains("the 20 heaviest of 25 locks are listed"));
        assert!(!html.contains("class=\"note\">0"), "no drops, no note");
    }

    #[test]
    fn an_empty_profile_says_no_waits_were_seen() {
        let svg = flame_svg(&Profile::default(), None);
        assert!(
            svg.contains("No contended kernel lock waits were seen."),
            "{svg}"
        );
        assert!(svg.contains("class=\"flame\""));
        assert!(svg.contains("data-total-ns=\"0\" data-locks=\"0\""));
        assert!(!svg.contains("<g class=\"frame\""));
        let html = flame_section(&Profile::default(), "f");
        assert_eq!(html.matches("<option ").count(), 1);
        assert!(html.contains("No contended kernel lock waits were seen."));
    }

    #[test]
    fn colours_are_warm_and_follow_the_lock() {
        // Hue and saturation are the lock's; only the lightness varies by frame.
        let lock_part = |c: String| c.rsplit_once(',').map(|(l, _)| l.to_owned());
        assert_eq!(
            lock_part(colour("rtnl_mutex", "a")),
            lock_part(colour("rtnl_mutex", "b"))
        );
        assert_ne!(
            lock_part(colour("rtnl_mutex", "a")),
            lock_part(colour("unnamed", "a"))
        );
        let hue: u64 = colour("rtnl_mutex", "a")[4..]
            .split(',')
            .next()
            .and_then(|h| h.parse().ok())
            .expect("hue");
        assert!(hue < 50);
        assert_eq!(colour(ALL, "all"), "hsl(0,0%,80%)");
    }

    #[test]
    fn the_script_delegates_and_reads_the_hash() {
        assert!(FLAME_SCRIPT.contains("document.addEventListener('change'"));
        assert!(FLAME_SCRIPT.contains("#flame-lock="));
        assert!(FLAME_SCRIPT.contains("if (window.faultlineFlame)"));
    }
}
