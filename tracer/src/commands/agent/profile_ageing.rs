//! Keeping the kernel's lock-profile table from filling up for good: its keys are never removed
//! by the programs, and on a host with process churn (each process's `mmap_lock` is a key) a
//! long-running agent would reach the table's size and then drop every new lock's waits. So an
//! aggregate that did not change over a whole `--profile-idle-after` is taken out of the
//! kernel's table (lookup-and-delete: nothing added up to that moment is lost) and kept here,
//! with the stack it names; every reading adds the kept ones back. The store here is bounded
//! too: once it holds `RETIRED_MAX` aggregates nothing more is moved (and the log says so once),
//! so the kernel's table fills as it did before and its drops are counted.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use tracer_common::{ProfileKey, ProfileValue, NO_STACK, PROFILE_STACK_DEPTH};

use crate::kernel::probes::families::lock_profile::{
    add_aggregates, add_batch, ProfileMaps, RawProfile,
};

/// Aggregates kept out of the kernel's table, at most (~100 bytes each, plus stacks).
pub const RETIRED_MAX: usize = 65_536;

pub struct Ageing {
    idle_after: Duration,
    /// Each table key's count when last looked at, and when that look was.
    counts: HashMap<ProfileKey, u64>,
    looked: Instant,
    /// Aggregates taken out of the kernel's table, and the stacks they name.
    retired: HashMap<ProfileKey, ProfileValue>,
    stacks: HashMap<u64, [u64; PROFILE_STACK_DEPTH]>,
    full_said: bool,
}

impl Ageing {
    pub fn new(idle_after: Duration) -> Self {
        Self {
            idle_after,
            counts: HashMap::new(),
            looked: Instant::now(),
            retired: HashMap::new(),
            stacks: HashMap::new(),
            full_said: false,
        }
    }

    /// Aggregates held here now.
    pub fn retired(&self) -> usize {
        self.retired.len()
    }

    /// When a whole `idle_after` has passed since the last look: takes every table key whose
    /// count did not move since then out of the kernel's table, and remembers the counts of
    /// the rest. `raw` is a reading of the table just made (without what this holds).
    pub fn age(&mut self, maps: &ProfileMaps, raw: &RawProfile) -> usize {
        if self.looked.elapsed() < self.idle_after {
            return 0;
        }
        self.looked = Instant::now();
        let table = &raw.entries[..raw.keys_in_table.min(raw.entries.len())];
        let mut moved = 0;
        let mut counts = HashMap::with_capacity(table.len());
        for (key, value) in table {
            let idle = self.counts.get(key) == Some(&value.count);
            if !idle || !self.room_for(key) {
                counts.insert(*key, value.count);
                continue;
            }
            let Some(taken) = maps.take(key) else {
                counts.insert(*key, value.count);
                continue;
            };
            if key.stack != NO_STACK {
                if let Some(frames) = raw.stacks.get(&key.stack) {
                    self.stacks.insert(key.stack, *frames);
                }
            }
            match self.retired.get_mut(key) {
                Some(kept) => add_batch(kept, &taken),
                None => {
                    self.retired.insert(*key, taken);
                }
            }
            moved += 1;
        }
        self.counts = counts;
        moved
    }

    fn room_for(&mut self, key: &ProfileKey) -> bool {
        if self.retired.len() < RETIRED_MAX || self.retired.contains_key(key) {
            return true;
        }
        if !self.full_said {
            self.full_said = true;
            log::warn!(
                "lock profile: {RETIRED_MAX} aggregates aged out of the kernel's table are kept; \
                 no more are moved, so the table may fill (its drops are counted); raise \
                 --profile-entries or restart the agent to start afresh"
            );
        }
        false
    }

    /// `raw` with the aggregates held here added back (to the same key's, or as their own).
    pub fn add_to(&self, raw: &mut RawProfile) {
        if self.retired.is_empty() {
            return;
        }
        add_aggregates(&mut raw.entries, self.retired.iter().map(|(k, v)| (*k, *v)));
        for (hash, frames) in &self.stacks {
            raw.stacks.entry(*hash).or_insert(*frames);
        }
    }
}
