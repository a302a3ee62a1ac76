use std::{io::Write as _, path::PathBuf, process::ExitCode, time::Duration};

use anyhow::{Context as _, Result};
use clap::{Args, Parser, Subcommand};
use tracer::{
    commands::agent::{self, AgentOptions},
    commands::contention,
    commands::diagnose::agent::AgentAt,
    commands::record::{self, RecordOptions},
    commands::replay,
    core::detect::Thresholds,
    core::lock_profile::{self, Filter, GroupBy},
    kernel::check,
    kernel::probes::{AttachMode, Detail, IoctlHooks, ProbeOptions, ProfileOptions},
    sinks::report,
};

/// Writes a report file, naming it in the error.
fn write_file(path: &std::path::Path, text: &str) -> Result<()> {
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

/// faultline: find who blocks whom on mmap_lock, page faults and userfaultfd.
#[derive(Parser)]
#[command(name = "faultline", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the tracing agent: attach the probes and report slow waits, long holds and anomalies.
    Agent(AgentArgs),
    /// Record every event from the live kernel into a trace file (JSON Lines, format v1).
    Record(RecordArgs),
    /// Replay a trace file through the detectors and explain what they find.
    Replay(ReplayArgs),
    /// Profile kernel lock contention for a while, then print which locks were waited on, from
    /// where and for how long (like `perf lock contention`, without perf.data or an agent).
    Contention(ContentionArgs),
    /// Explain hung tasks now: who is blocked, on what, behind whom, and the root holder.
    /// Works without a running agent; asks it for mmap_lock read holders when one answers.
    Diagnose(DiagnoseArgs),
    /// Attach empty programs on the default mode's hooks until SIGTERM or Ctrl-C: the floor
    /// `cargo xtask bench overhead` compares against.
    #[command(hide = true)]
    BenchFloor,
    /// Report which tracepoints, attach types and BTF features this kernel offers.
    Check {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Clone)]
struct ProbeArgs {
    /// How to attach: tp_btf with a classic-tracepoint fallback, or only one of them.
    #[arg(long, value_enum, default_value_t = AttachMode::Auto, env = "FAULTLINE_ATTACH")]
    attach: AttachMode,
    /// Stream acquisitions that waited at least this long (e.g. 500us, 10ms).
    #[arg(long, default_value = "1ms", value_parser = humantime::parse_duration, env = "FAULTLINE_WAIT_THRESHOLD")]
    wait_threshold: Duration,
    /// Stream holds that lasted at least this long.
    #[arg(long, default_value = "100ms", value_parser = humantime::parse_duration, env = "FAULTLINE_HOLD_THRESHOLD")]
    hold_threshold: Duration,
    /// Tasks tracked at once in the kernel (per-task state map size).
    #[arg(long, default_value_t = 32768, value_parser = clap::value_parser!(u32).range(64..=4_194_304), env = "FAULTLINE_MAX_TASKS")]
    max_tasks: u32,
    /// Trace only mmap_lock: skip lock contention, page faults and userfaultfd (implies
    /// `--detail holders` at least, since contention is then not there to show waits).
    #[arg(long, env = "FAULTLINE_MMAP_LOCK_ONLY")]
    mmap_lock_only: bool,
    /// How much the kernel side tracks: `contention` (default, nearly free when nothing is
    /// contended; read holders of a contended mmap_lock are inferred), `holders` (exact
    /// read-holder sets and hold times of every hold), `full` (also per-fault counters).
    /// `faultline check` lists what each mode gives up.
    #[arg(long, value_enum, default_value_t = Detail::Contention, env = "FAULTLINE_DETAIL")]
    detail: Detail,
    /// When the userfaultfd ioctl hooks are attached: they are syscall tracepoints, which slow
    /// every system call on the host while attached, so by default only while a userfaultfd
    /// exists (the agent looks at each snapshot; what that gives up: `faultline check`).
    /// `record` always attaches them.
    #[arg(long, value_enum, default_value_t = IoctlHooks::WhileUffdExists, env = "FAULTLINE_UFFD_IOCTL_HOOKS")]
    uffd_ioctl_hooks: IoctlHooks,
    /// Size of the event ring buffer in bytes (a power of two, at least 4096).
    #[arg(long, default_value_t = tracer_common::names::EVENTS_BYTES, value_parser = parse_ring_size, env = "FAULTLINE_RING_BUFFER_SIZE")]
    ring_buffer_size: u32,
    /// Aggregates the in-kernel lock-contention profile keeps (lock x waiter stack x cgroup x
    /// comm x type; ~100 bytes plus 32 per CPU each). Past it, waits of new ones are dropped
    /// and counted. Default: 16384, fewer on hosts of more than 16 CPUs (within 12 MiB).
    #[arg(long, value_parser = clap::value_parser!(u32).range(16..=1_048_576), env = "FAULTLINE_PROFILE_ENTRIES")]
    profile_entries: Option<u32>,
    /// Distinct waiter stacks the profile keeps (~180 bytes each). Past it, waits with a new
    /// stack are kept without their stack, and counted.
    #[arg(long, default_value_t = tracer_common::names::LOCK_STACKS_CAPACITY, value_parser = clap::value_parser!(u32).range(16..=1_048_576), env = "FAULTLINE_PROFILE_STACKS")]
    profile_stacks: u32,
    /// Take the waiter's stack for 1 in N short contended waits (under 10 us; longer ones always
    /// get theirs). Their waits are counted exactly by lock and split over the sampled stacks.
    /// 1: every stack (costs a contention-heavy host ~15%).
    #[arg(long, default_value_t = tracer_common::PROFILE_SHORT_EVERY, value_parser = clap::value_parser!(u32).range(1..=1_000_000), env = "FAULTLINE_PROFILE_SHORT_STACKS")]
    profile_short_stacks: u32,
    /// Do not keep the in-kernel lock-contention profile: contended waits take no stack.
    #[arg(long, env = "FAULTLINE_NO_LOCK_PROFILE")]
    no_lock_profile: bool,
    /// Do not trace user-space lock waits (futex sleeps: pthread mutexes, rwlocks, PI futexes).
    #[arg(long, env = "FAULTLINE_NO_USER_LOCKS")]
    no_user_locks: bool,
}

