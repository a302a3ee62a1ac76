//! Loading and attaching the eBPF programs, and access to their maps.
//!
//! `tp_btf` programs are preferred (typed arguments, no tracefs); the classic tracepoints are the
//! fallback, chosen at run time when a `tp_btf` program does not load or attach.

pub mod kernel;
pub mod prototype;
pub mod verifier;

use std::{fmt, io, time::Duration};

use aya::{
    maps::{Array, HashMap, MapData, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::{BtfTracePoint, ProgramError, TracePoint},
    Btf, Ebpf, EbpfLoader,
};
use tracer_common::{
    config_flags, Config, Counter, KernelOffsets, ProcFaults, TaskState, COUNTER_COUNT,
    HIST_BUCKETS, HIST_COUNT,
};

use self::kernel::{KernelBtf, KernelError};

/// The eBPF object built by `build.rs`, embedded so the binary is self-contained.
pub(crate) static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tracer"));

/// One traced event source: the `tp_btf` program, the classic tracepoint program, and the
/// tracepoint both hook.
struct ProgramSpec {
    btf_program: &'static str,
    tp_program: &'static str,
    category: &'static str,
    tracepoint: &'static str,
}

const PROGRAMS: [ProgramSpec; 4] = [
    ProgramSpec {
        btf_program: "mmap_lock_start_btf",
        tp_program: "mmap_lock_start_tp",
        category: "mmap_lock",
        tracepoint: "mmap_lock_start_locking",
    },
    ProgramSpec {
        btf_program: "mmap_lock_acquire_btf",
        tp_program: "mmap_lock_acquire_tp",
        category: "mmap_lock",
        tracepoint: "mmap_lock_acquire_returned",
    },
    ProgramSpec {
        btf_program: "mmap_lock_release_btf",
        tp_program: "mmap_lock_release_tp",
        category: "mmap_lock",
        tracepoint: "mmap_lock_released",
    },
    ProgramSpec {
        btf_program: "task_exit_btf",
        tp_program: "task_exit_tp",
        category: "sched",
        tracepoint: "sched_process_exit",
    },
];

/// Where an optional program attaches.
enum Hook {
    Btf(&'static str),
    Tracepoint(&'static str, &'static str),
}

/// Programs beyond `mmap_lock`: each feature works when its programs attach, and is reported
/// (never required) when they do not.
const OPTIONAL: [(&str, Hook, Feature); 9] = [
    (
        "contention_begin_btf",
        Hook::Btf("contention_begin"),
        Feature::LockContention,
    ),
    (
        "contention_end_btf",
        Hook::Btf("contention_end"),
        Feature::LockContention,
    ),
    (
        "page_fault_user_btf",
        Hook::Btf("page_fault_user"),
        Feature::PageFaults,
    ),
    (
        "page_fault_kernel_btf",
        Hook::Btf("page_fault_kernel"),
        Feature::PageFaults,
    ),
    (
        "sched_switch_btf",
        Hook::Btf("sched_switch"),
        Feature::UffdWaits,
    ),
    (
        "sched_waking_btf",
        Hook::Btf("sched_waking"),
        Feature::UffdWaits,
    ),
    (
        "sys_enter_ioctl_tp",
        Hook::Tracepoint("syscalls", "sys_enter_ioctl"),
        Feature::UffdIoctls,
    ),
    (
        "sys_exit_ioctl_tp",
        Hook::Tracepoint("syscalls", "sys_exit_ioctl"),
        Feature::UffdIoctls,
    ),
    (
        "sys_exit_userfaultfd_tp",
        Hook::Tracepoint("syscalls", "sys_exit_userfaultfd"),
        Feature::UffdIoctls,
    ),
];

/// What the optional programs give.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Feature {
    LockContention,
    PageFaults,
    UffdWaits,
    UffdIoctls,
}

impl Feature {
    pub fn name(self) -> &'static str {
        match self {
            Self::LockContention => "lock contention (mutex/rwsem waits and owners)",
            Self::PageFaults => "page faults (per-process counts, faults under lock)",
            Self::UffdWaits => "userfaultfd waits (handle_userfault sleeps and wake-ups)",
            Self::UffdIoctls => "userfaultfd ioctls (handlers, latency, errors)",
        }
    }

    pub fn without(self) -> &'static str {
        match self {
            Self::LockContention => "no mutex/rwsem edges: the graph covers mmap_lock only",
            Self::PageFaults => "no fault counts and no fault-under-lock evidence",
            Self::UffdWaits => "tasks stuck on a userfaultfd are not seen waiting",
            Self::UffdIoctls => "userfaultfd handlers are not named",
        }
    }
}

