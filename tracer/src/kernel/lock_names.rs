//! The profile's locks and frames named, as far as this kernel allows and never invented:
//! an `mmap_lock` by its process (the contention program found whose `mm` it is), a static lock
//! by its data symbol where `/proc/kallsyms` lists data (`CONFIG_KALLSYMS_ALL`), a well-known
//! one exactly (`siglock of PID`, recognised by the contention program; `rq lock`, by the one
//! function that takes it), otherwise by the contending caller, marked as a caller. Frames by their function; cgroups by their path
//! and workload; tasks and owners by their comm while they live.

use tracer_common::{stack_sampling, well_known, ProfileKey, ProfileValue};

use crate::{
    core::{
        kallsyms::KernelSymbols,
        lock_profile::{LockName, Naming, PodLabels, Profile, Sample, StackSampling, Task},
        workload::{Attribution, Workload},
    },
    kernel::{
        cgroup_ids,
        probes::families::{contention::lock_type_of, lock_profile::RawProfile},
    },
};

/// `ProfileValue::mm_tgid` of an `mmap_lock` whose process the kernel could not tell.
const MM_UNKNOWN: u32 = u32::MAX;

pub struct Namer {
    syms: KernelSymbols,
}

impl Namer {
    /// Reads `/proc/kallsyms` once (a second or two of parsing at most; a profile names
    /// thousands of frames against it).
    pub fn new() -> Self {
        let syms = std::fs::File::open("/proc/kallsyms")
            .map(|f| KernelSymbols::read(std::io::BufReader::new(f)))
            .unwrap_or_default();
        Self { syms }
    }

    pub fn symbols(&self) -> &KernelSymbols {
        &self.syms
    }

    /// The profile with every aggregate resolved. An aggregate of an unknown lock type (a
    /// newer kernel's flag) is counted as `other`.
    pub fn resolve(&self, raw: &RawProfile) -> Profile {
        let mut samples: Vec<Sample> = raw
            .entries
            .iter()
            .map(|(k, v)| self.sample(raw, k, v))
            .collect();
        // A short wait whose stack was not taken has no caller to name its lock by: it takes
        // the name the same lock got from a wait that had one (the heaviest), if any.
        let mut named: std::collections::HashMap<u64, (u64, LockName)> = Default::default();
        for s in samples
            .iter()
            .filter(|s| s.lock_name.naming != Naming::Unnamed)
        {
            let e = named
                .entry(s.lock)
                .or_insert_with(|| (0, s.lock_name.clone()));
            if s.total_ns >= e.0 {
                *e = (s.total_ns, s.lock_name.clone());
            }
        }
        for s in samples.iter_mut().filter(|s| {
            s.stack_sampling == StackSampling::Skipped && s.lock_name.naming == Naming::Unnamed
        }) {
            if let Some((_, name)) = named.get(&s.lock) {
                s.lock_name = name.clone();
            }
        }
        Profile {
            samples,
            drops: raw.drops,
        }
    }

    fn sample(&self, raw: &RawProfile, k: &ProfileKey, v: &ProfileValue) -> Sample {
        let frames = raw.frames(k);
        // From the contending caller on: the tracing trampoline and the locking functions
        // above it are the same for every wait of a type.
        let from = match self.syms.caller_index(&frames) {
            i if i < frames.len() => i,
            _ => 0,
        };
        let stack: Vec<String> = frames[from..]
            .iter()
            .map(|&ip| self.syms.function(ip))
            .collect();
        let attribution = cgroup_ids::attribute(k.cgroup);
        Sample {
            lock: k.lock,
            lock_name: self.lock_name(k, v.mm_tgid, frames.get(from).copied()),
            lock_type: lock_type_of(k.lock_type).unwrap_or(crate::core::event::LockType::Other),
            stack,
            cgroup: attribution.as_ref().map(|a| a.cgroup.clone()),
            workload: attribution.as_ref().map(|a| a.label()),
            comm: comm_of(&k.comm),
            pod: attribution.as_ref().and_then(|a| pod_labels(a)),
            task: (k.task != 0).then(|| Task {
                pid: Some(k.tgid),
                ..task(k.task)
            }),
            owner: (v.owner != 0).then(|| task(v.owner)),
            contended: v.count,
            total_ns: v.total_ns,
            max_ns: v.max_ns,
            stack_sampling: match k.stack_sampling {
                stack_sampling::SAMPLED => StackSampling::Sampled,
                stack_sampling::SKIPPED => StackSampling::Skipped,
                _ => StackSampling::Always,
            },
        }
    }

