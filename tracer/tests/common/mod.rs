//! Helpers for tests that run faultline against the real kernel.
#![allow(dead_code)]

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::Duration,
};

use tracer::{core::event::Event, core::trace::TraceReader};

pub const FAULTLINE: &str = env!("CARGO_BIN_EXE_faultline");
/// The workloads binary (`scenarios/`, its own crate so installing faultline does not install
/// it): next to this test's profile directory, built on first use when cargo is at hand (in a
/// VM guest it is copied there beforehand).
pub static SCENARIO: std::sync::LazyLock<PathBuf> = std::sync::LazyLock::new(|| {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> → target/<profile>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable in target/<profile>/deps");
    let bin = profile_dir.join("faultline-scenario");
    let release = profile_dir.file_name().is_some_and(|n| n == "release");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = Command::new(cargo);
    build.args(["build", "--quiet", "-p", "faultline-scenarios"]);
    if release {
        build.arg("--release");
    }
    let built = build.status().is_ok_and(|s| s.success());
    assert!(
        built || bin.exists(),
        "cannot build faultline-scenario and {} does not exist",
        bin.display()
    );
    bin
});

/// Whether kernel tests can run. In CI (`CI=true`) a missing privilege fails the test instead:
/// kernel tests never skip there.
pub fn require_root(test: &str) -> bool {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!("{test}: kernel tests need root, and CI must run them (CI=true)");
    }
    eprintln!("skipping {test}: needs root to load eBPF programs");
    false
}

/// A run directory (single-agent lock, API socket) of one agent: tests run beside other agents
/// on the host (another checkout's suite, a real deployment, each other) without refusing
/// each other. Root's and 0700, as the agent requires.
pub fn run_dir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("faultline-run-")
        .tempdir()
        .expect("tempdir for the agent's run directory");
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .expect("chmod 0700 the agent's run directory");
    dir
}

/// A faultline child process whose stderr is collected line by line.
pub struct Faultline {
    child: Child,
    /// Removed when dropped; the agent's run directory unless `start_in` named another.
    _run_dir: tempfile::TempDir,
    run_at: PathBuf,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Faultline {
    /// Starts `faultline ARGS` and waits until a stderr line contains `ready`.
    pub fn start(args: &[&str], ready: &str) -> Self {
        Self::start_in(args, ready, None)
    }

    /// `start`, with the run directory `FAULTLINE_RUN_DIR` set to `run_at` when given (the
    /// agent creates it when absent) instead of a fresh one.
    pub fn start_in(args: &[&str], ready: &str, run_at: Option<&Path>) -> Self {
        let run_dir = run_dir();
        let run_at = run_at.unwrap_or(run_dir.path()).to_owned();
        let mut child = Command::new(FAULTLINE)
            .args(args)
            .env("RUST_LOG", "info")
            .env("FAULTLINE_RUN_DIR", &run_at)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn faultline");
        let stderr = child.stderr.take().expect("stderr piped");
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut f = Self {
            child,
            _run_dir: run_dir,
            run_at,
            lines: rx,
            seen: Vec::new(),
        };
        f.wait_for(ready, Duration::from_secs(30));
        f
    }

    /// Waits for a stderr line containing `needle`; panics with everything seen on timeout.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> String {
        self.wait_for_all(&[needle], timeout)
    }

