//! Per-process and per-workload counters folded into the top N plus "other", without any
//! `_total` series ever going down.
//!
//! Ranking by count and summing the rest as "other" at each scrape (what the gauges do) moves a
//! process's whole count out of "other" the moment it enters the top N: "other" drops, and
//! Prometheus reads the drop as a counter reset, so `rate()` and `increase()` invent traffic.
//! Here the agent keeps, for the life of the process, the last count it read for every key and
//! the value it exported for every series. At each scrape only what a key counted since the
//! last scrape is added, to its own series while its group is in the top N and to "other"
//! otherwise. So a series once exported only grows (if its group leaves the top N it is not
//! shown, and comes back with at least the value it had), and "other" keeps what it was given.
//! The price: a series counts from when its group was first named, not from the agent's start.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    hash::Hash,
};

use crate::core::{
    detect::AlertKind,
    lock_profile::{Naming, Profile, Sample},
};

use super::{ProcessKey, TOP_PROCESSES, TOP_WORKLOADS};

/// The series of one folded counter family: for each group named (the top N, best first) and
/// for "other" (always present, last), one value per sub-label. Only `CounterFold` makes one,
/// so "other" is always there and no series of it ever went down.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Folded<G, S>(Vec<(G, S, u64)>);

impl<G, S> Folded<G, S> {
    pub fn series(&self) -> &[(G, S, u64)] {
        &self.0
    }
}

/// One family's memory: see the module doc.
#[derive(Debug)]
pub struct CounterFold<G, S> {
    top: usize,
    other: G,
    /// Sub-labels every group shown carries (zero until counted), e.g. every alert kind.
    subs: Vec<S>,
    /// The count last read for each key: what the next read's increment is measured from.
    seen: HashMap<(G, S), u64>,
    /// The value exported for each series, named or "other": it only ever grows.
    exported: HashMap<(G, S), u64>,
    /// Which sub-labels' counts rank the groups (all, unless `ranked_by` says otherwise).
    rank: fn(&S) -> bool,
}

impl<G, S> CounterFold<G, S>
where
    G: Clone + Eq + Hash + Ord,
    S: Clone + Eq + Hash + Ord,
{
    pub fn new(top: usize, other: G, subs: Vec<S>) -> Self {
        Self {
            top,
            other,
            subs,
            seen: HashMap::new(),
            exported: HashMap::new(),
            rank: |_| true,
        }
    }

    /// Ranks the groups by the counts of the sub-labels `rank` admits only (e.g. wait time, not
    /// wait time plus the number of waits).
    pub fn ranked_by(mut self, rank: fn(&S) -> bool) -> Self {
        self.rank = rank;
        self
    }

    /// Folds one reading of cumulative counts (each key's count since the agent started; a
    /// key's count never decreases, and a key counted under `other` stays there).
    pub fn fold<'a>(
        &mut self,
        counts: impl IntoIterator<Item = (&'a G, &'a S, u64)>,
    ) -> Folded<G, S>
    where
        G: 'a,
        S: 'a,
    {
        let counts: Vec<(&G, &S, u64)> = counts.into_iter().collect();
        let mut totals: HashMap<&G, u64> = HashMap::new();
        for (g, s, n) in &counts {
            if **g != self.other && (self.rank)(s) {
                *totals.entry(*g).or_default() += n;
            }
        }
        let mut ranked: Vec<(&G, u64)> = totals.into_iter().collect();
        ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        ranked.truncate(self.top);
        let named: Vec<G> = ranked.into_iter().map(|(g, _)| g.clone()).collect();
        let is_named: HashSet<&G> = named.iter().collect();
        for (g, s, n) in counts {
            let key = (g.clone(), s.clone());
            // A count read lower than before (never, for the agent's own counters; a kernel
            // reading that missed a batch one time) adds nothing, and the higher count stays
            // the mark: a series must not go down, and must not count the difference twice
            // when the lower reading recovers.
            let before = self.seen.get(&key).copied().unwrap_or(0);
            let grown = n.saturating_sub(before);
            if n > before {
                self.seen.insert(key.clone(), n);
            }
            let target = if is_named.contains(g) {
                key
            } else {
                (self.other.clone(), s.clone())
            };
            *self.exported.entry(target).or_default() += grown;
        }
        let mut out = Vec::new();
        for g in named.iter().chain(std::iter::once(&self.other)) {
            let mut subs: Vec<&S> = self.subs.iter().collect();
            // Sub-labels outside the fixed list still show (sorted after it).
            let mut extra: Vec<&S> = self
                .exported
                .keys()
                .filter(|(eg, es)| eg == g && !self.subs.contains(es))
                .map(|(_, s)| s)
                .collect();
            extra.sort();
            subs.extend(extra);
            for s in subs {
                let v = self
                    .exported
                    .get(&(g.clone(), s.clone()))
                    .copied()
                    .unwrap_or(0);
                out.push((g.clone(), s.clone(), v));
            }
        }
        Folded(out)
    }
}

