//! Feeding the engine from the live kernel.
//!
//! Outside record mode the kernel streams only what matters (slow waits, long holds, their
//! follow-ups, anomalies), so the engine would not see a wait still in progress. Two sources
//! complete the picture, both as ordinary events so the engine stays the same one replay uses:
//! - a streamed slow acquisition carries its start time: the `mmap_lock_start` it implies is
//!   applied first if the engine has not seen it; a long hold's release carries its acquisition
//!   time, likewise;
//! - a periodic snapshot of the kernel's per-task map shows waits and holds in progress; those
//!   past the streaming thresholds (whose ends the kernel will therefore stream) are applied
//!   with their real start times;
//! - in the default mode nothing sees an uncontended `mmap_lock` acquisition, so the read
//!   holders a contended lock waits for are inferred at each snapshot (the rwsem owner word's
//!   last reader, else threads whose kernel stack is inside a function that holds the lock for
//!   read), labelled as inferred, and replaced by the next snapshot's inference.

use std::collections::{BTreeMap, BTreeSet};

use tracer_common::{lock_type, mode, TaskState};

use crate::{
    decode::Decoded,
    detect::{Alert, Thresholds},
    diagnose::procfs,
    engine::Engine,
    event::{Addr, Event, EventKind, LockMode},
    model::Blocked,
};

const HINT_EVIDENCE: &str = "the rwsem owner word names it as the last reader to take the lock";
const HINT_AND_STACK_EVIDENCE: &str =
    "the rwsem owner word names it as the last reader, and its kernel stack is inside a function that holds mmap_lock for read";
const STACK_EVIDENCE: &str = "its kernel stack is inside a function that holds mmap_lock for read";

pub struct LiveFeed {
    engine: Engine,
    wait_threshold_ns: u64,
    hold_threshold_ns: u64,
}

