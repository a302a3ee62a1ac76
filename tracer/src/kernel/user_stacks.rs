//! The user-lock profile named: each user stack symbolised with blazesym (the libbpf project's
//! symboliser: ELF symbols, DWARF file and line, demangling) and normalised to file offsets
//! with its module's build id (what Parca or Pyroscope need to symbolise remotely); kernel
//! frames by kallsyms; each futex by its symbol (`user_symbols`).
//!
//! A process's stacks can only be symbolised while it lives (its mappings say which file an
//! address is in): the agent primes new stacks at its snapshots, and a stack first met after
//! its process exited shows `[unknown]` frames. Results are cached by (process, stack). A
//! reading never waits for the naming: what is not named yet shows `[unknown]` until the next.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use blazesym::{
    normalize::{Normalizer, UserMeta},
    symbolize::{
        source::{Process, Source},
        Input, Symbolized, Symbolizer,
    },
    Pid,
};

use crate::{
    core::{
        kallsyms::KernelSymbols,
        user_lock::futex_op,
        user_profile::{UserFrame, UserKey, UserProfile, UserSample},
    },
    kernel::{live::proc_exists, probes::families::futex::RawUserProfile, procfs, user_symbols},
};

/// Whether frames get their file and line from debug information (DWARF). Off in the agent:
/// parsing the debug information of large binaries doubled its memory under process churn
/// (the soak: 95 to 189 MiB); its frames have function names, and their module, build id and
/// file offset let Parca or Pyroscope add lines remotely. On for the one-shot `faultline
/// contention --user`.
static SOURCE_LINES: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Names frames with their file and line from now on (a one-shot reader).
pub fn with_source_lines() {
    SOURCE_LINES.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// Cached stacks and lock names at most; past it the caches start again (a stack's frames
/// with their paths take a few KiB).
const CACHE_ENTRIES: usize = 4096;

/// What names the stacks. A symboliser cannot move between threads, so it lives on the
/// `user_mem` worker (the only thread that names stacks), where it keeps what it parsed of
/// each file (DWARF is slow to parse, and the same files come back); it starts afresh every
/// `TOOLS_TTL`, so that memory stays bounded.
struct Tools {
    symbolizer: Symbolizer,
    normalizer: Normalizer,
    born: std::time::Instant,
    /// Processes symbolised with these tools: blazesym keeps what it read of each (its maps,
    /// its files by their per-process paths), so under process churn the tools are renewed
    /// after `TOOLS_PROCESSES` of them (the soak's 10,000 short-lived processes doubled the
    /// agent's memory with a symboliser kept for 10 minutes).
    processes: std::collections::HashSet<u32>,
}

const TOOLS_TTL: std::time::Duration = std::time::Duration::from_secs(60);
const TOOLS_PROCESSES: usize = 64;

thread_local! {
    static TOOLS: std::cell::RefCell<Option<Tools>> = const { std::cell::RefCell::new(None) };
}

/// Runs `f` for process `pid` with this thread's tools (made on first use, renewed when old or
/// when they have seen many processes).
fn with_tools<T>(pid: u32, f: impl FnOnce(&Tools) -> T) -> Option<T> {
    TOOLS.with(|cell| {
        let mut slot = cell.borrow_mut();
        let stale = slot.as_ref().is_none_or(|t| {
            t.born.elapsed() > TOOLS_TTL
                || (t.processes.len() >= TOOLS_PROCESSES && !t.processes.contains(&pid))
        });
        if stale {
            *slot = Some(Tools {
                symbolizer: Symbolizer::new(),
                normalizer: Normalizer::builder().enable_build_ids(true).build(),
                born: std::time::Instant::now(),
                processes: Default::default(),
            });
        }
        slot.as_mut().map(|tools| {
            tools.processes.insert(pid);
            f(tools)
        })
    })
}

/// What is named so far, by (process, stack) and (process, futex).
#[derive(Default)]
struct Names {
    stacks: HashMap<(u32, u64), Arc<Vec<UserFrame>>>,
    locks: HashMap<(u32, u64), Option<String>>,
    comms: HashMap<u32, Option<String>>,
}

/// Names the user-lock profile. Cheap to share: the naming itself runs on the `user_mem`
/// worker (symbolising reads the process's maps and memory, which can block behind its
/// `mmap_lock`), and its results land in a shared cache.
#[derive(Default)]
pub struct UserNamer {
    names: Arc<Mutex<Names>>,
}

fn locked(m: &Mutex<Names>) -> std::sync::MutexGuard<'_, Names> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl UserNamer {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts naming what is new in `raw` while its processes live (their stacks and locks),
    /// on the worker; does nothing while the worker is busy (the next look tries again).
    pub fn prime(&self, raw: &RawUserProfile) {
        let work: Vec<(u32, u64, u64, Vec<u64>)> = {
            let mut n = locked(&self.names);
            if n.stacks.len() > CACHE_ENTRIES || n.locks.len() > CACHE_ENTRIES {
                *n = Names::default();
            }
            // The heaviest first: what a reader looks at is named before the worker's time
            // runs out on the rest.
            let mut entries: Vec<_> = raw.entries.iter().collect();
            entries.sort_by_key(|e| std::cmp::Reverse(e.1.total_ns));
            entries
                .into_iter()
                .filter(|(k, _)| k.tgid != 0)
                .filter(|(k, _)| {
                    !n.stacks.contains_key(&(k.tgid, k.ustack))
                        || !n.locks.contains_key(&(k.tgid, k.uaddr))
                })
                .map(|(k, _)| {
                    let ips = raw.stacks.get(&k.ustack).cloned().unwrap_or_default();
                    (k.tgid, k.ustack, k.uaddr, ips)
                })
                .collect()
        };
        if work.is_empty() {
            return;
        }
        let names = self.names.clone();
        crate::kernel::user_mem::submit(crate::kernel::user_mem::Lane::Stacks, move || {
            for (tgid, ustack, uaddr, ips) in work {
                // A process whose mmap_lock has waiters is named at a later look (`user_mem`).
                if !proc_exists(tgid) || crate::kernel::user_mem::contended(tgid) {
                    continue;
                }
                let frames = Arc::new(
                    with_tools(tgid, |t| t.symbolize(tgid, &ips))
                        .unwrap_or_else(|| unknown_frames(Some(&ips))),
                );
                let lock = user_symbols::name_now(tgid, uaddr);
                let comm = procfs::comm_of(tgid);
                let mut n = locked(&names);
                n.stacks.insert((tgid, ustack), frames);
                n.locks.insert((tgid, uaddr), lock);
                n.comms.insert(tgid, comm);
            }
        });
    }

    /// Names what is new in `raw` and waits for it (up to `deadline`): for a one-shot reader,
    /// which has no agent to keep responsive.
    pub fn prime_and_wait(&self, raw: &RawUserProfile, deadline: std::time::Duration) {
        self.prime(raw);
        // The worker runs one job at a time: a no-op job returns once the priming is done.
        let _ = crate::kernel::user_mem::bounded(
            crate::kernel::user_mem::Lane::Stacks,
            deadline,
            || (),
        );
    }

    /// The profile named with what is known now (priming what is new for the next look).
    pub fn resolve(&self, raw: &RawUserProfile, ksyms: &KernelSymbols) -> UserProfile {
        self.prime(raw);
        let n = locked(&self.names);
        let samples = raw
            .entries
            .iter()
            .filter_map(|(k, v)| {
                let op = futex_op(k.op)?;
                let process = n.comms.get(&k.tgid).cloned().flatten();
                let comm = comm_of(&k.comm).or_else(|| process.clone());
                let kernel_stack = raw
                    .stacks
                    .get(&k.kstack)
                    .map(|ips| kernel_frames(ips, ksyms))
                    .unwrap_or_default();
                Some(UserSample {
                    key: UserKey {
                        pid: k.tgid,
                        futex: k.uaddr,
                        ustack: k.ustack,
                        kstack: k.kstack,
                        op: k.op,
                        val: k.val,
                    },
                    comm,
                    process,
                    op,
                    lock: n.locks.get(&(k.tgid, k.uaddr)).cloned().flatten(),
                    user_stack: n
                        .stacks
                        .get(&(k.tgid, k.ustack))
                        .map(|f| f.as_ref().clone())
                        .unwrap_or_else(|| unknown_frames(raw.stacks.get(&k.ustack))),
                    kernel_stack,
                    count: v.count,
                    total_ns: v.total_ns,
                })
            })
            .collect();
        UserProfile {
            samples,
            table_full: raw.table_full,
            no_stack: raw.no_stack,
        }
    }
}

