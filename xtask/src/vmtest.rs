//! `cargo xtask vmtest`: the kernel-facing tests on Debian's own kernels, each booted in QEMU
//! with an initramfs made of this machine's files, and on the host kernel itself.
//!
//! Every kernel gets one result line (version, tests passed/failed, features `faultline check`
//! reports unavailable and why); `target/vmtest/summary.json` keeps the last result per kernel,
//! and `--readme` turns it into the README's "Supported kernels" table.
//!
//! (Over 500 lines: the run's sequence — build, initramfs, boot, collect — reads top to bottom
//! here; the parts with a job of their own are in `vmtest/`.)

mod guest;
mod initramfs;
mod kernels;
mod qemu;
mod report;
mod symbols;

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use self::{
    initramfs::Cpio,
    kernels::{Kernel, SERIES},
    qemu::Accel,
    report::{KernelRun, Summary},
};

/// The integration-test binaries that need the kernel: every one of them runs in each guest
/// and on the host, except those in `SKIPPED_IN_VM`; those in `NO_KERNEL` are not about the
/// kernel. Every file in `tracer/tests` is in exactly one of the three lists (a
/// test below says so), so a new kernel test cannot be left out of the VMs by omission.
/// `soak` runs for its suite length (60 s, `FAULTLINE_SOAK_SECONDS`).
const KERNEL_TESTS: [&str; 13] = [
    "agent_lifecycle",
    "contention",
    "diagnose",
    "exposure",
    "kernel",
    "kernel_locks",
    "overload",
    "privileges",
    "prune",
    "record",
    "soak",
    "user_locks",
    "workload",
];

/// Test binaries not run in the VMs, with the reason printed on every run. The host's
/// `cargo test --all-targets` runs them.
const SKIPPED_IN_VM: [(&str, &str); 5] = [
    (
        "prometheus",
        "needs the prometheus and promtool binaries (~200 MB in the initramfs); the host run covers it",
    ),
    (
        "fleet",
        "needs Prometheus, Alertmanager and network namespaces with veth pairs; the host run covers it",
    ),
    (
        "browser",
        "needs headless Chromium (~300 MB with its libraries); the host run covers it",
    ),
    (
        "starve",
        "times alerts to a second under 200 clients and 1,500 processes: on one emulated CPU (TCG) \
         that measures the emulator, not the agent; the host run covers it",
    ),
    (
        "pprof",
        "needs Go's pprof (golang-go, ~200 MB in the initramfs); the contention test checks the same profile in the guests, the host run covers the reader",
    ),
];

/// Test binaries whose subject is not the kernel (pure model, files, in-process servers,
/// refusals before anything loads, the package's layout): the host run is all they need.
/// `package` runs the installed binary's `check` once as a smoke test; `kernel` tests `check`
/// itself on every kernel. Read only by the test that keeps the three lists whole.
#[cfg(test)]
const NO_KERNEL: [&str; 11] = [
    "bad_input",
    "cli",
    "default_mode",
    "deploy",
    "layers",
    "metrics_monotonic",
    "package",
    "reconcile",
    "replay",
    "replay_input",
    "web_config",
];

/// Programs the kernel tests run besides faultline's own, put in the guest with their
/// libraries: util-linux's setpriv (the privilege tests run faultline as nobody), its unshare,
/// mount, umount and mountpoint (the privilege test builds the DaemonSet's container with them;
/// busybox's differ in options), and stress-ng (the soak's load).
const GUEST_PROGRAMS: [&str; 6] = [
    "/usr/bin/setpriv",
    "/usr/bin/unshare",
    "/usr/bin/mount",
    "/usr/bin/umount",
    "/usr/bin/mountpoint",
    "/usr/bin/stress-ng",
];

/// Kernel modules the tests need, loaded in the guest when the kernel has them as modules.
/// FUSE: scenarios that hold the mmap_lock through a slow FUSE read. veth: the workload
/// test's network namespace is joined to the host by a veth pair.
const MODULES: [&str; 2] = ["fuse", "veth"];

