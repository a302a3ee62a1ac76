//! `faultline check`: what this kernel offers faultline, and what faultline does without each.

use std::path::Path;

use serde::Serialize;

use crate::kernel::probes::{
    attach::AttachPoint,
    families::{exit, mmap_lock, uffd},
    kernel::{self, KernelBtf},
    AttachMode, Detail, IoctlHooks, ProbeOptions, Probes,
};

#[derive(Debug, Serialize)]
pub struct Item {
    pub name: String,
    pub available: bool,
    pub detail: String,
    /// What faultline does when this is missing.
    pub without: &'static str,
}

fn item(
    name: impl Into<String>,
    available: bool,
    detail: impl Into<String>,
    without: &'static str,
) -> Item {
    Item {
        name: name.into(),
        available,
        detail: detail.into(),
        without,
    }
}

/// Classic tracepoints faultline uses: the fallback of the hooks (in `check`'s order) and the
/// syscall hooks (the other optional programs attach as tp_btf and are reported as features).
fn tracepoints() -> Vec<(&'static str, &'static str, &'static str)> {
    let hooks = [
        &mmap_lock::START,
        &mmap_lock::ACQUIRE,
        &mmap_lock::RELEASE,
        &exit::TASK_EXIT,
    ]
    .map(|h| (h.category, h.tracepoint, "no fallback if tp_btf fails"));
    let syscalls = uffd::ioctl_programs().filter_map(|p| match p.at {
        AttachPoint::Tracepoint { category, name } => {
            Some((category, name, uffd::without_tracepoint(p.name)))
        }
        _ => None,
    });
    hooks.into_iter().chain(syscalls).collect()
}

