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
    Tcg(TcgThreads),
}

/// Host threads for TCG's vCPUs: see `Accel::qemu_arg` for why single is the default.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TcgThreads {
    /// Every vCPU on one host thread, taking turns.
    Single,
    /// A host thread per vCPU (MTTCG); reproduces QEMU 7.2's lost code patch.
    Multi,
}

impl Accel {
    pub fn name(self) -> &'static str {
        match self {
            Self::Kvm => "kvm",
            Self::Tcg(TcgThreads::Single) => "tcg",
            Self::Tcg(TcgThreads::Multi) => "tcg (thread per vCPU)",
        }
    }

    /// QEMU's `-accel` value.
    ///
    /// TCG runs single-threaded (both vCPUs on one host thread, taking turns). With a host
    /// thread per vCPU, bookworm's QEMU 7.2 loses a cross-vCPU code patch: when the guest kernel
    /// patches a hot static-call site (attaching or detaching any tracepoint does; the
    /// sched_switch one sits in `__schedule`), the other vCPU keeps taking the int3 planted
    /// there, interrupts off, although memory already holds the finished instruction, and the
    /// patcher waits for it forever (an RCU stall, then silence). Toggling a tracefs event with
    /// no BPF at all froze 6.1 guests within 50 toggles, twice; single-threaded, the same
    /// guest ran 2,950 toggles in 406 s without a freeze (stopped there).
    fn qemu_arg(self) -> &'static str {
        match self {
            Self::Kvm => "kvm",
            Self::Tcg(TcgThreads::Single) => "tcg,thread=single",
            Self::Tcg(TcgThreads::Multi) => "tcg,thread=multi",
        }
    }
}

/// What a boot printed and how it ended.
pub struct Boot {
    pub lines: Vec<String>,
    pub timed_out: bool,
    pub wall: Duration,
    /// Where the vCPUs were, sampled from the QEMU monitor while the console was silent.
    pub silent: Vec<CpuSample>,
}

/// How long the console may say nothing before the vCPUs are sampled. The longest quiet
/// stretch of a healthy run under TCG (a test loading every program) is about 15 s.
pub const SILENCE: Duration = Duration::from_secs(60);

/// One vCPU as the QEMU monitor shows it (`info registers -a`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CpuSample {
    pub cpu: u32,
    pub rip: u64,
    /// RFLAGS.IF: whether the CPU takes interrupts.
    pub interrupts: bool,
    /// Halted (`HLT=1`): idle, waiting for an interrupt.
    pub halted: bool,
    /// `function+0xoff`, when the kernel's symbols and the guest's KASLR slide are known.
    pub symbol: Option<String>,
}

impl std::fmt::Display for CpuSample {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cpu{} rip={:#x}", self.cpu, self.rip)?;
        if let Some(sym) = &self.symbol {
            write!(f, " ({sym})")?;
        }
        write!(
            f,
            " {} {}",
            if self.halted { "halted" } else { "running" },
            if self.interrupts {
                "interrupts on"
            } else {
                "interrupts off"
            }
        )
    }
}

/// Parses `info registers -a`: a `CPU#n` line, then register lines with `RIP=… RFL=…` and
/// `HLT=`.
pub fn parse_registers(text: &str) -> Vec<CpuSample> {
    let mut out = Vec::new();
    let mut cpu = None;
    for line in text.lines() {
        if let Some(n) = line.trim().strip_prefix("CPU#") {
            cpu = n.trim().parse().ok();
        }
        let field = |name: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(name))
                .map(str::to_owned)
        };
        if let (Some(c), Some(rip), Some(rfl)) = (cpu, field("RIP="), field("RFL=")) {
            let rip = u64::from_str_radix(&rip, 16).unwrap_or(0);
            let rfl = u64::from_str_radix(&rfl, 16).unwrap_or(0);
            out.push(CpuSample {
                cpu: c,
                rip,
                interrupts: rfl & 0x200 != 0,
                halted: field("HLT=").as_deref() == Some("1"),
                symbol: None,
            });
            cpu = None;
        }
    }
    out
}

