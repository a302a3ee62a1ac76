//! A real deadlock between two processes, each serving the other's userfaultfd and faulting on
//! its own page. It ends only when the processes exit, after a bounded time.

use std::{ptr, thread, time::Duration};

use anyhow::{bail, Context as _, Result};
use serde::Serialize;

use crate::{uffd::*, util::*};

const UFFDIO_WAKE: libc::c_ulong = tracer_common::uffd_op::UFFDIO_WAKE as libc::c_ulong;

/// `struct uffdio_range`.
#[repr(C)]
struct UffdioRange {
    start: u64,
    len: u64,
}

pub(crate) fn pipe_pair() -> Result<(i32, i32)> {
    let mut p = [0i32; 2];
    // SAFETY: valid array for pipe2.
    if unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        bail!("pipe: {}", std::io::Error::last_os_error());
    }
    Ok((p[0], p[1]))
}

pub(crate) fn send_u64s(fd: i32, v: &[u64]) -> Result<()> {
    let len = std::mem::size_of_val(v);
    // SAFETY: writing our own slice.
    if unsafe { libc::write(fd, v.as_ptr().cast(), len) } != len as isize {
        bail!("pipe write: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

pub(crate) fn recv_u64s<const N: usize>(fd: i32) -> Result<[u64; N]> {
    let mut v = [0u64; N];
    let len = std::mem::size_of_val(&v);
    // SAFETY: reading into our own array (pipe writes this small are atomic).
    if unsafe { libc::read(fd, v.as_mut_ptr().cast(), len) } != len as isize {
        bail!("the other process of the deadlock went away");
    }
    Ok(v)
}

/// One side of the userfaultfd deadlock: returns (this side's blocked thread, the peer's).
pub(crate) fn deadlock_side(wr: i32, rd: i32) -> Result<(u32, u32)> {
    let (fd, region) = uffd_with_page()?;
    send_u64s(
        wr,
        &[u64::from(std::process::id()), fd as u64, region.addr as u64],
    )?;
    let [peer_pid, peer_fd, peer_page] = recv_u64s::<3>(rd)?;
    // SAFETY: plain syscalls on our own child/parent; their results are checked.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, peer_pid as libc::pid_t, 0) };
    if pidfd < 0 {
        bail!("pidfd_open: {}", std::io::Error::last_os_error());
    }
    // SAFETY: as above.
    let theirs = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd as i32, peer_fd as i32, 0) };
    if theirs < 0 {
        bail!("pidfd_getfd: {}", std::io::Error::last_os_error());
    }
    let own_page = region.addr as usize;
    // The page must stay mapped while the thread waits on it; the process exits to end it.
    std::mem::forget(region);
    let (tx, rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        let tid = gettid();
        // Serve the other side's userfaultfd once: this thread becomes its handler.
        let mut range = UffdioRange {
            start: peer_page,
            len: 4096,
        };
        let _ = uffd_ioctl(theirs as i32, UFFDIO_WAKE, &mut range);
        // Both handlers exist before either faults: a WAKE after the other side's fault would
        // wake it, and the deadlock would form through a retried fault instead.
        let peer = send_u64s(wr, &[u64::from(tid)]).and_then(|()| recv_u64s::<1>(rd));
        let _ = tx.send(peer.map(|[p]| (tid, p as u32)));
        // SAFETY: a registered page of our own mapping: the read waits for our handler, which
        // is the other side's thread, which waits for us.
        unsafe { (own_page as *const u8).read_volatile() };
    });
    rx.recv()
        .context("the deadlocking thread did not start")?
        .context("exchanging thread ids with the other side")
}

#[derive(Serialize)]
pub(crate) struct DeadlockReport {
    scenario: &'static str,
    pid: u32,
    peer_pid: u32,
    /// The two threads that wait on each other.
    tids: [u32; 2],
    /// Both were seen asleep in handle_userfault.
    deadlocked: bool,
}

/// Kills the peer and exits: the only way out of the deadlock (exiting ends our blocked thread).
pub(crate) fn end_deadlock(child: libc::pid_t, code: i32) -> ! {
    // SAFETY: our own child.
    unsafe {
        libc::kill(child, libc::SIGKILL);
        libc::waitpid(child, ptr::null_mut(), 0);
    }
    std::process::exit(code)
}

pub(crate) fn uffd_cross_deadlock(hold_ms: u64) -> Result<()> {
    let (p_rd, q_wr) = pipe_pair()?;
    let (q_rd, p_wr) = pipe_pair()?;
    // SAFETY: still single-threaded; the child only runs its side and sleeps.
    let child = unsafe { libc::fork() };
    if child < 0 {
        bail!("fork: {}", std::io::Error::last_os_error());
    }
    if child == 0 {
        // SAFETY: our own process.
        unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
        let code = match deadlock_side(q_wr, q_rd) {
            Ok(_) => {
                // Backstop: the parent kills us after hold_ms.
                libc_sleep_ms(hold_ms + 5000);
                0
            }
            Err(e) => {
                eprintln!("faultline-scenario: deadlock peer: {e:#}");
                1
            }
        };
        // SAFETY: leaving the child.
        unsafe { libc::_exit(code) };
    }
    let (mine, theirs) = match deadlock_side(p_wr, p_rd) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("faultline-scenario: error: {e:#}");
            end_deadlock(child, 1)
        }
    };
    let asleep = |pid: i32, tid: u32| {
        std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/wchan"))
            .is_ok_and(|w| w.trim() == "handle_userfault")
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut deadlocked = false;
    while std::time::Instant::now() < deadline {
        if asleep(std::process::id() as i32, mine) && asleep(child, theirs) {
            deadlocked = true;
            break;
        }
        thread::sleep(Duration::from_millis(10));
    }
    let report = DeadlockReport {
        scenario: "uffd-deadlock",
        pid: std::process::id(),
        peer_pid: child as u32,
        tids: [mine, theirs],
        deadlocked,
    };
    println!("{}", serde_json::to_string(&report)?);
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
    libc_sleep_ms(hold_ms);
    end_deadlock(child, 0)
}
