//! The kernel lock-contention profile, resolved: each aggregate of the kernel's
//! (lock, waiter stack, cgroup, type) table with its lock named as far as the kernel allows,
//! its stack symbolised, and what was dropped on the way. Grouping, filtering and the
//! `perf lock contention`-style table live here; reading the maps and naming live in `tracer`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::event::LockType;

impl LockType {
    /// The name used in tables, labels and filters.
    pub fn name(self) -> &'static str {
        match self {
            Self::Mutex => "mutex",
            Self::RwsemRead => "rwsem:R",
            Self::RwsemWrite => "rwsem:W",
            Self::Spinlock => "spinlock",
            Self::RwlockRead => "rwlock:R",
            Self::RwlockWrite => "rwlock:W",
            Self::Other => "other",
        }
    }
}

/// How a lock's name is known, strongest first. Never invented: what cannot be named says so.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Naming {
    /// `mmap_lock of PID (comm)`: the lock's address is that process's `mm->mmap_lock`.
    MmapLock,
    /// A static lock's data symbol (`CONFIG_KALLSYMS_ALL` kernels).
    Symbol,
    /// A well-known per-task or per-CPU lock, recognised exactly: `siglock of PID (comm)` (the
    /// waiter's own `sighand`), `rq lock` (taken by `raw_spin_rq_lock_nested`, which takes
    /// nothing else).
    WellKnown,
    /// The contending caller's function (the first frame outside the locking functions):
    /// names where the lock is taken, not the lock.
    Caller,
    /// Nothing names it: the raw address (only the local CLI shows it).
    Unnamed,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockName {
    pub name: String,
    pub naming: Naming,
}

impl LockName {
    /// The label form: a caller is marked as one, so it is never read as the lock's own name.
    pub fn label(&self) -> String {
        match self.naming {
            Naming::Caller => format!("caller:{}", self.name),
            _ => self.name.clone(),
        }
    }

    /// The label for outputs that leave the host (pprof, `/metrics`, the flame graph): never
    /// an address; an unnamed lock's name is its address, so all unnamed locks are `unnamed`.
    pub fn public_label(&self) -> String {
        match self.naming {
            Naming::Unnamed => "unnamed".to_owned(),
            _ => self.label(),
        }
    }
}

/// A frame as outputs that leave the host show it: `name+0xoff [module]` is `name [module]`
/// (one function, whatever the return address in it), and a frame kallsyms could not name,
/// printed as its address, is `[unknown]`.
pub fn public_frame(frame: &str) -> String {
    if frame.starts_with("0x") {
        return "[unknown]".to_owned();
    }
    let (symbol, module) = match frame.split_once(' ') {
        Some((s, m)) => (s, Some(m)),
        None => (frame, None),
    };
    let name = symbol.split('+').next().unwrap_or(symbol);
    match module {
        Some(m) => format!("{name} {m}"),
        None => name.to_owned(),
    }
}

/// One aggregate of the kernel's table, resolved.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sample {
    /// The lock's kernel address (the local CLI's `-l` and `--lock`; never exported by the
    /// agent).
    pub lock: u64,
    pub lock_name: LockName,
    pub lock_type: LockType,
    /// The waiter's kernel stack, symbolised, leaf first, from the contending caller on (the
    /// locking functions and the tracing trampoline above it are left out); empty when the
    /// kernel could not give it.
    pub stack: Vec<String>,
    /// The waiter's cgroup path and workload label, when resolved.
    pub cgroup: Option<String>,
    pub workload: Option<String>,
    /// The waiter's comm (every profile keys by it: a low-cardinality label).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comm: Option<String>,
    /// The waiter's pod (namespace, pod, container), when its cgroup names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<PodLabels>,
    /// The waiting task (`-t`), when the profile was keyed by task.
    pub task: Option<Task>,
    /// The lock's owner at the last wait (mutexes, write-held rwsems).
    pub owner: Option<Task>,
    pub contended: u64,
    pub total_ns: u64,
    pub max_ns: u64,
    /// How this aggregate's waits got their stack.
    #[serde(default, skip_serializing_if = "StackSampling::is_always")]
    pub stack_sampling: StackSampling,
}

