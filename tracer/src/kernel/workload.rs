//! The live side of workload attribution: a cached pid → (cgroup, workload) resolver reading
//! /proc. The classification itself is the core's (`faultline_core::workload`).

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};

pub use faultline_core::workload::*;

use crate::kernel::pidcache::PidCache;

/// Processes remembered; past this the cache starts over (a miss is one small /proc read).
const CAPACITY: usize = 8192;
/// A process rarely changes cgroup; a reused pid is looked up again after this.
const TTL: Duration = Duration::from_secs(10);

/// pid → attribution, cached.
pub struct Resolver {
    proc_root: PathBuf,
    cache: PidCache<Option<Arc<Attribution>>>,
}

impl Resolver {
    pub fn new(proc_root: impl AsRef<Path>) -> Self {
        Self {
            proc_root: proc_root.as_ref().to_path_buf(),
            cache: PidCache::new(CAPACITY, TTL),
        }
    }

    /// `None` for a process that is gone (or a host without cgroup v2).
    pub fn resolve(&mut self, pid: u32) -> Option<Arc<Attribution>> {
        let root = &self.proc_root;
        self.cache.get_or_insert_with(pid, |pid| {
            let text = std::fs::read_to_string(root.join(pid.to_string()).join("cgroup")).ok()?;
            let mut a = Attribution::from_path(cgroup_v2_path(&text)?);
            crate::kernel::pods::name(&mut a);
            Some(Arc::new(a))
        })
    }
}

/// The agent's resolver, shared by its sinks (graph, alerts, metrics).
pub fn shared() -> &'static Mutex<Resolver> {
    static SHARED: OnceLock<Mutex<Resolver>> = OnceLock::new();
    SHARED.get_or_init(|| Mutex::new(Resolver::new("/proc")))
}

/// Resolves `pid` with the shared resolver.
pub fn attribute(pid: u32) -> Option<Arc<Attribution>> {
    shared()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .resolve(pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_resolver_reads_proc_and_forgets_gone_processes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("42");
        std::fs::create_dir(&p).expect("mkdir");
        std::fs::write(p.join("cgroup"), "0::/system.slice/db.service\n").expect("write");
        let mut r = Resolver::new(dir.path());
        let a = r.resolve(42).expect("attributed");
        assert_eq!(a.cgroup, "/system.slice/db.service");
        assert_eq!(a.label(), "systemd:db.service");
        assert_eq!(r.resolve(43), None, "no such process");
    }

    #[test]
    fn this_process_resolves_on_the_real_host() {
        // Every Linux with cgroup v2 mounted (hybrid or not) lists a `0::` line for us.
        let mut r = Resolver::new("/proc");
        let a = r
            .resolve(std::process::id())
            .expect("our own cgroup v2 path");
        assert!(a.cgroup.starts_with('/'), "{a:?}");
    }
}
