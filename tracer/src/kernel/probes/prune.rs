//! Per-process kernel maps whose process is gone: `PROC_FAULTS` (keyed by tgid) and
//! `UFFD_BY_MM` (registered mm → userfaultfd context).
//!
//! The kernel side drops both when `sched_process_exit` says the whole group died. That argument
//! exists only on recent kernels (not on Debian's 6.1 or 6.12) and never on the classic
//! tracepoint, so there the entries of exited processes would stay until the maps fill. This
//! prune runs at every agent snapshot, on every kernel:
//! - `PROC_FAULTS`: an entry whose tgid is gone from /proc goes.
//! - `UFFD_BY_MM`: an mm has no owner user space can see, but the context does: it holds the
//!   mm (so the address cannot be reused) until its last file is closed. An entry whose
//!   context no open file has, at this scan and the one before (a context created between a
//!   scan and the read of the map is spared once), goes.

use std::collections::BTreeSet;

use super::{attach, families::diag, ProbeError, Probes};
use tracer_common::diag_kind;

/// A `UFFD_BY_MM` entry: (mm, userfaultfd context).
type MmCtx = (u64, u64);

/// What one prune removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pruned {
    pub proc_faults: usize,
    pub uffd_by_mm: usize,
}

impl Probes {
    /// Removes the per-process entries of processes gone from the host; `alive(tgid)` says
    /// whether /proc still has one. Never fails the caller's snapshot: a map or scan that
    /// cannot be read is skipped this time, and said once per cause.
    pub fn prune_exited(&mut self, alive: impl Fn(u32) -> bool) -> Pruned {
        let proc_faults = self.prune_proc_faults(&alive);
        let proc_faults = self.note_prune(proc_faults);
        let uffd_by_mm = self.prune_uffd_contexts();
        let uffd_by_mm = self.note_prune(uffd_by_mm);
        if proc_faults + uffd_by_mm > 0 {
            log::debug!(
                "pruned per-process kernel entries of exited processes: {proc_faults} fault counters, {uffd_by_mm} userfaultfd mms"
            );
        }
        Pruned {
            proc_faults,
            uffd_by_mm,
        }
    }

    fn note_prune(&mut self, r: Result<usize, ProbeError>) -> usize {
        match r {
            Ok(n) => n,
            Err(e) => {
                let why = e.to_string();
                if self.prune_failed.as_deref() != Some(why.as_str()) {
                    log::warn!("pruning per-process kernel maps of exited processes failed ({why}); their entries stay until it works");
                }
                self.prune_failed = Some(why);
                0
            }
        }
    }

    fn prune_uffd_contexts(&mut self) -> Result<usize, ProbeError> {
        let entries = self.uffd_by_mm()?;
        // The gate's scan of this snapshot, when it ran; it is spent either way.
        let scanned = self.uffd_live.take();
        if entries.is_empty() || !self.uffd_scan_works {
            self.uffd_suspects.clear();
            return Ok(0);
        }
        let live = match scanned {
            Some(live) => live,
            None => self.live_uffd_contexts()?,
        };
        let missing: BTreeSet<MmCtx> = entries
            .iter()
            .copied()
            .filter(|(_, ctx)| !live.contains(ctx))
            .collect();
        let (due, fresh): (Vec<MmCtx>, Vec<MmCtx>) = missing
            .into_iter()
            .partition(|pair| self.uffd_suspects.contains(pair));
        self.uffd_suspects = fresh.into_iter().collect();
        let n = self.remove_uffd_by_mm(&due)?;
        if let Some(gate) = &mut self.gate {
            for pair in &due {
                gate.forget(*pair);
            }
        }
        Ok(n)
    }

    /// The userfaultfd contexts some open file has now (the file iterator, loaded on first use).
    pub(super) fn live_uffd_contexts(&mut self) -> Result<BTreeSet<u64>, ProbeError> {
        if !diag::loaded(&mut self.ebpf, &diag::FILES) {
            let btf = attach::kernel_btf()?;
            diag::load(&mut self.ebpf, &diag::FILES, &btf)?;
        }
        Ok(diag::run(&mut self.ebpf, &diag::FILES)?
            .into_iter()
            .filter(|r| r.kind == diag_kind::UFFD_FILE)
            .map(|r| r.a)
            .collect())
    }
}
