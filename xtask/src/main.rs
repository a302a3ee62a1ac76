//! Build and test orchestration for faultline: what cargo alone cannot do.
//!
//! `cargo xtask setup` installs the eBPF toolchain (idempotent), `run` builds and starts the
//! agent, `test` runs every check CI runs, `bench` measures.

mod bench;
mod setup;

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
    /// Install what building the eBPF programs needs (Debian packages, bpf-linker, toolchain link).
    Setup,
    /// Set up, build in release mode and run `faultline` (default: the agent with defaults).
    Run {
        /// Arguments for faultline (default: `agent`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up, then run formatting, lints, unit tests and the kernel tests.
    Test,
    /// Set up, then run the benchmarks and print ratios measured side by side.
    Bench(bench::BenchArgs),
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

fn test() -> Result<()> {
    setup::ensure()?;
    run(cargo().args(["fmt", "--all", "--check"]))?;
    run(cargo().args(["clippy", "--all-targets", "--", "-D", "warnings"]))?;
    // One test at a time: the kernel tests share tracepoints and the machine has two cores, so
    // parallelism buys little. In CI the kernel tests never skip (tests/common/mod.rs).
    run(cargo().args(["test", "--", "--test-threads=1"]))?;
    Ok(())
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Setup => setup::ensure(),
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
        Cmd::Bench(args) => {
            setup::ensure()?;
            bench::run(&args)
        }
    }
}
