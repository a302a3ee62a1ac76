//! One agent per host: an abstract unix socket claimed at start-up.
//!
//! Two agents would load two copies of the programs, double the overhead and race over the same
//! incidents. The claim is an abstract socket (`@faultline-agent`): the kernel frees it when the
//! process dies however it dies, so a crash leaves nothing stale behind. Abstract sockets belong
//! to a network namespace, deliberately: agents in separate network namespaces act as separate
//! hosts (containers, and the tests' hosts in miniature). A second agent connects to the first
//! and reads its pid from the connection's credentials (`SO_PEERCRED`).

use std::{
    io,
    os::{
        fd::AsRawFd,
        linux::net::SocketAddrExt,
        unix::net::{SocketAddr, UnixListener, UnixStream},
    },
};

/// The socket's name when `FAULTLINE_INSTANCE` does not set another (tests running beside a
/// real agent use their own).
pub const DEFAULT_NAME: &str = "faultline-agent";

#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    #[error("another faultline agent is already running on this host (pid {pid}, in this network namespace); stop it first (`kill {pid}`) or run this one in another network namespace")]
    Running { pid: i32 },
    #[error("another faultline agent holds @{name} but its pid could not be read ({source}); stop it first")]
    Unknown {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot claim @{name} to make sure this is the only agent: {source}")]
    Io {
        name: String,
        #[source]
        source: io::Error,
    },
}

/// The claim; it lasts until the process exits, however it exits.
pub struct Claim {
    _listener: UnixListener,
}

/// The claim's name: `FAULTLINE_INSTANCE`, or the default.
pub fn instance_name() -> String {
    std::env::var("FAULTLINE_INSTANCE")
        .ok()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| DEFAULT_NAME.to_owned())
}

/// The pid of the process that listens on the other end of `stream`.
fn peer_pid(stream: &UnixStream) -> io::Result<i32> {
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
    Ok(cred.pid)
}

/// Claims `@name`, or says which process holds it.
pub fn claim(name: &str) -> Result<Claim, ClaimError> {
    let io_err = |source| ClaimError::Io {
        name: name.to_owned(),
        source,
    };
    let addr = SocketAddr::from_abstract_name(name.as_bytes()).map_err(io_err)?;
    // Twice: the holder may exit between our bind and our connect.
    for _ in 0..2 {
        match UnixListener::bind_addr(&addr) {
            Ok(listener) => {
                serve_queries(&listener).map_err(io_err)?;
                return Ok(Claim {
                    _listener: listener,
                });
            }
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => match UnixStream::connect_addr(&addr)
            {
                Ok(stream) => {
                    return match peer_pid(&stream) {
                        Ok(pid) => Err(ClaimError::Running { pid }),
                        Err(source) => Err(ClaimError::Unknown {
                            name: name.to_owned(),
                            source,
                        }),
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => continue,
                Err(source) => {
                    return Err(ClaimError::Unknown {
                        name: name.to_owned(),
                        source,
                    })
                }
            },
            Err(e) => return Err(io_err(e)),
        }
    }
    Err(io_err(io::Error::new(
        io::ErrorKind::AddrInUse,
        "held and released repeatedly while checking",
    )))
}

/// Accepts and closes the connections of agents that asked, so the backlog never fills (the
/// credentials were read at connect time; nothing is exchanged).
fn serve_queries(listener: &UnixListener) -> io::Result<()> {
    let listener = listener.try_clone()?;
    std::thread::Builder::new()
        .name("single-agent".into())
        .spawn(move || {
            for conn in listener.incoming() {
                drop(conn);
            }
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_claim_names_the_first_holders_pid() {
        let name = format!("faultline-unit-{}", std::process::id());
        let first = claim(&name).expect("first claim");
        let Err(ClaimError::Running { pid }) = claim(&name) else {
            panic!("the second claim must be refused");
        };
        assert_eq!(pid, std::process::id() as i32);
        drop(first);
    }
}
