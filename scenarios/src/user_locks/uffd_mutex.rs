//! A userfaultfd monitor deadlocked on a pthread mutex: um-fault locks FAULTLINE_UFFD_MUTEX and
//! then touches a page registered with the userfaultfd; um-monitor, the thread that set the
//! userfaultfd up (its handler), reads the fault message and, before answering, takes the same
//! mutex. The fault waits for the monitor, the monitor for the mutex the faulting thread holds.
//! The monitor's ask is timed: after `hold_ms` it gives up, resolves the fault and all ends.

use std::{
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    sync::{
        atomic::{AtomicU64, Ordering},
        OnceLock,
    },
    thread,
};

use anyhow::{bail, Result};
use serde::Serialize;

use super::*;
use crate::{
    monitor_deadlock::wait_until,
    uffd::{copy_filled_page, uffd_with_page},
    util::{now_ns, wchan_of, Mapping, MAX_HOLD_MS},
};

#[no_mangle]
pub(crate) static FAULTLINE_UFFD_MUTEX: PthreadMutex = PthreadMutex::new();

#[derive(Serialize)]
struct UffdMutexReport {
    scenario: &'static str,
    pid: u32,
    /// Holds the mutex; its fault waits for the monitor.
    fault_tid: u32,
    /// The userfaultfd's handler; asks for the mutex before answering.
    monitor_tid: u32,
    mutex: String,
    symbol: &'static str,
    /// The registered page the faulting thread touches.
    fault_addr: String,
    /// When the monitor asked for the mutex: the cycle closes as it goes to sleep.
    deadlocked_at_ns: u64,
    /// Final line only: whether the monitor's ask timed out (it should), when it then resolved
    /// the fault (UFFDIO_COPY), and the end.
    #[serde(skip_serializing_if = "Option::is_none")]
    monitor_timed_out: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    resolved_at_ns: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ended_at_ns: Option<u64>,
}

/// The userfaultfd and its registered page, set up by the monitor; they outlive both threads
/// (a page unmapped under a waiting fault would kill the process).
type Setup = OnceLock<(OwnedFd, Mapping)>;

/// What the monitor did: when it asked for the mutex, whether the ask timed out, when it
/// resolved the fault.
struct Served {
    asked_ns: u64,
    timed_out: bool,
    resolved_ns: u64,
}

