//! A chain of priority-inheritance mutexes, whose waits the kernel tracks itself (FUTEX_LOCK_PI
//! and an rt_mutex per contended futex): pi-3 waits for PI_2, held by pi-2, which waits for
//! PI_1, held by pi-1. With `cycle`, pi-1 then asks for PI_3: a three-thread deadlock.
//!
//! The kernel's PI chain walk sees that cycle and refuses the last wait with EDEADLK; glibc then
//! sleeps until the deadline on a futex of its own and returns ETIMEDOUT, so pi-1 still
//! sleeps in futex and its ask still times out. pi-1 closes the cycle on purpose (it asks only
//! once the other two sleep): otherwise whichever thread asked last would get that treatment.

use std::{
    sync::atomic::{AtomicU32, Ordering},
    thread,
};

use anyhow::Result;
use serde::Serialize;

use super::*;
use crate::{
    monitor_deadlock::wait_until,
    util::{gettid, libc_sleep_ms, now_ns, MAX_HOLD_MS},
};

#[no_mangle]
pub(crate) static FAULTLINE_PI_1: PthreadMutex = PthreadMutex::new();
#[no_mangle]
pub(crate) static FAULTLINE_PI_2: PthreadMutex = PthreadMutex::new();
#[no_mangle]
pub(crate) static FAULTLINE_PI_3: PthreadMutex = PthreadMutex::new();

#[derive(Serialize)]
struct PiReport {
    scenario: &'static str,
    pid: u32,
    pi1_tid: u32,
    pi2_tid: u32,
    pi3_tid: u32,
    m1: String,
    m2: String,
    m3: String,
    cycle: bool,
    /// When the last intended wait began (the chain, or the cycle, complete once it sleeps).
    formed_at_ns: u64,
    /// Final line only: whether each ask timed out; pi-1 asks only with `cycle` (null without).
    #[serde(skip_serializing_if = "Option::is_none")]
    pi1_timed_out: Option<Option<bool>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pi2_timed_out: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pi3_timed_out: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ended_at_ns: Option<u64>,
}

/// What the three threads share: their tids, when each asked, and the meeting points.
struct Chain {
    tids: [AtomicU32; 3],
    asking: [Asking; 3],
    /// All hold their own mutex: the asks may begin.
    held: Gate,
    /// All asks are over: nobody releases while another still asks (every ask times out).
    done: Gate,
    hold_ms: u64,
    cycle: bool,
}

impl Chain {
    /// Whether thread `i` sleeps in its ask.
    fn asleep(&self, i: usize) -> bool {
        self.asking[i].asleep(self.tids[i].load(Ordering::SeqCst))
    }

    /// Every wait this run means to make has begun and sleeps.
    fn formed(&self) -> bool {
        self.asleep(1) && self.asleep(2) && (!self.cycle || self.asleep(0))
    }
}

/// Thread `i`: holds `own`; asks for `next` (None: pi-1 without a cycle, which only sleeps).
/// Returns whether the ask timed out.
fn link(
    i: usize,
    own: &PthreadMutex,
    next: Option<&PthreadMutex>,
    c: &Chain,
) -> Result<Option<bool>> {
    c.tids[i].store(gettid(), Ordering::SeqCst);
    own.lock()?;
    let result = (|| {
        c.held.wait(0)?;
        let timed_out = match next {
            None => {
                libc_sleep_ms(c.hold_ms);
                None
            }
            Some(next) => {
                if i == 0 {
                    wait_until("pi-2 and pi-3 asleep", || c.asleep(1) && c.asleep(2))?;
                }
                let deadline = realtime_after(c.hold_ms);
                c.asking[i].begin();
                let acquired = next.lock_until(&deadline);
                c.asking[i].end();
                let acquired = acquired?;
                if acquired {
                    next.unlock()?;
                }
                Some(!acquired)
            }
        };
        c.done.wait(c.hold_ms)?;
        Ok(timed_out)
    })();
    if result.is_err() {
        c.held.abandon();
        c.done.abandon();
    }
    own.unlock()?;
    result
}

pub(crate) fn pi_chain(hold_ms: u64, announce: bool, cycle: bool) -> Result<()> {
    let c = Chain {
        tids: Default::default(),
        asking: Default::default(),
        held: Gate::new(3),
        done: Gate::new(3),
        hold_ms: hold_ms.min(MAX_HOLD_MS),
        cycle,
    };
    let _m1 = FAULTLINE_PI_1.init(Protocol::Inherit)?;
    let _m2 = FAULTLINE_PI_2.init(Protocol::Inherit)?;
    let _m3 = FAULTLINE_PI_3.init(Protocol::Inherit)?;
    let (m1, m2, m3) = (&FAULTLINE_PI_1, &FAULTLINE_PI_2, &FAULTLINE_PI_3);
    let mut report = thread::scope(|s| -> Result<PiReport> {
        let _abandon = AbandonOnDrop(&[&c.held, &c.done]);
        let c = &c;
        let (h1, t1) = spawn_named(s, "pi-1", move || link(0, m1, cycle.then_some(m3), c))?;
        let (h2, t2) = spawn_named(s, "pi-2", move || link(1, m2, Some(m1), c))?;
        let (h3, t3) = spawn_named(s, "pi-3", move || link(2, m3, Some(m2), c))?;
        let formed_at = || c.asking.iter().map(Asking::since_ns).max().unwrap_or(0);
        let mut report = PiReport {
            scenario: "pi-chain",
            pid: std::process::id(),
            pi1_tid: t1,
            pi2_tid: t2,
            pi3_tid: t3,
            m1: m1.addr(),
            m2: m2.addr(),
            m3: m3.addr(),
            cycle,
            formed_at_ns: 0,
            pi1_timed_out: None,
            pi2_timed_out: None,
            pi3_timed_out: None,
            ended_at_ns: None,
        };
        if announce {
            wait_until("the PI waiters asleep", || c.formed())?;
            report.formed_at_ns = formed_at();
            print_line(&report)?;
        }
        let (r1, r2, r3) = (join(h1, "pi-1"), join(h2, "pi-2"), join(h3, "pi-3"));
        report.pi1_timed_out = Some(r1?);
        report.pi2_timed_out = r2?;
        report.pi3_timed_out = r3?;
        report.formed_at_ns = formed_at();
        Ok(report)
    })?;
    report.ended_at_ns = Some(now_ns());
    print_line(&report)
}
