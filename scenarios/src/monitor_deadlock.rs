//! The userfaultfd deadlock of issue 11, as a real monitor makes it: the monitor thread polls
//! the userfaultfd, reads the fault message, and then logs it to a file whose f_pos_lock the
//! faulting thread holds (its write() copies from the registered page). An idle watchdog
//! thread that holds the same descriptor sleeps in nanosleep and, after `hold_ms`, resolves the
//! fault with UFFDIO_COPY: the only way out, so the workload is bounded.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use serde::Serialize;

use crate::{deadlock::set_thread_name, uffd::*, util::*};

#[derive(Serialize)]
pub(crate) struct MonitorDeadlockReport {
    scenario: &'static str,
    pid: u32,
    /// Read the fault message, then blocks on the f_pos_lock the faulter holds.
    monitor_tid: u32,
    /// Holds the f_pos_lock; its fault waits for the monitor.
    faulter_tid: u32,
    /// Holds the userfaultfd too, asleep in nanosleep until it releases the deadlock.
    watchdog_tid: u32,
    /// The userfaultfd's descriptor number in this process.
    uffd: i32,
}

/// A thread's state letter from /proc (`?` when unreadable).
fn state_of(tid: u32) -> char {
    std::fs::read_to_string(format!("/proc/self/task/{tid}/stat"))
        .ok()
        .and_then(|s| {
            s.rfind(')')
                .and_then(|i| s[i + 1..].trim_start().chars().next())
        })
        .unwrap_or('?')
}

/// The system call number a thread sleeps in (None when running or unreadable).
pub(crate) fn syscall_of(tid: u32) -> Option<i64> {
    std::fs::read_to_string(format!("/proc/self/task/{tid}/syscall"))
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Waits up to `timeout_ms` in epoll_wait on an epoll instance watching `fd`.
fn wait_in_epoll(fd: i32, done: i32, timeout_ms: u64) -> Result<()> {
    // SAFETY: plain syscalls on descriptors this function owns or borrows.
    unsafe {
        let ep = libc::epoll_create1(libc::EPOLL_CLOEXEC);
        if ep < 0 {
            bail!("epoll_create1: {}", std::io::Error::last_os_error());
        }
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: fd as u64,
        };
        // The userfaultfd (for more faults, which never come) and `done`, which the watchdog
        // signals once it has resolved the fault, so the monitor ends with the hold.
        let mut done_ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: done as u64,
        };
        if libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, fd, &mut ev) != 0
            || libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, done, &mut done_ev) != 0
        {
            let e = std::io::Error::last_os_error();
            libc::close(ep);
            bail!("epoll_ctl: {e}");
        }
        let mut out = [libc::epoll_event { events: 0, u64: 0 }];
        libc::epoll_wait(ep, out.as_mut_ptr(), 1, timeout_ms as i32);
        libc::close(ep);
    }
    Ok(())
}

/// Spawns a named thread that stores its tid, and waits until it has.
fn spawn_named<T: Send + 'static>(
    name: &str,
    body: impl FnOnce() -> T + Send + 'static,
) -> Result<(thread::JoinHandle<T>, u32)> {
    let tid = Arc::new(AtomicU64::new(0));
    let t = tid.clone();
    let handle = thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            t.store(u64::from(gettid()), Ordering::SeqCst);
            body()
        })
        .with_context(|| format!("spawn {name}"))?;
    while tid.load(Ordering::SeqCst) == 0 {
        thread::yield_now();
    }
    Ok((handle, tid.load(Ordering::SeqCst) as u32))
}

/// Polls until `ok()` holds (bounded).
pub(crate) fn wait_until(what: &str, ok: impl Fn() -> bool) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !ok() {
        if Instant::now() > deadline {
            bail!("{what} never happened");
        }
        thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

/// What the monitor does after reading the fault message.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum AfterRead {
    /// Logs it to the file whose f_pos_lock the faulter holds: the deadlock.
    Log,
    /// Forgets to answer and waits in epoll for the next message (bounded): alive, serving,
    /// no deadlock, only a fault nobody resolves until the watchdog does.
    Forget,
}

