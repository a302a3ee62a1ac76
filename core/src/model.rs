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

use crate::event::{Addr, Event, EventKind, LockMode, LockType, UffdOp};

pub type Tid = u32;

/// What a blocked task waits for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Blocked {
    /// An `mmap_lock` acquisition in flight.
    MmapLock {
        mm: Addr,
        mode: LockMode,
        since_ns: u64,
    },
    /// A contended kernel lock (`lock:contention_begin`).
    KernelLock {
        lock: Addr,
        lock_type: LockType,
        owner: Option<Tid>,
        since_ns: u64,
    },
    /// A fault waiting for a userfaultfd handler.
    Uffd {
        uffd: Addr,
        addr: Addr,
        since_ns: u64,
    },
}

impl Blocked {
    pub fn since_ns(&self) -> u64 {
        match self {
            Self::MmapLock { since_ns, .. }
            | Self::KernelLock { since_ns, .. }
            | Self::Uffd { since_ns, .. } => *since_ns,
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
    pub inferred_readers: BTreeMap<Tid, &'static str>,
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

    /// Records who owns `mm`. A claim by another process while the recorded owner has no task
    /// left means the address was freed and reused: the new mm starts with a clean table.
    fn note_owner(&mut self, mm: Addr, ev_pid: u32, mm_pid: Option<u32>) {
        let claimed = mm_pid.unwrap_or(ev_pid);
        let reused = self
            .mm_locks
            .get(&mm)
            .is_some_and(|l| l.owner_gone && l.owner_pid != Some(claimed));
        if reused {
            self.forget_mm(mm);
        }
        let lock = self.mm_locks.entry(mm).or_default();
        if lock.owner_pid != Some(claimed) {
            lock.owner_gone = false;
        }
        lock.owner_pid = Some(claimed);
    }

    /// Process `pid` is gone: the mms it owned end with it (dropped now when unused).
    fn owner_gone(&mut self, pid: u32) {
        let owned: Vec<Addr> = self
            .mm_locks
            .iter_mut()
            .filter(|(_, l)| l.owner_pid == Some(pid))
            .map(|(mm, l)| {
                l.owner_gone = true;
                *mm
            })
            .collect();
        for mm in owned {
            self.gc_mm(mm);
        }
    }

    /// Drops `mm`'s lock table: its waiters wait for nothing known, its holders hold nothing.
    fn forget_mm(&mut self, mm: Addr) {
        let Some(lock) = self.mm_locks.remove(&mm) else {
            return;
        };
        let waiters = lock.waiters.keys();
        let holders = lock
            .readers
            .keys()
            .chain(lock.writer.as_ref().map(|(w, _)| w));
        for &tid in waiters.chain(holders) {
            self.repairs += 1;
            if let Some(t) = self.tasks.get_mut(&tid) {
                t.holds.remove(&mm);
                if matches!(t.blocked, Some(Blocked::MmapLock { mm: m, .. }) if m == mm) {
                    t.blocked = None;
                    self.blocked.remove(&tid);
                }
            }
        }
    }

    /// Drops `tid`'s hold on `mm` entirely (evidence says it is gone).
    fn drop_hold(&mut self, tid: Tid, mm: Addr) {
        if let Some(t) = self.tasks.get_mut(&tid) {
            t.holds.remove(&mm);
        }
        if let Some(l) = self.mm_locks.get_mut(&mm) {
            l.readers.remove(&tid);
            if l.writer.is_some_and(|(w, _)| w == tid) {
                l.writer = None;
            }
        }
    }

    /// Replaces the inferred read holders of `mm` with `readers` (tid, pid, comm, evidence).
    /// Tasks with a real hold on `mm` keep it and are not inferred again.
    pub fn infer_readers(
        &mut self,
        mm: Addr,
        readers: &[(Tid, u32, Option<String>, &'static str)],
        ts_ns: u64,
    ) {
        for (tid, pid, comm, _) in readers {
            self.touch_task(*tid, *pid, comm.as_deref(), ts_ns);
        }
        let lock = self.mm_locks.entry(mm).or_default();
        lock.inferred_readers = readers
            .iter()
            .filter(|(tid, ..)| !lock.readers.contains_key(tid))
            .map(|(tid, _, _, why)| (*tid, *why))
            .collect();
        self.gc_mm(mm);
    }

    /// Applies one event; returns what it noticed.
    pub fn apply(&mut self, ev: &Event) -> Option<Notice> {
        if let EventKind::Lost { .. } = ev.kind {
            self.lost();
            return None;
        }
        self.touch(ev);
        // The task's own record is fresh evidence about it.
        self.unknown.remove(&ev.tid);
        let tid = ev.tid;
        match &ev.kind {
            EventKind::MmapLockStart { mm, mode, mm_pid } => {
                self.note_owner(*mm, ev.pid, *mm_pid);
                let recursive = *mode == LockMode::Read
                    && self
                        .mm_locks
                        .get(mm)
                        .is_some_and(|l| l.readers.contains_key(&tid));
                self.block(
                    tid,
                    Blocked::MmapLock {
                        mm: *mm,
                        mode: *mode,
                        since_ns: ev.ts_ns,
                    },
                );
                if recursive {
                    return Some(Notice::RecursiveRead {
                        tid,
                        mm: *mm,
                        ts_ns: ev.ts_ns,
                    });
                }
            }
            EventKind::MmapLockAcquire {
                mm,
                mode,
                success,
                mm_pid,
            } => {
                self.unblock(tid);
                if *success {
                    self.note_owner(*mm, ev.pid, *mm_pid);
                    self.acquired(tid, *mm, *mode, ev.ts_ns);
                }
                self.gc_mm(*mm);
            }
            EventKind::MmapLockRelease { mm, mode, .. } => {
                self.unblock(tid);
                self.released(tid, *mm, *mode);
                self.gc_mm(*mm);
            }
            // The slow path of an mmap_lock attempt seen through lock contention (the default
            // mode's only view of it): an mmap_lock wait, unless an attempt is already known.
            EventKind::LockWaitBegin {
                lock_type: lock_type @ (LockType::RwsemRead | LockType::RwsemWrite),
                mm: Some(mm),
                owner_tid,
                ..
            } => {
                if let Some(w) = owner_tid.filter(|&w| w != tid && w != 0) {
                    self.owner_word_writer(w, *mm, ev.pid, ev.ts_ns);
                }
                let known = matches!(
                    self.blocked(tid),
                    Some(Blocked::MmapLock { mm: m, .. }) if m == mm
                );
                if !known {
                    self.block(
                        tid,
                        Blocked::MmapLock {
                            mm: *mm,
                            mode: LockMode::from_write(*lock_type == LockType::RwsemWrite),
                            since_ns: ev.ts_ns,
                        },
                    );
                }
            }
            EventKind::LockWaitEnd {
                mm: Some(mm), ret, ..
            } => {
                let ends_it = matches!(
                    self.blocked(tid),
                    Some(Blocked::MmapLock { mm: m, .. }) if m == mm
                );
                if ends_it {
                    self.unblock(tid);
                }
                if *ret == 0 {
                    self.granted_to(tid, *mm, ev.ts_ns);
                    self.gc_mm(*mm);
                }
            }
            EventKind::LockWaitBegin {
                lock,
                lock_type,
                owner_tid,
                ..
            } => {
                let nested_in_mmap = matches!(self.blocked(tid), Some(Blocked::MmapLock { .. }))
                    && matches!(lock_type, LockType::RwsemRead | LockType::RwsemWrite);
                // The rwsem slow path of an mmap_lock attempt reports its own contention: the
                // same wait, already modelled with better knowledge (holders, queue order).
                if !nested_in_mmap {
                    self.block(
                        tid,
                        Blocked::KernelLock {
                            lock: *lock,
                            lock_type: *lock_type,
                            owner: *owner_tid,
                            since_ns: ev.ts_ns,
                        },
                    );
                }
            }
            EventKind::LockWaitEnd { lock, .. } => {
                let ends_it = matches!(
                    self.blocked(tid),
                    Some(Blocked::KernelLock { lock: l, .. }) if l == lock
                );
                if ends_it {
                    self.unblock(tid);
                }
            }
            EventKind::UffdWaitBegin { uffd, addr } => {
                self.uffds.entry(*uffd).or_default();
                self.block(
                    tid,
                    Blocked::Uffd {
                        uffd: *uffd,
                        addr: *addr,
                        since_ns: ev.ts_ns,
                    },
                );
            }
            EventKind::UffdWaitEnd { .. } | EventKind::UffdIoctlEnd { .. } => self.unblock(tid),
            EventKind::UffdIoctlBegin { uffd, op } => {
                self.unblock(tid);
                let ctx = self.uffds.entry(*uffd).or_default();
                match op {
                    UffdOp::Api | UffdOp::Register | UffdOp::Unregister => {
                        ctx.setup.insert(tid);
                    }
                    _ => {
                        ctx.resolvers.insert(tid);
                    }
                }
            }
            EventKind::UffdHandlerSeen { uffd, resolver } => {
                let ctx = self.uffds.entry(*uffd).or_default();
                if *resolver {
                    ctx.resolvers.insert(tid);
                } else {
                    ctx.setup.insert(tid);
                }
            }
            EventKind::UffdHeld { uffd } => {
                self.uffds.entry(*uffd).or_default().holders.insert(tid);
            }
            EventKind::PageFault { .. } => self.unblock(tid),
            EventKind::TaskExit {} => self.exit(tid, true),
            EventKind::Lost { .. } => {}
        }
        None
    }

    fn acquired(&mut self, tid: Tid, mm: Addr, mode: LockMode, ts: u64) {
        let current = self.tasks.get(&tid).and_then(|t| t.holds.get(&mm)).copied();
        let lock = self.mm_locks.entry(mm).or_default();
        lock.granted_ns = lock.granted_ns.max(ts);
        // Real evidence replaces inference: this task's own, and a writer's for everyone.
        lock.inferred_readers.remove(&tid);
        if mode == LockMode::Write {
            lock.inferred_readers.clear();
        }
        match (mode, current) {
            // Downgrade: the write hold continues as a read hold from the same moment.
            (
                LockMode::Read,
                Some(Hold {
                    mode: LockMode::Write,
                    since_ns,
                    ..
                }),
            ) => {
                lock.writer = None;
                lock.readers.insert(tid, since_ns);
                if let Some(h) = self.tasks.get_mut(&tid).and_then(|t| t.holds.get_mut(&mm)) {
                    h.mode = LockMode::Read;
                    h.seen = HoldSeen::Acquired;
                }
            }
            (LockMode::Read, Some(_)) => {
                if let Some(h) = self.tasks.get_mut(&tid).and_then(|t| t.holds.get_mut(&mm)) {
                    h.depth += 1;
                }
            }
            (LockMode::Read, None) => {
                // A writer we believed in must be gone: readers and a writer never coexist.
                if let Some((w, _)) = lock.writer {
                    if w != tid {
                        self.repairs += 1;
                        self.drop_hold(w, mm);
                    }
                }
                self.mm_locks.entry(mm).or_default().readers.insert(tid, ts);
                self.insert_hold(tid, mm, LockMode::Read, ts);
            }
            (LockMode::Write, _) => {
                // Nobody else can hold it now: forget any holder whose release we missed.
                let stale: Vec<Tid> = lock
                    .readers
                    .keys()
                    .copied()
                    .chain(lock.writer.map(|(w, _)| w))
                    .filter(|&t| t != tid)
                    .collect();
                for t in stale {
                    self.repairs += 1;
                    self.drop_hold(t, mm);
                }
                let lock = self.mm_locks.entry(mm).or_default();
                lock.readers.remove(&tid);
                lock.writer = Some((tid, ts));
                self.insert_hold(tid, mm, LockMode::Write, ts);
            }
        }
    }

    fn insert_hold(&mut self, tid: Tid, mm: Addr, mode: LockMode, ts: u64) {
        if let Some(t) = self.tasks.get_mut(&tid) {
            t.holds.insert(
                mm,
                Hold {
                    mode,
                    since_ns: ts,
                    depth: 1,
                    seen: HoldSeen::Acquired,
                },
            );
        }
    }

    /// A waiter on `mm` found `writer` in the rwsem's owner word: `writer` holds the lock for
    /// write now. Nobody else holds it then, and a different writer believed earlier has gone.
    fn owner_word_writer(&mut self, writer: Tid, mm: Addr, waiter_pid: u32, ts: u64) {
        let already = self
            .tasks
            .get(&writer)
            .and_then(|t| t.holds.get(&mm))
            .is_some_and(|h| h.mode == LockMode::Write);
        let stale_word = self.mm_locks.get(&mm).is_some_and(|l| ts < l.granted_ns);
        if already || stale_word {
            return;
        }
        if !self.tasks.contains_key(&writer) {
            // Not seen yet: a thread of the process owning the mm (a writer of a foreign mm is
            // rare), the waiter's when the owner is not known. Its own first record corrects it.
            let pid = self
                .mm_locks
                .get(&mm)
                .and_then(|l| l.owner_pid)
                .unwrap_or(waiter_pid);
            self.touch_task(writer, pid, None, ts);
        }
        let lock = self.mm_locks.entry(mm).or_default();
        lock.inferred_readers.clear();
        let stale: Vec<Tid> = lock
            .readers
            .keys()
            .copied()
            .chain(lock.writer.map(|(w, _)| w))
            .filter(|&t| t != writer)
            .collect();
        for t in stale {
            self.repairs += 1;
            self.drop_hold(t, mm);
        }
        let lock = self.mm_locks.entry(mm).or_default();
        lock.readers.remove(&writer);
        lock.writer = Some((writer, ts));
        if let Some(t) = self.tasks.get_mut(&writer) {
            t.holds.insert(
                mm,
                Hold {
                    mode: LockMode::Write,
                    since_ns: ts,
                    depth: 1,
                    seen: HoldSeen::OwnerWord,
                },
            );
        }
    }

    /// A waiter on `mm` got the lock (its contention ended without error): a writer known only
    /// from the owner word has released it.
    fn granted_to(&mut self, tid: Tid, mm: Addr, ts: u64) {
        if let Some(l) = self.mm_locks.get_mut(&mm) {
            l.granted_ns = l.granted_ns.max(ts);
        }
        let owner_word_writer = self
            .mm_locks
            .get(&mm)
            .and_then(|l| l.writer)
            .and_then(|(w, _)| {
                let h = self.tasks.get(&w)?.holds.get(&mm)?;
                (w != tid && h.seen == HoldSeen::OwnerWord).then_some(w)
            });
        if let Some(w) = owner_word_writer {
            self.drop_hold(w, mm);
        }
    }

    fn released(&mut self, tid: Tid, mm: Addr, mode: LockMode) {
        let held = self.tasks.get_mut(&tid).and_then(|t| t.holds.get_mut(&mm));
        match held {
            Some(h) if h.depth > 1 => h.depth -= 1,
            Some(_) => self.drop_hold(tid, mm),
            None => {
                // Not this task's hold. A write release proves the writer is gone. A read
                // release by a non-owner (mmap_read_unlock_non_owner, typically ending a trylock
                // taken in irq context on behalf of whatever task was interrupted) most likely
                // ends the most recent read hold; with none known, it ended a hold from before
                // the trace.
                let Some(lock) = self.mm_locks.get(&mm) else {
                    return;
                };
                let victim = match mode {
                    LockMode::Write => lock.writer.map(|(w, _)| w),
                    LockMode::Read => lock
                        .readers
                        .iter()
                        .max_by_key(|(_, since)| **since)
                        .map(|(t, _)| *t),
                };
                if let Some(v) = victim {
                    self.repairs += 1;
                    self.drop_hold(v, mm);
                }
            }
        }
    }

    /// Records were lost: every task with state may have changed unseen.
    fn lost(&mut self) {
        let stateful = self
            .tasks
            .values()
            .filter(|t| t.blocked.is_some() || !t.holds.is_empty())
            .map(|t| t.tid);
        self.unknown.extend(stateful);
    }

    /// A snapshot confirmed or refuted every task's state: none is unknown any more.
    pub fn confirm_all(&mut self) {
        self.unknown.clear();
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

    /// userfaultfd contexts nobody serves or waits on are forgotten, as the kernel frees them.
    fn gc_uffds(&mut self) {
        let waited: BTreeSet<Addr> = self
            .blocked
            .iter()
            .filter_map(|t| match self.tasks.get(t)?.blocked {
                Some(Blocked::Uffd { uffd, .. }) => Some(uffd),
                _ => None,
            })
            .collect();
        self.uffds.retain(|addr, ctx| {
            !ctx.resolvers.is_empty()
                || !ctx.setup.is_empty()
                || !ctx.holders.is_empty()
                || waited.contains(addr)
        });
    }

    /// Evidence from outside the event stream (a kernel snapshot) says `tid` no longer waits:
    /// the wait ends without an acquisition.
    pub fn end_wait(&mut self, tid: Tid) {
        if self.blocked.contains(&tid) {
            self.repairs += 1;
            self.unblock(tid);
            self.gc_uffds();
        }
    }

    /// Evidence from outside the event stream says `tid` no longer holds `mm`'s lock.
    pub fn end_hold(&mut self, tid: Tid, mm: Addr) {
        if self
            .tasks
            .get(&tid)
            .is_some_and(|t| t.holds.contains_key(&mm))
        {
            self.repairs += 1;
            self.drop_hold(tid, mm);
            self.gc_mm(mm);
        }
    }

    /// The task is gone (its exit record was lost, or it is known only to have existed).
    pub fn forget_task(&mut self, tid: Tid) {
        if self.tasks.contains_key(&tid) {
            self.exit(tid, false);
        }
    }

    /// Every task of process `pid` is gone, and with them the process's hold on its mm: lock
    /// tables it owned that nobody else uses are dropped, so a reused address starts clean.
    pub fn process_exit(&mut self, pid: u32) {
        let tids: Vec<Tid> = self
            .tasks
            .values()
            .filter(|t| t.pid == pid)
            .map(|t| t.tid)
            .collect();
        for tid in tids {
            self.exit(tid, false);
        }
        self.owner_gone(pid);
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
