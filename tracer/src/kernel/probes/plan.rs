//! What to load, decided before anything loads (as perf's `lock_contention_prepare` sets
//! autoload and map sizes first): the detail mode asked for, settled against what the kernel
//! has, gives the hooks, the optional programs and the runtime config.

use std::{fmt, time::Duration};

use tracer_common::{config_flags, names, Config};

use super::{
    families::{self, Coverage, FallbackHook, Optional},
    uffd_gate::IoctlHooks,
};

/// How much the kernel side tracks, from cheapest to dearest. `cargo xtask bench overhead`
/// measures each; docs/design.md says why the default is what it is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Detail {
    /// Slow paths only: `mmap_lock` waits from lock contention, kernel-mode faults,
    /// userfaultfd, exits. Nothing runs on an uncontended `mmap_lock` acquisition or a user
    /// fault. Read holders of a contended `mmap_lock` are inferred (and labelled so).
    #[default]
    Contention,
    /// Also hooks `mmap_lock` acquire/release: exact read-holder sets, long holds, hold-time
    /// histograms of every hold, recursive reads as they happen.
    Holders,
    /// Also hooks `start_locking` and user page faults: per-fault counters per process, faults
    /// that took `mmap_lock`, wait histograms of uncontended acquisitions. `record` uses it.
    Full,
}

impl Detail {
    pub fn name(self) -> &'static str {
        match self {
            Self::Contention => "contention",
            Self::Holders => "holders",
            Self::Full => "full",
        }
    }

    /// What this mode gives up compared with the next heavier one, and the flag that brings
    /// it back (for `check` and the agent's start-up line).
    pub fn gives_up(self) -> &'static [&'static str] {
        match self {
            Self::Contention => &[
                "mmap_lock write holds nobody waits for, and when a write hold began: a writer is seen (exactly, from the rwsem owner word) only once a waiter contends, and its hold counts from then (--detail holders)",
                "exact mmap_lock read-holder sets: read holders of a contended mmap_lock are inferred from the rwsem owner hint and kernel stacks, and alerts say so (--detail holders)",
                "hold-time histograms and long-hold events of uncontended holds (--detail holders)",
                "recursive reads that do not block (a blocking one still shows as a cycle) (--detail holders)",
                "per-fault counters per process: fault counts come from /proc min_flt/maj_flt (--detail full)",
                "wait histograms of uncontended mmap_lock acquisitions: only contended waits are timed (--detail full)",
            ],
            Self::Holders => &[
                "per-fault counters per process: fault counts come from /proc min_flt/maj_flt (--detail full)",
                "faults that took mmap_lock, and wait histograms of uncontended acquisitions (--detail full)",
            ],
            Self::Full => &[],
        }
    }

    fn config_flags(self) -> u32 {
        let mut flags = 0;
        if self >= Self::Holders {
            flags |= config_flags::MMAP_LOCK_HOOKS;
        }
        if self == Self::Full {
            flags |= config_flags::PER_FAULT;
        }
        flags
    }

    /// Whether this mode attaches what an optional program covers at all.
    fn wants(self, c: Coverage) -> bool {
        c != Coverage::PerFaultCounts || self == Self::Full
    }

    /// The hooks with a fallback this mode attaches: task exit always; the `mmap_lock`
    /// acquire/release hooks from `holders` on; `start_locking` in `full` only.
    fn hooks(self) -> Vec<&'static FallbackHook> {
        use families::{exit, mmap_lock};
        let mut out = vec![&exit::TASK_EXIT];
        if self >= Self::Holders {
            out.extend([&mmap_lock::ACQUIRE, &mmap_lock::RELEASE]);
        }
        if self == Self::Full {
            out.push(&mmap_lock::START);
        }
        out
    }
}

impl fmt::Display for Detail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AttachMode {
    /// BTF tracepoints, falling back to classic tracepoints.
    Auto,
    /// BTF tracepoints only.
    Btf,
    /// Classic tracepoints only (needs tracefs).
    Tracepoint,
}

/// What the loader needs to know.
#[derive(Clone, Debug)]
pub struct ProbeOptions {
    pub attach: AttachMode,
    /// Stream every event (record mode).
    pub record_all: bool,
    pub wait_threshold: Duration,
    pub hold_threshold: Duration,
    /// Capacity of the per-task state map.
    pub max_tasks: u32,
    /// How much to track (what is hooked).
    pub detail: Detail,
    /// Attach the optional programs (contention, faults, userfaultfd). Without them the
    /// `mmap_lock` hooks are the only source, so `detail` is raised to `holders` at least.
    pub extras: bool,
    /// Size of the ring buffer in bytes (a power of two, at least a page).
    pub ring_bytes: u32,
    /// When the userfaultfd ioctl hooks (syscall tracepoints) are attached. Gating needs
    /// someone to call `Probes::scan_uffds` periodically: the agent does, at each snapshot.
    pub uffd_ioctls: IoctlHooks,
    /// The in-kernel lock-contention profile.
    pub profile: ProfileOptions,
    /// User-space lock waits (futex sleeps, on the scheduler hooks).
    pub user_locks: bool,
}

