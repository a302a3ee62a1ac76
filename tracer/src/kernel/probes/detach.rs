//! Detaching every probe at once, for a clean stop: no new record reaches the ring buffer, so
//! the agent can drain it to empty. The maps stay (a last snapshot reads them), and so do the
//! iterator programs, which stream nothing and run only when asked.

use aya::programs::Program;

use super::Probes;

impl Probes {
    /// Unloads every attached program (its links first); returns how many were unloaded. The
    /// userfaultfd gate goes too: nothing is left for it to attach or detach.
    pub fn detach_all(&mut self) -> usize {
        self.gate = None;
        let mut unloaded = 0;
        for (name, program) in self.ebpf.programs_mut() {
            let done = match program {
                Program::TracePoint(p) => p.unload(),
                Program::BtfTracePoint(p) => p.unload(),
                Program::RawTracePoint(p) => p.unload(),
                _ => continue,
            };
            match done {
                Ok(()) => unloaded += 1,
                // Never loaded (a feature this kernel lacks, a mode that leaves it out).
                Err(aya::programs::ProgramError::NotLoaded) => {}
                Err(e) => log::warn!("detaching {name} failed: {e}"),
            }
        }
        unloaded
    }
}
