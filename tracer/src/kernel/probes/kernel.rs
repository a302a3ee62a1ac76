//! Facts about the running kernel, discovered at start-up: struct offsets from BTF and tracepoint
//! layouts from tracefs. Nothing here is baked in at build time (Rust eBPF has no CO-RE).

use std::{
    fs,
    path::{Path, PathBuf},
};

use btf_rs::{Btf, Type};
use tracer_common::{DiagOffsets, KernelOffsets, TracepointLayout};

pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("cannot read kernel BTF at {path}: {message} (is CONFIG_DEBUG_INFO_BTF enabled?)")]
    Btf { path: String, message: String },
    #[error("tracefs is not mounted and mounting it at /sys/kernel/tracing failed: {0} (mount it: `mount -t tracefs tracefs /sys/kernel/tracing`)")]
    TracefsMount(std::io::Error),
    #[error("tracepoint {category}:{name} is not in this kernel ({path} missing)")]
    NoTracepoint {
        category: String,
        name: String,
        path: PathBuf,
    },
    #[error("tracepoint {category}:{name}: field `{field}` not in its format file")]
    NoField {
        category: String,
        name: String,
        field: String,
    },
}

/// The layout of the `mmap_lock_*` tracepoint prototypes on this kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MmapLockProto {
    /// 6.14+: `(mm, write[, success])`.
    Current,
    /// Before 6.14: `(mm, memcg_path, write[, success])`.
    MemcgPath,
    /// A layout faultline has no programs for (the argument names, for the report).
    Unknown(Vec<String>),
    /// No `mmap_lock` tracepoints in BTF (before 5.11, or not built).
    Missing,
}

/// Tracepoint prototypes that differ between kernels, read from BTF at start-up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Prototypes {
    pub mmap_lock: MmapLockProto,
    /// `sched_process_exit` passes `group_dead` (recent kernels).
    pub exit_group_dead: bool,
}

/// The kernel's BTF, parsed once.
pub struct KernelBtf {
    btf: Btf,
}

impl KernelBtf {
    pub fn load() -> Result<Self, KernelError> {
        Self::from_path(VMLINUX_BTF)
    }

    pub fn from_path(path: &str) -> Result<Self, KernelError> {
        Btf::from_file(path)
            .map(|btf| Self { btf })
            .map_err(|e| KernelError::Btf {
                path: path.to_owned(),
                message: e.to_string(),
            })
    }

    /// Byte offset of `field` in `struct name`, looking through anonymous struct/union members
    /// (mm_struct keeps most fields in an unnamed struct for layout randomisation).
    pub fn member_offset(&self, name: &str, field: &str) -> Option<u32> {
        let types = self.btf.resolve_types_by_name(name).ok()?;
        types.iter().find_map(|t| match t {
            Type::Struct(s) if !s.members.is_empty() => self.find_member(s, field, 0),
            _ => None,
        })
    }

    fn find_member(&self, s: &btf_rs::Struct, field: &str, base_bits: u32) -> Option<u32> {
        for m in &s.members {
            let bits = base_bits + m.bit_offset();
            let name = self.btf.resolve_name(m).unwrap_or_default();
            if name == field {
                return bits.is_multiple_of(8).then_some(bits / 8);
            }
            if name.is_empty() {
                if let Ok(Type::Struct(inner) | Type::Union(inner)) =
                    self.btf.resolve_chained_type(m)
                {
                    if let Some(off) = self.find_member(&inner, field, bits) {
                        return Some(off);
                    }
                }
            }
        }
        None
    }

    /// Whether the kernel has a function or tracepoint type of this name (e.g. `btf_trace_X`).
    pub fn has_type(&self, name: &str) -> bool {
        self.btf
            .resolve_ids_by_name(name)
            .map(|ids| !ids.is_empty())
            .unwrap_or(false)
    }

    /// The argument names of tracepoint `name` as a `tp_btf` program sees them (see
    /// `prototype`: names come from the event class's `__bpf_trace_<class>` function). `None`
    /// when the kernel has no such tracepoint.
    pub fn tracepoint_args(&self, name: &str) -> Option<Vec<String>> {
        super::prototype::tracepoint_args(&self.btf, name).ok()
    }

