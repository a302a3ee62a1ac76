//! BPF iterators for `faultline diagnose`: a one-shot read of exact kernel state on a host that
//! may already be hung. They only read; every walk of a kernel list is bounded.

use aya_ebpf::{
    helpers::{bpf_probe_read_kernel, bpf_seq_write},
    macros::map,
    maps::HashMap,
};
use tracer_common::{diag_kind, DiagOffsets, DiagRecord, FdKey};

#[no_mangle]
static DIAG_OFFSETS: DiagOffsets = DiagOffsets {
    task_state: 0,
    task_blocker: 0,
    task_pid: 0,
    task_tgid: 0,
    task_mm: 0,
    mm_owner: 0,
    mm_mmap_lock: 0,
    rwsem_count: 0,
    rwsem_owner: 0,
    rwsem_wait_list: 0,
    waiter_task: 0,
    waiter_type: 0,
    mutex_owner: 0,
    file_private: 0,
    uffd_ctx_mm: 0,
    uffd_fault_pending_wqh: 0,
    uffd_fault_wqh: 0,
    wqh_head: 0,
    wqe_private: 0,
    wqe_entry: 0,
    file_f_op: 0,
    fops_poll: 0,
    uffd_poll: 0,
};

/// The userfaultfd descriptors user space found (/proc/PID/fd → anon_inode:[userfaultfd]).
/// 1024 descriptors: more than any host has.
#[map]
static DIAG_UFFD_FDS: HashMap<FdKey, u8> =
    HashMap::with_max_entries(tracer_common::names::DIAG_UFFD_FDS_CAPACITY, 0);

/// Longest wait queue walked per lock or context.
const MAX_WAITERS: u32 = 128;

fn off() -> DiagOffsets {
    // SAFETY: a global the loader rewrites before load.
    unsafe { core::ptr::read_volatile(&DIAG_OFFSETS) }
}

fn rd<T: Default>(base: u64, offset: u32) -> T {
    // SAFETY: bpf_probe_read_kernel handles bad addresses; a failed read gives T::default().
    unsafe { bpf_probe_read_kernel((base as *const u8).add(offset as usize) as *const T) }
        .unwrap_or_default()
}

fn tid_of(task: u64) -> u32 {
    if task == 0 {
        return 0;
    }
    rd::<i32>(task, off().task_pid) as u32
}

fn emit(seq: u64, r: &DiagRecord) {
    // SAFETY: seq is the iterator's seq_file; the record is on our stack.
    unsafe {
        bpf_seq_write(
            seq as *mut _,
            r as *const DiagRecord as *const _,
            core::mem::size_of::<DiagRecord>() as u32,
        );
    }
}

/// Owner tid from an rwsem or mutex owner word (low bits are flags; rwsem bit 0 = readers).
fn owner_tid(word: u64, is_rwsem: bool) -> u32 {
    if is_rwsem && word & 1 != 0 {
        return 0;
    }
    tid_of(word & !0x7)
}

/// iter/task: every task with a blocker, and every mm's mmap_lock wait queue (walked once, from
/// its process's leader).
#[no_mangle]
#[link_section = "iter/task"]
pub extern "C" fn diag_tasks(ctx: *mut core::ffi::c_void) -> i32 {
    // SAFETY: the iterator context: { meta, task }.
    let (meta, task) = unsafe {
        let c = ctx as *const u64;
        (*c, *c.add(1))
    };
    if task == 0 || meta == 0 {
        return 0;
    }
    // SAFETY: meta->seq is the first field of bpf_iter_meta.
    let seq = unsafe { *(meta as *const u64) };
    let o = off();
    let tid = rd::<i32>(task, o.task_pid) as u32;
    let tgid = rd::<i32>(task, o.task_tgid) as u32;

    if o.task_blocker != 0 {
        let blocker: u64 = rd(task, o.task_blocker);
        if blocker != 0 {
            let lock = blocker & !tracer_common::blocker_type::MASK;
            let ty = blocker & tracer_common::blocker_type::MASK;
            let is_rwsem = ty >= tracer_common::blocker_type::RWSEM_READER;
            let owner_word: u64 = if is_rwsem {
                rd(lock, o.rwsem_owner)
            } else if ty == tracer_common::blocker_type::MUTEX {
                rd(lock, o.mutex_owner)
            } else {
                0
            };
            let count: u64 = if is_rwsem { rd(lock, o.rwsem_count) } else { 0 };
            emit(
                seq,
                &DiagRecord {
                    kind: diag_kind::BLOCKER,
                    tid,
                    tgid,
                    pos: 0,
                    a: blocker,
                    b: owner_word,
                    c: count,
                    d: if ty == tracer_common::blocker_type::SEM {
                        0
                    } else {
                        owner_tid(owner_word, is_rwsem) as u64
                    },
                },
            );
        }
    }

    // One walk per mm: from the thread-group leader only.
    if tid != tgid {
        return 0;
    }
    let mm: u64 = rd(task, o.task_mm);
    if mm == 0 {
        return 0;
    }
    let sem = mm + o.mm_mmap_lock as u64;
    let head = sem + o.rwsem_wait_list as u64;
    let mut node: u64 = rd(head, 0);
    if node == head || node == 0 {
        return 0;
    }
    let count: u64 = rd(sem, o.rwsem_count);
    let owner_word: u64 = rd(sem, o.rwsem_owner);
    emit(
        seq,
        &DiagRecord {
            kind: diag_kind::MMAP_LOCK,
            tid,
            tgid,
            pos: 0,
            a: mm,
            b: count,
            c: owner_word,
            d: owner_tid(owner_word, true) as u64,
        },
    );
    let mut pos = 0;
    while pos < MAX_WAITERS && node != head && node != 0 {
        // rwsem_waiter.list is its first member: the node is the waiter.
        let waiter_task: u64 = rd(node, o.waiter_task);
        let ty: u32 = rd(node, o.waiter_type);
        emit(
            seq,
            &DiagRecord {
                kind: diag_kind::MMAP_WAITER,
                tid,
                tgid,
                pos,
                a: mm,
                b: 0,
                c: ty as u64,
                d: tid_of(waiter_task) as u64,
            },
        );
        node = rd(node, 0);
        pos += 1;
    }
    0
}