impl Tools {
    /// Symbolises and normalises one user stack of process `pid`. Return addresses point
    /// after their call: every frame but the leaf is looked up one byte earlier.
    fn symbolize(&self, pid: u32, ips: &[u64]) -> Vec<UserFrame> {
        if ips.is_empty() {
            return Vec::new();
        }
        let addrs: Vec<u64> = ips
            .iter()
            .enumerate()
            .map(|(i, &ip)| if i == 0 { ip } else { ip.saturating_sub(1) })
            .collect();
        let mut process = Process::new(Pid::from(pid));
        process.debug_syms = SOURCE_LINES.load(std::sync::atomic::Ordering::Relaxed);
        let src = Source::Process(process);
        let syms = match self.symbolizer.symbolize(&src, Input::AbsAddr(&addrs)) {
            Ok(s) => s,
            Err(e) => {
                log::debug!("user stack of pid {pid} not symbolised: {e}");
                Vec::new()
            }
        };
        for s in &syms {
            if let Symbolized::Unknown(reason) = s {
                log::debug!("a frame of pid {pid} not symbolised: {reason}");
            }
        }
        let norm = self
            .normalizer
            .normalize_user_addrs(Pid::from(pid), &addrs)
            .ok();
        (0..addrs.len())
            .map(|i| {
                let mut f = UserFrame {
                    function: "[unknown]".into(),
                    ..UserFrame::default()
                };
                if let Some(Symbolized::Sym(s)) = syms.get(i) {
                    f.function = s.name.to_string();
                    if let Some(ci) = &s.code_info {
                        f.file = Some(ci.to_path().display().to_string());
                        f.line = ci.line;
                    }
                }
                if let Some(n) = &norm {
                    if let Some((off, meta)) = n.outputs.get(i) {
                        if let Some(UserMeta::Elf(e)) = n.meta.get(*meta) {
                            f.module = Some(e.path.display().to_string());
                            f.build_id = e.build_id.as_ref().map(|b| hex(b));
                            f.offset = Some(*off);
                        }
                    }
                }
                f
            })
            .collect()
    }
}

