//! What /proc tells about every task: state, wait channel, kernel stack, and which processes
//! hold userfaultfd descriptors. Read-only, and tolerant of tasks vanishing mid-scan.

use std::{collections::BTreeMap, fs, path::Path};

#[derive(Clone, Debug)]
pub struct ProcTask {
    pub tid: u32,
    pub pid: u32,
    pub comm: String,
    /// The state letter of /proc/…/stat: R, S, D, T, Z, …
    pub state: char,
}

fn read(path: impl AsRef<Path>) -> Option<String> {
    fs::read_to_string(path).ok()
}

fn numeric_entries(dir: impl AsRef<Path>) -> Vec<u32> {
    fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// (comm, state) from a stat line: the comm is parenthesised and may itself hold ") ".
fn parse_stat(stat: &str) -> Option<(String, char)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?.to_owned();
    let state = stat.get(close + 1..)?.trim_start().chars().next()?;
    Some((comm, state))
}

/// The running kernel's release (`uname -r`), or "unknown".
pub fn kernel_release() -> String {
    read("/proc/sys/kernel/osrelease").map_or_else(|| "unknown".into(), |s| s.trim().to_owned())
}

/// Every thread on the host (or of one process).
pub fn tasks(only_pid: Option<u32>) -> Vec<ProcTask> {
    let pids = match only_pid {
        Some(p) => vec![p],
        None => numeric_entries("/proc"),
    };
    let mut out = Vec::new();
    for pid in pids {
        for tid in numeric_entries(format!("/proc/{pid}/task")) {
            if let Some((comm, state)) = read(format!("/proc/{pid}/task/{tid}/stat"))
                .as_deref()
                .and_then(parse_stat)
            {
                out.push(ProcTask {
                    tid,
                    pid,
                    comm,
                    state,
                });
            }
        }
    }
    out
}

/// (pid, comm, minor faults, major faults) of every process, from /proc/PID/stat: the kernel's
/// own per-process fault counts (threads included), which cost faultline nothing to keep.
pub fn process_faults() -> Vec<(u32, String, u64, u64)> {
    numeric_entries("/proc")
        .into_iter()
        .filter_map(|pid| {
            let stat = read(format!("/proc/{pid}/stat"))?;
            let (comm, _) = parse_stat(&stat)?;
            // Fields after the parenthesised comm: state is field 3, minflt 10, majflt 12.
            let rest: Vec<&str> = stat.get(stat.rfind(')')? + 2..)?.split(' ').collect();
            let minflt = rest.get(7)?.parse().ok()?;
            let majflt = rest.get(9)?.parse().ok()?;
            Some((pid, comm, minflt, majflt))
        })
        .collect()
}

pub fn wchan(pid: u32, tid: u32) -> String {
    wchan_of(pid, tid).unwrap_or_default()
}

/// Where task `tid` of process `pid` sleeps, or `None` when it cannot be read (gone).
pub fn wchan_of(pid: u32, tid: u32) -> Option<String> {
    read(format!("/proc/{pid}/task/{tid}/wchan")).map(|w| w.trim().to_owned())
}

/// The threads of process `pid` (empty when it is gone).
pub fn threads(pid: u32) -> Vec<u32> {
    numeric_entries(format!("/proc/{pid}/task"))
}

