//! The core's event type: trace format v1 (see `docs/trace-format.md`).
//!
//! One type serves the live kernel, trace files and snapshots, so serde attributes here *are* the
//! public contract: change them only with the format's version.

use std::fmt;

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

/// A kernel address (an `mm_struct`, a lock, a userfaultfd context). Written as `"0x…"` because
/// JSON numbers lose precision above 2^53.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Addr(pub u64);

impl fmt::Display for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

impl Serialize for Addr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Addr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let hex = s
            .strip_prefix("0x")
            .or_else(|| s.strip_prefix("0X"))
            .ok_or_else(|| de::Error::custom(format!("address {s:?} must start with 0x")))?;
        u64::from_str_radix(hex, 16)
            .map(Addr)
            .map_err(|e| de::Error::custom(format!("address {s:?}: {e}")))
    }
}

/// How an rwsem such as `mmap_lock` is taken. In trace events it is the format's `write`
/// boolean (see `write_flag`); elsewhere (graph, reports) the strings "read" / "write".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LockMode {
    Read,
    Write,
}

impl LockMode {
    pub fn from_write(write: bool) -> Self {
        if write {
            Self::Write
        } else {
            Self::Read
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
        }
    }
}

impl fmt::Display for LockMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

mod write_flag {
    use super::LockMode;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(mode: &LockMode, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bool(*mode == LockMode::Write)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<LockMode, D::Error> {
        bool::deserialize(d).map(LockMode::from_write)
    }
}

/// Lock types of `lock_wait_begin`, from `lock:contention_begin` flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LockType {
    Mutex,
    RwsemRead,
    RwsemWrite,
    Spinlock,
    RwlockRead,
    RwlockWrite,
    Other,
}

/// userfaultfd ioctl operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum UffdOp {
    Api,
    Register,
    Unregister,
    Wake,
    Copy,
    Zeropage,
    Writeprotect,
    Continue,
    Poison,
    Move,
}

/// The futex operation a user-space lock wait sleeps in (futex(2)'s op names, lower case;
/// `waitv` for futex_waitv(2)).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FutexOp {
    Wait,
    WaitBitset,
    LockPi,
    LockPi2,
    WaitRequeuePi,
    Waitv,
}

/// What a futex is, as far as its wait shows: a lock with an owner to name, or a word with no
/// owner semantics (condition variables, barriers, semaphores, unknown words), which never gets
/// an edge in the graph.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UserLockKind {
    /// A priority-inheritance futex (`FUTEX_LOCK_PI*`): the kernel's protocol puts the owner's
    /// TID in the word.
    PiMutex,
    /// glibc's `pthread_mutex_t` (its waiters sleep on the word with value 2).
    PthreadMutex,
    /// glibc's `pthread_rwlock_t`, its waiter asking for read.
    PthreadRwlockRead,
    /// glibc's `pthread_rwlock_t`, its waiter asking for write.
    PthreadRwlockWrite,
    /// Any other futex: nothing says who could release it.
    Futex,
}

impl UserLockKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PiMutex => "pi_mutex",
            Self::PthreadMutex => "pthread_mutex",
            Self::PthreadRwlockRead | Self::PthreadRwlockWrite => "pthread_rwlock",
            Self::Futex => "futex",
        }
    }

    /// Whether a waiter on it waits for an owner (a lock), not for an event.
    pub fn has_owner(self) -> bool {
        !matches!(self, Self::Futex)
    }
}

/// The owner of a user-space lock as its waiter found it, and how faultline knows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserLockOwner {
    pub tid: u32,
    /// The kernel's own protocol says so (a PI futex word): exact. Otherwise a library's
    /// memory layout, read and checked for plausibility: inferred.
    pub exact: bool,
    /// What was read, and what was checked.
    pub evidence: String,
}

/// How a futex wait ended, as the waker's context shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FutexOutcome {
    /// Woken by a task inside a futex wake operation (`waker_tid`).
    Woken,
    /// Interrupted by a signal (the waker sent one, or exited its group).
    Signal,
    /// The wait had a timeout and nothing else woke it: timed out.
    Timeout,
    /// Anything else.
    Other,
}