/// A sleep's kernel frames by function, from the scheduler down: the frames of the tracing
/// itself (the programs, their trampolines, the tracepoint's iterator) are left out.
fn kernel_frames(ips: &[u64], ksyms: &KernelSymbols) -> Vec<String> {
    let names: Vec<String> = ips
        .iter()
        .map(|&ip| {
            ksyms
                .function_name(ip)
                .map_or_else(|| "[unknown]".to_owned(), str::to_owned)
        })
        .collect();
    let tracing =
        |n: &str| n.starts_with("bpf_") || n.starts_with("__bpf_") || n.starts_with("__traceiter_");
    let from = names.iter().rposition(|n| tracing(n)).map_or(0, |i| i + 1);
    names[from..].to_vec()
}

/// Frames of a stack whose process was gone before it could be named.
fn unknown_frames(ips: Option<&Vec<u64>>) -> Vec<UserFrame> {
    ips.map(|ips| {
        ips.iter()
            .map(|_| UserFrame {
                function: "[unknown]".into(),
                ..UserFrame::default()
            })
            .collect()
    })
    .unwrap_or_default()
}

fn comm_of(raw: &[u8; 16]) -> Option<String> {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    (end > 0).then(|| String::from_utf8_lossy(&raw[..end]).into_owned())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
