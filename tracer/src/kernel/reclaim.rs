//! Reclaiming kernel per-task entries whose task is gone from the host.
//!
//! The exit program deletes a task's entry, but a task can still run probed code after its
//! exit hook (on 6.18, `sched_process_exit` fires before `exit_mm`, whose `mmap_lock` can be
//! contended), and that re-creates the entry with nothing left to delete it. Under process
//! churn such entries would fill the bounded map and leave new tasks untracked. Every few
//! snapshots, entries of tids that were already gone from /proc one round earlier are deleted:
//! a tid reused in between has a /proc entry again and is left alone.

use std::collections::HashSet;

/// Decides, snapshot by snapshot, which kernel entries to delete.
pub struct TaskEntryReclaimer {
    /// Check once every this many snapshots (a /proc lookup per entry is not free).
    every: u32,
    tick: u32,
    /// Tids whose entry outlived their task at the last check.
    suspects: HashSet<u32>,
    reclaimed: u64,
}

impl TaskEntryReclaimer {
    pub fn new(every: u32) -> Self {
        Self {
            every: every.max(1),
            tick: 0,
            suspects: HashSet::new(),
            reclaimed: 0,
        }
    }

    /// The entries (tids of the map at this snapshot) to delete now: gone from the host at
    /// this check and at the one before.
    pub fn due(
        &mut self,
        tids: impl IntoIterator<Item = u32>,
        alive: impl Fn(u32) -> bool,
    ) -> Vec<u32> {
        self.tick = self.tick.wrapping_add(1);
        if !self.tick.is_multiple_of(self.every) {
            return Vec::new();
        }
        let gone: HashSet<u32> = tids.into_iter().filter(|&t| !alive(t)).collect();
        let (due, fresh): (Vec<u32>, Vec<u32>) =
            gone.into_iter().partition(|t| self.suspects.contains(t));
        self.suspects = fresh.into_iter().collect();
        due
    }

    /// Notes how many entries were really deleted.
    pub fn deleted(&mut self, n: usize) {
        self.reclaimed += n as u64;
    }

    /// Entries deleted since the agent started.
    pub fn reclaimed(&self) -> u64 {
        self.reclaimed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_is_deleted_only_after_two_checks_found_its_task_gone() {
        let mut r = TaskEntryReclaimer::new(2);
        let alive = |t: u32| t < 100;
        // Checks run on every second snapshot.
        assert!(r.due([5, 200, 300], alive).is_empty());
        assert!(
            r.due([5, 200, 300], alive).is_empty(),
            "first check: suspects only"
        );
        assert!(r.due([5, 200, 300], alive).is_empty(), "not a check");
        let mut due = r.due([5, 200, 300], alive);
        due.sort_unstable();
        assert_eq!(due, vec![200, 300]);
    }

    #[test]
    fn a_tid_reused_between_two_checks_is_left_alone() {
        let mut r = TaskEntryReclaimer::new(1);
        assert!(r.due([200], |_| false).is_empty());
        assert!(r.due([200], |t| t == 200).is_empty(), "reused: alive again");
        assert!(
            r.due([200], |_| false).is_empty(),
            "a new suspect, not yet due"
        );
        assert_eq!(r.due([200], |_| false), vec![200]);
    }

    #[test]
    fn a_suspect_whose_entry_went_away_is_forgotten() {
        let mut r = TaskEntryReclaimer::new(1);
        assert!(r.due([200], |_| false).is_empty());
        assert!(r.due([], |_| false).is_empty());
        assert!(
            r.due([200], |_| false).is_empty(),
            "suspect again, from scratch"
        );
    }
}