/// What happened, per kind. Field names are the trace format's.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EventKind {
    MmapLockStart {
        mm: Addr,
        #[serde(rename = "write", with = "write_flag")]
        mode: LockMode,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mm_pid: Option<u32>,
    },
    MmapLockAcquire {
        mm: Addr,
        #[serde(rename = "write", with = "write_flag")]
        mode: LockMode,
        success: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mm_pid: Option<u32>,
    },
    MmapLockRelease {
        mm: Addr,
        #[serde(rename = "write", with = "write_flag")]
        mode: LockMode,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mm_pid: Option<u32>,
    },
    LockWaitBegin {
        lock: Addr,
        #[serde(rename = "type")]
        lock_type: LockType,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        owner_tid: Option<u32>,
        /// When the lock is an mm's `mmap_lock`: that mm.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mm: Option<Addr>,
    },
    LockWaitEnd {
        lock: Addr,
        ret: i32,
        /// When the lock is an mm's `mmap_lock`: that mm (the wait's end ends that attempt).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mm: Option<Addr>,
    },
    PageFault {
        addr: Addr,
        user: bool,
        error_code: u64,
        /// A kernel-mode fault taken while the task held an mmap_lock or owned a contended
        /// lock (a lock held across a user copy: the driver-mutex seed's rule).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        under_lock: bool,
    },
    UffdWaitBegin {
        uffd: Addr,
        addr: Addr,
    },
    UffdWaitEnd {
        uffd: Addr,
    },
    UffdIoctlBegin {
        uffd: Addr,
        op: UffdOp,
    },
    UffdIoctlEnd {
        uffd: Addr,
        op: UffdOp,
        ret: i64,
    },
    /// The process (`pid`; `tid` is its leader) holds a descriptor of `uffd`: found by a scan
    /// of open files, not an ioctl (the agent's ioctl hooks attach only while a userfaultfd
    /// exists, so a context's setup may predate them).
    UffdHeld {
        uffd: Addr,
    },
    TaskExit {},
    /// The task sleeps in a futex wait or lock operation on `futex` (a user address of its
    /// process). `lock` says what the futex is; `owner`, when it is a lock whose owner was
    /// found, who holds it and how that is known; `name`, the futex's symbol or file and
    /// offset when it lies in a mapped file.
    FutexWaitBegin {
        futex: Addr,
        op: FutexOp,
        lock: UserLockKind,
        /// Where the lock starts, when not at the futex (an rwlock's waiters sleep on words
        /// inside it): waits on one lock meet there.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        lock_addr: Option<Addr>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        owner: Option<UserLockOwner>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
    },
    /// The task's futex sleep on `futex` ended.
    FutexWaitEnd {
        futex: Addr,
        outcome: FutexOutcome,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        waker_tid: Option<u32>,
    },
    /// The task was seen issuing userfaultfd ioctls on `uffd`, resolving faults (`resolver`)
    /// or only setting it up, by the kernel's handler table rather than an ioctl record (that
    /// record was lost, or predates the trace): a snapshot's restoration, not an ioctl now.
    UffdHandlerSeen {
        uffd: Addr,
        resolver: bool,
    },
    /// The source dropped `count` records just before `ts_ns` (the ring buffer was full): any
    /// task with state may have changed unseen. `tid` and `pid` are 0.
    Lost {
        count: u64,
    },
    // Corrections: a live source reconciles its stream with snapshots of the kernel's state,
    // and says what it concluded as events, so a replay of what it fed the engine decides as
    // it did. None of them is the task's own activity.
    /// A snapshot shows the task no longer waits: the record that ended its wait was lost.
    WaitEnded {},
    /// A snapshot shows the task no longer holds `mm`'s lock: its release record was lost.
    HoldEnded {
        mm: Addr,
    },
    /// The task is gone from the host without an exit record (lost, or before the trace).
    TaskGone {},
    /// Every task of process `pid` is gone from the host (`tid` is `pid`): the mms it owned
    /// lose their identity, so a reused address starts clean.
    ProcessGone {},
    /// The read holders of `mm`'s lock inferred now, replacing earlier inferences (empty:
    /// none any more). `tid` and `pid` are 0.
    ReadHoldersInferred {
        mm: Addr,
        readers: Vec<InferredReader>,
    },
    /// A snapshot taken after every loss so far confirmed or corrected each task's state: none
    /// is unknown any more. `tid` and `pid` are 0.
    Confirmed {},
    /// A snapshot of the kernel's state, taken at `ts_ns`, has been applied (its corrections
    /// come before this event): the timed detectors run now, as the live agent ran them then.
    /// `tid` and `pid` are 0.
    Snapshot {},
    /// First line of an agent's journal (`agent --record`): the events that follow are in the
    /// order the agent applied them, so one whose real time was learned late (the start of a
    /// wait a snapshot found, an acquisition's start carried by its end) may come after later
    /// ones by any amount. `tid` and `pid` are 0.
    Journal {},
    /// The kernel lock-contention profile as the recording saw it when it stopped: every
    /// contended kernel-lock wait of the recording, aggregated by lock, waiter stack, cgroup
    /// and type (see `lock_profile`). The last line of a `record` trace; `tid` and `pid` are 0.
    LockProfile {
        samples: Vec<crate::lock_profile::Sample>,
        drops: crate::lock_profile::Drops,
    },
}

/// A task inferred to hold an `mmap_lock` for read, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InferredReader {
    pub tid: u32,
    pub pid: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comm: Option<String>,
    pub evidence: String,
}