    fn lock_name(&self, k: &ProfileKey, mm_tgid: u32, caller: Option<u64>) -> LockName {
        let lock = k.lock;
        let named = |name: String, naming| LockName { name, naming };
        if k.well_known == well_known::SIGLOCK {
            let name = match comm(mm_tgid) {
                Some(c) => format!("siglock of {mm_tgid} ({c})"),
                None => format!("siglock of {mm_tgid}"),
            };
            return named(name, Naming::WellKnown);
        }
        match mm_tgid {
            0 => {}
            MM_UNKNOWN => return named("mmap_lock (process unknown)".into(), Naming::MmapLock),
            pid => {
                let name = match comm(pid) {
                    Some(c) => format!("mmap_lock of {pid} ({c})"),
                    None => format!("mmap_lock of {pid}"),
                };
                return named(name, Naming::MmapLock);
            }
        }
        if let Some(sym) = self.syms.data(lock) {
            return named(sym, Naming::Symbol);
        }
        let caller = caller.and_then(|ip| self.syms.function_name(ip));
        if let Some(name) = caller.and_then(well_known_by_taker) {
            return named(name.to_owned(), Naming::WellKnown);
        }
        match caller {
            Some(f) => named(f.to_owned(), Naming::Caller),
            None => named(format!("{lock:#x}"), Naming::Unnamed),
        }
    }
}

/// Locks named by the one function that takes them and nothing else: whichever lock such a
/// function waited on is that lock, whatever its address.
fn well_known_by_taker(function: &str) -> Option<&'static str> {
    match function {
        // kernel/sched/core.c: locks `rq->__lock` (or, with core scheduling, the core's rq
        // lock, which is an rq lock too).
        "raw_spin_rq_lock_nested" | "_raw_spin_rq_lock" | "raw_spin_rq_trylock" => Some("rq lock"),
        // Takes a task's rq lock (its caller already holds the task's pi_lock); and the two
        // rq locks of a migration, in order.
        "__task_rq_lock" | "double_rq_lock" => Some("rq lock"),
        _ => None,
    }
}

impl Default for Namer {
    fn default() -> Self {
        Self::new()
    }
}

/// A kernel comm (NUL-padded, not always UTF-8); `None` when empty.
fn comm_of(raw: &[u8; 16]) -> Option<String> {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    (end > 0).then(|| String::from_utf8_lossy(&raw[..end]).into_owned())
}

/// The pod labels of a waiter's cgroup: names where the node gave them, else the pod's uid; a
/// container by name, else by its short id (as `crictl ps` shows it).
fn pod_labels(a: &Attribution) -> Option<PodLabels> {
    let short = |id: &str| id.get(..12).unwrap_or(id).to_owned();
    match &a.workload {
        Some(Workload::Pod {
            uid,
            container_id,
            names,
            ..
        }) => Some(match names {
            Some(n) => PodLabels {
                namespace: Some(n.namespace.clone()),
                pod: n.pod.clone(),
                container: n
                    .container
                    .clone()
                    .or_else(|| container_id.as_deref().map(short)),
            },
            None => PodLabels {
                namespace: None,
                pod: uid.clone(),
                container: container_id.as_deref().map(short),
            },
        }),
        _ => None,
    }
}

fn comm(tid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{tid}/comm"))
        .ok()
        .map(|c| c.trim_end().to_owned())
}

fn task(tid: u32) -> Task {
    Task {
        tid,
        pid: None,
        comm: comm(tid),
    }
}
