//! A real deadlock inside one process: a file's f_pos_lock held across a userfaultfd fault
//! whose handler then needs that lock. A rescue thread breaks it after a bounded time.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    thread,
    time::Duration,
};

use anyhow::{bail, Context as _, Result};
use serde::Serialize;

use crate::{uffd::*, util::*};

#[derive(Serialize)]
pub(crate) struct DeadlockReport {
    scenario: &'static str,
    pid: u32,
    /// Set the userfaultfd up (its handler); blocks on the f_pos_lock the holder owns.
    handler_tid: u32,
    /// Owns the f_pos_lock; its fault waits for the handler.
    holder_tid: u32,
    /// Breaks the deadlock after `hold_ms`.
    rescuer_tid: u32,
    /// Queued on the same f_pos_lock, outside the cycle.
    writer_tids: Vec<u32>,
}

pub(crate) fn set_thread_name(name: &str) {
    if let Ok(c) = std::ffi::CString::new(name) {
        // SAFETY: a NUL-terminated name for the calling thread.
        unsafe { libc::prctl(libc::PR_SET_NAME, c.as_ptr()) };
    }
}

pub(crate) fn uffd_deadlock(
    hold_ms: u64,
    extra_writers: u32,
    until_stdin_closes: bool,
) -> Result<()> {
    set_thread_name("dl-handler");
    // This thread does UFFDIO_API and REGISTER: it is the userfaultfd's handler.
    let (fd, region) = uffd_with_page()?;
    let handler_tid = gettid();
    let (file, dup) = shared_shm_file("deadlock")?;
    let result = (|| -> Result<DeadlockReport> {
        let src = region.addr as usize;
        let holder_tid = Arc::new(AtomicU64::new(0));
        let holder = {
            let holder_tid = holder_tid.clone();
            thread::Builder::new()
                .name("dl-holder".into())
                .spawn(move || -> Result<()> {
                    use std::io::Write as _;
                    holder_tid.store(u64::from(gettid()), Ordering::SeqCst);
                    // SAFETY: our own registered page; the copy faults and waits for the handler.
                    let buf = unsafe { std::slice::from_raw_parts(src as *const u8, 4096) };
                    (&file).write_all(buf).context("holder write")?;
                    Ok(())
                })
                .context("spawn the holder")?
        };
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
        let rescuer_tid = Arc::new(AtomicU64::new(0));
        let dst = region.addr as u64;
        let rescuer = {
            let rescuer_tid = rescuer_tid.clone();
            thread::Builder::new()
                .name("dl-rescuer".into())
                .spawn(move || -> i64 {
                    rescuer_tid.store(u64::from(gettid()), Ordering::SeqCst);
                    nap(hold_ms, until_stdin_closes);
                    copy_filled_page(fd, dst)
                })
                .context("spawn the rescuer")?
        };
        while rescuer_tid.load(Ordering::SeqCst) == 0 {
            thread::yield_now();
        }
        let mut writers = Vec::new();
        let mut writer_tids = Vec::new();
        for _ in 0..extra_writers {
            let tid = Arc::new(AtomicU64::new(0));
            let f = dup.try_clone().context("dup")?;
            let t = tid.clone();
            writers.push(
                thread::Builder::new()
                    .name("dl-writer".into())
                    .spawn(move || -> Result<()> {
                        use std::io::Write as _;
                        t.store(u64::from(gettid()), Ordering::SeqCst);
                        (&f).write_all(b"y").context("extra write")?;
                        Ok(())
                    })
                    .context("spawn a writer")?,
            );
            while tid.load(Ordering::SeqCst) == 0 {
                thread::yield_now();
            }
            writer_tids.push(tid.load(Ordering::SeqCst) as u32);
        }
        let report = DeadlockReport {
            scenario: "uffd-deadlock",
            pid: std::process::id(),
            handler_tid,
            holder_tid: htid,
            rescuer_tid: rescuer_tid.load(Ordering::SeqCst) as u32,
            writer_tids,
        };
        {
            use std::io::Write as _;
            let mut out = std::io::stdout().lock();
            writeln!(out, "{}", serde_json::to_string(&report)?)?;
            out.flush()?;
        }
        // The handler closes the cycle: it needs the f_pos_lock the holder keeps.
        {
            use std::io::Write as _;
            (&dup).write_all(b"x").context("handler write")?;
        }
        let copied = rescuer
            .join()
            .map_err(|_| anyhow::anyhow!("rescuer panicked"))?;
        if copied < 0 {
            bail!("UFFDIO_COPY: errno {}", -copied);
        }
        holder
            .join()
            .map_err(|_| anyhow::anyhow!("holder panicked"))??;
        for w in writers {
            w.join()
                .map_err(|_| anyhow::anyhow!("a writer panicked"))??;
        }
        Ok(report)
    })();
    // SAFETY: our own fd.
    unsafe { libc::close(fd) };
    result.map(|_| ())
}
