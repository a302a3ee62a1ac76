//! Futex traffic that is not lock contention, in one process under load: condition-variable
//! ping-pong, a barrier crossed over and over, and a semaphore-bounded producer/consumer queue.
//! Threads sleep in futex all the time here, yet nobody waits for a lock's owner (the mutexes
//! are held for a few instructions): what a tracer must not report as contention or deadlock.

use std::{
    cell::UnsafeCell,
    sync::atomic::{AtomicBool, Ordering},
    thread,
};

use anyhow::{bail, Result};
use serde::Serialize;

use super::*;
use crate::util::{libc_sleep_ms, now_ns, MAX_HOLD_MS};

#[derive(Serialize)]
struct BenignReport {
    scenario: &'static str,
    pid: u32,
    /// Every worker: cv-*, then bar-*, then sem-p* (producers) and sem-c* (consumers).
    tids: Vec<u32>,
    /// Full round trips (two hand-offs) of all condition-variable pairs.
    condvar_round_trips: u64,
    /// Times the barrier opened.
    barrier_crossings: u64,
    /// sem_post calls by the workers (items by producers, free slots by consumers).
    semaphore_posts: u64,
    start_ns: u64,
    end_ns: u64,
}

/// A glibc object shared by threads at a fixed address (inside an `Arc` or the scope's frame).
struct Shared<T>(UnsafeCell<T>);

// SAFETY: only pthread/semaphore calls (made for sharing) or accesses under the pair's pthread
// mutex touch the contents.
unsafe impl<T> Sync for Shared<T> {}

impl<T> Shared<T> {
    fn new(v: T) -> Self {
        Self(UnsafeCell::new(v))
    }
    fn ptr(&self) -> *mut T {
        self.0.get()
    }
}

/// Two threads that take turns: each waits on the condition variable until it is its turn.
struct Pair {
    mutex: PthreadMutex,
    cond: Shared<libc::pthread_cond_t>,
    /// Whose turn it is (0 or 1), and whether the pair has stopped; under `mutex`.
    turn: Shared<(u8, bool)>,
}

/// One side of a pair; returns its hand-offs. The side that sees `stop` marks the pair done and
/// wakes the other, which is waiting for its turn, so both end.
fn ping_pong(pair: &Pair, me: u8, stop: &AtomicBool) -> Result<u64> {
    let mut handoffs = 0;
    loop {
        pair.mutex.lock()?;
        // SAFETY: `turn` is only touched with `mutex` held; the cond and mutex are initialized.
        let (rc, more) = unsafe {
            let t = &mut *pair.turn.ptr();
            let mut rc = 0;
            while t.0 != me && !t.1 && rc == 0 {
                rc = libc::pthread_cond_wait(pair.cond.ptr(), pair.mutex.ptr());
            }
            if rc != 0 || t.1 || stop.load(Ordering::Relaxed) {
                t.1 = true;
                (rc, false)
            } else {
                t.0 = 1 - me;
                handoffs += 1;
                (0, true)
            }
        };
        pair.mutex.unlock()?;
        // Signalled after the unlock: the partner wakes to a free mutex, so the mutex stays
        // uncontended (the pair outlives both threads, so signalling late is safe).
        // SAFETY: an initialized condition variable.
        let signalled = unsafe {
            if more {
                libc::pthread_cond_signal(pair.cond.ptr())
            } else {
                libc::pthread_cond_broadcast(pair.cond.ptr())
            }
        };
        check(rc, "pthread_cond_wait")?;
        check(signalled, "pthread_cond_signal")?;
        if !more {
            return Ok(handoffs);
        }
    }
}

