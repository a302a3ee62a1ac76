//! The agent's life on a host: one per host, flushes and exits promptly on SIGTERM/SIGINT, and
//! leaves no program or link behind even when killed. Real agents, real kernel (root).

mod common;

use std::{
    path::Path,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use common::{kill_scenario, require_root, scenario_lingering, shm_files_of, Faultline, FAULTLINE};

/// BPF object ids (`prog_id:` / `link_id:` lines) among the open fds of process `pid`.
fn bpf_ids(pid: u32, key: &str) -> Vec<u32> {
    let dir = format!("/proc/{pid}/fdinfo");
    let mut ids: Vec<u32> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .filter_map(Result::ok)
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter_map(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().parse().ok())
        })
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// Whether a BPF program (cmd 13, BPF_PROG_GET_FD_BY_ID) or link (cmd 30, BPF_LINK_GET_FD_BY_ID)
/// with this id still exists.
fn bpf_object_exists(cmd: libc::c_long, id: u32) -> bool {
    // The id is the first u32 of `union bpf_attr` for both commands.
    let mut attr = [0u8; 128];
    attr[..4].copy_from_slice(&id.to_ne_bytes());
    // SAFETY: a bpf(2) call with a zeroed attr buffer of the size passed.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len()) };
    if fd >= 0 {
        // SAFETY: closing the fd we were just given.
        unsafe { libc::close(fd as i32) };
        return true;
    }
    std::io::Error::last_os_error().raw_os_error() != Some(libc::ENOENT)
}

/// The scheduler state of task `tid` of process `pid` (`R`, `S`, `D`, ...), from /proc.
fn task_state(pid: u64, tid: u64) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).ok()?;
    // "tid (comm) S ...": the comm may hold spaces and parentheses, the state follows the last ')'.
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// Polls (for up to 10 s) until task `tid` has slept uninterruptibly (`D`: a mutex wait) for
/// `for_at_least` without a break, as the kernel reports it. Returns the states seen if it
/// never did.
fn asleep_on_a_lock(pid: u64, tid: u64, for_at_least: Duration) -> Result<(), Vec<char>> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut since: Option<Instant> = None;
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        let state = task_state(pid, tid).unwrap_or('?');
        if seen.last() != Some(&state) {
            seen.push(state);
        }
        if state == 'D' {
            if since.get_or_insert_with(Instant::now).elapsed() >= for_at_least {
                return Ok(());
            }
        } else {
            since = None;
        }
        thread::sleep(Duration::from_millis(10));
    }
    Err(seen)
}

fn agent(state: &Path, extra: &[&str]) -> (Faultline, String) {
    let mut args = vec!["--summary-interval", "60s"];
    args.extend_from_slice(extra);
    Faultline::agent(state, &args)
}

#[test]
fn a_second_agent_is_refused_with_one_line_naming_the_first() {
    if !require_root("a_second_agent_is_refused_with_one_line_naming_the_first") {
        return;
    }
    let state = tempfile::tempdir().expect("tempdir");
    let (first, _) = agent(state.path(), &[]);
    let second_state = tempfile::tempdir().expect("tempdir");
    let started = Instant::now();
    let out = Command::new(FAULTLINE)
        .args(["agent", "--listen", "127.0.0.1:0", "--state-dir"])
        .arg(second_state.path())
        .env("FAULTLINE_RUN_DIR", first.run_dir())
        .stdin(Stdio::null())
        .output()
        .expect("run a second agent");
    assert!(!out.status.success(), "the second agent must fail");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "refused at once, before loading anything: {:?}",
        started.elapsed()
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line: {stderr}");
    assert!(
        lines[0].contains("another faultline agent is already running")
            && lines[0].contains(&format!("pid {}", first.pid())),
        "names the first agent's pid {}: {stderr}",
        first.pid()
    );
    let (status, _) = first.stop();
    assert!(status.success(), "the first agent is unaffected");
}

/// Runs `sh -c SCRIPT` as `nobody` with no capabilities (util-linux `setpriv`).
fn as_nobody(script: &str) -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.args([
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--inh-caps=-all",
        "sh",
        "-c",
        script,
    ]);
    cmd
}

#[test]
fn a_squatter_on_the_old_abstract_socket_does_not_block_the_agent() {
    if !require_root("a_squatter_on_the_old_abstract_socket_does_not_block_the_agent") {
        return;
    }
    use std::os::linux::net::SocketAddrExt;
    // What any process in the network namespace could do against the old single-agent claim.
    let name = std::os::unix::net::SocketAddr::from_abstract_name(b"faultline-agent")
        .expect("abstract name");
    // Already held (by a real squatter, or an older agent): the point stands either way.
    let _squat = std::os::unix::net::UnixListener::bind_addr(&name).ok();
    let state = tempfile::tempdir().expect("tempdir");
    let (first, _) = agent(state.path(), &[]);
    let (status, _) = first.stop();
    assert!(status.success(), "the agent ran beside the squatter");
}

