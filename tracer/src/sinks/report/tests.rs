//! The picture builders on small graphs made by the real engine.

use std::collections::BTreeSet;

use crate::{
    core::detect::{Alert, AlertKind, Severity},
    core::engine::Engine,
    core::event::{Addr, Event, EventKind, LockMode},
    core::exposure::Exposure,
    core::views::GraphView,
};

use super::{
    html,
    page::expand_set,
    scene::{EdgeKind, Scene},
    svg, text,
    timeline::{BarKind, TimelineBuilder},
};

const MM: Addr = Addr(0x1000);

fn ev(ts: u64, tid: u32, comm: &str, kind: EventKind) -> Event {
    Event {
        ts_ns: ts,
        tid,
        pid: 1,
        comm: Some(comm.into()),
        kind,
    }
}

fn start(mode: LockMode) -> EventKind {
    EventKind::MmapLockStart {
        mm: MM,
        mode,
        mm_pid: None,
    }
}

fn acquire(mode: LockMode) -> EventKind {
    EventKind::MmapLockAcquire {
        mm: MM,
        mode,
        success: true,
        mm_pid: None,
    }
}

/// Reader 1 holds the lock, writer 2 queues behind it, then `readers` tasks (tids 100…) queue
/// behind the writer.
fn convoy(readers: u32) -> (Vec<Event>, GraphView) {
    let mut events = vec![
        ev(0, 1, "holder", acquire(LockMode::Read)),
        ev(10, 2, "writer", start(LockMode::Write)),
    ];
    for i in 0..readers {
        events.push(ev(
            20 + u64::from(i),
            100 + i,
            if i % 2 == 0 { "reader" } else { "other" },
            start(LockMode::Read),
        ));
    }
    events.push(ev(
        2_000_000_000,
        9,
        "clock",
        EventKind::PageFault {
            addr: Addr(0),
            user: true,
            error_code: 0,
            under_lock: false,
        },
    ));
    let mut e = Engine::new(Default::default());
    for x in &events {
        e.apply(x);
    }
    let view = GraphView::build(e.model(), &e.graph(), e.now_ns(), &Exposure::Raw);
    (events, view)
}

/// Task 1 holds the lock for read, writer 2 queues, then 1 asks for read again: a cycle.
fn cycle(comm: &str) -> GraphView {
    let mut e = Engine::new(Default::default());
    for x in [
        ev(0, 1, comm, acquire(LockMode::Read)),
        ev(1, 2, "writer", start(LockMode::Write)),
        ev(2, 1, comm, start(LockMode::Read)),
    ] {
        e.apply(&x);
    }
    GraphView::build(e.model(), &e.graph(), e.now_ns(), &Exposure::Raw)
}

#[test]
fn identical_readers_behind_one_writer_are_one_box_that_expands_on_request() {
    let (_, view) = convoy(37);
    let scene = Scene::from_view(&view).grouped(&BTreeSet::new());
    let groups: Vec<_> = scene.nodes.iter().filter(|n| n.group).collect();
    assert_eq!(groups.len(), 1, "one group: {:#?}", scene.nodes);
    let g = groups[0];
    assert_eq!(g.members.len(), 37);
    assert_eq!(g.lines[0], "37 readers");
    assert_eq!(g.lines[1], "of mmap_lock of pid 1");
    assert_eq!(g.lines[2], "queued behind writer 2 (writer)");
    assert_eq!(g.lines[3], "reader ×19, other ×18");
    assert_eq!(g.lines[4], "blocked 2.00s", "one length when all are alike");
    // Writer and holder stay, one box each: 3 boxes in all, and one arrow for the 37.
    assert_eq!(scene.nodes.len(), 3);
    let arrow = scene
        .edges
        .iter()
        .find(|e| scene.nodes[e.from].group)
        .expect("the group's arrow");
    assert_eq!(arrow.count, 37);
    assert_eq!(arrow.kind, EdgeKind::QueuedBehindWriter);
    assert_eq!(arrow.lines()[0], "×37 mmap_lock of pid 1");

    let expand: BTreeSet<String> = [g.id.clone()].into();
    let open = Scene::from_view(&view).grouped(&expand);
    assert_eq!(open.nodes.len(), 39, "every reader one by one");
    assert_eq!(open.expanded, vec![(g.id.clone(), 37)]);

    let drawn = svg::render(&scene, "t");
    assert!(drawn.contains("class=\"node blocked w2 group\""), "{drawn}");
    assert!(drawn.contains(&format!("data-node=\"{}\"", g.id)));
    let lists = html::member_lists(&scene);
    assert!(lists.contains("37 tasks"), "{lists}");
    assert_eq!(lists.matches("<tr><td class=\"num\">").count(), 37);
}

#[test]
fn two_identical_waiters_are_not_grouped() {
    let (_, view) = convoy(2);
    let scene = Scene::from_view(&view).grouped(&BTreeSet::new());
    assert!(scene.nodes.iter().all(|n| !n.group), "{:#?}", scene.nodes);
    assert_eq!(scene.nodes.len(), 4);
}