/// Crosses the barrier until told to stop; returns the openings this thread was the serial
/// thread of. The decision to stop is taken by one thread between two crossings, so every
/// thread leaves after the same crossing and none waits for a partner that has left.
fn cross(
    bar: &Shared<libc::pthread_barrier_t>,
    quit: &AtomicBool,
    stop: &AtomicBool,
) -> Result<u64> {
    let mut opened = 0;
    loop {
        for decide in [true, false] {
            // SAFETY: an initialized barrier. glibc's barrier wait has no error return, so no
            // thread leaves the round early and strands the others.
            let rc = unsafe { libc::pthread_barrier_wait(bar.ptr()) };
            if rc == PTHREAD_BARRIER_SERIAL_THREAD {
                opened += 1;
                if decide {
                    quit.store(stop.load(Ordering::Relaxed), Ordering::Relaxed);
                }
            } else if rc != 0 {
                bail!(
                    "pthread_barrier_wait: {}",
                    std::io::Error::from_raw_os_error(rc)
                );
            }
        }
        if quit.load(Ordering::Relaxed) {
            return Ok(opened);
        }
    }
}

fn sem_wait(s: &Shared<libc::sem_t>) -> Result<()> {
    // SAFETY: an initialized semaphore; retried when a signal interrupts it.
    while unsafe { libc::sem_wait(s.ptr()) } != 0 {
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            bail!("sem_wait: {e}");
        }
    }
    Ok(())
}

fn sem_post(s: &Shared<libc::sem_t>) -> Result<()> {
    // SAFETY: an initialized semaphore.
    if unsafe { libc::sem_post(s.ptr()) } != 0 {
        bail!("sem_post: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// A bounded queue of nothing: producers take a free slot and post an item, consumers the
/// reverse; both sides sleep when it is full or empty. Returns the posts.
fn produce_or_consume(producer: bool, queue: &Queue, stop: &AtomicBool) -> Result<u64> {
    let (take, give) = if producer {
        (&queue.slots, &queue.items)
    } else {
        (&queue.items, &queue.slots)
    };
    let mut posts = 0;
    // After `stop`, the main thread posts once per waiter on each side, so a thread asleep here
    // wakes, sees `stop` and leaves.
    while !stop.load(Ordering::Relaxed) {
        sem_wait(take)?;
        if stop.load(Ordering::Relaxed) {
            break;
        }
        sem_post(give)?;
        posts += 1;
    }
    Ok(posts)
}

struct Queue {
    slots: Shared<libc::sem_t>,
    items: Shared<libc::sem_t>,
}

const QUEUE_LEN: u32 = 4;

/// Creates and finally destroys every object; `run` does the work in between.
pub(crate) fn futex_benign(millis: u64, threads: u32) -> Result<()> {
    let n = threads.clamp(2, 64) as usize;
    let pairs: Vec<Pair> = (0..n / 2)
        .map(|_| Pair {
            mutex: PthreadMutex::new(),
            cond: Shared::new(libc::PTHREAD_COND_INITIALIZER),
            turn: Shared::new((0, false)),
        })
        .collect();
    // SAFETY: zeroed storage that pthread_barrier_init / sem_init initialize before any use.
    let bar = Shared::new(unsafe { std::mem::zeroed::<libc::pthread_barrier_t>() });
    let queue = Queue {
        slots: Shared::new(unsafe { std::mem::zeroed() }),
        items: Shared::new(unsafe { std::mem::zeroed() }),
    };
    // SAFETY: initializing our own objects at their final addresses (they do not move: the
    // vector is not touched again until it drops).
    unsafe {
        check(
            libc::pthread_barrier_init(bar.ptr(), std::ptr::null(), n as u32),
            "pthread_barrier_init",
        )?;
        if libc::sem_init(queue.slots.ptr(), 0, QUEUE_LEN) != 0
            || libc::sem_init(queue.items.ptr(), 0, 0) != 0
        {
            let e = std::io::Error::last_os_error();
            libc::pthread_barrier_destroy(bar.ptr());
            bail!("sem_init: {e}");
        }
    }
    let result = run(millis, n, &pairs, &bar, &queue);
    // SAFETY: every thread using them has been joined (the scope in `run`).
    unsafe {
        for p in &pairs {
            libc::pthread_cond_destroy(p.cond.ptr());
            libc::pthread_mutex_destroy(p.mutex.ptr());
        }
        libc::pthread_barrier_destroy(bar.ptr());
        libc::sem_destroy(queue.slots.ptr());
        libc::sem_destroy(queue.items.ptr());
    }
    print_line(&result?)
}

#[derive(Clone, Copy)]
enum Kind {
    Cv,
    Bar,
    Sem,
}

/// Stops the workers: sets `stop`, then wakes every producer or consumer that may sleep in
/// sem_wait (see `produce_or_consume`); the others see `stop` on their own.
struct StopOnDrop<'a> {
    stop: &'a AtomicBool,
    queue: &'a Queue,
    waiters: usize,
}

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for _ in 0..self.waiters {
            // Only EOVERFLOW can fail here, with a count far above the waiters.
            let _ = sem_post(&self.queue.slots);
            let _ = sem_post(&self.queue.items);
        }
    }
}

