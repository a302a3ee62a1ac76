//! Who serves a userfaultfd a task waits on. The kernel records no handler: a context has
//! descriptors, and any thread of a process holding one may read its messages and answer.
//! Candidates are those threads, each with its evidence, strongest first:
//! 1. serving it now: in read(), an epoll wait that watches it, or an ioctl on it;
//! 2. seen issuing its resolving ioctls (agent);
//! 3. seen setting it up (agent);
//! 4. in poll/select, whose descriptors are in user memory diagnose does not read (reading
//!    another process's memory takes its mmap_lock and could join a convoy);
//! 5. only holding it open. Among those, what the thread does now decides: when the fault
//!    message was read and nobody answered, the reader is busy handling it, so a thread busy in
//!    a system call (or blocked) is likelier than one idle in a timed sleep or futex; when the
//!    message is still pending, only a thread that is not blocked can read it.
//!
//! The handlers named (the waits-for edges) are the candidates of the best rank. Pure: facts in,
//! candidates out.

use std::collections::BTreeSet;

use serde::Serialize;

use super::snapshot::{AgentUffd, Syscall, TaskFacts, UffdFacts};

/// One piece of evidence that a thread serves a userfaultfd.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Evidence {
    /// In read() on one of its descriptors now.
    Reads { fd: u32 },
    /// In an epoll wait on an epoll instance that watches one of its descriptors.
    Epolls { epfd: u32, fd: u32 },
    /// In an ioctl on one of its descriptors now.
    IoctlNow { fd: u32 },
    /// Seen by the agent issuing its resolving ioctls.
    Ioctls,
    /// Seen by the agent setting it up (API, REGISTER).
    SetUp,
    /// In poll or select on descriptors diagnose cannot see.
    Polls { syscall: String },
    /// Its process holds a descriptor of it.
    HoldsOpen { pid: u32, fd: u32 },
}

impl Evidence {
    pub fn describe(&self) -> String {
        match self {
            Self::Reads { fd } => format!("reads it now (fd {fd})"),
            Self::Epolls { epfd, fd } => {
                format!("waits in epoll on fd {epfd}, which watches it (fd {fd})")
            }
            Self::IoctlNow { fd } => format!("in an ioctl on it now (fd {fd})"),
            Self::Ioctls => "seen issuing its ioctls (agent)".into(),
            Self::SetUp => "set it up (agent)".into(),
            Self::Polls { syscall } => {
                format!("waits in {syscall} (its descriptors are in user memory, not read)")
            }
            Self::HoldsOpen { pid, fd } => format!("holds it open (fd {fd} of pid {pid})"),
        }
    }
}

/// What a candidate does now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Activity {
    /// Serving this userfaultfd (the evidence says how).
    Serving,
    Running,
    /// Blocked itself (its own wait is listed with the blocked tasks).
    Blocked,
    /// Waiting in a fault on this same userfaultfd: it cannot answer it.
    WaitsOnIt,
    /// In a system call that is neither an idle wait nor about this userfaultfd.
    Busy {
        syscall: String,
    },
    /// In a timed sleep, a futex, a wait for children or signals, or an epoll wait on other
    /// descriptors: not handling a message now.
    Idle {
        syscall: String,
    },
    /// /proc did not say.
    Unknown,
}