/// `faultline contention --user`: the user-lock profile as rows (or JSON), and as pprof with -o.
fn print_user_profile(
    c: &ContentionArgs,
    user: &tracer::core::user_profile::UserProfile,
    elapsed: Duration,
) -> Result<ExitCode> {
    if let Some(path) = &c.output {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
        let window = i64::try_from(elapsed.as_nanos()).unwrap_or(i64::MAX);
        std::fs::write(path, tracer::sinks::pprof::user::encode(user, now, window))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    let mut rows = user.rows(&c.pids, &c.locks);
    rows.truncate(c.top);
    to_stdout(|out| {
        if c.json {
            let doc = serde_json::json!({
                "duration_s": elapsed.as_secs_f64(),
                "contended": rows.iter().map(|r| r.contended).sum::<u64>(),
                "total_wait_ns": rows.iter().map(|r| r.total_ns).sum::<u64>(),
                "rows": rows,
                "table_full": user.table_full,
                "no_stack": user.no_stack,
            });
            serde_json::to_writer_pretty(&mut *out, &doc)?;
            writeln!(out)
        } else {
            write!(
                out,
                "{}",
                tracer::core::user_profile::render_rows(&rows, c.stacks)
            )
        }
    })?;
    Ok(ExitCode::SUCCESS)
}

fn parse_idle_after(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{s:?} is not a duration: {e}"))?;
    if d < Duration::from_secs(1) {
        return Err(format!("{s} is under 1s: each look walks the whole table"));
    }
    Ok(d)
}

fn parse_ring_size(s: &str) -> Result<u32, String> {
    let n: u32 = s
        .parse()
        .map_err(|e| format!("{s:?} is not a byte count: {e}"))?;
    if n < 4096 || !n.is_power_of_two() {
        return Err(format!("{n} must be a power of two of at least 4096"));
    }
    Ok(n)
}

impl ProbeArgs {
    fn options(&self) -> ProbeOptions {
        ProbeOptions {
            attach: self.attach,
            record_all: false,
            wait_threshold: self.wait_threshold,
            hold_threshold: self.hold_threshold,
            max_tasks: self.max_tasks,
            detail: self.detail,
            extras: !self.mmap_lock_only,
            ring_bytes: self.ring_buffer_size,
            uffd_ioctls: self.uffd_ioctl_hooks,
            profile: ProfileOptions {
                enabled: !self.no_lock_profile,
                by_task: false,
                entries: self
                    .profile_entries
                    .unwrap_or_else(tracer::kernel::probes::default_profile_entries),
                stacks: self.profile_stacks,
                short_every: self.profile_short_stacks,
            },
            user_locks: !self.no_user_locks,
        }
    }
}

#[derive(Args)]
struct AgentArgs {
    /// TOML config file; each key is one of these flags (with `_` for `-`). Flags and
    /// environment variables override it.
    #[arg(long, env = "FAULTLINE_CONFIG")]
    config: Option<PathBuf>,
    #[command(flatten)]
    probes: ProbeArgs,
    #[command(flatten)]
    detect: DetectArgs,
    /// Address of the live page and HTTP API (/, /api/graph, /api/graph.svg, /api/alerts).
    /// Loopback by default: the graph names processes and their locks.
    #[arg(long, default_value = "127.0.0.1:9720", env = "FAULTLINE_LISTEN")]
    listen: std::net::SocketAddr,
    /// Web config (YAML, as for Prometheus exporters): TLS (`tls_server_config`), basic-auth
    /// users with bcrypt hashes (`basic_auth_users`), response headers (`http_server_config`).
    /// Reread when it or its certificate files change. Needed to listen beyond loopback safely.
    #[arg(
        long = "web.config.file",
        alias = "web-config-file",
        value_name = "FILE",
        env = "FAULTLINE_WEB_CONFIG_FILE"
    )]
    web_config_file: Option<PathBuf>,
    /// Directory for incident files (each alert with the graph at detection, JSON + DOT + HTML).
    #[arg(
        long,
        default_value = "/var/lib/faultline",
        env = "FAULTLINE_STATE_DIR"
    )]
    state_dir: PathBuf,
    /// Incidents kept in the state directory; the oldest are deleted first.
    #[arg(long, default_value_t = 500, env = "FAULTLINE_MAX_INCIDENTS")]
    max_incidents: usize,
    /// How often the kernel's per-task state is read into the graph and the timed detectors run.
    #[arg(long, default_value = "250ms", value_parser = humantime::parse_duration, env = "FAULTLINE_SNAPSHOT_INTERVAL")]
    snapshot_interval: Duration,
    /// How often to log the one-line summary.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration, env = "FAULTLINE_SUMMARY_INTERVAL")]
    summary_interval: Duration,
    /// Move a lock-profile aggregate that did not change for this long out of the kernel's
    /// table into the agent's memory, so the table never fills up for good (at least 1s).
    #[arg(long, default_value = "60s", value_parser = parse_idle_after, env = "FAULTLINE_PROFILE_IDLE_AFTER")]
    profile_idle_after: Duration,
    /// Most slow-event lines logged per summary interval; the rest are counted.
    #[arg(long, default_value_t = 20, env = "FAULTLINE_MAX_LOG_LINES")]
    max_log_lines: u32,
    /// Measure the probes' own run time (faultline_probe_run_seconds_total). Off by default:
    /// the kernel's BPF statistics add two clock reads to every run of every program.
    #[arg(long, env = "FAULTLINE_SELF_METRICS")]
    self_metrics: bool,
    /// Which processes to report on: the whole host, or only this agent's network namespace
    /// (one agent per namespace sharing a kernel; the probes themselves are host-wide).
    #[arg(long, value_enum, default_value_t = tracer::kernel::scope::Scope::Host, env = "FAULTLINE_SCOPE")]
    scope: tracer::kernel::scope::Scope,
    /// Also write every event the agent's engine applies (the kernel's records and what the
    /// snapshots concluded) to this trace file, mode 0600: `faultline replay FILE` then
    /// raises the alerts the agent raised. It keeps raw addresses.
    #[arg(long, env = "FAULTLINE_RECORD")]
    record: Option<PathBuf>,
    /// Show raw kernel and user addresses (mm, lock, userfaultfd, fault address) in the API,
    /// alerts, incidents and logs instead of opaque ids (mm-…, lock-…). Refused unless --listen
    /// is loopback: kernel addresses defeat KASLR. See docs/security.md.
    #[arg(long, env = "FAULTLINE_EXPOSE_ADDRESSES")]
    expose_addresses: bool,
}

