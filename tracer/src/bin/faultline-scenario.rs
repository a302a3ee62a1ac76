//! Test workloads that make real `mmap_lock` traffic and contention, bounded in time and cleaning
//! up after themselves. Each prints one JSON line on stdout naming the tids involved and the
//! CLOCK_MONOTONIC times (the clock of `bpf_ktime_get_ns`) of what it did, so tests can match
//! what faultline saw against what really happened.
//!
//! Used by the kernel tests and by `cargo xtask bench`; also handy for demos:
//! `faultline-scenario rwr` while `faultline agent` runs.

use std::{
    io::Read,
    ptr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Barrier,
    },
    thread,
    time::Duration,
};

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};
use serde::Serialize;

#[derive(Parser)]
#[command(
    name = "faultline-scenario",
    about = "Real mmap_lock workloads for faultline's tests"
)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// Read-write-read convoy on one mm: a long read hold (MADV_POPULATE_WRITE), a writer that
    /// queues behind it (mprotect), and a reader that queues behind the writer (/proc/self/cmdline).
    Rwr {
        /// Size of the region populated under the read lock; doubled on a retry when the hold
        /// ended before the convoy formed.
        #[arg(long, default_value_t = 1024)]
        hold_mib: usize,
        /// Delay between the hold starting and the writer asking.
        #[arg(long, default_value_t = 20)]
        writer_delay_ms: u64,
        /// Delay between the writer asking and the late reader asking (the writer sets the rwsem
        /// handoff bit after a few ms; later readers queue behind it).
        #[arg(long, default_value_t = 30)]
        reader_delay_ms: u64,
    },
    /// N mprotect calls on one page from one thread: N write acquisitions of its own mm.
    MprotectLoop {
        #[arg(long, default_value_t = 1000)]
        count: u32,
    },
    /// Fault in N fresh anonymous pages (one write each), then unmap them: the page-fault path.
    FaultIn {
        #[arg(long, default_value_t = 65536)]
        pages: u32,
    },
    /// N process_vm_readv calls reading a child process's memory: read holds of a foreign mm.
    ForeignRead {
        #[arg(long, default_value_t = 100)]
        count: u32,
    },
}

fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn gettid() -> u32 {
    // SAFETY: gettid has no arguments and cannot fail.
    unsafe { libc::syscall(libc::SYS_gettid) as u32 }
}

/// An anonymous private mapping, unmapped on drop.
struct Mapping {
    addr: *mut libc::c_void,
    len: usize,
}