/// One event: who (tid, pid = tgid, comm), when (CLOCK_MONOTONIC ns) and what.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub ts_ns: u64,
    pub tid: u32,
    pub pid: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comm: Option<String>,
    #[serde(flatten)]
    pub kind: EventKind,
}

impl EventKind {
    /// Whether this is a source's conclusion rather than a task's activity: a loss, a
    /// snapshot's correction or restoration. The engine does not run its timed detectors on
    /// one, so a snapshot's conclusions are all in before they are judged.
    pub fn is_correction(&self) -> bool {
        matches!(
            self,
            Self::Lost { .. }
                | Self::UffdHandlerSeen { .. }
                | Self::WaitEnded {}
                | Self::HoldEnded { .. }
                | Self::TaskGone {}
                | Self::ProcessGone {}
                | Self::ReadHoldersInferred { .. }
                | Self::Confirmed {}
                | Self::Snapshot {}
                | Self::Journal {}
                | Self::LockProfile { .. }
        )
    }

    /// The `kind` string of the trace format.
    pub fn name(&self) -> &'static str {
        match self {
            Self::MmapLockStart { .. } => "mmap_lock_start",
            Self::MmapLockAcquire { .. } => "mmap_lock_acquire",
            Self::MmapLockRelease { .. } => "mmap_lock_release",
            Self::LockWaitBegin { .. } => "lock_wait_begin",
            Self::LockWaitEnd { .. } => "lock_wait_end",
            Self::PageFault { .. } => "page_fault",
            Self::UffdWaitBegin { .. } => "uffd_wait_begin",
            Self::UffdWaitEnd { .. } => "uffd_wait_end",
            Self::UffdIoctlBegin { .. } => "uffd_ioctl_begin",
            Self::UffdIoctlEnd { .. } => "uffd_ioctl_end",
            Self::UffdHeld { .. } => "uffd_held",
            Self::TaskExit {} => "task_exit",
            Self::FutexWaitBegin { .. } => "futex_wait_begin",
            Self::FutexWaitEnd { .. } => "futex_wait_end",
            Self::UffdHandlerSeen { .. } => "uffd_handler_seen",
            Self::Lost { .. } => "lost",
            Self::WaitEnded {} => "wait_ended",
            Self::HoldEnded { .. } => "hold_ended",
            Self::TaskGone {} => "task_gone",
            Self::ProcessGone {} => "process_gone",
            Self::ReadHoldersInferred { .. } => "read_holders_inferred",
            Self::Confirmed {} => "confirmed",
            Self::Snapshot {} => "snapshot",
            Self::Journal {} => "journal",
            Self::LockProfile { .. } => "lock_profile",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mmap_lock_acquire_round_trips_in_the_documented_shape() {
        let ev = Event {
            ts_ns: 12,
            tid: 3,
            pid: 2,
            comm: Some("procA".into()),
            kind: EventKind::MmapLockAcquire {
                mm: Addr(0xffff_8880_1234_5000),
                mode: LockMode::Write,
                success: true,
                mm_pid: Some(20),
            },
        };
        let line = serde_json::to_string(&ev).expect("serialize");
        assert_eq!(
            line,
            r#"{"ts_ns":12,"tid":3,"pid":2,"comm":"procA","kind":"mmap_lock_acquire","mm":"0xffff888012345000","write":true,"success":true,"mm_pid":20}"#
        );
        let back: Event = serde_json::from_str(&line).expect("parse");
        assert_eq!(back, ev);
    }

    #[test]
    fn unknown_fields_are_ignored_and_optional_ones_default() {
        let ev: Event = serde_json::from_str(
            r#"{"ts_ns":1,"tid":1,"pid":1,"kind":"lock_wait_begin","lock":"0x10","type":"rwsem_write","extra":[1,2]}"#,
        )
        .expect("parse");
        assert_eq!(
            ev.kind,
            EventKind::LockWaitBegin {
                lock: Addr(0x10),
                lock_type: LockType::RwsemWrite,
                owner_tid: None,
                mm: None
            }
        );
        assert_eq!(ev.comm, None);
    }

    #[test]
    fn uffd_ops_use_the_documented_names() {
        let ev: Event = serde_json::from_str(
            r#"{"ts_ns":1,"tid":1,"pid":1,"kind":"uffd_ioctl_end","uffd":"0xabc","op":"WRITEPROTECT","ret":-11}"#,
        )
        .expect("parse");
        assert!(matches!(
            ev.kind,
            EventKind::UffdIoctlEnd {
                op: UffdOp::Writeprotect,
                ret: -11,
                ..
            }
        ));
    }

    #[test]
    fn addresses_without_0x_are_rejected() {
        let err = serde_json::from_str::<Event>(
            r#"{"ts_ns":1,"tid":1,"pid":1,"kind":"mmap_lock_release","mm":"1234","write":false}"#,
        )
        .expect_err("must fail");
        assert!(err.to_string().contains("must start with 0x"), "{err}");
    }
}