/// How an aggregate's waits got their stack. The kernel takes the stack of every contended
/// wait of 10 us or more, but of only 1 in N shorter ones (unwinding costs about what a short
/// wait lasts): those it skipped are counted exactly, by lock, and split over the
/// sampled stacks of their lock by `Profile::estimated`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StackSampling {
    #[default]
    Always,
    Sampled,
    Skipped,
}

impl StackSampling {
    fn is_always(&self) -> bool {
        *self == Self::Always
    }
}

/// Where a waiter runs in Kubernetes, as profile labels: namespace and pod when the node named
/// them, and the container (its name, else its short id) when the cgroup goes that deep.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodLabels {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub pod: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
}

/// The frame that stands for a stack no sample of its lock gave.
pub const NOT_SAMPLED_FRAME: &str = "[short waits, stack not sampled]";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    pub tid: u32,
    /// Its process, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    pub comm: Option<String>,
}

/// What the kernel side could not aggregate or attribute, by cause.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drops {
    /// Contended waits the profile saw.
    pub waits: u64,
    /// Waits of a new key dropped because the table was full.
    pub table_full: u64,
    /// Waits whose stack could not be captured (kept, under no stack).
    pub no_stack: u64,
    /// Waits whose new stack found the stack table full (kept, under no stack).
    pub stacks_full: u64,
    /// Waits whose stack hash named a different stored stack (kept, under no stack).
    pub stack_collisions: u64,
    /// Waits that found a table busy (a nested update on one CPU): dropped, or kept without
    /// their stack.
    pub busy: u64,
}

impl Drops {
    /// Adds `other`'s counts (a profile written over several trace lines).
    pub fn add(&mut self, other: &Drops) {
        self.waits += other.waits;
        self.table_full += other.table_full;
        self.no_stack += other.no_stack;
        self.stacks_full += other.stacks_full;
        self.stack_collisions += other.stack_collisions;
        self.busy += other.busy;
    }

    pub fn any(&self) -> bool {
        self.table_full + self.no_stack + self.stacks_full + self.stack_collisions + self.busy > 0
    }

    /// One line per non-zero cause, for text output and profile comments.
    pub fn lines(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut say = |n: u64, what: &str| {
            if n > 0 {
                out.push(format!("{n} of {} waits {what}", self.waits));
            }
        };
        say(
            self.table_full,
            "dropped: the profile table was full (raise --profile-entries)",
        );
        say(
            self.no_stack,
            "without a stack: the kernel did not give one",
        );
        say(
            self.stacks_full,
            "without a stack: the stack table was full (raise --profile-stacks)",
        );
        say(
            self.stack_collisions,
            "without a stack: their stack's hash named another stack",
        );
        say(
            self.busy,
            "dropped or without a stack: a table was busy (nested on one CPU)",
        );
        out
    }

