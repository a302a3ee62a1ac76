//! Features whose availability depends on the agent's privileges (or on what the host lets it
//! see), each decided once by trying what the feature does, not by reading capability bits:
//! a capability can be present and still not be enough (a sysctl, a private namespace, tracefs
//! permissions), and the reverse. The agent logs each missing one at start and exports
//! `faultline_feature_available{feature}`; `faultline check` lists the same items, so an
//! operator sees under the shipped privileges what the agent will do without.

use std::{fs, path::Path};

use crate::kernel::probes::kernel::kallsyms_range;

/// A privilege-dependent feature, by the name the gauge and `check` use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Feature {
    /// Naming a read holder from kernel stacks (`/proc/PID/task/TID/stack`).
    HolderStack,
    /// Detecting userfaultfd waits: needs `handle_userfault`'s real address from kallsyms.
    UffdWaits,
    /// Where other users' tasks sleep (`/proc/PID/task/TID/wchan`).
    Wchan,
    /// Syscall tracepoints (the userfaultfd ioctl hooks): their ids are read from tracefs.
    SyscallTracepoints,
    /// Resolving cgroup ids to cgroups and workloads over the host's cgroup2 hierarchy.
    CgroupResolution,
}

impl Feature {
    pub const ALL: [Feature; 5] = [
        Feature::HolderStack,
        Feature::UffdWaits,
        Feature::Wchan,
        Feature::SyscallTracepoints,
        Feature::CgroupResolution,
    ];

    /// The `feature` label of the gauge.
    pub fn name(self) -> &'static str {
        match self {
            Feature::HolderStack => "holder_stack",
            Feature::UffdWaits => "uffd_waits",
            Feature::Wchan => "wchan",
            Feature::SyscallTracepoints => "syscall_tracepoints",
            Feature::CgroupResolution => "cgroup_resolution",
        }
    }

    /// What grants it, for the line that says it is missing.
    pub fn granted_by(self) -> &'static str {
        match self {
            Feature::HolderStack => "CAP_SYS_ADMIN (the kernel refuses /proc/PID/stack without it)",
            Feature::UffdWaits => {
                "CAP_SYSLOG (kallsyms shows zero addresses without it, or kernel.kptr_restrict=0 with kernel.perf_event_paranoid<=1)"
            }
            Feature::Wchan => "CAP_SYS_PTRACE (wchan reads 0 for tasks the agent may not ptrace)",
            Feature::SyscallTracepoints => {
                "read access to tracefs events (root, or the tracefs gid= mount option)"
            }
            Feature::CgroupResolution => "the host's cgroup2 hierarchy mounted and readable",
        }
    }

    /// What faultline does without it.
    pub fn without(self) -> &'static str {
        match self {
            Feature::HolderStack => {
                "read holders of mmap_lock are named from the lock's owner field only; holders seen only on a kernel stack are not named"
            }
            Feature::UffdWaits => "userfaultfd waits are not detected",
            Feature::Wchan => {
                "tasks of other users blocked outside the traced locks show no wait channel, and userfaultfd stalls are not confirmed from /proc"
            }
            Feature::SyscallTracepoints => {
                "the userfaultfd ioctl hooks are not attached: handlers are named by the processes holding the descriptor"
            }
            Feature::CgroupResolution => "alerts and metrics carry no cgroup or workload",
        }
    }
}

/// A feature and whether it works here; when it does not, why (one line).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Availability {
    pub feature: Feature,
    /// `Err(reason)` when missing.
    pub status: Result<(), String>,
}

impl Availability {
    pub fn available(&self) -> bool {
        self.status.is_ok()
    }

    /// The start-up line for a missing feature: what, why, what grants it, what is lost.
    pub fn missing_line(&self) -> Option<String> {
        let reason = self.status.as_ref().err()?;
        Some(format!(
            "feature {} unavailable: {reason}; needs {}; without it {}",
            self.feature.name(),
            self.feature.granted_by(),
            self.feature.without()
        ))
    }
}

