//! Reaching the agent on its Unix socket, and deciding whether what answered is the agent.
//!
//! Only the socket's place is trusted if the place itself is safe: the run directory must be
//! closed to others (0700) and owned by root or by the user the server runs as. Then the server
//! must run as root or as the directory's owner (`SO_PEERCRED`, filled in by the kernel at
//! connect time, so the server cannot lie about it), and run faultline: the same executable as
//! this diagnose (device and inode of `/proc/PID/exe`), or, after an upgrade replaced the
//! binary under a running agent, a file named `faultline` owned by root that nobody else may
//! write. The uid is the real boundary (a 0700 directory admits nobody else); the executable
//! check keeps another program of that user (a shell left listening there, a test double)
//! from being counted as the agent.

use std::{
    io::{self, Read, Write},
    os::{
        fd::AsRawFd,
        unix::{fs::MetadataExt, net::UnixStream},
    },
    path::Path,
    time::{Duration, Instant},
};

/// Why the socket's server was not trusted: one line for the warning.
#[derive(Debug, thiserror::Error)]
pub enum Untrusted {
    #[error("its directory {dir} {problem}")]
    Directory { dir: String, problem: String },
    #[error("it is served by pid {pid} running as uid {uid}, not root or the directory's owner (uid {owner})")]
    User { pid: i32, uid: u32, owner: u32 },
    #[error("it is served by pid {pid} running {exe}, which is not faultline")]
    Executable { pid: i32, exe: String },
    #[error("its server's credentials could not be read: {0}")]
    Credentials(io::Error),
}

/// The credentials the kernel recorded for the server end of `stream`.
pub fn peer_cred(stream: &UnixStream) -> io::Result<libc::ucred> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: a valid socket fd, and a buffer of the size passed.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cred)
}

/// The run directory's owner, when the directory is safe to trust a socket in.
pub fn check_dir(dir: &Path) -> Result<u32, Untrusted> {
    let bad = |problem: String| Untrusted::Directory {
        dir: dir.display().to_string(),
        problem,
    };
    let meta = std::fs::symlink_metadata(dir).map_err(|e| bad(format!("cannot be read ({e})")))?;
    if !meta.is_dir() {
        return Err(bad("is not a directory".into()));
    }
    if meta.mode() & 0o077 != 0 {
        return Err(bad(format!(
            "has mode {:04o}: other users can enter it",
            meta.mode() & 0o7777
        )));
    }
    if meta.uid() != 0 {
        // Owned by a service user (systemd's DynamicUser): trusted only if root chose that owner,
        // i.e. the parent is root's and nobody else can write to it.
        let parent = dir.parent().unwrap_or(Path::new("/"));
        let ok = std::fs::metadata(parent).is_ok_and(|p| p.uid() == 0 && p.mode() & 0o022 == 0);
        if !ok {
            return Err(bad(format!(
                "is owned by uid {} inside a directory root does not control alone",
                meta.uid()
            )));
        }
    }
    Ok(meta.uid())
}

/// Whether process `pid` runs faultline (see the module comment).
fn runs_faultline(pid: i32) -> Result<(), Untrusted> {
    let exe_path = format!("/proc/{pid}/exe");
    let name = std::fs::read_link(&exe_path)
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "an unreadable executable".into());
    let not = || Untrusted::Executable {
        pid,
        exe: name.clone(),
    };
    let theirs = std::fs::metadata(&exe_path).map_err(|_| not())?;
    let ours = std::fs::metadata("/proc/self/exe").map_err(|_| not())?;
    if (theirs.dev(), theirs.ino()) == (ours.dev(), ours.ino()) {
        return Ok(());
    }
    let file_name = name.trim_end_matches(" (deleted)");
    let named = Path::new(file_name)
        .file_name()
        .is_some_and(|n| n == "faultline");
    if named && theirs.uid() == 0 && theirs.mode() & 0o022 == 0 {
        return Ok(());
    }
    Err(not())
}