/// The kernel stack as function names (offsets dropped), innermost first.
pub fn stack(pid: u32, tid: u32) -> Vec<String> {
    read(format!("/proc/{pid}/task/{tid}/stack"))
        .map(|s| {
            s.lines()
                .filter_map(|l| l.split_whitespace().nth(1))
                .map(|f| f.split('+').next().unwrap_or(f).to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// `se.exec_start` (ms of the scheduler clock) from /proc/…/sched: when the task last ran.
pub fn exec_start_ms(path: &str) -> Option<f64> {
    read(path)?.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == "se.exec_start")
            .then(|| v.trim().parse().ok())
            .flatten()
    })
}

/// How long a task has not run, in ms: the scheduler clock now (this thread's own
/// `se.exec_start`, as it is running) minus the task's.
pub fn off_cpu_ms(pid: u32, tid: u32) -> Option<f64> {
    let now = exec_start_ms("/proc/thread-self/sched")?;
    let then = exec_start_ms(&format!("/proc/{pid}/task/{tid}/sched"))?;
    Some((now - then).max(0.0))
}

/// userfaultfd descriptors: pid → fds.
pub fn uffd_fds() -> BTreeMap<u32, Vec<u32>> {
    let mut out: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    for pid in numeric_entries("/proc") {
        for fd in numeric_entries(format!("/proc/{pid}/fd")) {
            if fs::read_link(format!("/proc/{pid}/fd/{fd}"))
                .is_ok_and(|l| l.to_string_lossy() == "anon_inode:[userfaultfd]")
            {
                out.entry(pid).or_default().push(fd);
            }
        }
    }
    out
}

/// The system call a thread sleeps in, from /proc/…/task/…/syscall (`NR a0 … a5 sp pc`; a
/// running thread reads `running`, one stopped outside a call `-1 sp pc`: both None). For
/// epoll waits, the descriptors the epoll instance watches come along.
pub fn syscall(pid: u32, tid: u32) -> Option<crate::core::diagnosis::snapshot::Syscall> {
    let line = read(format!("/proc/{pid}/task/{tid}/syscall"))?;
    let mut syscall = parse_syscall(&line)?;
    if syscall.name.starts_with("epoll_") {
        if let Some(epfd) = syscall.fd {
            syscall.epoll_targets = epoll_targets(pid, epfd);
        }
    }
    Some(syscall)
}

fn parse_syscall(line: &str) -> Option<crate::core::diagnosis::snapshot::Syscall> {
    let mut fields = line.split_whitespace();
    let nr: i64 = fields.next()?.parse().ok()?;
    let arg0 = fields
        .next()
        .and_then(|a| u64::from_str_radix(a.trim_start_matches("0x"), 16).ok());
    let name = SYSCALL_NAMES
        .iter()
        .find(|(n, _)| *n == nr)
        .map(|(_, name)| (*name).to_owned());
    // nr < 0: not in a system call.
    if nr < 0 {
        return None;
    }
    let takes_fd = name.as_deref().is_some_and(|n| FD_FIRST.contains(&n));
    Some(crate::core::diagnosis::snapshot::Syscall {
        name: name.unwrap_or_else(|| format!("syscall {nr}")),
        fd: arg0
            .filter(|_| takes_fd)
            .and_then(|a| u32::try_from(a).ok()),
        epoll_targets: Vec::new(),
    })
}

/// The system call a thread sleeps in, with its six arguments (/proc/…/syscall); `None` when
/// it is running or not in one.
pub fn syscall_args(pid: u32, tid: u32) -> Option<(u64, [u64; 6])> {
    let line = read(format!("/proc/{pid}/task/{tid}/syscall"))?;
    let mut fields = line.split_whitespace();
    let nr: i64 = fields.next()?.parse().ok()?;
    let nr = u64::try_from(nr).ok()?;
    let mut args = [0u64; 6];
    for a in &mut args {
        *a = u64::from_str_radix(fields.next()?.trim_start_matches("0x"), 16).ok()?;
    }
    Some((nr, args))
}

/// `len` bytes of process `pid`'s memory at `addr` (process_vm_readv). The read takes that
/// process's mmap_lock for read: a caller must not read a process whose lock has waiters.
pub fn read_user(pid: u32, addr: u64, len: usize) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; len];
    let local = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: len,
    };
    let remote = libc::iovec {
        iov_base: addr as *mut libc::c_void,
        iov_len: len,
    };
    // SAFETY: `local` covers our own buffer of `len` bytes; the kernel checks `remote`.
    let n = unsafe { libc::process_vm_readv(pid as libc::pid_t, &local, 1, &remote, 1, 0) };
    (n == len as isize).then_some(buf)
}

/// The descriptors an epoll instance watches: its fdinfo's `tfd:` lines.
pub fn epoll_targets(pid: u32, epfd: u32) -> Vec<u32> {
    read(format!("/proc/{pid}/fdinfo/{epfd}"))
        .map(|s| parse_epoll_targets(&s))
        .unwrap_or_default()
}

fn parse_epoll_targets(fdinfo: &str) -> Vec<u32> {
    fdinfo
        .lines()
        .filter_map(|l| l.strip_prefix("tfd:"))
        .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
        .collect()
}

