//! Build and test orchestration for faultline: what cargo alone cannot do.
//!
//! `cargo xtask setup` installs the eBPF toolchain (idempotent), `run` builds and starts the
//! agent, `test` runs every check CI runs, `bench` measures, `package` builds a .deb.

mod bench;
mod image;
mod package;
mod setup;
mod vmtest;

use std::process::Command;

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "faultline's build and test orchestration")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what building the eBPF programs needs (Debian packages, bpf-linker, toolchain
    /// link), and the test peers and tools (stress-ng, bpftrace, Prometheus, chromium, ...).
    Setup {
        /// Only what building faultline needs (a container image's build stage).
        #[arg(long)]
        build_only: bool,
    },
    /// Set up, build in release mode and run `faultline` (default: the agent with defaults).
    Run {
        /// Arguments for faultline (default: `agent`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up, then run formatting, lints, unit tests and the kernel tests.
    Test,
    /// Formatting and clippy on every crate, the eBPF crate with its own toolchain.
    Lint,
    /// Set up, then run the benchmarks and print ratios measured side by side.
    Bench(bench::BenchArgs),
    /// Build the container image from Containerfile with buildah (a Debian base made with
    /// debootstrap: no registry or container engine needed) and run its binary.
    Image,
    /// Build a Debian package (binary, systemd unit, config, dashboards, alert rules).
    Package(package::PackageArgs),
    /// Run the live agent for a while under a busy host's churn and check it stayed true
    /// (tracer/tests/soak.rs; the test suite runs it for 60 s).
    Soak {
        /// How long the load runs (10 is the benchmark).
        #[arg(long, default_value_t = 10, conflicts_with = "seconds")]
        minutes: u64,
        /// The same in seconds (at least 30), for short runs.
        #[arg(long)]
        seconds: Option<u64>,
    },
    /// Run the kernel tests on Debian's kernels in QEMU and on the host (see xtask/src/vmtest.rs).
    Vmtest(vmtest::VmtestArgs),
}

/// Runs a command, failing with its command line when it fails.
pub fn run(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    eprintln!("xtask: {shown}");
    let status = cmd.status().with_context(|| format!("spawning {shown}"))?;
    if !status.success() {
        bail!("{shown} failed: {status}");
    }
    Ok(())
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

/// `cargo fmt --check` and clippy with warnings denied, on the user-space crates and on the
/// eBPF crate (which only builds for the BPF target, with build-std).
fn lint() -> Result<()> {
    run(cargo().args(["fmt", "--all", "--check"]))?;
    run(cargo().args(["clippy", "--all-targets", "--", "-D", "warnings"]))?;
    let (toolchain, bootstrap) = setup::ebpf_toolchain();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut ebpf = Command::new("cargo");
    ebpf.current_dir(root.join("tracer-ebpf"))
        .arg(format!("+{toolchain}"))
        .args([
            "clippy",
            "--release",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--",
            "-D",
            "warnings",
        ])
        // Its own target dir: the BPF target's artifacts never mix with the host's.
        .env("CARGO_TARGET_DIR", root.join("target/ebpf-lint"))
        .env_remove("RUSTC")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("RUSTUP_TOOLCHAIN");
    if bootstrap {
        ebpf.env("RUSTC_BOOTSTRAP", "1");
    }
    run(&mut ebpf)
}

fn test() -> Result<()> {
    setup::ensure()?;
    lint()?;
    // One test at a time: the kernel tests share tracepoints and the machine has two cores, so
    // parallelism buys little. In CI the kernel tests never skip (tests/common/mod.rs).
    let counts = run_counting(cargo().args(["test", "--all-targets", "--", "--test-threads=1"]))?;
    // The closing line sums every test binary, so a reader of the log sees the whole run. A
    // test that returned early because the kernel lacks a feature (its NEEDS line) is counted
    // apart: it asserted nothing.
    println!("{}", counts.line());
    if counts.passed == 0 {
        bail!("no test ran");
    }
    // The kernel tests again on Debian 12's kernel (6.1) in QEMU (release build: see vmtest.rs).
    vmtest::run(&vmtest::VmtestArgs::ci())
}

/// The soak test, at the given length, in release mode (the agent as it is deployed).
fn soak(seconds: u64) -> Result<()> {
    setup::ensure()?;
    run(cargo()
        .args([
            "test",
            "--release",
            "-p",
            "tracer",
            "--test",
            "soak",
            "--",
            "--nocapture",
        ])
        .env("FAULTLINE_SOAK_SECONDS", seconds.to_string()))
}

/// The totals of a `cargo test` run.
#[derive(Debug, Default, PartialEq, Eq)]
struct Counts {
    /// Tests that passed, not counting those that returned early on a missing feature.
    passed: u64,
    failed: u64,
    /// The `NEEDS <test>: <feature>` lines (tracer/tests/common/needs.rs): tests that libtest
    /// counts as passed but that returned without asserting.
    needs: Vec<String>,
}

impl Counts {
    /// Adds a line of the run's output (stdout or stderr).
    fn add(&mut self, line: &str) {
        if let Some(rest) = line.strip_prefix("test result: ") {
            self.passed += count_before(rest, " passed");
            self.failed += count_before(rest, " failed");
        }
        // libtest may print "test x ... " before the test's own stderr line.
        if let Some(pos) = line.find(NEEDS_MARK) {
            self.note_needs(line[pos + NEEDS_MARK.len()..].trim());
        }
    }

    fn note_needs(&mut self, needs: &str) {
        if !self.needs.iter().any(|n| n == needs) {
            self.needs.push(needs.to_owned());
        }
    }

    /// Moves the tests that only said NEEDS out of "passed".
    fn settle(&mut self) {
        self.passed = self.passed.saturating_sub(self.needs.len() as u64);
    }

    fn line(&self) -> String {
        let mut s = format!(
            "faultline tests: {} passed, {} failed, {} needs",
            self.passed,
            self.failed,
            self.needs.len()
        );
        if !self.needs.is_empty() {
            s.push_str(&format!(" ({})", self.needs.join("; ")));
        }
        s
    }
}

/// The prefix of a test's "needs" line (tracer/tests/common/needs.rs).
const NEEDS_MARK: &str = "NEEDS ";

/// Runs a `cargo test`, echoing its output, and sums its "test result" lines and the NEEDS
/// lines tests write to stderr.
fn run_counting(cmd: &mut Command) -> Result<Counts> {
    use std::io::{BufRead, BufReader};
    let shown = format!("{cmd:?}");
    eprintln!("xtask: {shown}");
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("spawning {shown}"))?;
    let stdout = child.stdout.take().context("test output")?;
    let stderr = child.stderr.take().context("test errors")?;
    // stderr on its own thread, so neither pipe fills while the other is read.
    let errs = std::thread::spawn(move || {
        let mut seen = Counts::default();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("{line}");
            seen.add(&line);
        }
        seen
    });
    let mut counts = Counts::default();
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading test output")?;
        println!("{line}");
        counts.add(&line);
    }
    let status = child.wait().context("waiting for cargo test")?;
    let from_stderr = errs
        .join()
        .map_err(|_| anyhow::anyhow!("reading the tests' stderr failed"))?;
    for n in &from_stderr.needs {
        counts.note_needs(n);
    }
    counts.settle();
    if !status.success() {
        bail!("{shown} failed: {status} ({})", counts.line());
    }
    Ok(counts)
}