/// Decides every feature under the current privileges.
pub fn probe() -> Vec<Availability> {
    Feature::ALL
        .iter()
        .map(|&feature| Availability {
            feature,
            status: match feature {
                Feature::HolderStack => holder_stack(),
                Feature::UffdWaits => uffd_waits(),
                Feature::Wchan => wchan(),
                Feature::SyscallTracepoints => syscall_tracepoints(),
                Feature::CgroupResolution => cgroup_resolution(),
            },
        })
        .collect()
}

fn holder_stack() -> Result<(), String> {
    // The agent's own stack: the kernel checks CAP_SYS_ADMIN before anything else, so if this
    // read works, other tasks' work too (the agent can ptrace-read them as well with it).
    fs::read_to_string("/proc/self/stack")
        .map(drop)
        .map_err(|e| format!("reading /proc/self/stack: {e}"))
}

fn uffd_waits() -> Result<(), String> {
    match kallsyms_range("handle_userfault") {
        Some((start, _)) if start != 0 => Ok(()),
        Some(_) => Err("/proc/kallsyms shows handle_userfault at address 0 (restricted)".into()),
        // Unprivileged readers see every address as 0, which the lookup skips.
        None => Err(
            "handle_userfault has no address in /proc/kallsyms (restricted, or not built in)"
                .into(),
        ),
    }
}

fn wchan() -> Result<(), String> {
    // kthreadd (PID 2 where the host's PIDs are visible) and init: root's tasks, asleep; the
    // kernel shows "0" for a task the reader may not ptrace. Either saying where it sleeps is
    // enough (init may be running, or show 0 while its main thread waits in a way the kernel
    // does not name).
    let mut last = String::new();
    for pid in [2, 1] {
        match fs::read_to_string(format!("/proc/{pid}/wchan")) {
            Ok(w) if !matches!(w.trim(), "0" | "") => return Ok(()),
            Ok(_) => last = format!("/proc/{pid}/wchan reads 0 (no ptrace access to other tasks)"),
            Err(e) => last = format!("reading /proc/{pid}/wchan: {e}"),
        }
    }
    Err(last)
}

fn syscall_tracepoints() -> Result<(), String> {
    // What attaching a classic tracepoint reads; no mount is attempted here (the agent does
    // that when it attaches, and a check must not change the host).
    const IDS: [&str; 2] = [
        "/sys/kernel/tracing/events/syscalls/sys_enter_ioctl/id",
        "/sys/kernel/debug/tracing/events/syscalls/sys_enter_ioctl/id",
    ];
    // The first refusal says most (the usual mount point, denied), not a later "not found".
    let mut first = None;
    for id in IDS {
        match fs::read_to_string(id) {
            Ok(_) => return Ok(()),
            Err(e) => {
                first.get_or_insert(format!("reading {id}: {e}"));
            }
        }
    }
    Err(first.unwrap_or_default())
}

fn cgroup_resolution() -> Result<(), String> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("reading /proc/self/mountinfo: {e}"))?;
    let mount = super::workload::cgroup2_mount(&mountinfo)
        .ok_or_else(|| "no cgroup2 mount in /proc/self/mountinfo".to_string())?;
    readable_dir(&mount)
}

fn readable_dir(dir: &Path) -> Result<(), String> {
    fs::read_dir(dir)
        .map(drop)
        .map_err(|e| format!("listing {}: {e}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_feature_says_why_what_grants_it_and_what_is_lost() {
        let a = Availability {
            feature: Feature::UffdWaits,
            status: Err("zeros".into()),
        };
        let line = a.missing_line().expect("missing");
        assert!(line.starts_with("feature uffd_waits unavailable: zeros; needs CAP_SYSLOG"));
        assert!(line.ends_with("userfaultfd waits are not detected"));
        let ok = Availability {
            feature: Feature::UffdWaits,
            status: Ok(()),
        };
        assert_eq!(ok.missing_line(), None);
    }

    #[test]
    fn every_feature_is_decided_once_with_a_distinct_name() {
        let all = probe();
        let mut names: Vec<_> = all.iter().map(|a| a.feature.name()).collect();
        assert_eq!(names.len(), Feature::ALL.len());
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Feature::ALL.len());
    }
}
