//! Why a program did not load: missing privileges, a verifier rejection, or something else.
//!
//! The kernel answers a refused `BPF_PROG_LOAD` with EACCES both when the caller lacks the
//! privilege and when the verifier rejects the program, and with EPERM for privileges and for
//! program types it refuses outright (fentry under lockdown here). Telling them apart by errno
//! alone sends a root user off to "run as root". What does tell them apart:
//! - the verifier wrote a log: it ran, so the caller was allowed to load; this is a rejection,
//!   whatever the errno;
//! - no log, EPERM/EACCES, and the process has neither CAP_BPF nor CAP_SYS_ADMIN: privileges;
//! - no log, EPERM/EACCES, with those capabilities: the kernel refused for another reason
//!   (lockdown, an LSM, an unsupported attach type), which is not the user's privilege problem.

use std::{fmt, io};

use aya::programs::ProgramError;

/// How many log lines the one-line report shows; `--verbose` callers print `log` whole.
pub const TAIL_LINES: usize = 12;

/// The capabilities that decide whether loading is allowed at all.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Caps {
    pub sys_admin: bool,
    pub bpf: bool,
    pub perfmon: bool,
}

const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

impl Caps {
    /// Parses the `CapEff:` line of a `/proc/<pid>/status` text.
    pub fn from_status(status: &str) -> Option<Self> {
        let hex = status
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))?
            .trim();
        let bits = u64::from_str_radix(hex, 16).ok()?;
        let has = |cap: u32| bits & (1u64 << cap) != 0;
        Some(Self {
            sys_admin: has(CAP_SYS_ADMIN),
            bpf: has(CAP_BPF),
            perfmon: has(CAP_PERFMON),
        })
    }

    /// This process's effective capabilities (none when /proc cannot be read).
    pub fn current() -> Self {
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| Self::from_status(&s))
            .unwrap_or_default()
    }

    /// Whether the kernel lets this process load programs at all.
    pub fn may_load(self) -> bool {
        self.sys_admin || self.bpf
    }
}

/// A classified load failure of one program.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LoadFailure {
    /// The process lacks the capabilities (empty verifier log).
    Privileges { program: String, errno: i32 },
    /// The verifier ran and refused the program; `log` is all it wrote.
    Rejected {
        program: String,
        errno: Option<i32>,
        log: String,
    },
    /// Anything else (EPERM with the capabilities present, EINVAL from attach-time checks, a
    /// missing BTF type…).
    Other { program: String, message: String },
}

impl LoadFailure {
    pub fn program(&self) -> &str {
        match self {
            Self::Privileges { program, .. }
            | Self::Rejected { program, .. }
            | Self::Other { program, .. } => program,
        }
    }

    pub fn is_privileges(&self) -> bool {
        matches!(self, Self::Privileges { .. })
    }

    /// The whole verifier log, when there is one.
    pub fn log(&self) -> Option<&str> {
        match self {
            Self::Rejected { log, .. } => Some(log),
            _ => None,
        }
    }
}

/// The errno of the first `io::Error` in an error chain.
pub fn errno_in(e: &(dyn std::error::Error + 'static)) -> Option<i32> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(code) = err
            .downcast_ref::<io::Error>()
            .and_then(io::Error::raw_os_error)
        {
            return Some(code);
        }
        cur = err.source();
    }
    None
}

fn errno_name(errno: i32) -> String {
    match errno {
        libc::EPERM => "EPERM".into(),
        libc::EACCES => "EACCES".into(),
        libc::EINVAL => "EINVAL".into(),
        libc::E2BIG => "E2BIG".into(),
        libc::ENOENT => "ENOENT".into(),
        n => format!("errno {n}"),
    }
}