/// What a per-process user-lock series counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum UserLockMeasure {
    Waits,
    WaitNs,
}

/// The agent's folded counter families, each with its memory.
#[derive(Debug)]
pub struct SeriesMemory {
    process_slow_waits: CounterFold<ProcessKey, ()>,
    process_user_locks: CounterFold<ProcessKey, UserLockMeasure>,
    workload_slow_waits: CounterFold<String, ()>,
    workload_alerts: CounterFold<String, AlertKind>,
}

/// What one scrape shows of the folded families.
#[derive(Clone, Debug)]
pub struct FoldedCounters {
    pub process_slow_waits: Folded<ProcessKey, ()>,
    /// Futex sleeps and their time by process (top processes by time, the rest "other").
    pub process_user_locks: Folded<ProcessKey, UserLockMeasure>,
    pub workload_slow_waits: Folded<String, ()>,
    pub workload_alerts: Folded<String, AlertKind>,
}

impl Default for SeriesMemory {
    fn default() -> Self {
        Self {
            process_slow_waits: CounterFold::new(TOP_PROCESSES, ProcessKey::other(), vec![()]),
            process_user_locks: CounterFold::new(
                TOP_PROCESSES,
                ProcessKey::other(),
                vec![UserLockMeasure::Waits, UserLockMeasure::WaitNs],
            )
            .ranked_by(|m| *m == UserLockMeasure::WaitNs),
            workload_slow_waits: CounterFold::new(TOP_WORKLOADS, "other".to_owned(), vec![()]),
            workload_alerts: CounterFold::new(
                TOP_WORKLOADS,
                "other".to_owned(),
                AlertKind::ALL.to_vec(),
            ),
        }
    }
}

impl SeriesMemory {
    /// Folds the agent's cumulative counts: slow waits by process and by workload, alerts by
    /// (workload, kind).
    pub fn fold(
        &mut self,
        slow_waits_by_process: &HashMap<ProcessKey, u64>,
        user_locks_by_process: &HashMap<ProcessKey, tracer_common::FutexTime>,
        slow_waits_by_workload: &HashMap<String, u64>,
        alerts_by_workload: &BTreeMap<(String, AlertKind), u64>,
    ) -> FoldedCounters {
        let user_locks: Vec<(&ProcessKey, UserLockMeasure, u64)> = user_locks_by_process
            .iter()
            .flat_map(|(k, t)| {
                [
                    (k, UserLockMeasure::Waits, t.waits),
                    (k, UserLockMeasure::WaitNs, t.wait_ns),
                ]
            })
            .collect();
        FoldedCounters {
            process_user_locks: self
                .process_user_locks
                .fold(user_locks.iter().map(|(k, m, n)| (*k, m, *n))),
            process_slow_waits: self
                .process_slow_waits
                .fold(slow_waits_by_process.iter().map(|(k, n)| (k, &(), *n))),
            workload_slow_waits: self
                .workload_slow_waits
                .fold(slow_waits_by_workload.iter().map(|(k, n)| (k, &(), *n))),
            workload_alerts: self
                .workload_alerts
                .fold(alerts_by_workload.iter().map(|((w, k), n)| (w, k, *n))),
        }
    }
}

/// Kernel locks named individually in `faultline_lock_*_total{lock=...}`; the rest are "other".
pub const TOP_LOCKS: usize = 10;

/// What a kernel-lock series counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LockMeasure {
    Contentions,
    WaitNs,
}