/// What the vCPU samples of a silent console say: whether the guest waited for an interrupt
/// the emulator never delivered (every vCPU idle), or its kernel spun with interrupts off.
pub fn verdict(samples: &[CpuSample]) -> String {
    let shown: Vec<String> = samples.iter().map(|c| c.to_string()).collect();
    let shown = shown.join(", ");
    if samples.is_empty() {
        return "the vCPUs could not be sampled".to_owned();
    }
    if let Some(at) = samples.iter().find(|c| in_text_patching(c)) {
        return format!(
            "the guest kernel never finished patching its own code: {at} is in the int3 handling of a live text patch (static call or jump label; attaching or detaching any tracepoint patches one). A vCPU that keeps taking an int3 the patch already removed is the signature of QEMU's multi-threaded TCG losing a cross-vCPU code patch, reproduced with no BPF by toggling a tracefs event; the guest code is not at fault ({shown})"
        );
    }
    if samples.iter().all(|c| c.halted && c.interrupts) {
        return format!(
            "every vCPU sat idle with interrupts on (halted) in every sample: the guest waited for a timer or interrupt that the emulator did not deliver, an emulator fault ({shown})"
        );
    }
    let mut cpus: Vec<u32> = samples.iter().map(|c| c.cpu).collect();
    cpus.sort_unstable();
    cpus.dedup();
    let spinning: Vec<String> = cpus
        .iter()
        .filter(|cpu| {
            samples
                .iter()
                .filter(|c| c.cpu == **cpu)
                .all(|c| !c.halted && !c.interrupts)
        })
        .map(|cpu| format!("cpu{cpu}"))
        .collect();
    if !spinning.is_empty() {
        return format!(
            "{} ran with interrupts off in every sample: the guest kernel spun with interrupts disabled, a lockup inside the guest ({shown})",
            spinning.join(" and ")
        );
    }
    format!("the vCPUs were busy with interrupts on: see the samples ({shown})")
}

/// Kernel functions that run only while a text patch is in flight, across the names x86 has
/// used (`smp_text_poke_*` from 6.16).
const TEXT_PATCHING: [&str; 5] = [
    "asm_exc_int3",
    "exc_int3",
    "poke_int3_handler",
    "text_poke_bp",
    "smp_text_poke",
];

fn in_text_patching(c: &CpuSample) -> bool {
    c.symbol
        .as_deref()
        .is_some_and(|s| TEXT_PATCHING.iter().any(|p| s.starts_with(p)))
}

/// `info registers -a` through the monitor socket.
fn sample(monitor: &Path) -> Result<Vec<CpuSample>> {
    use std::io::Read as _;
    let mut sock = std::os::unix::net::UnixStream::connect(monitor)
        .with_context(|| format!("connecting to {}", monitor.display()))?;
    sock.set_read_timeout(Some(Duration::from_secs(2)))
        .context("monitor timeout")?;
    sock.write_all(b"info registers -a\n")
        .context("asking the monitor")?;
    let mut text = Vec::new();
    let mut buf = [0u8; 8192];
    // The monitor keeps the connection open: read until it has been quiet for the timeout.
    while let Ok(n) = sock.read(&mut buf) {
        if n == 0 {
            break;
        }
        text.extend_from_slice(&buf[..n]);
    }
    Ok(parse_registers(&String::from_utf8_lossy(&text)))
}

/// Kills the VM when dropped, so no path out of `boot` leaves it running.
struct VmGuard(Child);

impl Drop for VmGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The guest kernel's command line before any `--append`:
/// - `loglevel=5`: warnings and stack dumps reach the console (printk's default level is 4),
///   boot chatter does not;
/// - a panic, which ends QEMU at once (`panic=-1` with `-no-reboot`), on an oops and on a soft
///   lockup, after a backtrace of every CPU: a stalled guest then ends within a minute with
///   the evidence of what each CPU was doing, instead of hanging until the VM timeout.
pub const KERNEL_ARGS: &str = "console=ttyS0 loglevel=5 panic=-1 oops=panic softlockup_panic=1 softlockup_all_cpu_backtrace=1";

