//! Which tasks an agent reports on.
//!
//! The probes are host-wide: every agent on a host sees every task. When several agents share a
//! kernel (one per network namespace: containers, test fleets), `--scope netns` makes each one
//! report only the processes of its own network namespace, so an alert is raised once, by the
//! agent that owns the workload. The filter runs in user space where events enter the engine;
//! the kernel's aggregates (histograms, counters) stay host-wide.

use std::{os::unix::fs::MetadataExt as _, path::Path, time::Duration};

use crate::kernel::pidcache::PidCache;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Scope {
    /// Every task on the host.
    #[default]
    Host,
    /// Only processes in the agent's own network namespace.
    Netns,
}

#[derive(Debug, thiserror::Error)]
#[error("--scope netns: cannot read the agent's own network namespace ({path}): {source}; is /proc mounted?")]
pub struct ScopeError {
    path: String,
    source: std::io::Error,
}

/// A network namespace's identity: the (device, inode) of its `/proc/PID/ns/net`.
type NsId = (u64, u64);

fn netns_of(proc_root: &Path, pid: &str) -> std::io::Result<NsId> {
    let m = std::fs::metadata(proc_root.join(pid).join("ns/net"))?;
    Ok((m.dev(), m.ino()))
}

/// Processes remembered; a miss costs one stat of /proc.
const CAPACITY: usize = 16384;
/// A process rarely changes namespace; a reused pid is checked again after this.
const TTL: Duration = Duration::from_secs(5);

pub struct ScopeFilter {
    own: Option<NsId>,
    proc_root: std::path::PathBuf,
    cache: PidCache<bool>,
}

impl ScopeFilter {
    pub fn new(scope: Scope) -> Result<Self, ScopeError> {
        Self::with_proc_root(scope, Path::new("/proc"))
    }

    pub fn with_proc_root(scope: Scope, proc_root: &Path) -> Result<Self, ScopeError> {
        let own = match scope {
            Scope::Host => None,
            Scope::Netns => Some(netns_of(proc_root, "self").map_err(|source| ScopeError {
                path: proc_root.join("self/ns/net").display().to_string(),
                source,
            })?),
        };
        Ok(Self {
            own,
            proc_root: proc_root.to_path_buf(),
            cache: PidCache::new(CAPACITY, TTL),
        })
    }

    /// Whether the process `tgid` is in scope. A process that is gone is not: it leaves no
    /// trace in the model.
    pub fn admits(&mut self, tgid: u32) -> bool {
        let Some(own) = self.own else {
            return true;
        };
        let root = &self.proc_root;
        self.cache.get_or_insert_with(tgid, |pid| {
            netns_of(root, &pid.to_string()).is_ok_and(|ns| ns == own)
        })
    }

    pub fn is_host(&self) -> bool {
        self.own.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_scope_admits_everything() {
        let mut f = ScopeFilter::new(Scope::Host).expect("host scope");
        assert!(f.is_host());
        assert!(f.admits(u32::MAX));
    }

    #[test]
    fn netns_scope_admits_our_namespace_and_not_gone_processes() {
        let mut f = ScopeFilter::new(Scope::Netns).expect("our netns is readable");
        assert!(f.admits(std::process::id()));
        // pid_max is at most 2^22: this pid cannot exist.
        assert!(!f.admits(u32::MAX));
    }

    #[test]
    fn a_missing_proc_is_one_clear_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let e = ScopeFilter::with_proc_root(Scope::Netns, dir.path())
            .err()
            .expect("no /proc/self there");
        let msg = e.to_string();
        assert!(
            msg.starts_with("--scope netns: cannot read") && msg.contains("/proc mounted"),
            "{msg}"
        );
    }
}