/// Sets the userfaultfd up, waits for the fault, asks for the mutex, then resolves the fault,
/// which it always tries once the userfaultfd exists: the faulting thread never stays stuck.
fn monitor(setup: &Setup, asked: &AtomicU64, hold_ms: u64) -> Result<Served> {
    // This thread does UFFDIO_API and REGISTER: it is the userfaultfd's handler.
    let (fd, region) = uffd_with_page()?;
    // SAFETY: a descriptor just opened and owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let (raw, page) = (fd.as_raw_fd(), region.addr as u64);
    if setup.set((fd, region)).is_err() {
        bail!("the userfaultfd was set up twice");
    }
    let served = (|| {
        // Non-blocking, as a monitor's is: poll on a blocking userfaultfd reports POLLERR.
        // SAFETY: our own descriptor.
        if unsafe { libc::fcntl(raw, libc::F_SETFL, libc::O_NONBLOCK) } != 0 {
            bail!("O_NONBLOCK: {}", std::io::Error::last_os_error());
        }
        let mut pfd = libc::pollfd {
            fd: raw,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd; bounded.
        let n = unsafe { libc::poll(&mut pfd, 1, (hold_ms + 5_000) as i32) };
        if n != 1 || pfd.revents & libc::POLLIN == 0 {
            bail!("poll on the userfaultfd: {n}, revents {:#x}", pfd.revents);
        }
        let mut msg = [0u8; 32];
        // SAFETY: reading one uffd_msg into our own buffer.
        if unsafe { libc::read(raw, msg.as_mut_ptr().cast(), msg.len()) } != msg.len() as isize {
            bail!(
                "read the fault message: {}",
                std::io::Error::last_os_error()
            );
        }
        let deadline = realtime_after(hold_ms);
        let asked_ns = now_ns();
        asked.store(asked_ns, Ordering::SeqCst);
        let acquired = FAULTLINE_UFFD_MUTEX.lock_until(&deadline)?;
        if acquired {
            FAULTLINE_UFFD_MUTEX.unlock()?;
        }
        Ok((asked_ns, !acquired))
    })();
    let resolved_ns = now_ns();
    let copied = copy_filled_page(raw, page);
    let (asked_ns, timed_out) = served?;
    if copied < 0 {
        bail!(
            "UFFDIO_COPY: {}",
            std::io::Error::from_raw_os_error(-copied as i32)
        );
    }
    Ok(Served {
        asked_ns,
        timed_out,
        resolved_ns,
    })
}

/// Locks the mutex, then touches the page (waiting for the monitor), then unlocks.
fn fault(setup: &Setup) -> Result<u8> {
    wait_until("the userfaultfd set up", || setup.get().is_some())?;
    let page = setup.get().map_or(0, |(_, m)| m.addr as usize);
    FAULTLINE_UFFD_MUTEX.lock()?;
    // SAFETY: the registered page of a mapping that lives until after this thread is joined;
    // the read waits in handle_userfault until the monitor resolves the fault.
    let v = unsafe { (page as *const u8).read_volatile() };
    FAULTLINE_UFFD_MUTEX.unlock()?;
    Ok(v)
}

pub(crate) fn uffd_mutex(hold_ms: u64, announce: bool) -> Result<()> {
    let hold_ms = hold_ms.min(MAX_HOLD_MS);
    let _m = FAULTLINE_UFFD_MUTEX.init(Protocol::Normal)?;
    // Outlives the scope: dropped (unmapped, closed) only once both threads are joined.
    let setup = Setup::new();
    let asked = AtomicU64::new(0);
    let mut report = thread::scope(|s| -> Result<UffdMutexReport> {
        let (setup, asked) = (&setup, &asked);
        let (mh, monitor_tid) = spawn_named(s, "um-monitor", || monitor(setup, asked, hold_ms))?;
        let (fh, fault_tid) = spawn_named(s, "um-fault", || fault(setup))?;
        let mut report = UffdMutexReport {
            scenario: "uffd-mutex",
            pid: std::process::id(),
            fault_tid,
            monitor_tid,
            mutex: FAULTLINE_UFFD_MUTEX.addr(),
            symbol: "FAULTLINE_UFFD_MUTEX",
            fault_addr: String::new(),
            deadlocked_at_ns: 0,
            monitor_timed_out: None,
            resolved_at_ns: None,
            ended_at_ns: None,
        };
        if announce {
            wait_until(
                "the monitor asleep on the mutex, the fault in handle_userfault",
                || {
                    asked.load(Ordering::SeqCst) != 0
                        && in_futex(monitor_tid)
                        && wchan_of(fault_tid).trim() == "handle_userfault"
                },
            )?;
            report.deadlocked_at_ns = asked.load(Ordering::SeqCst);
            report.fault_addr = fault_addr(setup);
            print_line(&report)?;
        }
        let (served, value) = (join(mh, "um-monitor"), join(fh, "um-fault"));
        let (served, value) = (served?, value?);
        if value != 0x42 {
            bail!("the faulting thread read {value:#x}, not what the monitor copied");
        }
        report.fault_addr = fault_addr(setup);
        report.deadlocked_at_ns = served.asked_ns;
        report.monitor_timed_out = Some(served.timed_out);
        report.resolved_at_ns = Some(served.resolved_ns);
        Ok(report)
    })?;
    report.ended_at_ns = Some(now_ns());
    print_line(&report)
}

fn fault_addr(setup: &Setup) -> String {
    setup
        .get()
        .map_or_else(String::new, |(_, m)| format!("{:#x}", m.addr as usize))
}