    /// What happened between `earlier` and `self` (counters only go up).
    pub fn since(&self, earlier: &Drops) -> Drops {
        Drops {
            waits: self.waits.saturating_sub(earlier.waits),
            table_full: self.table_full.saturating_sub(earlier.table_full),
            no_stack: self.no_stack.saturating_sub(earlier.no_stack),
            stacks_full: self.stacks_full.saturating_sub(earlier.stacks_full),
            stack_collisions: self
                .stack_collisions
                .saturating_sub(earlier.stack_collisions),
            busy: self.busy.saturating_sub(earlier.busy),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Profile {
    pub samples: Vec<Sample>,
    pub drops: Drops,
}

/// How rows are grouped (perf lock contention: caller by default, `-t` task, `-l` lock).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupBy {
    Caller,
    Task,
    Lock,
    Cgroup,
}

/// Which samples count.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// Lock types by name (`mutex`, `rwsem`, `rwsem:R`, `spinlock`, ...); empty: all.
    pub types: Vec<String>,
    /// Substrings of the lock's name, or its address in hex.
    pub locks: Vec<String>,
    /// A substring any frame of the stack must contain.
    pub stack_contains: Option<String>,
    /// Waiting processes (needs a profile keyed by task).
    pub pids: Vec<u32>,
}

impl Filter {
    pub fn admits(&self, s: &Sample) -> bool {
        let t = s.lock_type.name();
        (self.types.is_empty()
            || self
                .types
                .iter()
                .any(|want| t == want || t.split(':').next() == Some(want.as_str())))
            && (self.locks.is_empty()
                || self.locks.iter().any(|l| {
                    s.lock_name.name.contains(l.as_str())
                        || u64::from_str_radix(l.trim_start_matches("0x"), 16) == Ok(s.lock)
                }))
            && self
                .stack_contains
                .as_ref()
                .is_none_or(|sub| s.stack.iter().any(|f| f.contains(sub.as_str())))
            && (self.pids.is_empty()
                || s.task
                    .as_ref()
                    .and_then(|t| t.pid)
                    .is_some_and(|p| self.pids.contains(&p)))
    }
}

/// A row of the table: the samples of one group added up.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Row {
    /// What the group is: the caller, `tid comm`, the lock's name, or the cgroup.
    pub key: String,
    /// The lock types seen in the group, joined by `,`.
    #[serde(rename = "type")]
    pub lock_type: String,
    pub contended: u64,
    pub total_ns: u64,
    pub max_ns: u64,
    pub avg_ns: u64,
    /// The group's heaviest stack.
    pub stack: Vec<String>,
    /// The lock's name and how it is known (by-lock rows; else the heaviest lock of the group).
    pub lock: LockName,
    /// The owner of the heaviest sample's lock at its last wait (mutexes, write-held rwsems).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<Task>,
}

impl Profile {
    pub fn filtered(&self, f: &Filter) -> Profile {
        Profile {
            samples: self
                .samples
                .iter()
                .filter(|s| f.admits(s))
                .cloned()
                .collect(),
            drops: self.drops,
        }
    }

    /// What was added between `earlier` and `self`, two readings of the same cumulative
    /// profile: each aggregate's count and total less what they were (new ones whole), those
    /// that did not move left out. A maximum cannot be taken apart: the later one is kept.
    pub fn since(&self, earlier: &Profile) -> Profile {
        // Several kernel aggregates can resolve to one sample identity (stacks that differ only
        // in the trimmed locking frames, cgroups not resolved): add each side up per identity
        // before taking one from the other.
        let mut before: std::collections::HashMap<SampleId, (u64, u64)> = Default::default();
        for s in &earlier.samples {
            let e = before.entry(id(s)).or_default();
            *e = (e.0 + s.contended, e.1 + s.total_ns);
        }
        let mut after: Vec<Sample> = Vec::new();
        let mut index: std::collections::HashMap<SampleId, usize> = Default::default();
        for s in &self.samples {
            match index.get(&id(s)) {
                Some(&i) => {
                    let a = &mut after[i];
                    a.contended += s.contended;
                    a.total_ns += s.total_ns;
                    a.max_ns = a.max_ns.max(s.max_ns);
                }
                None => {
                    index.insert(id(s), after.len());
                    after.push(s.clone());
                }
            }
        }
        let samples = after
            .into_iter()
            .filter_map(|mut s| {
                let (c, t) = before.get(&id(&s)).copied().unwrap_or((0, 0));
                s.contended = s.contended.saturating_sub(c);
                s.total_ns = s.total_ns.saturating_sub(t);
                (s.contended > 0).then_some(s)
            })
            .collect();
        Profile {
            samples,
            drops: self.drops.since(&earlier.drops),
        }
    }

