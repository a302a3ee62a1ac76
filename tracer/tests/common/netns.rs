//! Network namespaces joined to the host by a veth pair on a private /30 made for the test;
//! deleted when dropped (a panic included). The veth pair goes with its namespace.
#![allow(dead_code)]

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use crate::common::{http_get, FAULTLINE};

/// The port agents listen on, on their namespace's veth address.
pub const AGENT_PORT: u16 = 9720;

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip (iproute2): {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

pub struct Netns {
    pub name: String,
    host_veth: String,
    /// The host's end of the link.
    pub host_ip: String,
    /// The namespace's end of the link.
    pub ns_ip: String,
}

impl Netns {
    /// `tag` (one letter) and `index` make the names and the subnet unique per test run:
    /// 10.231.<pid-derived>.<4*index>/30.
    pub fn new(tag: char, index: u8) -> Self {
        let pid = std::process::id();
        let name = format!("fl{pid}{tag}");
        let host_veth = format!("flh{}{tag}", pid % 100_000);
        let ns_veth = format!("fln{}{tag}", pid % 100_000);
        let third = pid % 250;
        let base = u32::from(index) * 4;
        let (host_ip, ns_ip) = (
            format!("10.231.{third}.{}", base + 1),
            format!("10.231.{third}.{}", base + 2),
        );
        let ns = Self {
            name: name.clone(),
            host_veth: host_veth.clone(),
            host_ip: host_ip.clone(),
            ns_ip: ns_ip.clone(),
        };
        let (host_cidr, ns_cidr) = (format!("{host_ip}/30"), format!("{ns_ip}/30"));
        let steps: [&[&str]; 7] = [
            &["netns", "add", &name],
            &[
                "link", "add", &host_veth, "type", "veth", "peer", "name", &ns_veth, "netns", &name,
            ],
            &["addr", "add", &host_cidr, "dev", &host_veth],
            &["link", "set", &host_veth, "up"],
            &["-n", &name, "addr", "add", &ns_cidr, "dev", &ns_veth],
            &["-n", &name, "link", "set", &ns_veth, "up"],
            &["-n", &name, "link", "set", "lo", "up"],
        ];
        for step in steps {
            // `ns` is dropped on panic: what was made so far is removed.
            ip(step).unwrap_or_else(|e| panic!("setting up netns {name}: {e}"));
        }
        ns
    }

    /// The path `nsenter --net=` takes.
    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["link", "del", &self.host_veth]);
        let _ = ip(&["netns", "del", &self.name]);
    }
}

/// A child process killed when dropped.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `faultline agent --scope netns` inside a network namespace, listening on its veth address.
pub struct NsAgent {
    _proc: Proc,
    pub addr: String,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
    _state: tempfile::TempDir,
    /// Its own single-agent lock: agents in separate namespaces act as separate hosts.
    _run_dir: tempfile::TempDir,
}

impl NsAgent {
    /// Starts the agent with `extra` flags and waits until its probes are attached.
    pub fn start(ns: &Netns, extra: &[&str]) -> Self {
        Self::start_with_env(ns, extra, &[])
    }

    /// As [`Self::start`], with `env` added to the agent's environment.
    pub fn start_with_env(ns: &Netns, extra: &[&str], env: &[(&str, &std::path::Path)]) -> Self {
        let state = tempfile::tempdir().expect("tempdir");
        let run_dir = crate::common::run_dir();
        let addr = format!("{}:{AGENT_PORT}", ns.ns_ip);
        let mut child = Command::new("nsenter")
            .arg(format!("--net={}", ns.path()))
            .arg(FAULTLINE)
            .args([
                "agent",
                "--scope",
                "netns",
                "--listen",
                &addr,
                "--state-dir",
            ])
            .arg(state.path())
            .args(extra)
            .env("RUST_LOG", "info")
            .env("FAULTLINE_RUN_DIR", run_dir.path())
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("nsenter (util-linux) runs faultline in the namespace");
        let stderr = child.stderr.take().expect("stderr piped");
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut agent = Self {
            _proc: Proc(child),
            addr,
            lines,
            seen: Vec::new(),
            _state: state,
            _run_dir: run_dir,
        };
        agent.wait_for("probes attached", Duration::from_secs(60));
        agent
    }

    pub fn wait_for(&mut self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.seen.iter().any(|l| l.contains(needle)) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => self.seen.push(l),
                Err(_) => panic!(
                    "agent {} never printed {needle:?}:\n{}",
                    self.addr,
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// The agent's state directory (incident files).
    pub fn state(&self) -> &std::path::Path {
        self._state.path()
    }

    pub fn alerts(&self) -> Vec<serde_json::Value> {
        let (status, body) = http_get(&self.addr, "/api/alerts");
        assert_eq!(status, 200, "{body}");
        let doc: serde_json::Value = serde_json::from_str(&body).expect("alerts JSON");
        doc["alerts"].as_array().cloned().unwrap_or_default()
    }
}
