//! What a futex sleep says about its lock: the operation, and the words around the futex the
//! sleeper's memory held as it went to sleep, read as the kernel's PI protocol or glibc's
//! layouts. Pure: checking that a claimed owner exists and belongs to the right process needs
//! the host, and is the caller's (an owner read from a layout is a claim until then).
//!
//! glibc's layouts (x86_64, glibc 2.25 and later) are not a kernel promise. A layout is only
//! believed when every word it names is plausible, and what was read goes into the evidence.

use crate::event::{FutexOp, UserLockKind};

/// futex(2) commands and flags (see `tracer_common::futex_op`; the core does not depend on
/// the wire crate).
mod op {
    pub const CMD_MASK: u32 = 0x7f;
    pub const WAIT: u32 = 0;
    pub const LOCK_PI: u32 = 6;
    pub const WAIT_BITSET: u32 = 9;
    pub const WAIT_REQUEUE_PI: u32 = 11;
    pub const LOCK_PI2: u32 = 13;
    pub const WAITV: u32 = 0x1000;
}

const FUTEX_TID_MASK: u32 = 0x3fff_ffff;
const FUTEX_WAITERS: u32 = 0x8000_0000;

/// Words read before the futex in `FutexSleep::window`.
pub const WINDOW_BEFORE: usize = 4;
pub const WINDOW_WORDS: usize = 12;

/// One futex sleep as the kernel side saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FutexSleep {
    /// futex(2)'s `op` (command and flags), or `WAITV` for futex_waitv(2).
    pub op: u32,
    /// The value the caller expected the word to hold.
    pub val: u32,
    pub uaddr: u64,
    /// The 32-bit words from `WINDOW_BEFORE` words before the futex.
    pub window: [u32; WINDOW_WORDS],
    /// The words before the futex were read.
    pub before_ok: bool,
    /// The futex word and the words after it were read.
    pub after_ok: bool,
}

/// An owner read from the lock's memory, not yet checked against the host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub tid: u32,
    /// From the kernel's PI protocol (exact), not a library's layout.
    pub exact: bool,
    /// The lock says it is shared between processes: its owner may be in another one.
    pub shared: bool,
    /// What was read.
    pub evidence: String,
}

/// What a futex sleep waits on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reading {
    pub op: FutexOp,
    pub lock: UserLockKind,
    /// Where the lock starts (an rwlock's waiters sleep on words inside it): its identity, so
    /// waits on different words of one lock meet.
    pub lock_addr: u64,
    pub candidate: Option<Candidate>,
}

impl FutexSleep {
    /// The word `off` bytes from the futex (negative: before it), when it was read.
    fn word(&self, off: i64) -> Option<u32> {
        let idx = WINDOW_BEFORE as i64 + off / 4;
        if off % 4 != 0 || !(0..WINDOW_WORDS as i64).contains(&idx) {
            return None;
        }
        let ok = if idx < WINDOW_BEFORE as i64 {
            self.before_ok
        } else {
            self.after_ok
        };
        ok.then(|| self.window[idx as usize])
    }
}

/// The operation of a sleep, when it is one that sleeps on its word.
pub fn futex_op(op_raw: u32) -> Option<FutexOp> {
    if op_raw == op::WAITV {
        return Some(FutexOp::Waitv);
    }
    Some(match op_raw & op::CMD_MASK {
        op::WAIT => FutexOp::Wait,
        op::WAIT_BITSET => FutexOp::WaitBitset,
        op::LOCK_PI => FutexOp::LockPi,
        op::LOCK_PI2 => FutexOp::LockPi2,
        op::WAIT_REQUEUE_PI => FutexOp::WaitRequeuePi,
        _ => return None,
    })
}

/// Reads one sleep: `None` when its op is not one that sleeps on the word.
pub fn read(s: &FutexSleep) -> Option<Reading> {
    let op = futex_op(s.op)?;
    let plain = |lock| Reading {
        op,
        lock,
        lock_addr: s.uaddr,
        candidate: None,
    };
    Some(match op {
        FutexOp::LockPi | FutexOp::LockPi2 => Reading {
            candidate: pi_owner(s),
            ..plain(UserLockKind::PiMutex)
        },
        // Waits on a condition variable's word, to be requeued onto a PI mutex later: until
        // then it waits for an event, not an owner.
        FutexOp::WaitRequeuePi | FutexOp::Waitv => plain(UserLockKind::Futex),
        FutexOp::Wait | FutexOp::WaitBitset => glibc_mutex(s, op)
            .or_else(|| glibc_rwlock(s, op))
            .unwrap_or_else(|| plain(UserLockKind::Futex)),
    })
}

