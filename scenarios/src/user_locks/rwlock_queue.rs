//! A glibc rwlock's queueing policy, observed: rw-holder holds it for read; rw-writer asks to
//! write and queues; rw-reader then asks to read. Preferring readers, the late reader joins the
//! holder at once; preferring writers (PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP), it sleeps
//! behind the queued writer until the holder has released and the writer has had its turn.

use std::{
    cell::UnsafeCell,
    sync::atomic::{AtomicU64, Ordering},
    thread,
};

use anyhow::Result;
use serde::Serialize;

use super::*;
use crate::{
    monitor_deadlock::wait_until,
    util::{libc_sleep_ms, now_ns, MAX_HOLD_MS},
};

extern "C" {
    // In glibc, not in the libc crate.
    fn pthread_rwlock_timedrdlock(
        rwlock: *mut libc::pthread_rwlock_t,
        abstime: *const libc::timespec,
    ) -> libc::c_int;
    fn pthread_rwlock_timedwrlock(
        rwlock: *mut libc::pthread_rwlock_t,
        abstime: *const libc::timespec,
    ) -> libc::c_int;
}

/// A late reader taking longer than this to get the lock waited behind the writer.
const BLOCKED_NS: u64 = 20_000_000;
/// Between the holder's acquisition and the writer's ask, and the writer's sleep and the
/// reader's ask.
const STAGGER_MS: u64 = 50;

#[derive(Clone, Copy, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Prefer {
    Reader,
    Writer,
}

pub(crate) struct PthreadRwlock(UnsafeCell<libc::pthread_rwlock_t>);

// SAFETY: only handed to glibc, whose rwlock is made for sharing.
unsafe impl Sync for PthreadRwlock {}

#[no_mangle]
pub(crate) static FAULTLINE_RWLOCK: PthreadRwlock =
    PthreadRwlock(UnsafeCell::new(libc::PTHREAD_RWLOCK_INITIALIZER));

impl PthreadRwlock {
    fn ptr(&self) -> *mut libc::pthread_rwlock_t {
        self.0.get()
    }

    /// (Re)initializes it with the kind `prefer` asks for; destroyed when the guard drops.
    fn init(&self, prefer: Prefer) -> Result<RwDestroy<'_>> {
        let kind = match prefer {
            Prefer::Reader => PTHREAD_RWLOCK_PREFER_READER_NP,
            Prefer::Writer => PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP,
        };
        // SAFETY: attr initialized before use and destroyed after; the rwlock is unused.
        unsafe {
            let mut attr: libc::pthread_rwlockattr_t = std::mem::zeroed();
            check(
                libc::pthread_rwlockattr_init(&mut attr),
                "pthread_rwlockattr_init",
            )?;
            let mut rc = libc::pthread_rwlockattr_setkind_np(&mut attr, kind);
            if rc == 0 {
                rc = libc::pthread_rwlock_init(self.ptr(), &attr);
            }
            libc::pthread_rwlockattr_destroy(&mut attr);
            check(rc, "pthread_rwlock_init")?;
        }
        Ok(RwDestroy(self))
    }

    /// Read or write lock until `ms` from now, held for no time; returns when it was acquired
    /// (None: timed out).
    fn take_and_drop(&self, write: bool, ms: u64) -> Result<Option<u64>> {
        let deadline = realtime_after(ms);
        // SAFETY: an initialized rwlock; a valid timespec.
        let rc = unsafe {
            if write {
                pthread_rwlock_timedwrlock(self.ptr(), &deadline)
            } else {
                pthread_rwlock_timedrdlock(self.ptr(), &deadline)
            }
        };
        if !timed(rc, "pthread_rwlock_timed{rd,wr}lock")? {
            return Ok(None);
        }
        let at = now_ns();
        self.unlock()?;
        Ok(Some(at))
    }

    fn unlock(&self) -> Result<()> {
        // SAFETY: held by the caller.
        check(
            unsafe { libc::pthread_rwlock_unlock(self.ptr()) },
            "pthread_rwlock_unlock",
        )
    }
}

struct RwDestroy<'a>(&'a PthreadRwlock);

impl Drop for RwDestroy<'_> {
    fn drop(&mut self) {
        // SAFETY: initialized by `init`; every thread using it has been joined.
        unsafe { libc::pthread_rwlock_destroy(self.0.ptr()) };
    }
}

#[derive(Serialize)]
struct RwReport {
    scenario: &'static str,
    pid: u32,
    prefer: Prefer,
    holder_tid: u32,
    writer_tid: u32,
    reader_tid: u32,
    rwlock: String,
    symbol: &'static str,
    holder_acquired_ns: u64,
    writer_asked_ns: u64,
    reader_asked_ns: u64,
    /// Final line only (an acquisition is null when it timed out).
    #[serde(skip_serializing_if = "Option::is_none")]
    holder_released_ns: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    writer_acquired_ns: Option<Option<u64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reader_acquired_ns: Option<Option<u64>>,
    /// The late reader took more than 20 ms to get the lock (or never got it).
    #[serde(skip_serializing_if = "Option::is_none")]
    reader_blocked: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ended_at_ns: Option<u64>,
}

