//! The engine at host scale: 100k tasks, most of them blocked in read-write-read convoys, a few
//! in cycles. Reports how long one full detector pass (graph build, SCC, every detector) takes,
//! which bounds how often the live agent can afford to run it. Run by `cargo xtask bench`.

use std::time::Instant;

use tracer::{
    core::detect::Thresholds,
    core::engine::Engine,
    core::event::{Addr, Event, EventKind, LockMode},
};

fn main() {
    const MMS: u32 = 1000;
    const PER_MM: u32 = 100;
    let mut engine = Engine::new(Thresholds::default());
    let ev = |ts: u64, tid: u32, pid: u32, kind| Event {
        ts_ns: ts,
        tid,
        pid,
        comm: None,
        kind,
    };
    let t0 = Instant::now();
    let mut n = 0u64;
    for m in 0..MMS {
        let mm = Addr(0xffff_8880_0000_0000 + u64::from(m) * 0x1000);
        let pid = 10_000 + m;
        let base = m * PER_MM + 1;
        // One reader holds, one writer queues, the rest queue behind the writer.
        engine.apply(&ev(
            1,
            base,
            pid,
            EventKind::MmapLockAcquire {
                mm,
                mode: LockMode::Read,
                success: true,
                mm_pid: None,
            },
        ));
        engine.apply(&ev(
            2,
            base + 1,
            pid,
            EventKind::MmapLockStart {
                mm,
                mode: LockMode::Write,
                mm_pid: None,
            },
        ));
        for t in 2..PER_MM {
            engine.apply(&ev(
                3,
                base + t,
                pid,
                EventKind::MmapLockStart {
                    mm,
                    mode: LockMode::Read,
                    mm_pid: None,
                },
            ));
        }
        // Every tenth holder re-reads its own lock: a two-task cycle.
        if m % 10 == 0 {
            engine.apply(&ev(
                4,
                base,
                pid,
                EventKind::MmapLockStart {
                    mm,
                    mode: LockMode::Read,
                    mm_pid: None,
                },
            ));
        }
        n += u64::from(PER_MM) + 1;
    }
    let build = t0.elapsed();
    let blocked = engine.model().blocked.len();
    // Far enough in trace time that every detector fires once.
    engine.apply(&Event {
        ts_ns: 10_000_000_000,
        tid: 0,
        pid: 0,
        comm: None,
        kind: EventKind::Snapshot {},
    });
    let mut best = f64::MAX;
    let mut alerts = 0;
    for _ in 0..5 {
        let t = Instant::now();
        alerts += engine.check().len();
        best = best.min(t.elapsed().as_secs_f64());
    }
    let t = Instant::now();
    let g = engine.graph();
    let graph_ms = t.elapsed().as_secs_f64() * 1e3;
    let t = Instant::now();
    let cycles = g.cycles().len();
    let scc_ms = t.elapsed().as_secs_f64() * 1e3;
    println!("  of which: waits-for graph {graph_ms:.1} ms, SCC {scc_ms:.1} ms ({cycles} cycles)");
    println!(
        "engine: {} tasks ({blocked} blocked) built from {n} events in {:.0} ms; one full detector pass {:.1} ms (best of 5); {} cycles",
        MMS * PER_MM,
        build.as_secs_f64() * 1e3,
        best * 1e3,
        engine.graph().cycles().len(),
    );
    assert!(
        alerts == 0,
        "detectors raise once per condition: later passes are quiet"
    );
}