/// A guest prints this prefix on every line the host parses.
pub const MARK: &str = "@@VMTEST";

#[derive(clap::Args)]
pub struct VmtestArgs {
    /// Which kernels: 5.10, 6.1, 6.12, host, or all (repeatable; default all: the supported
    /// ones, 6.1, 6.12 and the host). A series boots its newest package; a full ABI such as
    /// 6.1.0-56 boots that package of the series, for comparing point releases. 5.10 runs only when named: it predates the mmap_lock
    /// tracepoints (5.11), and is skipped with a line saying why when bullseye cannot be reached.
    #[arg(long, default_value = "all")]
    kernel: Vec<String>,
    /// Rewrite the README's "Supported kernels" section from target/vmtest/summary.json and
    /// exit (no VM is booted).
    #[arg(long)]
    readme: bool,
    /// Run this shell script in the guest instead of the tests (diagnosis); its output is in
    /// target/vmtest/<kernel>/console.log.
    #[arg(long)]
    exec: Option<PathBuf>,
    /// Extra host files (with their libraries) to put in the guest at the same path, for
    /// --exec scripts (repeatable).
    #[arg(long)]
    include: Vec<PathBuf>,
    /// Longest a VM may run before it is killed and its kernel counted as failed.
    #[arg(long, default_value = "40m", value_parser = parse_duration)]
    timeout: Duration,
    /// Guest memory in MiB. The rwr workload populates up to half of what is free, and its
    /// read hold (~17 s per GiB under TCG) has to outlast diagnose's start (~17 s there).
    #[arg(long, default_value_t = 4096)]
    memory: u32,
    /// More guest kernel command-line arguments (after the defaults), e.g. `loglevel=7` to see
    /// the stack dumps of a stall.
    #[arg(long, default_value = "")]
    append: String,
    /// Echo the guest's console while it runs.
    #[arg(long, short)]
    verbose: bool,
    /// Test the debug build (what `cargo test --all-targets` builds) instead of a release
    /// build: no second compilation after the host tests, but under TCG it runs the kernel
    /// binary's tests ~5x slower than release (diagnose's 4 tests: 105 s against 45 s), too
    /// slow for CI.
    #[arg(long)]
    debug: bool,
    /// Use TCG without first probing whether KVM guests boot (the probe costs 20 s where they
    /// hang, as on the CI machines).
    #[arg(long)]
    tcg: bool,
    /// TCG's host threads: `multi` (a thread per vCPU) reproduces QEMU 7.2's lost
    /// cross-vCPU code patch, which freezes a guest that attaches and detaches tracepoints.
    #[arg(long, value_enum, default_value = "single")]
    tcg_threads: qemu::TcgThreads,
}

impl VmtestArgs {
    /// What `cargo xtask test` runs after the host tests: Debian 12's 6.1, release build, TCG.
    pub fn ci() -> Self {
        Self {
            kernel: vec!["6.1".into()],
            readme: false,
            exec: None,
            include: Vec::new(),
            // Every kernel test binary under TCG, the 60 s soak included.
            timeout: Duration::from_secs(40 * 60),
            memory: 4096,
            append: String::new(),
            verbose: false,
            debug: false,
            tcg: true,
            tcg_threads: qemu::TcgThreads::Single,
        }
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?}: expected a number with s or m"))?;
    match unit {
        "" | "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("{s:?}: unit must be s or m")),
    }
}

fn workspace_root() -> PathBuf {
    // xtask's manifest dir is <root>/xtask.
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn cache_dir() -> PathBuf {
    std::env::var_os("FAULTLINE_VMTEST_CACHE")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/faultline/vmtest"))
        })
        .unwrap_or_else(|| workspace_root().join("target/vmtest/cache"))
}

/// The binaries the guest needs, at the paths the test binaries have compiled in.
struct Binaries {
    faultline: PathBuf,
    scenario: PathBuf,
    tests: Vec<(String, PathBuf)>,
    /// Each test binary's tests, listed on the host before booting.
    listed: report::Listed,
}