/// What the in-kernel lock-contention profile keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProfileOptions {
    /// Off: contended waits take no stack and are not aggregated.
    pub enabled: bool,
    /// Key aggregates by waiting task too (the one-shot CLI's `-t`; too many entries for an
    /// always-on agent).
    pub by_task: bool,
    /// Capacity of the aggregate table (`LOCK_PROFILE`).
    pub entries: u32,
    /// Capacity of the stack table (`LOCK_STACKS`).
    pub stacks: u32,
    /// Take the stack of 1 in this many short contended waits (1: every one).
    pub short_every: u32,
}

impl Default for ProfileOptions {
    fn default() -> Self {
        Self {
            enabled: true,
            by_task: false,
            entries: default_profile_entries(),
            stacks: names::LOCK_STACKS_CAPACITY,
            short_every: tracer_common::PROFILE_SHORT_EVERY,
        }
    }
}

impl Default for ProbeOptions {
    fn default() -> Self {
        Self {
            attach: AttachMode::Auto,
            record_all: false,
            wait_threshold: Duration::from_millis(1),
            hold_threshold: Duration::from_millis(100),
            max_tasks: names::TASK_STATE_CAPACITY,
            detail: Detail::default(),
            extras: true,
            ring_bytes: names::EVENTS_BYTES,
            // Without a caller of `scan_uffds`, gated hooks would never attach.
            uffd_ioctls: IoctlHooks::Always,
            profile: ProfileOptions::default(),
            user_locks: true,
        }
    }
}

/// The plan: the detail in effect and what it loads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    detail: Detail,
    extras: bool,
    gate_ioctls: bool,
}

impl Plan {
    /// The plan for `opts` on a kernel that has (or lacks) the lock contention tracepoints
    /// (`families::contention::BTF_TYPE` in its BTF).
    pub fn new(opts: &ProbeOptions, kernel_has_contention: bool) -> Self {
        let mut plan = Self {
            detail: opts.detail,
            extras: opts.extras,
            gate_ioctls: opts.uffd_ioctls == IoctlHooks::WhileUffdExists,
        };
        if !opts.extras {
            // Without the optional programs there is no contention source: track holders.
            plan.detail = plan.detail.max(Detail::Holders);
        } else if !kernel_has_contention {
            plan.without_contention();
        }
        plan
    }

    /// The default mode learns `mmap_lock` waits from lock contention: without it, the
    /// `mmap_lock` hooks are the only way to see them. Returns whether the plan changed (and
    /// so the config must be written again).
    pub fn without_contention(&mut self) -> bool {
        if self.detail != Detail::Contention {
            return false;
        }
        log::warn!(
            "lock contention tracepoints unavailable: tracking mmap_lock holders instead (--detail holders), which costs more on the uncontended path"
        );
        self.detail = Detail::Holders;
        true
    }

    pub fn detail(&self) -> Detail {
        self.detail
    }

    /// The hooks with a fallback, in attach order.
    pub fn hooks(&self) -> Vec<&'static FallbackHook> {
        self.detail.hooks()
    }

    /// The optional programs to load, in order.
    pub fn optional(&self) -> impl Iterator<Item = &'static Optional> + '_ {
        families::optional().filter(move |o| self.extras && self.detail.wants(o.coverage))
    }

    /// Whether an optional program attaches at start, or is only loaded (the verifier speaks
    /// now) for `uffd_gate` to attach while a userfaultfd exists.
    pub fn attaches_at_start(&self, o: &Optional) -> bool {
        !(self.gate_ioctls && o.coverage == Coverage::UffdIoctls)
    }

    /// Whether the userfaultfd ioctl hooks are gated.
    pub fn gates_ioctls(&self) -> bool {
        self.gate_ioctls
    }

    /// The runtime config for these options under this plan, with this process filtered out.
    pub fn config(&self, opts: &ProbeOptions) -> Config {
        config_for(opts, self.detail)
    }
}

