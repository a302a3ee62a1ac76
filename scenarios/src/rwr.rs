//! The read-write-read convoy: a long read hold, a writer queued behind it, a reader queued
//! behind the writer.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Barrier,
    },
    thread,
    time::Duration,
};

use crate::util::*;
use anyhow::{Context as _, Result};
use serde::Serialize;

#[derive(Serialize, Debug)]
pub(crate) struct RwrReport {
    scenario: &'static str,
    pid: u32,
    holder: Span,
    writer: Span,
    reader: Span,
    /// Whether the convoy really formed: writer and reader both asked while the hold lasted.
    convoy: bool,
    attempts: u32,
}

/// Faults in, before the hold begins, what a thread touches during the convoy: stack pages, and
/// the code of the calls it makes. On kernels without per-VMA locks (before 6.4) every fault
/// takes the mmap_lock for read, which names the faulting thread as the rwsem's last reader:
/// a thread that faulted after the holder's acquisition would hide the holder from the
/// default mode's owner-word hint (it would then see the writer itself as the last reader).
fn warm_up() {
    let stack = [0u8; 64 << 10];
    std::hint::black_box(&stack);
    let _ = now_ns();
    thread::sleep(Duration::from_micros(1));
    thread::yield_now();
}

/// Reads /proc/self/cmdline: `get_cmdline` reads our own memory under
/// `mmap_read_lock_killable`. With a stack buffer and raw calls: a heap allocation here could
/// make glibc create, grow or trim this thread's arena (mmap, mprotect, madvise: the *write*
/// lock), and the late reader would queue as a writer.
fn read_own_cmdline() -> Result<()> {
    let mut buf = [0u8; 4096];
    // SAFETY: a NUL-terminated path and our own buffer.
    let fd = unsafe {
        libc::open(
            c"/proc/self/cmdline".as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        anyhow::bail!("/proc/self/cmdline: {}", std::io::Error::last_os_error());
    }
    // SAFETY: as above; the descriptor is ours and closed right after.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    // SAFETY: our own descriptor, closed once.
    unsafe { libc::close(fd) };
    if n < 0 {
        anyhow::bail!("/proc/self/cmdline: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// Whether thread `tid` of this process sleeps uninterruptibly or killably (state `D`): the
/// writer queued on the lock. Raw calls into a stack buffer, with the path built before the hold,
/// for the reason `read_own_cmdline` gives.
fn sleeps_in_d(path: &std::ffi::CStr) -> bool {
    let mut buf = [0u8; 512];
    // SAFETY: a NUL-terminated path and our own buffer.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return false;
    }
    // SAFETY: as above; the descriptor is ours and closed right after.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    // SAFETY: our own descriptor, closed once.
    unsafe { libc::close(fd) };
    let Ok(n) = usize::try_from(n) else {
        return false;
    };
    // "tid (comm) S ...": the state follows the last ')'.
    let stat = &buf[..n.min(buf.len())];
    stat.iter()
        .rposition(|&b| b == b')')
        .and_then(|i| stat.get(i + 2))
        .is_some_and(|&b| b == b'D')
}

pub(crate) fn rwr_once(
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
            warm_up();
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
            warm_up();
            // Its call, once, before the hold (the page's protection does not change).
            page.mprotect(libc::PROT_READ | libc::PROT_WRITE)
                .context("mprotect")?;
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
            warm_up();
            // The same read once before the hold, so its code is in place.
            read_own_cmdline()?;
            // The writer's stat path is written into this after the barrier (its tid is known
            // then), without allocating: no heap call during the hold (see read_own_cmdline).
            let mut writer_stat: Vec<u8> = Vec::with_capacity(64);
            barrier.wait();
            while started.load(Ordering::SeqCst) == 0 {
                thread::yield_now();
            }
            // Only once the writer sleeps on the lock: a read that came first (the writer
            // preempted between saying it started and asking, on a loaded host) would share
            // the holder's lock, and leave the reader as the rwsem's last reader, hiding the
            // holder from the owner-word hint (seen once in CI). Bounded: past it, the report
            // says whether the convoy formed.
            {
                use std::io::Write as _;
                write!(
                    writer_stat,
                    "/proc/self/task/{}/stat\0",
                    tids[1].load(Ordering::SeqCst)
                )?;
            }
            let writer_stat = std::ffi::CStr::from_bytes_with_nul(&writer_stat)?;
            let deadline = std::time::Instant::now() + Duration::from_secs(2);
            while !sleeps_in_d(writer_stat) && std::time::Instant::now() < deadline {
                thread::yield_now();
            }
            thread::sleep(reader_delay);
            let start_ns = now_ns();
            asked.store(start_ns, Ordering::SeqCst);
            read_own_cmdline()?;
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

pub(crate) fn rwr(
    hold_mib: usize,
    writer_delay_ms: u64,
    reader_delay_ms: u64,
    announce: bool,
) -> Result<()> {
    let (wd, rd) = (
        Duration::from_millis(writer_delay_ms),
        Duration::from_millis(reader_delay_ms),
    );
    // The region is populated for real: more than the memory there is gets the process
    // OOM-killed (a 2 GiB VM asked for 8 GiB). A small machine is a slow one too, so a smaller
    // region still holds the lock long enough; the retries then stay at the cap.
    let cap = max_hold_mib();
    let mut mib = hold_mib.min(cap);
    // A populate can be faster than expected (its length varies a lot): retry bigger, bounded.
    for attempt in 1..=3 {
        let mut report = rwr_once(mib, wd, rd, announce)?;
        report.attempts = attempt;
        if report.convoy || attempt == 3 {
            println!("{}", serde_json::to_string(&report)?);
            return Ok(());
        }
        mib = (mib * 2).min(cap);
    }
    unreachable!("the last attempt always reports")
}

/// The largest region worth populating: half of MemAvailable, at least 64 MiB (unbounded when
/// /proc/meminfo cannot be read).
fn max_hold_mib() -> usize {
    let available_kib = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        m.lines()
            .find_map(|l| l.strip_prefix("MemAvailable:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<usize>().ok())
    });
    available_kib.map_or(usize::MAX, |kib| (kib / 1024 / 2).max(64))
}