/// Classifies a failure of `program` from its error chain, the verifier log (empty when the
/// kernel wrote none) and the process's capabilities.
pub fn classify(
    program: &str,
    error: &(dyn std::error::Error + 'static),
    log: &str,
    caps: Caps,
) -> LoadFailure {
    let errno = errno_in(error);
    if !log.trim().is_empty() {
        return LoadFailure::Rejected {
            program: program.to_owned(),
            errno,
            log: log.trim_end().to_owned(),
        };
    }
    match errno {
        Some(e @ (libc::EPERM | libc::EACCES)) if !caps.may_load() => LoadFailure::Privileges {
            program: program.to_owned(),
            errno: e,
        },
        Some(e @ (libc::EPERM | libc::EACCES)) => LoadFailure::Other {
            program: program.to_owned(),
            message: format!(
                "the kernel refused it ({}) with no verifier log although faultline has {}: \
                 lockdown, an LSM or a program type this kernel does not allow",
                errno_name(e),
                if caps.bpf { "CAP_BPF" } else { "CAP_SYS_ADMIN" }
            ),
        },
        _ => LoadFailure::Other {
            program: program.to_owned(),
            message: chain(error),
        },
    }
}

/// Classifies an aya `ProgramError` (load or attach) for `program`.
pub fn classify_program_error(program: &str, e: &ProgramError, caps: Caps) -> LoadFailure {
    let log = match e {
        ProgramError::LoadError { verifier_log, .. } => verifier_log.to_string(),
        _ => String::new(),
    };
    classify(program, e, &log, caps)
}

/// An error and its sources, "outer: inner: …", without repeating a message.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur = Some(e);
    while let Some(err) = cur {
        let s = err.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
        cur = err.source();
    }
    parts.join(": ")
}

/// The last `n` non-empty lines of a verifier log.
pub fn tail(log: &str, n: usize) -> Vec<&str> {
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].to_vec()
}