/// The runtime config for these options at `detail`, with this process filtered out.
pub fn config_for(opts: &ProbeOptions, detail: Detail) -> Config {
    Config {
        self_tgid: std::process::id(),
        flags: detail.config_flags()
            | if opts.record_all {
                config_flags::RECORD_ALL
            } else {
                0
            }
            | if opts.profile.enabled {
                0
            } else {
                config_flags::PROFILE_OFF
            }
            | if opts.profile.by_task {
                config_flags::PROFILE_BY_TASK
            } else {
                0
            }
            | if opts.user_locks {
                0
            } else {
                config_flags::FUTEX_OFF
            },
        wait_threshold_ns: opts
            .wait_threshold
            .as_nanos()
            .try_into()
            .unwrap_or(u64::MAX),
        hold_threshold_ns: opts
            .hold_threshold
            .as_nanos()
            .try_into()
            .unwrap_or(u64::MAX),
        profile_short_every: opts.profile.short_every,
        _reserved: 0,
    }
}

/// The aggregate table's default capacity on this host: smaller with many CPUs, since each key
/// has a value per possible CPU (`names::lock_profile_default_entries`).
pub fn default_profile_entries() -> u32 {
    let cpus = aya::util::nr_cpus().map_or(1, |n| u32::try_from(n).unwrap_or(u32::MAX));
    names::lock_profile_default_entries(cpus)
}

/// The user-lock profile table's capacity on this host (`names::futex_profile_entries`).
pub fn futex_profile_entries() -> u32 {
    let cpus = aya::util::nr_cpus().map_or(1, |n| u32::try_from(n).unwrap_or(u32::MAX));
    names::futex_profile_entries(cpus)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(detail: Detail, extras: bool) -> ProbeOptions {
        ProbeOptions {
            detail,
            extras,
            ..Default::default()
        }
    }

    fn hook_names(plan: &Plan) -> Vec<&'static str> {
        plan.hooks().iter().map(|h| h.tracepoint).collect()
    }

    #[test]
    fn the_default_mode_hooks_no_mmap_lock_tracepoint_when_the_kernel_has_contention() {
        let plan = Plan::new(&opts(Detail::Contention, true), true);
        assert_eq!(plan.detail(), Detail::Contention);
        assert_eq!(hook_names(&plan), ["sched_process_exit"]);
        assert!(plan
            .optional()
            .all(|o| o.coverage != Coverage::PerFaultCounts));
        assert_eq!(plan.config(&ProbeOptions::default()).flags, 0);
    }

    #[test]
    fn without_contention_the_plan_tracks_holders_before_anything_loads() {
        for plan in [
            Plan::new(&opts(Detail::Contention, true), false),
            Plan::new(&opts(Detail::Contention, false), true),
        ] {
            assert_eq!(plan.detail(), Detail::Holders, "{plan:?}");
            assert_eq!(
                hook_names(&plan),
                [
                    "sched_process_exit",
                    "mmap_lock_acquire_returned",
                    "mmap_lock_released"
                ]
            );
            assert_ne!(
                plan.config(&ProbeOptions::default()).flags & config_flags::MMAP_LOCK_HOOKS,
                0
            );
        }
        assert_eq!(
            Plan::new(&opts(Detail::Contention, false), true)
                .optional()
                .count(),
            0,
            "no extras, no optional programs"
        );
    }

    #[test]
    fn losing_contention_later_raises_only_the_default_mode() {
        let mut plan = Plan::new(&opts(Detail::Contention, true), true);
        assert!(plan.without_contention());
        assert_eq!(plan.detail(), Detail::Holders);
        assert!(!plan.without_contention(), "already raised");
        let mut full = Plan::new(&opts(Detail::Full, true), true);
        assert!(!full.without_contention());
        assert_eq!(full.detail(), Detail::Full);
        assert_eq!(full.hooks().len(), 4);
        assert!(full
            .optional()
            .any(|o| o.coverage == Coverage::PerFaultCounts));
    }

    #[test]
    fn gated_ioctl_hooks_load_but_do_not_attach_at_start() {
        let gated = Plan::new(
            &ProbeOptions {
                uffd_ioctls: IoctlHooks::WhileUffdExists,
                ..Default::default()
            },
            true,
        );
        let ioctls: Vec<_> = gated
            .optional()
            .filter(|o| o.coverage == Coverage::UffdIoctls)
            .collect();
        assert_eq!(ioctls.len(), 3);
        assert!(ioctls.iter().all(|o| !gated.attaches_at_start(o)));
        let always = Plan::new(&ProbeOptions::default(), true);
        assert!(always.optional().all(|o| always.attaches_at_start(o)));
    }
}