impl Binaries {
    /// The test executables that run in the guests (and on the host), in order.
    fn kernel_tests(&self) -> impl Iterator<Item = &(String, PathBuf)> {
        self.tests.iter()
    }
}

/// Builds faultline, the workloads and the kernel test executables (release unless `debug`);
/// returns their paths.
fn build(debug: bool) -> Result<Binaries> {
    let release: &[&str] = if debug { &[] } else { &["--release"] };
    let mut cmd = crate::cargo();
    cmd.args(["test", "--no-run", "--message-format=json"]);
    if debug {
        // The very command `cargo xtask test` has just built (with the same feature
        // unification), so nothing is compiled twice.
        cmd.arg("--all-targets");
    } else {
        cmd.args(["--release", "-p", "tracer"]);
        for t in KERNEL_TESTS
            .iter()
            .chain(SKIPPED_IN_VM.iter().map(|(t, _)| t))
        {
            cmd.args(["--test", t]);
        }
    }
    eprintln!("xtask: {cmd:?}");
    let out = cmd
        .current_dir(workspace_root())
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo test --no-run")?;
    if !out.status.success() {
        bail!("building the kernel tests failed: {}", out.status);
    }
    let (mut faultline, mut scenario, mut tests) = (None, None, Vec::new());
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let Some(exe) = msg["executable"].as_str() else {
            continue;
        };
        // Unit-test harnesses of binaries share their names; only the programs themselves.
        let unit_tests = msg["profile"]["test"].as_bool() == Some(true);
        let name = msg["target"]["name"].as_str().unwrap_or_default();
        let kinds: Vec<&str> = msg["target"]["kind"]
            .as_array()
            .map(|a| a.iter().filter_map(|k| k.as_str()).collect())
            .unwrap_or_default();
        match (name, kinds.as_slice()) {
            ("faultline", ["bin"]) if !unit_tests => faultline = Some(PathBuf::from(exe)),
            ("faultline-scenario", ["bin"]) if !unit_tests => scenario = Some(PathBuf::from(exe)),
            (t, ["test"]) => tests.push((t.to_owned(), PathBuf::from(exe))),
            _ => {}
        }
    }
    // Artifacts that were fresh are reported too, so a missing one is a real build problem.
    let faultline = faultline.context("cargo built no faultline binary")?;
    // The workloads are their own crate: built next to the tests (target/<profile>), where the
    // tests look for them.
    if scenario.is_none() {
        crate::run(
            crate::cargo()
                .current_dir(workspace_root())
                .arg("build")
                .args(release)
                .args(["-p", "faultline-scenarios"]),
        )?;
        let bin = faultline.with_file_name("faultline-scenario");
        scenario = bin.exists().then_some(bin);
    }
    let scenario = scenario.context("cargo built no faultline-scenario binary")?;
    tests.sort();
    // Only the kernel tests go into the guests.
    tests.retain(|(name, _)| KERNEL_TESTS.contains(&name.as_str()));
    let listed = tests
        .iter()
        .map(|(name, path)| Ok((name.clone(), list_tests(path)?)))
        .collect::<Result<_>>()?;
    Ok(Binaries {
        faultline,
        scenario,
        tests,
        listed,
    })
}

/// The tests a libtest executable holds (`--list --format terse`: "name: test").
fn list_tests(exe: &Path) -> Result<Vec<String>> {
    Ok(guest::list_output(exe, &["--format", "terse"])?
        .lines()
        .filter_map(|l| l.strip_suffix(": test"))
        .map(str::to_owned)
        .collect())
}

