//! The agent's API on a Unix socket (`agent.sock` in its run directory): what `faultline
//! diagnose` asks. Same router as the TCP listener; what differs is who can be on the other
//! end. The run directory is the agent's alone (0700, `commands::single`), so only its own
//! user or root can create a socket there or connect to it, and a client can check the
//! server's credentials (`SO_PEERCRED`). Over TCP anyone on the host can answer first.

use std::{
    io,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

use axum::Router;

/// The socket's name in the run directory.
pub const SOCKET: &str = "agent.sock";

/// The bound socket; its file is removed when this is dropped (a crash leaves it behind, and
/// the next agent, holding the single-agent lock, removes it before binding).
pub struct UnixApi {
    listener: Option<tokio::net::UnixListener>,
    path: PathBuf,
}

impl UnixApi {
    /// Binds `dir/agent.sock` (mode 0600). Call only while holding the single-agent lock: any
    /// file already there is a dead agent's and is replaced.
    pub fn bind(dir: &Path) -> io::Result<Self> {
        let path = dir.join(SOCKET);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let listener = tokio::net::UnixListener::bind(&path)?;
        // The directory already keeps others out; the mode says so on the socket too.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        Ok(Self {
            listener: Some(listener),
            path,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serves `app` on the socket until the task is aborted.
    pub fn serve(&mut self, app: Router) -> tokio::task::JoinHandle<io::Result<()>> {
        let listener = self.listener.take();
        tokio::spawn(async move {
            match listener {
                Some(l) => axum::serve(l, app).await,
                None => Ok(()),
            }
        })
    }
}

impl Drop for UnixApi {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
