//! A futex sleep made into the core's `futex_wait_begin`: the core reads what the lock is and
//! who its memory says owns it (`core::user_lock`); here that claim is checked against the
//! host, and the lock is named. Shared by the live feed and `diagnose`.

use tracer_common::FutexWait;

use crate::{
    core::{
        event::{Addr, EventKind, FutexOp, UserLockKind, UserLockOwner},
        user_lock::{self, Candidate, FutexSleep, Reading},
    },
    kernel::{probes::families::futex::sleep_of, procfs, user_symbols},
};

/// The begin event of a sleep, its owner checked and its lock named (/proc reads).
pub fn begin(pid: u32, tid: u32, w: &FutexWait) -> EventKind {
    begin_of(pid, tid, &sleep_of(w))
}

/// The same for a sleep read from anywhere (`diagnose` reads it from /proc).
pub fn begin_of(pid: u32, tid: u32, s: &FutexSleep) -> EventKind {
    let Some(r) = user_lock::read(s) else {
        return unknown(s.uaddr);
    };
    let owner = r
        .candidate
        .as_ref()
        .and_then(|c| vet(pid, tid, c, procfs::tgid_of));
    let name = r
        .lock
        .has_owner()
        .then(|| user_symbols::name_of(pid, r.lock_addr))
        .flatten();
    event(s.uaddr, r, owner, name)
}

/// The begin a sleep's end implies: what the lock is, without its owner (the wait is over).
pub fn begin_unchecked(w: &FutexWait) -> EventKind {
    let s = sleep_of(w);
    match user_lock::read(&s) {
        Some(r) => event(s.uaddr, r, None, None),
        None => unknown(s.uaddr),
    }
}

fn unknown(uaddr: u64) -> EventKind {
    EventKind::FutexWaitBegin {
        futex: Addr(uaddr),
        op: FutexOp::Wait,
        lock: UserLockKind::Futex,
        lock_addr: None,
        owner: None,
        name: None,
    }
}

fn event(uaddr: u64, r: Reading, owner: Option<UserLockOwner>, name: Option<String>) -> EventKind {
    EventKind::FutexWaitBegin {
        futex: Addr(uaddr),
        op: r.op,
        lock: r.lock,
        lock_addr: (r.lock_addr != uaddr).then_some(Addr(r.lock_addr)),
        owner,
        name,
    }
}

/// A claimed owner, kept only when plausible: the TID exists and is a thread of the waiter's
/// process, or, for a lock shared between processes (or a PI futex, whose word the kernel
/// writes), of any process. The waiter itself is no owner to follow (a task relocking a mutex
/// it holds is its own bug, not a chain). `tgid_of` asks the host which process a TID is in.
pub fn vet(
    pid: u32,
    waiter: u32,
    c: &Candidate,
    tgid_of: impl Fn(u32) -> Option<u32>,
) -> Option<UserLockOwner> {
    if c.tid == waiter {
        return None;
    }
    let tgid = tgid_of(c.tid)?;
    let checked = if tgid == pid {
        format!("TID {} is a thread of pid {pid}", c.tid)
    } else if c.shared || c.exact {
        format!(
            "TID {} is a thread of pid {tgid} (the lock is shared between processes)",
            c.tid
        )
    } else {
        return None;
    };
    Some(UserLockOwner {
        tid: c.tid,
        exact: c.exact,
        evidence: format!("{}; {checked}", c.evidence),
    })
}

/// The words around `uaddr` in process `pid`'s memory (process_vm_readv: takes its
/// `mmap_lock` for read; callers on the agent's path go through `user_mem`): the window of a
/// `FutexSleep`, and whether the words before and after the futex were read.
pub fn read_window(pid: u32, uaddr: u64) -> ([u32; tracer_common::WINDOW_WORDS], bool, bool) {
    use tracer_common::{WINDOW_BEFORE, WINDOW_WORDS};
    let words = |b: &[u8]| -> Vec<u32> {
        b.chunks_exact(4)
            .map(|c| u32::from_ne_bytes(c.try_into().unwrap_or_default()))
            .collect()
    };
    let mut window = [0u32; WINDOW_WORDS];
    if let Some(b) = procfs::read_user(
        pid,
        uaddr.wrapping_sub(4 * WINDOW_BEFORE as u64),
        4 * WINDOW_WORDS,
    ) {
        window.copy_from_slice(&words(&b));
        (window, true, true)
    } else if let Some(b) = procfs::read_user(pid, uaddr, 4 * (WINDOW_WORDS - WINDOW_BEFORE)) {
        window[WINDOW_BEFORE..].copy_from_slice(&words(&b));
        (window, false, true)
    } else {
        (window, false, false)
    }
}