    /// The profile with the short waits the kernel took no stack for split over the sampled
    /// stacks of the same lock (and type, cgroup, task), in proportion to the sampled ones'
    /// counts and wait: totals by lock stay exact, the split by stack is an estimate. A lock
    /// with skipped spins and no sampled stack keeps them under `NOT_SAMPLED_FRAME`. Already
    /// estimated profiles (no `Skipped` sample) come back unchanged.
    pub fn estimated(&self) -> Profile {
        type Group = (
            u64,
            &'static str,
            Option<String>,
            Option<u32>,
            Option<String>,
        );
        let group = |s: &Sample| -> Group {
            (
                s.lock,
                s.lock_type.name(),
                s.cgroup.clone(),
                s.task.as_ref().map(|t| t.tid),
                s.comm.clone(),
            )
        };
        let mut skipped: BTreeMap<Group, Sample> = BTreeMap::new();
        let mut samples: Vec<Sample> = Vec::with_capacity(self.samples.len());
        for s in &self.samples {
            if s.stack_sampling == StackSampling::Skipped {
                match skipped.get_mut(&group(s)) {
                    Some(k) => {
                        k.contended += s.contended;
                        k.total_ns += s.total_ns;
                        k.max_ns = k.max_ns.max(s.max_ns);
                    }
                    None => {
                        skipped.insert(group(s), s.clone());
                    }
                }
            } else {
                samples.push(s.clone());
            }
        }
        for (g, k) in skipped {
            let sampled: Vec<usize> = (0..samples.len())
                .filter(|&i| {
                    samples[i].stack_sampling == StackSampling::Sampled && group(&samples[i]) == g
                })
                .collect();
            let weights: Vec<u64> = sampled.iter().map(|&i| samples[i].contended).collect();
            let waits: Vec<u64> = sampled.iter().map(|&i| samples[i].total_ns).collect();
            match (split(k.contended, &weights), split(k.total_ns, &waits)) {
                (Some(counts), Some(totals)) => {
                    for (j, &i) in sampled.iter().enumerate() {
                        samples[i].contended += counts[j];
                        samples[i].total_ns += totals[j];
                    }
                }
                _ => samples.push(Sample {
                    stack: vec![NOT_SAMPLED_FRAME.to_owned()],
                    ..k
                }),
            }
        }
        Profile {
            samples,
            drops: self.drops,
        }
    }

    pub fn total_ns(&self) -> u64 {
        self.samples.iter().map(|s| s.total_ns).sum()
    }

    pub fn contended(&self) -> u64 {
        self.samples.iter().map(|s| s.contended).sum()
    }

    /// Rows grouped `by`, heaviest total wait first.
    pub fn rows(&self, by: GroupBy) -> Vec<Row> {
        let estimated = self.estimated();
        let mut groups: BTreeMap<String, Vec<&Sample>> = BTreeMap::new();
        for s in &estimated.samples {
            let key = match by {
                GroupBy::Caller => s
                    .stack
                    .first()
                    .map(|f| strip_offset(f).to_owned())
                    .unwrap_or_else(|| "(no stack)".into()),
                GroupBy::Task => s.task.as_ref().map_or_else(
                    || "(all tasks)".into(),
                    |t| format!("{} {}", t.tid, t.comm.as_deref().unwrap_or("?")),
                ),
                // One row per lock: a lock known only by its callers is its address (its
                // heaviest caller shows in the name column).
                GroupBy::Lock => match s.lock_name.naming {
                    Naming::Unnamed | Naming::Caller => format!("{:#x}", s.lock),
                    _ => s.lock_name.name.clone(),
                },
                GroupBy::Cgroup => s
                    .workload
                    .clone()
                    .or_else(|| s.cgroup.clone())
                    .unwrap_or_else(|| "(unknown)".into()),
            };
            groups.entry(key).or_default().push(s);
        }
        let mut rows: Vec<Row> = groups
            .into_iter()
            .map(|(key, ss)| {
                let contended: u64 = ss.iter().map(|s| s.contended).sum();
                let total_ns: u64 = ss.iter().map(|s| s.total_ns).sum();
                let heaviest = ss
                    .iter()
                    .max_by_key(|s| s.total_ns)
                    .expect("a group has a sample");
                let mut types: Vec<&str> = ss.iter().map(|s| s.lock_type.name()).collect();
                types.sort_unstable();
                types.dedup();
                Row {
                    key,
                    lock_type: types.join(","),
                    contended,
                    total_ns,
                    max_ns: ss.iter().map(|s| s.max_ns).max().unwrap_or(0),
                    avg_ns: total_ns.checked_div(contended).unwrap_or(0),
                    stack: heaviest.stack.clone(),
                    lock: heaviest.lock_name.clone(),
                    owner: heaviest.owner.clone(),
                }
            })
            .collect();
        rows.sort_by(|a, b| b.total_ns.cmp(&a.total_ns).then(a.key.cmp(&b.key)));
        rows
    }
}