#[derive(Args)]
struct RecordArgs {
    /// Trace file to write.
    #[arg(short, long)]
    output: PathBuf,
    /// Stop after this long (default: until Ctrl-C or SIGTERM).
    #[arg(short, long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    #[command(flatten)]
    probes: ProbeArgs,
}

#[derive(Args, Clone)]
struct DetectArgs {
    /// A task blocked this long raises a stall (uffd_stall for userfaultfd waits).
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration, env = "FAULTLINE_STALL_THRESHOLD")]
    stall_threshold: Duration,
    /// A reader queued behind a writer this long raises rwr_inversion.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration, env = "FAULTLINE_RWR_THRESHOLD")]
    rwr_threshold: Duration,
    /// A cycle whose members all waited this long without progress raises deadlock.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration, env = "FAULTLINE_DEADLOCK_CONFIRM")]
    deadlock_confirm: Duration,
}

impl DetectArgs {
    fn thresholds(&self) -> Thresholds {
        Thresholds {
            stall: self.stall_threshold,
            rwr: self.rwr_threshold,
            deadlock_confirm: self.deadlock_confirm,
        }
    }
}

#[derive(Args)]
struct DiagnoseArgs {
    /// Only chains that involve this process.
    #[arg(long)]
    pid: Option<u32>,
    /// Only tasks off CPU at least this long (cycles are always shown).
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    min_blocked: Duration,
    /// Print one JSON document.
    #[arg(long, conflicts_with = "dot")]
    json: bool,
    /// Print the graph in Graphviz DOT.
    #[arg(long)]
    dot: bool,
    /// Also write the graph as an SVG picture to this file.
    #[arg(long, value_name = "OUT")]
    svg: Option<PathBuf>,
    /// Ask the agent at this HTTP address instead of on its Unix socket (FAULTLINE_RUN_DIR,
    /// default /run/faultline, agent.sock). Nothing proves who answers over TCP: its read
    /// holders are shown as unverified and never make a deadlock certain.
    #[arg(long, value_name = "ADDR")]
    agent: Option<String>,
    /// Do not ask an agent.
    #[arg(long)]
    no_agent: bool,
}

