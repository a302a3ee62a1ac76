//! One agent per host: an exclusive `flock` on `agent.lock` in the agent's run directory
//! (`/run/faultline`, or `FAULTLINE_RUN_DIR`).
//!
//! Two agents would load two copies of the programs, double the overhead and race over the same
//! incidents. The lock must be something only the agent can hold: an abstract socket (what this
//! used to be) can be bound first by any process in the network namespace, which then blocks
//! the agent for good. The run directory is owned by the agent's own user (root, or the unit's
//! DynamicUser, for which systemd creates it) and closed to everyone else (0700), so nobody else
//! can open the lock file, let alone hold it. The kernel drops a `flock` when the process dies
//! however it dies, so a crash leaves nothing stale behind. The holder writes its pid into the
//! file once it holds the lock, so a second agent can name it.
//!
//! The same directory holds the agent's API socket (`agent.sock`, `sinks::unix_api`), which
//! `faultline diagnose` trusts for the same reason.

use std::{
    fs::{DirBuilder, File, OpenOptions},
    io::{self, Read, Seek, Write},
    os::{
        fd::AsRawFd,
        unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt},
    },
    path::{Path, PathBuf},
    time::Duration,
};

/// The run directory when `FAULTLINE_RUN_DIR` does not name another (tests give each agent its
/// own, so they run beside a real agent and beside each other).
pub const DEFAULT_RUN_DIR: &str = "/run/faultline";
/// The lock file's name in the run directory.
pub const LOCK_FILE: &str = "agent.lock";

#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    #[error("another faultline agent is already running on this host (pid {pid}, holding {lock}); stop it first (`kill {pid}`), or give this one its own FAULTLINE_RUN_DIR")]
    Running { pid: i32, lock: PathBuf },
    #[error(
        "another faultline agent holds {lock} but its pid could not be read from it; stop it first"
    )]
    Unknown { lock: PathBuf },
    #[error("refusing run directory {dir}: {problem}; remove it, or make it a directory owned by uid {uid} with mode 0700")]
    Unsafe {
        dir: PathBuf,
        problem: String,
        uid: u32,
    },
    #[error("cannot claim {path} to make sure this is the only agent: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The run directory: `FAULTLINE_RUN_DIR`, or the default.
pub fn run_dir() -> PathBuf {
    std::env::var_os("FAULTLINE_RUN_DIR")
        .filter(|d| !d.is_empty())
        .map_or_else(|| PathBuf::from(DEFAULT_RUN_DIR), PathBuf::from)
}

fn euid() -> u32 {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() }
}

/// What is wrong with `meta` as the run directory of an agent running as `uid`, if anything.
fn unsafe_because(meta: &std::fs::Metadata, uid: u32) -> Option<String> {
    if meta.file_type().is_symlink() {
        return Some("it is a symbolic link".into());
    }
    if !meta.is_dir() {
        return Some("it is not a directory".into());
    }
    if meta.uid() != uid {
        return Some(format!("it is owned by uid {}", meta.uid()));
    }
    if meta.mode() & 0o077 != 0 {
        return Some(format!(
            "its mode {:04o} lets other users in",
            meta.mode() & 0o7777
        ));
    }
    None
}

/// Creates `dir` (0700) when absent, and checks it is ours alone: a directory (not a link),
/// owned by this process's user, with no group or other access.
pub fn ensure_run_dir(dir: &Path) -> Result<(), ClaimError> {
    let uid = euid();
    match DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(source) => {
            return Err(ClaimError::Io {
                path: dir.to_owned(),
                source,
            })
        }
    }
    let meta = std::fs::symlink_metadata(dir).map_err(|source| ClaimError::Io {
        path: dir.to_owned(),
        source,
    })?;
    match unsafe_because(&meta, uid) {
        None => Ok(()),
        Some(problem) => Err(ClaimError::Unsafe {
            dir: dir.to_owned(),
            problem,
            uid,
        }),
    }
}

/// The claim; it lasts until the process exits, however it exits.
pub struct Claim {
    _lock: File,
    dir: PathBuf,
}

impl Claim {
    /// The run directory the claim was made in (where the API socket goes).
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Claims `dir` (created 0700 when absent), or says which process holds it.
pub fn claim(dir: &Path) -> Result<Claim, ClaimError> {
    ensure_run_dir(dir)?;
    let path = dir.join(LOCK_FILE);
    let io_err = |source| ClaimError::Io {
        path: path.clone(),
        source,
    };
    // No truncation on open: the file names the holder until we hold the lock ourselves.
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&path)
        .map_err(io_err)?;
    // SAFETY: a valid fd we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(io_err(e));
        }
        return Err(match holder_pid(&mut file) {
            Some(pid) => ClaimError::Running { pid, lock: path },
            None => ClaimError::Unknown { lock: path },
        });
    }
    file.set_len(0).map_err(io_err)?;
    file.rewind().map_err(io_err)?;
    writeln!(file, "{}", std::process::id()).map_err(io_err)?;
    Ok(Claim {
        _lock: file,
        dir: dir.to_owned(),
    })
}

/// The pid the holder wrote. It writes it just after taking the lock: a claim made in between
/// finds the file empty for a moment, so this retries for up to 100 ms.
fn holder_pid(file: &mut File) -> Option<i32> {
    for _ in 0..10 {
        let mut text = String::new();
        if file.rewind().is_ok() && file.read_to_string(&mut text).is_ok() {
            if let Ok(pid) = text.trim().parse::<i32>() {
                return Some(pid);
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn a_second_claim_names_the_first_holders_pid() {
        let dir = tempfile::tempdir().expect("tempdir");
        let run = dir.path().join("run");
        let first = claim(&run).expect("first claim");
        let Err(ClaimError::Running { pid, .. }) = claim(&run) else {
            panic!("the second claim must be refused");
        };
        assert_eq!(pid, std::process::id() as i32);
        drop(first);
        claim(&run).expect("free again once the first claim is gone");
    }

    #[test]
    fn the_run_directory_is_created_closed_to_others() {
        let dir = tempfile::tempdir().expect("tempdir");
        let run = dir.path().join("run");
        let _claim = claim(&run).expect("claim");
        let mode = std::fs::metadata(&run).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o700, "{mode:o}");
    }

    #[test]
    fn a_run_directory_others_can_enter_is_refused_in_one_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let run = dir.path().join("run");
        std::fs::create_dir(&run).expect("mkdir");
        std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let Err(e) = claim(&run) else {
            panic!("a 0755 run directory must be refused");
        };
        let line = e.to_string();
        assert!(
            matches!(e, ClaimError::Unsafe { .. }) && line.contains("0755") && !line.contains('\n'),
            "{line}"
        );
    }

    #[test]
    fn a_symbolic_link_as_run_directory_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("elsewhere");
        std::fs::create_dir(&target).expect("mkdir");
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        let run = dir.path().join("run");
        std::os::unix::fs::symlink(&target, &run).expect("symlink");
        assert!(matches!(claim(&run), Err(ClaimError::Unsafe { .. })));
    }
}