    /// Waits for a stderr line containing every one of `needles`.
    pub fn wait_for_all(&mut self, needles: &[&str], timeout: Duration) -> String {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(l) = self
                .seen
                .iter()
                .find(|l| needles.iter().all(|n| l.contains(n)))
            {
                return l.clone();
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(_) => panic!(
                    "faultline never printed {needles:?} within {timeout:?}; stderr so far:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// Starts `faultline agent` on a free loopback port with its state in `state`, plus `extra`
    /// flags; returns it with the address of its API.
    pub fn agent(state: &Path, extra: &[&str]) -> (Self, String) {
        Self::agent_in(state, extra, None)
    }

    /// `agent`, in run directory `run_at` when given (see `start_in`).
    pub fn agent_in(state: &Path, extra: &[&str], run_at: Option<&Path>) -> (Self, String) {
        let state = state.to_str().expect("utf-8 state dir");
        let mut args = vec!["agent", "--listen", "127.0.0.1:0", "--state-dir", state];
        args.extend_from_slice(extra);
        let mut agent = Self::start_in(&args, "probes attached", run_at);
        let line = agent.wait_for("API on http://", Duration::from_secs(1));
        let addr = line
            .split("API on http://")
            .nth(1)
            .and_then(|r| r.split([',', ' ']).next())
            .expect("the start line names the API address")
            .to_owned();
        (agent, addr)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its run directory (`FAULTLINE_RUN_DIR`): its single-agent lock and API socket.
    pub fn run_dir(&self) -> &Path {
        &self.run_at
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }

    /// Waits for the process to exit (killing it after `timeout`), then collects its last lines.
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait faultline") {
                break status;
            }
            if std::time::Instant::now() > deadline {
                let _ = self.child.kill();
                break self.child.wait().expect("wait faultline");
            }
            thread::sleep(Duration::from_millis(5));
        };
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(2)) {
            self.seen.push(line);
        }
        status
    }

    /// Every stderr line seen so far.
    pub fn lines(&self) -> &[String] {
        &self.seen
    }

    /// Sends SIGTERM, waits for exit, and returns the exit status and all stderr lines.
    pub fn stop(mut self) -> (std::process::ExitStatus, Vec<String>) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait().expect("wait faultline");
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(2)) {
            self.seen.push(line);
        }
        (status, std::mem::take(&mut self.seen))
    }
}

impl Drop for Faultline {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a scenario and returns its JSON report. It must leave nothing in /dev/shm.
pub fn scenario(args: &[&str]) -> serde_json::Value {
    let child = Command::new(&*SCENARIO)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run faultline-scenario");
    let pid = child.id();
    let out = child.wait_with_output().expect("run faultline-scenario");
    assert!(
        out.status.success(),
        "scenario {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_no_shm_left(pid);
    serde_json::from_slice(&out.stdout).expect("scenario prints one JSON report")
}

/// The files a scenario of process `pid` has in /dev/shm (`faultline-<name>-<pid>`): the
/// workloads remove each one right after opening it, so this is empty while they run, after
/// they exit and after they are killed.
pub fn shm_files_of(pid: u32) -> Vec<PathBuf> {
    let suffix = format!("-{pid}");
    std::fs::read_dir("/dev/shm")
        .map(|dir| {
            dir.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("faultline-") && n.ends_with(&suffix))
                })
                .collect()
        })
        .unwrap_or_default()
}

pub fn assert_no_shm_left(pid: u32) {
    let left = shm_files_of(pid);
    assert!(
        left.is_empty(),
        "scenario {pid} left files in /dev/shm: {left:?}"
    );
}

/// Kills a lingering scenario, reaps it, and checks it left nothing in /dev/shm.
pub fn kill_scenario(child: &mut Child) {
    let pid = child.id();
    let _ = child.kill();
    let _ = child.wait();
    assert_no_shm_left(pid);
}

