//! Loading: the plan first, then the object, then each program attached once.
//!
//! `tp_btf` programs are preferred (typed arguments, no tracefs); for the hooks with a fallback
//! the classic tracepoints are chosen at run time when a `tp_btf` program does not load or
//! attach. The optional programs attach before those hooks, so that losing lock contention
//! settles the plan (the `mmap_lock` hooks take over) before the hooks it decides attach.

use std::{collections::BTreeMap, io};

use aya::{Btf, EbpfLoader};
use tracer_common::{
    names::{global, map},
    SyscallLayout, TracepointLayout,
};

use super::{
    attach::{self, Program},
    families::{contention, Coverage, FallbackHook},
    kernel::{self, KernelBtf, KernelError, Prototypes},
    plan::{AttachMode, Plan, ProbeOptions},
    uffd_gate, Attached, ProbeError, Probes, EBPF_OBJECT,
};

/// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK; later ones to the memcg. Raising it
/// is best effort: failing to is only a warning.
pub(super) fn raise_memlock() {
    let lim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: a plain setrlimit call with a valid struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &lim) } != 0 {
        log::debug!(
            "cannot raise RLIMIT_MEMLOCK ({}); fine on kernels >= 5.11, which account BPF memory to the memcg",
            io::Error::last_os_error()
        );
    }
}

impl Probes {
    /// Loads the object, writes the config and attaches every program `opts.detail` asks for.
    pub fn load(opts: &ProbeOptions) -> Result<Self, ProbeError> {
        raise_memlock();
        let kbtf = KernelBtf::load()?;
        let mut plan = Plan::new(opts, kbtf.has_type(contention::BTF_TYPE));
        let offsets = kbtf.offsets();
        let protos = kbtf.prototypes();
        // Only the classic fallback needs tracefs; without it that fallback is simply unavailable.
        let layout = match opts.attach {
            AttachMode::Btf => Err(None),
            _ => kernel::tracefs_root()
                .and_then(|root| kernel::mmap_lock_layout(&root))
                .map_err(Some),
        };
        let layout_value = layout.as_ref().copied().unwrap_or_default();
        let syscalls = kernel::tracefs_root().and_then(|root| kernel::syscall_layout(&root));
        let syscall_value = syscalls.as_ref().copied().unwrap_or_default();

        let diag_offsets = kbtf.diag_offsets();
        let ebpf = EbpfLoader::new()
            .override_global(global::OFFSETS, &offsets, true)
            .override_global(global::TP_LAYOUT, &layout_value, true)
            .override_global(global::SYSCALL_LAYOUT, &syscall_value, true)
            // The userfaultfd scan (`uffd_gate`) runs diagnose's file iterator.
            .override_global(global::DIAG_OFFSETS, &diag_offsets, true)
            .map_max_entries(map::TASK_STATE, opts.max_tasks)
            .map_max_entries(map::FUTEX_WAITS, opts.max_tasks)
            .map_max_entries(map::FUTEX_PROFILE, super::plan::futex_profile_entries())
            .map_max_entries(map::EVENTS, opts.ring_bytes)
            // With the profile off its tables stay empty: one entry each, not megabytes.
            .map_max_entries(
                map::LOCK_PROFILE,
                profile_capacity(opts, opts.profile.entries),
            )
            .map_max_entries(
                map::LOCK_STACKS,
                profile_capacity(opts, opts.profile.stacks),
            )
            .load(EBPF_OBJECT)
            .map_err(ProbeError::load)?;
        let btf = attach::kernel_btf()?;

        let mut probes = Self {
            ebpf,
            attached: Attached::Btf,
            detail: plan.detail(),
            offsets,
            max_tasks: opts.max_tasks,
            features: Vec::new(),
            gate: None,
            uffd_scan_works: diag_offsets.uffd_poll != 0 && diag_offsets.uffd_ctx_mm != 0,
            uffd_live: None,
            uffd_suspects: Default::default(),
            prune_failed: None,
        };
        probes.set_config(&plan.config(opts))?;
        probes.attach_optional(&plan, &btf, syscalls.map_err(|e| e.to_string()));
        if !probes.covers(Coverage::LockContention) && plan.without_contention() {
            // The flag this changes (`MMAP_LOCK_HOOKS`) is read only by the contention
            // programs, which are not attached, and the hooks it adds are not attached yet.
            probes.set_config(&plan.config(opts))?;
        }
        probes.detail = plan.detail();
        probes.attached =
            probes.attach_hooks(&plan.hooks(), opts.attach, &layout, &protos, &btf)?;
        if plan.gates_ioctls() && probes.covers(Coverage::UffdIoctls) {
            probes.gate = Some(uffd_gate::Gate::default());
        }
        Ok(probes)
    }