#[test]
fn names_with_markup_are_escaped_everywhere() {
    let nasty = "<b>&\"x'";
    let view = cycle(nasty);
    let scene = Scene::from_view(&view).grouped(&BTreeSet::new());
    let drawn = svg::render(&scene, "t");
    let alert = Alert {
        kind: AlertKind::Deadlock,
        severity: Severity::Critical,
        ts_ns: 2,
        tids: vec![1, 2],
        summary: format!("deadlock of {nasty}"),
        confidence: crate::core::detect::Confidence::Probable,
        evidence: vec![format!("{nasty} is inferred")],
        locks: Vec::new(),
    };
    let page = super::incident_html(&alert, &view);
    for doc in [&drawn, &page] {
        assert!(!doc.contains("<b>"), "raw markup leaked: {doc}");
        assert!(!doc.contains("\"x'"), "raw quotes leaked");
    }
    assert!(drawn.contains("&lt;b&gt;&amp;&quot;x&#39;"), "{drawn}");
    assert!(page.contains("deadlock of &lt;b&gt;&amp;&quot;x&#39;"));
    assert_eq!(
        text::escape("a\u{1}b"),
        "a\u{fffd}b",
        "no control characters in XML"
    );
}

#[test]
fn a_cycle_is_marked_on_its_boxes_its_arrows_and_above_the_picture() {
    let view = cycle("reader");
    let scene = Scene::from_view(&view).grouped(&BTreeSet::new());
    let drawn = svg::render(&scene, "t");
    for tid in [1, 2] {
        assert!(
            drawn.contains(&format!(
                "id=\"t{tid}\" data-node=\"t{tid}\" data-tids=\"{tid}\""
            )),
            "{drawn}"
        );
    }
    assert_eq!(drawn.matches(" cycle\" id=\"t").count(), 2, "{drawn}");
    assert_eq!(drawn.matches("<path class=\"edge").count(), 2);
    assert!(drawn.contains("class=\"edge queued cycle\""), "{drawn}");
    assert!(drawn.contains("class=\"edge holds cycle\""), "{drawn}");
    assert!(drawn.contains("wants read · queued behind writer"));
    assert!(drawn.contains("wants write · held read"));
    assert_eq!(drawn.matches("<g").count(), drawn.matches("</g>").count());
    let line = html::cycles_line(&scene);
    assert!(line.contains("data-cycle=\"1 2\""), "{line}");
    assert!(
        line.contains("1 (reader, pid 1) → 2 (writer, pid 1) → 1"),
        "in the order the arrows go: {line}"
    );
}

#[test]
fn an_empty_graph_says_so() {
    let e = Engine::new(Default::default());
    let view = GraphView::build(e.model(), &e.graph(), 0, &Exposure::Raw);
    let drawn = svg::render(&Scene::from_view(&view), "t");
    assert!(drawn.contains("no blocked tasks"), "{drawn}");
}

#[test]
fn too_many_boxes_are_capped_keeping_the_cycle_and_counting_the_rest() {
    let (_, view) = convoy(30);
    // Expanded, 32 boxes; keep 5: the writer and holder (waited for) first, then the longest.
    let all: BTreeSet<String> = Scene::from_view(&view)
        .grouped(&BTreeSet::new())
        .nodes
        .iter()
        .filter(|n| n.group)
        .map(|n| n.id.clone())
        .collect();
    let scene = Scene::from_view(&view).grouped(&all).capped(5);
    assert_eq!(scene.nodes.len(), 5);
    assert_eq!(scene.hidden, 27);
    let ids: Vec<&str> = scene.nodes.iter().map(|n| n.id.as_str()).collect();
    assert!(ids.contains(&"t1") && ids.contains(&"t2"), "{ids:?}");
    assert!(html::member_lists(&scene).contains("27 more tasks are not drawn"));
}

#[test]
fn the_timeline_shows_holds_under_the_waits_they_cause() {
    let (events, _) = convoy(3);
    let mut b = TimelineBuilder::new([1, 2, 100].into());
    for e in &events {
        b.apply(e);
    }
    let t = b.finish(vec![(2_000_000_000, "stall".into())]);
    assert_eq!(t.rows.len(), 3);
    let holder = &t.rows[0];
    assert_eq!(holder.tid, 1);
    assert_eq!(holder.bars.len(), 1);
    assert_eq!(holder.bars[0].kind, BarKind::HoldRead);
    assert_eq!(holder.bars[0].end_ns, None, "still held at the end");
    assert_eq!(holder.bars[0].label, "holds mmap_lock of pid 1 (read)");
    let writer = &t.rows[1];
    assert_eq!(writer.bars[0].kind, BarKind::Wait);
    assert_eq!(writer.bars[0].start_ns, 10);
    let drawn = t.render();
    assert!(drawn.contains("data-tid=\"100\""), "{drawn}");
    assert!(drawn.contains("class=\"mark\""));
}

