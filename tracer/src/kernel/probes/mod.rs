//! Loading and attaching the eBPF programs, and access to their maps.
//!
//! `tp_btf` programs are preferred (typed arguments, no tracefs); the classic tracepoints are the
//! fallback, chosen at run time when a `tp_btf` program does not load or attach.
//!
//! Beside this module: `kernel` (BTF offsets, prototypes, tracefs layouts, kallsyms), `verifier`
//! (classifying load failures), `prototype` (tracepoint prototypes), `iter` (running the BPF
//! iterators) and `uffd_gate` (the userfaultfd ioctl hooks, attached only while a userfaultfd
//! exists).

mod detach;
pub mod iter;
pub mod kernel;
pub mod prototype;
pub mod uffd_gate;
pub mod verifier;

pub use uffd_gate::{IoctlHooks, Scan as UffdScan, UffdFile};

use std::{fmt, io, time::Duration};

use aya::{
    maps::{Array, HashMap, MapData, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::{BtfTracePoint, ProgramError, TracePoint},
    Btf, Ebpf, EbpfLoader,
};
use tracer_common::{
    config_flags,
    names::{self, global, map, program},
    Config, Counter, KernelOffsets, ProcFaults, TaskState, COUNTER_COUNT, HIST_BUCKETS, HIST_COUNT,
};

use self::kernel::{KernelBtf, KernelError, MmapLockProto, Prototypes};

/// The eBPF object built by `build.rs`, embedded so the binary is self-contained.
pub(crate) static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tracer"));

/// One traced event source with a classic-tracepoint fallback: the `tp_btf` program, the
/// classic tracepoint program, and the tracepoint both hook.
struct ProgramSpec {
    /// The `tp_btf` program for the 6.14+ prototypes; `btf_program_for` picks the variant.
    btf_program: &'static str,
    tp_program: &'static str,
    category: &'static str,
    tracepoint: &'static str,
}

const TASK_EXIT: ProgramSpec = ProgramSpec {
    btf_program: program::TASK_EXIT_BTF,
    tp_program: program::TASK_EXIT_TP,
    category: "sched",
    tracepoint: "sched_process_exit",
};
const MMAP_LOCK_START: ProgramSpec = ProgramSpec {
    btf_program: program::MMAP_LOCK_START_BTF,
    tp_program: program::MMAP_LOCK_START_TP,
    category: "mmap_lock",
    tracepoint: "mmap_lock_start_locking",
};
const MMAP_LOCK_ACQUIRE: ProgramSpec = ProgramSpec {
    btf_program: program::MMAP_LOCK_ACQUIRE_BTF,
    tp_program: program::MMAP_LOCK_ACQUIRE_TP,
    category: "mmap_lock",
    tracepoint: "mmap_lock_acquire_returned",
};
const MMAP_LOCK_RELEASE: ProgramSpec = ProgramSpec {
    btf_program: program::MMAP_LOCK_RELEASE_BTF,
    tp_program: program::MMAP_LOCK_RELEASE_TP,
    category: "mmap_lock",
    tracepoint: "mmap_lock_released",
};
const CORE_PROGRAMS: [&ProgramSpec; 4] = [
    &TASK_EXIT,
    &MMAP_LOCK_START,
    &MMAP_LOCK_ACQUIRE,
    &MMAP_LOCK_RELEASE,
];

/// The `tp_btf` program of `spec` for the running kernel's prototypes, or why there is none.
fn btf_program_for(spec: &ProgramSpec, protos: &Prototypes) -> Result<&'static str, String> {
    if spec.category == "mmap_lock" {
        let memcg = match spec.btf_program {
            program::MMAP_LOCK_START_BTF => program::MMAP_LOCK_START_BTF_MEMCG,
            program::MMAP_LOCK_ACQUIRE_BTF => program::MMAP_LOCK_ACQUIRE_BTF_MEMCG,
            _ => program::MMAP_LOCK_RELEASE_BTF_MEMCG,
        };
        return match &protos.mmap_lock {
            MmapLockProto::Current => Ok(spec.btf_program),
            MmapLockProto::MemcgPath => Ok(memcg),
            MmapLockProto::Unknown(args) => Err(format!(
                "unsupported mmap_lock tracepoint prototype ({})",
                args.join(", ")
            )),
            MmapLockProto::Missing => {
                Err("no mmap_lock tracepoints in this kernel's BTF (they appeared in 5.8)".into())
            }
        };
    }
    if spec.btf_program == program::TASK_EXIT_BTF && !protos.exit_group_dead {
        return Ok(program::TASK_EXIT_BTF_TASK_ONLY);
    }
    Ok(spec.btf_program)
}

