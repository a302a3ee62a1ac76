//! Test cgroups under the writable cgroup2 mount, shaped like what systemd, container runtimes
//! and the kubelet create; removed (their processes killed first) when dropped.
#![allow(dead_code)]

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// A 64-digit container id, different per test run.
pub fn container_id(salt: u32) -> String {
    format!(
        "{:016x}",
        u64::from(std::process::id()) << 20 | u64::from(salt)
    )
    .repeat(4)
}

/// A pod UID (8-4-4-4-12), different per test run.
pub fn pod_uid() -> String {
    format!("{:08x}-7b1f-4e59-9a8d-2c4b6e8f0a1c", std::process::id())
}

/// Where cgroup2 is mounted here: /sys/fs/cgroup/unified on hybrid hosts, /sys/fs/cgroup on
/// cgroup2-only ones.
pub fn cgroup2_root() -> PathBuf {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    tracer::kernel::workload::cgroup2_mount(&mountinfo)
        .expect("a cgroup2 mount (hybrid or unified)")
}

/// A subtree `faultline-test-<pid>-<name>` of the cgroup2 root.
pub struct TestCgroups {
    base: PathBuf,
    created: Vec<PathBuf>,
}

impl TestCgroups {
    pub fn new(name: &str) -> Self {
        let base = cgroup2_root().join(format!("faultline-test-{}-{name}", std::process::id()));
        std::fs::create_dir(&base)
            .unwrap_or_else(|e| panic!("mkdir {}: {e} (cgroup2 must be writable)", base.display()));
        Self {
            created: vec![base.clone()],
            base,
        }
    }

    /// Creates `rel` (and its parents) under the subtree; returns its cgroup v2 path as
    /// /proc/PID/cgroup shows it.
    pub fn make(&mut self, rel: &str) -> String {
        let mut dir = self.base.clone();
        for part in rel.split('/') {
            dir = dir.join(part);
            if !dir.exists() {
                std::fs::create_dir(&dir)
                    .unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
                self.created.push(dir.clone());
            }
        }
        self.path_of(rel)
    }

    pub fn dir(&self, rel: &str) -> PathBuf {
        self.base.join(rel)
    }

    /// The cgroup path of `rel` as processes in it see it in /proc/PID/cgroup.
    pub fn path_of(&self, rel: &str) -> String {
        let root = cgroup2_root();
        format!(
            "/{}",
            self.base
                .join(rel)
                .strip_prefix(&root)
                .expect("under the root")
                .display()
        )
    }

    /// Runs `program args` inside cgroup `rel` (moved there before it execs).
    pub fn spawn_in(&self, rel: &str, program: &str, args: &[&str], stdout: Stdio) -> Child {
        let procs = self.base.join(rel).join("cgroup.procs");
        Command::new("sh")
            .arg("-c")
            .arg("echo $$ > \"$0\" && exec \"$@\"")
            .arg(&procs)
            .arg(program)
            .args(args)
            .stdout(stdout)
            .spawn()
            .expect("spawn sh")
    }
}

fn kill_all(dir: &Path) {
    // cgroup.kill (5.14+) kills the whole subtree at once; fall back to the listed pids.
    if std::fs::write(dir.join("cgroup.kill"), "1").is_err() {
        if let Ok(pids) = std::fs::read_to_string(dir.join("cgroup.procs")) {
            for pid in pids.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                // SAFETY: signalling a test process we put there.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

impl Drop for TestCgroups {
    fn drop(&mut self) {
        for dir in self.created.iter().rev() {
            kill_all(dir);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for dir in self.created.iter().rev() {
            // A killed process leaves its cgroup a moment after the signal.
            while std::fs::remove_dir(dir).is_err() && dir.exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}
