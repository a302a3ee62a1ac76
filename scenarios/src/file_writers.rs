//! Two writers of one tmpfs file: a kernel rwsem (the inode lock) with a real owner.

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

#[derive(Serialize)]
pub(crate) struct WritersReport {
    scenario: &'static str,
    pid: u32,
    holder: Span,
    waiter: Span,
}

pub(crate) fn file_writers(mib: usize, fresh_source: bool) -> Result<()> {
    let file = Arc::new(unlinked_shm_file("scenario")?);
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
        // Both writers share one CPU: the waiter then only runs while the holder is off CPU, so
        // the kernel cannot let it spin on the lock's owner (an optimistic spin that wins takes
        // the lock without a contention event, and the wait this scenario exists for is gone).
        let cpu = first_allowed_cpu();
        let holder = {
            let (file, big, started, barrier) =
                (file.clone(), big.clone(), started.clone(), barrier.clone());
            thread::spawn(move || -> Result<Span> {
                use std::os::unix::fs::FileExt;
                let tid = gettid();
                if let Some(cpu) = cpu {
                    pin_this_thread(cpu);
                }
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
                if let Some(cpu) = cpu {
                    pin_this_thread(cpu);
                }
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
    println!("{}", serde_json::to_string(&result?)?);
    Ok(())
}
