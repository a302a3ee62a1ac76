//! The lock model: who holds which `mmap_lock`, who is blocked on what, who serves which
//! userfaultfd. Fed `Event`s in order; knows nothing of BPF, files or HTTP.
//!
//! Evidence can be missing (lost events, a trace started mid-way), so the model only believes
//! what events prove, and lets later evidence override earlier beliefs:
//! - a successful write acquisition proves nobody else holds that lock;
//! - any event from a task other than one that starts a wait proves the task is running, so it
//!   is not blocked on anything;
//! - a release by a task that holds nothing there is a non-owner release
//!   (`mmap_read_unlock_non_owner`) or the end of a hold taken before the trace began;
//! - an exited task holds and waits for nothing;
//! - an mm's identity ends with its process: once no task of the process that owned an mm is
//!   left, a different process using that address owns a fresh lock table (the kernel reuses
//!   freed `mm_struct`s), so the dead process's waiters, holders and queue are not inherited.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::Serialize;

use crate::{
    event::{Addr, Event, EventKind, LockMode, LockType, UserLockKind},
    exposure::{AddrKind, Exposure, Shown},
};

mod contention;
mod corrections;
mod mmap_lock;
mod uffd;
mod user_lock;

pub type Tid = u32;

/// What a blocked task waits for. `A` is how addresses are held: `Addr` in the model, as a
/// view shows them (`exposure::Shown`) in views.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Blocked<A = Addr> {
    /// An `mmap_lock` acquisition in flight.
    MmapLock {
        mm: A,
        mode: LockMode,
        since_ns: u64,
    },
    /// A contended kernel lock (`lock:contention_begin`).
    KernelLock {
        lock: A,
        lock_type: LockType,
        owner: Option<Tid>,
        since_ns: u64,
    },
    /// A fault waiting for a userfaultfd handler.
    Uffd { uffd: A, addr: A, since_ns: u64 },
    /// A futex sleep on a user-space lock of process `pid`: `lock` is where the lock starts
    /// (its identity), `futex` the word slept on (both user addresses of `pid`).
    UserLock {
        lock: A,
        futex: A,
        pid: u32,
        lock_type: UserLockKind,
        /// Its owner when found: exactly (a PI futex) or inferred from a library's layout.
        owner: Option<Tid>,
        exact: bool,
        /// What the owner was read from, and what was checked.
        #[serde(skip_serializing_if = "Option::is_none")]
        evidence: Option<String>,
        /// The lock's symbol, or file and offset, when it lies in a mapped file.
        #[serde(skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        since_ns: u64,
    },
}

impl<A> Blocked<A> {
    pub fn since_ns(&self) -> u64 {
        match self {
            Self::MmapLock { since_ns, .. }
            | Self::KernelLock { since_ns, .. }
            | Self::Uffd { since_ns, .. }
            | Self::UserLock { since_ns, .. } => *since_ns,
        }
    }
}

impl Blocked {
    /// As `exposure` shows it.
    pub fn shown(&self, exposure: &Exposure) -> Blocked<Shown> {
        match self.clone() {
            Self::MmapLock { mm, mode, since_ns } => Blocked::MmapLock {
                mm: exposure.show(AddrKind::Mm, mm),
                mode,
                since_ns,
            },
            Self::KernelLock {
                lock,
                lock_type,
                owner,
                since_ns,
            } => Blocked::KernelLock {
                lock: exposure.show(AddrKind::Lock, lock),
                lock_type,
                owner,
                since_ns,
            },
            Self::Uffd {
                uffd,
                addr,
                since_ns,
            } => Blocked::Uffd {
                uffd: exposure.show(AddrKind::Uffd, uffd),
                addr: exposure.show(AddrKind::User, addr),
                since_ns,
            },
            Self::UserLock {
                lock,
                futex,
                pid,
                lock_type,
                owner,
                exact,
                evidence,
                name,
                since_ns,
            } => Blocked::UserLock {
                lock: exposure.show(AddrKind::User, lock),
                futex: exposure.show(AddrKind::User, futex),
                pid,
                lock_type,
                owner,
                exact,
                evidence,
                name,
                since_ns,
            },
        }
    }
}

