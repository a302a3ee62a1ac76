//! The user-lock profile: every futex sleep that ended, aggregated by process, futex word,
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
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comm: Option<String>,
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
}