struct Worker<'scope> {
    name: String,
    kind: Kind,
    tid: u32,
    handle: thread::ScopedJoinHandle<'scope, Result<u64>>,
}

/// Spawns a worker that starts once every worker (and the main thread) is at `start`.
fn worker<'scope>(
    s: &'scope thread::Scope<'scope, '_>,
    name: String,
    kind: Kind,
    start: &'scope Gate,
    f: impl FnOnce() -> Result<u64> + Send + 'scope,
) -> Result<Worker<'scope>> {
    let (handle, tid) = spawn_named(s, &name, move || {
        start.wait(0)?;
        f()
    })?;
    Ok(Worker {
        name,
        kind,
        tid,
        handle,
    })
}

fn run(
    millis: u64,
    n: usize,
    pairs: &[Pair],
    bar: &Shared<libc::pthread_barrier_t>,
    queue: &Queue,
) -> Result<BenignReport> {
    let (stop, quit) = (AtomicBool::new(false), AtomicBool::new(false));
    let sem_side = (n / 2).max(1);
    let workers = 2 * pairs.len() + n + 2 * sem_side;
    // Nobody starts before all are spawned: a failed spawn must not strand barrier threads.
    let start = Gate::new(workers + 1);
    thread::scope(|s| -> Result<BenignReport> {
        // Declared first, dropped last: the workers stop on every way out of this scope.
        let stopper = StopOnDrop {
            stop: &stop,
            queue,
            waiters: sem_side,
        };
        let _abandon = AbandonOnDrop(&[&start]);
        let (stop, quit, start) = (&stop, &quit, &start);
        let mut handles = Vec::new();
        for (i, pair) in pairs.iter().enumerate() {
            for me in 0..2u8 {
                let name = format!("cv-{}", 2 * i + me as usize);
                handles.push(worker(s, name, Kind::Cv, start, move || {
                    ping_pong(pair, me, stop)
                })?);
            }
        }
        for i in 0..n {
            let name = format!("bar-{i}");
            handles.push(worker(s, name, Kind::Bar, start, move || {
                cross(bar, quit, stop)
            })?);
        }
        for i in 0..2 * sem_side {
            let producer = i % 2 == 0;
            let name = format!("sem-{}{}", if producer { 'p' } else { 'c' }, i / 2);
            let f = move || produce_or_consume(producer, queue, stop);
            handles.push(worker(s, name, Kind::Sem, start, f)?);
        }
        start.wait(0)?;
        let start_ns = now_ns();
        libc_sleep_ms(millis.min(MAX_HOLD_MS));
        drop(stopper);
        let mut counts = [0u64; 3];
        let mut failed = None;
        let tids = handles.iter().map(|w| w.tid).collect();
        for w in handles {
            match join(w.handle, &w.name) {
                Ok(c) => counts[w.kind as usize] += c,
                Err(e) => failed = failed.or(Some(e)),
            }
        }
        if let Some(e) = failed {
            return Err(e);
        }
        Ok(BenignReport {
            scenario: "futex-benign",
            pid: std::process::id(),
            tids,
            condvar_round_trips: counts[Kind::Cv as usize] / 2,
            barrier_crossings: counts[Kind::Bar as usize],
            semaphore_posts: counts[Kind::Sem as usize],
            start_ns,
            end_ns: now_ns(),
        })
    })
}
