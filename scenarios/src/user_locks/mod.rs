//! User-space lock workloads: real glibc pthread primitives (not Rust's std locks, which are
//! not pthread objects), so a tracer that follows glibc's futex words sees what a C program
//! would make. Locks a test names by symbol are `#[no_mangle]` globals: their ELF symbol is the
//! plain name and their address is what the reports print.
//!
//! Every wait that closes a deadlock or a queue is timed (a deadline `hold_ms` away), so each
//! deadlock here is real and still ends; threads are scoped and meet at `Gate`s that give up,
//! so an early error still ends and joins them.

mod abba;
mod convoy;
mod futex_benign;
mod pi_chain;
mod rwlock_queue;
mod uffd_mutex;

use std::{
    cell::UnsafeCell,
    sync::{
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
        Arc, Condvar, Mutex, PoisonError,
    },
    thread,
    time::Duration,
};

use anyhow::{anyhow, bail, Context as _, Result};
use serde::Serialize;

pub(crate) use self::{
    abba::pthread_abba,
    convoy::mutex_convoy,
    futex_benign::futex_benign,
    pi_chain::pi_chain,
    rwlock_queue::{rwlock_queue, Prefer},
    uffd_mutex::uffd_mutex,
};
use crate::monitor_deadlock::syscall_of;

// glibc constants the libc crate does not carry.
const PTHREAD_PRIO_INHERIT: libc::c_int = 1;
pub(crate) const PTHREAD_RWLOCK_PREFER_READER_NP: libc::c_int = 0;
pub(crate) const PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP: libc::c_int = 2;
pub(crate) const PTHREAD_BARRIER_SERIAL_THREAD: libc::c_int = -1;

/// How long a thread waits for the others at a `Gate` before it gives up (a partner that never
/// came: a failed spawn, or a bug).
const GATE_MS: u64 = 5_000;

/// A pthread mutex at a fixed address (a global, or a heap slot left alone while in use):
/// glibc's mutex may not move once used.
pub(crate) struct PthreadMutex(UnsafeCell<libc::pthread_mutex_t>);

// SAFETY: the cell is only ever handed to glibc, whose mutex is made for sharing.
unsafe impl Sync for PthreadMutex {}

/// Which kind of mutex `PthreadMutex::init` makes.
#[derive(Clone, Copy)]
pub(crate) enum Protocol {
    /// Default attributes: glibc's "normal" futex mutex.
    Normal,
    /// Priority inheritance: glibc waits with FUTEX_LOCK_PI and the kernel tracks the owner.
    Inherit,
}

impl PthreadMutex {
    pub(crate) const fn new() -> Self {
        Self(UnsafeCell::new(libc::PTHREAD_MUTEX_INITIALIZER))
    }

    pub(crate) fn ptr(&self) -> *mut libc::pthread_mutex_t {
        self.0.get()
    }

    /// The address as reports print it ("0x…"): what a tracer sees as the futex word's mutex.
    pub(crate) fn addr(&self) -> String {
        format!("{:#x}", self.ptr() as usize)
    }

    /// (Re)initializes the mutex; it is destroyed when the returned guard drops. Not to be
    /// called while any thread uses it.
    pub(crate) fn init(&self, protocol: Protocol) -> Result<Destroy<'_>> {
        // SAFETY: attr is initialized before use and destroyed after; the mutex is ours and
        // unused (the caller's promise).
        unsafe {
            let mut attr: libc::pthread_mutexattr_t = std::mem::zeroed();
            check(
                libc::pthread_mutexattr_init(&mut attr),
                "pthread_mutexattr_init",
            )?;
            let mut rc = 0;
            if let Protocol::Inherit = protocol {
                rc = libc::pthread_mutexattr_setprotocol(&mut attr, PTHREAD_PRIO_INHERIT);
            }
            if rc == 0 {
                rc = libc::pthread_mutex_init(self.ptr(), &attr);
            }
            libc::pthread_mutexattr_destroy(&mut attr);
            check(rc, "pthread_mutex_init")?;
        }
        Ok(Destroy(self))
    }

    pub(crate) fn lock(&self) -> Result<()> {
        // SAFETY: an initialized mutex at a fixed address.
        check(
            unsafe { libc::pthread_mutex_lock(self.ptr()) },
            "pthread_mutex_lock",
        )
    }

    pub(crate) fn unlock(&self) -> Result<()> {
        // SAFETY: as above; the caller owns it.
        check(
            unsafe { libc::pthread_mutex_unlock(self.ptr()) },
            "pthread_mutex_unlock",
        )
    }

    /// pthread_mutex_timedlock: Ok(true) when acquired, Ok(false) on ETIMEDOUT.
    pub(crate) fn lock_until(&self, deadline: &libc::timespec) -> Result<bool> {
        // SAFETY: as above; a valid timespec.
        timed(
            unsafe { libc::pthread_mutex_timedlock(self.ptr(), deadline) },
            "pthread_mutex_timedlock",
        )
    }
}

/// Destroys a mutex initialized by `PthreadMutex::init` (on every path out of a scenario).
pub(crate) struct Destroy<'a>(&'a PthreadMutex);

impl Drop for Destroy<'_> {
    fn drop(&mut self) {
        // SAFETY: initialized by `init`; every thread using it has been joined. EBUSY (a mutex
        // still locked after a failure) only leaves it as it was.
        unsafe { libc::pthread_mutex_destroy(self.0.ptr()) };
    }
}