/// The guest's /init: mount what the tests need, load modules, run the tests (or `--exec`),
/// print `@@VMTEST` lines, power off.
fn init_script(bins: &Binaries, mounts: &[guest::Mount], modules: &[String], exec: bool) -> String {
    let f = bins.faultline.display();
    let sc = bins.scenario.display();
    let mut s = format!(
        r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH={path} HOME=/root CI=true RUST_BACKTRACE=1
export FAULTLINE={f} SCENARIO={sc}
"#,
        path = guest::PATH.join(":")
    );
    s.push_str(&guest::mount_lines(mounts));
    s.push_str(&format!(
        "ip link set lo up 2>/dev/null || ifconfig lo 127.0.0.1 up\necho \"{MARK} kernel $(uname -r) nproc=$(nproc)\"\n"
    ));
    // Where the functions a stall verdict names ended up after KASLR (`symbols`).
    s.push_str(&format!(
        "awk '{}' /proc/kallsyms\n",
        symbols::awk_program(MARK)
    ));
    for m in modules {
        s.push_str(&format!(
            "insmod {m} && echo \"{MARK} module {m} loaded\" || echo \"{MARK} module {m} failed\"\n"
        ));
    }
    s.push_str(&format!(
        "{f} check --json > /tmp/check.json 2>/tmp/check.err; echo \"{MARK} check rc=$? $(tr -d '\\n' < /tmp/check.json)\"\n"
    ));
    if exec {
        s.push_str(&format!(
            "echo \"{MARK} exec-begin\"\nsh {EXEC_SCRIPT} 2>&1\necho \"{MARK} exec-end rc=$?\"\n"
        ));
    } else {
        for (name, path) in bins.kernel_tests() {
            s.push_str(&format!(
                "echo \"{MARK} begin {name}\"\ntimeout -s KILL 900 {} --test-threads=1 2>&1\necho \"{MARK} end {name} rc=$?\"\n",
                path.display()
            ));
            // What a test binary left running (tests must clean up after themselves): the
            // processes besides /init and kernel threads. Busybox's `timeout` leaves a watcher
            // that polls for its child once a second, so it is not counted.
            s.push_str(&format!(
                "left=$(ps -o pid,args | awk 'NR > 1 && $2 !~ /^\\[/ && $0 !~ /\\/init$|ps -o pid|awk NR|timeout -s KILL/ {{ printf \"%s; \", $0 }}')\necho \"{MARK} leftovers {name} $left\"\n"
            ));
        }
    }
    s.push_str(&format!(
        "echo \"{MARK} done\"\nsync\npoweroff -f\necho o > /proc/sysrq-trigger\n"
    ));
    s
}

/// Builds the initramfs for one kernel, after checking that the guest will find every program
/// and library it runs (`guest::Manifest`): a missing one fails here, with its name, instead
/// of as exit 127 inside the guest.
fn initramfs(kernel: &Kernel, bins: &Binaries, args: &VmtestArgs, out: &Path) -> Result<()> {
    let exec = args.exec.as_deref();
    let mut cpio = Cpio::new();
    for d in ["/proc", "/sys", "/dev", "/tmp", "/root", "/run", "/etc"]
        .into_iter()
        .chain(guest::PATH)
    {
        cpio.dir(d);
    }
    // Without /dev/console in the archive the kernel starts init with no stdio.
    cpio.char_device("/dev/console", 5, 1);
    cpio.file(
        "/etc/passwd",
        0o644,
        b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    );
    cpio.file("/etc/group", 0o644, b"root:x:0:\nnogroup:x:65534:\n");
    let busybox_path = Path::new(BUSYBOX);
    let busybox =
        fs::read(busybox_path).context("reading /bin/busybox (apt-get install busybox-static)")?;
    cpio.file(BUSYBOX, 0o755, &busybox);
    let mut programs = vec![bins.faultline.clone(), bins.scenario.clone()];
    programs.extend(GUEST_PROGRAMS.iter().map(PathBuf::from));
    programs.extend(bins.kernel_tests().map(|(_, p)| p.clone()));
    programs.extend(args.include.iter().cloned());
    for p in &programs {
        initramfs::add_binary(&mut cpio, p)?;
    }
    // iproute2's ip at /usr/sbin/ip, first on the guest's PATH ahead of busybox's /bin/ip,
    // which has no `ip netns` (the workload test's network namespace).
    let ip = fs::read(IPROUTE2)
        .with_context(|| format!("reading {IPROUTE2} (apt-get install iproute2)"))?;
    cpio.file("/usr/sbin/ip", 0o755, &ip);
    for lib in initramfs::libraries(Path::new(IPROUTE2))? {
        cpio.host_file(&lib)?;
    }
    let mut files = Vec::new();
    let mut modules = Vec::new();
    for m in kernels::module_files(kernel, &MODULES)? {
        let data_name = m
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        let plain = data_name
            .trim_end_matches(".xz")
            .trim_end_matches(".zst")
            .to_owned();
        let guest = format!("/lib/vmtest-modules/{plain}");
        let data = initramfs::read_maybe_compressed(&m)?;
        cpio.file(&guest, 0o644, &data);
        files.push(PathBuf::from(&guest));
        modules.push(guest);
    }
    if let Some(script) = exec {
        let text =
            fs::read(script).with_context(|| format!("reading --exec {}", script.display()))?;
        cpio.file(EXEC_SCRIPT, 0o755, &text);
        files.push(PathBuf::from(EXEC_SCRIPT));
    }
    let needed: Vec<PathBuf> = programs.iter().chain(&files).cloned().collect();
    let mounts = guest::plan_mounts(&needed)?;
    let applets = guest::busybox_applets(busybox_path)?;
    guest::Manifest {
        programs: &programs,
        files: &files,
        applets: &applets,
        mounts: &mounts,
    }
    .check(&cpio)
    .context("the guest would miss a file it needs")?;
    let init = init_script(bins, &mounts, &modules, exec.is_some());
    cpio.file("/init", 0o755, init.as_bytes());
    fs::write(out, cpio.finish()).with_context(|| format!("writing {}", out.display()))
}

