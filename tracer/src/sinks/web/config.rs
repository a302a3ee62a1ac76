//! The web config file: the YAML of the Prometheus exporter-toolkit (`--web.config.file`), so an
//! operator who has secured node_exporter secures faultline with the same file and habits.
//!
//! ```yaml
//! tls_server_config:
//!   cert_file: server.crt          # relative paths are relative to this file's directory
//!   key_file: server.key
//!   client_ca_file: clients-ca.crt # with client_auth_type below
//!   client_auth_type: RequireAndVerifyClientCert
//!   min_version: TLS12
//! http_server_config:
//!   headers:
//!     Strict-Transport-Security: max-age=31536000
//! basic_auth_users:
//!   prometheus: $2y$10$...          # bcrypt, e.g. `htpasswd -nBC 10 prometheus`
//! ```
//!
//! What the toolkit has and faultline does not (cipher suite and curve lists, certificates that
//! are requested but not verified) is refused with a line saying so, never silently ignored.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use axum::http::{HeaderName, HeaderValue};
use serde::Deserialize;

/// A problem with the web config: the file, the key, and what to do, in one line.
#[derive(Debug, thiserror::Error)]
#[error("web config file {path}: {key}: {problem}")]
pub struct WebConfigError {
    pub path: String,
    pub key: String,
    pub problem: String,
}

impl WebConfigError {
    pub fn new(path: &Path, key: &str, problem: impl Into<String>) -> Self {
        Self {
            path: path.display().to_string(),
            key: key.to_owned(),
            problem: problem.into(),
        }
    }
}

/// The file as written: every key the toolkit documents that faultline understands. Unknown keys
/// are errors (a typo in a security setting must not quietly leave it off).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDoc {
    tls_server_config: Option<TlsDoc>,
    http_server_config: Option<HttpDoc>,
    basic_auth_users: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsDoc {
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    client_ca_file: Option<PathBuf>,
    client_auth_type: Option<String>,
    min_version: Option<String>,
    max_version: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpDoc {
    headers: Option<BTreeMap<String, String>>,
    /// The toolkit's switch for HTTP/2; faultline serves HTTP/1.1 only, so either value is
    /// accepted and means the same.
    #[allow(dead_code)]
    http2: Option<bool>,
}

/// Whether and how client certificates are checked (the toolkit's names).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    NoClientCert,
    /// A certificate is optional; one that is sent must chain to the client CA.
    VerifyClientCertIfGiven,
    RequireAndVerifyClientCert,
}

/// TLS versions rustls speaks; 1.0 and 1.1 are refused with a line saying so.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    Tls12,
    Tls13,
}

/// The TLS settings, paths resolved against the config file's directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsSettings {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// Present exactly when `client_auth` verifies certificates.
    pub client_ca_file: Option<PathBuf>,
    pub client_auth: ClientAuth,
    pub min_version: TlsVersion,
    pub max_version: TlsVersion,
}

/// The parsed file, before any certificate is read.
#[derive(Clone, Debug, Default)]
pub struct WebSettings {
    pub tls: Option<TlsSettings>,
    /// User name → bcrypt hash; empty means no authentication.
    pub users: BTreeMap<String, String>,
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

/// Response headers the toolkit allows setting; the others would change what the API means
/// (content type, length, caching of credentials) rather than harden it.
const ALLOWED_HEADERS: [&str; 5] = [
    "Strict-Transport-Security",
    "X-Content-Type-Options",
    "X-Frame-Options",
    "X-XSS-Protection",
    "Content-Security-Policy",
];

fn version(path: &Path, key: &str, v: &str) -> Result<TlsVersion, WebConfigError> {
    match v {
        "TLS12" => Ok(TlsVersion::Tls12),
        "TLS13" => Ok(TlsVersion::Tls13),
        "TLS10" | "TLS11" => Err(WebConfigError::new(
            path,
            key,
            format!("{v} is not supported (rustls speaks TLS 1.2 and 1.3); use TLS12 or TLS13"),
        )),
        _ => Err(WebConfigError::new(
            path,
            key,
            format!("unknown TLS version `{v}`; use TLS12 or TLS13"),
        )),
    }
}

fn resolve(dir: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_owned()
    } else {
        dir.join(p)
    }
}