/// The process of thread `tid`, when it still exists.
fn tgid_of(tid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{tid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Tgid:"))
        .and_then(|v| v.trim().parse().ok())
}

fn comm_of(tid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{tid}/comm"))
        .ok()
        .map(|s| s.trim_end().to_owned())
}

/// CLOCK_MONOTONIC now, the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

impl LiveFeed {
    pub fn new(thresholds: Thresholds, wait_threshold_ns: u64, hold_threshold_ns: u64) -> Self {
        Self {
            engine: Engine::new(thresholds),
            wait_threshold_ns,
            hold_threshold_ns,
        }
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    fn waiting_on(&self, tid: u32, mm: Addr) -> bool {
        matches!(
            self.engine.model().task(tid).and_then(|t| t.blocked.as_ref()),
            Some(Blocked::MmapLock { mm: m, .. }) if *m == mm
        )
    }

    fn holding(&self, tid: u32, mm: Addr) -> bool {
        self.engine
            .model()
            .task(tid)
            .is_some_and(|t| t.holds.contains_key(&mm))
    }

    fn known_owner(&self, mm: Addr) -> Option<u32> {
        self.engine
            .model()
            .mm_locks
            .get(&mm)
            .and_then(|l| l.owner_pid)
    }

    /// Whether the engine already reflects `implied` (so applying it again would be wrong).
    fn reflects(&self, implied: &Event) -> bool {
        let blocked = self
            .engine
            .model()
            .task(implied.tid)
            .and_then(|t| t.blocked.as_ref());
        match &implied.kind {
            EventKind::MmapLockStart { mm, .. } => self.waiting_on(implied.tid, *mm),
            EventKind::MmapLockAcquire { mm, .. } => self.holding(implied.tid, *mm),
            EventKind::LockWaitBegin { lock, .. } => {
                matches!(blocked, Some(Blocked::KernelLock { lock: l, .. }) if l == lock)
            }
            EventKind::UffdWaitBegin { .. } => matches!(blocked, Some(Blocked::Uffd { .. })),
            _ => false,
        }
    }

    /// Applies one streamed record, after the earlier event it implies when the engine has not
    /// seen that one.
    pub fn on_record(&mut self, d: &Decoded) -> Vec<Alert> {
        let mut alerts = Vec::new();
        if let Some(implied) = &d.implied {
            if !self.reflects(implied) {
                alerts.extend(self.engine.apply(implied));
            }
        }
        alerts.extend(self.engine.apply(&d.event));
        alerts
    }

    /// Applies what a snapshot of the kernel's per-task map shows at `now_ns`, then runs the
    /// timed detectors at that time.
    pub fn on_snapshot(&mut self, states: &[(u32, TaskState)], now_ns: u64) -> Vec<Alert> {
        let mut alerts = Vec::new();
        for (tid, st) in states {
            let lock_mode = |m: u8| LockMode::from_write(m == mode::WRITE);
            let base = |ts_ns, kind| Event {
                ts_ns,
                tid: *tid,
                pid: st.tgid,
                comm: comm_of(*tid),
                kind,
            };
            for h in st.holds.iter().filter(|h| h.mm != 0) {
                let mm = Addr(h.mm);
                // Past the hold threshold the kernel will stream this hold's release.
                if now_ns.saturating_sub(h.since_ns) >= self.hold_threshold_ns
                    && !self.holding(*tid, mm)
                {
                    let ev = base(
                        h.since_ns,
                        EventKind::MmapLockAcquire {
                            mm,
                            mode: lock_mode(h.mode),
                            success: true,
                            mm_pid: self.known_owner(mm),
                        },
                    );
                    alerts.extend(self.engine.apply(&ev));
                }
            }
            let mm = Addr(st.wait_mm);
            // Past the wait threshold the kernel will stream this attempt's end.
            if st.wait_mm != 0
                && now_ns.saturating_sub(st.wait_since_ns) >= self.wait_threshold_ns
                && !self.waiting_on(*tid, mm)
            {
                let ev = base(
                    st.wait_since_ns,
                    EventKind::MmapLockStart {
                        mm,
                        mode: lock_mode(st.wait_mode),
                        mm_pid: self.known_owner(mm),
                    },
                );
                alerts.extend(self.engine.apply(&ev));
            }
            // A contended sleeping lock past the wait threshold: its end will be streamed.
            // The contended rwsem of an mmap_lock attempt is that attempt: already applied.
            let mmap_attempt = st.wait_mm != 0
                && matches!(st.lock_type, lock_type::RWSEM_READ | lock_type::RWSEM_WRITE);
            if st.lock != 0
                && !mmap_attempt
                && now_ns.saturating_sub(st.lock_since_ns) >= self.wait_threshold_ns
                && !matches!(
                    self.engine.model().task(*tid).and_then(|t| t.blocked.as_ref()),
                    Some(Blocked::KernelLock { lock, .. }) if lock.0 == st.lock
                )
            {
                if let Ok(lock_type) = crate::decode::lock_type_of(st.lock_type) {
                    let ev = base(
                        st.lock_since_ns,
                        EventKind::LockWaitBegin {
                            lock: Addr(st.lock),
                            lock_type,
                            owner_tid: (st.lock_owner != 0).then_some(st.lock_owner),
                            mm: None,
                        },
                    );
                    alerts.extend(self.engine.apply(&ev));
                }
            }
        }
        self.infer_read_holders(states, now_ns);
        alerts.extend(self.uffd_waits_ended(now_ns));
        alerts.extend(self.engine.advance_to(now_ns));
        alerts
    }

    /// Infers the read holders of every contended `mmap_lock` whose holders nobody saw
    /// acquiring it, and drops the inference of locks nobody waits for any more.
    fn infer_read_holders(&mut self, states: &[(u32, TaskState)], now_ns: u64) {
        // The last reader named by the owner word when each waiter began to wait.
        let mut hints: BTreeMap<Addr, BTreeSet<u32>> = BTreeMap::new();
        for (tid, st) in states {
            if st.wait_mm != 0 && st.lock_owner_reader != 0 && ![0, *tid].contains(&st.lock_owner) {
                hints
                    .entry(Addr(st.wait_mm))
                    .or_default()
                    .insert(st.lock_owner);
            }
        }
        let model = self.engine.model();
        let mut work: Vec<(Addr, Vec<u32>)> = Vec::new();
        for (mm, lock) in &model.mm_locks {
            let waited_for = lock.waiters.values().any(|(m, _)| *m == LockMode::Write)
                || !lock.waiters.is_empty() && lock.writer.is_none();
            if !waited_for || !lock.readers.is_empty() || lock.writer.is_some() {
                if !lock.inferred_readers.is_empty() {
                    work.push((*mm, Vec::new()));
                }
                continue;
            }
            let waiters: Vec<u32> = lock.waiters.keys().copied().collect();
            work.push((*mm, waiters));
        }
        for (mm, waiters) in work {
            let readers = if waiters.is_empty() {
                Vec::new()
            } else {
                self.read_holders_of(mm, &waiters, hints.get(&mm))
            };
            self.engine.infer_readers(mm, &readers, now_ns);
        }
    }

    /// Candidates for the read holders of `mm`, each with its evidence.
    fn read_holders_of(
        &self,
        mm: Addr,
        waiters: &[u32],
        hints: Option<&BTreeSet<u32>>,
    ) -> Vec<(u32, u32, Option<String>, &'static str)> {
        let in_holder_frame = |pid: u32, tid: u32| {
            procfs::stack(pid, tid)
                .iter()
                .any(|f| procfs::READ_HOLDER_FRAMES.contains(&f.as_str()))
        };
        let mut out = Vec::new();
        for &h in hints.into_iter().flatten() {
            if waiters.contains(&h) {
                continue;
            }
            let Some(pid) = tgid_of(h) else {
                continue; // gone: it holds nothing
            };
            let why = if in_holder_frame(pid, h) {
                HINT_AND_STACK_EVIDENCE
            } else {
                HINT_EVIDENCE
            };
            out.push((h, pid, comm_of(h), why));
        }
        if !out.is_empty() {
            return out;
        }
        // No hint: threads of the processes involved whose stack shows a read hold.
        let model = self.engine.model();
        let pids: BTreeSet<u32> = model
            .mm_locks
            .get(&mm)
            .and_then(|l| l.owner_pid)
            .into_iter()
            .chain(waiters.iter().filter_map(|w| model.task(*w).map(|t| t.pid)))
            .collect();
        for pid in pids {
            for tid in procfs::threads(pid) {
                if !waiters.contains(&tid) && in_holder_frame(pid, tid) {
                    out.push((tid, pid, comm_of(tid), STACK_EVIDENCE));
                }
            }
        }
        out
    }

    /// A signal, not a handler, can end a userfaultfd wait, and then no wake-up marks its end:
    /// ask the scheduler (`wchan`) whether each such waiter still sleeps in handle_userfault.
    fn uffd_waits_ended(&mut self, now_ns: u64) -> Vec<Alert> {
        let ended: Vec<(u32, u32, Addr)> = self
            .engine
            .model()
            .blocked
            .iter()
            .filter_map(|&tid| {
                let t = self.engine.model().task(tid)?;
                match t.blocked {
                    Some(Blocked::Uffd { uffd, .. }) => Some((tid, t.pid, uffd)),
                    _ => None,
                }
            })
            .filter(|(tid, _, _)| {
                std::fs::read_to_string(format!("/proc/{tid}/wchan"))
                    .is_ok_and(|w| w.trim() != "handle_userfault")
            })
            .collect();
        let mut alerts = Vec::new();
        for (tid, pid, uffd) in ended {
            alerts.extend(self.engine.apply(&Event {
                ts_ns: now_ns,
                tid,
                pid,
                comm: None,
                kind: EventKind::UffdWaitEnd { uffd },
            }));
        }
        alerts
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::Reasons;
    use tracer_common::{reason, Hold, HOLD_SLOTS};

    const MS: u64 = 1_000_000;

    fn state(tgid: u32, wait: Option<(u64, u8, u64)>, holds: &[(u64, u8, u64)]) -> TaskState {
        let mut st = TaskState {
            tgid,
            ..Default::default()
        };
        if let Some((mm, m, since)) = wait {
            st.wait_mm = mm;
            st.wait_mode = m;
            st.wait_since_ns = since;
        }
        for (i, (mm, m, since)) in holds.iter().enumerate().take(HOLD_SLOTS) {
            st.holds[i] = Hold {
                mm: *mm,
                since_ns: *since,
                mode: *m,
                depth: 1,
                ..Default::default()
            };
        }
        st
    }

    #[test]
    fn a_snapshot_of_a_convoy_in_progress_builds_its_graph() {
        let mut feed = LiveFeed::new(Thresholds::default(), MS, 20 * MS);
        let snap = [
            (11, state(10, None, &[(0xa, mode::READ, 0)])),
            (12, state(10, Some((0xa, mode::WRITE, 100 * MS)), &[])),
            (13, state(10, Some((0xa, mode::READ, 200 * MS)), &[])),
            // Too young to have been streamed: left out, its end will not be streamed either.
            (14, state(10, Some((0xa, mode::READ, 1_499_900_000)), &[])),
        ];
        let alerts = feed.on_snapshot(&snap, 1_500 * MS);
        let graph = feed.engine().graph();
        let edges: Vec<(u32, u32)> = graph.all_edges().map(|e| (e.from, e.to)).collect();
        assert_eq!(edges, vec![(12, 11), (13, 12)]);
        let kinds: Vec<&str> = alerts.iter().map(|a| a.kind.as_str()).collect();
        assert_eq!(
            kinds,
            vec!["stall", "rwr_inversion", "stall"],
            "by tid: {alerts:#?}"
        );
    }

    #[test]
    fn a_streamed_slow_acquisition_implies_its_start() {
        let mut feed = LiveFeed::new(Thresholds::default(), MS, 20 * MS);
        let d = Decoded {
            event: Event {
                ts_ns: 50 * MS,
                tid: 5,
                pid: 5,
                comm: None,
                kind: EventKind::MmapLockAcquire {
                    mm: Addr(0xa),
                    mode: LockMode::Write,
                    success: true,
                    mm_pid: None,
                },
            },
            reasons: Reasons(reason::SLOW_WAIT),
            since_ns: Some(10 * MS),
            implied: Some(Event {
                ts_ns: 10 * MS,
                tid: 5,
                pid: 5,
                comm: None,
                kind: EventKind::MmapLockStart {
                    mm: Addr(0xa),
                    mode: LockMode::Write,
                    mm_pid: None,
                },
            }),
        };
        feed.on_record(&d);
        assert_eq!(
            feed.engine().events(),
            2,
            "the implied start, then the acquisition"
        );
        let hold = feed
            .engine()
            .model()
            .task(5)
            .and_then(|t| t.holds.get(&Addr(0xa)).copied());
        assert_eq!(hold.map(|h| h.mode), Some(LockMode::Write));
    }
}