/// `amount` split in proportion to `weights`, the rounding given to the heaviest so the parts
/// add up to `amount` exactly; `None` when there is nothing to split over.
fn split(amount: u64, weights: &[u64]) -> Option<Vec<u64>> {
    let sum: u128 = weights.iter().map(|&w| u128::from(w)).sum();
    if sum == 0 {
        return None;
    }
    let mut parts: Vec<u64> = weights
        .iter()
        .map(|&w| (u128::from(amount) * u128::from(w) / sum) as u64)
        .collect();
    let given: u64 = parts.iter().sum();
    let heaviest = (0..weights.len()).max_by_key(|&i| weights[i])?;
    parts[heaviest] += amount - given;
    Some(parts)
}

/// What makes an aggregate the same one in two readings.
type SampleId<'a> = (
    u64,
    LockType,
    &'a [String],
    Option<&'a str>,
    Option<u32>,
    StackSampling,
    Option<&'a str>,
);

fn id(s: &Sample) -> SampleId<'_> {
    (
        s.lock,
        s.lock_type,
        &s.stack,
        s.cgroup.as_deref(),
        s.task.as_ref().map(|t| t.tid),
        s.stack_sampling,
        s.comm.as_deref(),
    )
}

fn strip_offset(frame: &str) -> &str {
    frame.split('+').next().unwrap_or(frame)
}

/// Nanoseconds as perf prints them: `12.34 us`, `1.20 ms`, `3.00 s`.
pub fn human_ns(ns: u64) -> String {
    let f = ns as f64;
    if ns < 1_000 {
        format!("{ns} ns")
    } else if ns < 1_000_000 {
        format!("{:.2} us", f / 1e3)
    } else if ns < 1_000_000_000 {
        format!("{:.2} ms", f / 1e6)
    } else {
        format!("{:.2} s", f / 1e9)
    }
}

