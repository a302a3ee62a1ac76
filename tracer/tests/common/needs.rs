//! Kernel features a test needs, probed on the running kernel: when one is missing the test
//! says so in one line and returns, and the kernel matrix (`cargo xtask vmtest`) counts it as
//! "needs", apart from passes and failures.
//!
//! The probe reads the running kernel's own BTF, so only a kernel without the feature gets the
//! line; a kernel that has it runs the test in full.
// Each test binary uses some of these.
#![allow(dead_code)]

use std::io::Write as _;

use tracer::kernel::probes::kernel::KernelBtf;

/// The line's prefix, which `xtask vmtest` parses (`NEEDS <test>: <feature> (kernel ≥ X)`).
pub const NEEDS_MARK: &str = "NEEDS";

/// A kernel feature that is a struct member in BTF.
pub struct Field {
    pub strukt: &'static str,
    pub field: &'static str,
    /// The first kernel that has it and what else it takes, for the "needs" line.
    pub since: &'static str,
}

/// `task_struct.blocker`: the lock a task sleeps on uninterruptibly (hung-task blocker
/// tracking, Linux 6.16, `CONFIG_DETECT_HUNG_TASK_BLOCKER`). 6.15 had a mutex-only
/// `blocker_mutex`, which faultline does not read.
pub const TASK_BLOCKER: Field = Field {
    strukt: "task_struct",
    field: "blocker",
    since: "kernel ≥ 6.16 with CONFIG_DETECT_HUNG_TASK_BLOCKER",
};

/// Whether the running kernel has `field`. When it has not, writes
/// `NEEDS <test>: struct.field (kernel ≥ X)` to the real stderr (past libtest's capture, so the
/// line shows in every run) and returns false: the test returns without asserting.
pub fn kernel_has(test: &str, field: &Field) -> bool {
    let btf = KernelBtf::load().expect("kernel tests need the running kernel's BTF");
    if btf.member_offset(field.strukt, field.field).is_some() {
        return true;
    }
    // Not eprintln!: libtest captures that for passing tests.
    let line = format!(
        "{NEEDS_MARK} {test}: {}.{} ({})\n",
        field.strukt, field.field, field.since
    );
    let _ = std::io::stderr().write_all(line.as_bytes());
    false
}

/// Says that this machine could not produce what the test needs (`NEEDS <test>: <what>`), for
/// a workload whose effect the machine, not the kernel, rules out: spinlock contention in an
/// emulated guest whose vCPUs never run a critical section at the same moment. The test
/// returns without asserting; where the effect happens (the host) it asserts in full.
pub fn machine_lacks(test: &str, what: &str) {
    let line = format!("{NEEDS_MARK} {test}: {what}\n");
    let _ = std::io::stderr().write_all(line.as_bytes());
}
