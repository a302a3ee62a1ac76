//! Lock contention (`tracer-ebpf/src/contention.rs`): `lock:contention_begin/end`, which fire
//! only on the slow path of a sleeping lock. The default mode's source of `mmap_lock` waits
//! and of every mutex/rwsem edge.

use tracer_common::{lock_type, names::program, EventKind as WireKind, LockWaitEvent};

use super::{Coverage, GivesUp, Optional};
use crate::{
    core::event::{Addr, EventKind, LockType},
    kernel::{
        decode::{nonzero, DecodeError, Parts, Record},
        probes::attach::Program,
    },
};

/// The BTF type that says the kernel has the tracepoints (5.19+); the plan reads it before
/// loading.
pub const BTF_TYPE: &str = "btf_trace_contention_begin";

pub const PROGRAMS: &[Optional] = &[
    Optional {
        program: Program::btf(program::CONTENTION_BEGIN_BTF, "contention_begin"),
        coverage: Coverage::LockContention,
    },
    Optional {
        program: Program::btf(program::CONTENTION_END_BTF, "contention_end"),
        coverage: Coverage::LockContention,
    },
];

pub const LOCK_CONTENTION: GivesUp = GivesUp {
    name: "lock contention (mutex/rwsem waits and owners)",
    without: "no mutex/rwsem edges, and mmap_lock waits need the mmap_lock hooks (--detail holders is used instead)",
};

/// What the kernel's lack of the tracepoints costs (`kernel::features`).
pub const KERNEL_WITHOUT: &str =
    "no kernel-lock edges; the agent runs with --detail holders so mmap_lock waits still show";

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

/// `LockWaitBegin` / `LockWaitEnd`.
pub fn decode(kind: WireKind, record: &Record) -> Result<Parts, DecodeError> {
    let ev: LockWaitEvent = record.read()?;
    let lock = Addr(ev.lock);
    let mm = nonzero(ev.mm).map(Addr);
    let begin = EventKind::LockWaitBegin {
        lock,
        lock_type: lock_type_of(ev.lock_type)?,
        owner_tid: (ev.owner_tid != 0).then_some(ev.owner_tid),
        mm,
    };
    Ok(if kind == WireKind::LockWaitBegin {
        Parts::alone(record.now(begin))
    } else {
        let end = record.now(EventKind::LockWaitEnd {
            lock,
            ret: ev.ret,
            mm,
        });
        Parts::ending(record, end, ev.since_ns, begin)
    })
}
