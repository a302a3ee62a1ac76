//! userfaultfd workloads: a delayed monitor, and a chain through a file mutex.

use std::{
    ptr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    thread,
    time::Duration,
};

use crate::util::*;
use anyhow::{bail, Context as _, Result};
use serde::Serialize;

// userfaultfd ABI: the numbers faultline decodes, shared with it.
use tracer_common::uffd_op::{UFFDIO_REGISTER_MODE_MISSING, UFFD_API};
pub(crate) const UFFDIO_API: libc::c_ulong = tracer_common::uffd_op::UFFDIO_API as libc::c_ulong;
pub(crate) const UFFDIO_REGISTER: libc::c_ulong =
    tracer_common::uffd_op::UFFDIO_REGISTER as libc::c_ulong;
pub(crate) const UFFDIO_COPY: libc::c_ulong = tracer_common::uffd_op::UFFDIO_COPY as libc::c_ulong;

#[repr(C)]
pub(crate) struct UffdioApi {
    pub(crate) api: u64,
    pub(crate) features: u64,
    pub(crate) ioctls: u64,
}

#[repr(C)]
pub(crate) struct UffdioRegister {
    pub(crate) start: u64,
    pub(crate) len: u64,
    pub(crate) mode: u64,
    pub(crate) ioctls: u64,
}

#[repr(C)]
pub(crate) struct UffdioCopy {
    pub(crate) dst: u64,
    pub(crate) src: u64,
    pub(crate) len: u64,
    pub(crate) mode: u64,
    pub(crate) copy: i64,
}

#[derive(Serialize)]
pub(crate) struct UffdReport {
    scenario: &'static str,
    pid: u32,
    faulter: Span,
    fault_addr: u64,
    monitor_pid: u32,
    monitor_tid: u32,
    /// When the monitor issued the resolving UFFDIO_COPY, and what it and the retry returned.
    copy_ns: u64,
    copy_ret: i64,
    retry_ret: i64,
}

/// UFFDIO_COPY of one page from `src` to `dst` (registered with `fd`): what resolves a fault.
/// Returns what the ioctl returned (negative errno on failure).
pub(crate) fn copy_page(fd: i32, dst: u64, src: u64) -> i64 {
    let mut copy = UffdioCopy {
        dst,
        src,
        len: 4096,
        mode: 0,
        copy: 0,
    };
    uffd_ioctl(fd, UFFDIO_COPY, &mut copy)
}

/// UFFDIO_COPY of a page of 0x42 bytes to `dst`: what the rescuers and watchdogs answer with.
pub(crate) fn copy_filled_page(fd: i32, dst: u64) -> i64 {
    let page = [0x42u8; 4096];
    copy_page(fd, dst, page.as_ptr() as u64)
}

pub(crate) fn uffd_ioctl<T>(fd: i32, req: libc::c_ulong, arg: &mut T) -> i64 {
    // SAFETY: `arg` is the struct this request takes.
    let r = unsafe { libc::ioctl(fd, req, arg as *mut T) };
    if r < 0 {
        -(std::io::Error::last_os_error().raw_os_error().unwrap_or(0) as i64)
    } else {
        r as i64
    }
}

