//! The programs' own run time and run count, from the kernel's program info (what
//! `/proc/self/fdinfo/<fd>` shows as `run_time_ns` and `run_cnt`), read through aya. Zero
//! unless the kernel's BPF statistics are on (`--self-metrics`): they cost two clock reads per
//! run of every program.

use super::Probes;

impl Probes {
    /// (program, run time ns, run count) of every loaded program, sorted by name.
    pub fn program_stats(&self) -> Vec<(String, u64, u64)> {
        let mut out: Vec<(String, u64, u64)> = self
            .ebpf
            .programs()
            .filter_map(|(name, prog)| {
                // Programs never loaded (another detail mode's, a failed variant) have no info.
                let info = prog.info().ok()?;
                let ns = u64::try_from(info.run_time().as_nanos()).unwrap_or(u64::MAX);
                Some((name.to_owned(), ns, info.run_count()))
            })
            .collect();
        out.sort();
        out
    }
}
