//! Per-process kernel maps are pruned in user space on every kernel: with the classic
//! `sched_process_exit` tracepoint (which, like the `tp_btf` prototype of 6.1 and 6.12, does not
//! say whether the whole group died) the kernel side never drops them. Run single-threaded,
//! under the kernel lock, like tests/kernel.rs.

mod common;

use std::path::Path;

use common::{require_root, scenario, u64_at};
use tracer::kernel::probes::{AttachMode, Detail, IoctlHooks, ProbeOptions, Probes};

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Probes as an old kernel runs them: no `group_dead`, so no kernel-side prune.
fn probes_without_group_dead() -> Probes {
    Probes::load(&ProbeOptions {
        attach: AttachMode::Tracepoint,
        detail: Detail::Full,
        uffd_ioctls: IoctlHooks::Always,
        ..Default::default()
    })
    .expect("load probes")
}

#[test]
fn fault_counters_of_an_exited_process_are_pruned() {
    if !require_root("fault_counters_of_an_exited_process_are_pruned") {
        return;
    }
    let mut probes = probes_without_group_dead();
    let report = scenario(&["fault-in", "--pages", "2000"]);
    let pid = u64_at(&report, &["pid"]) as u32;
    assert!(!alive(pid), "the scenario has exited");
    let has = |p: &Probes| {
        p.proc_faults()
            .expect("per-process faults")
            .iter()
            .any(|(tgid, _)| *tgid == pid)
    };
    assert!(
        has(&probes),
        "the kernel kept the counters of exited pid {pid} (nothing in the kernel prunes them here)"
    );
    let pruned = probes.prune_exited(alive);
    assert!(pruned.proc_faults >= 1, "{pruned:?}");
    assert!(!has(&probes), "counters of exited pid {pid} still there");
}

#[test]
fn userfaultfd_mms_of_an_exited_process_are_pruned() {
    if !require_root("userfaultfd_mms_of_an_exited_process_are_pruned") {
        return;
    }
    let mut probes = probes_without_group_dead();
    let before = probes.uffd_by_mm().expect("UFFD_BY_MM");
    scenario(&["uffd-stall", "--delay-ms", "20"]);
    let added: Vec<(u64, u64)> = probes
        .uffd_by_mm()
        .expect("UFFD_BY_MM")
        .into_iter()
        .filter(|e| !before.contains(e))
        .collect();
    assert!(
        !added.is_empty(),
        "the scenario's registration is in UFFD_BY_MM and outlives it (nothing in the kernel prunes it here)"
    );
    // The first prune only suspects an entry whose context no file has; the second removes it.
    probes.prune_exited(alive);
    let pruned = probes.prune_exited(alive);
    let left = probes.uffd_by_mm().expect("UFFD_BY_MM");
    assert!(
        added.iter().all(|e| !left.contains(e)),
        "entries of the exited scenario still there: {added:x?} in {left:x?} ({pruned:?})"
    );
    assert!(pruned.uffd_by_mm >= added.len(), "{pruned:?}");
}