/// A pthread return code (an errno value, not -1 and errno) as a Result.
pub(crate) fn check(rc: libc::c_int, what: &str) -> Result<()> {
    if rc != 0 {
        bail!("{what}: {}", std::io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

/// A timed pthread call's code: Ok(true) acquired, Ok(false) timed out.
pub(crate) fn timed(rc: libc::c_int, what: &str) -> Result<bool> {
    match rc {
        0 => Ok(true),
        libc::ETIMEDOUT => Ok(false),
        _ => check(rc, what).map(|()| false),
    }
}

/// CLOCK_REALTIME now + `ms`: the clock glibc's timed lock calls take their deadline in.
pub(crate) fn realtime_after(ms: u64) -> libc::timespec {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts) };
    let nsec = ts.tv_nsec as u64 + (ms % 1000) * 1_000_000;
    ts.tv_sec += (ms / 1000 + nsec / 1_000_000_000) as libc::time_t;
    ts.tv_nsec = (nsec % 1_000_000_000) as libc::c_long;
    ts
}

/// Whether a thread sleeps in the futex system call (glibc's every lock wait ends there).
pub(crate) fn in_futex(tid: u32) -> bool {
    syscall_of(tid) == Some(libc::SYS_futex)
}

/// A thread's lock wait, as its thread marks it: when it began, and whether it has ended. With
/// /proc it tells a thread asleep in this wait from one asleep in another futex (a `Gate`).
#[derive(Default)]
pub(crate) struct Asking {
    since_ns: AtomicU64,
    over: AtomicBool,
}

impl Asking {
    /// Marks the start (just before the call that waits); returns its time.
    pub(crate) fn begin(&self) -> u64 {
        let t = crate::util::now_ns();
        self.since_ns.store(t, Ordering::SeqCst);
        t
    }

    pub(crate) fn end(&self) {
        self.over.store(true, Ordering::SeqCst);
    }

    /// When the wait began (0: not yet).
    pub(crate) fn since_ns(&self) -> u64 {
        self.since_ns.load(Ordering::SeqCst)
    }

    /// Whether thread `tid` sleeps in this wait now.
    pub(crate) fn asleep(&self, tid: u32) -> bool {
        self.since_ns() != 0 && !self.over.load(Ordering::SeqCst) && in_futex(tid)
    }
}

/// Writes one JSON line and flushes it (a test reads it while the workload still runs).
pub(crate) fn print_line(report: &impl Serialize) -> Result<()> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", serde_json::to_string(report)?)?;
    out.flush()?;
    Ok(())
}

/// Spawns a named scoped thread (the name is its comm, as /proc and tracers show it) and
/// returns once it has stored its tid.
pub(crate) fn spawn_named<'scope, T: Send + 'scope>(
    s: &'scope thread::Scope<'scope, '_>,
    name: &str,
    body: impl FnOnce() -> Result<T> + Send + 'scope,
) -> Result<(thread::ScopedJoinHandle<'scope, Result<T>>, u32)> {
    let tid = Arc::new(AtomicU32::new(0));
    let t = tid.clone();
    let handle = thread::Builder::new()
        .name(name.into())
        .spawn_scoped(s, move || {
            t.store(crate::util::gettid(), Ordering::SeqCst);
            body()
        })
        .with_context(|| format!("spawn {name}"))?;
    while tid.load(Ordering::SeqCst) == 0 {
        thread::yield_now();
    }
    Ok((handle, tid.load(Ordering::SeqCst)))
}

/// Joins a scoped thread and flattens its result.
pub(crate) fn join<T>(handle: thread::ScopedJoinHandle<'_, Result<T>>, name: &str) -> Result<T> {
    handle
        .join()
        .map_err(|_| anyhow!("{name} panicked"))?
        .with_context(|| name.to_string())
}

/// A one-shot meeting point for `n` threads that, unlike std's Barrier, gives up: after a
/// timeout, or when abandoned (a partner failed, or was never spawned), so no thread waits
/// forever holding a lock.
pub(crate) struct Gate {
    n: usize,
    state: Mutex<(usize, bool)>,
    cv: Condvar,
}

impl Gate {
    pub(crate) fn new(n: usize) -> Self {
        Self {
            n,
            state: Mutex::new((0, false)),
            cv: Condvar::new(),
        }
    }

    /// Arrives and waits for the others, at most `GATE_MS` plus `extra_ms`.
    pub(crate) fn wait(&self, extra_ms: u64) -> Result<()> {
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        st.0 += 1;
        self.cv.notify_all();
        let timeout = Duration::from_millis(GATE_MS + extra_ms);
        let (st, _) = self
            .cv
            .wait_timeout_while(st, timeout, |st| st.0 < self.n && !st.1)
            .unwrap_or_else(PoisonError::into_inner);
        if st.0 < self.n {
            bail!(if st.1 {
                "a partner gave up"
            } else {
                "a partner never came"
            });
        }
        Ok(())
    }

    /// Releases every waiter with an error; arriving later fails at once.
    pub(crate) fn abandon(&self) {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).1 = true;
        self.cv.notify_all();
    }
}

/// Abandons gates when dropped: whatever way a scenario's scope ends, its threads stop waiting
/// for partners and the scope's implicit join returns.
pub(crate) struct AbandonOnDrop<'a>(pub(crate) &'a [&'a Gate]);

impl Drop for AbandonOnDrop<'_> {
    fn drop(&mut self) {
        for g in self.0 {
            g.abandon();
        }
    }
}