/// Every program name in the object, for the verifier test and `check`.
pub fn program_names() -> impl Iterator<Item = &'static str> {
    PROGRAMS
        .iter()
        .flat_map(|p| [p.btf_program, p.tp_program])
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
    /// Attach the programs beyond mmap_lock (contention, faults, userfaultfd).
    pub extras: bool,
}

impl Default for ProbeOptions {
    fn default() -> Self {
        Self {
            attach: AttachMode::Auto,
            record_all: false,
            wait_threshold: Duration::from_millis(1),
            hold_threshold: Duration::from_millis(100),
            max_tasks: 32768,
            extras: true,
        }
    }
}

/// Loaded and attached programs.
pub struct Probes {
    ebpf: Ebpf,
    attached: Attached,
    offsets: KernelOffsets,
    max_tasks: u32,
    /// Each optional feature and, when it did not attach, why.
    features: Vec<(Feature, Result<(), String>)>,
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
    /// Loads the object, writes the config and attaches every program.
    pub fn load(opts: &ProbeOptions) -> Result<Self, ProbeError> {
        raise_memlock();
        let kbtf = KernelBtf::load()?;
        let offsets = kbtf.offsets();
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

        let ebpf = EbpfLoader::new()
            .override_global("OFFSETS", &offsets, true)
            .override_global("TP_LAYOUT", &layout_value, true)
            .override_global("SYSCALL_LAYOUT", &syscall_value, true)
            .map_max_entries("TASK_STATE", opts.max_tasks)
            .load(EBPF_OBJECT)
            .map_err(ProbeError::load)?;

        let mut probes = Self {
            ebpf,
            attached: Attached::Btf,
            offsets,
            max_tasks: opts.max_tasks,
            features: Vec::new(),
        };
        probes.set_config(&config_for(opts))?;

        let btf_result = match opts.attach {
            AttachMode::Tracepoint => {
                Err(ProbeError::Load("not tried (--attach tracepoint)".into()))
            }
            _ => probes.attach_btf(),
        };
        let probes = match btf_result {
            Ok(()) => Ok(probes),
            Err(ProbeError::Privileges) => Err(ProbeError::Privileges),
            Err(btf_err) if opts.attach != AttachMode::Btf => {
                probes.unload_all(|p| p.btf_program);
                let tp_result = match layout {
                    Ok(_) => probes.attach_tracepoints(),
                    Err(e) => Err(ProbeError::Load(
                        e.map(|e| e.to_string())
                            .unwrap_or_else(|| "not tried".into()),
                    )),
                };
                match tp_result {
                    Ok(()) => {
                        if opts.attach == AttachMode::Auto {
                            log::warn!(
                                "tp_btf programs unavailable ({btf_err}); using classic tracepoints"
                            );
                        }
                        probes.attached = Attached::Tracepoint;
                        Ok(probes)
                    }
                    Err(ProbeError::Privileges) => Err(ProbeError::Privileges),
                    Err(tp_err) => Err(ProbeError::NoAttach {
                        btf: btf_err.to_string(),
                        tracepoint: tp_err.to_string(),
                    }),
                }
            }
            Err(e) => Err(e),
        };
        let mut probes = probes?;
        if opts.extras {
            probes.attach_optional(syscalls.map_err(|e| e.to_string()));
        }
        Ok(probes)
    }

