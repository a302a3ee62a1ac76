//! The userfaultfd ioctl hooks, attached only while a userfaultfd exists.
//!
//! They are classic syscall tracepoints (`sys_enter_ioctl`, `sys_exit_ioctl`,
//! `sys_exit_userfaultfd`), and while any syscall tracepoint has a probe the kernel sends every
//! system call of every task through its slow entry and exit path, whatever the call: a
//! `getppid` loop loses about a quarter of its rate. So the agent loads them at start (the
//! verifier speaks then) but attaches them only while its scan finds a userfaultfd, and
//! detaches them `LINGER` after the last one is gone.
//!
//! The scan is the `diag_files` task-file iterator, matching files whose `f_op->poll` is
//! `userfaultfd_poll`; it runs at every snapshot. It also gives what the ioctls would have
//! taught about contexts set up before the hooks attached: each context's mm (seeded into
//! `UFFD_BY_MM`, so faults on it are seen waiting) and the processes holding it (the handlers
//! when no ioctl on it was seen). What the window before the hooks attach still loses is
//! said in docs/design.md and by `check`.

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use aya::{
    maps::{Array, HashMap, PerCpuArray, PerCpuValues},
    util::nr_cpus,
};
use tracer_common::{diag_kind, names::map, TaskState};

use super::{
    attach::{self, Link, Program},
    families::{diag, uffd},
    maps, Coverage, ProbeError, Probes,
};

/// How long the hooks stay after the last userfaultfd is gone: a workload that opens one
/// after another (a test suite, repeated migrations) does not re-enter the window each time.
pub const LINGER: Duration = Duration::from_secs(5);

/// When the userfaultfd ioctl hooks are attached.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum IoctlHooks {
    /// Only while a userfaultfd exists on the host (found by a scan at every snapshot): the
    /// syscall path costs nothing otherwise.
    #[default]
    WhileUffdExists,
    /// From start to exit: no ioctl is missed, and every system call on the host pays for
    /// the syscall tracepoints.
    Always,
}

impl IoctlHooks {
    pub fn name(self) -> &'static str {
        match self {
            Self::WhileUffdExists => "while-uffd-exists",
            Self::Always => "always",
        }
    }
}

/// One userfaultfd descriptor found by the scan.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct UffdFile {
    /// The process holding the descriptor.
    pub tgid: u32,
    pub ctx: u64,
    /// The registered mm (0: unknown).
    pub mm: u64,
}

/// The gate's state, kept in `Probes` when the hooks are gated.
#[derive(Default)]
pub(super) struct Gate {
    /// The links of the attached hooks; empty while detached.
    links: Vec<(&'static Program, Link)>,
    last_seen: Option<Instant>,
    /// (mm, ctx) pairs already written to `UFFD_BY_MM`.
    seeded: BTreeSet<(u64, u64)>,
    /// Why the last attach failed (logged once per cause).
    failed: Option<String>,
}

/// What one scan found and did.
#[derive(Debug, Default)]
pub struct Scan {
    pub files: Vec<UffdFile>,
    /// Waits the kernel side had not seen begin (they began before the scan seeded
    /// `UFFD_BY_MM`), now written to the task's kernel state as beginning at the scan, so
    /// that snapshots show them and a handler's wake-up ends them: (tid, tgid, context, since).
    pub waiters: Vec<(u32, u32, u64, u64)>,
    /// `Some(true)` when this scan attached the hooks, `Some(false)` when it detached them.
    pub switched: Option<bool>,
}

impl Gate {
    /// Forgets a (mm, context) pair the prune removed from `UFFD_BY_MM`, so that a scan that
    /// finds it again writes it again.
    pub(super) fn forget(&mut self, pair: (u64, u64)) {
        self.seeded.remove(&pair);
    }
}

impl Probes {
    /// Whether the ioctl hooks are gated (and so whether `scan_uffds` has work to do).
    pub fn ioctls_gated(&self) -> bool {
        self.gate.is_some()
    }