/// In "ok. 12 passed; 0 failed; …", the number before `label`.
fn count_before(s: &str, label: &str) -> u64 {
    s.split(';')
        .find_map(|part| {
            part.trim()
                .trim_start_matches("ok. ")
                .trim_start_matches("FAILED. ")
                .strip_suffix(label.trim_start())
                .map(str::trim)
        })
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Setup { build_only: false } => setup::ensure(),
        Cmd::Setup { build_only: true } => setup::ensure_build_only(),
        Cmd::Run { args } => {
            setup::ensure()?;
            let args = if args.is_empty() {
                vec!["agent".to_string()]
            } else {
                args
            };
            run(cargo()
                .args([
                    "run",
                    "--release",
                    "-p",
                    "tracer",
                    "--bin",
                    "faultline",
                    "--",
                ])
                .args(args))
        }
        Cmd::Test => test(),
        Cmd::Lint => {
            setup::ensure()?;
            lint()
        }
        Cmd::Bench(args) => {
            setup::ensure()?;
            bench::run(&args)
        }
        Cmd::Image => image::run_image(),
        Cmd::Package(args) => package::run_package(&args).map(|_| ()),
        Cmd::Soak { minutes, seconds } => soak(seconds.unwrap_or(minutes * 60)),
        Cmd::Vmtest(args) => {
            setup::ensure()?;
            vmtest::run(&args)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{count_before, Counts};

    #[test]
    fn needs_lines_are_counted_apart_from_passed() {
        let mut c = Counts::default();
        for line in [
            "test a ... ok",
            "test two_hop ... NEEDS two_hop: task_struct.blocker (kernel ≥ 6.16)",
            "ok",
            "NEEDS other: task_struct.blocker (kernel ≥ 6.16)",
            "NEEDS other: task_struct.blocker (kernel ≥ 6.16)",
            "test result: ok. 5 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out",
            "test result: FAILED. 2 passed; 1 failed; 0 ignored",
        ] {
            c.add(line);
        }
        c.settle();
        assert_eq!((c.passed, c.failed, c.needs.len()), (5, 1, 2));
        assert_eq!(
            c.line(),
            "faultline tests: 5 passed, 1 failed, 2 needs (two_hop: task_struct.blocker \
             (kernel ≥ 6.16); other: task_struct.blocker (kernel ≥ 6.16))"
        );
    }

    #[test]
    fn test_result_lines_are_summed_by_their_counts() {
        let rest =
            "ok. 12 passed; 3 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s";
        assert_eq!(count_before(rest, " passed"), 12);
        assert_eq!(count_before(rest, " failed"), 3);
        assert_eq!(count_before("FAILED. 1 passed; 2 failed;", " failed"), 2);
    }
}