#[derive(Args)]
struct ReplayArgs {
    /// Trace file (JSON Lines, format v1); `-` reads standard input.
    file: PathBuf,
    /// Print one JSON document instead of text.
    #[arg(long)]
    json: bool,
    /// Also write a self-contained HTML report: the graph at each alert, a timeline of the
    /// tasks involved, the explanations.
    #[arg(long, value_name = "OUT")]
    html: Option<PathBuf>,
    /// Also write the graph as an SVG picture: at the first deadlock, else at the last alert,
    /// else at the end of the trace.
    #[arg(long, value_name = "OUT")]
    svg: Option<PathBuf>,
    /// Refuse a trace whose last line is cut short (a recorder stopped mid-write) instead of
    /// replaying the complete lines before it with a warning.
    #[arg(long)]
    strict: bool,
    #[command(flatten)]
    detect: DetectArgs,
}

impl ReplayArgs {
    fn reading(&self) -> replay::Reading {
        if self.strict {
            replay::Reading::Strict
        } else {
            replay::Reading::Lenient
        }
    }
}

#[derive(Args)]
struct ContentionArgs {
    /// How long to profile (e.g. 10s); until Ctrl-C or SIGTERM without it.
    #[arg(short = 'd', long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// One row per waiting task (pid comm) instead of per caller.
    #[arg(short = 't', long = "threads", conflicts_with_all = ["lock_addr", "by_cgroup"])]
    threads: bool,
    /// One row per lock (its address and name) instead of per caller.
    #[arg(short = 'l', long = "lock-addr", conflicts_with = "by_cgroup")]
    lock_addr: bool,
    /// One row per cgroup (its workload: systemd unit, container, pod).
    #[arg(long)]
    by_cgroup: bool,
    /// Only these lock types (comma-separated): mutex, rwsem, rwsem:R, rwsem:W, spinlock,
    /// rwlock, rwlock:R, rwlock:W, other.
    #[arg(short = 'Y', long = "type-filter", value_delimiter = ',')]
    types: Vec<String>,
    /// Only locks whose name contains one of these, or at one of these addresses (hex).
    #[arg(short = 'L', long = "lock-filter", value_delimiter = ',')]
    locks: Vec<String>,
    /// Only waits whose stack has a frame containing this.
    #[arg(short = 'S', long = "callstack-filter")]
    callstack: Option<String>,
    /// Only waits of these processes (comma-separated pids).
    #[arg(short = 'p', long = "pid", value_delimiter = ',')]
    pids: Vec<u32>,
    /// Print this many rows at most (the heaviest by total wait).
    #[arg(short = 'E', long = "top", default_value_t = 20)]
    top: usize,
    /// Print each row's heaviest waiter stack under it.
    #[arg(long)]
    stacks: bool,
    /// Profile user-space lock waits (lock-shaped futex sleeps: pthread mutexes and rwlocks,
    /// PI futexes; condition variables and barriers are not followed) instead of kernel locks:
    /// rows by process and lock, with the
    /// heaviest user stack symbolised (-p and -L filter; -o writes the user_lock pprof).
    #[arg(long, conflicts_with_all = ["threads", "lock_addr", "by_cgroup", "types", "callstack"])]
    user: bool,
    /// Print JSON (rows, drops, duration) instead of the table.
    #[arg(long)]
    json: bool,
    /// Also write the profile as gzipped pprof (for `go tool pprof`, Parca, Pyroscope).
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    output: Option<PathBuf>,
    /// Aggregates the kernel keeps (see `agent --profile-entries`).
    #[arg(long, value_parser = clap::value_parser!(u32).range(16..=1_048_576))]
    profile_entries: Option<u32>,
    /// Distinct stacks the kernel keeps (see `agent --profile-stacks`).
    #[arg(long, default_value_t = tracer_common::names::LOCK_STACKS_CAPACITY, value_parser = clap::value_parser!(u32).range(16..=1_048_576))]
    profile_stacks: u32,
    /// Take the stack of 1 in N short contended waits (see `agent --profile-short-stacks`).
    #[arg(long, default_value_t = tracer_common::PROFILE_SHORT_EVERY, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    profile_short_stacks: u32,
}