/// Every `tp_btf` variant of `spec` (to unload whichever was loaded).
fn btf_variants(spec: &ProgramSpec) -> [&'static str; 2] {
    match spec.btf_program {
        program::MMAP_LOCK_START_BTF => [spec.btf_program, program::MMAP_LOCK_START_BTF_MEMCG],
        program::MMAP_LOCK_ACQUIRE_BTF => [spec.btf_program, program::MMAP_LOCK_ACQUIRE_BTF_MEMCG],
        program::MMAP_LOCK_RELEASE_BTF => [spec.btf_program, program::MMAP_LOCK_RELEASE_BTF_MEMCG],
        _ => [spec.btf_program, program::TASK_EXIT_BTF_TASK_ONLY],
    }
}

/// The programs with a fallback that `detail` attaches: task exit always; the `mmap_lock`
/// acquire/release hooks from `holders` on; `start_locking` in `full` only.
fn core_programs(detail: Detail) -> Vec<&'static ProgramSpec> {
    let mut out = vec![&TASK_EXIT];
    if detail >= Detail::Holders {
        out.extend([&MMAP_LOCK_ACQUIRE, &MMAP_LOCK_RELEASE]);
    }
    if detail == Detail::Full {
        out.push(&MMAP_LOCK_START);
    }
    out
}

/// Where an optional program attaches.
enum Hook {
    Btf(&'static str),
    Tracepoint(&'static str, &'static str),
}

/// Programs without a fallback: each feature works when its programs attach, and is reported
/// (never required) when they do not. `page_fault_user` is attached in full mode only.
const OPTIONAL: [(&str, Hook, Feature); 9] = [
    (
        program::CONTENTION_BEGIN_BTF,
        Hook::Btf("contention_begin"),
        Feature::LockContention,
    ),
    (
        program::CONTENTION_END_BTF,
        Hook::Btf("contention_end"),
        Feature::LockContention,
    ),
    (
        program::PAGE_FAULT_KERNEL_BTF,
        Hook::Btf("page_fault_kernel"),
        Feature::PageFaults,
    ),
    (
        program::PAGE_FAULT_USER_BTF,
        Hook::Btf("page_fault_user"),
        Feature::PerFaultCounts,
    ),
    (
        program::SCHED_SWITCH_BTF,
        Hook::Btf("sched_switch"),
        Feature::UffdWaits,
    ),
    (
        program::SCHED_WAKING_BTF,
        Hook::Btf("sched_waking"),
        Feature::UffdWaits,
    ),
    (
        program::SYS_ENTER_IOCTL_TP,
        Hook::Tracepoint("syscalls", "sys_enter_ioctl"),
        Feature::UffdIoctls,
    ),
    (
        program::SYS_EXIT_IOCTL_TP,
        Hook::Tracepoint("syscalls", "sys_exit_ioctl"),
        Feature::UffdIoctls,
    ),
    (
        program::SYS_EXIT_USERFAULTFD_TP,
        Hook::Tracepoint("syscalls", "sys_exit_userfaultfd"),
        Feature::UffdIoctls,
    ),
];

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