const BUSYBOX: &str = "/bin/busybox";
/// iproute2's `ip` on the host (Debian: /bin/ip, with /usr/sbin/ip a link to it).
const IPROUTE2: &str = "/bin/ip";
const EXEC_SCRIPT: &str = "/vmtest-exec.sh";

/// Whether KVM guests boot here: a tiny initramfs must print its mark within a few seconds.
/// Some hosts have a /dev/kvm whose guests hang after the decompressor; TCG is then used.
fn kvm_works(kernel: &Kernel, dir: &Path) -> bool {
    if fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        eprintln!("vmtest: /dev/kvm unavailable; using TCG");
        return false;
    }
    let initrd = dir.join("kvm-probe.cpio");
    let mut cpio = Cpio::new();
    cpio.char_device("/dev/console", 5, 1);
    let Ok(busybox) = fs::read("/bin/busybox") else {
        return false;
    };
    cpio.file("/bin/busybox", 0o755, &busybox);
    cpio.file(
        "/init",
        0o755,
        format!("#!/bin/busybox sh\n/bin/busybox echo {MARK} kvm-ok\n/bin/busybox poweroff -f\n")
            .as_bytes(),
    );
    if fs::write(&initrd, cpio.finish()).is_err() {
        return false;
    }
    let ok = qemu::boot(
        qemu::command(&kernel.vmlinuz, &initrd, Accel::Kvm, 256, "", None),
        Duration::from_secs(20),
        &dir.join("kvm-probe.log"),
        None,
        None,
        |l| l.contains(&format!("{MARK} kvm-ok")),
    )
    .is_ok_and(|b| {
        b.lines
            .iter()
            .any(|l| l.contains(&format!("{MARK} kvm-ok")))
    });
    eprintln!(
        "vmtest: KVM probe {}",
        if ok {
            "booted: using KVM"
        } else {
            "did not reach init within 20 s: using TCG"
        }
    );
    ok
}

/// Names each sampled rip that falls in a function the guest printed the range of; the others
/// stay bare (the verdict then says less, nothing is lost).
fn name_addresses(lines: &[String], samples: &mut [qemu::CpuSample]) {
    let syms = symbols::Symbols::from_guest(lines, MARK);
    for s in samples {
        s.symbol = syms.name(s.rip);
    }
}

