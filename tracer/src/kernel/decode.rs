//! Ring-buffer records → core events: the header here, each record's body in
//! the decoder of the family that writes it (`probes::families::decode` dispatches). Nothing else
//! knows the wire layout.

use tracer_common::{reason, EventHeader, EventKind as WireKind, TASK_COMM_LEN};

use super::probes::families;
pub use super::probes::families::{contention::lock_type_of, uffd::uffd_op_of};
use crate::core::event::{Event, EventKind};

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

/// One ring-buffer record: its header, read once, and its bytes for the family's own type.
pub struct Record<'a> {
    pub header: EventHeader,
    bytes: &'a [u8],
}

impl Record<'_> {
    /// The record as its family's wire type.
    pub fn read<T: Copy>(&self) -> Result<T, DecodeError> {
        read(self.bytes)
    }

    /// A core event of this record's task at `ts_ns`.
    pub fn at(&self, ts_ns: u64, kind: EventKind) -> Event {
        Event {
            ts_ns,
            tid: self.header.tid,
            pid: self.header.tgid,
            comm: comm(&self.header.comm),
            kind,
        }
    }

    /// The event at the record's own time.
    pub fn now(&self, kind: EventKind) -> Event {
        self.at(self.header.ts_ns, kind)
    }

    pub fn reasons(&self) -> Reasons {
        Reasons(self.header.flags)
    }
}

/// What a family's decoder makes of a record (see `Decoded`).
pub struct Parts {
    pub event: Event,
    pub since_ns: Option<u64>,
    pub implied: Option<Event>,
}

impl Parts {
    /// An event that implies nothing earlier.
    pub fn alone(event: Event) -> Self {
        Self {
            event,
            since_ns: None,
            implied: None,
        }
    }

    /// The end of something that began at `since` (0: unknown): the begin is implied.
    pub fn ending(record: &Record, event: Event, since: u64, begin: EventKind) -> Self {
        let since_ns = nonzero(since);
        Self {
            event,
            since_ns,
            implied: since_ns.map(|s| record.at(s, begin)),
        }
    }
}

/// A kernel value where 0 means "none".
pub fn nonzero(v: u64) -> Option<u64> {
    (v != 0).then_some(v)
}

/// Decodes one record: the header here, the rest by the family that wrote it.
pub fn decode(bytes: &[u8]) -> Result<Decoded, DecodeError> {
    let header: EventHeader = read(bytes)?;
    let kind = WireKind::from_u32(header.kind).ok_or(DecodeError::UnknownKind(header.kind))?;
    let record = Record { header, bytes };
    let parts = families::decode(kind, &record)?;
    Ok(Decoded {
        event: parts.event,
        reasons: record.reasons(),
        since_ns: parts.since_ns,
        implied: parts.implied,
        cgroup_id: nonzero(header.cgroup_id),
    })
}

#[cfg(test)]
mod tests {
    use tracer_common::{lock_type, mode, uffd_op, LockWaitEvent, MmapLockEvent, UffdEvent};

    use super::*;
    use crate::core::event::{Addr, LockMode, LockType, UffdOp};

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

    fn header(kind: WireKind) -> EventHeader {
        EventHeader {
            kind: kind as u32,
            flags: 0,
            ts_ns: 900,
            tid: 21,
            tgid: 20,
            comm: [0; TASK_COMM_LEN],
            cgroup_id: 0,
        }
    }

    #[test]
    fn a_lock_wait_end_implies_its_begin_with_owner_and_mm() {
        let wire = LockWaitEvent {
            header: header(WireKind::LockWaitEnd),
            lock: 0xffff_0000_10b8,
            since_ns: 400,
            mm: 0xffff_0000_1000,
            owner_tid: 33,
            ret: 0,
            lock_type: lock_type::RWSEM_READ,
            _pad: [0; 7],
        };
        let d = decode(&bytes_of(&wire)).expect("decode");
        assert_eq!(
            d.event.kind,
            EventKind::LockWaitEnd {
                lock: Addr(0xffff_0000_10b8),
                ret: 0,
                mm: Some(Addr(0xffff_0000_1000)),
            }
        );
        assert_eq!(d.since_ns, Some(400));
        let begin = d.implied.expect("the begin is implied");
        assert_eq!(begin.ts_ns, 400);
        assert_eq!(
            begin.kind,
            EventKind::LockWaitBegin {
                lock: Addr(0xffff_0000_10b8),
                lock_type: LockType::RwsemRead,
                owner_tid: Some(33),
                mm: Some(Addr(0xffff_0000_1000)),
            }
        );
        assert_eq!(d.cgroup_id, None, "0 is no cgroup");
        let bad = LockWaitEvent {
            lock_type: 99,
            ..wire
        };
        assert!(matches!(
            decode(&bytes_of(&bad)),
            Err(DecodeError::BadField {
                what: "lock type",
                value: 99
            })
        ));
    }

    #[test]
    fn uffd_ioctl_ends_imply_their_begin_and_waits_do_not_need_an_op() {
        let wire = UffdEvent {
            header: header(WireKind::UffdIoctlEnd),
            ctx: 0xffff_0000_2000,
            addr: 0,
            since_ns: 0,
            ret: -17,
            op: uffd_op::COPY,
            _pad: [0; 7],
        };
        let d = decode(&bytes_of(&wire)).expect("decode");
        assert_eq!(
            d.event.kind,
            EventKind::UffdIoctlEnd {
                uffd: Addr(0xffff_0000_2000),
                op: UffdOp::Copy,
                ret: -17,
            }
        );
        assert_eq!(
            (d.since_ns, d.implied),
            (None, None),
            "no start, nothing implied"
        );
        let wait = UffdEvent {
            header: header(WireKind::UffdWaitEnd),
            since_ns: 700,
            op: 200,
            addr: 0x7000,
            ..wire
        };
        let d = decode(&bytes_of(&wait)).expect("an op is not read for a wait");
        assert_eq!(
            d.implied.map(|e| e.kind),
            Some(EventKind::UffdWaitBegin {
                uffd: Addr(0xffff_0000_2000),
                addr: Addr(0x7000),
            })
        );
        let bad = UffdEvent { op: 200, ..wire };
        assert!(matches!(
            decode(&bytes_of(&bad)),
            Err(DecodeError::BadField {
                what: "userfaultfd op",
                value: 200
            })
        ));
    }
}