/// Checks the server at the other end of `stream`, whose socket is in a directory owned by
/// `owner`.
pub fn check_peer(stream: &UnixStream, owner: u32) -> Result<(), Untrusted> {
    let cred = peer_cred(stream).map_err(Untrusted::Credentials)?;
    if cred.uid != 0 && cred.uid != owner {
        return Err(Untrusted::User {
            pid: cred.pid,
            uid: cred.uid,
            owner,
        });
    }
    runs_faultline(cred.pid)
}

/// `GET path` over `stream` (HTTP/1.1, one request, the connection closed after), within
/// `timeout` in all: the body of a 200 answer.
pub fn get(mut stream: UnixStream, path: &str, timeout: Duration) -> io::Result<String> {
    let deadline = Instant::now() + timeout;
    stream.set_write_timeout(Some(timeout))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the agent answered too slowly",
            ));
        }
        stream.set_read_timeout(Some(left))?;
        match stream.read(&mut buf)? {
            0 => break,
            n => raw.extend_from_slice(&buf[..n]),
        }
    }
    parse_response(&raw)
}

fn invalid(why: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why.to_owned())
}

/// The body of a complete HTTP/1.1 response that was read to the end of the connection.
fn parse_response(raw: &[u8]) -> io::Result<String> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| invalid("no end of headers"))?;
    let head = std::str::from_utf8(&raw[..split]).map_err(|_| invalid("headers not UTF-8"))?;
    let body = &raw[split + 4..];
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or_default();
    if status.split(' ').nth(1) != Some("200") {
        return Err(invalid(&format!("answered {status:?}")));
    }
    let chunked = lines.any(|l| {
        l.split_once(':').is_some_and(|(k, v)| {
            k.trim().eq_ignore_ascii_case("transfer-encoding")
                && v.trim().eq_ignore_ascii_case("chunked")
        })
    });
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_vec()
    };
    String::from_utf8(body).map_err(|_| invalid("body not UTF-8"))
}

fn dechunk(mut rest: &[u8]) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(|| invalid("truncated chunk"))?;
        let size_text = std::str::from_utf8(&rest[..eol]).map_err(|_| invalid("chunk size"))?;
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| invalid("chunk size"))?;
        rest = &rest[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if rest.len() < size + 2 {
            return Err(invalid("truncated chunk"));
        }
        out.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_chunked_bodies_are_read_and_errors_refused() {
        let plain = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}";
        assert_eq!(parse_response(plain).expect("plain"), "{}");
        let chunked =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{\"a\r\n3\r\n\":1\r\n1\r\n}\r\n0\r\n\r\n";
        assert_eq!(parse_response(chunked).expect("chunked"), "{\"a\":1}");
        assert!(parse_response(b"HTTP/1.1 404 Not Found\r\n\r\nno").is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n").is_err());
    }

    #[test]
    fn a_server_of_this_user_running_this_executable_passes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).expect("bind");
        let stream = UnixStream::connect(&path).expect("connect");
        // SAFETY: geteuid cannot fail.
        let uid = unsafe { libc::geteuid() };
        // The test binary listens, and the test binary checks: the same executable.
        check_peer(&stream, uid).expect("this process is trusted by itself");
        let other_owner = uid.wrapping_add(1);
        if uid != 0 {
            assert!(matches!(
                check_peer(&stream, other_owner),
                Err(Untrusted::User { .. })
            ));
        }
        drop(listener);
    }

    #[test]
    fn a_directory_others_can_enter_is_not_trusted() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711))
            .expect("chmod");
        assert!(matches!(
            check_dir(dir.path()),
            Err(Untrusted::Directory { .. })
        ));
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))
            .expect("chmod");
        if unsafe { libc::geteuid() } == 0 {
            assert_eq!(check_dir(dir.path()).expect("0700, root's"), 0);
        }
    }
}
