//! TLS 1.3 for the TinyIDS server and client (rustls, `ring` provider), replacing TinyIDS's RSA
//! mode. The server presents a certificate; with `client_ca` it also requires a client
//! certificate signed by that CA (mTLS), and the client's identity becomes the certificate's
//! SHA-256 fingerprint. The client authenticates the server by a CA, by a pinned fingerprint of
//! the server certificate, or by both.
use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha2::Digest as _;
use subtle::ConstantTimeEq as _;

use super::settings::{ClientTls, ServeTls};

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// SHA-256 of a certificate's DER encoding.
pub fn fingerprint(cert: &[u8]) -> [u8; 32] {
    sha2::Sha256::digest(cert).into()
}

pub fn load_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("reading certificates from {}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing certificates in {}", path.display()))?;
    if certs.is_empty() {
        anyhow::bail!("{}: no PEM certificate found", path.display());
    }
    Ok(certs)
}

pub fn load_key(path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(path).with_context(|| format!("reading a PEM private key from {}", path.display()))
}

fn load_roots(path: &Path) -> anyhow::Result<Arc<RootCertStore>> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots.add(cert).with_context(|| format!("{}: a certificate is not a usable CA", path.display()))?;
    }
    Ok(Arc::new(roots))
}

/// The server's TLS configuration; whether it verifies client certificates (mTLS).
pub fn server_config(tls: &ServeTls) -> anyhow::Result<(Arc<rustls::ServerConfig>, bool)> {
    server_config_with(tls, false)
}

/// [`server_config`], where a client without a certificate may still connect when
/// `certificate_optional` (the web console: a certificate logs in, a password too).
pub fn server_config_with(
    tls: &ServeTls,
    certificate_optional: bool,
) -> anyhow::Result<(Arc<rustls::ServerConfig>, bool)> {
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS 1.3 with the ring provider")?;
    let certs = load_certs(&tls.cert)?;
    let key = load_key(&tls.key)?;
    let (builder, mtls) = match &tls.client_ca {
        Some(ca) => {
            let mut verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(load_roots(ca)?, provider());
            if certificate_optional {
                verifier = verifier.allow_unauthenticated();
            }
            let verifier = verifier.build().with_context(|| format!("client CA {}", ca.display()))?;
            (builder.with_client_cert_verifier(verifier), true)
        }
        None => (builder.with_no_client_auth(), false),
    };
    let config = builder
        .with_single_cert(certs, key)
        .with_context(|| format!("server certificate {} with key {}", tls.cert.display(), tls.key.display()))?;
    Ok((Arc::new(config), mtls))
}

/// The client's TLS configuration for one server. No session resumption: every connection
/// makes a full handshake, and no ticket outlives the command.
pub fn client_config(tls: &ClientTls) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS 1.3 with the ring provider")?;
    let webpki = match &tls.ca {
        Some(ca) => Some(
            rustls::client::WebPkiServerVerifier::builder_with_provider(
                load_roots(ca).with_context(|| tls.setting("ca"))?,
                provider(),
            )
            .build()
            .with_context(|| format!("{} {}", tls.setting("ca"), ca.display()))?,
        ),
        None => None,
    };
    let builder = match (tls.fingerprint, webpki) {
        (Some(fingerprint), webpki) => builder.dangerous().with_custom_certificate_verifier(Arc::new(PinnedVerifier {
            fingerprint,
            webpki,
            provider: provider(),
        })),
        (None, Some(webpki)) => builder.with_webpki_verifier(webpki),
        (None, None) => {
            anyhow::bail!(
                "TLS needs {} or {} to authenticate the server",
                tls.setting("ca"),
                tls.setting("fingerprint")
            )
        }
    };
    let mut config = match (&tls.client_cert, &tls.client_key) {
        (Some(cert), Some(key)) => {
            let certs = load_certs(cert).with_context(|| tls.setting("client_cert"))?;
            let key_der = load_key(key).with_context(|| tls.setting("client_key"))?;
            builder.with_client_auth_cert(certs, key_der).with_context(|| {
                format!(
                    "{} {} with {} {}",
                    tls.setting("client_cert"),
                    cert.display(),
                    tls.setting("client_key"),
                    key.display()
                )
            })?
        }
        _ => builder.with_no_client_auth(),
    };
    config.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(config))
}

/// The name to verify and send as SNI: `server_name` if set, else the host.
pub fn server_name(tls: &ClientTls, host: &str) -> anyhow::Result<ServerName<'static>> {
    let (name, setting) = match &tls.server_name {
        Some(name) => (name.as_str(), tls.setting("server_name")),
        None => (host, "host".to_string()),
    };
    ServerName::try_from(name.to_string())
        .with_context(|| format!("{setting}: {name:?} is not a DNS name or IP address"))
}

/// Accepts the server certificate whose SHA-256 is the pinned one (compared in constant time);
/// when a CA is configured too, the chain must also verify against it. Handshake signatures are
/// always verified, so the server must hold the certificate's key.
#[derive(Debug)]
struct PinnedVerifier {
    fingerprint: [u8; 32],
    webpki: Option<Arc<rustls::client::WebPkiServerVerifier>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let seen = fingerprint(end_entity.as_ref());
        if !bool::from(seen.ct_eq(&self.fingerprint)) {
            return Err(rustls::Error::InvalidCertificate(rustls::CertificateError::ApplicationVerificationFailure));
        }
        if let Some(webpki) = &self.webpki {
            webpki.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)?;
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}