fn run_vm(
    kernel: &Kernel,
    bins: &Binaries,
    args: &VmtestArgs,
    accel: &mut Option<Accel>,
) -> Result<KernelRun> {
    let dir = workspace_root().join("target/vmtest").join(kernel.label);
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let initrd = dir.join("initramfs.cpio");
    initramfs(kernel, bins, args, &initrd)?;
    let accel = *accel.get_or_insert_with(|| {
        if !args.tcg && kvm_works(kernel, &dir) {
            Accel::Kvm
        } else {
            Accel::Tcg(args.tcg_threads)
        }
    });
    let log = dir.join("console.log");
    let monitor = dir.join("monitor.sock");
    let prefix = format!("[{}] ", kernel.label);
    let boot = qemu::boot(
        qemu::command(
            &kernel.vmlinuz,
            &initrd,
            accel,
            args.memory,
            &args.append,
            Some(&monitor),
        ),
        args.timeout,
        &log,
        args.verbose.then_some(prefix.as_str()),
        Some(&monitor),
        |l| l.contains(&format!("{MARK} done")),
    )?;
    let mut run = report::parse_guest(&boot.lines, &bins.listed);
    run.label = kernel.label.to_owned();
    run.package = format!("{} {}", kernel.package, kernel.version);
    run.accel = accel.name().to_owned();
    run.wall_secs = boot.wall.as_secs();
    run.console_log = log.display().to_string();
    if !boot.silent.is_empty() {
        let mut silent = boot.silent.clone();
        name_addresses(&boot.lines, &mut silent);
        let what = format!(
            "the console was silent for {:?}; {}",
            qemu::SILENCE,
            qemu::verdict(&silent)
        );
        // A long quiet test is silent too (the 60 s soak prints nothing until it ends): a
        // silence is a problem when the guest did not finish, and a note when it did.
        if boot.timed_out || run.stalled_in.is_some() {
            run.problems.push(what);
        } else {
            eprintln!("vmtest {}: note: {what}", run.label);
        }
    }
    if let Some(at) = &run.stalled_in {
        let how = if boot.timed_out {
            format!("the VM was killed after {:?}", args.timeout)
        } else {
            "the guest stopped before finishing".to_owned()
        };
        let said = match &run.kernel_said {
            Some(line) => format!("; the guest kernel said: {line}"),
            None => "; the guest kernel printed no stall, lockup or panic".to_owned(),
        };
        run.problems
            .push(format!("{how}: the guest stalled in {at}{said}"));
    }
    Ok(run)
}

fn run_host(bins: &Binaries, verbose: bool) -> Result<KernelRun> {
    let start = Instant::now();
    let mut lines = Vec::new();
    let uname = Command::new("uname").arg("-r").output().context("uname")?;
    lines.push(format!(
        "{MARK} kernel {} nproc=?",
        String::from_utf8_lossy(&uname.stdout).trim()
    ));
    let check = Command::new(&bins.faultline)
        .args(["check", "--json"])
        .output()
        .context("running faultline check --json")?;
    lines.push(format!(
        "{MARK} check rc={} {}",
        check.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&check.stdout).replace('\n', "")
    ));
    for (name, path) in bins.kernel_tests() {
        lines.push(format!("{MARK} begin {name}"));
        eprintln!("xtask: {} --test-threads=1", path.display());
        let out = Command::new(path)
            .arg("--test-threads=1")
            .env("CI", "true")
            .output()
            .with_context(|| format!("running {}", path.display()))?;
        for text in [&out.stdout, &out.stderr] {
            for l in String::from_utf8_lossy(text).lines() {
                if verbose {
                    eprintln!("[host] {l}");
                }
                lines.push(l.to_owned());
            }
        }
        lines.push(format!(
            "{MARK} end {name} rc={}",
            out.status.code().unwrap_or(-1)
        ));
    }
    lines.push(format!("{MARK} done"));
    let mut run = report::parse_guest(&lines, &bins.listed);
    run.label = "host".into();
    run.package = "(this machine)".into();
    run.accel = "none".into();
    run.wall_secs = start.elapsed().as_secs();
    Ok(run)
}

