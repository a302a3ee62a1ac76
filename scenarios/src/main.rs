//! Test workloads that make real `mmap_lock` traffic and contention, bounded in time and cleaning
//! up after themselves. Each prints one JSON line on stdout naming the tids involved and the
//! CLOCK_MONOTONIC times (the clock of `bpf_ktime_get_ns`) of what it did, so tests can match
//! what faultline saw against what really happened. The `user_locks` ones do the same with glibc
//! pthread mutexes, rwlocks, condition variables, barriers and semaphores (futex words).
//!
//! Used by the kernel tests and by `cargo xtask bench`; also handy for demos:
//! `faultline-scenario rwr` while `faultline agent` runs.

mod churn;
mod cross_deadlock;
mod deadlock;
mod dir_churn;
mod file_writers;
mod loops;
mod monitor_deadlock;
mod rwr;
mod sig_churn;
mod uffd;
mod user_locks;
mod util;

use clap::{Parser, Subcommand};

use crate::{
    churn::*, cross_deadlock::*, deadlock::*, file_writers::*, loops::*, monitor_deadlock::*,
    rwr::*, uffd::*, user_locks::Prefer,
};

#[derive(Parser)]
#[command(
    name = "faultline-scenario",
    about = "Real mmap_lock workloads for faultline's tests"
)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// Read-write-read convoy on one mm: a long read hold (MADV_POPULATE_WRITE), a writer that
    /// queues behind it (mprotect), and a reader that queues behind the writer (/proc/self/cmdline).
    Rwr {
        /// Size of the region populated under the read lock; doubled on a retry when the hold
        /// ended before the convoy formed.
        #[arg(long, default_value_t = 1024)]
        hold_mib: usize,
        /// Delay between the hold starting and the writer asking.
        #[arg(long, default_value_t = 20)]
        writer_delay_ms: u64,
        /// Delay between the writer asking and the late reader asking (the writer sets the rwsem
        /// handoff bit after a few ms; later readers queue behind it).
        #[arg(long, default_value_t = 30)]
        reader_delay_ms: u64,
        /// Print a first JSON line naming the tids as soon as the convoy has formed.
        #[arg(long)]
        announce: bool,
    },
    /// N mprotect calls on one page from one thread: N write acquisitions of its own mm.
    MprotectLoop {
        #[arg(long, default_value_t = 1000)]
        count: u32,
    },
    /// T threads of one process each mmap a page, write it, mprotect it and munmap it, N times
    /// in all: write acquisitions of one mm from several threads, which contend.
    Storm {
        #[arg(long, default_value_t = 100_000)]
        count: u32,
        #[arg(long, default_value_t = 2)]
        threads: u32,
    },
    /// System calls for a fixed time, counted (the syscall entry/exit path: see `cargo xtask
    /// bench overhead`).
    Syscalls {
        #[arg(long, value_enum, default_value = "getppid")]
        kind: SyscallKind,
        #[arg(long, default_value_t = 1500)]
        millis: u64,
    },
    /// A userfaultfd with one registered page, set up and then left idle until stdin closes
    /// (or `linger_ms`).
    UffdIdle {
        #[arg(long, default_value_t = 60_000)]
        linger_ms: u64,
    },
    /// Fault in N fresh anonymous pages (one write each), then unmap them: the page-fault path.
    FaultIn {
        #[arg(long, default_value_t = 65536)]
        pages: u32,
        /// Threads sharing the pages (one mm): each faults in its own slice.
        #[arg(long, default_value_t = 1)]
        threads: u32,
        /// Stay alive this long after reporting (per-process counters vanish at exit).
        #[arg(long, default_value_t = 0)]
        linger_ms: u64,
    },
    /// Two threads write one tmpfs file: the second blocks on the inode's rwsem, owned by the
    /// first (a kernel lock user space can reach).
    FileWriters {
        /// Size of each write; the first writer holds the inode lock for the whole copy.
        #[arg(long, default_value_t = 256)]
        mib: usize,
        /// Write from never-touched memory: the first writer's copy then faults in kernel mode
        /// page after page while it holds the inode lock the second writer waits for.
        #[arg(long)]
        fresh_source: bool,
    },
    /// A userfaultfd whose monitor (another process) delays its answer: the faulting thread
    /// waits in handle_userfault, then the monitor resolves the fault with UFFDIO_COPY, and
    /// finally retries the COPY onto the now-populated page (fails with EEXIST).
    UffdStall {
        #[arg(long, default_value_t = 300)]
        delay_ms: u64,
        /// Copy from a never-touched page: UFFDIO_COPY then faults in kernel mode while it holds
        /// the faulting process's mmap_lock (and retries outside it). The page reads as zeros.
        #[arg(long)]
        fresh_source: bool,
    },
    /// A two-hop chain: thread A write()s to a shared file from a userfaultfd-registered buffer
    /// nobody answers (holding the file's f_pos_lock mutex while its fault waits); thread B
    /// writes to the same file and blocks on that mutex. After `hold_ms` the fault is resolved
    /// and everything ends.
    UffdChain {
        #[arg(long, default_value_t = 3000)]
        hold_ms: u64,
        /// End the hold early when stdin reaches end of file (the caller is done looking): a
        /// long hold for slow machines that costs fast ones nothing.
        #[arg(long)]
        until_stdin_closes: bool,
    },
    /// A real deadlock of two threads: the holder write()s a shared file from a
    /// userfaultfd-registered page (holding the file's f_pos_lock while its fault waits for the
    /// handler); the handler, the thread that set the userfaultfd up, then writes the same file
    /// and blocks on that f_pos_lock. Neither can move on. After `hold_ms` a rescue thread
    /// resolves the fault with UFFDIO_COPY and both finish.
    UffdDeadlock {
        #[arg(long, default_value_t = 4000)]
        hold_ms: u64,
        /// More threads that write the same file and queue on the same f_pos_lock (identical
        /// waiters outside the cycle).
        #[arg(long, default_value_t = 0)]
        extra_writers: u32,
        /// End the hold early when stdin reaches end of file (see uffd-chain).
        #[arg(long)]
        until_stdin_closes: bool,
    },
    /// The deadlock of a real userfaultfd monitor: the monitor thread polls the userfaultfd,
    /// reads the fault message and logs it to a file whose f_pos_lock the faulting thread holds
    /// (its write() copies from the registered page). An idle watchdog thread holding the same
    /// descriptor sleeps in nanosleep; after `hold_ms` it resolves the fault with UFFDIO_COPY.
    UffdMonitorDeadlock {
        #[arg(long, default_value_t = 4000)]
        hold_ms: u64,
        /// No deadlock: after reading the message the monitor forgets to answer and waits in
        /// epoll_wait (on an epoll instance watching the userfaultfd) for the next one.
        #[arg(long)]
        forgetful_monitor: bool,
        /// End the hold early when stdin reaches end of file (see uffd-chain).
        #[arg(long)]
        until_stdin_closes: bool,
    },
    /// A real deadlock between two processes: each registers a page with its own userfaultfd,
    /// takes the other's (pidfd_getfd) and serves it from one thread (UFFDIO_WAKE), and that
    /// same thread then faults on its own page. Each fault waits for a handler that waits for
    /// the other. Reports once both are asleep in handle_userfault, then after `hold_ms` both
    /// processes exit (the only way out).
    UffdCrossDeadlock {
        #[arg(long, default_value_t = 5000)]
        hold_ms: u64,
    },
    /// N sleeping threads (small stacks) for `linger_ms`: a host with many tasks to diagnose.
    Threads {
        #[arg(long, default_value_t = 10_000)]
        count: u32,
        #[arg(long, default_value_t = 10_000)]
        linger_ms: u64,
    },
    /// read() from /dev/zero into N fresh pages: N kernel-mode faults, each under mmap_lock.
    KernelFaults {
        #[arg(long, default_value_t = 4096)]
        pages: u32,
        /// Stay alive this long after reporting (per-process counters vanish at exit).
        #[arg(long, default_value_t = 0)]
        linger_ms: u64,
    },
    /// N short-lived processes, one after another, each writing a page and mprotecting it
    /// before it exits: tids and mm addresses that die and get reused.
    Churn {
        #[arg(long, default_value_t = 100_000)]
        count: u32,
        /// Stop forking after this long even if `count` is not reached (the report says how
        /// many ran): a slow host, or an emulated guest, gets a bounded churn.
        #[arg(long)]
        seconds: Option<u64>,
    },
    /// T threads creating and unlinking files in one tmpfs directory for a while: waits on the
    /// directory inode's rwsem (a lock inside a slab object).
    DirChurn {
        #[arg(long, default_value_t = 4)]
        threads: u32,
        /// Directories the threads spread over (each its own lock).
        #[arg(long, default_value_t = 1)]
        dirs: u32,
        #[arg(long, default_value_t = 2000)]
        millis: u64,
    },
    /// T threads of one process changing their signal masks for a while: waits on the
    /// process's siglock (a well-known per-process spinlock).
    SigChurn {
        #[arg(long, default_value_t = 4)]
        threads: u32,
        #[arg(long, default_value_t = 2000)]
        millis: u64,
    },
    /// N process_vm_readv calls reading a child process's memory: read holds of a foreign mm.
    ForeignRead {
        #[arg(long, default_value_t = 100)]
        count: u32,
    },
    /// A real ABBA deadlock on two default pthread mutexes (globals FAULTLINE_MUTEX_A and _B):
    /// abba-1 holds A and asks for B, abba-2 holds B and asks for A, both with
    /// pthread_mutex_timedlock, so both asks time out after `hold_ms` and all ends.
    PthreadAbba {
        #[arg(long, default_value_t = 3000)]
        hold_ms: u64,
        /// The main thread holds both mutexes this long first, so each side takes its first
        /// mutex through the kernel (woken by the unlock).
        #[arg(long)]
        handed_ms: Option<u64>,
        /// Print a first JSON line as soon as both threads sleep in their asks.
        #[arg(long)]
        announce: bool,
    },
    /// A chain of priority-inheritance pthread mutexes (FAULTLINE_PI_1..3): pi-3 waits for
    /// pi-2, which waits for pi-1, which holds PI_1 for `hold_ms`; every wait is timed.
    PiChain {
        #[arg(long, default_value_t = 3000)]
        hold_ms: u64,
        /// Print a first JSON line once every waiter sleeps in futex.
        #[arg(long)]
        announce: bool,
        /// pi-1 asks for PI_3 too: a three-thread deadlock (the kernel refuses the last PI wait
        /// with EDEADLK; glibc then sleeps until the deadline and reports ETIMEDOUT).
        #[arg(long)]
        cycle: bool,
    },
    /// Futex use that is not lock contention, under load: condition-variable ping-pong (cv-*),
    /// a pthread barrier crossed over and over (bar-*), a semaphore queue (sem-*).
    FutexBenign {
        #[arg(long, default_value_t = 3000)]
        millis: u64,
        /// Barrier threads (2 to 64); half as many condition-variable pairs, producers and
        /// consumers.
        #[arg(long, default_value_t = 4)]
        threads: u32,
    },
    /// A userfaultfd monitor deadlocked on a pthread mutex: um-fault holds FAULTLINE_UFFD_MUTEX
    /// and faults on a registered page; um-monitor, the handler, reads the fault and asks for
    /// the mutex (timed: after `hold_ms` it gives up and resolves the fault).
    UffdMutex {
        #[arg(long, default_value_t = 3000)]
        hold_ms: u64,
        /// Print a first JSON line once the monitor sleeps in futex and the fault in
        /// handle_userfault.
        #[arg(long)]
        announce: bool,
    },
    /// N threads hammer one default pthread mutex (FAULTLINE_CONVOY_MUTEX) with a short
    /// critical section: a contended convoy, the benchmark of user-space lock tracing.
    MutexConvoy {
        #[arg(long, default_value_t = 4)]
        threads: u32,
        #[arg(long, default_value_t = 1500)]
        millis: u64,
    },
    /// A glibc rwlock's queueing (FAULTLINE_RWLOCK): a read hold, a queued writer, a late
    /// reader that gets in at once when readers are preferred and waits behind the writer when
    /// writers are.
    RwlockQueue {
        /// The rwlock's kind: which side a read-held lock lets in first.
        #[arg(long, value_enum)]
        prefer: Prefer,
        /// How long the first reader holds the lock (the late asks wait at most twice that).
        #[arg(long, default_value_t = 1500)]
        hold_ms: u64,
        /// Print a first JSON line once the writer (and, preferring writers, the late reader)
        /// sleeps in futex.
        #[arg(long)]
        announce: bool,
    },
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.scenario {
        Scenario::Rwr {
            hold_mib,
            writer_delay_ms,
            reader_delay_ms,
            announce,
        } => rwr(hold_mib, writer_delay_ms, reader_delay_ms, announce),
        Scenario::MprotectLoop { count } => mprotect_loop(count),
        Scenario::ForeignRead { count } => foreign_read(count),
        Scenario::FaultIn {
            pages,
            threads,
            linger_ms,
        } => fault_in(pages, threads, linger_ms),
        Scenario::Storm { count, threads } => storm(count, threads),
        Scenario::DirChurn {
            threads,
            dirs,
            millis,
        } => dir_churn::dir_churn(threads, dirs, millis),
        Scenario::SigChurn { threads, millis } => sig_churn::sig_churn(threads, millis),
        Scenario::Syscalls { kind, millis } => syscalls(kind, millis),
        Scenario::UffdIdle { linger_ms } => uffd_idle(linger_ms),
        Scenario::FileWriters { mib, fresh_source } => file_writers(mib, fresh_source),
        Scenario::UffdStall {
            delay_ms,
            fresh_source,
        } => uffd_stall(delay_ms, fresh_source),
        Scenario::KernelFaults { pages, linger_ms } => kernel_faults(pages, linger_ms),
        Scenario::UffdChain {
            hold_ms,
            until_stdin_closes,
        } => uffd_chain(hold_ms, until_stdin_closes),
        Scenario::UffdDeadlock {
            hold_ms,
            extra_writers,
            until_stdin_closes,
        } => uffd_deadlock(hold_ms, extra_writers, until_stdin_closes),
        Scenario::UffdMonitorDeadlock {
            hold_ms,
            forgetful_monitor,
            until_stdin_closes,
        } => uffd_monitor_deadlock(
            hold_ms,
            if forgetful_monitor {
                AfterRead::Forget
            } else {
                AfterRead::Log
            },
            until_stdin_closes,
        ),
        Scenario::UffdCrossDeadlock { hold_ms } => uffd_cross_deadlock(hold_ms),
        Scenario::Threads { count, linger_ms } => many_threads(count, linger_ms),
        Scenario::PthreadAbba {
            hold_ms,
            handed_ms,
            announce,
        } => user_locks::pthread_abba(hold_ms, handed_ms, announce),
        Scenario::PiChain {
            hold_ms,
            announce,
            cycle,
        } => user_locks::pi_chain(hold_ms, announce, cycle),
        Scenario::FutexBenign { millis, threads } => user_locks::futex_benign(millis, threads),
        Scenario::UffdMutex { hold_ms, announce } => user_locks::uffd_mutex(hold_ms, announce),
        Scenario::MutexConvoy { threads, millis } => user_locks::mutex_convoy(threads, millis),
        Scenario::RwlockQueue {
            prefer,
            hold_ms,
            announce,
        } => user_locks::rwlock_queue(prefer, hold_ms, announce),
        Scenario::Churn { count, seconds } => {
            churn(count, seconds.map(std::time::Duration::from_secs))
        }
    };
    if let Err(e) = result {
        eprintln!("faultline-scenario: error: {e:#}");
        std::process::exit(1);
    }
}
