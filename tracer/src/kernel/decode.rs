//! Ring-buffer records → core events. The only place that knows the wire layout.

use tracer_common::{
    lock_type, mode, reason, uffd_op, EventHeader, EventKind as WireKind, LockWaitEvent,
    MmapLockEvent, PageFaultEvent, UffdEvent, TASK_COMM_LEN,
};

use crate::core::event::{Addr, Event, EventKind, LockMode, LockType, UffdOp};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("ring-buffer record of {got} bytes is shorter than its kind needs ({need})")]
    Short { got: usize, need: usize },
    #[error("ring-buffer record has unknown kind {0}")]
    UnknownKind(u32),
    #[error("ring-buffer record has invalid lock mode {0}")]
    BadMode(u8),
    #[error("ring-buffer record has invalid {what} {value}")]
    BadField { what: &'static str, value: u8 },
}

pub fn lock_type_of(t: u8) -> Result<LockType, DecodeError> {
    Ok(match t {
        lock_type::MUTEX => LockType::Mutex,
        lock_type::RWSEM_READ => LockType::RwsemRead,
        lock_type::RWSEM_WRITE => LockType::RwsemWrite,
        lock_type::SPINLOCK => LockType::Spinlock,
        lock_type::RWLOCK_READ => LockType::RwlockRead,
        lock_type::RWLOCK_WRITE => LockType::RwlockWrite,
        lock_type::OTHER => LockType::Other,
        value => {
            return Err(DecodeError::BadField {
                what: "lock type",
                value,
            })
        }
    })
}

pub fn uffd_op_of(op: u8) -> Result<UffdOp, DecodeError> {
    Ok(match op {
        uffd_op::API => UffdOp::Api,
        uffd_op::REGISTER => UffdOp::Register,
        uffd_op::UNREGISTER => UffdOp::Unregister,
        uffd_op::WAKE => UffdOp::Wake,
        uffd_op::COPY => UffdOp::Copy,
        uffd_op::ZEROPAGE => UffdOp::Zeropage,
        uffd_op::WRITEPROTECT => UffdOp::Writeprotect,
        uffd_op::CONTINUE => UffdOp::Continue,
        uffd_op::POISON => UffdOp::Poison,
        uffd_op::MOVE => UffdOp::Move,
        value => {
            return Err(DecodeError::BadField {
                what: "userfaultfd op",
                value,
            })
        }
    })
}

/// Why the kernel sent a record (`tracer_common::reason` bits).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reasons(pub u32);

impl Reasons {
    pub fn slow_wait(self) -> bool {
        self.0 & reason::SLOW_WAIT != 0
    }
    pub fn long_hold(self) -> bool {
        self.0 & reason::LONG_HOLD != 0
    }
    pub fn unmatched(self) -> bool {
        self.0 & reason::UNMATCHED != 0
    }
    pub fn downgrade(self) -> bool {
        self.0 & reason::DOWNGRADE != 0
    }
    pub fn recursive(self) -> bool {
        self.0 & reason::RECURSIVE != 0
    }
    pub fn follow_up(self) -> bool {
        self.0 & reason::FOLLOW_UP != 0
    }
}

/// A decoded record: the event plus what only the kernel side knew.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decoded {
    pub event: Event,
    pub reasons: Reasons,
    /// For an acquisition, when its attempt started; for a release, when the hold began; for
    /// the end of a wait or ioctl, when it began.
    pub since_ns: Option<u64>,
    /// The earlier event this one implies when it carries its start time (an acquisition
    /// implies its attempt, a release its acquisition, an end its begin): outside record mode
    /// the kernel streams only the end of what turned out slow.
    pub implied: Option<Event>,
    /// The cgroup v2 id of the task that wrote the record, when the kernel gave one.
    pub cgroup_id: Option<u64>,
}