/// A PI futex's word holds its owner's TID (the kernel's protocol; `FUTEX_WAITERS` set once
/// anyone waits).
fn pi_owner(s: &FutexSleep) -> Option<Candidate> {
    let word = s.word(0)?;
    let tid = word & FUTEX_TID_MASK;
    (tid != 0).then(|| Candidate {
        tid,
        exact: true,
        // A PI futex's owner may be in any process mapping the word; its TID is the kernel's.
        shared: true,
        evidence: format!("PI futex word {word:#x}: owner TID {tid} (the kernel's protocol)"),
    })
}

/// glibc's `pthread_mutex_t` (`__lock`, `__count`, `__owner`, `__nusers`, `__kind`): a
/// waiter sleeps with the word at 2 (locked, with waiters); `__owner` is the holder's TID.
fn glibc_mutex(s: &FutexSleep, op: FutexOp) -> Option<Reading> {
    if s.val != 2 {
        return None;
    }
    let (word, owner, nusers, kind) = (s.word(0)?, s.word(8)?, s.word(12)?, s.word(16)?);
    // __kind: the type (0-3) with the process-shared (128) and elision (256, 512) bits.
    // Robust, PI and PP mutexes (16, 32, 64) do not wait this way.
    let plausible = word != 0
        && owner != 0
        && (owner as i32) > 0
        && (1..1 << 24).contains(&nusers)
        && kind & !(0x3 | 0x80 | 0x100 | 0x200) == 0;
    plausible.then(|| Reading {
        op,
        lock: UserLockKind::PthreadMutex,
        lock_addr: s.uaddr,
        candidate: Some(Candidate {
            tid: owner,
            exact: false,
            shared: kind & 0x80 != 0,
            evidence: format!(
                "glibc pthread_mutex_t layout: futex word {word} (locked, waiters), __owner {owner}, __nusers {nusers}, __kind {kind:#x}"
            ),
        }),
    })
}

/// glibc's `pthread_rwlock_t` (2.25+): `__readers` at 0, `__wrphase_futex` at 8,
/// `__writers_futex` at 12, `__cur_writer` at 24, `__shared` at 28. Readers sleep on
/// `__wrphase_futex` (value 3) while a writer holds it, or on `__readers` with its
/// reader-waiting bit (4) when writers are preferred; writers sleep on `__writers_futex`
/// (value 3) behind another writer, or on `__wrphase_futex` (value 2) until readers leave.
fn glibc_rwlock(s: &FutexSleep, op: FutexOp) -> Option<Reading> {
    const WRPHASE: u32 = 1;
    const WRLOCKED: u32 = 2;
    const RWAITING: u32 = 4;
    // (offset of the futex in the lock, whether its waiter wants write)
    let hypotheses: [(i64, bool); 4] = [(8, false), (12, true), (0, false), (8, true)];
    for (off, write) in hypotheses {
        let at = |field: i64| s.word(field - off);
        let (Some(readers), Some(cur_writer), Some(shared)) = (at(0), at(24), at(28)) else {
            continue;
        };
        if shared > 1 {
            continue;
        }
        let fits = match (off, write) {
            // A reader waiting for the write phase to end: a writer has it.
            (8, false) => s.val == 3 && readers & WRPHASE != 0,
            // A writer behind another writer.
            (12, true) => s.val == 3 && readers & WRLOCKED != 0,
            // A reader held back by writer preference: someone holds or is about to hold it,
            // and glibc's padding words are zero.
            // glibc sets the reader-waiting bit only while a writer has the write-locked
            // bit (a barrier's round counter, stepping by its thread count, can carry the
            // reader-waiting bit but not that one with it).
            (0, false) => {
                s.val & RWAITING != 0
                    && s.val & WRLOCKED != 0
                    && s.val == readers
                    && at(16) == Some(0)
                    && at(20) == Some(0)
            }
            // A writer waiting for the readers to leave.
            _ => s.val == 2 && readers & WRLOCKED != 0 && readers >> 3 > 0,
        };
        if !fits {
            continue;
        }
        let lock = if write {
            UserLockKind::PthreadRwlockWrite
        } else {
            UserLockKind::PthreadRwlockRead
        };
        // Read holders are not recorded by glibc; only a writer holding it names an owner.
        let writer_holds = (cur_writer as i32) > 0 && readers & WRLOCKED != 0;
        let candidate = writer_holds.then(|| Candidate {
            tid: cur_writer,
            exact: false,
            shared: shared == 1,
            evidence: format!(
                "glibc pthread_rwlock_t layout: __readers {readers:#x} (write-locked), __cur_writer {cur_writer}"
            ),
        });
        return Some(Reading {
            op,
            lock,
            lock_addr: s.uaddr.wrapping_sub(off as u64),
            candidate,
        });
    }
    None
}