/// The owner a sleep's lock names now, read again from the process's memory (`sleep`: the
/// sleep as first seen, for its op and expected value): `Some(None)` when it names none (or
/// no plausible one), `None` when the memory could not be read.
pub fn owner_now(pid: u32, tid: u32, sleep: &FutexSleep) -> Option<Option<UserLockOwner>> {
    let (uaddr, op, val) = (sleep.uaddr, sleep.op, sleep.val);
    let (window, before_ok, after_ok) = crate::kernel::user_mem::bounded(
        crate::kernel::user_mem::Lane::Reads,
        crate::kernel::user_mem::READ_DEADLINE,
        move || read_window(pid, uaddr),
    )?;
    if !after_ok {
        return None;
    }
    let again = FutexSleep {
        op,
        val,
        uaddr,
        window,
        before_ok,
        after_ok,
    };
    let r = user_lock::read(&again)?;
    Some(
        r.candidate
            .as_ref()
            .and_then(|c| vet(pid, tid, c, procfs::tgid_of)),
    )
}

/// A thread's futex sleep as /proc shows it: its system call's arguments name the word and
/// the op, and the words around it are read from the process's memory. `None` when the thread
/// is not asleep in a futex operation that sleeps, or its memory could not be read.
pub fn sleep_from_proc(pid: u32, tid: u32) -> Option<FutexSleep> {
    use tracer_common::{futex_op, syscall};
    let (nr, args) = procfs::syscall_args(pid, tid)?;
    let (uaddr, op, val) = match nr {
        syscall::FUTEX => {
            let op = args[1] as u32;
            if !futex_op::sleeps(op & futex_op::CMD_MASK) {
                return None;
            }
            (args[0], op, args[2] as u32)
        }
        syscall::FUTEX_WAITV => {
            // struct futex_waitv { u64 val; u64 uaddr; u32 flags; u32 reserved; }: the first.
            let w = procfs::read_user(pid, args[0], 16)?;
            let word =
                |i: usize| u64::from_ne_bytes(w[i * 8..i * 8 + 8].try_into().unwrap_or_default());
            (word(1), futex_op::WAITV, word(0) as u32)
        }
        _ => return None,
    };
    let (window, before_ok, after_ok) = read_window(pid, uaddr);
    Some(FutexSleep {
        op,
        val,
        uaddr,
        window,
        before_ok,
        after_ok,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(tid: u32, exact: bool, shared: bool) -> Candidate {
        Candidate {
            tid,
            exact,
            shared,
            evidence: "read".into(),
        }
    }

    #[test]
    fn an_owner_must_exist_and_belong_to_the_waiters_process_unless_the_lock_is_shared() {
        let host = |tid: u32| match tid {
            10 | 11 => Some(10),
            20 => Some(20),
            _ => None,
        };
        let ok = vet(10, 11, &claim(10, false, false), host).expect("same process");
        assert!(
            !ok.exact && ok.evidence.contains("thread of pid 10"),
            "{ok:?}"
        );
        assert!(
            vet(10, 11, &claim(99, false, false), host).is_none(),
            "no such TID"
        );
        assert!(
            vet(10, 11, &claim(20, false, false), host).is_none(),
            "other process"
        );
        assert!(
            vet(10, 11, &claim(20, false, true), host).is_some(),
            "shared lock"
        );
        assert!(
            vet(10, 11, &claim(20, true, false), host).is_some(),
            "PI word"
        );
        assert!(
            vet(10, 11, &claim(11, false, false), host).is_none(),
            "itself"
        );
    }
}
