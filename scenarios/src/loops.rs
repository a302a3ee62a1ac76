//! Loops that make plain, measurable mmap_lock and page-fault traffic (tests and benchmarks).

use std::{ptr, sync::Arc, thread};

use crate::util::*;
use anyhow::{bail, Context as _, Result};

pub(crate) fn mprotect_loop(count: u32) -> Result<()> {
    let page = Mapping::new(4096)?;
    let start_ns = now_ns();
    for i in 0..count {
        let prot = if i % 2 == 0 {
            libc::PROT_READ
        } else {
            libc::PROT_READ | libc::PROT_WRITE
        };
        page.mprotect(prot).context("mprotect")?;
    }
    let report = LoopReport {
        scenario: "mprotect-loop",
        pid: std::process::id(),
        tid: gettid(),
        count,
        start_ns,
        end_ns: now_ns(),
        target_pid: None,
    };
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

/// Prints the report, then stays alive `linger_ms` so observers can read per-process state.
pub(crate) fn storm(count: u32, threads: u32) -> Result<()> {
    let per = count / threads.max(1);
    let failed = std::sync::atomic::AtomicBool::new(false);
    let (start_ns, end_ns) = timed_threads(threads, |_| {
        for _ in 0..per {
            let Ok(page) = Mapping::new(4096) else {
                failed.store(true, std::sync::atomic::Ordering::Relaxed);
                return;
            };
            // SAFETY: inside our own writable mapping.
            unsafe { page.addr.cast::<u8>().write_volatile(1) };
            if page.mprotect(libc::PROT_READ).is_err() {
                failed.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        }
    });
    if failed.load(std::sync::atomic::Ordering::Relaxed) {
        bail!("storm: an mmap or mprotect failed");
    }
    let report = LoopReport {
        scenario: "storm",
        pid: std::process::id(),
        tid: gettid(),
        count: per * threads.max(1),
        start_ns,
        end_ns,
        target_pid: None,
    };
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

pub(crate) fn fault_in(pages: u32, threads: u32, linger_ms: u64) -> Result<()> {
    let len = pages as usize * 4096;
    let region = Mapping::new(len)?;
    // Small pages: one fault per page, the path the budget is about.
    let _ = region.madvise(libc::MADV_NOHUGEPAGE);
    let base = region.addr as usize;
    let threads = threads.max(1);
    let per = pages as usize / threads as usize;
    let (start_ns, end_ns) = timed_threads(threads, |t| {
        let first = t as usize * per;
        for i in first..first + per {
            // SAFETY: inside our own writable mapping; threads touch disjoint pages.
            unsafe { (base as *mut u8).add(i * 4096).write_volatile(1) };
        }
    });
    drop(region);
    let report = LoopReport {
        scenario: "fault-in",
        pid: std::process::id(),
        tid: gettid(),
        count: pages,
        start_ns,
        end_ns,
        target_pid: None,
    };
    report_and_linger(&report, linger_ms)
}

pub(crate) fn many_threads(count: u32, linger_ms: u64) -> Result<()> {
    let gate = Arc::new((std::sync::Mutex::new(false), std::sync::Condvar::new()));
    let mut handles = Vec::with_capacity(count as usize);
    for i in 0..count {
        let gate = gate.clone();
        let h = thread::Builder::new()
            .stack_size(64 << 10)
            .spawn(move || {
                let (lock, cv) = &*gate;
                let mut open = lock.lock().unwrap_or_else(|e| e.into_inner());
                while !*open {
                    open = cv.wait(open).unwrap_or_else(|e| e.into_inner());
                }
            })
            .with_context(|| format!("thread {i}"))?;
        handles.push(h);
    }
    let report =
        serde_json::json!({ "scenario": "threads", "pid": std::process::id(), "count": count });
    report_and_linger(&report, linger_ms)?;
    let (lock, cv) = &*gate;
    *lock.lock().unwrap_or_else(|e| e.into_inner()) = true;
    cv.notify_all();
    for h in handles {
        let _ = h.join();
    }
    Ok(())
}

pub(crate) fn kernel_faults(pages: u32, linger_ms: u64) -> Result<()> {
    let len = pages as usize * 4096;
    let region = Mapping::new(len)?;
    let _ = region.madvise(libc::MADV_NOHUGEPAGE);
    let zero = std::fs::File::open("/dev/zero").context("/dev/zero")?;
    let start_ns = now_ns();
    // SAFETY: reading into our own writable mapping; every page faults in kernel mode.
    let n = unsafe { libc::read(std::os::fd::AsRawFd::as_raw_fd(&zero), region.addr, len) };
    let end_ns = now_ns();
    if n != len as isize {
        bail!("read /dev/zero: {}", std::io::Error::last_os_error());
    }
    let report = LoopReport {
        scenario: "kernel-faults",
        pid: std::process::id(),
        tid: gettid(),
        count: pages,
        start_ns,
        end_ns,
        target_pid: None,
    };
    report_and_linger(&report, linger_ms)
}

pub(crate) fn foreign_read(count: u32) -> Result<()> {
    let data = Box::new([0x5au8; 4096]);
    let remote_addr = data.as_ptr() as usize;
    // SAFETY: the child only sleeps and exits; it touches nothing shared.
    let child = unsafe { libc::fork() };
    if child < 0 {
        bail!("fork: {}", std::io::Error::last_os_error());
    }
    if child == 0 {
        // Bounded: the parent kills us when done; never outlive it by more than 10 s.
        unsafe {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            libc::sleep(10);
            libc::_exit(0);
        }
    }
    let result = (|| -> Result<LoopReport> {
        let mut buf = [0u8; 4096];
        let start_ns = now_ns();
        for _ in 0..count {
            let local = libc::iovec {
                iov_base: buf.as_mut_ptr().cast(),
                iov_len: buf.len(),
            };
            let remote = libc::iovec {
                iov_base: remote_addr as *mut libc::c_void,
                iov_len: buf.len(),
            };
            // SAFETY: valid iovecs; the child has the same address layout after fork.
            let n = unsafe { libc::process_vm_readv(child, &local, 1, &remote, 1, 0) };
            if n != buf.len() as isize {
                bail!("process_vm_readv: {}", std::io::Error::last_os_error());
            }
        }
        Ok(LoopReport {
            scenario: "foreign-read",
            pid: std::process::id(),
            tid: gettid(),
            count,
            start_ns,
            end_ns: now_ns(),
            target_pid: Some(child as u32),
        })
    })();
    // SAFETY: our own child.
    unsafe {
        libc::kill(child, libc::SIGKILL);
        libc::waitpid(child, ptr::null_mut(), 0);
    }
    println!("{}", serde_json::to_string(&result?)?);
    Ok(())
}

/// Which system calls `syscalls` makes.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub(crate) enum SyscallKind {
    /// `getppid()` in a loop: the cheapest call there is, so the entry/exit path is all it costs.
    Getppid,
    /// 64-byte `write`s into a pipe by one thread and 64-byte `read`s by another: the small
    /// I/O a server or a logging pipeline makes all day.
    Pipe,
}

/// System calls for `millis`, counted: the path every syscall tracepoint slows down, whatever
/// call it hooks (enabling one sets a work flag on every task).
pub(crate) fn syscalls(kind: SyscallKind, millis: u64) -> Result<()> {
    let deadline = now_ns() + millis * 1_000_000;
    let start_ns = now_ns();
    let count = match kind {
        SyscallKind::Getppid => {
            let mut n = 0u64;
            // The clock is read every 1024 calls: a vDSO read, not a syscall.
            while !n.is_multiple_of(1024) || now_ns() < deadline {
                // SAFETY: getppid has no arguments and cannot fail.
                unsafe { libc::getppid() };
                n += 1;
            }
            n
        }
        SyscallKind::Pipe => pipe_pingpong(deadline)?,
    };
    let report = LoopReport {
        scenario: "syscalls",
        pid: std::process::id(),
        tid: gettid(),
        count: u32::try_from(count).unwrap_or(u32::MAX),
        start_ns,
        end_ns: now_ns(),
        target_pid: None,
    };
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

/// Writes and reads 64-byte messages through a pipe until `deadline`; returns the calls made.
fn pipe_pingpong(deadline: u64) -> Result<u64> {
    let mut fds = [0i32; 2];
    // SAFETY: a valid two-int array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        bail!("pipe2: {}", std::io::Error::last_os_error());
    }
    let (rd, wr) = (fds[0], fds[1]);
    let reader = thread::spawn(move || {
        let mut buf = [0u8; 64];
        let mut n = 0u64;
        // SAFETY: reading into our own buffer; the loop ends when the writer closes its end.
        while unsafe { libc::read(rd, buf.as_mut_ptr().cast(), buf.len()) } > 0 {
            n += 1;
        }
        // SAFETY: our own descriptor.
        unsafe { libc::close(rd) };
        n
    });
    let msg = [7u8; 64];
    let mut writes = 0u64;
    while !writes.is_multiple_of(256) || now_ns() < deadline {
        // SAFETY: writing our own buffer to our own pipe.
        if unsafe { libc::write(wr, msg.as_ptr().cast(), msg.len()) } < 0 {
            break;
        }
        writes += 1;
    }
    // SAFETY: our own descriptor; closing it ends the reader.
    unsafe { libc::close(wr) };
    let reads = reader
        .join()
        .map_err(|_| anyhow::anyhow!("pipe reader panicked"))?;
    Ok(writes + reads)
}