/// Emits the tasks on one wait queue head of a userfaultfd context. Inlined: BPF calls take at
/// most five arguments.
#[inline(always)]
fn walk_wqh(seq: u64, o: &DiagOffsets, tid: u32, tgid: u32, uctx: u64, wqh_off: u32, which: u32) {
    let head = uctx + wqh_off as u64 + o.wqh_head as u64;
    let mut node: u64 = rd(head, 0);
    let mut n = 0;
    while n < MAX_WAITERS && node != head && node != 0 {
        let entry = node - o.wqe_entry as u64;
        let waiter: u64 = rd(entry, o.wqe_private);
        emit(
            seq,
            &DiagRecord {
                kind: diag_kind::UFFD_WAITER,
                tid,
                tgid,
                pos: which,
                a: uctx,
                b: 0,
                c: 0,
                d: tid_of(waiter) as u64,
            },
        );
        node = rd(node, 0);
        n += 1;
    }
}

/// iter/task_file: every userfaultfd descriptor, its context, the context's mm and owner, and
/// the tasks waiting on it. A descriptor counts when user space named it (`DIAG_UFFD_FDS`,
/// diagnose's /proc walk) or when its file's `f_op->poll` is `userfaultfd_poll` (the agent's
/// periodic scan, which names nothing in advance).
#[no_mangle]
#[link_section = "iter/task_file"]
pub extern "C" fn diag_files(ctx: *mut core::ffi::c_void) -> i32 {
    // SAFETY: the iterator context: { meta, task, fd (u32, padded), file }.
    let (meta, task, fd, file) = unsafe {
        let c = ctx as *const u64;
        (*c, *c.add(1), *(c.add(2) as *const u32), *c.add(3))
    };
    if task == 0 || meta == 0 || file == 0 {
        return 0;
    }
    let o = off();
    let tgid = rd::<i32>(task, o.task_tgid) as u32;
    let key = FdKey { tgid, fd };
    // SAFETY: a plain read of a map value.
    let named = unsafe { DIAG_UFFD_FDS.get(key) }.is_some();
    if !named && (o.uffd_poll == 0 || rd::<u64>(rd(file, o.file_f_op), o.fops_poll) != o.uffd_poll)
    {
        return 0;
    }
    // SAFETY: meta->seq is the first field of bpf_iter_meta.
    let seq = unsafe { *(meta as *const u64) };
    let tid = rd::<i32>(task, o.task_pid) as u32;
    let uctx: u64 = rd(file, o.file_private);
    if uctx == 0 {
        return 0;
    }
    let mm: u64 = rd(uctx, o.uffd_ctx_mm);
    let owner: u64 = if mm != 0 && o.mm_owner != 0 {
        rd(mm, o.mm_owner)
    } else {
        0
    };
    let owner_tgid = if owner != 0 {
        rd::<i32>(owner, o.task_tgid) as u64
    } else {
        0
    };
    emit(
        seq,
        &DiagRecord {
            kind: diag_kind::UFFD_FILE,
            tid,
            tgid,
            pos: fd,
            a: uctx,
            b: mm,
            c: owner_tgid,
            d: 0,
        },
    );
    walk_wqh(seq, &o, tid, tgid, uctx, o.uffd_fault_pending_wqh, 0);
    walk_wqh(seq, &o, tid, tgid, uctx, o.uffd_fault_wqh, 1);
    0
}