/// How the model learnt of a hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HoldSeen {
    /// The task was seen acquiring it (an `mmap_lock_acquire`, or a snapshot of one).
    Acquired,
    /// A contended waiter read the rwsem's owner word and found this task there with the
    /// writer bit clear of the reader flag: exact kernel evidence that it held the lock for
    /// write at that moment, though its acquisition was not seen (the default mode does not
    /// hook uncontended acquisitions). `since_ns` is when it was first seen holding.
    OwnerWord,
}

/// One `mmap_lock` hold of a task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hold {
    pub mode: LockMode,
    pub since_ns: u64,
    /// Nested read holds (recursive read).
    pub depth: u32,
    pub seen: HoldSeen,
}

#[derive(Clone, Debug)]
pub struct Task {
    pub tid: Tid,
    pub pid: u32,
    pub comm: Option<String>,
    pub last_ns: u64,
    pub blocked: Option<Blocked>,
    /// mm → hold.
    pub holds: BTreeMap<Addr, Hold>,
}

/// The state of one `mmap_lock`.
#[derive(Clone, Debug, Default)]
pub struct MmLock {
    /// The process owning the mm, when known.
    pub owner_pid: Option<u32>,
    /// That process is gone: the next claim by another process is a reused address.
    pub owner_gone: bool,
    pub readers: BTreeMap<Tid, u64>,
    pub writer: Option<(Tid, u64)>,
    /// Tasks blocked acquiring it: tid → (mode, since).
    pub waiters: BTreeMap<Tid, (LockMode, u64)>,
    /// Read holders inferred, not seen acquiring (the default mode does not hook uncontended
    /// acquisitions): tid → the evidence. Replaced wholesale by each inference, dropped by any
    /// real evidence about the lock.
    pub inferred_readers: BTreeMap<Tid, String>,
    /// When the lock was last seen granted to a task: an owner word read before then is stale.
    pub granted_ns: u64,
    /// The waiting writers by (since, tid): queue order, so "writers queued before me" is a
    /// range query rather than a scan of every waiter (convoys have thousands of readers).
    waiting_writers: BTreeSet<(u64, Tid)>,
}

impl MmLock {
    fn is_idle(&self) -> bool {
        self.readers.is_empty()
            && self.writer.is_none()
            && self.waiters.is_empty()
            && self.inferred_readers.is_empty()
    }

    /// Waiting writers that queued before `since` (rwsem FIFO order).
    pub fn writers_queued_before(&self, since: u64) -> impl Iterator<Item = (Tid, u64)> + '_ {
        self.waiting_writers
            .range(..(since, 0))
            .map(|&(s, t)| (t, s))
    }

    fn add_waiter(&mut self, tid: Tid, mode: LockMode, since: u64) {
        self.remove_waiter(tid);
        self.waiters.insert(tid, (mode, since));
        if mode == LockMode::Write {
            self.waiting_writers.insert((since, tid));
        }
    }

    fn remove_waiter(&mut self, tid: Tid) {
        if let Some((mode, since)) = self.waiters.remove(&tid) {
            if mode == LockMode::Write {
                self.waiting_writers.remove(&(since, tid));
            }
        }
    }
}

/// A userfaultfd context: which tasks serve it.
#[derive(Clone, Debug, Default)]
pub struct UffdCtx {
    /// Tasks that resolved faults on it (COPY, ZEROPAGE, WAKE, …): the handlers.
    pub resolvers: BTreeSet<Tid>,
    /// Tasks that only set it up (API, REGISTER, UNREGISTER): handlers when no resolver is known.
    pub setup: BTreeSet<Tid>,
    /// Processes (their leader tid) that hold a descriptor of it, from a scan of open files
    /// rather than an ioctl: the handlers when no ioctl on it was seen, as when it was set up
    /// before the agent attached its ioctl hooks.
    pub holders: BTreeSet<Tid>,
}

impl UffdCtx {
    pub fn handlers(&self) -> &BTreeSet<Tid> {
        if !self.resolvers.is_empty() {
            &self.resolvers
        } else if !self.setup.is_empty() {
            &self.setup
        } else {
            &self.holders
        }
    }

    /// Whether `tid` serves, set up or holds this context.
    fn involves(&self, tid: Tid) -> bool {
        self.resolvers.contains(&tid) || self.setup.contains(&tid) || self.holders.contains(&tid)
    }
}

