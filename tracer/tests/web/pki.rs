//! Test certificates made at test time (a CA, a server certificate for 127.0.0.1 and
//! localhost, a client certificate), a web config writer, and a small TLS client.

use std::{
    io::{Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use base64::Engine as _;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer, ServerName};

pub struct Pki {
    pub dir: tempfile::TempDir,
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

fn leaf(
    names: &[&str],
    usage: ExtendedKeyUsagePurpose,
    ca: &CertifiedIssuer<'_, KeyPair>,
) -> (String, String) {
    let mut params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .expect("leaf params");
    params
        .distinguished_name
        .push(DnType::CommonName, names[0].to_owned());
    params.extended_key_usages = vec![usage];
    let key = KeyPair::generate().expect("leaf key");
    let cert = params.signed_by(&key, ca).expect("sign leaf");
    (cert.pem(), key.serialize_pem())
}

impl Pki {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "faultline test CA");
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().expect("ca key"))
            .expect("self-sign CA");
        let (server_cert, server_key) = leaf(
            &["localhost", "127.0.0.1"],
            ExtendedKeyUsagePurpose::ServerAuth,
            &ca,
        );
        let (client_cert, client_key) =
            leaf(&["prometheus"], ExtendedKeyUsagePurpose::ClientAuth, &ca);
        let write = |name: &str, text: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).expect("write pem");
            p
        };
        Self {
            ca: write("ca.crt", &ca.pem()),
            server_cert: write("server.crt", &server_cert),
            server_key: write("server.key", &server_key),
            client_cert: write("client.crt", &client_cert),
            client_key: write("client.key", &client_key),
            dir,
        }
    }

    /// A web config with TLS (client certificates required) and one user.
    pub fn tls_config(&self, user: &str, password: &str) -> String {
        format!(
            "tls_server_config:\n  cert_file: {}\n  key_file: {}\n  client_ca_file: {}\n  client_auth_type: RequireAndVerifyClientCert\n  min_version: TLS12\nhttp_server_config:\n  headers:\n    X-Content-Type-Options: nosniff\nbasic_auth_users:\n  {user}: '{}'\n",
            self.server_cert.display(),
            self.server_key.display(),
            self.ca.display(),
            hash(password),
        )
    }

    /// GET over TLS, with the client certificate or not; `Err` when the handshake fails.
    pub fn get(
        &self,
        addr: &str,
        path: &str,
        client_cert: bool,
        auth: Option<(&str, &str)>,
    ) -> Result<(u16, String), String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(&self.ca).expect("ca") {
            roots.add(c.expect("ca pem")).expect("ca root");
        }
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots);
        let config = if client_cert {
            let chain = CertificateDer::pem_file_iter(&self.client_cert)
                .expect("client cert")
                .collect::<Result<Vec<_>, _>>()
                .expect("client pem");
            let key = PrivateKeyDer::from_pem_file(&self.client_key).expect("client key");
            builder
                .with_client_auth_cert(chain, key)
                .expect("client auth")
        } else {
            builder.with_no_client_auth()
        };
        let name = ServerName::try_from("localhost").expect("name");
        let conn =
            rustls::ClientConnection::new(Arc::new(config), name).map_err(|e| e.to_string())?;
        let sock = TcpStream::connect(addr).map_err(|e| e.to_string())?;
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut tls = rustls::StreamOwned::new(conn, sock);
        let authz = auth
            .map(|(u, p)| {
                format!(
                    "Authorization: Basic {}\r\n",
                    base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
                )
            })
            .unwrap_or_default();
        write!(
            tls,
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{authz}\r\n"
        )
        .map_err(|e| e.to_string())?;
        let mut resp = Vec::new();
        match tls.read_to_end(&mut resp) {
            Ok(_) => {}
            // The server may close without close_notify after the response.
            Err(e) if !resp.is_empty() => eprintln!("after the response: {e}"),
            Err(e) => return Err(e.to_string()),
        }
        let text = String::from_utf8_lossy(&resp).into_owned();
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| format!("no HTTP response: {text:?}"))?;
        Ok((status, text))
    }
}

/// A bcrypt hash at the lowest cost (tests run unoptimised builds).
pub fn hash(password: &str) -> String {
    bcrypt::hash(password, 4).expect("bcrypt")
}

/// Writes `text` to `path` so that a poller sees a new file (another inode, another mtime).
pub fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write new config");
    std::fs::rename(&tmp, path).expect("rename new config");
}
