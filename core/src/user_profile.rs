//! The user-lock profile: every lock-shaped futex sleep that ended, aggregated by process, futex word,
//! operation and the sleeper's user and kernel stacks, with its frames symbolised (function,
//! file and line where debug information allows; module and build id, so a remote symboliser
//! can do the rest). Pure data: the kernel layer reads and names it, sinks encode it.

use std::collections::HashMap;

use serde::Serialize;

use crate::event::FutexOp;

/// One user frame. `offset` is the frame's address normalised to a file offset in its module
/// (what a remote symboliser needs; never the address in the process, which would give its
/// layout away).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize)]
pub struct UserFrame {
    /// The function (demangled), or `[unknown]`.
    pub function: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<u32>,
    /// The module's path as the process maps it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
    /// The module's GNU build id, hex.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub build_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
}

/// What identifies one aggregate across readings (for deltas).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize)]
pub struct UserKey {
    pub pid: u32,
    #[serde(skip)]
    pub futex: u64,
    #[serde(skip)]
    pub ustack: u64,
    #[serde(skip)]
    pub kstack: u64,
    #[serde(skip)]
    pub op: u32,
    #[serde(skip)]
    pub val: u32,
}

#[derive(Clone, Debug, Serialize)]
pub struct UserSample {
    pub key: UserKey,
    /// The sleeping thread's name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comm: Option<String>,
    /// Its process's name, when it was read while the process lived.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub process: Option<String>,
    pub op: FutexOp,
    /// The futex's symbol (or file and offset), when it lies in a mapped file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lock: Option<String>,
    /// The sleeper's user stack, leaf first (empty: not captured).
    pub user_stack: Vec<UserFrame>,
    /// Its kernel stack, leaf first, by function.
    pub kernel_stack: Vec<String>,
    pub count: u64,
    pub total_ns: u64,
}

impl UserSample {
    /// The synthetic root frame naming the lock: `user_lock:NAME [op]`.
    pub fn root_frame(&self) -> String {
        format!(
            "user_lock:{} [{}]",
            self.lock.as_deref().unwrap_or("unnamed"),
            op_name(self.op)
        )
    }
}

pub fn op_name(op: FutexOp) -> &'static str {
    match op {
        FutexOp::Wait => "wait",
        FutexOp::WaitBitset => "wait_bitset",
        FutexOp::LockPi => "lock_pi",
        FutexOp::LockPi2 => "lock_pi2",
        FutexOp::WaitRequeuePi => "wait_requeue_pi",
        FutexOp::Waitv => "waitv",
    }
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct UserProfile {
    pub samples: Vec<UserSample>,
    /// Sleeps left out because the profile's table was full.
    pub table_full: u64,
    /// Sleeps whose stack could not be captured or stored.
    pub no_stack: u64,
}

impl UserProfile {
    /// What this reading added to `earlier` (a `?seconds=N` window): per key, the growth; keys
    /// that did not grow are left out.
    pub fn since(&self, earlier: &UserProfile) -> UserProfile {
        let before: HashMap<UserKey, (u64, u64)> = earlier
            .samples
            .iter()
            .map(|s| (s.key, (s.count, s.total_ns)))
            .collect();
        let samples = self
            .samples
            .iter()
            .filter_map(|s| {
                let (c, t) = before.get(&s.key).copied().unwrap_or((0, 0));
                let count = s.count.saturating_sub(c);
                (count > 0).then(|| UserSample {
                    count,
                    total_ns: s.total_ns.saturating_sub(t),
                    ..s.clone()
                })
            })
            .collect();
        UserProfile {
            samples,
            table_full: self.table_full.saturating_sub(earlier.table_full),
            no_stack: self.no_stack.saturating_sub(earlier.no_stack),
        }
    }
}

/// One row of `faultline contention --user`: a lock of a process (its sleeps summed over
/// stacks), with its heaviest user stack.
#[derive(Clone, Debug, Serialize)]
pub struct UserRow {
    pub pid: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comm: Option<String>,
    /// The futex's symbol, or `unnamed`.
    pub lock: String,
    pub op: FutexOp,
    pub contended: u64,
    pub total_ns: u64,
    /// The heaviest stack's frames, leaf first.
    pub stack: Vec<UserFrame>,
}

