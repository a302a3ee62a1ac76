//! Process churn: N short-lived processes, each touching its own memory once, as a busy host's
//! cron jobs, health checks and shells do. Their tids are reused later by other processes and
//! their mm addresses by later mms: what a live model must forget in time.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use crate::util::{gettid, now_ns, LoopReport, Mapping};

/// Forks `count` children one after another (fewer if `within` runs out first); each maps a
/// page, writes it, changes its protection (a write hold of its own mmap_lock) and exits.
/// Fails if any child fails. The report's `count` is how many ran.
pub(crate) fn churn(count: u32, within: Option<Duration>) -> Result<()> {
    let start_ns = now_ns();
    let started = Instant::now();
    let mut failed = 0u32;
    let mut ran = 0u32;
    while ran < count && within.is_none_or(|w| started.elapsed() < w) {
        ran += 1;
        // SAFETY: the child only makes async-signal-safe calls (mmap, mprotect, munmap) before
        // `_exit`; the parent is single-threaded.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            bail!("fork: {}", std::io::Error::last_os_error());
        }
        if pid == 0 {
            let ok = Mapping::new(4096).is_ok_and(|page| {
                // SAFETY: inside our own writable mapping.
                unsafe { page.addr.cast::<u8>().write_volatile(1) };
                page.mprotect(libc::PROT_READ).is_ok()
            });
            // SAFETY: ends the child without running the parent's destructors or atexit hooks.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) };
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        if unsafe { libc::waitpid(pid, &mut status, 0) } != pid
            || !libc::WIFEXITED(status)
            || libc::WEXITSTATUS(status) != 0
        {
            failed += 1;
        }
    }
    if failed > 0 {
        bail!("churn: {failed} of {ran} children failed");
    }
    let report = LoopReport {
        scenario: "churn",
        pid: std::process::id(),
        tid: gettid(),
        count: ran,
        start_ns,
        end_ns: now_ns(),
        target_pid: None,
    };
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}
