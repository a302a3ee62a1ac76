//! The `mmap_lock` hooks (`tracer-ebpf/src/mmap_lock.rs`): `mmap_lock_start_locking`,
//! `mmap_lock_acquire_returned` and `mmap_lock_released`, attached from `--detail holders` on
//! (`start_locking` in `full` only). They run on every acquisition, contended or not, which
//! is why the default mode leaves them out.

use tracer_common::{mode, names::program, EventKind as WireKind, MmapLockEvent};

use super::FallbackHook;
use crate::{
    core::event::{Addr, EventKind, LockMode},
    kernel::{
        decode::{nonzero, DecodeError, Parts, Record},
        probes::kernel::{MmapLockProto, Prototypes},
    },
};

/// The first mainline kernel with the tracepoints: commit 2b5067a8143e ("mm: mmap_lock: add
/// tracepoints around lock acquisition", Dec 2020) went into 5.11.
pub const SINCE: &str = "5.11";

/// Index 0: the 6.14+ prototypes `(mm, write[, success])`; 1: the older
/// `(mm, memcg_path, write[, success])`.
pub const START: FallbackHook = FallbackHook {
    category: "mmap_lock",
    tracepoint: "mmap_lock_start_locking",
    btf: [
        program::MMAP_LOCK_START_BTF,
        program::MMAP_LOCK_START_BTF_MEMCG,
    ],
    pick,
    tp: program::MMAP_LOCK_START_TP,
};
pub const ACQUIRE: FallbackHook = FallbackHook {
    category: "mmap_lock",
    tracepoint: "mmap_lock_acquire_returned",
    btf: [
        program::MMAP_LOCK_ACQUIRE_BTF,
        program::MMAP_LOCK_ACQUIRE_BTF_MEMCG,
    ],
    pick,
    tp: program::MMAP_LOCK_ACQUIRE_TP,
};
pub const RELEASE: FallbackHook = FallbackHook {
    category: "mmap_lock",
    tracepoint: "mmap_lock_released",
    btf: [
        program::MMAP_LOCK_RELEASE_BTF,
        program::MMAP_LOCK_RELEASE_BTF_MEMCG,
    ],
    pick,
    tp: program::MMAP_LOCK_RELEASE_TP,
};

/// The variant for this kernel's prototypes, or why there is none.
fn pick(protos: &Prototypes) -> Result<usize, String> {
    match &protos.mmap_lock {
        MmapLockProto::Current => Ok(0),
        MmapLockProto::MemcgPath => Ok(1),
        MmapLockProto::Unknown(args) => Err(format!(
            "unsupported mmap_lock tracepoint prototype ({})",
            args.join(", ")
        )),
        MmapLockProto::Missing => Err(format!(
            "no mmap_lock tracepoints in this kernel's BTF (they appeared in {SINCE})"
        )),
    }
}

/// What the kernel's lack of the tracepoints costs (`kernel::features`).
pub const KERNEL_WITHOUT: &str = "no mmap_lock holds or waits from the mmap_lock hooks; waits still come from lock contention where the kernel has it";

/// `MmapLockStart` / `MmapLockAcquire` / `MmapLockRelease`.
pub fn decode(kind: WireKind, record: &Record) -> Result<Parts, DecodeError> {
    let ev: MmapLockEvent = record.read()?;
    let mode = match ev.mode {
        mode::READ => LockMode::Read,
        mode::WRITE => LockMode::Write,
        other => return Err(DecodeError::BadMode(other)),
    };
    // 0: the caller's own mm; u32::MAX: a foreign mm whose owner could not be read. An mm
    // owned by the caller's own process (exec's new mm, a fork child's before it runs) is
    // reported as the caller's: `mm_pid` names other processes only.
    let mm_pid = (ev.mm_tgid != 0 && ev.mm_tgid != u32::MAX && ev.mm_tgid != record.header.tgid)
        .then_some(ev.mm_tgid);
    let mm = Addr(ev.mm);
    let start = EventKind::MmapLockStart { mm, mode, mm_pid };
    let acquire = |success| EventKind::MmapLockAcquire {
        mm,
        mode,
        success,
        mm_pid,
    };
    Ok(match kind {
        // An attempt implies nothing earlier, but carries its own start for the histogram.
        WireKind::MmapLockStart => Parts {
            since_ns: nonzero(ev.since_ns),
            ..Parts::alone(record.now(start))
        },
        WireKind::MmapLockAcquire => Parts::ending(
            record,
            record.now(acquire(ev.success != 0)),
            ev.since_ns,
            start,
        ),
        _ => Parts::ending(
            record,
            record.now(EventKind::MmapLockRelease { mm, mode, mm_pid }),
            ev.since_ns,
            acquire(true),
        ),
    })
}