fn tls_settings(path: &Path, doc: TlsDoc) -> Result<TlsSettings, WebConfigError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let need = |v: Option<PathBuf>, key: &str| {
        v.filter(|p| !p.as_os_str().is_empty())
            .map(|p| resolve(dir, &p))
            .ok_or_else(|| {
                WebConfigError::new(
                    path,
                    key,
                    "missing: TLS needs both tls_server_config.cert_file and tls_server_config.key_file (PEM files)",
                )
            })
    };
    let cert_file = need(doc.cert_file, "tls_server_config.cert_file")?;
    let key_file = need(doc.key_file, "tls_server_config.key_file")?;
    let client_auth = match doc.client_auth_type.as_deref() {
        None | Some("") | Some("NoClientCert") => ClientAuth::NoClientCert,
        Some("VerifyClientCertIfGiven") => ClientAuth::VerifyClientCertIfGiven,
        Some("RequireAndVerifyClientCert") => ClientAuth::RequireAndVerifyClientCert,
        Some(other @ ("RequestClientCert" | "RequireAnyClientCert")) => {
            return Err(WebConfigError::new(
                path,
                "tls_server_config.client_auth_type",
                format!("{other} accepts certificates nobody verified and is not supported; use VerifyClientCertIfGiven or RequireAndVerifyClientCert with client_ca_file"),
            ))
        }
        Some(other) => {
            return Err(WebConfigError::new(
                path,
                "tls_server_config.client_auth_type",
                format!("unknown value `{other}`; use NoClientCert, VerifyClientCertIfGiven or RequireAndVerifyClientCert"),
            ))
        }
    };
    let client_ca_file = doc
        .client_ca_file
        .filter(|p| !p.as_os_str().is_empty())
        .map(|p| resolve(dir, &p));
    match (client_auth, &client_ca_file) {
        (ClientAuth::NoClientCert, Some(_)) => {
            return Err(WebConfigError::new(
                path,
                "tls_server_config.client_ca_file",
                "set, but client_auth_type is NoClientCert, so no client certificate would be checked; set client_auth_type to RequireAndVerifyClientCert or VerifyClientCertIfGiven, or remove client_ca_file",
            ))
        }
        (ClientAuth::VerifyClientCertIfGiven | ClientAuth::RequireAndVerifyClientCert, None) => {
            return Err(WebConfigError::new(
                path,
                "tls_server_config.client_ca_file",
                "missing: verifying client certificates needs the CA that signs them (a PEM file)",
            ))
        }
        _ => {}
    }
    let min_version = match doc.min_version.as_deref() {
        None | Some("") => TlsVersion::Tls12,
        Some(v) => version(path, "tls_server_config.min_version", v)?,
    };
    let max_version = match doc.max_version.as_deref() {
        None | Some("") => TlsVersion::Tls13,
        Some(v) => version(path, "tls_server_config.max_version", v)?,
    };
    if min_version > max_version {
        return Err(WebConfigError::new(
            path,
            "tls_server_config.min_version",
            "above max_version; lower min_version or raise max_version",
        ));
    }
    Ok(TlsSettings {
        cert_file,
        key_file,
        client_ca_file,
        client_auth,
        min_version,
        max_version,
    })
}

/// Parses the text of the file named `path` (the path only resolves relative file names and
/// names the file in errors).
pub fn parse(path: &Path, text: &str) -> Result<WebSettings, WebConfigError> {
    // An empty file is a valid config that turns nothing on, as for the toolkit.
    let doc: FileDoc = if text.trim().is_empty() {
        FileDoc::default()
    } else {
        serde_norway::from_str(text).map_err(|e| {
            WebConfigError::new(
                path,
                "YAML",
                format!("{e}; the file follows the Prometheus exporter-toolkit web config"),
            )
        })?
    };
    let tls = doc
        .tls_server_config
        .map(|t| tls_settings(path, t))
        .transpose()?;
    let users = doc.basic_auth_users.unwrap_or_default();
    for (user, hash) in &users {
        let key = format!("basic_auth_users.{user}");
        if user.is_empty() || user.contains(':') {
            return Err(WebConfigError::new(
                path,
                &key,
                "a user name must be non-empty and without `:` (basic auth splits on it)",
            ));
        }
        if hash.parse::<bcrypt::HashParts>().is_err() {
            return Err(WebConfigError::new(
                path,
                &key,
                "not a bcrypt hash ($2a$, $2b$ or $2y$); make one with `htpasswd -nBC 10 USER`",
            ));
        }
    }
    let mut headers = Vec::new();
    for (name, value) in doc
        .http_server_config
        .and_then(|h| h.headers)
        .unwrap_or_default()
    {
        let key = format!("http_server_config.headers.{name}");
        let Some(allowed) = ALLOWED_HEADERS
            .iter()
            .find(|a| a.eq_ignore_ascii_case(&name))
        else {
            return Err(WebConfigError::new(
                path,
                &key,
                format!(
                    "not a header the web config may set; allowed: {}",
                    ALLOWED_HEADERS.join(", ")
                ),
            ));
        };
        let value = HeaderValue::from_str(&value).map_err(|_| {
            WebConfigError::new(path, &key, "not a valid header value (visible ASCII only)")
        })?;
        headers.push((HeaderName::from_static_lower(allowed), value));
    }
    Ok(WebSettings {
        tls,
        users,
        headers,
    })
}

