//! A small bounded cache of facts looked up per process in /proc (cgroup, network namespace).
//!
//! Entries expire after a time to live, so a reused pid or a process that moved to another
//! cgroup is looked up again; the size is bounded so a host that churns through processes
//! cannot grow the agent.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

pub struct PidCache<V> {
    entries: HashMap<u32, (Instant, V)>,
    capacity: usize,
    ttl: Duration,
}

impl<V: Clone> PidCache<V> {
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        Self {
            entries: HashMap::new(),
            capacity: capacity.max(1),
            ttl,
        }
    }

    /// The cached value for `pid`, or `lookup(pid)` (then cached).
    pub fn get_or_insert_with(&mut self, pid: u32, lookup: impl FnOnce(u32) -> V) -> V {
        let now = Instant::now();
        if let Some((at, v)) = self.entries.get(&pid) {
            if now.duration_since(*at) < self.ttl {
                return v.clone();
            }
        }
        let v = lookup(pid);
        if self.entries.len() >= self.capacity && !self.entries.contains_key(&pid) {
            let ttl = self.ttl;
            self.entries
                .retain(|_, (at, _)| now.duration_since(*at) < ttl);
            // Still full of fresh entries: start over rather than track an eviction order; a
            // miss costs one small /proc read.
            if self.entries.len() >= self.capacity {
                self.entries.clear();
            }
        }
        self.entries.insert(pid, (now, v.clone()));
        v
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hit_does_not_look_up_again_and_the_size_stays_bounded() {
        let mut c = PidCache::new(3, Duration::from_secs(60));
        let mut lookups = 0;
        for _ in 0..2 {
            c.get_or_insert_with(1, |p| {
                lookups += 1;
                p * 10
            });
        }
        assert_eq!(lookups, 1);
        for pid in 2..10 {
            assert_eq!(c.get_or_insert_with(pid, |p| p * 10), pid * 10);
            assert!(c.len() <= 3, "bounded: {}", c.len());
        }
    }

    #[test]
    fn an_expired_entry_is_looked_up_again() {
        let mut c = PidCache::new(8, Duration::ZERO);
        assert_eq!(c.get_or_insert_with(1, |_| "old"), "old");
        assert_eq!(c.get_or_insert_with(1, |_| "new"), "new");
    }
}