impl Activity {
    pub fn describe(&self) -> String {
        match self {
            Self::Serving => "serving it".into(),
            Self::Running => "running".into(),
            Self::Blocked => "blocked itself".into(),
            Self::WaitsOnIt => "waits in a fault on it itself".into(),
            Self::Busy { syscall } => format!("busy in {syscall}"),
            Self::Idle { syscall } => format!("idle in {syscall}"),
            Self::Unknown => "activity unknown".into(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Candidate {
    pub tid: u32,
    pub pid: u32,
    pub comm: String,
    /// Named as a handler: the waiter's edge goes to it.
    pub named: bool,
    /// 0 (strongest) to 5: the module documentation's 1 to 5, with 5 split in two (4: holds it
    /// open and could be handling it; 5: holds it open only).
    pub rank: u8,
    pub evidence: Vec<Evidence>,
    pub activity: Activity,
}

impl Candidate {
    pub fn describe(&self) -> String {
        let mut parts: Vec<String> = self.evidence.iter().map(Evidence::describe).collect();
        if self.activity != Activity::Serving {
            parts.push(self.activity.describe());
        }
        parts.join("; ")
    }
}

const READS: [&str; 5] = ["read", "readv", "pread64", "preadv", "preadv2"];
const EPOLLS: [&str; 3] = ["epoll_wait", "epoll_pwait", "epoll_pwait2"];
const POLLS: [&str; 4] = ["poll", "ppoll", "select", "pselect6"];
/// Waits that end on a timer, a signal, a child or another user-space thread: a thread in one
/// is not in the middle of handling a fault message.
const IDLE: [&str; 9] = [
    "nanosleep",
    "clock_nanosleep",
    "pause",
    "futex",
    "wait4",
    "waitid",
    "rt_sigsuspend",
    "rt_sigtimedwait",
    "sched_yield",
];

/// What the waiter's context and the world around it say.
pub struct Context<'a> {
    pub uffd: &'a UffdFacts,
    pub waiter: u32,
    pub message_read: bool,
    /// Every thread on the host.
    pub tasks: &'a [TaskFacts],
    /// Tasks blocked themselves (the diagnosis' blocked tasks).
    pub blocked: &'a BTreeSet<u32>,
    /// The agent's record of this context, when an agent answered and knew it.
    pub agent: Option<&'a AgentUffd>,
}

/// The handler candidates of one waiter, best first; `named` on those of the best rank.
pub fn candidates(cx: &Context) -> Vec<Candidate> {
    let holder_pids: BTreeSet<u32> = cx.uffd.fds.iter().map(|f| f.pid).collect();
    let waiting_on_it: BTreeSet<u32> = cx.uffd.waiters.iter().map(|w| w.tid).collect();
    let mut out: Vec<Candidate> = cx
        .tasks
        .iter()
        .filter(|t| holder_pids.contains(&t.pid) && t.tid != cx.waiter)
        .map(|t| candidate(cx, t, waiting_on_it.contains(&t.tid)))
        .collect();
    // Best rank first; then other processes before the waiter's own (a monitor is usually
    // another process); then by tid, for a stable order.
    let own = waiter_pid(cx);
    out.sort_by_key(|c| (c.rank, c.pid == own, c.tid));
    if let Some(best) = out.first().map(|c| c.rank) {
        for c in out.iter_mut().filter(|c| c.rank == best) {
            c.named = true;
        }
    }
    out
}

fn waiter_pid(cx: &Context) -> u32 {
    cx.tasks
        .iter()
        .find(|t| t.tid == cx.waiter)
        .map(|t| t.pid)
        .unwrap_or(0)
}

fn candidate(cx: &Context, t: &TaskFacts, waits_on_it: bool) -> Candidate {
    let fds: Vec<u32> = cx
        .uffd
        .fds
        .iter()
        .filter(|f| f.pid == t.pid)
        .map(|f| f.fd)
        .collect();
    let mut evidence = Vec::new();
    let mut activity = if waits_on_it {
        Activity::WaitsOnIt
    } else if cx.blocked.contains(&t.tid) {
        Activity::Blocked
    } else if t.state == 'R' {
        Activity::Running
    } else {
        Activity::Unknown
    };
    let free = matches!(activity, Activity::Unknown);
    if let Some(sc) = t.syscall.as_ref().filter(|_| free) {
        let (ev, act) = from_syscall(sc, &fds);
        evidence.extend(ev);
        activity = act;
    }
    if let Some(a) = cx.agent {
        if a.resolvers.contains(&t.tid) {
            evidence.push(Evidence::Ioctls);
        }
        if a.setup.contains(&t.tid) {
            evidence.push(Evidence::SetUp);
        }
    }
    evidence.extend(fds.iter().map(|&fd| Evidence::HoldsOpen { pid: t.pid, fd }));
    let rank = rank(&evidence, &activity, cx.message_read);
    Candidate {
        tid: t.tid,
        pid: t.pid,
        comm: t.comm.clone(),
        named: false,
        rank,
        evidence,
        activity,
    }
}

/// Evidence and activity from the system call a free thread sleeps in.
fn from_syscall(sc: &Syscall, fds: &[u32]) -> (Option<Evidence>, Activity) {
    let name = sc.name.as_str();
    let on_it = sc.fd.filter(|fd| fds.contains(fd));
    if READS.contains(&name) {
        if let Some(fd) = on_it {
            return (Some(Evidence::Reads { fd }), Activity::Serving);
        }
    } else if name == "ioctl" {
        if let Some(fd) = on_it {
            return (Some(Evidence::IoctlNow { fd }), Activity::Serving);
        }
    } else if EPOLLS.contains(&name) {
        if let Some(&fd) = sc.epoll_targets.iter().find(|t| fds.contains(t)) {
            let epfd = sc.fd.unwrap_or(0);
            return (Some(Evidence::Epolls { epfd, fd }), Activity::Serving);
        }
        return (
            None,
            Activity::Idle {
                syscall: format!("{name} (other descriptors)"),
            },
        );
    } else if POLLS.contains(&name) {
        return (
            Some(Evidence::Polls {
                syscall: name.to_owned(),
            }),
            Activity::Busy {
                syscall: name.to_owned(),
            },
        );
    }
    let syscall = name.to_owned();
    if IDLE.contains(&name) {
        (None, Activity::Idle { syscall })
    } else {
        (None, Activity::Busy { syscall })
    }
}

fn rank(evidence: &[Evidence], activity: &Activity, message_read: bool) -> u8 {
    let has = |f: fn(&Evidence) -> bool| evidence.iter().any(f);
    if has(|e| {
        matches!(
            e,
            Evidence::Reads { .. } | Evidence::Epolls { .. } | Evidence::IoctlNow { .. }
        )
    }) {
        return 0;
    }
    if has(|e| matches!(e, Evidence::Ioctls)) {
        return 1;
    }
    if has(|e| matches!(e, Evidence::SetUp)) {
        return 2;
    }
    if has(|e| matches!(e, Evidence::Polls { .. })) {
        return 3;
    }
    let plausible = match activity {
        Activity::WaitsOnIt => false,
        // The message was taken: whoever took it is working on it, not idling.
        Activity::Idle { .. } if message_read => false,
        // Still pending: it needs a reader, which a blocked thread cannot be now.
        Activity::Blocked if !message_read => false,
        _ => true,
    };
    if plausible {
        4
    } else {
        5
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        diagnosis::snapshot::{UffdFd, UffdWaiterFacts},
        event::Addr,
    };

    fn task(tid: u32, pid: u32, state: char, syscall: Option<(&str, Option<u32>)>) -> TaskFacts {
        TaskFacts {
            tid,
            pid,
            comm: format!("t{tid}"),
            state,
            syscall: syscall.map(|(name, fd)| Syscall {
                name: name.into(),
                fd,
                epoll_targets: Vec::new(),
            }),
            ..Default::default()
        }
    }

    fn uffd(fds: &[(u32, u32)], waiter: u32, message_read: bool) -> UffdFacts {
        UffdFacts {
            ctx: Addr(0xc0),
            mm_pid: 10,
            fds: fds.iter().map(|&(pid, fd)| UffdFd { pid, fd }).collect(),
            waiters: vec![UffdWaiterFacts {
                tid: waiter,
                message_read,
            }],
        }
    }

    fn named(c: &[Candidate]) -> Vec<u32> {
        c.iter().filter(|c| c.named).map(|c| c.tid).collect()
    }

    #[test]
    fn a_thread_reading_the_uffd_is_named_above_idle_holders() {
        let tasks = vec![
            task(10, 10, 'S', Some(("futex", None))),
            task(11, 10, 'S', None),
            task(12, 10, 'S', Some(("read", Some(3)))),
            task(13, 10, 'S', Some(("clock_nanosleep", None))),
        ];
        let u = uffd(&[(10, 3)], 11, false);
        let c = candidates(&Context {
            uffd: &u,
            waiter: 11,
            message_read: false,
            tasks: &tasks,
            blocked: &BTreeSet::from([11]),
            agent: None,
        });
        assert_eq!(named(&c), vec![12]);
        assert_eq!(c[0].evidence[0], Evidence::Reads { fd: 3 });
    }

    #[test]
    fn an_epoll_wait_counts_only_when_its_instance_watches_the_uffd() {
        let mut watching = task(12, 10, 'S', Some(("epoll_wait", Some(7))));
        watching.syscall.as_mut().expect("syscall").epoll_targets = vec![5, 3];
        let mut other = task(13, 10, 'S', Some(("epoll_wait", Some(8))));
        other.syscall.as_mut().expect("syscall").epoll_targets = vec![5];
        let tasks = vec![task(11, 10, 'S', None), watching, other];
        let u = uffd(&[(10, 3)], 11, false);
        let c = candidates(&Context {
            uffd: &u,
            waiter: 11,
            message_read: false,
            tasks: &tasks,
            blocked: &BTreeSet::from([11]),
            agent: None,
        });
        assert_eq!(named(&c), vec![12]);
        assert_eq!(c[0].evidence[0], Evidence::Epolls { epfd: 7, fd: 3 });
        let o = c.iter().find(|c| c.tid == 13).expect("13 is a candidate");
        assert!(matches!(o.activity, Activity::Idle { .. }), "{o:?}");
    }

    #[test]
    fn agent_ioctls_outrank_setup_which_outranks_holding() {
        let tasks = vec![
            task(11, 10, 'S', None),
            task(12, 10, 'S', Some(("clock_nanosleep", None))),
            task(13, 10, 'S', Some(("futex", None))),
            task(14, 10, 'S', Some(("futex", None))),
        ];
        let u = uffd(&[(10, 3)], 11, false);
        let agent = AgentUffd {
            uffd: Addr(0xc0),
            resolvers: vec![14],
            setup: vec![13],
        };
        let blocked = BTreeSet::from([11]);
        let cx = |agent| Context {
            uffd: &u,
            waiter: 11,
            message_read: false,
            tasks: &tasks,
            blocked: &blocked,
            agent,
        };
        assert_eq!(named(&candidates(&cx(Some(&agent)))), vec![14]);
        let setup_only = AgentUffd {
            resolvers: Vec::new(),
            ..agent.clone()
        };
        assert_eq!(named(&candidates(&cx(Some(&setup_only)))), vec![13]);
        // Without the agent every free holder is as likely.
        assert_eq!(named(&candidates(&cx(None))), vec![12, 13, 14]);
    }

    #[test]
    fn once_the_message_is_read_a_busy_thread_outranks_an_idle_one() {
        let tasks = vec![
            task(11, 10, 'S', None),
            task(12, 10, 'D', None),
            task(13, 10, 'S', Some(("clock_nanosleep", None))),
            task(14, 10, 'S', Some(("futex", None))),
        ];
        let blocked = BTreeSet::from([11, 12]);
        let read = uffd(&[(10, 3)], 11, true);
        let c = candidates(&Context {
            uffd: &read,
            waiter: 11,
            message_read: true,
            tasks: &tasks,
            blocked: &blocked,
            agent: None,
        });
        assert_eq!(named(&c), vec![12], "{c:#?}");
        // Pending: the blocked thread cannot read it; the idle ones could, when they wake.
        let pending = uffd(&[(10, 3)], 11, false);
        let c = candidates(&Context {
            uffd: &pending,
            waiter: 11,
            message_read: false,
            tasks: &tasks,
            blocked: &blocked,
            agent: None,
        });
        assert_eq!(named(&c), vec![13, 14]);
    }

    #[test]
    fn another_process_holding_it_comes_first_within_a_rank() {
        let tasks = vec![
            task(11, 10, 'S', None),
            task(12, 10, 'S', Some(("clock_nanosleep", None))),
            task(20, 20, 'S', Some(("clock_nanosleep", None))),
        ];
        let u = uffd(&[(10, 3), (20, 4)], 11, false);
        let c = candidates(&Context {
            uffd: &u,
            waiter: 11,
            message_read: false,
            tasks: &tasks,
            blocked: &BTreeSet::from([11]),
            agent: None,
        });
        assert_eq!(c.iter().map(|c| c.tid).collect::<Vec<_>>(), vec![20, 12]);
        assert_eq!(
            c[0].evidence,
            vec![Evidence::HoldsOpen { pid: 20, fd: 4 }],
            "{c:#?}"
        );
    }
}
