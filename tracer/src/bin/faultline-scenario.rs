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
        /// Print a first JSON line naming the tids as soon as the convoy has formed.
        #[arg(long)]
        announce: bool,
    },
    /// N mprotect calls on one page from one thread: N write acquisitions of its own mm.
    MprotectLoop {
        #[arg(long, default_value_t = 1000)]
        count: u32,
    },
    /// T threads of one process each mmap a page, write it, mprotect it and munmap it, N times
    /// in all: write acquisitions of one mm from several threads, which contend.
    Storm {
        #[arg(long, default_value_t = 100_000)]
        count: u32,
        #[arg(long, default_value_t = 2)]
        threads: u32,
    },
    /// Fault in N fresh anonymous pages (one write each), then unmap them: the page-fault path.
    FaultIn {
        #[arg(long, default_value_t = 65536)]
        pages: u32,
        /// Threads sharing the pages (one mm): each faults in its own slice.
        #[arg(long, default_value_t = 1)]
        threads: u32,
        /// Stay alive this long after reporting (per-process counters vanish at exit).
        #[arg(long, default_value_t = 0)]
        linger_ms: u64,
    },
    /// Two threads write one tmpfs file: the second blocks on the inode's rwsem, owned by the
    /// first (a kernel lock user space can reach).
    FileWriters {
        /// Size of each write; the first writer holds the inode lock for the whole copy.
        #[arg(long, default_value_t = 256)]
        mib: usize,
        /// Write from never-touched memory: the first writer's copy then faults in kernel mode
        /// page after page while it holds the inode lock the second writer waits for.
        #[arg(long)]
        fresh_source: bool,
    },
    /// A userfaultfd whose monitor (another process) delays its answer: the faulting thread
    /// waits in handle_userfault, then the monitor resolves the fault with UFFDIO_COPY, and
    /// finally retries the COPY onto the now-populated page (fails with EEXIST).
    UffdStall {
        #[arg(long, default_value_t = 300)]
        delay_ms: u64,
        /// Copy from a never-touched page: UFFDIO_COPY then faults in kernel mode while it holds
        /// the faulting process's mmap_lock (and retries outside it). The page reads as zeros.
        #[arg(long)]
        fresh_source: bool,
    },
    /// A two-hop chain: thread A write()s to a shared file from a userfaultfd-registered buffer
    /// nobody answers (holding the file's f_pos_lock mutex while its fault waits); thread B
    /// writes to the same file and blocks on that mutex. After `hold_ms` the fault is resolved
    /// and everything ends.
    UffdChain {
        #[arg(long, default_value_t = 3000)]
        hold_ms: u64,
    },
    /// A real deadlock between two processes: each registers a page with its own userfaultfd,
    /// takes the other's (pidfd_getfd) and serves it from one thread (UFFDIO_WAKE), and that
    /// same thread then faults on its own page. Each fault waits for a handler that waits for
    /// the other. Reports once both are asleep in handle_userfault, then after `hold_ms` both
    /// processes exit (the only way out).
    UffdDeadlock {
        #[arg(long, default_value_t = 5000)]
        hold_ms: u64,
    },
    /// N sleeping threads (small stacks) for `linger_ms`: a host with many tasks to diagnose.
    Threads {
        #[arg(long, default_value_t = 10_000)]
        count: u32,
        #[arg(long, default_value_t = 10_000)]
        linger_ms: u64,
    },
    /// read() from /dev/zero into N fresh pages: N kernel-mode faults, each under mmap_lock.
    KernelFaults {
        #[arg(long, default_value_t = 4096)]
        pages: u32,
        /// Stay alive this long after reporting (per-process counters vanish at exit).
        #[arg(long, default_value_t = 0)]
        linger_ms: u64,
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

fn rwr_once(
    hold_mib: usize,
    writer_delay: Duration,
    reader_delay: Duration,
    announce: bool,
) -> Result<RwrReport> {
    let tids: Arc<[AtomicU64; 3]> =
        Arc::new([AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)]);
    let reader_asked = Arc::new(AtomicU64::new(0));
    let region = Arc::new(Mapping::new(hold_mib << 20)?);
    // Small pages make the populate (and so the read hold) long and steady.
    let _ = region.madvise(libc::MADV_NOHUGEPAGE);
    let page = Arc::new(Mapping::new(4096)?);
    let hold_started = Arc::new(AtomicU64::new(0));
    let writer_started = Arc::new(AtomicU64::new(0));
    // All threads exist before the hold: creating one maps a stack, which takes the write lock.
    let barrier = Arc::new(Barrier::new(3));

    let holder = {
        let (region, barrier, started, tids) = (
            region.clone(),
            barrier.clone(),
            hold_started.clone(),
            tids.clone(),
        );
        thread::spawn(move || -> Result<Span> {
            let tid = gettid();
            tids[0].store(u64::from(tid), Ordering::SeqCst);
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
        let (page, barrier, hold, started, tids) = (
            page.clone(),
            barrier.clone(),
            hold_started.clone(),
            writer_started.clone(),
            tids.clone(),
        );
        thread::spawn(move || -> Result<Span> {
            let tid = gettid();
            tids[1].store(u64::from(tid), Ordering::SeqCst);
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
        let (barrier, started, tids, asked) = (
            barrier.clone(),
            writer_started.clone(),
            tids.clone(),
            reader_asked.clone(),
        );
        thread::spawn(move || -> Result<Span> {
            let tid = gettid();
            tids[2].store(u64::from(tid), Ordering::SeqCst);
            barrier.wait();
            while started.load(Ordering::SeqCst) == 0 {
                thread::yield_now();
            }
            thread::sleep(reader_delay);
            let start_ns = now_ns();
            asked.store(start_ns, Ordering::SeqCst);
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
    if announce {
        // Once the late reader has asked, the convoy is in place: say who is who while it lasts.
        while reader_asked.load(Ordering::SeqCst) == 0 {
            thread::yield_now();
        }
        thread::sleep(Duration::from_millis(10));
        println!(
            "{}",
            serde_json::json!({
                "phase": "convoy",
                "pid": std::process::id(),
                "holder": tids[0].load(Ordering::SeqCst),
                "writer": tids[1].load(Ordering::SeqCst),
                "reader": tids[2].load(Ordering::SeqCst),
            })
        );
        use std::io::Write as _;
        let _ = std::io::stdout().flush();
    }
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

fn rwr(hold_mib: usize, writer_delay_ms: u64, reader_delay_ms: u64, announce: bool) -> Result<()> {
    let (wd, rd) = (
        Duration::from_millis(writer_delay_ms),
        Duration::from_millis(reader_delay_ms),
    );
    let mut mib = hold_mib;
    // A populate can be faster than expected (its length varies a lot): retry bigger, bounded.
    for attempt in 1..=3 {
        let mut report = rwr_once(mib, wd, rd, announce)?;
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

/// Prints the report, then stays alive `linger_ms` so observers can read per-process state.
fn report_and_linger(report: &impl Serialize, linger_ms: u64) -> Result<()> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", serde_json::to_string(report)?)?;
    out.flush()?;
    drop(out);
    libc_sleep_ms(linger_ms.min(60_000));
    Ok(())
}

/// Runs `work(thread index)` on `threads` threads at once (all started before any begins) and
/// returns (start, end) in CLOCK_MONOTONIC ns.
fn timed_threads(threads: u32, work: impl Fn(u32) + Sync) -> (u64, u64) {
    let threads = threads.max(1);
    let gate = std::sync::Barrier::new(threads as usize + 1);
    // The scope returns once every thread has finished its work.
    let start = std::thread::scope(|s| {
        for t in 0..threads {
            let (gate, work) = (&gate, &work);
            s.spawn(move || {
                gate.wait();
                work(t);
            });
        }
        gate.wait();
        now_ns()
    });
    (start, now_ns())
}

/// `threads` threads share `count` iterations of mmap, write, mprotect, munmap of one page.
fn storm(count: u32, threads: u32) -> Result<()> {
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

fn fault_in(pages: u32, threads: u32, linger_ms: u64) -> Result<()> {
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

#[derive(Serialize)]
struct WritersReport {
    scenario: &'static str,
    pid: u32,
    holder: Span,
    waiter: Span,
}

fn file_writers(mib: usize, fresh_source: bool) -> Result<()> {
    let path = format!("/dev/shm/faultline-scenario-{}", std::process::id());
    let file = Arc::new(
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)
            .with_context(|| path.clone())?,
    );
    let result = (|| -> Result<WritersReport> {
        let fresh = if fresh_source {
            Some(Arc::new(Mapping::new(mib << 20)?))
        } else {
            None
        };
        let filled = if fresh_source {
            Vec::new()
        } else {
            vec![0x5au8; mib << 20]
        };
        let big: Arc<(Vec<u8>, Option<Arc<Mapping>>)> = Arc::new((filled, fresh));
        // Fault the source in first, so the write's time is the copy under the inode lock.
        let started = Arc::new(AtomicU64::new(0));
        let barrier = Arc::new(Barrier::new(2));
        let holder = {
            let (file, big, started, barrier) =
                (file.clone(), big.clone(), started.clone(), barrier.clone());
            thread::spawn(move || -> Result<Span> {
                use std::os::unix::fs::FileExt;
                let tid = gettid();
                barrier.wait();
                let start_ns = now_ns();
                started.store(start_ns, Ordering::SeqCst);
                let src: &[u8] = match &big.1 {
                    // SAFETY: our own mapping, alive as long as `big`.
                    Some(m) => unsafe { std::slice::from_raw_parts(m.addr as *const u8, m.len) },
                    None => &big.0,
                };
                file.write_all_at(src, 0).context("holder write")?;
                Ok(Span {
                    tid,
                    start_ns,
                    end_ns: now_ns(),
                })
            })
        };
        let waiter = {
            let (file, started, barrier) = (file.clone(), started.clone(), barrier.clone());
            thread::spawn(move || -> Result<Span> {
                use std::os::unix::fs::FileExt;
                let tid = gettid();
                barrier.wait();
                while started.load(Ordering::SeqCst) == 0 {
                    thread::yield_now();
                }
                thread::sleep(Duration::from_millis(10));
                let start_ns = now_ns();
                file.write_all_at(b"x", 0).context("waiter write")?;
                Ok(Span {
                    tid,
                    start_ns,
                    end_ns: now_ns(),
                })
            })
        };
        let holder = holder
            .join()
            .map_err(|_| anyhow::anyhow!("holder panicked"))??;
        let waiter = waiter
            .join()
            .map_err(|_| anyhow::anyhow!("waiter panicked"))??;
        Ok(WritersReport {
            scenario: "file-writers",
            pid: std::process::id(),
            holder,
            waiter,
        })
    })();
    let _ = std::fs::remove_file(&path);
    println!("{}", serde_json::to_string(&result?)?);
    Ok(())
}

// userfaultfd ABI (linux/userfaultfd.h), x86_64.
const UFFD_API: u64 = 0xaa;
const UFFDIO_API: libc::c_ulong = 0xc018_aa3f;
const UFFDIO_REGISTER: libc::c_ulong = 0xc020_aa00;
const UFFDIO_COPY: libc::c_ulong = 0xc028_aa03;
const UFFDIO_REGISTER_MODE_MISSING: u64 = 1;

#[repr(C)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

#[repr(C)]
struct UffdioRegister {
    start: u64,
    len: u64,
    mode: u64,
    ioctls: u64,
}

#[repr(C)]
struct UffdioCopy {
    dst: u64,
    src: u64,
    len: u64,
    mode: u64,
    copy: i64,
}

#[derive(Serialize)]
struct UffdReport {
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

fn uffd_ioctl<T>(fd: i32, req: libc::c_ulong, arg: &mut T) -> i64 {
    // SAFETY: `arg` is the struct this request takes.
    let r = unsafe { libc::ioctl(fd, req, arg as *mut T) };
    if r < 0 {
        -(std::io::Error::last_os_error().raw_os_error().unwrap_or(0) as i64)
    } else {
        r as i64
    }
}

fn uffd_stall(delay_ms: u64, fresh_source: bool) -> Result<()> {
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
        let mut copy = UffdioCopy {
            dst,
            src: src_addr,
            len: 4096,
            mode: 0,
            copy: 0,
        };
        let copy_ret = uffd_ioctl(fd, UFFDIO_COPY, &mut copy);
        let mut again = UffdioCopy {
            dst,
            src: src_addr,
            len: 4096,
            mode: 0,
            copy: 0,
        };
        let retry_ret = uffd_ioctl(fd, UFFDIO_COPY, &mut again);
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
fn uffd_with_page() -> Result<(i32, Mapping)> {
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

const UFFDIO_WAKE: libc::c_ulong = 0x8010_aa02;

#[repr(C)]
struct UffdioRange {
    start: u64,
    len: u64,
}

fn pipe_pair() -> Result<(i32, i32)> {
    let mut p = [0i32; 2];
    // SAFETY: valid array for pipe2.
    if unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        bail!("pipe: {}", std::io::Error::last_os_error());
    }
    Ok((p[0], p[1]))
}

fn send_u64s(fd: i32, v: &[u64]) -> Result<()> {
    let len = std::mem::size_of_val(v);
    // SAFETY: writing our own slice.
    if unsafe { libc::write(fd, v.as_ptr().cast(), len) } != len as isize {
        bail!("pipe write: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

fn recv_u64s<const N: usize>(fd: i32) -> Result<[u64; N]> {
    let mut v = [0u64; N];
    let len = std::mem::size_of_val(&v);
    // SAFETY: reading into our own array (pipe writes this small are atomic).
    if unsafe { libc::read(fd, v.as_mut_ptr().cast(), len) } != len as isize {
        bail!("the other process of the deadlock went away");
    }
    Ok(v)
}

/// One side of the userfaultfd deadlock: returns (this side's blocked thread, the peer's).
fn deadlock_side(wr: i32, rd: i32) -> Result<(u32, u32)> {
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
struct DeadlockReport {
    scenario: &'static str,
    pid: u32,
    peer_pid: u32,
    /// The two threads that wait on each other.
    tids: [u32; 2],
    /// Both were seen asleep in handle_userfault.
    deadlocked: bool,
}

/// Kills the peer and exits: the only way out of the deadlock (exiting ends our blocked thread).
fn end_deadlock(child: libc::pid_t, code: i32) -> ! {
    // SAFETY: our own child.
    unsafe {
        libc::kill(child, libc::SIGKILL);
        libc::waitpid(child, ptr::null_mut(), 0);
    }
    std::process::exit(code)
}

fn uffd_deadlock(hold_ms: u64) -> Result<()> {
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

fn wchan_of(tid: u32) -> String {
    std::fs::read_to_string(format!("/proc/self/task/{tid}/wchan")).unwrap_or_default()
}

#[derive(Serialize)]
struct ChainReport {
    scenario: &'static str,
    pid: u32,
    /// Holds the file's f_pos_lock while its fault waits on the userfaultfd.
    holder_tid: u32,
    /// Blocked on the f_pos_lock.
    waiter_tid: u32,
    monitor_pid: u32,
}

fn uffd_chain(hold_ms: u64) -> Result<()> {
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
        libc_sleep_ms(hold_ms.min(60_000) + 5_000);
        unsafe { libc::_exit(0) };
    }
    let path = format!("/dev/shm/faultline-chain-{}", std::process::id());
    let result = (|| -> Result<ChainReport> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)
            .with_context(|| path.clone())?;
        // A second descriptor for the same file: with the file shared, write() takes f_pos_lock.
        let dup = file.try_clone().context("dup")?;
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
        report_and_linger(&report, hold_ms)?;
        // Resolve the fault ourselves: both writers finish.
        let src = [0x42u8; 4096];
        let mut copy = UffdioCopy {
            dst: region.addr as u64,
            src: src.as_ptr() as u64,
            len: 4096,
            mode: 0,
            copy: 0,
        };
        if uffd_ioctl(fd, UFFDIO_COPY, &mut copy) < 0 {
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
    let _ = std::fs::remove_file(&path);
    result.map(|_| ())
}

fn many_threads(count: u32, linger_ms: u64) -> Result<()> {
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

fn libc_sleep_ms(ms: u64) {
    let ts = libc::timespec {
        tv_sec: (ms / 1000) as libc::time_t,
        tv_nsec: ((ms % 1000) * 1_000_000) as libc::c_long,
    };
    // SAFETY: valid timespec; an early return only shortens a test delay.
    unsafe { libc::nanosleep(&ts, ptr::null_mut()) };
}

fn kernel_faults(pages: u32, linger_ms: u64) -> Result<()> {
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
            announce,
        } => rwr(hold_mib, writer_delay_ms, reader_delay_ms, announce),
        Scenario::MprotectLoop { count } => mprotect_loop(count),
        Scenario::ForeignRead { count } => foreign_read(count),
        Scenario::FaultIn {
            pages,
            threads,
            linger_ms,
        } => fault_in(pages, threads, linger_ms),
        Scenario::Storm { count, threads } => storm(count, threads),
        Scenario::FileWriters { mib, fresh_source } => file_writers(mib, fresh_source),
        Scenario::UffdStall {
            delay_ms,
            fresh_source,
        } => uffd_stall(delay_ms, fresh_source),
        Scenario::KernelFaults { pages, linger_ms } => kernel_faults(pages, linger_ms),
        Scenario::UffdChain { hold_ms } => uffd_chain(hold_ms),
        Scenario::UffdDeadlock { hold_ms } => uffd_deadlock(hold_ms),
        Scenario::Threads { count, linger_ms } => many_threads(count, linger_ms),
    };
    if let Err(e) = result {
        eprintln!("faultline-scenario: error: {e:#}");
        std::process::exit(1);
    }
}