/// Set once, by the thread it names: when the holder acquired, the writer and reader asked,
/// and the reader acquired.
#[derive(Default)]
struct Times {
    held: AtomicU64,
    writer_asked: AtomicU64,
    reader_asked: AtomicU64,
    reader_got: AtomicU64,
}

fn ask(write: bool, asked: &AtomicU64, got: Option<&AtomicU64>, ms: u64) -> Result<Option<u64>> {
    asked.store(now_ns(), Ordering::SeqCst);
    let at = FAULTLINE_RWLOCK.take_and_drop(write, ms)?;
    if let (Some(got), Some(at)) = (got, at) {
        got.store(at, Ordering::SeqCst);
    }
    Ok(at)
}

pub(crate) fn rwlock_queue(prefer: Prefer, hold_ms: u64, announce: bool) -> Result<()> {
    let hold_ms = hold_ms.min(MAX_HOLD_MS);
    let _rw = FAULTLINE_RWLOCK.init(prefer)?;
    let t = Times::default();
    let lock = &FAULTLINE_RWLOCK;
    let mut report = thread::scope(|s| -> Result<RwReport> {
        let t = &t;
        let (hh, holder_tid) = spawn_named(s, "rw-holder", || {
            // SAFETY: an initialized rwlock, released below.
            check(
                unsafe { libc::pthread_rwlock_rdlock(lock.ptr()) },
                "pthread_rwlock_rdlock",
            )?;
            t.held.store(now_ns(), Ordering::SeqCst);
            libc_sleep_ms(hold_ms);
            let released = now_ns();
            lock.unlock()?;
            Ok(released)
        })?;
        wait_until("the holder's read lock", || {
            t.held.load(Ordering::SeqCst) != 0
        })?;
        libc_sleep_ms(STAGGER_MS);
        let (wh, writer_tid) = spawn_named(s, "rw-writer", || {
            ask(true, &t.writer_asked, None, 2 * hold_ms)
        })?;
        let writer_asleep = || t.writer_asked.load(Ordering::SeqCst) != 0 && in_futex(writer_tid);
        wait_until("the writer queued", writer_asleep)?;
        libc_sleep_ms(STAGGER_MS);
        let (rh, reader_tid) = spawn_named(s, "rw-reader", || {
            ask(false, &t.reader_asked, Some(&t.reader_got), 2 * hold_ms)
        })?;
        let mut report = RwReport {
            scenario: "rwlock-queue",
            pid: std::process::id(),
            prefer,
            holder_tid,
            writer_tid,
            reader_tid,
            rwlock: format!("{:#x}", lock.ptr() as usize),
            symbol: "FAULTLINE_RWLOCK",
            holder_acquired_ns: t.held.load(Ordering::SeqCst),
            writer_asked_ns: 0,
            reader_asked_ns: 0,
            holder_released_ns: None,
            writer_acquired_ns: None,
            reader_acquired_ns: None,
            reader_blocked: None,
            ended_at_ns: None,
        };
        if announce {
            // Preferring readers, the late reader does not sleep: it has the lock already.
            let reader_done = || match prefer {
                Prefer::Reader => t.reader_got.load(Ordering::SeqCst) != 0,
                Prefer::Writer => {
                    t.reader_asked.load(Ordering::SeqCst) != 0 && in_futex(reader_tid)
                }
            };
            wait_until("the queue formed", || writer_asleep() && reader_done())?;
            report.writer_asked_ns = t.writer_asked.load(Ordering::SeqCst);
            report.reader_asked_ns = t.reader_asked.load(Ordering::SeqCst);
            print_line(&report)?;
        }
        let (released, writer_got, reader_got) = (
            join(hh, "rw-holder"),
            join(wh, "rw-writer"),
            join(rh, "rw-reader"),
        );
        let (released, writer_got, reader_got) = (released?, writer_got?, reader_got?);
        report.writer_asked_ns = t.writer_asked.load(Ordering::SeqCst);
        report.reader_asked_ns = t.reader_asked.load(Ordering::SeqCst);
        report.holder_released_ns = Some(released);
        report.writer_acquired_ns = Some(writer_got);
        report.reader_acquired_ns = Some(reader_got);
        report.reader_blocked = Some(
            reader_got.is_none_or(|at| at.saturating_sub(report.reader_asked_ns) > BLOCKED_NS),
        );
        Ok(report)
    })?;
    report.ended_at_ns = Some(now_ns());
    print_line(&report)
}
