//! cgroup v2 ids (what `bpf_get_current_cgroup_id()` puts in every record) back to cgroup
//! paths, so a record names its workload without a /proc read, and still after its process has
//! exited. On cgroup v2 a cgroup's id is the inode number of its directory: the resolver walks
//! the cgroup2 mount once and again on a miss, at most once per `REWALK` (a storm of records
//! from a cgroup created after the walk costs one walk, not one per record).

use std::{
    collections::HashMap,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, OnceLock},
    time::{Duration, Instant},
};

use faultline_core::workload::{cgroup2_mount, cgroup2_ns_root_mounts, Attribution};

/// Least time between two walks of the cgroup tree.
const REWALK: Duration = Duration::from_secs(1);
/// Directories visited per walk at most (a host has hundreds; this bounds a pathological one).
const MAX_CGROUPS: usize = 65_536;

pub struct CgroupIds {
    /// Where cgroup2 is mounted (None: no cgroup v2 here, nothing resolves).
    mount: Option<PathBuf>,
    by_id: HashMap<u64, Arc<Attribution>>,
    walked: Option<Instant>,
}

impl CgroupIds {
    pub fn new(mount: Option<PathBuf>) -> Self {
        Self {
            mount,
            by_id: HashMap::new(),
            walked: None,
        }
    }

    /// The cgroup with this id, walking the tree again when it is unknown and the last walk is
    /// old enough; `None` for a cgroup removed before it could be seen.
    pub fn resolve(&mut self, id: u64) -> Option<Arc<Attribution>> {
        if let Some(a) = self.by_id.get(&id) {
            return Some(a.clone());
        }
        if self.walked.is_some_and(|t| t.elapsed() < REWALK) {
            return None;
        }
        self.walk();
        self.by_id.get(&id).cloned()
    }

    fn walk(&mut self) {
        self.walked = Some(Instant::now());
        let Some(mount) = &self.mount else {
            return;
        };
        // Ids of removed cgroups are never reused while the kernel runs, but the map is rebuilt
        // so that it holds only what exists.
        let mut by_id = HashMap::new();
        let mut stack = vec![mount.clone()];
        while let Some(dir) = stack.pop() {
            if by_id.len() >= MAX_CGROUPS {
                break;
            }
            let Ok(meta) = std::fs::metadata(&dir) else {
                continue;
            };
            let rel = dir.strip_prefix(mount).unwrap_or(Path::new(""));
            let path = format!("/{}", rel.display());
            // A pod left unnamed (its log directory not there yet) is looked up again.
            let attribution = self
                .by_id
                .values()
                .find(|a| a.cgroup == path && a.unnamed_pod().is_none())
                .cloned()
                .unwrap_or_else(|| {
                    let mut a = Attribution::from_path(&path);
                    super::pods::name(&mut a);
                    Arc::new(a)
                });
            by_id.insert(meta.ino(), attribution);
            if let Ok(entries) = std::fs::read_dir(&dir) {
                stack.extend(
                    entries
                        .flatten()
                        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                        .map(|e| e.path()),
                );
            }
        }
        self.by_id = by_id;
    }
}

/// The host's cgroup2 tree, when the agent's own `/sys/fs/cgroup` is not it: in a container with
/// a private cgroup namespace (the DaemonSet) that mount shows only the container's subtree, so
/// the host's is mounted elsewhere (read-only) and named here.
pub const CGROUP_ROOT_ENV: &str = "FAULTLINE_CGROUP_ROOT";

/// The agent's resolver, over the host's cgroup2 mount (`FAULTLINE_CGROUP_ROOT`, else the first
/// cgroup2 mount in mountinfo).
pub fn shared() -> &'static Mutex<CgroupIds> {
    static SHARED: OnceLock<Mutex<CgroupIds>> = OnceLock::new();
    SHARED.get_or_init(|| {
        let configured = std::env::var_os(CGROUP_ROOT_ENV)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from);
        let mount = configured.or_else(|| {
            std::fs::read_to_string("/proc/self/mountinfo")
                .ok()
                .and_then(|m| cgroup2_mount(&m))
        });
        Mutex::new(CgroupIds::new(mount))
    })
}

/// Resolves a record's cgroup id with the shared resolver.
pub fn attribute(id: u64) -> Option<Arc<Attribution>> {
    shared()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .resolve(id)
}

/// Where the agent's cgroup namespace root sits in the host's tree: `/` on the host itself, the
/// container's cgroup in a private namespace (the DaemonSet). `/proc/PID/cgroup` paths are
/// relative to that root, so this is what turns them into host paths. Found once, by the inode
/// of a cgroup2 mount rooted there (a container runtime mounts one on `/sys/fs/cgroup`) looked
/// up in the host's tree; `None` when no such mount is visible.
pub fn ns_root() -> Option<&'static str> {
    static ROOT: OnceLock<Option<String>> = OnceLock::new();
    ROOT.get_or_init(|| {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
        cgroup2_ns_root_mounts(&mountinfo).iter().find_map(|m| {
            let ino = std::fs::metadata(m).ok()?.ino();
            attribute(ino).map(|a| a.cgroup.clone())
        })
    })
    .as_deref()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_the_inodes_of_the_cgroup_directories() {
        let dir = tempfile::tempdir().expect("tempdir");
        let unit = dir.path().join("system.slice/db.service");
        std::fs::create_dir_all(&unit).expect("dirs");
        let ino = |p: &Path| std::fs::metadata(p).expect("stat").ino();
        let mut ids = CgroupIds::new(Some(dir.path().to_path_buf()));
        let a = ids.resolve(ino(&unit)).expect("the unit's id resolves");
        assert_eq!(a.cgroup, "/system.slice/db.service");
        assert_eq!(a.label(), "systemd:db.service");
        assert_eq!(ids.resolve(ino(dir.path())).expect("root").cgroup, "/");
        // A cgroup made after the walk is found on a later miss, once the rewalk delay passed.
        let late = dir.path().join("late");
        std::fs::create_dir(&late).expect("dir");
        assert!(ids.resolve(ino(&late)).is_none(), "within the rewalk delay");
        ids.walked = Some(Instant::now() - REWALK);
        assert_eq!(ids.resolve(ino(&late)).expect("after").cgroup, "/late");
    }
}