/// Whether the PI word says someone waits (so the owner knows to hand over).
pub fn pi_has_waiters(word: u32) -> bool {
    word & FUTEX_WAITERS != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sleep(op: u32, val: u32, at: &[(i64, u32)]) -> FutexSleep {
        let mut window = [0u32; WINDOW_WORDS];
        for &(off, v) in at {
            window[(WINDOW_BEFORE as i64 + off / 4) as usize] = v;
        }
        FutexSleep {
            op,
            val,
            uaddr: 0x7000_1000,
            window,
            before_ok: true,
            after_ok: true,
        }
    }

    const PRIVATE: u32 = 128;

    #[test]
    fn a_glibc_mutex_waiter_names_the_owner_as_an_inference_with_what_was_read() {
        let r = read(&sleep(PRIVATE, 2, &[(0, 2), (8, 4242), (12, 1), (16, 0)])).expect("sleeps");
        assert_eq!(r.lock, UserLockKind::PthreadMutex);
        let c = r.candidate.expect("owner");
        assert_eq!((c.tid, c.exact, c.shared), (4242, false, false));
        assert!(c.evidence.contains("__owner 4242"), "{}", c.evidence);
    }

    #[test]
    fn a_pi_futex_names_its_owner_exactly() {
        let r = read(&sleep(6 | PRIVATE, 0, &[(0, 0x8000_0000 | 77)])).expect("sleeps");
        assert_eq!(r.lock, UserLockKind::PiMutex);
        let c = r.candidate.expect("owner");
        assert_eq!((c.tid, c.exact), (77, true));
    }

    #[test]
    fn words_without_owner_semantics_get_no_candidate() {
        // A condition variable's signal word (WAIT_BITSET, any value), a barrier's round (the
        // word after it is 0, not a TID), a semaphore's value (0).
        for s in [
            sleep(9 | PRIVATE, 4, &[(0, 4), (8, 1234)]),
            sleep(PRIVATE, 2, &[(0, 2), (8, 0), (12, 0)]),
            sleep(9 | PRIVATE, 0, &[]),
            sleep(11 | PRIVATE, 2, &[(0, 2), (8, 99), (12, 1)]),
        ] {
            let r = read(&s).expect("sleeps");
            assert_eq!(r.lock, UserLockKind::Futex, "{s:?}");
            assert!(r.candidate.is_none());
        }
        // A mutex-shaped word whose __kind is not a glibc kind.
        let r = read(&sleep(PRIVATE, 2, &[(0, 2), (8, 5), (12, 1), (16, 0x7777)])).expect("s");
        assert!(r.candidate.is_none(), "{r:?}");
        // A barrier of 4 threads: its round counter (here 12 = 0b1100) has the reader-waiting
        // bit, not the write-locked one, and the words after it are zero.
        let r = read(&sleep(PRIVATE, 12, &[(0, 12)])).expect("sleeps");
        assert_eq!(r.lock, UserLockKind::Futex, "{r:?}");
    }

    #[test]
    fn rwlock_waits_meet_at_the_lock_and_name_a_writer_holder() {
        // A reader waiting on __wrphase_futex (lock + 8) while writer 31 holds it.
        let r = read(&sleep(
            PRIVATE,
            3,
            &[(-8, 0x3), (16, 31), (20, 0)], // __readers, __cur_writer, __shared
        ))
        .expect("sleeps");
        assert_eq!(r.lock, UserLockKind::PthreadRwlockRead);
        assert_eq!(r.lock_addr, 0x7000_1000 - 8);
        assert_eq!(r.candidate.map(|c| c.tid), Some(31));
        // A writer waiting for readers to leave (__wrphase_futex, value 2): no owner named.
        let w = read(&sleep(PRIVATE, 2, &[(-8, (2 << 3) | 0x2)])).expect("sleeps");
        assert_eq!(w.lock, UserLockKind::PthreadRwlockWrite);
        assert_eq!(w.lock_addr, 0x7000_1000 - 8);
        assert!(w.candidate.is_none());
        // A reader held back by writer preference sleeps on __readers itself.
        let q = read(&sleep(
            PRIVATE,
            (1 << 3) | 0x4 | 0x2,
            &[(0, (1 << 3) | 0x4 | 0x2)],
        ))
        .expect("sleeps");
        assert_eq!(q.lock, UserLockKind::PthreadRwlockRead);
        assert_eq!(q.lock_addr, 0x7000_1000);
    }

    #[test]
    fn a_wake_op_is_not_a_sleep() {
        assert!(read(&sleep(1 | PRIVATE, 1, &[])).is_none());
    }
}
