//! What the agent logs of the records it reads: one line per slow or odd record, at most a
//! configured number per summary interval.

use std::time::Duration;

use crate::{
    core::{
        event::EventKind,
        exposure::{AddrKind, Exposure},
    },
    kernel::decode::{DecodeError, Decoded},
};

/// One human line for a record worth reporting, or `None` for one that is not; addresses as
/// `exposure` shows them (logs leave the host too: journald forwarders, log shippers).
pub fn describe(d: &Decoded, exposure: &Exposure) -> Option<String> {
    let ev = &d.event;
    let mm = |a| exposure.show(AddrKind::Mm, a);
    let who = format!(
        "tid {} ({}) pid {}",
        ev.tid,
        ev.comm.as_deref().unwrap_or("?"),
        ev.pid
    );
    let whose = |mm_pid: &Option<u32>| match mm_pid {
        Some(p) => format!("pid {p}'s mmap_lock"),
        None => "its own mmap_lock".to_string(),
    };
    let dur = |since: u64| {
        humantime::format_duration(Duration::from_micros(ev.ts_ns.saturating_sub(since) / 1000))
    };
    match (&ev.kind, d.since_ns) {
        (EventKind::MmapLockAcquire { mode, mm_pid, mm: m, .. }, Some(since)) if d.reasons.slow_wait() => {
            Some(format!("{who} waited {} for {} ({mode}, mm {})", dur(since), whose(mm_pid), mm(*m)))
        }
        (EventKind::MmapLockRelease { mode, mm_pid, mm: m }, Some(since)) if d.reasons.long_hold() => {
            Some(format!("{who} held {} for {} ({mode}, mm {})", whose(mm_pid), dur(since), mm(*m)))
        }
        (EventKind::LockWaitEnd { lock, .. }, Some(since)) if d.reasons.slow_wait() => {
            let (kind, owner) = match d.implied.as_ref().map(|i| &i.kind) {
                Some(EventKind::LockWaitBegin { lock_type, owner_tid, .. }) => (
                    serde_json::to_value(lock_type)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_else(|| "lock".into()),
                    owner_tid.map(|o| format!(" owned by tid {o}")).unwrap_or_default(),
                ),
                _ => ("lock".into(), String::new()),
            };
            Some(format!("{who} waited {} for {kind} {}{owner}", dur(since), exposure.show(AddrKind::Lock, *lock)))
        }
        (EventKind::UffdWaitBegin { uffd, addr }, _) => Some(format!(
            "{who} waits for userfaultfd {} to resolve a fault at {}",
            exposure.show(AddrKind::Uffd, *uffd),
            exposure.show(AddrKind::User, *addr)
        )),
        (EventKind::UffdIoctlEnd { op, ret, .. }, _) if *ret < 0 => Some(format!(
            "{who}: userfaultfd ioctl {op:?} failed with errno {}",
            -ret
        )),
        (EventKind::MmapLockStart { mm_pid, mm: m, .. }, _) if d.reasons.recursive() => Some(format!(
            "{who} asks for {} for read while already holding it for read (recursive read, mm {}): deadlocks if a writer queues"
            , whose(mm_pid), mm(*m)
        )),
        _ => None,
    }
}

/// Logs what the kernel streamed, at most `max_lines` lines per summary interval.
pub struct Reporter {
    max_lines: u32,
    exposure: Exposure,
    logged: u32,
    suppressed: u64,
    decode_errors: u64,
}

impl Reporter {
    pub fn new(max_lines: u32, exposure: Exposure) -> Self {
        Self {
            max_lines,
            exposure,
            logged: 0,
            suppressed: 0,
            decode_errors: 0,
        }
    }

    pub fn handle(&mut self, r: Result<Decoded, DecodeError>) {
        match r {
            Ok(d) => {
                if let Some(line) = describe(&d, &self.exposure) {
                    if self.logged < self.max_lines {
                        self.logged += 1;
                        log::warn!("{line}");
                    } else {
                        self.suppressed += 1;
                    }
                }
            }
            Err(e) => {
                self.decode_errors += 1;
                log::debug!("skipping record: {e}");
            }
        }
    }

    pub fn end_interval(&mut self) {
        if self.suppressed > 0 {
            log::info!(
                "{} more slow events not logged (--max-log-lines)",
                self.suppressed
            );
        }
        if self.decode_errors > 0 {
            log::warn!("{} ring-buffer records did not decode", self.decode_errors);
        }
        self.logged = 0;
        self.suppressed = 0;
        self.decode_errors = 0;
    }
}