#[test]
fn a_process_without_root_cannot_take_the_single_agent_lock() {
    if !require_root("a_process_without_root_cannot_take_the_single_agent_lock") {
        return;
    }
    // /run in miniature: root's, open to everyone for reading, writable by root only.
    let base = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(
        base.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    let run = base.path().join("faultline");
    let state = tempfile::tempdir().expect("tempdir");
    // The agent creates the directory, then stops: the lock is free, the file stays.
    let (first, _) = Faultline::agent_in(state.path(), &["--summary-interval", "60s"], Some(&run));
    let (status, _) = first.stop();
    assert!(status.success());
    let lock = run.join("agent.lock");
    assert!(lock.exists(), "the lock file stays between agents");
    // Everything a squatter could try: take the file, or replace it and take that.
    let script = format!(
        "flock -n -x {lock} true && echo took; rm -f {lock} && echo removed; \
         flock -n -x {dir}/other.lock true && echo created; exit 0",
        lock = lock.display(),
        dir = run.display()
    );
    let out = as_nobody(&script).output().expect("setpriv (util-linux)");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.trim().is_empty(),
        "nobody got at the run directory ({said}); stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // And a squatter holding the lock in the background does not block the next agent.
    let mut squatter = as_nobody(&format!("exec flock -n -x {} sleep 5", lock.display()))
        .stderr(Stdio::null())
        .spawn()
        .expect("setpriv (util-linux)");
    thread::sleep(Duration::from_millis(200));
    let (second, _) = Faultline::agent_in(state.path(), &["--summary-interval", "60s"], Some(&run));
    let _ = squatter.kill();
    let _ = squatter.wait();
    let (status, _) = second.stop();
    assert!(status.success());
}

#[test]
fn sigterm_and_sigint_flush_incidents_and_exit_within_a_second() {
    if !require_root("sigterm_and_sigint_flush_incidents_and_exit_within_a_second") {
        return;
    }
    for (signal, name) in [(libc::SIGTERM, "SIGTERM"), (libc::SIGINT, "SIGINT")] {
        let state = tempfile::tempdir().expect("tempdir");
        // Snapshots far apart: only the flush at exit can raise the stall of the chain below.
        let (mut agent, _) = agent(
            state.path(),
            &[
                "--wait-threshold",
                "1ms",
                "--stall-threshold",
                "200ms",
                "--snapshot-interval",
                "60s",
            ],
        );
        // Thread A waits on a userfaultfd while holding a file's f_pos mutex; B waits for it.
        let (mut chain, r) = scenario_lingering(&["uffd-chain", "--hold-ms", "10000"]);
        let waiter = r["waiter_tid"].as_u64().expect("waiter tid");
        // The signal goes once the kernel shows the waiter asleep on the mutex for longer
        // than the stall threshold: from then on, the flush at exit must raise the stall.
        let pid = r["pid"].as_u64().expect("chain pid");
        let waited = asleep_on_a_lock(pid, waiter, Duration::from_millis(250));
        let sent = Instant::now();
        agent.signal(signal);
        let status = agent.wait_exit(Duration::from_secs(5));
        let took = sent.elapsed();
        kill_scenario(&mut chain);
        if let Err(states) = waited {
            panic!("{name}: within 10 s the waiter {waiter} never slept on the lock for 250 ms (states seen: {states:?})");
        }
        assert!(status.success(), "{name}: clean exit, got {status}");
        assert!(took < Duration::from_secs(1), "{name}: exit took {took:?}");
        let lines = agent.lines();
        assert!(
            lines
                .iter()
                .any(|l| l.contains("faultline agent: stopping")),
            "{name}: {lines:#?}"
        );
        let incidents: Vec<String> = std::fs::read_dir(state.path())
            .expect("state dir")
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
            .filter_map(|e| std::fs::read_to_string(e.path()).ok())
            .collect();
        let names_waiter = incidents.iter().any(|text| {
            serde_json::from_str::<serde_json::Value>(text).is_ok_and(|v| {
                v["alert"]["tids"]
                    .as_array()
                    .is_some_and(|t| t.first().and_then(|x| x.as_u64()) == Some(waiter))
            })
        });
        assert!(
            names_waiter,
            "{name}: an incident for the blocked waiter {waiter} was flushed: {incidents:#?}\n{lines:#?}"
        );
    }
}

#[test]
fn after_sigkill_no_program_or_link_of_the_agent_is_left() {
    if !require_root("after_sigkill_no_program_or_link_of_the_agent_is_left") {
        return;
    }
    let state = tempfile::tempdir().expect("tempdir");
    let (mut agent, _) = agent(state.path(), &[]);
    let pid = agent.pid();
    let progs = bpf_ids(pid, "prog_id:");
    let links = bpf_ids(pid, "link_id:");
    assert!(progs.len() >= 4, "the agent holds its programs: {progs:?}");
    assert!(!links.is_empty(), "the agent holds its links");
    agent.signal(libc::SIGKILL);
    agent.wait_exit(Duration::from_secs(5));
    // Release after the last fd closes is prompt but may trail the exit a little.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left_progs: Vec<u32> = progs
            .iter()
            .copied()
            .filter(|&id| bpf_object_exists(13, id))
            .collect();
        let left_links: Vec<u32> = links
            .iter()
            .copied()
            .filter(|&id| bpf_object_exists(30, id))
            .collect();
        if left_progs.is_empty() && left_links.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "left behind after SIGKILL: programs {left_progs:?}, links {left_links:?}"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn scenarios_leave_nothing_in_dev_shm_while_running_or_when_killed() {
    if !require_root("scenarios_leave_nothing_in_dev_shm_while_running_or_when_killed") {
        return;
    }
    // The workloads that share a file in /dev/shm between threads (f_pos_lock): the name is
    // gone as soon as the file is open, so a workload killed mid-run (SIGKILL from a test's
    // timeout) cannot leave it behind.
    for args in [
        &["uffd-chain", "--hold-ms", "10000"][..],
        &["uffd-deadlock", "--hold-ms", "10000"][..],
        &["uffd-monitor-deadlock", "--hold-ms", "10000"][..],
    ] {
        let (mut child, _) = scenario_lingering(args);
        let pid = child.id();
        let running = shm_files_of(pid);
        kill_scenario(&mut child);
        assert!(
            running.is_empty(),
            "{args:?}: its /dev/shm file has a name while it runs: {running:?}"
        );
    }
}
