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
    /// Where the reader's cgroup namespace root sits in the host's tree (`None`: not known, and
    /// only paths inside the namespace are taken as they are).
    ns_root: Option<String>,
    cache: PidCache<Option<Arc<Attribution>>>,
}

impl Resolver {
    pub fn new(proc_root: impl AsRef<Path>) -> Self {
        Self {
            proc_root: proc_root.as_ref().to_path_buf(),
            ns_root: None,
            cache: PidCache::new(CAPACITY, TTL),
        }
    }

    /// Paths read from /proc are relative to the reader's cgroup namespace root, which sits at
    /// `ns_root` in the host's tree: they are given as host paths.
    pub fn in_namespace(mut self, ns_root: Option<&str>) -> Self {
        self.ns_root = ns_root.map(str::to_owned);
        self
    }

    /// `None` for a process that is gone (or a host without cgroup v2).
    pub fn resolve(&mut self, pid: u32) -> Option<Arc<Attribution>> {
        let (root, ns_root) = (&self.proc_root, self.ns_root.as_deref());
        self.cache.get_or_insert_with(pid, |pid| {
            let text = std::fs::read_to_string(root.join(pid.to_string()).join("cgroup")).ok()?;
            let rel = cgroup_v2_path(&text)?;
            let path = match ns_root {
                Some(ns_root) => rebase_cgroup_path(ns_root, rel)?,
                // Outside an unknown namespace root: a path that cannot be placed is no path
                // (the record's cgroup id, resolved in the host's tree, names it instead).
                None if rel.starts_with("/..") => return None,
                None => rel.to_owned(),
            };
            let mut a = Attribution::from_path(&path);
            crate::kernel::pods::name(&mut a);
            Some(Arc::new(a))
        })
    }
}

/// The agent's resolver, shared by its sinks (graph, alerts, metrics).
pub fn shared() -> &'static Mutex<Resolver> {
    static SHARED: OnceLock<Mutex<Resolver>> = OnceLock::new();
    SHARED.get_or_init(|| {
        Mutex::new(Resolver::new("/proc").in_namespace(crate::kernel::cgroup_ids::ns_root()))
    })
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
    fn from_a_private_cgroup_namespace_paths_are_given_in_the_hosts_tree() {
        let dir = tempfile::tempdir().expect("tempdir");
        for (pid, path) in [(7, "/../pod2.slice/b.scope"), (8, "/")] {
            let p = dir.path().join(pid.to_string());
            std::fs::create_dir(&p).expect("mkdir");
            std::fs::write(p.join("cgroup"), format!("0::{path}\n")).expect("write");
        }
        let mut r =
            Resolver::new(dir.path()).in_namespace(Some("/kubepods.slice/pod1.slice/a.scope"));
        assert_eq!(
            r.resolve(7).expect("7").cgroup,
            "/kubepods.slice/pod1.slice/pod2.slice/b.scope"
        );
        assert_eq!(
            r.resolve(8).expect("8").cgroup,
            "/kubepods.slice/pod1.slice/a.scope"
        );
        // Not knowing the namespace's place, a path outside it is not made up.
        let mut unknown = Resolver::new(dir.path());
        assert_eq!(unknown.resolve(7), None);
        assert_eq!(unknown.resolve(8).expect("8").cgroup, "/");
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
