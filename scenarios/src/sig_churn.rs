//! Threads of one process changing their signal masks in a loop: every `sigprocmask` takes the
//! process's `sighand->siglock` (shared by its threads), so the threads contend on it (the
//! lock-contention profile's well-known per-process lock).

use std::time::Duration;

use anyhow::Result;
use serde::Serialize;

use crate::util::*;

#[derive(Serialize)]
struct SigChurnReport {
    scenario: &'static str,
    pid: u32,
    /// Signal-mask changes, over all threads.
    count: u64,
    start_ns: u64,
    end_ns: u64,
}

pub(crate) fn sig_churn(threads: u32, millis: u64) -> Result<()> {
    let ops = std::sync::atomic::AtomicU64::new(0);
    let deadline = std::time::Instant::now() + Duration::from_millis(millis);
    let (start_ns, end_ns) = timed_threads(threads, |_| {
        // SAFETY: sigset_t is plain data; the calls only change this thread's mask, and every
        // block is undone by the unblock after it.
        let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
        unsafe {
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGUSR2);
        }
        let mut n = 0u64;
        while std::time::Instant::now() < deadline {
            for _ in 0..64 {
                // SAFETY: as above.
                unsafe {
                    libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
                    libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
                }
            }
            n += 128;
        }
        ops.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    });
    let report = SigChurnReport {
        scenario: "sig-churn",
        pid: std::process::id(),
        count: ops.into_inner(),
        start_ns,
        end_ns,
    };
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}
