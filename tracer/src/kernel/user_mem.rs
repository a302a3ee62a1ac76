//! Reads that can block behind another process's `mmap_lock`, done where a stuck read cannot
//! stall the agent: `/proc/PID/maps`, the process's memory (process_vm_readv) and symbolising
//! its stacks all take that process's `mmap_lock` for read, and a read queued behind a writer
//! of a convoy waits as long as the convoy. A worker thread per lane does them, each with a
//! deadline; while a lane's worker is stuck, its further reads are refused at once (the caller
//! goes on without the name or the re-read) until it returns. Two lanes: short reads (a lock's
//! name, an owner's words), and the profile's stack symbolisation, which can take seconds the
//! first time it parses a large binary's debug information and must not starve the others.

use std::{
    collections::BTreeSet,
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc, Mutex, OnceLock,
    },
    thread,
    time::Duration,
};

type Job = Box<dyn FnOnce() + Send>;

/// Processes whose `mmap_lock` had waiters at the agent's last snapshot. A read of theirs would
/// queue behind the convoy's writer for as long as the convoy lasts: a wait of the agent's own
/// on a workload's lock, which also shows in every other tracer's view of that lock (not in
/// faultline's, which leaves its own tasks out). Their names and symbols wait until it clears.
static CONTENDED: Mutex<BTreeSet<u32>> = Mutex::new(BTreeSet::new());

/// Says which processes' `mmap_lock` has waiters now (the agent's snapshot).
pub fn set_contended(pids: BTreeSet<u32>) {
    *CONTENDED.lock().unwrap_or_else(|e| e.into_inner()) = pids;
}

/// Whether reading process `pid`'s maps or memory should wait: its `mmap_lock` has waiters.
pub fn contended(pid: u32) -> bool {
    CONTENDED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .contains(&pid)
}

struct Worker {
    jobs: Mutex<mpsc::Sender<Job>>,
    /// A job is running (or stuck).
    busy: Arc<AtomicBool>,
}

/// Which worker a job goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lane {
    /// Short reads the agent's snapshots wait for (with `READ_DEADLINE`).
    Reads,
    /// Symbolising the user-lock profile's stacks, waited for by nobody on the agent's path.
    Stacks,
}

fn worker(lane: Lane) -> Option<&'static Worker> {
    static READS: OnceLock<Option<Worker>> = OnceLock::new();
    static STACKS: OnceLock<Option<Worker>> = OnceLock::new();
    let (cell, name) = match lane {
        Lane::Reads => (&READS, "faultline-usermem"),
        Lane::Stacks => (&STACKS, "faultline-ustacks"),
    };
    cell.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        let busy = Arc::new(AtomicBool::new(false));
        let flag = busy.clone();
        thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                for job in rx {
                    job();
                    flag.store(false, Ordering::Release);
                }
            })
            .ok()?;
        Some(Worker {
            jobs: Mutex::new(tx),
            busy,
        })
    })
    .as_ref()
}

/// Runs `f` on `lane`'s worker and waits up to `deadline` for its result. `None` when the
/// worker is busy with an earlier job (stuck behind some process's lock, most likely), or `f`
/// did not finish in time (it finishes on its own later; its result is dropped).
pub fn bounded<T: Send + 'static>(
    lane: Lane,
    deadline: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    let w = worker(lane)?;
    if w.busy.swap(true, Ordering::AcqRel) {
        return None;
    }
    let (tx, rx) = mpsc::sync_channel(1);
    let free = w.busy.clone();
    let job: Job = Box::new(move || {
        let out = f();
        // Free before answering: a caller that reads again at once must find the lane free.
        free.store(false, Ordering::Release);
        let _ = tx.send(out);
    });
    let sent = w
        .jobs
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send(job)
        .is_ok();
    if !sent {
        w.busy.store(false, Ordering::Release);
        return None;
    }
    rx.recv_timeout(deadline).ok()
}

/// Runs `f` on the worker without waiting for it: `false` when the worker is busy (the caller
/// tries again later).
pub fn submit(lane: Lane, f: impl FnOnce() + Send + 'static) -> bool {
    let Some(w) = worker(lane) else {
        return false;
    };
    if w.busy.swap(true, Ordering::AcqRel) {
        return false;
    }
    let sent = w
        .jobs
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send(Box::new(f))
        .is_ok();
    if !sent {
        w.busy.store(false, Ordering::Release);
    }
    sent
}

/// How long a caller on the agent's path waits for one read.
pub const READ_DEADLINE: Duration = Duration::from_millis(200);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_in_a_row_all_get_their_answer() {
        for i in 0..50 {
            assert_eq!(
                bounded(Lane::Reads, Duration::from_secs(5), move || i),
                Some(i)
            );
        }
    }

    #[test]
    fn a_stuck_read_refuses_the_next_ones_until_it_returns() {
        let (release, gate) = mpsc::channel::<()>();
        // A read that blocks until released: it times out for its caller.
        assert_eq!(
            bounded(Lane::Stacks, Duration::from_millis(20), move || gate
                .recv()
                .is_ok()),
            None
        );
        assert_eq!(
            bounded(Lane::Stacks, Duration::from_millis(20), || 1),
            None,
            "busy"
        );
        // The other lane is not held up by it.
        assert_eq!(bounded(Lane::Reads, Duration::from_secs(5), || 3), Some(3));
        release.send(()).expect("release");
        let mut got = None;
        for _ in 0..100 {
            got = bounded(Lane::Stacks, Duration::from_millis(50), || 2);
            if got.is_some() {
                break;
            }
            thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(got, Some(2));
    }
}