    /// Attaches the optional programs; a feature any of whose programs fails is reported with
    /// the first reason, and the rest of its programs are unloaded.
    fn attach_optional(&mut self, syscalls: Result<tracer_common::SyscallLayout, String>) {
        let btf = Btf::from_sys_fs().map_err(|e| format!("kernel BTF: {e}"));
        let mut failed: std::collections::BTreeMap<Feature, String> = Default::default();
        for (name, hook, feature) in &OPTIONAL {
            if failed.contains_key(feature) {
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
                        p.attach(cat, tp).map_err(|e| e.to_string())?;
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
        let mut all: Vec<Feature> = OPTIONAL.iter().map(|(_, _, f)| *f).collect();
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

    fn program_error(program: &str, e: ProgramError) -> ProbeError {
        if is_eperm(&e) {
            ProbeError::Privileges
        } else {
            ProbeError::Program {
                program: program.into(),
                message: format!("{e}{}", verifier_log(&e)),
            }
        }
    }

    fn attach_btf(&mut self) -> Result<(), ProbeError> {
        let btf = Btf::from_sys_fs().map_err(|e| ProbeError::Load(format!("kernel BTF: {e}")))?;
        for spec in &PROGRAMS {
            let prog: &mut BtfTracePoint = self
                .ebpf
                .program_mut(spec.btf_program)
                .ok_or_else(|| ProbeError::Load(format!("program {} missing", spec.btf_program)))?
                .try_into()
                .map_err(|e| Self::program_error(spec.btf_program, e))?;
            prog.load(spec.tracepoint, &btf)
                .map_err(|e| Self::program_error(spec.btf_program, e))?;
            prog.attach()
                .map_err(|e| Self::program_error(spec.btf_program, e))?;
        }
        Ok(())
    }

    fn attach_tracepoints(&mut self) -> Result<(), ProbeError> {
        for spec in &PROGRAMS {
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

    fn unload_all(&mut self, name: impl Fn(&ProgramSpec) -> &'static str) {
        for spec in &PROGRAMS {
            if let Some(prog) = self.ebpf.program_mut(name(spec)) {
                let _ = match prog {
                    aya::programs::Program::BtfTracePoint(p) => p.unload(),
                    aya::programs::Program::TracePoint(p) => p.unload(),
                    _ => Ok(()),
                };
            }
        }
    }

    pub fn attached(&self) -> Attached {
        self.attached
    }

    pub fn offsets(&self) -> KernelOffsets {
        self.offsets
    }

    /// Rewrites the runtime config; takes effect for the next event.
    pub fn set_config(&mut self, config: &Config) -> Result<(), ProbeError> {
        let map = self
            .ebpf
            .map_mut("CONFIG")
            .ok_or(ProbeError::MissingMap("CONFIG"))?;
        let mut array: Array<_, Config> = Array::try_from(map).map_err(|e| ProbeError::Map {
            map: "CONFIG",
            message: e.to_string(),
        })?;
        array.set(0, config, 0).map_err(|e| ProbeError::Map {
            map: "CONFIG",
            message: e.to_string(),
        })
    }

    /// The event ring buffer; can be taken once.
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>, ProbeError> {
        let map = self
            .ebpf
            .take_map("EVENTS")
            .ok_or(ProbeError::MissingMap("EVENTS"))?;
        RingBuf::try_from(map).map_err(|e| ProbeError::Map {
            map: "EVENTS",
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
            .map("TASK_STATE")
            .ok_or(ProbeError::MissingMap("TASK_STATE"))?;
        let states: HashMap<_, u32, TaskState> =
            HashMap::try_from(map).map_err(|e| ProbeError::Map {
                map: "TASK_STATE",
                message: e.to_string(),
            })?;
        Ok(states.iter().filter_map(Result::ok).collect())
    }

    /// userfaultfd ioctl errors summed over CPUs, indexed `op * ERRNO_BUCKETS + errno bucket`.
    pub fn uffd_errors(&self) -> Result<Vec<u64>, ProbeError> {
        self.per_cpu_sums("UFFD_ERRORS", tracer_common::UFFD_ERROR_SLOTS)
    }

    /// Per-process page-fault counters summed over CPUs: (tgid, counters).
    pub fn proc_faults(&self) -> Result<Vec<(u32, ProcFaults)>, ProbeError> {
        let map = self
            .ebpf
            .map("PROC_FAULTS")
            .ok_or(ProbeError::MissingMap("PROC_FAULTS"))?;
        let faults: PerCpuHashMap<_, u32, ProcFaults> =
            PerCpuHashMap::try_from(map).map_err(|e| ProbeError::Map {
                map: "PROC_FAULTS",
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
        self.per_cpu_sums("COUNTERS", COUNTER_COUNT).map(Counters)
    }

    /// Histograms summed over CPUs: `HIST_COUNT` rows of `HIST_BUCKETS` log2 buckets.
    pub fn histograms(&self) -> Result<Vec<[u64; HIST_BUCKETS as usize]>, ProbeError> {
        let flat = self.per_cpu_sums("HISTOGRAMS", HIST_COUNT * HIST_BUCKETS)?;
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

/// The runtime config for these options, with this process filtered out.
pub fn config_for(opts: &ProbeOptions) -> Config {
    Config {
        self_tgid: std::process::id(),
        flags: if opts.record_all {
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