pub(crate) fn uffd_stall(delay_ms: u64, fresh_source: bool) -> Result<()> {
    let (fd, region) = uffd_with_page()?;
    // The monitor is another process: its UFFDIO_COPY takes this process's mmap_lock.
    let (mut rd, mut wr) = (0, 0);
    let mut pipe = [0i32; 2];
    // SAFETY: valid array for pipe2.
    if unsafe { libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        bail!("pipe: {}", std::io::Error::last_os_error());
    }
    std::mem::swap(&mut rd, &mut pipe[0]);
    std::mem::swap(&mut wr, &mut pipe[1]);
    let dst = region.addr as u64;
    // SAFETY: the child only sleeps, issues ioctls and writes to a pipe, then exits.
    let child = unsafe { libc::fork() };
    if child < 0 {
        bail!("fork: {}", std::io::Error::last_os_error());
    }
    if child == 0 {
        unsafe {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            libc::close(rd);
        }
        let filled = [0x42u8; 4096];
        let fresh = if fresh_source {
            Mapping::new(4096).ok()
        } else {
            None
        };
        let src_addr = fresh
            .as_ref()
            .map_or(filled.as_ptr() as u64, |m| m.addr as u64);
        libc_sleep_ms(delay_ms);
        let copy_ns = now_ns();
        let copy_ret = copy_page(fd, dst, src_addr);
        let retry_ret = copy_page(fd, dst, src_addr);
        let msg = [gettid() as i64, copy_ns as i64, copy_ret, retry_ret];
        // SAFETY: writing our own array to the pipe.
        unsafe {
            libc::write(wr, msg.as_ptr().cast(), std::mem::size_of_val(&msg));
            libc::_exit(0);
        }
    }
    // SAFETY: closing our copy of the write end.
    unsafe { libc::close(wr) };
    let faulter = {
        let addr = region.addr as usize;
        thread::spawn(move || -> Span {
            let tid = gettid();
            let start_ns = now_ns();
            // SAFETY: a registered page of our own mapping: the read blocks until resolved.
            let v = unsafe { (addr as *const u8).read_volatile() };
            let expected = if fresh_source { 0 } else { 0x42 };
            assert_eq!(v, expected, "the page holds what the monitor copied");
            Span {
                tid,
                start_ns,
                end_ns: now_ns(),
            }
        })
    };
    let faulter = faulter
        .join()
        .map_err(|_| anyhow::anyhow!("faulter panicked"))?;
    let mut msg = [0i64; 4];
    // SAFETY: reading into our own array.
    let n = unsafe { libc::read(rd, msg.as_mut_ptr().cast(), std::mem::size_of_val(&msg)) };
    // SAFETY: our own child and fds.
    unsafe {
        libc::waitpid(child, ptr::null_mut(), 0);
        libc::close(rd);
        libc::close(fd);
    }
    if n != std::mem::size_of_val(&msg) as isize {
        bail!("the monitor did not report");
    }
    let report = UffdReport {
        scenario: "uffd-stall",
        pid: std::process::id(),
        faulter,
        fault_addr: dst,
        monitor_pid: child as u32,
        monitor_tid: msg[0] as u32,
        copy_ns: msg[1] as u64,
        copy_ret: msg[2],
        retry_ret: msg[3],
    };
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

/// A userfaultfd (API done) with one registered page; returns (fd, page).
pub(crate) fn uffd_with_page() -> Result<(i32, Mapping)> {
    // SAFETY: plain syscall; O_CLOEXEC only.
    let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC) } as i32;
    if fd < 0 {
        bail!("userfaultfd: {}", std::io::Error::last_os_error());
    }
    let mut api = UffdioApi {
        api: UFFD_API,
        features: 0,
        ioctls: 0,
    };
    if uffd_ioctl(fd, UFFDIO_API, &mut api) < 0 {
        bail!("UFFDIO_API: {}", std::io::Error::last_os_error());
    }
    let region = Mapping::new(4096)?;
    let mut reg = UffdioRegister {
        start: region.addr as u64,
        len: 4096,
        mode: UFFDIO_REGISTER_MODE_MISSING,
        ioctls: 0,
    };
    if uffd_ioctl(fd, UFFDIO_REGISTER, &mut reg) < 0 {
        bail!("UFFDIO_REGISTER: {}", std::io::Error::last_os_error());
    }
    Ok((fd, region))
}

#[derive(Serialize)]
pub(crate) struct ChainReport {
    scenario: &'static str,
    pid: u32,
    /// Holds the file's f_pos_lock while its fault waits on the userfaultfd.
    holder_tid: u32,
    /// Blocked on the f_pos_lock.
    waiter_tid: u32,
    monitor_pid: u32,
}