/// System calls whose first argument is a descriptor.
const FD_FIRST: [&str; 10] = [
    "read",
    "readv",
    "pread64",
    "preadv",
    "preadv2",
    "write",
    "ioctl",
    "epoll_wait",
    "epoll_pwait",
    "epoll_pwait2",
];

/// Names of the system calls diagnose reasons about (the numbers are this architecture's).
const SYSCALL_NAMES: &[(i64, &str)] = &[
    (libc::SYS_read, "read"),
    (libc::SYS_readv, "readv"),
    (libc::SYS_pread64, "pread64"),
    (libc::SYS_preadv, "preadv"),
    (libc::SYS_preadv2, "preadv2"),
    (libc::SYS_write, "write"),
    (libc::SYS_ioctl, "ioctl"),
    (libc::SYS_ppoll, "ppoll"),
    (libc::SYS_pselect6, "pselect6"),
    (libc::SYS_epoll_pwait, "epoll_pwait"),
    (libc::SYS_epoll_pwait2, "epoll_pwait2"),
    (libc::SYS_clock_nanosleep, "clock_nanosleep"),
    (libc::SYS_nanosleep, "nanosleep"),
    (libc::SYS_futex, "futex"),
    (libc::SYS_waitid, "waitid"),
    (libc::SYS_wait4, "wait4"),
    (libc::SYS_rt_sigsuspend, "rt_sigsuspend"),
    (libc::SYS_rt_sigtimedwait, "rt_sigtimedwait"),
    (libc::SYS_sched_yield, "sched_yield"),
    #[cfg(target_arch = "x86_64")]
    (libc::SYS_poll, "poll"),
    #[cfg(target_arch = "x86_64")]
    (libc::SYS_select, "select"),
    #[cfg(target_arch = "x86_64")]
    (libc::SYS_epoll_wait, "epoll_wait"),
    #[cfg(target_arch = "x86_64")]
    (libc::SYS_pause, "pause"),
];

pub use faultline_core::diagnosis::READ_HOLDER_FRAMES;

/// The process of thread `tid`, when it still exists.
pub fn tgid_of(tid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{tid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Tgid:"))
        .and_then(|v| v.trim().parse().ok())
}

/// The name of task `tid`, while it exists.
pub fn comm_of(tid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{tid}/comm"))
        .ok()
        .map(|s| s.trim_end().to_owned())
}

/// The process and comm of a task that still exists (for tasks the model never saw).
pub fn identify(tid: u32) -> Option<(u32, Option<String>)> {
    tgid_of(tid).map(|pid| (pid, comm_of(tid)))
}

/// Whether /proc has this process or task (threads are reachable by tid though not listed).
pub fn proc_exists(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_with_odd_comms_parse() {
        assert_eq!(
            parse_stat("42 (a) b (c)) S 1 2 3"),
            Some(("a) b (c)".to_owned(), 'S'))
        );
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn syscall_lines_name_the_call_and_its_descriptor() {
        let read = format!(
            "{} 0x3 0x7ffd 0x20 0x0 0x0 0x0 0x7ffc 0x7f19",
            libc::SYS_read
        );
        let s = parse_syscall(&read).expect("a call");
        assert_eq!((s.name.as_str(), s.fd), ("read", Some(3)));
        let sleep = format!(
            "{} 0x0 0x0 0x7f19 0x0 0x0 0x0 0x1 0x2",
            libc::SYS_clock_nanosleep
        );
        let s = parse_syscall(&sleep).expect("a call");
        assert_eq!((s.name.as_str(), s.fd), ("clock_nanosleep", None));
        assert_eq!(parse_syscall("running"), None);
        assert_eq!(parse_syscall("-1 0x7ffc 0x7f19"), None);
        assert_eq!(
            parse_syscall("100000 0x1").map(|s| s.name),
            Some("syscall 100000".to_owned())
        );
    }

    #[test]
    fn epoll_fdinfo_lists_its_targets() {
        let info = "pos:\t0\nflags:\t02\nmnt_id:\t15\nino:\t1057\n\
                    tfd:        3 events:       19 data:                3  pos:0 ino:41d sdev:f\n\
                    tfd:       12 events:       19 data:                c  pos:0 ino:41e sdev:f\n";
        assert_eq!(parse_epoll_targets(info), vec![3, 12]);
    }
}