/// The text table: `contended  total wait  max wait  avg wait  type  <key>  name`, the stacks
/// under each row with `stacks`, then what was dropped.
pub fn render_table(rows: &[Row], by: GroupBy, stacks: bool, drops: &Drops) -> String {
    let key_title = match by {
        GroupBy::Caller => "caller",
        GroupBy::Task => "pid comm",
        GroupBy::Lock => "lock",
        GroupBy::Cgroup => "cgroup",
    };
    let mut out = format!(
        "{:>10} {:>12} {:>12} {:>12} {:>18}   {:<32} {}\n\n",
        "contended", "total wait", "max wait", "avg wait", "type", key_title, "name"
    );
    for r in rows {
        let name = match by {
            GroupBy::Lock => match r.lock.naming {
                Naming::MmapLock => "(mmap_lock)".to_owned(),
                Naming::Symbol => "(symbol)".to_owned(),
                Naming::WellKnown => "(well-known)".to_owned(),
                Naming::Caller => format!("{} (the lock itself is not named)", r.lock.label()),
                Naming::Unnamed => "(unnamed)".to_owned(),
            },
            _ => r.lock.label(),
        };
        let name = match &r.owner {
            Some(o) => format!(
                "{name}  owner {} ({})",
                o.tid,
                o.comm.as_deref().unwrap_or("?")
            ),
            None => name,
        };
        out.push_str(&format!(
            "{:>10} {:>12} {:>12} {:>12} {:>18}   {:<32} {}\n",
            r.contended,
            human_ns(r.total_ns),
            human_ns(r.max_ns),
            human_ns(r.avg_ns),
            r.lock_type,
            r.key,
            name
        ));
        if stacks {
            for f in &r.stack {
                out.push_str(&format!("{:>20}{f}\n", ""));
            }
            out.push('\n');
        }
    }
    let lines = drops.lines();
    if lines.is_empty() {
        out.push_str(&format!(
            "\n{} contended waits; nothing dropped\n",
            drops.waits
        ));
    } else {
        out.push('\n');
        for l in lines {
            out.push_str(&format!("dropped: {l}\n"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(
        lock: u64,
        name: &str,
        naming: Naming,
        t: LockType,
        stack: &[&str],
        n: u64,
        ns: u64,
    ) -> Sample {
        Sample {
            lock,
            lock_name: LockName {
                name: name.into(),
                naming,
            },
            lock_type: t,
            stack: stack.iter().map(|s| s.to_string()).collect(),
            cgroup: Some("/system.slice/a.service".into()),
            workload: Some("systemd:a.service".into()),
            comm: Some("a".into()),
            pod: None,
            task: None,
            owner: None,
            contended: n,
            total_ns: ns,
            max_ns: ns / n.max(1) * 2,
            stack_sampling: StackSampling::Always,
        }
    }

    fn spins(lock: u64, how: StackSampling, stack: &[&str], n: u64, ns: u64) -> Sample {
        Sample {
            stack_sampling: how,
            ..sample(
                lock,
                "caller",
                Naming::Caller,
                LockType::Spinlock,
                stack,
                n,
                ns,
            )
        }
    }

    #[test]
    fn skipped_short_spins_are_split_over_their_locks_sampled_stacks_exactly_in_total() {
        let p = Profile {
            samples: vec![
                spins(1, StackSampling::Sampled, &["a"], 1, 100),
                spins(1, StackSampling::Sampled, &["b"], 3, 500),
                // A long spin's stack is not a sample of the short ones.
                spins(1, StackSampling::Always, &["c"], 1, 50_000),
                spins(1, StackSampling::Skipped, &[], 60, 12_001),
                // Another lock's skipped spins with nothing sampled: kept, marked.
                spins(2, StackSampling::Skipped, &[], 5, 700),
            ],
            drops: Drops::default(),
        };
        let e = p.estimated();
        assert_eq!(e.contended(), p.contended());
        assert_eq!(e.total_ns(), p.total_ns());
        let by = |frame: &str| {
            let s = e
                .samples
                .iter()
                .find(|s| s.stack.first().map(String::as_str) == Some(frame))
                .unwrap_or_else(|| panic!("no {frame}: {e:?}"));
            (s.contended, s.total_ns)
        };
        // 60 by counts 1:3 = 15 + 45; 12001 ns by waits 100:500 = 2000 + 10001 (the rounding
        // to the heaviest).
        assert_eq!(by("a"), (16, 2100));
        assert_eq!(by("b"), (48, 10501));
        assert_eq!(by("c"), (1, 50_000));
        assert_eq!(by(NOT_SAMPLED_FRAME), (5, 700));
        assert!(e
            .samples
            .iter()
            .filter(|s| s.stack_sampling == StackSampling::Skipped)
            .all(|s| s.stack == [NOT_SAMPLED_FRAME]));
        // Estimating twice changes nothing.
        assert_eq!(e.estimated(), e);
    }

    fn profile() -> Profile {
        Profile {
            samples: vec![
                sample(
                    0x10,
                    "rtnl_lock",
                    Naming::Caller,
                    LockType::Mutex,
                    &["rtnl_lock+0x5", "do_setlink+0x10"],
                    10,
                    10_000,
                ),
                sample(
                    0x10,
                    "rtnl_lock",
                    Naming::Caller,
                    LockType::Mutex,
                    &["rtnl_lock+0x5", "rtnl_newlink+0x30"],
                    5,
                    30_000,
                ),
                sample(
                    0x20,
                    "mmap_lock of 42 (a)",
                    Naming::MmapLock,
                    LockType::RwsemRead,
                    &["lock_mm_and_find_vma+0x1"],
                    4,
                    4_000,
                ),
            ],
            drops: Drops {
                waits: 20,
                table_full: 1,
                ..Drops::default()
            },
        }
    }

    #[test]
    fn rows_add_up_their_samples_heaviest_first() {
        let p = profile();
        let rows = p.rows(GroupBy::Caller);
        assert_eq!(rows[0].key, "rtnl_lock");
        assert_eq!((rows[0].contended, rows[0].total_ns), (15, 40_000));
        assert_eq!(rows[0].avg_ns, 2_666);
        assert_eq!(rows[0].stack[1], "rtnl_newlink+0x30", "the heaviest stack");
        assert_eq!(rows[1].key, "lock_mm_and_find_vma");
        let by_lock = p.rows(GroupBy::Lock);
        assert_eq!(by_lock.len(), 2);
        assert!(by_lock.iter().any(|r| r.key == "mmap_lock of 42 (a)"));
        // The totals of every grouping agree.
        for by in [
            GroupBy::Caller,
            GroupBy::Lock,
            GroupBy::Task,
            GroupBy::Cgroup,
        ] {
            assert_eq!(
                p.rows(by).iter().map(|r| r.total_ns).sum::<u64>(),
                p.total_ns()
            );
        }
    }

    #[test]
    fn a_delta_keeps_what_moved_between_two_readings() {
        let earlier = profile();
        let mut later = profile();
        later.samples[0].contended += 2;
        later.samples[0].total_ns += 500;
        later.samples.push(sample(
            0x30,
            "x",
            Naming::Caller,
            LockType::Spinlock,
            &["x+0x1"],
            1,
            7,
        ));
        later.drops.waits += 3;
        let d = later.since(&earlier);
        assert_eq!(d.samples.len(), 2, "{d:?}");
        assert_eq!((d.samples[0].contended, d.samples[0].total_ns), (2, 500));
        assert_eq!((d.samples[1].contended, d.samples[1].total_ns), (1, 7));
        assert_eq!(d.drops.waits, 3);
        assert_eq!(d.drops.table_full, 0);
    }

    #[test]
    fn a_delta_adds_up_aggregates_that_resolve_alike_before_subtracting() {
        // Two kernel aggregates of one lock whose stacks differ only in trimmed frames.
        let a = |n, ns| {
            sample(
                0x10,
                "f",
                Naming::Caller,
                LockType::Mutex,
                &["f+0x1"],
                n,
                ns,
            )
        };
        let earlier = Profile {
            samples: vec![a(1000, 1000), a(10, 10)],
            drops: Drops::default(),
        };
        let later = Profile {
            samples: vec![a(1005, 1005), a(12, 12)],
            drops: Drops::default(),
        };
        let d = later.since(&earlier);
        assert_eq!(d.samples.len(), 1);
        assert_eq!((d.samples[0].contended, d.samples[0].total_ns), (7, 7));
    }

    #[test]
    fn filters_by_type_name_stack_and_address() {
        let p = profile();
        let only = |f: Filter| p.filtered(&f).samples.len();
        assert_eq!(
            only(Filter {
                types: vec!["rwsem".into()],
                ..Default::default()
            }),
            1
        );
        assert_eq!(
            only(Filter {
                types: vec!["mutex".into()],
                ..Default::default()
            }),
            2
        );
        assert_eq!(
            only(Filter {
                locks: vec!["mmap_lock".into()],
                ..Default::default()
            }),
            1
        );
        assert_eq!(
            only(Filter {
                locks: vec!["0x10".into()],
                ..Default::default()
            }),
            2
        );
        assert_eq!(
            only(Filter {
                stack_contains: Some("newlink".into()),
                ..Default::default()
            }),
            1
        );
        assert_eq!(
            only(Filter {
                pids: vec![1],
                ..Default::default()
            }),
            0,
            "not keyed by task"
        );
    }

    #[test]
    fn the_table_says_what_was_dropped_and_that_a_caller_is_not_the_lock() {
        let p = profile();
        let text = render_table(&p.rows(GroupBy::Caller), GroupBy::Caller, true, &p.drops);
        assert!(text.contains("caller:rtnl_lock"), "{text}");
        assert!(
            text.contains("dropped: 1 of 20 waits dropped: the profile table was full"),
            "{text}"
        );
        assert!(text.contains("do_setlink+0x10") || text.contains("rtnl_newlink+0x30"));
    }
}