impl UserProfile {
    /// Rows by (process, futex, op), heaviest total wait first; only processes in `pids` when
    /// it is not empty, and only locks whose name contains one of `locks` when that is not.
    pub fn rows(&self, pids: &[u32], locks: &[String]) -> Vec<UserRow> {
        let mut by: HashMap<(u32, u64, u32), (UserRow, u64)> = HashMap::new();
        for s in &self.samples {
            if !pids.is_empty() && !pids.contains(&s.key.pid) {
                continue;
            }
            let lock = s.lock.clone().unwrap_or_else(|| "unnamed".into());
            if !locks.is_empty() && !locks.iter().any(|l| lock.contains(l.as_str())) {
                continue;
            }
            let e = by
                .entry((s.key.pid, s.key.futex, s.key.op))
                .or_insert_with(|| {
                    (
                        UserRow {
                            pid: s.key.pid,
                            comm: s.process.clone().or_else(|| s.comm.clone()),
                            lock,
                            op: s.op,
                            contended: 0,
                            total_ns: 0,
                            stack: Vec::new(),
                        },
                        0,
                    )
                });
            e.0.contended += s.count;
            e.0.total_ns += s.total_ns;
            if s.total_ns >= e.1 {
                e.1 = s.total_ns;
                e.0.stack = s.user_stack.clone();
            }
        }
        let mut rows: Vec<UserRow> = by.into_values().map(|(r, _)| r).collect();
        rows.sort_by(|a, b| b.total_ns.cmp(&a.total_ns).then(a.pid.cmp(&b.pid)));
        rows
    }
}

/// The rows as a table: contended, total, average, process, lock, op, and the first frame of
/// the heaviest stack that is not in the C library's locking (with `stacks`, the whole stack).
pub fn render_rows(rows: &[UserRow], stacks: bool) -> String {
    use std::fmt::Write as _;
    let mut s = format!(
        "{:>10} {:>12} {:>10}  {:<28} {:<28} {:<12} caller\n",
        "contended", "total wait", "avg", "process", "lock", "op"
    );
    let dur = |ns: u64| {
        if ns >= 1_000_000_000 {
            format!("{:.2} s", ns as f64 / 1e9)
        } else if ns >= 1_000_000 {
            format!("{:.2} ms", ns as f64 / 1e6)
        } else {
            format!("{:.2} us", ns as f64 / 1e3)
        }
    };
    for r in rows {
        let who = format!("{} ({})", r.comm.as_deref().unwrap_or("?"), r.pid);
        let caller = r
            .stack
            .iter()
            .find(|f| !f.function.contains("lll_lock") && f.function != "[unknown]")
            .or(r.stack.first())
            .map(frame_text)
            .unwrap_or_else(|| "[no stack]".into());
        let _ = writeln!(
            s,
            "{:>10} {:>12} {:>10}  {:<28} {:<28} {:<12} {caller}",
            r.contended,
            dur(r.total_ns),
            dur(r.total_ns / r.contended.max(1)),
            who,
            r.lock,
            op_name(r.op),
        );
        if stacks {
            for f in &r.stack {
                let _ = writeln!(s, "{:>14}{}", "", frame_text(f));
            }
        }
    }
    s
}

/// `function (file:line)` or `function [module]`.
pub fn frame_text(f: &UserFrame) -> String {
    match (&f.file, f.line, &f.module) {
        (Some(file), Some(line), _) => format!("{} ({file}:{line})", f.function),
        (_, _, Some(m)) => format!("{} [{}]", f.function, m.rsplit('/').next().unwrap_or(m)),
        _ => f.function.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(pid: u32, count: u64, total_ns: u64) -> UserSample {
        UserSample {
            key: UserKey {
                pid,
                ..UserKey::default()
            },
            comm: None,
            process: None,
            op: FutexOp::Wait,
            lock: Some("M".into()),
            user_stack: Vec::new(),
            kernel_stack: Vec::new(),
            count,
            total_ns,
        }
    }

    #[test]
    fn a_window_keeps_what_grew_and_only_that() {
        let earlier = UserProfile {
            samples: vec![sample(1, 5, 50), sample(2, 3, 30)],
            ..Default::default()
        };
        let later = UserProfile {
            samples: vec![sample(1, 5, 50), sample(2, 7, 90), sample(3, 1, 10)],
            ..Default::default()
        };
        let d = later.since(&earlier);
        let got: Vec<(u32, u64, u64)> = d
            .samples
            .iter()
            .map(|s| (s.key.pid, s.count, s.total_ns))
            .collect();
        assert_eq!(got, vec![(2, 4, 60), (3, 1, 10)]);
        assert_eq!(sample(1, 1, 1).root_frame(), "user_lock:M [wait]");
    }

    #[test]
    fn rows_sum_a_locks_stacks_keep_the_heaviest_and_filter() {
        let mut a = sample(1, 2, 20);
        a.user_stack = vec![UserFrame {
            function: "light".into(),
            ..UserFrame::default()
        }];
        let mut b = sample(1, 3, 70);
        b.key.ustack = 9;
        b.user_stack = vec![UserFrame {
            function: "heavy".into(),
            file: Some("m.c".into()),
            line: Some(7),
            ..UserFrame::default()
        }];
        let p = UserProfile {
            samples: vec![a, b, sample(2, 1, 5)],
            ..Default::default()
        };
        let rows = p.rows(&[], &[]);
        assert_eq!(
            (rows[0].pid, rows[0].contended, rows[0].total_ns),
            (1, 5, 90)
        );
        assert_eq!(rows[0].stack[0].function, "heavy");
        assert_eq!(p.rows(&[2], &[]).len(), 1);
        assert!(p.rows(&[], &["N".into()]).is_empty());
        assert!(render_rows(&rows, false).contains("heavy (m.c:7)"));
    }
}
