//! The rustls server config from the web config's TLS settings (ring provider: pure Rust and
//! assembly, no OpenSSL and no cmake).

use std::{path::Path, sync::Arc};

use rustls::{
    crypto::ring,
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer},
    server::WebPkiClientVerifier,
    RootCertStore, ServerConfig, SupportedProtocolVersion,
};

use super::config::{ClientAuth, TlsSettings, TlsVersion, WebConfigError};

fn certs(
    config: &Path,
    key: &str,
    file: &Path,
) -> Result<Vec<CertificateDer<'static>>, WebConfigError> {
    let certs = CertificateDer::pem_file_iter(file)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            WebConfigError::new(
                config,
                key,
                format!("cannot read certificates from {}: {e}", file.display()),
            )
        })?;
    if certs.is_empty() {
        return Err(WebConfigError::new(
            config,
            key,
            format!(
                "{} holds no PEM certificate (BEGIN CERTIFICATE)",
                file.display()
            ),
        ));
    }
    Ok(certs)
}

/// Reads the certificate, key and client CA and builds the server config.
pub fn server_config(config: &Path, t: &TlsSettings) -> Result<Arc<ServerConfig>, WebConfigError> {
    let chain = certs(config, "tls_server_config.cert_file", &t.cert_file)?;
    let key = PrivateKeyDer::from_pem_file(&t.key_file).map_err(|e| {
        WebConfigError::new(
            config,
            "tls_server_config.key_file",
            format!(
                "cannot read a PEM private key from {}: {e}",
                t.key_file.display()
            ),
        )
    })?;
    let provider = Arc::new(ring::default_provider());
    let versions: Vec<&'static SupportedProtocolVersion> = [
        (TlsVersion::Tls12, &rustls::version::TLS12),
        (TlsVersion::Tls13, &rustls::version::TLS13),
    ]
    .into_iter()
    .filter(|(v, _)| (t.min_version..=t.max_version).contains(v))
    .map(|(_, p)| p)
    .collect();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)
        .map_err(|e| WebConfigError::new(config, "tls_server_config.min_version", e.to_string()))?;
    let builder = match (t.client_auth, &t.client_ca_file) {
        (ClientAuth::NoClientCert, _) | (_, None) => builder.with_no_client_auth(),
        (auth, Some(ca)) => {
            let key = "tls_server_config.client_ca_file";
            let mut roots = RootCertStore::empty();
            for c in certs(config, key, ca)? {
                roots.add(c).map_err(|e| {
                    WebConfigError::new(
                        config,
                        key,
                        format!("{}: not a usable CA certificate: {e}", ca.display()),
                    )
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if auth == ClientAuth::VerifyClientCertIfGiven {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            let verifier = verifier
                .build()
                .map_err(|e| WebConfigError::new(config, key, e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut server = builder.with_single_cert(chain, key).map_err(|e| {
        WebConfigError::new(
            config,
            "tls_server_config.key_file",
            format!(
                "{} does not go with {}: {e}",
                t.key_file.display(),
                t.cert_file.display()
            ),
        )
    })?;
    // HTTP/1.1 only: a client offering h2 alone is told so in the handshake.
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(server))
}