impl ContentionArgs {
    fn group(&self) -> GroupBy {
        if self.threads {
            GroupBy::Task
        } else if self.lock_addr {
            GroupBy::Lock
        } else if self.by_cgroup {
            GroupBy::Cgroup
        } else {
            GroupBy::Caller
        }
    }
}

/// The agent's config file, applied before the command line is parsed (see `config`).
fn faultline_config(args: &[std::ffi::OsString]) -> Result<(), tracer::config::ConfigError> {
    let is_agent = args.get(1).is_some_and(|a| a == "agent");
    if is_agent {
        tracer::config::apply(args)?;
    }
    Ok(())
}

async fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Agent(a) => {
            if a.summary_interval.is_zero() || a.snapshot_interval.is_zero() {
                anyhow::bail!(
                    "--summary-interval and --snapshot-interval must be greater than zero"
                );
            }
            agent::run(AgentOptions {
                probes: a.probes.options(),
                thresholds: a.detect.thresholds(),
                listen: a.listen,
                web_config: a.web_config_file,
                state_dir: Some(a.state_dir),
                max_incidents: a.max_incidents,
                snapshot_interval: a.snapshot_interval,
                summary_interval: a.summary_interval,
                profile_idle_after: a.profile_idle_after,
                max_log_lines: a.max_log_lines,
                self_metrics: a.self_metrics,
                scope: a.scope,
                record: a.record,
                expose_addresses: a.expose_addresses,
            })
            .await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Record(r) => {
            let output = r.output.clone();
            let report = record::run(RecordOptions {
                output: r.output,
                duration: r.duration,
                probes: r.probes.options(),
            })
            .await?;
            eprintln!(
                "faultline: wrote {} events to {}",
                report.written,
                output.display()
            );
            if report.lost > 0 {
                eprintln!(
                    "faultline: warning: {} events lost (ring buffer full); the trace has gaps, each marked by a `lost` record",
                    report.lost
                );
            }
            if report.decode_errors > 0 {
                eprintln!(
                    "faultline: warning: {} records did not decode and were skipped",
                    report.decode_errors
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Replay(r) if r.html.is_some() || r.svg.is_some() => {
            // Pictures need the graph at each alert: the report module replays for itself.
            let pictures = replay::pictures(&r.file, r.reading(), r.detect.thresholds())?;
            if let Some(out) = &r.html {
                write_file(out, &pictures.html(&r.file.display().to_string()))?;
            }
            if let Some(out) = &r.svg {
                write_file(out, &pictures.svg())?;
            }
            eprintln!(
                "faultline: {} events, {} alerts",
                pictures.events,
                pictures.alerts.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Replay(r) => {
            let report = replay::replay_path(&r.file, r.reading(), r.detect.thresholds())?;
            to_stdout(|out| {
                if r.json {
                    serde_json::to_writer_pretty(&mut *out, &report)?;
                    writeln!(out)
                } else {
                    replay::print_text(&report, out)
                }
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Contention(c) => {
            let group = c.group();
            let measured = contention::run(contention::ContentionOptions {
                probes: ProbeOptions {
                    profile: ProfileOptions {
                        entries: c
                            .profile_entries
                            .unwrap_or_else(tracer::kernel::probes::default_profile_entries),
                        stacks: c.profile_stacks,
                        short_every: c.profile_short_stacks,
                        ..ProfileOptions::default()
                    },
                    ..ProbeOptions::default()
                },
                duration: c.duration,
                group,
                filter: Filter {
                    types: c.types.clone(),
                    locks: c.locks.clone(),
                    stack_contains: c.callstack.clone(),
                    pids: c.pids.clone(),
                },
                user: c.user,
            })
            .await?;
            if let Some(user) = &measured.user {
                return print_user_profile(&c, user, measured.elapsed);
            }
            let profile = &measured.profile;
            if let Some(path) = &c.output {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
                let elapsed = i64::try_from(measured.elapsed.as_nanos()).unwrap_or(i64::MAX);
                std::fs::write(path, tracer::sinks::pprof::encode(profile, now, elapsed))
                    .with_context(|| format!("cannot write {}", path.display()))?;
            }
            let mut rows = profile.rows(group);
            rows.truncate(c.top);
            to_stdout(|out| {
                if c.json {
                    let doc = serde_json::json!({
                        "duration_s": measured.elapsed.as_secs_f64(),
                        "contended": profile.contended(),
                        "total_wait_ns": profile.total_ns(),
                        "rows": rows,
                        "drops": profile.drops,
                    });
                    serde_json::to_writer_pretty(&mut *out, &doc)?;
                    writeln!(out)
                } else {
                    write!(
                        out,
                        "{}",
                        lock_profile::render_table(&rows, group, c.stacks, &profile.drops)
                    )
                }
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Diagnose(d) => {
            let report = tracer::commands::diagnose::diagnose(
                &tracer::commands::diagnose::DiagnoseOptions {
                    pid: d.pid,
                    min_blocked: d.min_blocked,
                    agent: (!d.no_agent).then(|| match &d.agent {
                        Some(addr) => AgentAt::Http(addr.clone()),
                        None => AgentAt::RunDir(tracer::commands::single::run_dir()),
                    }),
                },
            )?;
            if let Some(out) = &d.svg {
                write_file(out, &report::diagnosis_svg(&report))?;
            }
            to_stdout(|out| {
                if d.json {
                    serde_json::to_writer_pretty(&mut *out, &report)?;
                    writeln!(out)
                } else if d.dot {
                    write!(out, "{}", report.to_dot())
                } else {
                    write!(out, "{}", report.to_text())
                }
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::BenchFloor => {
            let _floor = tracer::kernel::probes::Floor::attach()?;
            eprintln!("faultline: floor programs attached");
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .context("installing a SIGTERM handler")?;
            tokio::select! {
                _ = term.recv() => {}
                r = tokio::signal::ctrl_c() => r.context("waiting for Ctrl-C")?,
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { json } => {
            let items = check::run();
            to_stdout(|out| {
                if json {
                    serde_json::to_writer_pretty(&mut *out, &items)?;
                    writeln!(out)
                } else {
                    check::print_text(&items, out)
                }
            })?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Writes a report to stdout. A reader that went away (`faultline diagnose --json | head`) is
/// not an error: the report was for it, and it has what it wanted.
fn to_stdout(
    write: impl FnOnce(&mut std::io::StdoutLock<'static>) -> std::io::Result<()>,
) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match write(&mut out).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => r.context("writing the report to stdout"),
    }
}

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if let Err(e) = faultline_config(&args) {
        eprintln!("faultline: error: {e}");
        return ExitCode::FAILURE;
    }
    let cli = Cli::parse_from(args);
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_target(false)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("faultline: error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("faultline: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