fn read<T: Copy>(bytes: &[u8]) -> Result<T, DecodeError> {
    let need = std::mem::size_of::<T>();
    if bytes.len() < need {
        return Err(DecodeError::Short {
            got: bytes.len(),
            need,
        });
    }
    // SAFETY: length checked; T is a repr(C) plain-data wire type; read_unaligned copes with any
    // alignment of the ring-buffer slice.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

fn comm(raw: &[u8; TASK_COMM_LEN]) -> Option<String> {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    (end > 0).then(|| String::from_utf8_lossy(&raw[..end]).into_owned())
}

pub fn decode(bytes: &[u8]) -> Result<Decoded, DecodeError> {
    let header: EventHeader = read(bytes)?;
    let kind = WireKind::from_u32(header.kind).ok_or(DecodeError::UnknownKind(header.kind))?;
    let at = |ts_ns: u64, kind: EventKind| Event {
        ts_ns,
        tid: header.tid,
        pid: header.tgid,
        comm: comm(&header.comm),
        kind,
    };
    let reasons = Reasons(header.flags);
    let nonzero = |v: u64| (v != 0).then_some(v);
    let (event, since_ns, implied) = match kind {
        WireKind::TaskExit => (at(header.ts_ns, EventKind::TaskExit {}), None, None),
        WireKind::MmapLockStart | WireKind::MmapLockAcquire | WireKind::MmapLockRelease => {
            let ev: MmapLockEvent = read(bytes)?;
            let lock_mode = match ev.mode {
                mode::READ => LockMode::Read,
                mode::WRITE => LockMode::Write,
                other => return Err(DecodeError::BadMode(other)),
            };
            // 0: the caller's own mm; u32::MAX: a foreign mm whose owner could not be read. An
            // mm owned by the caller's own process (exec's new mm, a fork child's before it
            // runs) is reported as the caller's: `mm_pid` names other processes only.
            let mm_pid = (ev.mm_tgid != 0 && ev.mm_tgid != u32::MAX && ev.mm_tgid != header.tgid)
                .then_some(ev.mm_tgid);
            let mm = Addr(ev.mm);
            let since = nonzero(ev.since_ns);
            match kind {
                WireKind::MmapLockStart => (
                    at(
                        header.ts_ns,
                        EventKind::MmapLockStart {
                            mm,
                            mode: lock_mode,
                            mm_pid,
                        },
                    ),
                    since,
                    None,
                ),
                WireKind::MmapLockAcquire => (
                    at(
                        header.ts_ns,
                        EventKind::MmapLockAcquire {
                            mm,
                            mode: lock_mode,
                            success: ev.success != 0,
                            mm_pid,
                        },
                    ),
                    since,
                    since.map(|s| {
                        at(
                            s,
                            EventKind::MmapLockStart {
                                mm,
                                mode: lock_mode,
                                mm_pid,
                            },
                        )
                    }),
                ),
                _ => (
                    at(
                        header.ts_ns,
                        EventKind::MmapLockRelease {
                            mm,
                            mode: lock_mode,
                            mm_pid,
                        },
                    ),
                    since,
                    since.map(|s| {
                        at(
                            s,
                            EventKind::MmapLockAcquire {
                                mm,
                                mode: lock_mode,
                                success: true,
                                mm_pid,
                            },
                        )
                    }),
                ),
            }
        }
        WireKind::LockWaitBegin | WireKind::LockWaitEnd => {
            let ev: LockWaitEvent = read(bytes)?;
            let lock = Addr(ev.lock);
            let begin = EventKind::LockWaitBegin {
                lock,
                lock_type: lock_type_of(ev.lock_type)?,
                owner_tid: (ev.owner_tid != 0).then_some(ev.owner_tid),
                mm: nonzero(ev.mm).map(Addr),
            };
            let since = nonzero(ev.since_ns);
            if kind == WireKind::LockWaitBegin {
                (at(header.ts_ns, begin), None, None)
            } else {
                (
                    at(
                        header.ts_ns,
                        EventKind::LockWaitEnd {
                            lock,
                            ret: ev.ret,
                            mm: nonzero(ev.mm).map(Addr),
                        },
                    ),
                    since,
                    since.map(|s| at(s, begin)),
                )
            }
        }
        WireKind::PageFault => {
            let ev: PageFaultEvent = read(bytes)?;
            (
                at(
                    header.ts_ns,
                    EventKind::PageFault {
                        addr: Addr(ev.addr),
                        user: ev.user != 0,
                        error_code: ev.error_code,
                        under_lock: reasons.0 & reason::UNDER_LOCK != 0,
                    },
                ),
                None,
                None,
            )
        }
        WireKind::UffdWaitBegin | WireKind::UffdWaitEnd => {
            let ev: UffdEvent = read(bytes)?;
            let uffd = Addr(ev.ctx);
            let since = nonzero(ev.since_ns);
            let begin = EventKind::UffdWaitBegin {
                uffd,
                addr: Addr(ev.addr),
            };
            if kind == WireKind::UffdWaitBegin {
                (at(header.ts_ns, begin), None, None)
            } else {
                (
                    at(header.ts_ns, EventKind::UffdWaitEnd { uffd }),
                    since,
                    since.map(|s| at(s, begin)),
                )
            }
        }
        WireKind::UffdIoctlBegin | WireKind::UffdIoctlEnd => {
            let ev: UffdEvent = read(bytes)?;
            let uffd = Addr(ev.ctx);
            let op = uffd_op_of(ev.op)?;
            let since = nonzero(ev.since_ns);
            if kind == WireKind::UffdIoctlBegin {
                (
                    at(header.ts_ns, EventKind::UffdIoctlBegin { uffd, op }),
                    None,
                    None,
                )
            } else {
                (
                    at(
                        header.ts_ns,
                        EventKind::UffdIoctlEnd {
                            uffd,
                            op,
                            ret: ev.ret,
                        },
                    ),
                    since,
                    since.map(|s| at(s, EventKind::UffdIoctlBegin { uffd, op })),
                )
            }
        }
    };
    Ok(Decoded {
        event,
        reasons,
        since_ns,
        implied,
        cgroup_id: nonzero(header.cgroup_id),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes_of<T>(v: &T) -> Vec<u8> {
        // SAFETY: reading the bytes of a plain repr(C) value.
        unsafe {
            std::slice::from_raw_parts((v as *const T).cast::<u8>(), std::mem::size_of::<T>())
        }
        .to_vec()
    }

    fn wire(kind: WireKind, mode_byte: u8, mm_tgid: u32) -> MmapLockEvent {
        let mut comm = [0u8; TASK_COMM_LEN];
        comm[..5].copy_from_slice(b"procA");
        MmapLockEvent {
            header: EventHeader {
                kind: kind as u32,
                flags: reason::SLOW_WAIT,
                ts_ns: 500,
                tid: 11,
                tgid: 10,
                comm,
                cgroup_id: 4242,
            },
            mm: 0xffff_0000_1000,
            since_ns: 100,
            mm_tgid,
            mode: mode_byte,
            success: 1,
            _pad: [0; 2],
        }
    }

    #[test]
    fn a_slow_foreign_write_acquisition_decodes_with_its_start_and_owner() {
        let d =
            decode(&bytes_of(&wire(WireKind::MmapLockAcquire, mode::WRITE, 20))).expect("decode");
        assert_eq!(d.event.tid, 11);
        assert_eq!(d.event.pid, 10);
        assert_eq!(d.event.comm.as_deref(), Some("procA"));
        assert_eq!(
            d.event.kind,
            EventKind::MmapLockAcquire {
                mm: Addr(0xffff_0000_1000),
                mode: LockMode::Write,
                success: true,
                mm_pid: Some(20)
            }
        );
        assert!(d.reasons.slow_wait());
        assert_eq!(d.since_ns, Some(100));
    }

    #[test]
    fn own_and_unknown_mm_owners_have_no_mm_pid() {
        for tgid in [0, u32::MAX, 10] {
            let d = decode(&bytes_of(&wire(
                WireKind::MmapLockRelease,
                mode::READ,
                tgid,
            )))
            .expect("decode");
            assert!(matches!(
                d.event.kind,
                EventKind::MmapLockRelease { mm_pid: None, .. }
            ));
        }
    }

    #[test]
    fn truncated_and_corrupt_records_are_errors_not_panics() {
        let good = bytes_of(&wire(WireKind::MmapLockStart, mode::READ, 0));
        assert!(matches!(
            decode(&good[..30]),
            Err(DecodeError::Short { .. })
        ));
        assert!(matches!(
            decode(&good[..50]),
            Err(DecodeError::Short { .. })
        ));
        let mut bad_kind = good.clone();
        bad_kind[0] = 99;
        assert_eq!(decode(&bad_kind), Err(DecodeError::UnknownKind(99)));
        let bad_mode = bytes_of(&wire(WireKind::MmapLockStart, 7, 0));
        assert_eq!(decode(&bad_mode), Err(DecodeError::BadMode(7)));
    }
}