pub fn run(args: &VmtestArgs) -> Result<()> {
    let summary_path = workspace_root().join("target/vmtest/summary.json");
    if args.readme {
        let summary = Summary::load(&summary_path)?;
        let readme = workspace_root().join("README.md");
        report::rewrite_readme(&readme, &summary)?;
        eprintln!(
            "vmtest: rewrote the Supported kernels section of {}",
            readme.display()
        );
        return Ok(());
    }
    let wanted: Vec<&str> = if args.kernel.iter().any(|k| k == "all") {
        // 5.10 has no mmap_lock tracepoints: outside the supported range, run only when named.
        SERIES
            .iter()
            .map(|s| s.label)
            .filter(|l| *l != "5.10")
            .chain(["host"])
            .collect()
    } else {
        args.kernel.iter().map(String::as_str).collect()
    };
    for k in &wanted {
        if *k != "host" && kernels::resolve(k).is_none() {
            bail!("--kernel {k}: unknown kernel; choose 5.10, 6.1, 6.12, host or all, or one ABI of a series such as 6.1.0-56");
        }
    }
    if args.exec.is_some() && wanted.contains(&"host") {
        bail!("--exec runs in VMs only; name the kernels with --kernel 6.1 (or 6.12, 5.10)");
    }
    let bins = build(args.debug)?;
    for (name, reason) in SKIPPED_IN_VM {
        eprintln!("vmtest: {name} tests not run in VMs: {reason}");
    }
    let cache = cache_dir();
    fs::create_dir_all(&cache).with_context(|| format!("creating {}", cache.display()))?;
    let mut summary = Summary::load(&summary_path).unwrap_or_default();
    let mut accel = None;
    let mut runs = Vec::new();
    for label in &wanted {
        let run = if *label == "host" {
            run_host(&bins, args.verbose)?
        } else {
            let (series, package) = kernels::resolve(label).context("known series")?;
            let kernel = match kernels::fetch(series, package.as_deref(), &cache) {
                Ok(k) => k,
                Err(e) if series.optional => {
                    println!("vmtest {label}: skipped: {e:#}");
                    continue;
                }
                Err(e) => return Err(e.context(format!("getting the {label} kernel"))),
            };
            run_vm(&kernel, &bins, args, &mut accel)?
        };
        println!("{}", run.line());
        if !run.ok() {
            for p in &run.panics {
                println!("vmtest {label}: {p}");
            }
        }
        if !run.ok() && !run.console_tail.is_empty() {
            println!(
                "vmtest {label}: the console's last lines ({}):",
                run.console_log
            );
            for l in &run.console_tail {
                println!("  | {l}");
            }
        }
        if args.exec.is_none() {
            summary.record(run.clone());
        }
        runs.push(run);
    }
    if args.exec.is_some() {
        return Ok(());
    }
    summary.save(&summary_path)?;
    eprintln!("vmtest: summary in {}", summary_path.display());
    let failed: Vec<&str> = runs
        .iter()
        .filter(|r| !r.ok())
        .map(|r| r.label.as_str())
        .collect();
    if !failed.is_empty() {
        bail!("kernel tests failed on: {}", failed.join(", "));
    }
    if runs.is_empty() {
        bail!("no kernel was tested");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_test_binary_is_in_exactly_one_list() {
        let dir = workspace_root().join("tracer/tests");
        let mut files: Vec<String> = fs::read_dir(&dir)
            .expect("tracer/tests")
            .filter_map(|e| {
                let name = e.ok()?.file_name().into_string().ok()?;
                name.strip_suffix(".rs").map(str::to_owned)
            })
            .collect();
        files.sort();
        let mut listed: Vec<&str> = KERNEL_TESTS
            .iter()
            .copied()
            .chain(SKIPPED_IN_VM.iter().map(|(t, _)| *t))
            .chain(NO_KERNEL.iter().copied())
            .collect();
        listed.sort();
        assert_eq!(
            listed, files,
            "each tracer/tests/*.rs goes in KERNEL_TESTS, SKIPPED_IN_VM or NO_KERNEL, once"
        );
    }
}