/// `HeaderName::from_static` needs lower case; the allowed names are written as documented.
trait FromStaticLower {
    fn from_static_lower(name: &str) -> HeaderName;
}

impl FromStaticLower for HeaderName {
    fn from_static_lower(name: &str) -> HeaderName {
        // The allowed names are valid header names by construction (a test checks each).
        HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
            .unwrap_or(HeaderName::from_static("x-invalid"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "$2y$04$vNiO0U.AOG7nMdr9b4kyTuahbLg4aVmKqmCGqDCFGtJ2hZ8hy5zCq";

    fn p() -> &'static Path {
        Path::new("/etc/faultline/web.yml")
    }

    #[test]
    fn the_toolkit_example_parses_with_paths_relative_to_the_file() {
        let s = parse(
            p(),
            &format!(
                "tls_server_config:\n  cert_file: server.crt\n  key_file: /abs/server.key\n  client_ca_file: ca.crt\n  client_auth_type: RequireAndVerifyClientCert\n  min_version: TLS13\nhttp_server_config:\n  headers:\n    Strict-Transport-Security: max-age=31536000\nbasic_auth_users:\n  prometheus: '{HASH}'\n"
            ),
        )
        .expect("valid");
        let tls = s.tls.expect("tls");
        assert_eq!(tls.cert_file, Path::new("/etc/faultline/server.crt"));
        assert_eq!(tls.key_file, Path::new("/abs/server.key"));
        assert_eq!(
            tls.client_ca_file.as_deref(),
            Some(Path::new("/etc/faultline/ca.crt"))
        );
        assert_eq!(tls.client_auth, ClientAuth::RequireAndVerifyClientCert);
        assert_eq!(tls.min_version, TlsVersion::Tls13);
        assert_eq!(s.users.len(), 1);
        assert_eq!(s.headers[0].0.as_str(), "strict-transport-security");
        assert!(parse(p(), "").expect("empty").tls.is_none());
    }

    #[test]
    fn every_mistake_is_one_line_naming_the_file_and_the_key() {
        let cases = [
            ("tls_server_config:\n  cert_file: a.crt\n", "tls_server_config.key_file"),
            ("tls_server_config:\n  cert_file: a\n  key_file: b\n  client_auth_type: RequireAndVerifyClientCert\n", "client_ca_file"),
            ("tls_server_config:\n  cert_file: a\n  key_file: b\n  client_auth_type: RequestClientCert\n", "client_auth_type"),
            ("tls_server_config:\n  cert_file: a\n  key_file: b\n  client_ca_file: c\n", "client_ca_file"),
            ("tls_server_config:\n  cert_file: a\n  key_file: b\n  min_version: TLS10\n", "min_version"),
            ("tls_server_config:\n  cert_file: a\n  key_file: b\n  cipher_suites: [x]\n", "cipher_suites"),
            ("basic_auth_users:\n  alice: hunter2\n", "basic_auth_users.alice"),
            ("http_server_config:\n  headers:\n    Content-Type: text/html\n", "headers.Content-Type"),
            ("basic_auth_user:\n  alice: x\n", "basic_auth_user"),
            ("tls_server_config: [", "YAML"),
        ];
        for (text, key) in cases {
            let e = parse(p(), text).expect_err(text).to_string();
            assert!(
                e.starts_with("web config file /etc/faultline/web.yml: "),
                "{e}"
            );
            assert!(e.contains(key), "{text}: expected {key} in: {e}");
            assert!(!e.contains('\n'), "one line: {e}");
        }
    }

    #[test]
    fn the_allowed_headers_are_valid_names() {
        for h in ALLOWED_HEADERS {
            assert_eq!(
                HeaderName::from_static_lower(h).as_str(),
                h.to_ascii_lowercase()
            );
        }
    }
}
