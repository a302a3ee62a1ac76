//! Gathering: read this host once into a [`Snapshot`]. Raw iterator records become typed facts
//! here, at the edge; the per-task /proc reads that cost (stacks, wait channels, system calls)
//! are done only for the tasks the analysis can use them for.

use std::collections::{BTreeMap, BTreeSet};

use tracer_common::{blocker_type, diag_kind, DiagRecord};

use super::{agent, kernel};
use crate::{
    core::{
        diagnosis::snapshot::{
            BlockerFacts, BlockerKind, MmapLockFacts, MmapWaiterFacts, Snapshot, TaskFacts,
            UffdFacts, UffdFd, UffdWaiterFacts, UserLockFacts,
        },
        event::{Addr, EventKind},
    },
    kernel::{probes::ProbeError, procfs, user_locks},
};

pub fn gather(agent_at: Option<&agent::AgentAt>) -> Result<Snapshot, ProbeError> {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err(ProbeError::Privileges);
    }
    let all = procfs::tasks(None);
    let uffd_fds = procfs::uffd_fds();
    let records = kernel::read_kernel_state(&uffd_fds)?;
    let mut snapshot = from_records(&records);
    snapshot.agent = agent_at.and_then(agent::ask);
    // Reading a process's memory takes its mmap_lock: never in one whose lock has waiters.
    let contended: BTreeSet<u32> = snapshot.mmap_locks.iter().map(|l| l.mm_pid).collect();
    snapshot.user_locks = all
        .iter()
        .filter(|t| t.state == 'S' && !contended.contains(&t.pid))
        .filter_map(|t| user_lock(t.pid, t.tid))
        .collect();

    // Details for the tasks that may be blocked: D-state sleepers and every task the kernel
    // named as a waiter.
    let mut detailed: BTreeSet<u32> = all
        .iter()
        .filter(|t| t.state == 'D')
        .map(|t| t.tid)
        .collect();
    detailed.extend(
        snapshot
            .mmap_locks
            .iter()
            .flat_map(|l| l.waiters.iter().map(|w| w.tid)),
    );
    detailed.extend(snapshot.blockers.iter().map(|b| b.tid));
    detailed.extend(snapshot.user_locks.iter().map(|u| u.tid));
    detailed.extend(
        snapshot
            .uffds
            .iter()
            .flat_map(|u| u.waiters.iter().map(|w| w.tid)),
    );
    // A read-held mmap_lock with waiters and no agent to name its readers: the analysis guesses
    // them from the stacks of sleeping tasks.
    let guess_readers = snapshot
        .mmap_locks
        .iter()
        .any(|l| l.writer.is_none() && l.readers > 0);
    snapshot.tasks = all
        .into_iter()
        .map(|t| {
            let detail = detailed.contains(&t.tid);
            let stack = if detail || (guess_readers && matches!(t.state, 'S' | 'D')) {
                procfs::stack(t.pid, t.tid)
            } else {
                Vec::new()
            };
            TaskFacts {
                wchan: if detail {
                    procfs::wchan(t.pid, t.tid)
                } else {
                    String::new()
                },
                off_cpu_ms: detail.then(|| procfs::off_cpu_ms(t.pid, t.tid)).flatten(),
                // Handler evidence: what each thread of a process holding a userfaultfd does.
                syscall: uffd_fds
                    .contains_key(&t.pid)
                    .then(|| procfs::syscall(t.pid, t.tid))
                    .flatten(),
                stack,
                tid: t.tid,
                pid: t.pid,
                comm: t.comm,
                state: t.state,
            }
        })
        .collect();
    Ok(snapshot)
}

/// A thread's sleep on a user-space lock (one with an owner to follow), its owner checked
/// and its lock named as the agent would.
fn user_lock(pid: u32, tid: u32) -> Option<UserLockFacts> {
    let sleep = user_locks::sleep_from_proc(pid, tid)?;
    let EventKind::FutexWaitBegin {
        futex,
        op,
        lock,
        lock_addr,
        owner,
        name,
    } = user_locks::begin_of(pid, tid, &sleep)
    else {
        return None;
    };
    lock.has_owner().then(|| UserLockFacts {
        tid,
        pid,
        futex,
        lock: lock_addr.unwrap_or(futex),
        op,
        lock_type: lock,
        owner,
        name,
    })
}