    /// The tracepoint prototypes whose layout changed between kernels, as this one has them.
    pub fn prototypes(&self) -> Prototypes {
        let mmap_lock = match self.tracepoint_args("mmap_lock_acquire_returned") {
            None => MmapLockProto::Missing,
            Some(args) => {
                let names: Vec<&str> = args.iter().map(String::as_str).collect();
                match names.as_slice() {
                    ["mm", "write", "success"] => MmapLockProto::Current,
                    ["mm", "memcg_path", "write", "success"] => MmapLockProto::MemcgPath,
                    _ => MmapLockProto::Unknown(args),
                }
            }
        };
        let exit_group_dead = self
            .tracepoint_args("sched_process_exit")
            .is_some_and(|a| a.get(1).is_some_and(|n| n == "group_dead"));
        Prototypes {
            mmap_lock,
            exit_group_dead,
        }
    }

    /// The offsets the programs use; a missing one stays 0 and disables only what needs it.
    /// (`mutex.owner` is legitimately 0: it is the struct's first member.)
    pub fn offsets(&self) -> KernelOffsets {
        let off = |s: &str, f: &str| self.member_offset(s, f).unwrap_or(0);
        let (huf_start, huf_end) = kallsyms_range("handle_userfault").unwrap_or((0, 0));
        KernelOffsets {
            task_mm: off("task_struct", "mm"),
            task_tgid: off("task_struct", "tgid"),
            mm_owner: off("mm_struct", "owner"),
            task_pid: off("task_struct", "pid"),
            mutex_owner: off("mutex", "owner"),
            rwsem_owner: off("rw_semaphore", "owner"),
            mm_mmap_lock: off("mm_struct", "mmap_lock"),
            task_files: off("task_struct", "files"),
            files_fdt: off("files_struct", "fdt"),
            fdt_fd: off("fdtable", "fd"),
            file_private: off("file", "private_data"),
            uffd_ctx_mm: off("userfaultfd_ctx", "mm"),
            file_f_op: off("file", "f_op"),
            fops_poll: off("file_operations", "poll"),
            // Only where `siglock` is `sighand_struct`'s first member (every kernel so far): the
            // programs compare the lock with the pointer itself.
            task_sighand: match self.member_offset("sighand_struct", "siglock") {
                Some(0) => off("task_struct", "sighand"),
                _ => 0,
            },
            task_comm: off("task_struct", "comm"),
            handle_userfault_start: huf_start,
            handle_userfault_end: huf_end,
            uffd_fops: kallsyms_data("userfaultfd_fops").unwrap_or(0),
            uffd_poll: kallsyms_range("userfaultfd_poll").map_or(0, |(start, _)| start),
        }
    }

    /// The offsets the diagnose iterators read with; the agent's userfaultfd scan uses them too.
    pub fn diag_offsets(&self) -> DiagOffsets {
        let off = |s: &str, f: &str| self.member_offset(s, f).unwrap_or(0);
        DiagOffsets {
            task_state: off("task_struct", "__state"),
            task_blocker: off("task_struct", "blocker"),
            task_pid: off("task_struct", "pid"),
            task_tgid: off("task_struct", "tgid"),
            task_mm: off("task_struct", "mm"),
            mm_owner: off("mm_struct", "owner"),
            mm_mmap_lock: off("mm_struct", "mmap_lock"),
            rwsem_count: off("rw_semaphore", "count"),
            rwsem_owner: off("rw_semaphore", "owner"),
            rwsem_wait_list: off("rw_semaphore", "wait_list"),
            waiter_task: off("rwsem_waiter", "task"),
            waiter_type: off("rwsem_waiter", "type"),
            mutex_owner: off("mutex", "owner"),
            file_private: off("file", "private_data"),
            uffd_ctx_mm: off("userfaultfd_ctx", "mm"),
            uffd_fault_pending_wqh: off("userfaultfd_ctx", "fault_pending_wqh"),
            uffd_fault_wqh: off("userfaultfd_ctx", "fault_wqh"),
            wqh_head: off("wait_queue_head", "head"),
            wqe_private: off("wait_queue_entry", "private"),
            wqe_entry: off("wait_queue_entry", "entry"),
            file_f_op: off("file", "f_op"),
            fops_poll: off("file_operations", "poll"),
            uffd_poll: kallsyms_range("userfaultfd_poll").map_or(0, |(start, _)| start),
        }
    }
}