/// A lock series' sub-labels: the lock type (`mutex`, `rwsem:R`, ...) and what it counts.
pub type LockSub = (&'static str, LockMeasure);

/// The lock profile folded into the top N locks by wait time plus "other", so that the
/// `lock` label stays bounded and no series goes down (see the module doc).
///
/// A lock's label is its name as the profile gives it (`rtnl_mutex`, `caller:rtnl_lock`,
/// `mmap_lock of PID (comm)`), never an address (`unnamed`). The label of an `mmap_lock` or a
/// siglock (which name a process) is kept as first given while the profile holds that
/// process's lock: its comm can no longer be read once it exits, and a renamed series would
/// count its whole past a second time.
#[derive(Debug)]
pub struct LockSeriesMemory {
    fold: CounterFold<String, LockSub>,
    /// The first label given, by the part of it that names the lock's process
    /// (`mmap_lock of 123`): a reused address of a new process is a new lock here.
    first_names: HashMap<String, String>,
}

impl Default for LockSeriesMemory {
    fn default() -> Self {
        Self {
            fold: CounterFold::new(TOP_LOCKS, "other".to_owned(), Vec::new())
                .ranked_by(|(_, m)| *m == LockMeasure::WaitNs),
            first_names: HashMap::new(),
        }
    }
}

impl LockSeriesMemory {
    /// Folds one reading of the cumulative profile.
    ///
    /// Short waits the kernel took no stack for are named through their lock's sampled stacks
    /// (`Profile::estimated`); for a lock known only by its callers the split between callers
    /// is an estimate, and a caller's series never goes down for it (see `CounterFold`).
    pub fn fold(&mut self, profile: &Profile) -> Folded<String, LockSub> {
        let profile = &profile.estimated();
        let mut counts: BTreeMap<(String, LockSub), u64> = BTreeMap::new();
        let mut live: HashSet<String> = HashSet::new();
        for s in &profile.samples {
            let label = self.label(s, &mut live);
            let t = s.lock_type.name();
            *counts
                .entry((label.clone(), (t, LockMeasure::Contentions)))
                .or_default() += s.contended;
            *counts.entry((label, (t, LockMeasure::WaitNs))).or_default() += s.total_ns;
        }
        // Names of locks the profile no longer holds are forgotten.
        self.first_names.retain(|stable, _| live.contains(stable));
        self.fold
            .fold(counts.iter().map(|((g, sub), n)| (g, sub, *n)))
    }

    fn label(&mut self, s: &Sample, live: &mut HashSet<String>) -> String {
        match s.lock_name.naming {
            Naming::MmapLock | Naming::WellKnown => {
                // "mmap_lock of 123 (postgres)" → "mmap_lock of 123": the comm is what goes
                // missing when the process exits.
                let name = &s.lock_name.name;
                let stable = name.split(" (").next().unwrap_or(name).to_owned();
                live.insert(stable.clone());
                self.first_names
                    .entry(stable)
                    .or_insert_with(|| name.clone())
                    .clone()
            }
            Naming::Unnamed | Naming::Symbol | Naming::Caller => s.lock_name.public_label(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fold(f: &mut CounterFold<String, ()>, counts: &[(&str, u64)]) -> Vec<(String, u64)> {
        let owned: Vec<(String, u64)> = counts.iter().map(|(k, n)| ((*k).to_owned(), *n)).collect();
        f.fold(owned.iter().map(|(k, n)| (k, &(), *n)))
            .series()
            .iter()
            .map(|(g, _, n)| (g.clone(), *n))
            .collect()
    }

    #[test]
    fn a_process_entering_the_top_n_leaves_other_where_it_was() {
        let mut f = CounterFold::new(1, "other".to_owned(), vec![()]);
        assert_eq!(
            fold(&mut f, &[("a", 10), ("b", 5)]),
            [("a".into(), 10), ("other".into(), 5)]
        );
        // b overtakes a: a's later counts go to other, b's own series starts from its name.
        assert_eq!(
            fold(&mut f, &[("a", 11), ("b", 20)]),
            [("b".into(), 15), ("other".into(), 6)]
        );
        // a back on top: its series resumes where it was shown last, other keeps what it had.
        assert_eq!(
            fold(&mut f, &[("a", 40), ("b", 20)]),
            [("a".into(), 39), ("other".into(), 6)]
        );
    }

    #[test]
    fn a_reading_that_dips_and_recovers_counts_nothing_twice() {
        let mut f = CounterFold::new(1, "other".to_owned(), vec![()]);
        assert_eq!(
            fold(&mut f, &[("a", 10)]),
            [("a".into(), 10), ("other".into(), 0)]
        );
        assert_eq!(
            fold(&mut f, &[("a", 7)]),
            [("a".into(), 10), ("other".into(), 0)]
        );
        assert_eq!(
            fold(&mut f, &[("a", 12)]),
            [("a".into(), 12), ("other".into(), 0)]
        );
    }

    #[test]
    fn other_counts_under_other_and_is_always_shown() {
        let mut f = CounterFold::new(2, "other".to_owned(), vec![()]);
        assert_eq!(fold(&mut f, &[]), [("other".into(), 0)]);
        assert_eq!(
            fold(&mut f, &[("other", 50), ("a", 1)]),
            [("a".into(), 1), ("other".into(), 50)]
        );
    }

    #[test]
    fn named_groups_carry_every_sub_label() {
        let mut f = CounterFold::new(1, "other".to_owned(), vec![1u8, 2]);
        let (w, s) = ("w".to_owned(), 2u8);
        let got = f.fold([(&w, &s, 3)]);
        assert_eq!(
            got.series(),
            [
                ("w".into(), 1, 0),
                ("w".into(), 2, 3),
                ("other".into(), 1, 0),
                ("other".into(), 2, 0)
            ]
        );
    }
}