    /// Whether what `c` covers attached (or, for gated ioctls, loaded).
    pub(super) fn covers(&self, c: Coverage) -> bool {
        self.features.iter().any(|(f, r)| *f == c && r.is_ok())
    }

    /// Attaches `hooks` as tp_btf, or as classic tracepoints when tp_btf fails (or as `mode`
    /// says); returns which way they went.
    fn attach_hooks(
        &mut self,
        hooks: &[&FallbackHook],
        mode: AttachMode,
        layout: &Result<TracepointLayout, Option<KernelError>>,
        protos: &Prototypes,
        btf: &Btf,
    ) -> Result<Attached, ProbeError> {
        let btf_result = match mode {
            AttachMode::Tracepoint => {
                Err(ProbeError::Load("not tried (--attach tracepoint)".into()))
            }
            _ => hooks.iter().try_for_each(|h| {
                let p = h
                    .btf_program(protos)
                    .map_err(|message| ProbeError::Program {
                        program: h.btf[0].into(),
                        message,
                    })?;
                attach::load_and_attach(&mut self.ebpf, &p, btf).map(drop)
            }),
        };
        let btf_err = match btf_result {
            Ok(()) => return Ok(Attached::Btf),
            Err(ProbeError::Privileges) => return Err(ProbeError::Privileges),
            Err(e) if mode == AttachMode::Btf => return Err(e),
            Err(e) => e,
        };
        for name in hooks.iter().flat_map(|h| h.btf) {
            attach::unload(&mut self.ebpf, name);
        }
        let tp_result = match layout {
            Ok(_) => hooks.iter().try_for_each(|h| {
                attach::load_and_attach(&mut self.ebpf, &h.tp_program(), btf).map(drop)
            }),
            Err(e) => Err(ProbeError::Load(
                e.as_ref()
                    .map(|e| e.to_string())
                    .unwrap_or_else(|| "not tried".into()),
            )),
        };
        match tp_result {
            Ok(()) => {
                if mode == AttachMode::Auto {
                    log::warn!(
                        "tp_btf programs unavailable ({btf_err}); using classic tracepoints"
                    );
                }
                Ok(Attached::Tracepoint)
            }
            Err(ProbeError::Privileges) => Err(ProbeError::Privileges),
            Err(tp_err) => Err(ProbeError::NoAttach {
                btf: btf_err.to_string(),
                tracepoint: tp_err.to_string(),
            }),
        }
    }

    /// Loads and attaches the plan's optional programs; what a program covers fails with the
    /// first reason any of its programs gives, and the rest of them are unloaded. Gated
    /// userfaultfd ioctl programs are loaded (so the verifier speaks now) but not attached.
    fn attach_optional(&mut self, plan: &Plan, btf: &Btf, syscalls: Result<SyscallLayout, String>) {
        let mut failed: BTreeMap<Coverage, String> = BTreeMap::new();
        let mut tried: Vec<(Coverage, &'static Program)> = Vec::new();
        for o in plan.optional() {
            tried.push((o.coverage, &o.program));
            if failed.contains_key(&o.coverage) {
                continue;
            }
            let result = match (&o.program.at, &syscalls) {
                (attach::AttachPoint::Tracepoint { .. }, Err(e)) => Err(ProbeError::Program {
                    program: o.program.name.into(),
                    message: e.clone(),
                }),
                _ if plan.attaches_at_start(o) => {
                    attach::load_and_attach(&mut self.ebpf, &o.program, btf).map(drop)
                }
                _ => attach::load(&mut self.ebpf, &o.program, btf),
            }
            .map_err(|e| e.to_string());
            if let Err(e) = result {
                log::warn!(
                    "{} unavailable: {e}; {}",
                    o.coverage.name(),
                    o.coverage.without()
                );
                failed.insert(o.coverage, e);
            }
        }
        for (c, p) in &tried {
            if failed.contains_key(c) {
                attach::unload(&mut self.ebpf, p.name);
            }
        }
        let mut all: Vec<Coverage> = tried.iter().map(|(c, _)| *c).collect();
        all.dedup();
        self.features = all
            .into_iter()
            .map(|c| (c, failed.get(&c).map_or(Ok(()), |e| Err(e.clone()))))
            .collect();
    }
}

/// A profile table's capacity: as configured, or 1 with the profile off.
fn profile_capacity(opts: &ProbeOptions, configured: u32) -> u32 {
    if opts.profile.enabled {
        configured
    } else {
        1
    }
}