/// Something the model noticed at the moment of an event (not a timed condition).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notice {
    /// `tid` asks for read on `mm`, whose lock it already holds for read.
    RecursiveRead { tid: Tid, mm: Addr, ts_ns: u64 },
}

#[derive(Default)]
pub struct Model {
    pub tasks: HashMap<Tid, Task>,
    pub mm_locks: HashMap<Addr, MmLock>,
    pub uffds: HashMap<Addr, UffdCtx>,
    /// Blocked tasks, ordered for deterministic output.
    pub blocked: BTreeSet<Tid>,
    /// Evidence the model had to repair (lost or missing events).
    pub repairs: u64,
    /// Tasks whose state may be wrong because records were lost after the model last had
    /// evidence about them: until their own next event, or a snapshot, confirms it.
    pub unknown: BTreeSet<Tid>,
    /// Tasks known per process (pid → count): a process with none left is gone for the model.
    procs: HashMap<u32, u32>,
    /// Who was last seen taking each user-space lock through the kernel (`user_lock.rs`).
    user_lock_takers: user_lock::Takers,
}

impl Model {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn task(&self, tid: Tid) -> Option<&Task> {
        self.tasks.get(&tid)
    }

    /// `comm` (tid, pid P) for human text.
    pub fn describe(&self, tid: Tid) -> String {
        match self.tasks.get(&tid) {
            Some(t) => format!(
                "{} ({}, pid {})",
                tid,
                t.comm.as_deref().unwrap_or("?"),
                t.pid
            ),
            None => format!("{tid}"),
        }
    }

    /// Whether any task of process `pid` is known.
    pub fn process_known(&self, pid: u32) -> bool {
        self.procs.get(&pid).is_some_and(|&n| n > 0)
    }