#[test]
fn a_released_hold_ends_its_bar_and_a_downgrade_starts_a_read_hold() {
    let release = EventKind::MmapLockRelease {
        mm: MM,
        mode: LockMode::Read,
        mm_pid: None,
    };
    let mut b = TimelineBuilder::new([1].into());
    for e in [
        ev(0, 1, "t", acquire(LockMode::Write)),
        ev(5, 1, "t", acquire(LockMode::Read)),
        ev(9, 1, "t", release),
    ] {
        b.apply(&e);
    }
    let t = b.finish(Vec::new());
    let kinds: Vec<(BarKind, u64, Option<u64>)> = t.rows[0]
        .bars
        .iter()
        .map(|b| (b.kind, b.start_ns, b.end_ns))
        .collect();
    assert_eq!(
        kinds,
        vec![
            (BarKind::HoldWrite, 0, Some(5)),
            (BarKind::HoldRead, 5, Some(9))
        ]
    );
}

#[test]
fn only_group_ids_are_accepted_for_expansion() {
    let ok = "g0123456789abcdef";
    let got = expand_set(Some(&format!("expand={ok},../etc,g12%2C{ok}&x=1")));
    assert_eq!(got, [ok.to_owned()].into());
    assert!(expand_set(None).is_empty());
}

#[test]
fn the_largest_picture_drawn_is_laid_out_with_every_box() {
    // 40 locks, each held by one task with a writer queued behind: MAX_NODES boxes, none alike.
    let mut e = Engine::new(Default::default());
    for i in 0..40u32 {
        let mm = Addr(0x10_000 + u64::from(i) * 0x1000);
        let (holder, writer) = (1000 + 2 * i, 1001 + 2 * i);
        e.apply(&ev(
            u64::from(i),
            holder,
            "h",
            EventKind::MmapLockAcquire {
                mm,
                mode: LockMode::Read,
                success: true,
                mm_pid: Some(holder),
            },
        ));
        e.apply(&ev(
            100 + u64::from(i),
            writer,
            "w",
            EventKind::MmapLockStart {
                mm,
                mode: LockMode::Write,
                mm_pid: Some(holder),
            },
        ));
    }
    let view = GraphView::build(e.model(), &e.graph(), e.now_ns(), &Exposure::Raw);
    let scene = Scene::from_view(&view)
        .grouped(&BTreeSet::new())
        .capped(super::scene::MAX_NODES);
    assert_eq!(scene.nodes.len(), super::scene::MAX_NODES);
    let t = std::time::Instant::now();
    let drawn = svg::render(&scene, "t");
    eprintln!("laid out {} boxes in {:?}", scene.nodes.len(), t.elapsed());
    assert_eq!(drawn.matches("<g class=\"node").count(), 80);
    assert_eq!(drawn.matches("<path class=\"edge").count(), 40);
}

#[test]
fn diagnose_draws_a_probable_cycle_titled_as_probable() {
    use crate::core::diagnosis::{analyse, Confidence, Filter, Snapshot};
    // The gathered snapshot of `faultline-scenario uffd-monitor-deadlock` (see the core's
    // analysis tests): its cycle rests on a handler named from evidence.
    let snap: Snapshot = serde_json::from_str(include_str!(
        "../../../../core/tests/fixtures/diagnose/uffd-monitor-deadlock.json"
    ))
    .expect("the fixture parses");
    let d = analyse(&snap, &Filter::default());
    assert_eq!(d.cycles.len(), 1, "{:#?}", d.cycles);
    assert_eq!(d.cycles[0].confidence, Confidence::Probable);
    let svg = super::diagnosis_svg(&d);
    assert!(
        svg.contains("part of a probable deadlock cycle")
            && !svg.contains("part of a deadlock cycle"),
        "the picture says probable too: {svg}"
    );
}

#[test]
fn a_task_of_unknown_state_and_an_owner_word_hold_say_so_in_their_box() {
    let mut engine = Engine::new(Default::default());
    // A reader contends behind writer 2, which it found in the owner word (default mode).
    engine.apply(&ev(
        1,
        1,
        "reader",
        EventKind::LockWaitBegin {
            lock: Addr(0x1070),
            lock_type: crate::core::event::LockType::RwsemRead,
            owner_tid: Some(2),
            mm: Some(MM),
        },
    ));
    let box_of = |engine: &Engine, tid: u32| {
        let view = GraphView::build(
            engine.model(),
            &engine.graph(),
            engine.now_ns(),
            &Exposure::Raw,
        );
        let scene = Scene::from_view(&view);
        scene
            .nodes
            .iter()
            .find(|n| n.id == format!("t{tid}"))
            .map(|n| n.lines.join(" / "))
            .unwrap_or_default()
    };
    assert!(
        box_of(&engine, 2).contains("(write, from the owner word)"),
        "{}",
        box_of(&engine, 2)
    );
    assert!(!box_of(&engine, 1).contains("state unknown"));
    engine.apply(&Event {
        ts_ns: 2,
        tid: 0,
        pid: 0,
        comm: None,
        kind: EventKind::Lost { count: 3 },
    });
    assert!(
        box_of(&engine, 1).contains("state unknown: events lost"),
        "{}",
        box_of(&engine, 1)
    );
}