impl fmt::Display for LoadFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Privileges { program, errno } => write!(
                f,
                "eBPF program {program}: permission denied ({}): run faultline as root (or with \
                 CAP_BPF, CAP_PERFMON and CAP_SYS_RESOURCE)",
                errno_name(*errno)
            ),
            Self::Rejected {
                program,
                errno,
                log,
            } => {
                write!(
                    f,
                    "eBPF program {program} rejected by the kernel's verifier"
                )?;
                if let Some(e) = errno {
                    write!(f, " ({})", errno_name(*e))?;
                }
                let lines = tail(log, TAIL_LINES);
                let total = log.lines().filter(|l| !l.trim().is_empty()).count();
                if lines.len() < total {
                    write!(
                        f,
                        "; last {} of {total} log lines (--verbose for all):",
                        lines.len()
                    )?;
                } else {
                    write!(f, "; verifier log:")?;
                }
                for l in lines {
                    write!(f, "\n  {l}")?;
                }
                Ok(())
            }
            Self::Other { program, message } => write!(f, "eBPF program {program}: {message}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROOT: Caps = Caps {
        sys_admin: true,
        bpf: true,
        perfmon: true,
    };
    const NOBODY: Caps = Caps {
        sys_admin: false,
        bpf: false,
        perfmon: false,
    };

    /// The log Debian's 6.1 kernel wrote when it refused faultline's `task_exit_btf` (it reads
    /// argument 1 of `sched_process_exit`, which only gained that argument later), with EACCES.
    const LOG: &str = "reg type unsupported for arg#0 function task_exit_btf#55\n\
        0: R1=ctx(off=0,imm=0) R10=fp0\n\
        ; T::from_register(unsafe { *ptr as u64 })\n\
        0: (79) r2 = *(u64 *)(r1 +8)\n\
        func 'sched_process_exit' doesn't have 2-th argument\n\
        invalid bpf_context access off=8 size=8\n\
        verification time 590 usec\n\
        stack depth 0+0+0\n\
        processed 1 insns (limit 1000000) max_states_per_insn 0 total_states 0 peak_states 0 mark_read 0\n";

    fn os(errno: i32) -> io::Error {
        io::Error::from_raw_os_error(errno)
    }

    #[test]
    fn a_verifier_log_makes_eacces_a_rejection_even_without_capabilities() {
        for caps in [ROOT, NOBODY] {
            let f = classify("task_exit_btf", &os(libc::EACCES), LOG, caps);
            assert!(matches!(f, LoadFailure::Rejected { .. }), "{f:?}");
            assert!(!f.is_privileges());
            assert_eq!(f.log(), Some(LOG.trim_end()));
            let text = f.to_string();
            assert!(text.starts_with("eBPF program task_exit_btf rejected by the kernel's verifier (EACCES); verifier log:"), "{text}");
            assert!(
                text.contains("func 'sched_process_exit' doesn't have 2-th argument"),
                "{text}"
            );
            assert!(!text.contains("run faultline as root"), "{text}");
        }
    }

    #[test]
    fn eperm_with_no_log_and_no_capabilities_is_privileges() {
        let f = classify("mmap_lock_start_btf", &os(libc::EPERM), "", NOBODY);
        assert_eq!(
            f,
            LoadFailure::Privileges {
                program: "mmap_lock_start_btf".into(),
                errno: libc::EPERM
            }
        );
        assert!(f.to_string().contains("run faultline as root"));
        assert!(f
            .to_string()
            .starts_with("eBPF program mmap_lock_start_btf:"));
    }

    #[test]
    fn eperm_with_no_log_as_root_is_not_called_a_privilege_problem() {
        let f = classify("fentry_probe", &os(libc::EPERM), "\n", ROOT);
        assert!(matches!(f, LoadFailure::Other { .. }), "{f:?}");
        let text = f.to_string();
        assert!(!text.contains("run faultline as root"), "{text}");
        assert!(text.contains("EPERM") && text.contains("CAP_BPF"), "{text}");
    }

    #[test]
    fn other_errors_keep_their_whole_chain() {
        #[derive(Debug, thiserror::Error)]
        #[error("attaching sched_switch_btf")]
        struct Outer(#[source] io::Error);
        let f = classify("sched_switch_btf", &Outer(os(libc::EINVAL)), "", ROOT);
        let LoadFailure::Other { message, .. } = &f else {
            panic!("{f:?}")
        };
        assert!(
            message.starts_with("attaching sched_switch_btf: "),
            "{message}"
        );
        assert!(message.contains("Invalid argument"), "{message}");
    }

    #[test]
    fn display_names_the_program_and_shows_the_last_lines_of_the_log() {
        let long: String = (0..40).map(|i| format!("{i}: insn\n")).collect::<String>()
            + "R2 invalid mem access 'scalar'\n";
        let f = classify("contention_begin_btf", &os(libc::EACCES), &long, ROOT);
        let text = f.to_string();
        let mut lines = text.lines();
        assert_eq!(
            lines.next(),
            Some("eBPF program contention_begin_btf rejected by the kernel's verifier (EACCES); last 12 of 41 log lines (--verbose for all):")
        );
        let rest: Vec<&str> = lines.collect();
        assert_eq!(rest.len(), TAIL_LINES);
        assert_eq!(rest.first(), Some(&"  29: insn"));
        assert_eq!(rest.last(), Some(&"  R2 invalid mem access 'scalar'"));
    }

    #[test]
    fn a_short_log_is_shown_whole() {
        let f = classify("x", &os(libc::EINVAL), "only line\n", ROOT);
        assert_eq!(
            f.to_string(),
            "eBPF program x rejected by the kernel's verifier (EINVAL); verifier log:\n  only line"
        );
    }

    #[test]
    fn capabilities_come_from_the_capeff_line() {
        let status = "Name:\tfaultline\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\n";
        assert_eq!(Caps::from_status(status), Some(ROOT));
        let bpf_only = format!("CapEff:\t{:016x}\n", 1u64 << CAP_BPF);
        let caps = Caps::from_status(&bpf_only).expect("parses");
        assert!(caps.may_load() && !caps.sys_admin);
        assert_eq!(Caps::from_status("CapEff:\t0\n"), Some(NOBODY));
        assert_eq!(Caps::from_status("no caps line"), None);
    }

    #[test]
    fn aya_load_errors_carry_their_verifier_log_into_the_classification() {
        // An aya ProgramError cannot be built with a log outside aya; its attach-time errors
        // (no log) go through the same path.
        let e = ProgramError::AlreadyLoaded;
        let f = classify_program_error("p", &e, ROOT);
        assert!(matches!(f, LoadFailure::Other { .. }), "{f:?}");
        assert_eq!(f.program(), "p");
    }
}
