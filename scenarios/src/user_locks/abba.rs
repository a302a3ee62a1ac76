//! The textbook ABBA deadlock on two default pthread mutexes: abba-1 holds A and asks for B,
//! abba-2 holds B and asks for A. The asks are timed, so the deadlock is real for `hold_ms`.
//! With `handed_ms`, the main thread holds both mutexes first, for that long: each side then
//! takes its first mutex through the kernel (woken by the main thread's unlock), which a tracer
//! can see from the owner's end.

use std::thread;

use anyhow::Result;
use serde::Serialize;

use super::*;
use crate::{
    monitor_deadlock::wait_until,
    util::{gettid, now_ns, MAX_HOLD_MS},
};

#[no_mangle]
pub(crate) static FAULTLINE_MUTEX_A: PthreadMutex = PthreadMutex::new();
#[no_mangle]
pub(crate) static FAULTLINE_MUTEX_B: PthreadMutex = PthreadMutex::new();

#[derive(Serialize)]
struct AbbaReport {
    scenario: &'static str,
    pid: u32,
    /// Holds A, asks for B.
    t1_tid: u32,
    /// Holds B, asks for A.
    t2_tid: u32,
    mutex_a: String,
    mutex_b: String,
    symbol_a: &'static str,
    symbol_b: &'static str,
    /// When the second ask began: the cycle closes at the latest as that thread goes to sleep.
    deadlocked_at_ns: u64,
    /// The main thread that held both mutexes first and handed them over (`--handed-ms`).
    #[serde(skip_serializing_if = "Option::is_none")]
    handed_by_tid: Option<u32>,
    /// Final line only: whether each ask ended with ETIMEDOUT (it should: nobody gives way).
    #[serde(skip_serializing_if = "Option::is_none")]
    t1_timed_out: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    t2_timed_out: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ended_at_ns: Option<u64>,
}

/// What one side's ask came to.
struct Ask {
    asked_ns: u64,
    timed_out: bool,
}

/// Shared by both sides: where they meet before asking, and after (so neither releases its own
/// mutex while the other still asks for it: both asks time out, none is granted late).
struct Meet {
    held: Gate,
    asked: Gate,
    hold_ms: u64,
}

/// One side: holds `first`, asks for `second` until the deadline, releases.
fn side(first: &PthreadMutex, second: &PthreadMutex, meet: &Meet, asking: &Asking) -> Result<Ask> {
    first.lock()?;
    let result = (|| {
        meet.held.wait(0)?;
        let deadline = realtime_after(meet.hold_ms);
        let asked_ns = asking.begin();
        let acquired = second.lock_until(&deadline);
        asking.end();
        let acquired = acquired?;
        if acquired {
            second.unlock()?;
        }
        meet.asked.wait(meet.hold_ms)?;
        Ok(Ask {
            asked_ns,
            timed_out: !acquired,
        })
    })();
    if result.is_err() {
        meet.held.abandon();
        meet.asked.abandon();
    }
    first.unlock()?;
    result
}

pub(crate) fn pthread_abba(hold_ms: u64, handed_ms: Option<u64>, announce: bool) -> Result<()> {
    let meet = Meet {
        held: Gate::new(2),
        asked: Gate::new(2),
        hold_ms: hold_ms.min(MAX_HOLD_MS),
    };
    let _a = FAULTLINE_MUTEX_A.init(Protocol::Normal)?;
    let _b = FAULTLINE_MUTEX_B.init(Protocol::Normal)?;
    let asking = [Asking::default(), Asking::default()];
    let (a, b) = (&FAULTLINE_MUTEX_A, &FAULTLINE_MUTEX_B);
    if handed_ms.is_some() {
        a.lock()?;
        b.lock()?;
    }
    let mut report = thread::scope(|s| -> Result<AbbaReport> {
        let _abandon = AbandonOnDrop(&[&meet.held, &meet.asked]);
        let (h1, t1) = spawn_named(s, "abba-1", || side(a, b, &meet, &asking[0]))?;
        let (h2, t2) = spawn_named(s, "abba-2", || side(b, a, &meet, &asking[1]))?;
        if let Some(ms) = handed_ms {
            // Both sides sleep in their first lock by now; the unlocks wake them (glibc's
            // unlock of a contended mutex is a futex wake), and each takes its mutex.
            thread::sleep(std::time::Duration::from_millis(ms.min(MAX_HOLD_MS)));
            a.unlock()?;
            b.unlock()?;
        }
        let mut report = AbbaReport {
            scenario: "pthread-abba",
            pid: std::process::id(),
            t1_tid: t1,
            t2_tid: t2,
            mutex_a: a.addr(),
            mutex_b: b.addr(),
            symbol_a: "FAULTLINE_MUTEX_A",
            symbol_b: "FAULTLINE_MUTEX_B",
            deadlocked_at_ns: 0,
            handed_by_tid: handed_ms.map(|_| gettid()),
            t1_timed_out: None,
            t2_timed_out: None,
            ended_at_ns: None,
        };
        if announce {
            // Asleep in the asks themselves, not at a gate (also a futex sleep).
            wait_until("both abba threads asleep on a mutex", || {
                asking[0].asleep(t1) && asking[1].asleep(t2)
            })?;
            report.deadlocked_at_ns = asking[0].since_ns().max(asking[1].since_ns());
            print_line(&report)?;
        }
        let (r1, r2) = (join(h1, "abba-1"), join(h2, "abba-2"));
        let (r1, r2) = (r1?, r2?);
        report.deadlocked_at_ns = r1.asked_ns.max(r2.asked_ns);
        report.t1_timed_out = Some(r1.timed_out);
        report.t2_timed_out = Some(r2.timed_out);
        Ok(report)
    })?;
    report.ended_at_ns = Some(now_ns());
    print_line(&report)
}