impl Mapping {
    fn new(len: usize) -> Result<Self> {
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

    fn madvise(&self, advice: libc::c_int) -> std::io::Result<()> {
        // SAFETY: the range is our own mapping.
        if unsafe { libc::madvise(self.addr, self.len, advice) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    fn mprotect(&self, prot: libc::c_int) -> std::io::Result<()> {
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
struct Span {
    tid: u32,
    start_ns: u64,
    end_ns: u64,
}

#[derive(Serialize, Debug)]
struct RwrReport {
    scenario: &'static str,
    pid: u32,
    holder: Span,
    writer: Span,
    reader: Span,
    /// Whether the convoy really formed: writer and reader both asked while the hold lasted.
    convoy: bool,
    attempts: u32,
}

fn rwr_once(hold_mib: usize, writer_delay: Duration, reader_delay: Duration) -> Result<RwrReport> {
    let region = Arc::new(Mapping::new(hold_mib << 20)?);
    // Small pages make the populate (and so the read hold) long and steady.
    let _ = region.madvise(libc::MADV_NOHUGEPAGE);
    let page = Arc::new(Mapping::new(4096)?);
    let hold_started = Arc::new(AtomicU64::new(0));
    let writer_started = Arc::new(AtomicU64::new(0));
    // All threads exist before the hold: creating one maps a stack, which takes the write lock.
    let barrier = Arc::new(Barrier::new(3));

    let holder = {
        let (region, barrier, started) = (region.clone(), barrier.clone(), hold_started.clone());
        thread::spawn(move || -> Result<Span> {
            let tid = gettid();
            barrier.wait();
            let start_ns = now_ns();
            started.store(start_ns, Ordering::SeqCst);
            region
                .madvise(libc::MADV_POPULATE_WRITE)
                .context("MADV_POPULATE_WRITE")?;
            Ok(Span {
                tid,
                start_ns,
                end_ns: now_ns(),
            })
        })
    };
    let writer = {
        let (page, barrier, hold, started) = (
            page.clone(),
            barrier.clone(),
            hold_started.clone(),
            writer_started.clone(),
        );
        thread::spawn(move || -> Result<Span> {
            let tid = gettid();
            barrier.wait();
            while hold.load(Ordering::SeqCst) == 0 {
                thread::yield_now();
            }
            thread::sleep(writer_delay);
            let start_ns = now_ns();
            started.store(start_ns, Ordering::SeqCst);
            page.mprotect(libc::PROT_READ).context("mprotect")?;
            Ok(Span {
                tid,
                start_ns,
                end_ns: now_ns(),
            })
        })
    };
    let reader = {
        let (barrier, started) = (barrier.clone(), writer_started.clone());
        thread::spawn(move || -> Result<Span> {
            let tid = gettid();
            barrier.wait();
            while started.load(Ordering::SeqCst) == 0 {
                thread::yield_now();
            }
            thread::sleep(reader_delay);
            let start_ns = now_ns();
            // get_cmdline reads our own memory under mmap_read_lock_killable.
            let mut buf = Vec::new();
            std::fs::File::open("/proc/self/cmdline")
                .and_then(|mut f| f.read_to_end(&mut buf))
                .context("/proc/self/cmdline")?;
            Ok(Span {
                tid,
                start_ns,
                end_ns: now_ns(),
            })
        })
    };
    let join = |h: thread::JoinHandle<Result<Span>>, who: &str| -> Result<Span> {
        h.join()
            .map_err(|_| anyhow::anyhow!("{who} thread panicked"))?
    };
    let holder = join(holder, "holder")?;
    let writer = join(writer, "writer")?;
    let reader = join(reader, "reader")?;
    let convoy = writer.start_ns < holder.end_ns && reader.start_ns < holder.end_ns;
    Ok(RwrReport {
        scenario: "rwr",
        pid: std::process::id(),
        holder,
        writer,
        reader,
        convoy,
        attempts: 1,
    })
}

fn rwr(hold_mib: usize, writer_delay_ms: u64, reader_delay_ms: u64) -> Result<()> {
    let (wd, rd) = (
        Duration::from_millis(writer_delay_ms),
        Duration::from_millis(reader_delay_ms),
    );
    let mut mib = hold_mib;
    // A populate can be faster than expected (its length varies a lot): retry bigger, bounded.
    for attempt in 1..=3 {
        let mut report = rwr_once(mib, wd, rd)?;
        report.attempts = attempt;
        if report.convoy || attempt == 3 {
            println!("{}", serde_json::to_string(&report)?);
            return Ok(());
        }
        mib *= 2;
    }
    unreachable!("the last attempt always reports")
}

#[derive(Serialize)]
struct LoopReport {
    scenario: &'static str,
    pid: u32,
    tid: u32,
    count: u32,
    start_ns: u64,
    end_ns: u64,
    /// For foreign-read: the process whose memory was read.
    #[serde(skip_serializing_if = "Option::is_none")]
    target_pid: Option<u32>,
}

fn mprotect_loop(count: u32) -> Result<()> {
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

fn fault_in(pages: u32) -> Result<()> {
    let len = pages as usize * 4096;
    let region = Mapping::new(len)?;
    // Small pages: one fault per page, the path the budget is about.
    let _ = region.madvise(libc::MADV_NOHUGEPAGE);
    let base = region.addr.cast::<u8>();
    let start_ns = now_ns();
    for i in 0..pages as usize {
        // SAFETY: inside our own writable mapping.
        unsafe { base.add(i * 4096).write_volatile(1) };
    }
    let end_ns = now_ns();
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
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

fn foreign_read(count: u32) -> Result<()> {
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

fn main() {
    let cli = Cli::parse();
    let result = match cli.scenario {
        Scenario::Rwr {
            hold_mib,
            writer_delay_ms,
            reader_delay_ms,
        } => rwr(hold_mib, writer_delay_ms, reader_delay_ms),
        Scenario::MprotectLoop { count } => mprotect_loop(count),
        Scenario::ForeignRead { count } => foreign_read(count),
        Scenario::FaultIn { pages } => fault_in(pages),
    };
    if let Err(e) = result {
        eprintln!("faultline-scenario: error: {e:#}");
        std::process::exit(1);
    }
}
