//! Kernel features faultline uses, each found in the running kernel's BTF rather than assumed
//! from its version, with the first mainline version that has it: `faultline check` names what
//! is missing and since when it exists, and what faultline does without it. (What the optional
//! programs cover once loaded is another idea: `probes::Coverage`.)

use super::probes::{
    families::{contention, mmap_lock},
    kernel::KernelBtf,
};

/// How a feature shows in BTF.
enum Probe {
    Type(&'static str),
    Member(&'static str, &'static str),
    /// A tracepoint argument, from the prototype of its BTF trace function.
    ExitGroupDead,
}

pub struct KernelFeature {
    pub name: &'static str,
    probe: Probe,
    /// The first mainline kernel that has it (distributions may backport).
    pub since: &'static str,
    /// What faultline does without it.
    pub without: &'static str,
}

pub const FEATURES: [KernelFeature; 7] = [
    KernelFeature {
        name: "mmap_lock tracepoints",
        probe: Probe::Type("btf_trace_mmap_lock_start_locking"),
        since: mmap_lock::SINCE,
        without: mmap_lock::KERNEL_WITHOUT,
    },
    KernelFeature {
        name: "lock contention tracepoints (lock:contention_begin/end)",
        probe: Probe::Type(contention::BTF_TYPE),
        since: "5.19",
        without: contention::KERNEL_WITHOUT,
    },
    KernelFeature {
        name: "BPF task iterator (bpf_iter__task)",
        probe: Probe::Type("bpf_iter__task"),
        since: "5.8",
        without: "diagnose reads /proc only: no mmap_lock queues, lock owners or userfaultfd waiters",
    },
    KernelFeature {
        name: "hung-task blocker (task_struct.blocker)",
        probe: Probe::Member("task_struct", "blocker"),
        since: "6.16 with CONFIG_DETECT_HUNG_TASK_BLOCKER",
        without: "diagnose does not name the mutex or rwsem a D-state task sleeps on, nor its owner; the agent still does from lock contention",
    },
    KernelFeature {
        name: "sched_process_exit(p, group_dead)",
        probe: Probe::ExitGroupDead,
        since: "6.13–6.18 (not in 6.12; in 6.18)",
        without: "whether a whole process died is decided in user space (per-process state is pruned at the next snapshot)",
    },
    KernelFeature {
        name: "mmap_lock tracepoints without memcg_path",
        probe: Probe::Member("trace_event_raw_mmap_lock", "memcg_id"),
        since: "6.14",
        without: "nothing: the older (mm, memcg_path, write) layout is read from BTF and handled",
    },
    KernelFeature {
        name: "per-VMA locks (vm_area_struct.vm_lock_seq)",
        probe: Probe::Member("vm_area_struct", "vm_lock_seq"),
        since: "6.4 (x86-64)",
        without: "nothing is lost: every anonymous fault takes mmap_lock for read, which faultline then shows",
    },
];

impl KernelFeature {
    pub fn present(&self, btf: &KernelBtf) -> bool {
        match self.probe {
            Probe::Type(t) => btf.has_type(t),
            Probe::Member(s, m) => btf.member_offset(s, m).is_some(),
            Probe::ExitGroupDead => btf.prototypes().exit_group_dead,
        }
    }

    /// The detail `check` prints: present, or missing with the version that has it.
    pub fn detail(&self, btf: &KernelBtf) -> String {
        if self.present(btf) {
            "present".into()
        } else {
            format!("missing: first in Linux {}", self.since)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named<'a>(btf: &KernelBtf, present: bool) -> Vec<&'a str> {
        FEATURES
            .iter()
            .filter(|f| f.present(btf) == present)
            .map(|f| f.name)
            .collect()
    }

    #[test]
    fn debian_12s_kernel_lacks_the_blocker_and_the_new_layouts_and_has_the_rest() {
        let btf = KernelBtf::from_path(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/btf/debian-6.1.0-56-amd64.btf"
        ))
        .expect("the 6.1 fixture");
        assert_eq!(
            named(&btf, false),
            vec![
                "hung-task blocker (task_struct.blocker)",
                "sched_process_exit(p, group_dead)",
                "mmap_lock tracepoints without memcg_path",
                "per-VMA locks (vm_area_struct.vm_lock_seq)",
            ]
        );
        let blocker = &FEATURES[3];
        assert_eq!(
            blocker.detail(&btf),
            "missing: first in Linux 6.16 with CONFIG_DETECT_HUNG_TASK_BLOCKER"
        );
    }

    #[test]
    fn this_hosts_kernel_has_every_feature() {
        // The machines this suite runs on have 6.18 with BTF (the VM kernels run the 6.1 test).
        let Ok(btf) = KernelBtf::load() else {
            return;
        };
        if !std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .is_ok_and(|r| r.starts_with("6.18"))
        {
            return;
        }
        assert_eq!(named(&btf, false), Vec::<&str>::new());
    }
}