pub(crate) fn uffd_chain(hold_ms: u64, until_stdin_closes: bool) -> Result<()> {
    let (fd, region) = uffd_with_page()?;
    // A monitor process that holds the userfaultfd and never answers; gone with us.
    // SAFETY: the child only sleeps and exits.
    let monitor = unsafe { libc::fork() };
    if monitor < 0 {
        bail!("fork: {}", std::io::Error::last_os_error());
    }
    if monitor == 0 {
        unsafe {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        }
        let cap = if until_stdin_closes {
            MAX_STDIN_HOLD_MS
        } else {
            MAX_HOLD_MS
        };
        libc_sleep_ms(hold_ms.min(cap) + 5_000);
        unsafe { libc::_exit(0) };
    }
    let (file, dup) = shared_shm_file("chain")?;
    let result = (|| -> Result<ChainReport> {
        let src = region.addr as usize;
        let holder_tid = Arc::new(AtomicU64::new(0));
        let holder = {
            let holder_tid = holder_tid.clone();
            thread::spawn(move || -> Result<()> {
                use std::io::Write as _;
                holder_tid.store(u64::from(gettid()), Ordering::SeqCst);
                // SAFETY: our own registered page; the copy faults and waits for the handler.
                let buf = unsafe { std::slice::from_raw_parts(src as *const u8, 4096) };
                (&file).write_all(buf).context("holder write")?;
                Ok(())
            })
        };
        // Wait until the holder sleeps in handle_userfault (bounded).
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let htid = loop {
            let t = holder_tid.load(Ordering::SeqCst) as u32;
            if t != 0 && wchan_of(t).trim() == "handle_userfault" {
                break t;
            }
            if std::time::Instant::now() > deadline {
                bail!("the holder never reached handle_userfault");
            }
            thread::sleep(Duration::from_millis(5));
        };
        let waiter_tid = Arc::new(AtomicU64::new(0));
        let waiter = {
            let waiter_tid = waiter_tid.clone();
            thread::spawn(move || -> Result<()> {
                use std::io::Write as _;
                waiter_tid.store(u64::from(gettid()), Ordering::SeqCst);
                (&dup).write_all(b"x").context("waiter write")?;
                Ok(())
            })
        };
        while waiter_tid.load(Ordering::SeqCst) == 0 {
            thread::yield_now();
        }
        let report = ChainReport {
            scenario: "uffd-chain",
            pid: std::process::id(),
            holder_tid: htid,
            waiter_tid: waiter_tid.load(Ordering::SeqCst) as u32,
            monitor_pid: monitor as u32,
        };
        if until_stdin_closes {
            report_and_linger_until_eof(&report, hold_ms)?;
        } else {
            report_and_linger(&report, hold_ms)?;
        }
        // Resolve the fault ourselves: both writers finish.
        if copy_filled_page(fd, region.addr as u64) < 0 {
            bail!("UFFDIO_COPY: {}", std::io::Error::last_os_error());
        }
        holder
            .join()
            .map_err(|_| anyhow::anyhow!("holder panicked"))??;
        waiter
            .join()
            .map_err(|_| anyhow::anyhow!("waiter panicked"))??;
        Ok(report)
    })();
    // SAFETY: our own child and fd.
    unsafe {
        libc::kill(monitor, libc::SIGKILL);
        libc::waitpid(monitor, ptr::null_mut(), 0);
        libc::close(fd);
    }
    result.map(|_| ())
}

/// A userfaultfd that exists and is never used after setup (like a live-migration or lazy-
/// restore monitor between faults): it keeps whatever a tracer attaches while one exists
/// attached. Lives until stdin closes or `linger_ms`.
pub(crate) fn uffd_idle(linger_ms: u64) -> Result<()> {
    let (fd, _region) = uffd_with_page()?;
    let report =
        serde_json::json!({ "scenario": "uffd-idle", "pid": std::process::id(), "fd": fd });
    report_and_linger_until_eof(&report, linger_ms)?;
    // SAFETY: our own descriptor.
    unsafe { libc::close(fd) };
    Ok(())
}
