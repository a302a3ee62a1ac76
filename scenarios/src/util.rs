//! What every workload shares: clocks, ids, anonymous mappings, reports.

use std::ptr;

use anyhow::{bail, Result};
use serde::Serialize;

pub(crate) fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

pub(crate) fn gettid() -> u32 {
    // SAFETY: gettid has no arguments and cannot fail.
    unsafe { libc::syscall(libc::SYS_gettid) as u32 }
}

/// The first CPU this process may run on, or `None` if the mask cannot be read.
pub(crate) fn first_allowed_cpu() -> Option<usize> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; the kernel fills it for this thread.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer and size.
    let rc =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if rc != 0 {
        return None;
    }
    // SAFETY: CPU_ISSET reads the set we own.
    (0..libc::CPU_SETSIZE as usize).find(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
}

/// Pins the calling thread to one CPU; best effort (a refusal leaves it where it was).
pub(crate) fn pin_this_thread(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is a valid empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: CPU_SET writes the set we own; sched_setaffinity(0) is the calling thread.
    unsafe {
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// An anonymous private mapping, unmapped on drop.
pub(crate) struct Mapping {
    pub(crate) addr: *mut libc::c_void,
    pub(crate) len: usize,
}

impl Mapping {
    pub(crate) fn new(len: usize) -> Result<Self> {
        // SAFETY: anonymous mapping, no fd; the result is checked.
        let addr = unsafe {
            libc::mmap(
                ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            bail!("mmap of {len} bytes: {}", std::io::Error::last_os_error());
        }
        Ok(Self { addr, len })
    }

    pub(crate) fn madvise(&self, advice: libc::c_int) -> std::io::Result<()> {
        // SAFETY: the range is our own mapping.
        if unsafe { libc::madvise(self.addr, self.len, advice) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    pub(crate) fn mprotect(&self, prot: libc::c_int) -> std::io::Result<()> {
        // SAFETY: the range is our own mapping.
        if unsafe { libc::mprotect(self.addr, self.len, prot) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmapping our own mapping once.
        unsafe { libc::munmap(self.addr, self.len) };
    }
}

// SAFETY: the mapping is plain memory; threads only pass it to syscalls.
unsafe impl Send for Mapping {}
unsafe impl Sync for Mapping {}

#[derive(Serialize, Default, Debug)]
pub(crate) struct Span {
    pub(crate) tid: u32,
    pub(crate) start_ns: u64,
    pub(crate) end_ns: u64,
}

#[derive(Serialize)]
pub(crate) struct LoopReport {
    pub(crate) scenario: &'static str,
    pub(crate) pid: u32,
    pub(crate) tid: u32,
    pub(crate) count: u32,
    pub(crate) start_ns: u64,
    pub(crate) end_ns: u64,
    /// For foreign-read: the process whose memory was read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) target_pid: Option<u32>,
}

/// The longest a scenario holds on its own: a workload a test forgot still ends.
pub(crate) const MAX_HOLD_MS: u64 = 60_000;

/// The longest a hold that ends when stdin closes may last: the test that holds it ends it
/// (a failed one too, as its end closes the pipe), so it may outlast a slow machine's run (an
/// emulated guest takes minutes over what takes a real one seconds).
pub(crate) const MAX_STDIN_HOLD_MS: u64 = 600_000;

pub(crate) fn report_and_linger(report: &impl Serialize, linger_ms: u64) -> Result<()> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", serde_json::to_string(report)?)?;
    out.flush()?;
    drop(out);
    libc_sleep_ms(linger_ms.min(MAX_HOLD_MS));
    Ok(())
}

/// Like `report_and_linger`, but the linger also ends when stdin reaches end of file.
pub(crate) fn report_and_linger_until_eof(report: &impl Serialize, linger_ms: u64) -> Result<()> {
    use std::io::{Read as _, Write as _};
    let (tx, rx) = std::sync::mpsc::channel();
    // Detached: on a timeout it stays blocked in read() until the process exits.
    std::thread::spawn(move || {
        let mut sink = [0u8; 64];
        let mut stdin = std::io::stdin();
        while stdin.read(&mut sink).is_ok_and(|n| n > 0) {}
        let _ = tx.send(());
    });
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", serde_json::to_string(report)?)?;
    out.flush()?;
    drop(out);
    let _ = rx.recv_timeout(std::time::Duration::from_millis(
        linger_ms.min(MAX_STDIN_HOLD_MS),
    ));
    Ok(())
}

/// Sleeps `ms` in short naps (the thread stays in nanosleep, as an idle watchdog does); with
/// `until_stdin_closes`, ends early once stdin reaches end of file, checked between naps
/// without blocking on it (the caller is done looking: a long hold for slow machines that costs
/// fast ones nothing).
pub(crate) fn nap(ms: u64, until_stdin_closes: bool) {
    let cap = if until_stdin_closes {
        MAX_STDIN_HOLD_MS
    } else {
        MAX_HOLD_MS
    };
    let deadline = now_ns() + ms.min(cap) * 1_000_000;
    while now_ns() < deadline {
        libc_sleep_ms(100);
        if until_stdin_closes && stdin_at_eof() {
            return;
        }
    }
}

/// Whether stdin has reached end of file, without waiting (input that arrives is discarded).
fn stdin_at_eof() -> bool {
    let mut pfd = libc::pollfd {
        fd: 0,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, no wait.
    if unsafe { libc::poll(&mut pfd, 1, 0) } != 1 {
        return false;
    }
    let mut sink = [0u8; 64];
    // SAFETY: reading into our own buffer; poll said it will not block.
    unsafe { libc::read(0, sink.as_mut_ptr().cast(), sink.len()) == 0 }
}

/// Runs `work(thread index)` on `threads` threads at once (all started before any begins) and
/// returns (start, end) in CLOCK_MONOTONIC ns.
pub(crate) fn timed_threads(threads: u32, work: impl Fn(u32) + Sync) -> (u64, u64) {
    let threads = threads.max(1);
    let gate = std::sync::Barrier::new(threads as usize + 1);
    // The window starts when the first worker starts its work, read by the worker itself: after
    // its own start-up (a thread's stack and arena are mmap/mprotect: writes), before its first
    // step. Read by the main thread after the gate, a main thread descheduled on a slow guest saw
    // workers fault first (285 of 2000 faults before the window once under TCG); read before it,
    // the window took in the workers' start-up.
    let start = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (gate, work) = (&gate, &work);
                s.spawn(move || {
                    gate.wait();
                    let start = now_ns();
                    work(t);
                    start
                })
            })
            .collect();
        gate.wait();
        handles
            .into_iter()
            .filter_map(|h| h.join().ok())
            .min()
            .unwrap_or_else(now_ns)
    });
    (start, now_ns())
}

/// `threads` threads share `count` iterations of mmap, write, mprotect, munmap of one page.
pub(crate) fn wchan_of(tid: u32) -> String {
    std::fs::read_to_string(format!("/proc/self/task/{tid}/wchan")).unwrap_or_default()
}

pub(crate) fn libc_sleep_ms(ms: u64) {
    let ts = libc::timespec {
        tv_sec: (ms / 1000) as libc::time_t,
        tv_nsec: ((ms % 1000) * 1_000_000) as libc::c_long,
    };
    // SAFETY: valid timespec; an early return only shortens a test delay.
    unsafe { libc::nanosleep(&ts, ptr::null_mut()) };
}

/// A file in /dev/shm opened twice as one open file (a second descriptor from `dup`): a
/// write() through either takes the same f_pos_lock, the mutex the uffd workloads hang on.
/// The name is removed as soon as the file is open: the open descriptors keep it alive for as
/// long as the workload needs it, and a workload killed at any point (a test's timeout, a
/// SIGKILL) leaves nothing behind in /dev/shm.
pub(crate) fn shared_shm_file(name: &str) -> Result<(std::fs::File, std::fs::File)> {
    use anyhow::Context as _;
    let file = unlinked_shm_file(name)?;
    let dup = file.try_clone().context("dup")?;
    Ok((file, dup))
}

/// A new file in /dev/shm, open read-write, whose name is already gone (see
/// `shared_shm_file`).
pub(crate) fn unlinked_shm_file(name: &str) -> Result<std::fs::File> {
    use anyhow::Context as _;
    let path = format!("/dev/shm/faultline-{name}-{}", std::process::id());
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)
        .with_context(|| path.clone())?;
    std::fs::remove_file(&path).with_context(|| format!("unlinking {path}"))?;
    Ok(file)
}