pub fn command(
    kernel: &Path,
    initrd: &Path,
    accel: Accel,
    memory_mib: u32,
    append: &str,
    monitor: Option<&Path>,
) -> Command {
    let mut c = Command::new("qemu-system-x86_64");
    if let Some(sock) = monitor {
        // The harness asks it where each vCPU is when the guest goes silent.
        let _ = fs::remove_file(sock);
        c.arg("-monitor")
            .arg(format!("unix:{},server=on,wait=off", sock.display()));
    }
    c.args(["-accel", accel.qemu_arg(), "-cpu", "max", "-smp", "2", "-m"])
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
/// When `monitor` is given and the console stays silent for `SILENCE`, the vCPUs are sampled
/// three times, a second apart (`Boot::silent`, also written to the log).
pub fn boot(
    mut cmd: Command,
    timeout: Duration,
    log: &Path,
    echo: Option<&str>,
    monitor: Option<&Path>,
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
    let mut silent = Vec::new();
    let mut last_line = Instant::now();
    loop {
        let now = Instant::now();
        let left = deadline.saturating_duration_since(now);
        let wait = match monitor {
            Some(_) if silent.is_empty() => {
                left.min((last_line + SILENCE).saturating_duration_since(now))
            }
            _ => left,
        };
        match rx.recv_timeout(wait) {
            Ok(line) => {
                let _ = writeln!(log, "{line}");
                if let Some(prefix) = echo {
                    eprintln!("{prefix}{line}");
                }
                last_line = Instant::now();
                let finished = done(&line);
                lines.push(line);
                if finished {
                    break;
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() < deadline => {
                if let Some(m) = monitor {
                    for i in 0..3 {
                        if i > 0 {
                            thread::sleep(Duration::from_secs(1));
                        }
                        match sample(m) {
                            Ok(cpus) => {
                                let shown: Vec<String> =
                                    cpus.iter().map(|c| c.to_string()).collect();
                                let _ = writeln!(
                                    log,
                                    "[vmtest] console silent for {SILENCE:?}: {}",
                                    shown.join(", ")
                                );
                                silent.extend(cpus);
                            }
                            Err(e) => {
                                let _ = writeln!(log, "[vmtest] monitor: {e:#}");
                            }
                        }
                    }
                }
                // Sampled once per boot: the console may speak again.
                last_line = Instant::now() + timeout;
            }
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
        silent,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monitor_registers_give_each_cpu_its_rip_interrupt_flag_and_halt_state() {
        let text =
            "info registers -a\r\n\r\nCPU#0\r\nRAX=0000000000000000 RBX=ffffffff82a0a940\r\n\
            RIP=ffffffff81c3e2a4 RFL=00000246 [---Z-P-] CPL=0 II=0 A20=1 SMM=0 HLT=1\r\n\
            ES =0000 0000000000000000 00000000 00000000\r\n\r\nCPU#1\r\n\
            RIP=ffffffff8113a0b0 RFL=00000086 [--S--P-] CPL=0 II=0 A20=1 SMM=0 HLT=0\r\n";
        let cpus = parse_registers(text);
        assert_eq!(
            cpus,
            [
                CpuSample {
                    cpu: 0,
                    rip: 0xffffffff81c3e2a4,
                    interrupts: true,
                    halted: true,
                    symbol: None,
                },
                CpuSample {
                    cpu: 1,
                    rip: 0xffffffff8113a0b0,
                    interrupts: false,
                    halted: false,
                    symbol: None,
                },
            ]
        );
        assert_eq!(
            cpus[1].to_string(),
            "cpu1 rip=0xffffffff8113a0b0 running interrupts off"
        );
    }

    #[test]
    fn a_vcpu_in_the_int3_of_a_text_patch_is_told_apart_from_a_guest_lockup() {
        let at = |cpu, symbol: &str| CpuSample {
            cpu,
            rip: 0xffffffff81a5258c,
            interrupts: false,
            halted: false,
            symbol: Some(symbol.to_owned()),
        };
        let patching = verdict(&[at(0, "__schedule+0x1bc"), at(1, "asm_exc_int3+0x0")]);
        assert!(
            patching.contains("never finished patching its own code")
                && patching.contains("cpu1 rip=0xffffffff81a5258c (asm_exc_int3+0x0)"),
            "{patching}"
        );
        let lockup = verdict(&[
            at(0, "__schedule+0x1bc"),
            at(1, "native_queued_spin_lock_slowpath+0x40"),
        ]);
        assert!(lockup.contains("a lockup inside the guest"), "{lockup}");
    }
}