    /// Whether this mode attaches an optional feature at all.
    fn wants(self, f: Feature) -> bool {
        f != Feature::PerFaultCounts || self == Self::Full
    }
}

impl fmt::Display for Detail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What the optional programs give.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Feature {
    LockContention,
    PageFaults,
    PerFaultCounts,
    UffdWaits,
    UffdIoctls,
}

impl Feature {
    pub fn name(self) -> &'static str {
        match self {
            Self::LockContention => "lock contention (mutex/rwsem waits and owners)",
            Self::PageFaults => "kernel-mode page faults (faults under lock)",
            Self::PerFaultCounts => "user page faults (per-fault counters per process)",
            Self::UffdWaits => "userfaultfd waits (handle_userfault sleeps and wake-ups)",
            Self::UffdIoctls => "userfaultfd ioctls (handlers, latency, errors)",
        }
    }

    pub fn without(self) -> &'static str {
        match self {
            Self::LockContention => "no mutex/rwsem edges, and mmap_lock waits need the mmap_lock hooks (--detail holders is used instead)",
            Self::PageFaults => "no fault-under-lock evidence",
            Self::PerFaultCounts => "per-process fault counts come from /proc",
            Self::UffdWaits => "tasks stuck on a userfaultfd are not seen waiting",
            Self::UffdIoctls => "userfaultfd handlers are not named",
        }
    }
}

/// Every program name in the object, for the verifier test and `check`.
pub fn program_names() -> impl Iterator<Item = &'static str> {
    CORE_PROGRAMS
        .into_iter()
        .flat_map(|p| btf_variants(p).into_iter().chain([p.tp_program]))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .chain(OPTIONAL.iter().map(|(p, _, _)| *p))
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

/// How the programs ended up attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attached {
    Btf,
    Tracepoint,
}

impl fmt::Display for Attached {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Btf => "tp_btf",
            Self::Tracepoint => "tracepoint",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("permission denied loading eBPF programs: run faultline as root (or with CAP_BPF, CAP_PERFMON and CAP_SYS_RESOURCE)")]
    Privileges,
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error("loading the eBPF object failed: {0}")]
    Load(String),
    #[error("eBPF program {program}: {message}")]
    Program { program: String, message: String },
    /// A load or attach failure, classified (verifier rejection or other).
    #[error("{0}")]
    Failed(verifier::LoadFailure),
    #[error("no way to attach the mmap_lock probes: tp_btf failed ({btf}); classic tracepoints failed ({tracepoint})")]
    NoAttach { btf: String, tracepoint: String },
    #[error("eBPF map {0} is missing from the object (a build mismatch)")]
    MissingMap(&'static str),
    #[error("eBPF map {map}: {message}")]
    Map { map: &'static str, message: String },
}

impl ProbeError {
    /// A failed object load: missing privileges get their own one-line explanation.
    pub(crate) fn load(e: aya::EbpfError) -> Self {
        if is_eperm(&e) {
            Self::Privileges
        } else {
            Self::Load(e.to_string())
        }
    }
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
        }
    }
}

/// Loaded and attached programs.
pub struct Probes {
    ebpf: Ebpf,
    protos: Prototypes,
    attached: Attached,
    /// The detail in effect (raised from the requested one when contention is unavailable).
    detail: Detail,
    offsets: KernelOffsets,
    max_tasks: u32,
    /// Each optional feature and, when it did not attach, why.
    features: Vec<(Feature, Result<(), String>)>,
    /// The userfaultfd ioctl hooks' gate, when they attach only while a userfaultfd exists.
    gate: Option<uffd_gate::Gate>,
}

pub(crate) fn is_eperm(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<io::Error>() {
            if matches!(io.raw_os_error(), Some(libc::EPERM) | Some(libc::EACCES)) {
                return true;
            }
        }
        cur = err.source();
    }
    false
}

/// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK; later ones to the memcg. Raising it
/// is best effort: failing to is only a warning.
fn raise_memlock() {
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
            .map_max_entries(map::EVENTS, opts.ring_bytes)
            .load(EBPF_OBJECT)
            .map_err(ProbeError::load)?;

        // Without the optional programs there is no contention source: track holders instead.
        let detail = if opts.extras {
            opts.detail
        } else {
            opts.detail.max(Detail::Holders)
        };
        let mut probes = Self {
            ebpf,
            protos,
            attached: Attached::Btf,
            detail,
            offsets,
            max_tasks: opts.max_tasks,
            features: Vec::new(),
            gate: None,
        };
        probes.set_config(&config_for(opts, detail))?;
        probes.attached = probes.attach_core(&core_programs(detail), opts.attach, &layout)?;
        if opts.extras {
            let gated = opts.uffd_ioctls == IoctlHooks::WhileUffdExists;
            probes.attach_optional(syscalls.map_err(|e| e.to_string()), gated);
            let ioctls_ok = probes
                .features
                .iter()
                .any(|(f, r)| *f == Feature::UffdIoctls && r.is_ok());
            if gated && ioctls_ok {
                probes.gate = Some(uffd_gate::Gate::default());
            }
        }
        let contention = probes
            .features
            .iter()
            .any(|(f, r)| *f == Feature::LockContention && r.is_ok());
        if probes.detail == Detail::Contention && !contention {
            // The default mode learns mmap_lock waits from lock contention: without it, the
            // mmap_lock hooks are the only way to see them.
            log::warn!(
                "lock contention tracepoints unavailable: tracking mmap_lock holders instead (--detail holders), which costs more on the uncontended path"
            );
            probes.detail = Detail::Holders;
            let extra = [&MMAP_LOCK_ACQUIRE, &MMAP_LOCK_RELEASE];
            let how = match probes.attached {
                Attached::Btf => AttachMode::Btf,
                Attached::Tracepoint => AttachMode::Tracepoint,
            };
            probes.attach_core(&extra, how, &layout)?;
            probes.set_config(&config_for(opts, probes.detail))?;
        }
        Ok(probes)
    }

    /// Attaches `specs` as tp_btf, or as classic tracepoints when tp_btf fails (or as `mode`
    /// says); returns which way they went.
    fn attach_core(
        &mut self,
        specs: &[&ProgramSpec],
        mode: AttachMode,
        layout: &Result<tracer_common::TracepointLayout, Option<kernel::KernelError>>,
    ) -> Result<Attached, ProbeError> {
        let btf_result = match mode {
            AttachMode::Tracepoint => {
                Err(ProbeError::Load("not tried (--attach tracepoint)".into()))
            }
            _ => self.attach_btf(specs),
        };
        match btf_result {
            Ok(()) => Ok(Attached::Btf),
            Err(ProbeError::Privileges) => Err(ProbeError::Privileges),
            Err(btf_err) if mode != AttachMode::Btf => {
                self.unload_btf(specs);
                let tp_result = match layout {
                    Ok(_) => self.attach_tracepoints(specs),
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
            Err(e) => Err(e),
        }
    }

    /// Attaches the optional programs; a feature any of whose programs fails is reported with
    /// the first reason, and the rest of its programs are unloaded. With `gate_ioctls`, the
    /// userfaultfd ioctl programs are loaded (so the verifier speaks now) but not attached:
    /// `uffd_gate` attaches them while a userfaultfd exists.
    fn attach_optional(
        &mut self,
        syscalls: Result<tracer_common::SyscallLayout, String>,
        gate_ioctls: bool,
    ) {
        let btf = Btf::from_sys_fs().map_err(|e| format!("kernel BTF: {e}"));
        let mut failed: std::collections::BTreeMap<Feature, String> = Default::default();
        for (name, hook, feature) in &OPTIONAL {
            if failed.contains_key(feature) || !self.detail.wants(*feature) {
                continue;
            }
            let result = (|| -> Result<(), String> {
                let prog = self
                    .ebpf
                    .program_mut(name)
                    .ok_or_else(|| format!("program {name} missing"))?;
                match hook {
                    Hook::Btf(tp) => {
                        let btf = btf.as_ref().map_err(Clone::clone)?;
                        let p: &mut BtfTracePoint =
                            prog.try_into().map_err(|e: ProgramError| e.to_string())?;
                        p.load(tp, btf)
                            .map_err(|e| format!("{e}{}", verifier_log(&e)))?;
                        p.attach().map_err(|e| e.to_string())?;
                    }
                    Hook::Tracepoint(cat, tp) => {
                        syscalls.as_ref().map_err(Clone::clone)?;
                        let p: &mut TracePoint =
                            prog.try_into().map_err(|e: ProgramError| e.to_string())?;
                        p.load().map_err(|e| format!("{e}{}", verifier_log(&e)))?;
                        if !(gate_ioctls && *feature == Feature::UffdIoctls) {
                            p.attach(cat, tp).map_err(|e| e.to_string())?;
                        }
                    }
                }
                Ok(())
            })();
            if let Err(e) = result {
                log::warn!("{} unavailable: {e}; {}", feature.name(), feature.without());
                failed.insert(*feature, format!("{name}: {e}"));
            }
        }
        for (name, _, feature) in &OPTIONAL {
            if failed.contains_key(feature) {
                if let Some(prog) = self.ebpf.program_mut(name) {
                    let _ = match prog {
                        aya::programs::Program::BtfTracePoint(p) => p.unload(),
                        aya::programs::Program::TracePoint(p) => p.unload(),
                        _ => Ok(()),
                    };
                }
            }
        }
        let mut all: Vec<Feature> = OPTIONAL
            .iter()
            .map(|(_, _, f)| *f)
            .filter(|f| self.detail.wants(*f))
            .collect();
        all.dedup();
        self.features = all
            .into_iter()
            .map(|f| (f, failed.get(&f).map_or(Ok(()), |e| Err(e.clone()))))
            .collect();
    }

    /// The optional features and whether each attached.
    pub fn features(&self) -> &[(Feature, Result<(), String>)] {
        &self.features
    }

    /// A failed program load or attach, classified (`verifier::classify`): the verifier
    /// answers EACCES when it rejects a program, so a rejection with a log is reported as one,
    /// and only a refusal without a log while the process lacks the capabilities is a privilege
    /// problem.
    fn program_error(program: &str, e: ProgramError) -> ProbeError {
        let log = match &e {
            ProgramError::LoadError { verifier_log, .. } => verifier_log.to_string(),
            _ => String::new(),
        };
        match verifier::classify(program, &e, &log, verifier::Caps::current()) {
            verifier::LoadFailure::Privileges { .. } => ProbeError::Privileges,
            failure => ProbeError::Failed(failure),
        }
    }

    fn attach_btf(&mut self, specs: &[&ProgramSpec]) -> Result<(), ProbeError> {
        let btf = Btf::from_sys_fs().map_err(|e| ProbeError::Load(format!("kernel BTF: {e}")))?;
        for spec in specs {
            let name =
                btf_program_for(spec, &self.protos).map_err(|message| ProbeError::Program {
                    program: spec.btf_program.into(),
                    message,
                })?;
            let prog: &mut BtfTracePoint = self
                .ebpf
                .program_mut(name)
                .ok_or_else(|| ProbeError::Load(format!("program {name} missing")))?
                .try_into()
                .map_err(|e| Self::program_error(name, e))?;
            prog.load(spec.tracepoint, &btf)
                .map_err(|e| Self::program_error(name, e))?;
            prog.attach().map_err(|e| Self::program_error(name, e))?;
        }
        Ok(())
    }

    fn attach_tracepoints(&mut self, specs: &[&ProgramSpec]) -> Result<(), ProbeError> {
        for spec in specs {
            let prog: &mut TracePoint = self
                .ebpf
                .program_mut(spec.tp_program)
                .ok_or_else(|| ProbeError::Load(format!("program {} missing", spec.tp_program)))?
                .try_into()
                .map_err(|e| Self::program_error(spec.tp_program, e))?;
            prog.load()
                .map_err(|e| Self::program_error(spec.tp_program, e))?;
            prog.attach(spec.category, spec.tracepoint)
                .map_err(|e| Self::program_error(spec.tp_program, e))?;
        }
        Ok(())
    }

    fn unload_btf(&mut self, specs: &[&ProgramSpec]) {
        for name in specs.iter().flat_map(|s| btf_variants(s)) {
            if let Some(aya::programs::Program::BtfTracePoint(p)) = self.ebpf.program_mut(name) {
                let _ = p.unload();
            }
        }
    }

    pub fn attached(&self) -> Attached {
        self.attached
    }

    /// The detail in effect.
    pub fn detail(&self) -> Detail {
        self.detail
    }

    pub fn offsets(&self) -> KernelOffsets {
        self.offsets
    }

    /// Rewrites the runtime config; takes effect for the next event.
    pub fn set_config(&mut self, config: &Config) -> Result<(), ProbeError> {
        let map = self
            .ebpf
            .map_mut(map::CONFIG)
            .ok_or(ProbeError::MissingMap(map::CONFIG))?;
        let mut array: Array<_, Config> = Array::try_from(map).map_err(|e| ProbeError::Map {
            map: map::CONFIG,
            message: e.to_string(),
        })?;
        array.set(0, config, 0).map_err(|e| ProbeError::Map {
            map: map::CONFIG,
            message: e.to_string(),
        })
    }

    /// The event ring buffer; can be taken once.
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>, ProbeError> {
        let map = self
            .ebpf
            .take_map(map::EVENTS)
            .ok_or(ProbeError::MissingMap(map::EVENTS))?;
        RingBuf::try_from(map).map_err(|e| ProbeError::Map {
            map: map::EVENTS,
            message: e.to_string(),
        })
    }

    fn per_cpu_sums(&self, name: &'static str, len: u32) -> Result<Vec<u64>, ProbeError> {
        let map = self.ebpf.map(name).ok_or(ProbeError::MissingMap(name))?;
        let array: PerCpuArray<_, u64> =
            PerCpuArray::try_from(map).map_err(|e| ProbeError::Map {
                map: name,
                message: e.to_string(),
            })?;
        (0..len)
            .map(|i| {
                array
                    .get(&i, 0)
                    .map(|per_cpu| per_cpu.iter().sum())
                    .map_err(|e| ProbeError::Map {
                        map: name,
                        message: e.to_string(),
                    })
            })
            .collect()
    }

    /// The kernel's per-task state right now: (tid, state) of every tracked task. Entries that
    /// change or vanish while the map is walked are skipped, not errors.
    pub fn task_states(&self) -> Result<Vec<(u32, TaskState)>, ProbeError> {
        let map = self
            .ebpf
            .map(map::TASK_STATE)
            .ok_or(ProbeError::MissingMap(map::TASK_STATE))?;
        let states: HashMap<_, u32, TaskState> =
            HashMap::try_from(map).map_err(|e| ProbeError::Map {
                map: map::TASK_STATE,
                message: e.to_string(),
            })?;
        Ok(states.iter().filter_map(Result::ok).collect())
    }

    /// Deletes the per-task entries of these tids; returns how many were there.
    pub fn forget_tasks(&mut self, tids: &[u32]) -> Result<usize, ProbeError> {
        let map = self
            .ebpf
            .map_mut(map::TASK_STATE)
            .ok_or(ProbeError::MissingMap(map::TASK_STATE))?;
        let mut states: HashMap<_, u32, TaskState> =
            HashMap::try_from(map).map_err(|e| ProbeError::Map {
                map: map::TASK_STATE,
                message: e.to_string(),
            })?;
        // An entry already gone (the task's exit program raced us) is not an error.
        Ok(tids.iter().filter(|t| states.remove(t).is_ok()).count())
    }

    /// userfaultfd ioctl errors summed over CPUs, indexed `op * ERRNO_BUCKETS + errno bucket`.
    pub fn uffd_errors(&self) -> Result<Vec<u64>, ProbeError> {
        self.per_cpu_sums(map::UFFD_ERRORS, tracer_common::UFFD_ERROR_SLOTS)
    }

    /// Per-process page-fault counters summed over CPUs: (tgid, counters).
    pub fn proc_faults(&self) -> Result<Vec<(u32, ProcFaults)>, ProbeError> {
        let map = self
            .ebpf
            .map(map::PROC_FAULTS)
            .ok_or(ProbeError::MissingMap(map::PROC_FAULTS))?;
        let faults: PerCpuHashMap<_, u32, ProcFaults> =
            PerCpuHashMap::try_from(map).map_err(|e| ProbeError::Map {
                map: map::PROC_FAULTS,
                message: e.to_string(),
            })?;
        Ok(faults
            .iter()
            .filter_map(Result::ok)
            .map(|(tgid, per_cpu)| {
                let sum = per_cpu
                    .iter()
                    .fold(ProcFaults::default(), |a, c| ProcFaults {
                        user: a.user + c.user,
                        kernel: a.kernel + c.kernel,
                        under_lock: a.under_lock + c.under_lock,
                        mmap_lock: a.mmap_lock + c.mmap_lock,
                    });
                (tgid, sum)
            })
            .collect())
    }

    /// (program, run time ns, run count) for every loaded program, from the kernel's BPF
    /// statistics (zero unless statistics are enabled: see `enable_stats`). The offsets of the
    /// two fields in `struct bpf_prog_info` come from BTF like every other offset.
    pub fn program_stats(&self, btf: &KernelBtf) -> Vec<(String, u64, u64)> {
        use std::os::fd::{AsFd, AsRawFd};
        let (Some(rt), Some(rc)) = (
            btf.member_offset("bpf_prog_info", "run_time_ns"),
            btf.member_offset("bpf_prog_info", "run_cnt"),
        ) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (name, prog) in self.ebpf.programs() {
            let Ok(fd) = prog.fd() else { continue };
            // BPF_OBJ_GET_INFO_BY_FD with a buffer larger than any bpf_prog_info; the kernel
            // fills what it knows and zero-extends the rest.
            let mut info = [0u8; 512];
            #[repr(C)]
            struct InfoAttr {
                bpf_fd: u32,
                info_len: u32,
                info: u64,
            }
            let mut attr = InfoAttr {
                bpf_fd: fd.as_fd().as_raw_fd() as u32,
                info_len: info.len() as u32,
                info: info.as_mut_ptr() as u64,
            };
            const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
            // SAFETY: attr and info outlive the call; sizes are passed.
            let rc_sys = unsafe {
                libc::syscall(
                    libc::SYS_bpf,
                    BPF_OBJ_GET_INFO_BY_FD,
                    &mut attr as *mut InfoAttr,
                    std::mem::size_of::<InfoAttr>(),
                )
            };
            let field = |off: u32| {
                let off = off as usize;
                info.get(off..off + 8)
                    .and_then(|b| b.try_into().ok())
                    .map(u64::from_ne_bytes)
                    .unwrap_or(0)
            };
            if rc_sys == 0 {
                out.push((name.to_owned(), field(rt), field(rc)));
            }
        }
        out.sort();
        out
    }

    /// Capacity of the per-task state map.
    pub fn max_tasks(&self) -> u32 {
        self.max_tasks
    }

    /// Counters summed over CPUs, indexed by `Counter`.
    pub fn counters(&self) -> Result<Counters, ProbeError> {
        self.per_cpu_sums(map::COUNTERS, COUNTER_COUNT)
            .map(Counters)
    }

    /// Histograms summed over CPUs: `HIST_COUNT` rows of `HIST_BUCKETS` log2 buckets.
    pub fn histograms(&self) -> Result<Vec<[u64; HIST_BUCKETS as usize]>, ProbeError> {
        let flat = self.per_cpu_sums(map::HISTOGRAMS, HIST_COUNT * HIST_BUCKETS)?;
        Ok(flat
            .chunks_exact(HIST_BUCKETS as usize)
            .map(|c| {
                let mut row = [0u64; HIST_BUCKETS as usize];
                row.copy_from_slice(c);
                row
            })
            .collect())
    }
}

fn verifier_log(e: &ProgramError) -> String {
    match e {
        ProgramError::LoadError { verifier_log, .. } => {
            let text = verifier_log.to_string();
            let tail: Vec<&str> = text.lines().rev().take(15).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            format!("\nverifier log (last lines):\n{}", tail.join("\n"))
        }
        _ => String::new(),
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
    }
}

/// Kernel counters summed over CPUs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters(pub Vec<u64>);

impl Counters {
    pub fn get(&self, c: Counter) -> u64 {
        self.0.get(c as usize).copied().unwrap_or(0)
    }

    /// Per-counter difference since `earlier` (counters only grow).
    pub fn since(&self, earlier: &Counters) -> Counters {
        Counters(
            self.0
                .iter()
                .enumerate()
                .map(|(i, v)| v.saturating_sub(earlier.0.get(i).copied().unwrap_or(0)))
                .collect(),
        )
    }
}

/// The benchmark floor: empty programs attached on every hook the default mode uses. Held
/// attached while the value lives.
pub struct Floor {
    _ebpf: Ebpf,
}

impl Floor {
    pub fn attach() -> Result<Self, ProbeError> {
        raise_memlock();
        let mut ebpf = EbpfLoader::new()
            .load(EBPF_OBJECT)
            .map_err(ProbeError::load)?;
        let btf = Btf::from_sys_fs().map_err(|e| ProbeError::Load(format!("kernel BTF: {e}")))?;
        for (name, hook) in program::FLOOR {
            let prog = ebpf
                .program_mut(name)
                .ok_or_else(|| ProbeError::Load(format!("program {name} missing")))?;
            let err = |e: ProgramError| Probes::program_error(name, e);
            match hook.split_once('/') {
                Some((category, tp)) => {
                    let p: &mut TracePoint = prog.try_into().map_err(err)?;
                    p.load().map_err(err)?;
                    p.attach(category, tp).map_err(err)?;
                }
                None => {
                    let p: &mut BtfTracePoint = prog.try_into().map_err(err)?;
                    p.load(hook, &btf).map_err(err)?;
                    p.attach().map_err(err)?;
                }
            }
        }
        Ok(Self { _ebpf: ebpf })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The names both sides share (`tracer_common::names`) are the object's: a rename on one
    /// side fails here, not at a production start.
    #[test]
    fn every_shared_map_and_program_name_is_in_the_object() {
        let obj = aya_obj::Object::parse(EBPF_OBJECT).expect("the embedded object parses");
        for m in map::ALL {
            assert!(obj.maps.contains_key(m), "map {m} missing from the object");
        }
        let floor = program::FLOOR.iter().map(|(p, _)| *p);
        let diag = [program::DIAG_TASKS, program::DIAG_FILES];
        for p in program_names().chain(floor).chain(diag) {
            assert!(
                obj.programs.contains_key(p),
                "program {p} missing from the object"
            );
        }
        assert_eq!(
            obj.programs.len(),
            program_names().count() + program::FLOOR.len() + 2,
            "every program of the object has a shared name: {:?}",
            obj.programs.keys().collect::<Vec<_>>()
        );
    }
}
