//! Threads creating and unlinking files in one tmpfs directory: every create and unlink takes
//! the directory's `i_rwsem` for write, a lock inside a slab object (the directory's inode), so
//! the threads contend on it (the lock-contention profile's slab-lock workload).

use std::{ffi::CString, time::Duration};

use anyhow::{Context as _, Result};
use serde::Serialize;

use crate::util::*;

#[derive(Serialize)]
struct DirChurnReport {
    scenario: &'static str,
    pid: u32,
    /// Files created and unlinked, over all threads.
    count: u64,
    start_ns: u64,
    end_ns: u64,
}

pub(crate) fn dir_churn(threads: u32, dirs: u32, millis: u64) -> Result<()> {
    // /dev/shm is tmpfs wherever the scenarios run (the VM guests mount it too).
    let dir = std::path::PathBuf::from(format!("/dev/shm/faultline-dir-{}", std::process::id()));
    std::fs::create_dir(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
    let dirs = dirs.max(1);
    for d in 0..dirs {
        std::fs::create_dir(dir.join(d.to_string())).context("mkdir in the churn directory")?;
    }
    let ops = std::sync::atomic::AtomicU64::new(0);
    let deadline = std::time::Instant::now() + Duration::from_millis(millis);
    let (start_ns, end_ns) = timed_threads(threads, |t| {
        let mut n = 0u64;
        while std::time::Instant::now() < deadline {
            // Every thread walks every directory: each directory's lock is contended.
            let d = n % u64::from(dirs);
            let Ok(path) = CString::new(format!("{}/{d}/f{t}-{}", dir.display(), n % 64)) else {
                return;
            };
            // SAFETY: a valid C string; the descriptor is closed at once.
            unsafe {
                let fd = libc::open(path.as_ptr(), libc::O_CREAT | libc::O_WRONLY, 0o600);
                if fd >= 0 {
                    libc::close(fd);
                }
                libc::unlink(path.as_ptr());
            }
            n += 1;
        }
        ops.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    });
    let _ = std::fs::remove_dir_all(&dir);
    let report = DirChurnReport {
        scenario: "dir-churn",
        pid: std::process::id(),
        count: ops.into_inner(),
        start_ns,
        end_ns,
    };
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}
