//! The web config in force, and its rereading: the file and the certificate files it names are
//! polled (mtime, size, inode) every few seconds; a change rereads all of them. A new config
//! that fails keeps the one in force and logs one line, once per change of the files, so an
//! operator rotating a certificate never takes the endpoint down with a typo.

use std::{
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::Duration,
};

use super::{
    auth::Users,
    config::{self, WebConfigError},
    tls,
};

/// One loaded config: what every new connection and request reads.
pub struct Active {
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub users: Option<Users>,
    pub headers: Vec<(axum::http::HeaderName, axum::http::HeaderValue)>,
    /// Every client must present a certificate the client CA signed.
    pub client_certs_required: bool,
    /// The files whose change means a reread.
    watched: Vec<PathBuf>,
}

impl Active {
    /// No file: plain HTTP, no authentication, no extra headers.
    pub fn open() -> Self {
        Self {
            tls: None,
            users: None,
            headers: Vec::new(),
            client_certs_required: false,
            watched: Vec::new(),
        }
    }

    /// Reads and checks the file and everything it names.
    pub fn load(path: &Path) -> Result<Self, WebConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            WebConfigError::new(
                path,
                "file",
                format!("cannot read it: {e}; fix the path given to --web.config.file"),
            )
        })?;
        let settings = config::parse(path, &text)?;
        let mut watched = vec![path.to_owned()];
        let tls = match &settings.tls {
            Some(t) => {
                watched.extend([t.cert_file.clone(), t.key_file.clone()]);
                watched.extend(t.client_ca_file.clone());
                Some(tls::server_config(path, t)?)
            }
            None => None,
        };
        let users = (!settings.users.is_empty()).then(|| Users::new(settings.users));
        let client_certs_required = settings
            .tls
            .as_ref()
            .is_some_and(|t| t.client_auth == config::ClientAuth::RequireAndVerifyClientCert);
        Ok(Self {
            tls,
            users,
            headers: settings.headers,
            client_certs_required,
            watched,
        })
    }
}

/// What identifies a version of a file without reading it.
type Stamp = Vec<Option<(i64, i64, u64, u64)>>;

fn stamp(files: &[PathBuf]) -> Stamp {
    files
        .iter()
        .map(|f| {
            std::fs::metadata(f)
                .ok()
                .map(|m| (m.mtime(), m.mtime_nsec(), m.size(), m.ino()))
        })
        .collect()
}

/// The config in force, shared by the accept loop and the request layer.
pub struct Web {
    path: Option<PathBuf>,
    current: RwLock<Arc<Active>>,
}

/// How often the files are looked at.
pub const POLL: Duration = Duration::from_secs(2);

impl Web {
    /// Loads `path` (the agent refuses to start when it fails), or no config at all.
    pub fn load(path: Option<&Path>) -> Result<Arc<Self>, WebConfigError> {
        let active = match path {
            Some(p) => Active::load(p)?,
            None => Active::open(),
        };
        Ok(Arc::new(Self {
            path: path.map(Path::to_owned),
            current: RwLock::new(Arc::new(active)),
        }))
    }

    pub fn configured(&self) -> bool {
        self.path.is_some()
    }

    pub fn current(&self) -> Arc<Active> {
        // A poisoned lock only means a writer panicked mid-swap of an Arc: the value is whole.
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn set(&self, active: Active) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(active);
    }

    /// Rereads the config whenever its files change, for as long as the task runs.
    pub async fn watch(self: Arc<Self>) {
        let Some(path) = self.path.clone() else {
            return;
        };
        let mut files = self.current().watched.clone();
        let mut last = stamp(&files);
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let now = stamp(&files);
            if now == last {
                continue;
            }
            let p = path.clone();
            // Reading certificates and checking hashes is blocking work.
            let loaded = tokio::task::spawn_blocking(move || Active::load(&p)).await;
            match loaded {
                Ok(Ok(active)) => {
                    if active.watched != files {
                        files = active.watched.clone();
                        last = stamp(&files);
                    } else {
                        last = now;
                    }
                    self.set(active);
                    log::info!("web config {} reloaded", path.display());
                    continue;
                }
                Ok(Err(e)) => log::warn!("{e}; keeping the previous web config"),
                Err(e) => log::warn!(
                    "web config {}: reload failed ({e}); keeping the previous web config",
                    path.display()
                ),
            }
            // Stamped as seen before the attempt: a bad file is reported once, not every poll,
            // and a write that lands during the attempt is read at the next poll.
            last = now;
        }
    }
}
