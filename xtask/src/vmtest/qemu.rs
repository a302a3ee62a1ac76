//! Booting a kernel and initramfs in QEMU, bounded in time, with the serial console collected
//! line by line. The VM is killed whatever happens (timeout, error, panic of the caller).

use std::{
    fs,
    io::{BufRead as _, BufReader, Write as _},
    path::Path,
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

/// How QEMU runs the guest's CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub fn name(self) -> &'static str {
        match self {
            Self::Kvm => "kvm",
            Self::Tcg => "tcg",
        }
    }
}

/// What a boot printed and how it ended.
pub struct Boot {
    pub lines: Vec<String>,
    pub timed_out: bool,
    pub wall: Duration,
}

/// Kills the VM when dropped, so no path out of `boot` leaves it running.
struct VmGuard(Child);

impl Drop for VmGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The guest kernel's command line before any `--append`: a quiet console, and a panic (which
/// ends QEMU at once) on an oops.
pub const KERNEL_ARGS: &str = "console=ttyS0 quiet panic=-1 oops=panic";

pub fn command(
    kernel: &Path,
    initrd: &Path,
    accel: Accel,
    memory_mib: u32,
    append: &str,
) -> Command {
    let mut c = Command::new("qemu-system-x86_64");
    c.args(["-accel", accel.name(), "-cpu", "max", "-smp", "2", "-m"])
        .arg(memory_mib.to_string())
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(initrd)
        // panic=-1 reboots at once on a panic, and -no-reboot turns that into QEMU exiting.
        .arg("-append")
        .arg(format!("{KERNEL_ARGS} {append}").trim_end())
        .args(["-nographic", "-no-reboot"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

/// Boots and collects the console until QEMU exits, `done` matches a line, or `timeout`.
/// Each line is written to `log` and, when `echo` is set, to stderr with `prefix`.
pub fn boot(
    mut cmd: Command,
    timeout: Duration,
    log: &Path,
    echo: Option<&str>,
    done: impl Fn(&str) -> bool,
) -> Result<Boot> {
    let start = Instant::now();
    let mut log = fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let mut guard = VmGuard(
        cmd.spawn()
            .context("starting qemu-system-x86_64 (apt-get install qemu-system-x86)")?,
    );
    let (tx, rx) = mpsc::channel();
    for stream in [
        guard
            .0
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        guard
            .0
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
    ]
    .into_iter()
    .flatten()
    {
        let tx = tx.clone();
        thread::spawn(move || {
            let mut reader = BufReader::new(stream);
            let mut buf = Vec::new();
            // Console output is bytes, not always UTF-8 (kernel messages, escape codes).
            while reader.read_until(b'\n', &mut buf).is_ok_and(|n| n > 0) {
                let line = String::from_utf8_lossy(&buf)
                    .trim_end_matches(['\n', '\r'])
                    .to_owned();
                buf.clear();
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
    }
    drop(tx);
    let deadline = start + timeout;
    let mut lines = Vec::new();
    let mut timed_out = false;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                let _ = writeln!(log, "{line}");
                if let Some(prefix) = echo {
                    eprintln!("{prefix}{line}");
                }
                let finished = done(&line);
                lines.push(line);
                if finished {
                    break;
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                timed_out = true;
                break;
            }
        }
    }
    drop(guard);
    Ok(Boot {
        lines,
        timed_out,
        wall: start.elapsed(),
    })
}