/// Typed kernel facts from the iterators' records (tasks and agent left empty).
pub fn from_records(records: &[DiagRecord]) -> Snapshot {
    let mut locks: BTreeMap<u64, MmapLockFacts> = BTreeMap::new();
    let mut queued: BTreeMap<u64, Vec<(u32, MmapWaiterFacts)>> = BTreeMap::new();
    let mut blockers: BTreeMap<u32, BlockerFacts> = BTreeMap::new();
    let mut uffds: BTreeMap<u64, UffdFacts> = BTreeMap::new();
    let mut uffd_waiters: BTreeMap<u64, BTreeMap<u32, bool>> = BTreeMap::new();
    // An rwsem count: bit 0 writer-locked, bits 8.. the readers.
    let readers = |count: u64| if count & 1 == 0 { count >> 8 } else { 0 };
    for r in records {
        match r.kind {
            diag_kind::MMAP_LOCK => {
                locks.insert(
                    r.a,
                    MmapLockFacts {
                        mm: Addr(r.a),
                        mm_pid: r.tgid,
                        readers: readers(r.b),
                        writer: (r.d != 0).then_some(r.d as u32),
                        waiters: Vec::new(),
                    },
                );
            }
            diag_kind::MMAP_WAITER => queued.entry(r.a).or_default().push((
                r.pos,
                MmapWaiterFacts {
                    tid: r.d as u32,
                    // rwsem_waiter.type: 0 RWSEM_WAITING_FOR_WRITE.
                    write: r.c == 0,
                },
            )),
            diag_kind::BLOCKER => {
                let kind = match r.a & blocker_type::MASK {
                    blocker_type::MUTEX => BlockerKind::Mutex,
                    blocker_type::SEM => BlockerKind::Semaphore,
                    blocker_type::RWSEM_WRITER => BlockerKind::RwsemWrite,
                    _ => BlockerKind::RwsemRead,
                };
                let is_rwsem = matches!(kind, BlockerKind::RwsemRead | BlockerKind::RwsemWrite);
                blockers.insert(
                    r.tid,
                    BlockerFacts {
                        tid: r.tid,
                        kind,
                        lock: Addr(r.a & !blocker_type::MASK),
                        owner: (r.d != 0).then_some(r.d as u32),
                        readers: if is_rwsem { readers(r.c) } else { 0 },
                    },
                );
            }
            diag_kind::UFFD_FILE => {
                let u = uffds.entry(r.a).or_insert_with(|| UffdFacts {
                    ctx: Addr(r.a),
                    mm_pid: r.c as u32,
                    fds: Vec::new(),
                    waiters: Vec::new(),
                });
                let fd = UffdFd {
                    pid: r.tgid,
                    fd: r.pos,
                };
                if !u.fds.contains(&fd) {
                    u.fds.push(fd);
                }
            }
            diag_kind::UFFD_WAITER => {
                // Walked once per descriptor: the same waiter comes once per holder.
                let read = uffd_waiters.entry(r.a).or_default().entry(r.d as u32);
                let seen = read.or_insert(false);
                *seen |= r.pos == 1;
            }
            _ => {}
        }
    }
    for (mm, mut ws) in queued {
        ws.sort_by_key(|(pos, _)| *pos);
        let pid = records
            .iter()
            .find(|r| r.kind == diag_kind::MMAP_WAITER && r.a == mm)
            .map_or(0, |r| r.tgid);
        let lock = locks.entry(mm).or_insert_with(|| MmapLockFacts {
            mm: Addr(mm),
            mm_pid: pid,
            readers: 0,
            writer: None,
            waiters: Vec::new(),
        });
        lock.waiters = ws.into_iter().map(|(_, w)| w).collect();
    }
    for (ctx, ws) in uffd_waiters {
        if let Some(u) = uffds.get_mut(&ctx) {
            u.waiters = ws
                .into_iter()
                .map(|(tid, message_read)| UffdWaiterFacts { tid, message_read })
                .collect();
        }
    }
    Snapshot {
        tasks: Vec::new(),
        mmap_locks: locks
            .into_values()
            .filter(|l| !l.waiters.is_empty())
            .collect(),
        blockers: blockers.into_values().collect(),
        uffds: uffds.into_values().collect(),
        user_locks: Vec::new(),
        agent: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record: kind, then [tid, tgid, pos] and [a, b, c, d].
    fn rec(kind: u32, ids: [u32; 3], v: [u64; 4]) -> DiagRecord {
        let [tid, tgid, pos] = ids;
        let [a, b, c, d] = v;
        DiagRecord {
            kind,
            tid,
            tgid,
            pos,
            a,
            b,
            c,
            d,
        }
    }

    #[test]
    fn records_become_typed_facts() {
        let s = from_records(&[
            // mm 0x1000 of pid 7: one reader holds it; a writer then a reader queue.
            rec(diag_kind::MMAP_LOCK, [7, 7, 0], [0x1000, 0x102, 0x3, 0]),
            rec(diag_kind::MMAP_WAITER, [7, 7, 1], [0x1000, 0, 1, 9]),
            rec(diag_kind::MMAP_WAITER, [7, 7, 0], [0x1000, 0, 0, 8]),
            rec(
                diag_kind::BLOCKER,
                [20, 20, 0],
                [0x5000 | blocker_type::MUTEX, 0, 0, 21],
            ),
            // One context held by pids 30 (fd 3) and 40 (fd 5); waiter 31 seen from both.
            rec(diag_kind::UFFD_FILE, [30, 30, 3], [0xc0, 0x2000, 30, 0]),
            rec(diag_kind::UFFD_WAITER, [30, 30, 1], [0xc0, 0, 0, 31]),
            rec(diag_kind::UFFD_FILE, [40, 40, 5], [0xc0, 0x2000, 30, 0]),
            rec(diag_kind::UFFD_WAITER, [40, 40, 1], [0xc0, 0, 0, 31]),
        ]);
        let l = &s.mmap_locks[0];
        assert_eq!((l.mm_pid, l.readers, l.writer), (7, 1, None));
        assert_eq!(
            l.waiters,
            vec![
                MmapWaiterFacts {
                    tid: 8,
                    write: true
                },
                MmapWaiterFacts {
                    tid: 9,
                    write: false
                }
            ]
        );
        assert_eq!(s.blockers[0].kind, BlockerKind::Mutex);
        assert_eq!(
            (s.blockers[0].lock, s.blockers[0].owner),
            (Addr(0x5000), Some(21))
        );
        let u = &s.uffds[0];
        assert_eq!(u.mm_pid, 30);
        assert_eq!(u.fds.len(), 2);
        assert_eq!(
            u.waiters,
            vec![UffdWaiterFacts {
                tid: 31,
                message_read: true
            }]
        );
    }
}