pub(crate) fn uffd_monitor_deadlock(
    hold_ms: u64,
    after: AfterRead,
    until_stdin_closes: bool,
) -> Result<()> {
    set_thread_name("md-main");
    let (fd, region) = uffd_with_page()?;
    // A monitor's descriptor is non-blocking: poll on a blocking userfaultfd reports POLLERR at
    // once, as the kernel cannot promise the read will not block.
    // SAFETY: our own descriptor.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, libc::O_NONBLOCK) } != 0 {
        bail!("O_NONBLOCK: {}", std::io::Error::last_os_error());
    }
    // SAFETY: a plain eventfd, closed below.
    let done = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    if done < 0 {
        bail!("eventfd: {}", std::io::Error::last_os_error());
    }
    let (file, log) = shared_shm_file("monitor-deadlock")?;
    let result = (|| -> Result<()> {
        let (monitor, monitor_tid) = spawn_named("md-monitor", move || -> Result<()> {
            use std::io::Write as _;
            let mut pfd = libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd; bounded by the watchdog's hold plus a margin.
            let n = unsafe { libc::poll(&mut pfd, 1, 70_000) };
            if n != 1 || pfd.revents & libc::POLLIN == 0 {
                bail!("poll on the userfaultfd: {n}, revents {:#x}", pfd.revents);
            }
            let mut msg = [0u8; 32];
            // SAFETY: reading one uffd_msg into our own buffer.
            let got = unsafe { libc::read(fd, msg.as_mut_ptr().cast(), msg.len()) };
            if got != msg.len() as isize {
                bail!(
                    "read the fault message: {}",
                    std::io::Error::last_os_error()
                );
            }
            if after == AfterRead::Forget {
                return wait_in_epoll(fd, done, hold_ms.min(MAX_HOLD_MS) + 1_000);
            }
            // Log it: blocks on the f_pos_lock the faulter holds across its fault.
            (&log).write_all(b"fault\n").context("monitor log write")?;
            Ok(())
        })?;
        // The monitor first waits in poll on the userfaultfd.
        wait_until("the monitor polling", || state_of(monitor_tid) == 'S')?;

        let src = region.addr as usize;
        let (faulter, faulter_tid) = spawn_named("md-faulter", move || -> Result<()> {
            use std::io::Write as _;
            // SAFETY: our own registered page; the copy faults and waits for the monitor
            // while write() holds the file's f_pos_lock.
            let buf = unsafe { std::slice::from_raw_parts(src as *const u8, 4096) };
            (&file).write_all(buf).context("faulter write")?;
            Ok(())
        })?;
        wait_until("the faulter in handle_userfault", || {
            wchan_of(faulter_tid).trim() == "handle_userfault"
        })?;
        match after {
            // The monitor read the message and now sleeps on the mutex (D).
            AfterRead::Log => wait_until("the monitor blocked on f_pos_lock", || {
                state_of(monitor_tid) == 'D'
            })?,
            AfterRead::Forget => wait_until("the monitor in epoll_wait", || {
                // glibc may implement epoll_wait with epoll_pwait.
                syscall_of(monitor_tid)
                    .is_some_and(|n| n == libc::SYS_epoll_wait || n == libc::SYS_epoll_pwait)
            })?,
        }

        let dst = region.addr as u64;
        let (watchdog, watchdog_tid) = spawn_named("md-watchdog", move || -> i64 {
            nap(hold_ms, until_stdin_closes);
            let copied = copy_filled_page(fd, dst);
            let one = 1u64;
            // SAFETY: an 8-byte write to our eventfd.
            unsafe { libc::write(done, (&one as *const u64).cast(), 8) };
            copied
        })?;
        let report = MonitorDeadlockReport {
            scenario: match after {
                AfterRead::Log => "uffd-monitor-deadlock",
                AfterRead::Forget => "uffd-monitor-deadlock --forgetful-monitor",
            },
            pid: std::process::id(),
            monitor_tid,
            faulter_tid,
            watchdog_tid,
            uffd: fd,
        };
        {
            use std::io::Write as _;
            let mut out = std::io::stdout().lock();
            writeln!(out, "{}", serde_json::to_string(&report)?)?;
            out.flush()?;
        }
        let copied = watchdog
            .join()
            .map_err(|_| anyhow::anyhow!("watchdog panicked"))?;
        if copied < 0 {
            bail!("UFFDIO_COPY: errno {}", -copied);
        }
        faulter
            .join()
            .map_err(|_| anyhow::anyhow!("faulter panicked"))??;
        monitor
            .join()
            .map_err(|_| anyhow::anyhow!("monitor panicked"))??;
        Ok(())
    })();
    // SAFETY: our own fds.
    unsafe {
        libc::close(fd);
        libc::close(done);
    }
    result
}
