//! A mutex convoy: N threads hammer one default pthread mutex with a short critical section and
//! little work between acquisitions, so it is nearly always taken and waiters keep sleeping in
//! futex. A benchmark workload (tracer overhead is measured on it): the loop does nothing else.

use std::{
    cell::UnsafeCell,
    sync::atomic::{AtomicBool, Ordering},
    thread,
};

use anyhow::{bail, Result};
use serde::Serialize;

use super::*;
use crate::util::{libc_sleep_ms, now_ns, MAX_HOLD_MS};

#[no_mangle]
pub(crate) static FAULTLINE_CONVOY_MUTEX: PthreadMutex = PthreadMutex::new();

/// Busy-loop steps inside the critical section and outside it (about 130 and 40 ns on a
/// 2-core x86 VM, release build). Chosen by measurement: with 4 threads on 2 cores these gave
/// the most futex calls (1-2 million a second); longer work, inside or out, gave fewer. A
/// run can still fall into a mode where one thread keeps re-taking the lock while the woken
/// waiter sits on its run queue (few futex calls, about one CPU busy): compare runs by `ops`.
const INSIDE: u32 = 300;
const OUTSIDE: u32 = 100;

#[derive(Serialize)]
struct ConvoyReport {
    scenario: &'static str,
    pid: u32,
    threads: u32,
    /// Lock acquisitions, over all threads.
    ops: u64,
    millis: u64,
    tids: Vec<u32>,
    start_ns: u64,
    end_ns: u64,
}

/// The data the mutex protects: the acquisitions, counted inside the critical section (checked
/// against the threads' own counts: a lost update would mean the mutex did not exclude).
struct Counter(UnsafeCell<u64>);

// SAFETY: only touched with FAULTLINE_CONVOY_MUTEX held.
unsafe impl Sync for Counter {}

fn spin(steps: u32) {
    for i in 0..steps {
        std::hint::black_box(i);
    }
}

/// Locks, counts, spins, unlocks, spins, until `stop`; returns its acquisitions.
fn hammer(counter: &Counter, stop: &AtomicBool) -> Result<u64> {
    let m = &FAULTLINE_CONVOY_MUTEX;
    let mut mine = 0u64;
    while !stop.load(Ordering::Relaxed) {
        m.lock()?;
        // SAFETY: the mutex is held.
        unsafe { *counter.0.get() += 1 };
        spin(INSIDE);
        m.unlock()?;
        mine += 1;
        spin(OUTSIDE);
    }
    Ok(mine)
}

/// Sets the flag when dropped: the workers stop on every way out of the scope.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

pub(crate) fn mutex_convoy(threads: u32, millis: u64) -> Result<()> {
    let threads = threads.clamp(1, 256);
    let _m = FAULTLINE_CONVOY_MUTEX.init(Protocol::Normal)?;
    let counter = Counter(UnsafeCell::new(0));
    let stop = AtomicBool::new(false);
    let start = Gate::new(threads as usize + 1);
    let (counter_ref, stop_ref, start_ref) = (&counter, &stop, &start);
    let (report, ops) = thread::scope(|s| -> Result<(ConvoyReport, u64)> {
        let stopper = StopOnDrop(stop_ref);
        let _abandon = AbandonOnDrop(&[start_ref]);
        let mut handles = Vec::new();
        let mut tids = Vec::new();
        for i in 0..threads {
            let name = format!("convoy-{i}");
            let (h, tid) = spawn_named(s, &name, move || {
                start_ref.wait(0)?;
                hammer(counter_ref, stop_ref)
            })?;
            handles.push((name, h));
            tids.push(tid);
        }
        start_ref.wait(0)?;
        let start_ns = now_ns();
        libc_sleep_ms(millis.min(MAX_HOLD_MS));
        drop(stopper);
        let mut ops = 0;
        for (name, h) in handles {
            ops += join(h, &name)?;
        }
        let report = ConvoyReport {
            scenario: "mutex-convoy",
            pid: std::process::id(),
            threads,
            ops,
            millis,
            tids,
            start_ns,
            end_ns: now_ns(),
        };
        Ok((report, ops))
    })?;
    let counted = counter.0.into_inner();
    if counted != ops {
        bail!("{counted} acquisitions counted under the mutex, {ops} by the threads");
    }
    print_line(&report)
}