/// A recording in progress.
pub struct Recording {
    proc: Faultline,
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Recording {
    pub fn start(extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("trace.jsonl");
        let path_s = path.to_str().expect("utf-8 temp path").to_owned();
        let mut args = vec!["record", "-o", &path_s];
        args.extend_from_slice(extra);
        let proc = Faultline::start(&args, "recording to");
        Self {
            proc,
            path,
            _dir: dir,
        }
    }

    /// The recorder's own pid (its events are filtered in the kernel).
    pub fn pid(&self) -> u32 {
        self.proc.child.id()
    }

    /// Stops the recorder and reads the trace back.
    pub fn finish(self) -> Vec<Event> {
        let (status, lines) = self.proc.stop();
        assert!(status.success(), "record failed: {}", lines.join("\n"));
        read_trace(&self.path)
    }
}

pub fn read_trace(path: &Path) -> Vec<Event> {
    let file = std::fs::File::open(path).expect("open trace");
    TraceReader::new(BufReader::new(file))
        .collect::<Result<Vec<_>, _>>()
        .expect("every recorded line parses as trace format v1")
}

pub fn u64_at(v: &serde_json::Value, path: &[&str]) -> u64 {
    let mut cur = v;
    for p in path {
        cur = &cur[*p];
    }
    cur.as_u64()
        .unwrap_or_else(|| panic!("{path:?} missing in {v}"))
}

/// A plain HTTP/1.0 GET against the agent (no client crate needed for loopback tests).
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect to the agent");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").expect("send request");
    let mut resp = String::new();
    s.read_to_string(&mut resp).expect("read response");
    let (head, body) = resp.split_once("\r\n\r\n").expect("HTTP response");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status code");
    (status, body.to_owned())
}

/// Starts a scenario that reports and then lingers; returns it running with its report.
pub fn scenario_lingering(args: &[&str]) -> (Child, serde_json::Value) {
    lingering(args, Stdio::inherit())
}

/// Like `scenario_lingering` with stdin piped: for scenarios run with `--until-stdin-closes`,
/// whose hold ends when the child is waited for or dropped (a failed test too).
pub fn scenario_held(args: &[&str]) -> (Child, serde_json::Value) {
    lingering(args, Stdio::piped())
}

fn lingering(args: &[&str], stdin: Stdio) -> (Child, serde_json::Value) {
    let mut child = Command::new(&*SCENARIO)
        .args(args)
        .stdin(stdin)
        .stdout(Stdio::piped())
        .spawn()
        .expect("run faultline-scenario");
    let stdout = child.stdout.take().expect("stdout piped");
    let mut reader = BufReader::new(stdout);
    let mut line = String::new();
    reader.read_line(&mut line).expect("scenario report line");
    // Keep reading what it prints later, so it never writes into a closed pipe.
    thread::spawn(move || {
        let mut rest = String::new();
        while reader.read_line(&mut rest).is_ok_and(|n| n > 0) {
            rest.clear();
        }
    });
    let report = serde_json::from_str(&line)
        .unwrap_or_else(|e| panic!("scenario {args:?} report {line:?}: {e}"));
    (child, report)
}

/// The numbers of a JSON array field (`tids` of an alert, `blocked_on` of a task); empty when
/// the field is missing.
pub fn u64s(v: &serde_json::Value, field: &str) -> Vec<u64> {
    v[field]
        .as_array()
        .map(|a| a.iter().filter_map(|x| x.as_u64()).collect())
        .unwrap_or_default()
}

/// Runs faultline as `nobody` with no capabilities (util-linux `setpriv`) and checks it fails
/// with one line naming the missing privilege and the fix.
pub fn assert_fails_without_privileges(args: &[&std::ffi::OsStr]) {
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(FAULTLINE)
        .args(args)
        .output()
        .expect("setpriv (util-linux) runs faultline as nobody");
    assert!(
        !out.status.success(),
        "{args:?} must fail without privileges"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line, got: {stderr}");
    assert!(
        lines[0].contains("permission denied") && lines[0].contains("root"),
        "the line names the problem and the fix: {stderr}"
    );
}

/// A GET on the agent's API: (status, body bytes), for binary answers such as a gzipped profile.
pub fn http_get_bytes(addr: &str, path: &str) -> (u16, Vec<u8>) {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(addr).expect("connect to the agent");
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").expect("send");
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).expect("read");
    let split = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("an HTTP response");
    let head = String::from_utf8_lossy(&resp[..split]);
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status");
    (status, resp[split + 4..].to_vec())
}