    /// The processes that have tasks in the model.
    pub fn pids(&self) -> impl Iterator<Item = u32> + '_ {
        self.procs.keys().copied()
    }

    fn count_proc(&mut self, pid: u32, delta: i64) {
        let n = self.procs.entry(pid).or_default();
        *n = (i64::from(*n) + delta).max(0) as u32;
        if *n == 0 {
            self.procs.remove(&pid);
        }
    }

    fn touch(&mut self, ev: &Event) {
        self.touch_task(ev.tid, ev.pid, ev.comm.as_deref(), ev.ts_ns);
    }

    /// Makes `tid` known as a task of `pid` at `ts_ns` (creating it, or updating its process,
    /// name and last activity), without changing what it holds or waits for.
    pub fn touch_task(&mut self, tid: Tid, pid: u32, comm: Option<&str>, ts_ns: u64) {
        let old_pid = match self.tasks.get_mut(&tid) {
            Some(t) => {
                let old = t.pid;
                t.pid = pid;
                t.last_ns = t.last_ns.max(ts_ns);
                if let Some(c) = comm {
                    if t.comm.as_deref() != Some(c) {
                        t.comm = Some(c.to_owned());
                    }
                }
                Some(old)
            }
            None => {
                self.tasks.insert(
                    tid,
                    Task {
                        tid,
                        pid,
                        comm: comm.map(str::to_owned),
                        last_ns: ts_ns,
                        blocked: None,
                        holds: BTreeMap::new(),
                    },
                );
                None
            }
        };
        // A thread that execs becomes its group's leader: it moves process.
        if old_pid != Some(pid) {
            if let Some(old) = old_pid {
                self.count_proc(old, -1);
            }
            self.count_proc(pid, 1);
        }
    }

    /// What `tid` waits for, when it is known and blocked.
    pub fn blocked(&self, tid: Tid) -> Option<&Blocked> {
        self.tasks.get(&tid).and_then(|t| t.blocked.as_ref())
    }

    /// The task is running: it is blocked on nothing.
    fn unblock(&mut self, tid: Tid) {
        let Some(task) = self.tasks.get_mut(&tid) else {
            return;
        };
        if let Some(Blocked::MmapLock { mm, .. }) = task.blocked.take() {
            if let Some(l) = self.mm_locks.get_mut(&mm) {
                l.remove_waiter(tid);
            }
            self.gc_mm(mm);
        }
        self.blocked.remove(&tid);
    }

    fn block(&mut self, tid: Tid, b: Blocked) {
        self.unblock(tid);
        if let Blocked::MmapLock { mm, mode, since_ns } = b {
            self.mm_locks
                .entry(mm)
                .or_default()
                .add_waiter(tid, mode, since_ns);
        }
        if let Some(t) = self.tasks.get_mut(&tid) {
            t.blocked = Some(b);
        }
        self.blocked.insert(tid);
    }

    fn gc_mm(&mut self, mm: Addr) {
        if self.mm_locks.get(&mm).is_some_and(MmLock::is_idle) {
            self.mm_locks.remove(&mm);
        }
    }

    /// Applies one event; returns what it noticed. Each family of events has its own file;
    /// corrections (a live source's conclusions from snapshots) are not a task's activity, so
    /// they neither touch the task nor count as evidence about it.
    pub fn apply(&mut self, ev: &Event) -> Option<Notice> {
        if self.correct(ev) {
            return None;
        }
        self.touch(ev);
        // The task's own record is fresh evidence about it.
        self.unknown.remove(&ev.tid);
        match &ev.kind {
            EventKind::MmapLockStart { .. }
            | EventKind::MmapLockAcquire { .. }
            | EventKind::MmapLockRelease { .. } => return self.apply_mmap_lock(ev),
            EventKind::LockWaitBegin { .. } | EventKind::LockWaitEnd { .. } => {
                self.apply_contention(ev)
            }
            EventKind::UffdWaitBegin { .. }
            | EventKind::UffdWaitEnd { .. }
            | EventKind::UffdIoctlBegin { .. }
            | EventKind::UffdIoctlEnd { .. }
            | EventKind::UffdHandlerSeen { .. }
            | EventKind::UffdHeld { .. } => self.apply_uffd(ev),
            // Faulting, the task runs: it waits for nothing.
            EventKind::FutexWaitBegin { .. } | EventKind::FutexWaitEnd { .. } => {
                self.apply_user_lock(ev)
            }
            EventKind::PageFault { .. } => self.unblock(ev.tid),
            EventKind::TaskExit {} => self.exit(ev.tid, true),
            // Handled by `correct`.
            EventKind::Lost { .. }
            | EventKind::WaitEnded {}
            | EventKind::HoldEnded { .. }
            | EventKind::TaskGone {}
            | EventKind::ProcessGone {}
            | EventKind::ReadHoldersInferred { .. }
            | EventKind::Confirmed {}
            | EventKind::Snapshot {}
            | EventKind::Journal {}
            | EventKind::LockProfile { .. } => {}
        }
        None
    }

    /// Removes `tid` with everything it held or waited for. `exited`: it really exited (not
    /// merely forgotten), so a process left without tasks is gone.
    fn exit(&mut self, tid: Tid, exited: bool) {
        self.unblock(tid);
        self.unknown.remove(&tid);
        let inferred: Vec<Addr> = self
            .mm_locks
            .iter_mut()
            .filter_map(|(mm, l)| l.inferred_readers.remove(&tid).map(|_| *mm))
            .collect();
        for mm in inferred {
            self.gc_mm(mm);
        }
        if exited {
            self.user_lock_takers.forget_task(tid);
        }
        if let Some(task) = self.tasks.remove(&tid) {
            self.count_proc(task.pid, -1);
            if exited && !self.process_known(task.pid) {
                self.owner_gone(task.pid);
            }
            for mm in task.holds.keys() {
                if let Some(l) = self.mm_locks.get_mut(mm) {
                    l.readers.remove(&tid);
                    if l.writer.is_some_and(|(w, _)| w == tid) {
                        l.writer = None;
                    }
                }
                self.gc_mm(*mm);
            }
        }
        for ctx in self.uffds.values_mut() {
            ctx.resolvers.remove(&tid);
            ctx.setup.remove(&tid);
            ctx.holders.remove(&tid);
        }
        self.gc_uffds();
    }

    /// Whether a task carries nothing the graph needs: not blocked, holding nothing, serving
    /// no userfaultfd. Such a task is only a name, and can be forgotten.
    pub fn is_idle(&self, tid: Tid) -> bool {
        self.tasks
            .get(&tid)
            .is_some_and(|t| t.blocked.is_none() && t.holds.is_empty())
            && !self.uffds.values().any(|c| c.involves(tid))
    }
}