/// The text range `[start, end)` of kernel function `name`, from /proc/kallsyms (root sees real
/// addresses; others see zeros, which yields `None`). The end is the next symbol's address.
pub fn kallsyms_range(name: &str) -> Option<(u64, u64)> {
    let text = fs::read_to_string("/proc/kallsyms").ok()?;
    let mut start = None;
    let mut addrs: Vec<u64> = Vec::new();
    for line in text.lines() {
        let mut parts = line.split_whitespace();
        let (Some(addr), Some(kind), Some(sym)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        if !matches!(kind, "t" | "T") {
            continue;
        }
        let Ok(addr) = u64::from_str_radix(addr, 16) else {
            continue;
        };
        if sym == name && parts.next().is_none() {
            start = Some(addr);
        }
        addrs.push(addr);
    }
    let start = start.filter(|&a| a != 0)?;
    let end = addrs.into_iter().filter(|&a| a > start).min()?;
    Some((start, end))
}

/// The address of kernel data symbol `name` (read-only or data section), from /proc/kallsyms:
/// listed only on kernels built with CONFIG_KALLSYMS_ALL, and as zero to non-root readers.
pub fn kallsyms_data(name: &str) -> Option<u64> {
    let text = fs::read_to_string("/proc/kallsyms").ok()?;
    text.lines().find_map(|line| {
        let mut parts = line.split_whitespace();
        let (addr, kind, sym) = (parts.next()?, parts.next()?, parts.next()?);
        (sym == name && parts.next().is_none() && matches!(kind, "r" | "R" | "d" | "D"))
            .then(|| u64::from_str_radix(addr, 16).ok())
            .flatten()
            .filter(|&a| a != 0)
    })
}

/// The `sys_enter_ioctl` / `sys_exit_ioctl` layouts (the exit layout is shared by every syscall).
pub fn syscall_layout(root: &Path) -> Result<tracer_common::SyscallLayout, KernelError> {
    let enter = tracepoint_field_offsets(root, "syscalls", "sys_enter_ioctl", &["fd", "cmd"])?;
    let exit = tracepoint_field_offsets(root, "syscalls", "sys_exit_ioctl", &["ret"])?;
    Ok(tracer_common::SyscallLayout {
        ioctl_fd: enter[0],
        ioctl_cmd: enter[1],
        exit_ret: exit[0],
        _pad: 0,
    })
}

const TRACEFS_DIRS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// The tracefs root, mounting it at /sys/kernel/tracing if no mount is found (root only).
pub fn tracefs_root() -> Result<PathBuf, KernelError> {
    if let Some(dir) = TRACEFS_DIRS
        .iter()
        .map(Path::new)
        .find(|d| d.join("events").is_dir())
    {
        return Ok(dir.to_path_buf());
    }
    mount_tracefs().map_err(KernelError::TracefsMount)?;
    Ok(PathBuf::from(TRACEFS_DIRS[0]))
}

fn mount_tracefs() -> std::io::Result<()> {
    let target = c"/sys/kernel/tracing";
    let fstype = c"tracefs";
    // SAFETY: valid NUL-terminated strings; a plain mount with no data.
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Offsets of the named fields in a classic tracepoint's record, from its `format` file.
pub fn tracepoint_field_offsets(
    root: &Path,
    category: &str,
    name: &str,
    fields: &[&str],
) -> Result<Vec<u32>, KernelError> {
    let path = root.join("events").join(category).join(name).join("format");
    let text = fs::read_to_string(&path).map_err(|_| KernelError::NoTracepoint {
        category: category.into(),
        name: name.into(),
        path: path.clone(),
    })?;
    fields
        .iter()
        .map(|field| {
            parse_field_offset(&text, field).ok_or_else(|| KernelError::NoField {
                category: category.into(),
                name: name.into(),
                field: (*field).into(),
            })
        })
        .collect()
}

/// Finds `offset:N` on the `field:` line whose declaration ends in ` <field>;`.
fn parse_field_offset(format: &str, field: &str) -> Option<u32> {
    format.lines().find_map(|line| {
        let line = line.trim();
        let decl = line.strip_prefix("field:")?.split(';').next()?;
        let ident = decl.rsplit([' ', '*']).next()?;
        if ident != field {
            return None;
        }
        let off = line
            .split(';')
            .find_map(|p| p.trim().strip_prefix("offset:"))?;
        off.trim().parse().ok()
    })
}

/// The classic `mmap_lock` tracepoints' layout (same fields in all three).
pub fn mmap_lock_layout(root: &Path) -> Result<TracepointLayout, KernelError> {
    let start = tracepoint_field_offsets(
        root,
        "mmap_lock",
        "mmap_lock_start_locking",
        &["mm", "write"],
    )?;
    let acq = tracepoint_field_offsets(
        root,
        "mmap_lock",
        "mmap_lock_acquire_returned",
        &["mm", "write", "success"],
    )?;
    let rel = tracepoint_field_offsets(root, "mmap_lock", "mmap_lock_released", &["mm", "write"])?;
    if start[..2] != acq[..2] || start != rel {
        // The programs share one layout; a kernel where they differ needs per-program globals.
        return Err(KernelError::NoField {
            category: "mmap_lock".into(),
            name: "mmap_lock_*".into(),
            field: "mm/write at the same offsets in all three".into(),
        });
    }
    Ok(TracepointLayout {
        mm: acq[0],
        write: acq[1],
        success: acq[2],
        _pad: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const FORMAT: &str = "name: mmap_lock_acquire_returned\nID: 675\nformat:\n\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\n\tfield:struct mm_struct * mm;\toffset:8;\tsize:8;\tsigned:0;\n\tfield:u64 memcg_id;\toffset:16;\tsize:8;\tsigned:0;\n\tfield:bool write;\toffset:24;\tsize:1;\tsigned:0;\n\tfield:bool success;\toffset:25;\tsize:1;\tsigned:0;\n";

    #[test]
    fn field_offsets_come_from_the_format_text() {
        assert_eq!(parse_field_offset(FORMAT, "mm"), Some(8));
        assert_eq!(parse_field_offset(FORMAT, "write"), Some(24));
        assert_eq!(parse_field_offset(FORMAT, "success"), Some(25));
        assert_eq!(parse_field_offset(FORMAT, "memcg"), None);
    }

    /// This machine's kernel (6.18): `(mm, write, success)`, `(task, group_dead)`.
    #[test]
    fn tracepoint_prototypes_come_from_the_running_kernels_btf() {
        let Ok(btf) = KernelBtf::load() else {
            panic!("no kernel BTF at {VMLINUX_BTF}: these machines have it");
        };
        let args = btf
            .tracepoint_args("mmap_lock_acquire_returned")
            .expect("mmap_lock_acquire_returned prototype");
        let expected = if args.len() == 4 {
            MmapLockProto::MemcgPath
        } else {
            MmapLockProto::Current
        };
        assert_eq!(btf.prototypes().mmap_lock, expected, "{args:?}");
        assert_eq!(args.first().map(String::as_str), Some("mm"), "{args:?}");
        assert_eq!(args.last().map(String::as_str), Some("success"), "{args:?}");
        assert!(btf.tracepoint_args("no_such_tracepoint_here").is_none());
        // 6.18's sched_process_exit passes group_dead.
        assert!(btf.prototypes().exit_group_dead, "{:?}", btf.prototypes());
    }
}