    /// Whether the userfaultfd ioctl hooks are attached right now.
    pub fn ioctl_hooks_attached(&self) -> bool {
        match &self.gate {
            Some(g) => !g.links.is_empty(),
            None => self.covers(Coverage::UffdIoctls),
        }
    }

    /// Scans the host's open files for userfaultfds, seeds what the ioctl hooks would have
    /// learnt, and attaches or detaches the hooks. Without a gate it does nothing. When the
    /// scan itself cannot run, the hooks are attached for good (the gate is dropped): missing
    /// every ioctl would cost more truth than the syscall path costs time.
    pub fn scan_uffds(&mut self, now: Instant) -> Result<Scan, ProbeError> {
        let Some(mut gate) = self.gate.take() else {
            return Ok(Scan::default());
        };
        match self.scan_with(&mut gate, now) {
            Ok(scan) => {
                self.gate = Some(gate);
                Ok(scan)
            }
            Err(e) if gate.links.is_empty() => {
                log::warn!("userfaultfd scan failed ({e}): attaching the userfaultfd ioctl hooks for good, so every system call pays for them (--uffd-ioctl-hooks always)");
                self.attach_ioctls()?;
                Ok(Scan {
                    switched: Some(true),
                    ..Scan::default()
                })
            }
            Err(e) => {
                log::warn!("userfaultfd scan failed ({e}): the userfaultfd ioctl hooks stay attached for good (--uffd-ioctl-hooks always)");
                Ok(Scan::default())
            }
        }
    }

    fn scan_with(&mut self, gate: &mut Gate, now: Instant) -> Result<Scan, ProbeError> {
        if !diag::loaded(&mut self.ebpf, &diag::FILES) {
            let btf = attach::kernel_btf()?;
            diag::load(&mut self.ebpf, &diag::FILES, &btf)?;
        }
        let records = diag::run(&mut self.ebpf, &diag::FILES)?;
        let mut waiting: Vec<(u32, u64)> = records
            .iter()
            .filter(|r| r.kind == diag_kind::UFFD_WAITER && r.d != 0)
            .map(|r| (r.d as u32, r.a))
            .collect();
        waiting.sort_unstable();
        waiting.dedup();
        let waiters = self.seed_waits(&waiting, crate::kernel::live::monotonic_ns())?;
        let mut files: Vec<UffdFile> = records
            .into_iter()
            .filter(|r| r.kind == diag_kind::UFFD_FILE)
            .map(|r| UffdFile {
                tgid: r.tgid,
                ctx: r.a,
                mm: r.b,
            })
            .collect();
        files.sort_unstable();
        files.dedup();
        // The prune of `UFFD_BY_MM` later in this snapshot needs the same scan.
        self.uffd_live = Some(files.iter().map(|f| f.ctx).collect());
        log::trace!("userfaultfd scan: {} descriptors", files.len());
        let mut scan = Scan {
            switched: None,
            files,
            waiters,
        };
        if !scan.files.is_empty() {
            gate.last_seen = Some(now);
            self.seed(gate, &scan.files)?;
            if gate.links.is_empty() {
                match self.attach_ioctls() {
                    Ok(links) => {
                        gate.links = links;
                        gate.failed = None;
                        scan.switched = Some(true);
                    }
                    Err(e) => {
                        let why = e.to_string();
                        if gate.failed.as_deref() != Some(why.as_str()) {
                            log::warn!("userfaultfd ioctl hooks: attaching failed ({why}); userfaultfd handlers are named only from the descriptors they hold");
                        }
                        gate.failed = Some(why);
                    }
                }
            }
        } else if !gate.links.is_empty()
            && gate
                .last_seen
                .is_none_or(|t| now.duration_since(t) >= LINGER)
        {
            self.detach_ioctls(std::mem::take(&mut gate.links))?;
            gate.seeded.clear();
            scan.switched = Some(false);
        }
        Ok(scan)
    }

