//! Who held what while whom waited: one row per task, its waits above its holds, on one time
//! axis, with the alerts marked. Built from a trace's events (a replay report) or from the graph
//! at one moment (an incident: only what was still going on, since when).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fmt::Write as _,
};

use crate::{
    core::event::{Addr, Event, EventKind, LockMode},
    core::model::{Blocked, Tid},
    core::views::GraphView,
};

use super::text::{escape, short_duration};

/// Rows drawn at most; a report about more tasks than this is about a convoy, and the graph
/// (with its groups) tells that story better.
pub const MAX_ROWS: usize = 60;
/// Bars kept per task: the most recent ones.
const MAX_BARS: usize = 400;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BarKind {
    Wait,
    HoldRead,
    HoldWrite,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Bar {
    pub kind: BarKind,
    pub start_ns: u64,
    /// `None`: still going on at the end.
    pub end_ns: Option<u64>,
    pub label: String,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Row {
    pub tid: Tid,
    pub pid: u32,
    pub comm: String,
    pub bars: Vec<Bar>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Timeline {
    pub start_ns: u64,
    pub end_ns: u64,
    pub rows: Vec<Row>,
    /// (time, label) of each alert.
    pub marks: Vec<(u64, String)>,
    /// Tasks left out (over `MAX_ROWS`).
    pub hidden: usize,
}

/// "mutex", "rwsem_write", …: the trace format's names.
fn type_name(t: &crate::core::event::LockType) -> String {
    serde_json::to_value(t)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| "lock".into())
}

/// `K`: the raw address (replay's events) or as a view shows it.
fn mm_name<K: std::hash::Hash + Eq + std::fmt::Display>(owners: &HashMap<K, u32>, mm: K) -> String {
    match owners.get(&mm) {
        Some(p) => format!("mmap_lock of pid {p}"),
        None => format!("mmap_lock of mm {mm}"),
    }
}

/// Follows the events of chosen tasks and turns them into bars.
pub struct TimelineBuilder {
    tids: BTreeSet<Tid>,
    rows: BTreeMap<Tid, Row>,
    owners: HashMap<Addr, u32>,
    /// tid → (bar index, whether it is a kernel-lock wait).
    open_wait: HashMap<Tid, (usize, bool)>,
    /// (tid, mm) → (bar index, nesting depth).
    open_hold: HashMap<(Tid, Addr), (usize, u32)>,
    start_ns: Option<u64>,
    end_ns: u64,
}

impl TimelineBuilder {
    pub fn new(tids: BTreeSet<Tid>) -> Self {
        Self {
            tids,
            rows: BTreeMap::new(),
            owners: HashMap::new(),
            open_wait: HashMap::new(),
            open_hold: HashMap::new(),
            start_ns: None,
            end_ns: 0,
        }
    }

    fn open(&mut self, tid: Tid, kind: BarKind, ts: u64, label: String) -> usize {
        let row = self.rows.entry(tid).or_default();
        if row.bars.len() >= MAX_BARS {
            // Keep the newest: drop the oldest closed bar and re-index the open ones.
            if let Some(pos) = row.bars.iter().position(|b| b.end_ns.is_some()) {
                row.bars.remove(pos);
                if let Some((w, _)) = self.open_wait.get_mut(&tid) {
                    if *w > pos {
                        *w -= 1;
                    }
                }
                for ((t, _), (i, _)) in self.open_hold.iter_mut() {
                    if *t == tid && *i > pos {
                        *i -= 1;
                    }
                }
            }
        }
        row.bars.push(Bar {
            kind,
            start_ns: ts,
            end_ns: None,
            label,
        });
        row.bars.len() - 1
    }

    fn close(&mut self, tid: Tid, idx: usize, ts: u64) {
        if let Some(b) = self.rows.get_mut(&tid).and_then(|r| r.bars.get_mut(idx)) {
            b.end_ns = Some(ts.max(b.start_ns));
        }
    }

    fn end_wait(&mut self, tid: Tid, ts: u64) {
        if let Some((i, _)) = self.open_wait.remove(&tid) {
            self.close(tid, i, ts);
        }
    }

    fn start_wait(&mut self, tid: Tid, ts: u64, label: String, kernel_lock: bool) {
        self.end_wait(tid, ts);
        let i = self.open(tid, BarKind::Wait, ts, label);
        self.open_wait.insert(tid, (i, kernel_lock));
    }

    fn hold(&mut self, tid: Tid, mm: Addr, mode: LockMode, ts: u64) {
        match self.open_hold.get(&(tid, mm)).copied() {
            // A downgrade: the write hold ends, a read hold begins.
            Some((i, _))
                if mode == LockMode::Read && self.kind_of(tid, i) == BarKind::HoldWrite =>
            {
                self.close(tid, i, ts);
                self.open_hold.remove(&(tid, mm));
            }
            Some((i, depth)) => {
                self.open_hold.insert((tid, mm), (i, depth + 1));
                return;
            }
            None => {}
        }
        let kind = match mode {
            LockMode::Read => BarKind::HoldRead,
            LockMode::Write => BarKind::HoldWrite,
        };
        let label = format!("holds {} ({mode})", mm_name(&self.owners, mm));
        let i = self.open(tid, kind, ts, label);
        self.open_hold.insert((tid, mm), (i, 1));
    }

    fn kind_of(&self, tid: Tid, i: usize) -> BarKind {
        self.rows
            .get(&tid)
            .and_then(|r| r.bars.get(i))
            .map(|b| b.kind)
            .unwrap_or(BarKind::Wait)
    }

    fn release(&mut self, tid: Tid, mm: Addr, ts: u64) {
        match self.open_hold.get(&(tid, mm)).copied() {
            Some((i, depth)) if depth > 1 => {
                self.open_hold.insert((tid, mm), (i, depth - 1));
            }
            Some((i, _)) => {
                self.open_hold.remove(&(tid, mm));
                self.close(tid, i, ts);
            }
            None => {}
        }
    }

    pub fn apply(&mut self, ev: &Event) {
        self.start_ns.get_or_insert(ev.ts_ns);
        self.end_ns = self.end_ns.max(ev.ts_ns);
        // Owners are learnt from every task, so a lock reads the same in every row.
        match &ev.kind {
            EventKind::MmapLockStart { mm, mm_pid, .. }
            | EventKind::MmapLockAcquire { mm, mm_pid, .. } => {
                self.owners.insert(*mm, mm_pid.unwrap_or(ev.pid));
            }
            _ => {}
        }
        if !self.tids.contains(&ev.tid) {
            return;
        }
        let tid = ev.tid;
        let ts = ev.ts_ns;
        {
            let row = self.rows.entry(tid).or_default();
            row.tid = tid;
            row.pid = ev.pid;
            if let Some(c) = &ev.comm {
                row.comm.clone_from(c);
            }
        }
        match &ev.kind {
            EventKind::MmapLockStart { mm, mode, .. } => {
                let label = format!("waits for {} ({mode})", mm_name(&self.owners, *mm));
                self.start_wait(tid, ts, label, false);
            }
            EventKind::MmapLockAcquire {
                mm, mode, success, ..
            } => {
                self.end_wait(tid, ts);
                if *success {
                    self.hold(tid, *mm, *mode, ts);
                }
            }
            EventKind::MmapLockRelease { mm, .. } => {
                self.end_wait(tid, ts);
                self.release(tid, *mm, ts);
            }
            EventKind::LockWaitBegin {
                lock, lock_type, ..
            } => {
                let kind = type_name(lock_type);
                // The slow path of an mmap_lock wait reports itself again: one bar is enough.
                if !self.open_wait.contains_key(&tid) {
                    self.start_wait(tid, ts, format!("waits for {kind} {lock}"), true);
                }
            }
            EventKind::LockWaitEnd { .. } => {
                if self.open_wait.get(&tid).is_some_and(|(_, kernel)| *kernel) {
                    self.end_wait(tid, ts);
                }
            }
            EventKind::UffdWaitBegin { uffd, .. } => {
                self.start_wait(tid, ts, format!("waits for userfaultfd {uffd}"), false);
            }
            // A sleep on a word with no owner (a condition variable, a barrier) is no wait on
            // a lock: it ends a bar, as any sign of the task running does.
            EventKind::FutexWaitBegin {
                lock, futex, name, ..
            } => {
                if lock.has_owner() {
                    let what = name.clone().unwrap_or_else(|| futex.to_string());
                    self.start_wait(
                        tid,
                        ts,
                        format!("waits for {} {what}", lock.as_str()),
                        false,
                    );
                } else {
                    self.end_wait(tid, ts);
                }
            }
            EventKind::FutexWaitEnd { .. } => self.end_wait(tid, ts),
            EventKind::UffdWaitEnd { .. } | EventKind::UffdIoctlEnd { .. } => {
                self.end_wait(tid, ts)
            }
            EventKind::UffdIoctlBegin { .. } | EventKind::PageFault { .. } => {
                self.end_wait(tid, ts)
            }
            // Holding a descriptor is a state, and a loss is no task's: not moments of a task's
            // timeline.
            EventKind::UffdHeld { .. }
            | EventKind::UffdHandlerSeen { .. }
            | EventKind::Lost { .. }
            | EventKind::ProcessGone {}
            | EventKind::ReadHoldersInferred { .. }
            | EventKind::Confirmed {}
            | EventKind::Snapshot {}
            | EventKind::Journal {}
            | EventKind::LockProfile { .. } => {}
            // A snapshot's corrections end bars like the records they stand for.
            EventKind::WaitEnded {} => self.end_wait(tid, ts),
            EventKind::HoldEnded { mm } => self.release(tid, *mm, ts),
            EventKind::TaskExit {} | EventKind::TaskGone {} => {
                self.end_wait(tid, ts);
                let held: Vec<(Tid, Addr)> = self
                    .open_hold
                    .keys()
                    .filter(|(t, _)| *t == tid)
                    .copied()
                    .collect();
                for k in held {
                    if let Some((i, _)) = self.open_hold.remove(&k) {
                        self.close(tid, i, ts);
                    }
                }
            }
        }
    }

    pub fn finish(self, marks: Vec<(u64, String)>) -> Timeline {
        let mut rows: Vec<Row> = self.rows.into_values().collect();
        let hidden = rows.len().saturating_sub(MAX_ROWS);
        rows.truncate(MAX_ROWS);
        Timeline {
            start_ns: self.start_ns.unwrap_or(0),
            end_ns: self.end_ns,
            rows,
            marks,
            hidden,
        }
    }
}

impl Timeline {
    /// What the graph at one moment says about time: each task's current wait and holds, since
    /// when (no history: the agent keeps none).
    pub fn from_view(view: &GraphView, marks: Vec<(u64, String)>) -> Self {
        let owners: HashMap<crate::core::exposure::Shown, u32> = view
            .edges
            .iter()
            .filter_map(|e| match e.lock {
                crate::core::graph::LockRef::MmapLock {
                    mm,
                    owner_pid: Some(p),
                } => Some((mm, p)),
                _ => None,
            })
            .collect();
        let mut start = view.now_ns;
        let hidden = view.tasks.len().saturating_sub(MAX_ROWS);
        let rows: Vec<Row> = view
            .tasks
            .iter()
            .take(MAX_ROWS)
            .map(|t| {
                let mut bars = Vec::new();
                for h in &t.holds {
                    start = start.min(h.since_ns);
                    bars.push(Bar {
                        kind: match h.mode {
                            LockMode::Read => BarKind::HoldRead,
                            LockMode::Write => BarKind::HoldWrite,
                        },
                        start_ns: h.since_ns,
                        end_ns: None,
                        label: format!("holds {} ({})", mm_name(&owners, h.mm), h.mode),
                    });
                }
                if let Some(b) = &t.blocked {
                    start = start.min(b.since_ns());
                    let label = match b {
                        Blocked::MmapLock { mm, mode, .. } => {
                            format!("waits for {} ({mode})", mm_name(&owners, *mm))
                        }
                        Blocked::KernelLock {
                            lock, lock_type, ..
                        } => format!("waits for {} {lock}", type_name(lock_type)),
                        Blocked::Uffd { uffd, .. } => format!("waits for userfaultfd {uffd}"),
                        Blocked::UserLock {
                            lock,
                            lock_type,
                            name,
                            ..
                        } => match name {
                            Some(n) => format!("waits for {} {n}", lock_type.as_str()),
                            None => format!("waits for {} {lock}", lock_type.as_str()),
                        },
                    };
                    bars.push(Bar {
                        kind: BarKind::Wait,
                        start_ns: b.since_ns(),
                        end_ns: None,
                        label,
                    });
                }
                Row {
                    tid: t.tid,
                    pid: t.pid,
                    comm: t.comm.clone().unwrap_or_else(|| "?".into()),
                    bars,
                }
            })
            .collect();
        Self {
            start_ns: start,
            end_ns: view.now_ns,
            rows,
            marks,
            hidden,
        }
    }

    /// The timeline as one `<svg>`.
    pub fn render(&self) -> String {
        const LEFT: f64 = 250.0;
        const PLOT_W: f64 = 820.0;
        const ROW_H: f64 = 34.0;
        const TOP: f64 = 34.0;
        if self.rows.is_empty() {
            return "<p class=\"note\">no task to show</p>".into();
        }
        let span = self.end_ns.saturating_sub(self.start_ns).max(1) as f64;
        let x = |ts: u64| LEFT + (ts.saturating_sub(self.start_ns) as f64 / span) * PLOT_W;
        let height = TOP + self.rows.len() as f64 * ROW_H + 24.0;
        let width = LEFT + PLOT_W + 30.0;
        let mut s = format!(
            "<svg class=\"timeline\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{width:.0}\" \
             height=\"{height:.0}\" viewBox=\"0 0 {width:.0} {height:.0}\"><style>\
             .timeline {{ font-family: \"DejaVu Sans Mono\", monospace; font-size: 11px; background: #fff; }}\
             .timeline .wait {{ fill: #e57373; }} .timeline .hold-write {{ fill: #1e88e5; }}\
             .timeline .hold-read {{ fill: #43a047; }} .timeline .open {{ opacity: 0.75; }}\
             .timeline .grid {{ stroke: #e3e6ea; }} .timeline .mark {{ stroke: #c62828; stroke-dasharray: 4 3; stroke-width: 1.5; }}\
             .timeline .marklabel {{ fill: #c62828; font-weight: bold; }}\
             .timeline .rowlabel {{ fill: #1a1a1a; }} .timeline .barlabel {{ fill: #fff; }}\
             .timeline .sidelabel {{ fill: #333; }}\
             </style>"
        );
        // Time axis: five ticks.
        for i in 0..=5 {
            let ts = self.start_ns + (span as u64 / 5) * i;
            let xx = x(ts);
            let _ = write!(
                s,
                "<line class=\"grid\" x1=\"{xx:.1}\" y1=\"{:.1}\" x2=\"{xx:.1}\" y2=\"{:.1}\"/>\
                 <text x=\"{xx:.1}\" y=\"14\" text-anchor=\"middle\">+{}</text>",
                TOP - 8.0,
                height - 18.0,
                short_duration(ts - self.start_ns)
            );
        }
        for (i, row) in self.rows.iter().enumerate() {
            let y = TOP + i as f64 * ROW_H;
            let _ = write!(
                s,
                "<g class=\"row\" data-tid=\"{}\"><text class=\"rowlabel\" x=\"8\" y=\"{:.1}\">{}</text>",
                row.tid,
                y + ROW_H / 2.0 + 4.0,
                escape(&format!("{} {} (pid {})", row.comm, row.tid, row.pid))
            );
            for b in &row.bars {
                let end = b.end_ns.unwrap_or(self.end_ns);
                let (x0, x1) = (x(b.start_ns), x(end));
                let w = (x1 - x0).max(2.0);
                // Waits in the upper half, holds in the lower: overlaps are the story.
                let (class, yy) = match b.kind {
                    BarKind::Wait => ("wait", y + 3.0),
                    BarKind::HoldWrite => ("hold-write", y + ROW_H / 2.0),
                    BarKind::HoldRead => ("hold-read", y + ROW_H / 2.0),
                };
                let open = if b.end_ns.is_none() { " open" } else { "" };
                let dur = short_duration(end.saturating_sub(b.start_ns));
                let more = if b.end_ns.is_none() {
                    "+, still going on"
                } else {
                    ""
                };
                let _ = write!(
                    s,
                    "<rect class=\"{class}{open}\" x=\"{x0:.1}\" y=\"{yy:.1}\" width=\"{w:.1}\" \
                     height=\"{:.1}\"><title>{}</title></rect>",
                    ROW_H / 2.0 - 4.0,
                    escape(&format!("{}: {dur}{more}", b.label))
                );
                let text = format!("{} · {dur}{more}", b.label);
                let text_w = text.chars().count() as f64 * 6.6 + 6.0;
                // Inside the bar when it fits, else beside it where no other bar of its lane is
                // (words over a bar are unreadable; the tooltip still has them).
                let lane_free = |from: f64, to: f64| {
                    row.bars.iter().filter(|o| !std::ptr::eq(*o, b)).all(|o| {
                        let same_lane = (o.kind == BarKind::Wait) == (b.kind == BarKind::Wait);
                        let (o0, o1) = (x(o.start_ns), x(o.end_ns.unwrap_or(self.end_ns)));
                        !same_lane || o1 < from || o0 > to
                    })
                };
                let place = if w > text_w {
                    Some(("barlabel", x0 + 4.0, "start"))
                } else if x0 - LEFT > text_w && lane_free(x0 - text_w, x0) {
                    Some(("sidelabel", x0 - 4.0, "end"))
                } else if LEFT + PLOT_W - x1 > text_w && lane_free(x1, x1 + text_w) {
                    Some(("sidelabel", x1 + 4.0, "start"))
                } else {
                    None
                };
                if let Some((class, tx, anchor)) = place {
                    let _ = write!(
                        s,
                        "<text class=\"{class}\" x=\"{tx:.1}\" y=\"{:.1}\" text-anchor=\"{anchor}\">{}</text>",
                        yy + ROW_H / 2.0 - 8.0,
                        escape(&text)
                    );
                }
            }
            s.push_str("</g>");
        }
        for (ts, label) in &self.marks {
            let xx = x(*ts);
            let _ = write!(
                s,
                "<line class=\"mark\" x1=\"{xx:.1}\" y1=\"{:.1}\" x2=\"{xx:.1}\" y2=\"{:.1}\"/>\
                 <text class=\"marklabel\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
                TOP - 6.0,
                height - 18.0,
                xx - 3.0,
                height - 6.0,
                escape(label)
            );
        }
        s.push_str("</svg>");
        if self.hidden > 0 {
            let _ = write!(
                s,
                "<p class=\"hidden-note\">{} more tasks are not shown in the timeline.</p>",
                self.hidden
            );
        }
        s
    }
}