/// Runs every check. Loading probes needs root; without it those items say so.
pub fn run() -> Vec<Item> {
    let mut items = Vec::new();
    let euid = unsafe { libc::geteuid() };
    items.push(item(
        "privileges",
        euid == 0,
        if euid == 0 {
            "running as root".to_string()
        } else {
            format!("euid {euid}: loading programs needs root or CAP_BPF+CAP_PERFMON")
        },
        "nothing can be traced; `faultline replay` still works",
    ));

    // The same items, names and decisions as the agent's start-up log and its
    // `faultline_feature_available` gauge: "privilege: <feature>".
    for a in crate::kernel::privileges::probe() {
        items.push(item(
            format!("privilege: {}", a.feature.name()),
            a.available(),
            match &a.status {
                Ok(()) => "available".to_string(),
                Err(why) => format!("{why}; needs {}", a.feature.granted_by()),
            },
            a.feature.without(),
        ));
    }

    let btf = KernelBtf::load();
    items.push(item(
        "btf",
        btf.is_ok(),
        match &btf {
            Ok(_) => kernel::VMLINUX_BTF.to_string(),
            Err(e) => e.to_string(),
        },
        "cannot start: struct offsets and tp_btf both come from kernel BTF",
    ));
    if let Ok(btf) = &btf {
        let off = btf.offsets();
        items.push(item(
            "offsets (BTF)",
            off.task_mm != 0 && off.task_tgid != 0 && off.task_pid != 0,
            format!(
                "task_struct.mm={} .tgid={} .pid={} .files={} mm_struct.owner={} .mmap_lock={} rw_semaphore.owner={} userfaultfd_ctx.mm={}",
                off.task_mm, off.task_tgid, off.task_pid, off.task_files, off.mm_owner,
                off.mm_mmap_lock, off.rwsem_owner, off.uffd_ctx_mm
            ),
            "foreign mm owners, lock owners or userfaultfd contexts are not reported",
        ));
        items.push(item(
            "handle_userfault (kallsyms)",
            off.handle_userfault_start != 0,
            if off.handle_userfault_start != 0 {
                format!(
                    "{:#x}..{:#x}",
                    off.handle_userfault_start, off.handle_userfault_end
                )
            } else {
                "not found in /proc/kallsyms (needs root)".to_string()
            },
            "userfaultfd waits are not detected",
        ));
        // How the lock-contention profile can name a lock on this kernel.
        let syms = crate::kernel::lock_names::Namer::new();
        let syms = syms.symbols();
        items.push(item(
            "lock names: static locks by symbol (CONFIG_KALLSYMS_ALL)",
            syms.has_data_symbols(),
            if syms.is_empty() {
                "no addresses in /proc/kallsyms (needs root or CAP_SYSLOG)".to_string()
            } else if syms.has_data_symbols() {
                "kallsyms lists data symbols: rtnl_mutex, cgroup_mutex, ... are named".to_string()
            } else {
                "kallsyms lists functions only: static locks are named by their contending caller (`caller:`)".to_string()
            },
            "static locks are named by their contending caller, marked `caller:`; mmap_lock is still named by its process",
        ));
        items.push(item(
            "lock names: well-known locks (siglock, rq lock)",
            off.task_sighand != 0,
            if off.task_sighand != 0 {
                "a process's siglock is recognised (task_struct.sighand); an rq lock by raw_spin_rq_lock_nested".to_string()
            } else {
                "sighand_struct.siglock is not where the programs expect it (BTF)".to_string()
            },
            "siglocks are named by their contending caller",
        ));
        // Said as missing on every kernel, with why: the kernel's facility is not the limit.
        let kmem_cache = btf.has_type("bpf_get_kmem_cache");
        items.push(item(
            "lock names: locks in slab objects by cache (bpf_get_kmem_cache)",
            false,
            if kmem_cache {
                "this kernel has bpf_get_kmem_cache (6.13+), but faultline's loader (aya 0.14) cannot relocate kfunc calls (later aya can, with Rust 1.98): not used".to_string()
            } else {
                "no bpf_get_kmem_cache (first in Linux 6.13); faultline's loader (aya 0.14) could not call it either".to_string()
            },
            "a lock inside a slab object (an inode's i_rwsem, a socket's lock) is named by its contending caller",
        ));
        items.push(item(
            "lock names: frames by function (kallsyms)",
            !syms.is_empty(),
            if syms.is_empty() {
                "no addresses in /proc/kallsyms (needs root or CAP_SYSLOG)".to_string()
            } else {
                "available".to_string()
            },
            "profile stacks show raw addresses, and locks other than mmap_lock are unnamed",
        ));
        // Kernel features, found in BTF, each with the first version that has it.
        for f in &crate::kernel::features::FEATURES {
            items.push(item(
                format!("kernel: {}", f.name),
                f.present(btf),
                f.detail(btf),
                f.without,
            ));
        }
    }

    for (mode, name, without) in [
        (
            AttachMode::Btf,
            "attach tp_btf (mmap_lock, sched_process_exit)",
            "classic tracepoints are used instead",
        ),
        (
            AttachMode::Tracepoint,
            "attach classic tracepoints (mmap_lock, sched)",
            "only a fallback: nothing lost while tp_btf works",
        ),
    ] {
        let r = Probes::load(&ProbeOptions {
            attach: mode,
            extras: false,
            ..Default::default()
        });
        items.push(item(
            name,
            r.is_ok(),
            match &r {
                Ok(p) => format!("attached ({})", p.attached()),
                Err(e) => e.to_string(),
            },
            without,
        ));
    }
    if let Ok(p) = Probes::load(&ProbeOptions::default()) {
        for (feature, result) in p.features() {
            items.push(item(
                format!("feature: {}", feature.name()),
                result.is_ok(),
                match result {
                    Ok(()) => "attached".to_string(),
                    Err(e) => e.clone(),
                },
                feature.without(),
            ));
        }
    }

    // The userfaultfd ioctl hooks' gate: whether the scan that opens it works here.
    let gated = ProbeOptions {
        uffd_ioctls: IoctlHooks::WhileUffdExists,
        ..Default::default()
    };
    if let Ok(mut p) = Probes::load(&gated) {
        if p.ioctls_gated() {
            let scan = p.scan_uffds(std::time::Instant::now());
            let works = scan.is_ok() && p.ioctls_gated();
            items.push(item(
                "userfaultfd ioctl hooks while a userfaultfd exists (--uffd-ioctl-hooks, default)",
                works,
                if works {
                    format!(
                        "the agent attaches them while its scan of open files (every snapshot) finds a userfaultfd ({} now), and detaches them {} after the last one: gives up the ioctls made between a userfaultfd's creation and the next scan, so handlers seen only in them are named by the processes holding the descriptor, and their latencies and errors are not counted (--uffd-ioctl-hooks always)",
                        scan.as_ref().map_or(0, |s| s.files.len()),
                        humantime::format_duration(crate::kernel::probes::uffd_gate::LINGER),
                    )
                } else {
                    match scan {
                        Err(e) => format!("the scan fails: {e}"),
                        Ok(_) => "the scan fails (see the log)".to_owned(),
                    }
                },
                "the hooks stay attached from start to exit, and every system call on the host pays for them",
            ));
        }
    }

    // What each detail mode gives up, and the flag that brings it back.
    for d in [Detail::Contention, Detail::Holders, Detail::Full] {
        let name = if d == Detail::default() {
            format!("detail {d} (default)")
        } else {
            format!("detail {d}")
        };
        if d.gives_up().is_empty() {
            items.push(item(name.clone(), true, "everything is tracked", "nothing"));
        }
        for lost in d.gives_up() {
            items.push(item(
                name.clone(),
                true,
                format!("gives up {lost}"),
                "nothing",
            ));
        }
    }

    match kernel::tracefs_root() {
        Ok(root) => {
            items.push(item(
                "tracefs",
                true,
                root.display().to_string(),
                "classic tracepoints unavailable",
            ));
            for (cat, name, without) in tracepoints() {
                let ok = root
                    .join("events")
                    .join(cat)
                    .join(name)
                    .join("format")
                    .exists();
                items.push(item(
                    format!("tracepoint {cat}:{name}"),
                    ok,
                    if ok { "present" } else { "missing" },
                    without,
                ));
            }
            items.push(item(
                "kprobes",
                Path::new(&root).join("kprobe_events").exists(),
                "kprobe_events in tracefs (not required)",
                "nothing: faultline does not need kprobes",
            ));
        }
        Err(e) => items.push(item(
            "tracefs",
            false,
            e.to_string(),
            "classic tracepoints unavailable",
        )),
    }
    items
}

pub fn print_text(items: &[Item], out: &mut impl std::io::Write) -> std::io::Result<()> {
    for i in items {
        let mark = if i.available { "ok  " } else { "MISS" };
        writeln!(out, "{mark} {:<62} {}", i.name, i.detail)?;
        if !i.available {
            writeln!(out, "     without it: {}", i.without)?;
        }
    }
    Ok(())
}