    /// Writes the waits the kernel side does not know into the waiters' task state, as the
    /// scheduler hook would have when they went to sleep. The waiter sleeps, so nothing else
    /// writes its entry meanwhile.
    fn seed_waits(
        &mut self,
        waiting: &[(u32, u64)],
        now_ns: u64,
    ) -> Result<Vec<(u32, u32, u64, u64)>, ProbeError> {
        if waiting.is_empty() {
            return Ok(Vec::new());
        }
        let mut states: HashMap<_, u32, TaskState> =
            maps::typed_mut(&mut self.ebpf, map::TASK_STATE)?;
        let mut seeded = Vec::new();
        for &(tid, ctx) in waiting {
            let known = states.get(&tid, 0).ok();
            if known.is_some_and(|s| s.uffd_ctx != 0) {
                continue;
            }
            let Some((tgid, _)) = crate::kernel::live::identify(tid) else {
                continue; // gone
            };
            let mut st = known.unwrap_or_else(|| TaskState {
                tgid,
                ..TaskState::default()
            });
            st.uffd_ctx = ctx;
            st.uffd_addr = 0;
            st.uffd_since_ns = now_ns;
            // Full: the kernel side counts its own misses; this wait is then not shown.
            if states.insert(tid, st, 0).is_ok() {
                seeded.push((tid, tgid, ctx, now_ns));
            }
        }
        Ok(seeded)
    }

    /// What the ioctls would have taught: each context's mm (so that a fault on it is seen
    /// waiting, and on which context) and that userfaultfd is in use at all.
    fn seed(&mut self, gate: &mut Gate, files: &[UffdFile]) -> Result<(), ProbeError> {
        {
            let mut by_mm: HashMap<_, u64, u64> = maps::typed_mut(&mut self.ebpf, map::UFFD_BY_MM)?;
            for f in files.iter().filter(|f| f.mm != 0) {
                if gate.seeded.insert((f.mm, f.ctx)) {
                    // Full: the kernel side counts its own misses; nothing more to do here.
                    let _ = by_mm.insert(f.mm, f.ctx, 0);
                }
            }
        }
        let mut active: Array<_, u64> = maps::typed_mut(&mut self.ebpf, map::UFFD_ACTIVE)?;
        active
            .set(0, 1, 0)
            .map_err(ProbeError::map(map::UFFD_ACTIVE))
    }

    /// Attaches every gated hook, or none: a partial set is detached again.
    fn attach_ioctls(&mut self) -> Result<Vec<(&'static Program, Link)>, ProbeError> {
        let mut links = Vec::new();
        for p in uffd::ioctl_programs() {
            match attach::attach(&mut self.ebpf, p) {
                Ok(link) => links.push((p, link)),
                Err(e) => {
                    let _ = self.detach_ioctls(links);
                    return Err(e);
                }
            }
        }
        Ok(links)
    }

    fn detach_ioctls(&mut self, links: Vec<(&'static Program, Link)>) -> Result<(), ProbeError> {
        for (p, link) in links {
            attach::detach(&mut self.ebpf, p, link)?;
        }
        // An ioctl in flight when its exit hook went away leaves its CPU marked: a wake-up
        // there must not be taken for a handler's.
        let mut on_cpu: PerCpuArray<_, u32> = maps::typed_mut(&mut self.ebpf, map::IOCTL_ON_CPU)?;
        let cpus = nr_cpus().map_err(|(_, e)| ProbeError::Map {
            map: map::IOCTL_ON_CPU,
            message: e.to_string(),
        })?;
        let zeros = PerCpuValues::try_from(vec![0u32; cpus]).map_err(|e| ProbeError::Map {
            map: map::IOCTL_ON_CPU,
            message: e.to_string(),
        })?;
        on_cpu
            .set(0, zeros, 0)
            .map_err(ProbeError::map(map::IOCTL_ON_CPU))
    }
}
