//! The webhook output: each alert POSTed as JSON to a URL (HTTP/1.1 over TCP, or TLS through
//! rustls for https://), one connection per alert. A 2xx answer delivers it; 408, 429, a 5xx, a
//! connection failure or a timeout is retried; any other answer refuses that alert for good.
use std::sync::Arc;

use anyhow::Context as _;
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE, HOST, HeaderValue, USER_AGENT};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::config::WebhookConfig;
use super::{Deliver, Failure};
use crate::alert::Alert;

pub(crate) struct Webhook {
    config: WebhookConfig,
    host: String,
    port: u16,
    /// `Some` for https://.
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
    /// The worker thread's own (made there, at the first request): a slow receiver holds this
    /// output's thread and no task of the daemon's runtime.
    runtime: Option<tokio::runtime::Runtime>,
}

/// What a request came to.
enum Outcome {
    Status(StatusCode),
    Error(String),
}

/// Whether an answer with `status` is worth trying again.
pub(crate) fn retried(status: StatusCode) -> bool {
    status.is_server_error() || status == StatusCode::REQUEST_TIMEOUT || status == StatusCode::TOO_MANY_REQUESTS
}

impl Webhook {
    /// Reads the CA file (a missing or bad one stops the start: the output could never deliver).
    pub(crate) fn new(config: WebhookConfig) -> anyhow::Result<Self> {
        let authority = config.url.authority().context("the url has no host")?;
        let https = config.url.scheme_str() == Some("https");
        let host = authority.host().trim_start_matches('[').trim_end_matches(']').to_string();
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        let tls = if https {
            let roots = match &config.ca_file {
                Some(path) => {
                    let mut roots = rustls::RootCertStore::empty();
                    let certs = CertificateDer::pem_file_iter(path)
                        .with_context(|| format!("reading ca_file {}", path.display()))?
                        .collect::<Result<Vec<_>, _>>()
                        .with_context(|| format!("parsing ca_file {}", path.display()))?;
                    if certs.is_empty() {
                        anyhow::bail!("ca_file {}: no PEM certificate found", path.display());
                    }
                    for cert in certs {
                        roots
                            .add(cert)
                            .with_context(|| format!("ca_file {}: a certificate is not a CA", path.display()))?;
                    }
                    roots
                }
                None => {
                    let mut roots = rustls::RootCertStore::empty();
                    let found = rustls_native_certs::load_native_certs();
                    let (added, _) = roots.add_parsable_certificates(found.certs);
                    if added == 0 {
                        anyhow::bail!("no system CA certificate found for {}; set ca_file", config.url);
                    }
                    roots
                }
            };
            let tls_config =
                rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                    .with_safe_default_protocol_versions()
                    .context("TLS with the ring provider")?
                    .with_root_certificates(roots)
                    .with_no_client_auth();
            let name =
                ServerName::try_from(host.clone()).with_context(|| format!("{host:?} is not a TLS server name"))?;
            Some((tokio_rustls::TlsConnector::from(Arc::new(tls_config)), name))
        } else {
            None
        };
        Ok(Self { config, host, port, tls, runtime: None })
    }

    /// Runs `work` on the thread's runtime.
    fn block_on<T>(
        &mut self,
        work: impl FnOnce(&Self) -> std::pin::Pin<Box<dyn Future<Output = T> + '_>>,
    ) -> Result<T, String> {
        if self.runtime.is_none() {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
            self.runtime = Some(runtime.map_err(|e| format!("starting a runtime: {e}"))?);
        }
        let this = &*self;
        let runtime = this.runtime.as_ref().ok_or("no runtime")?;
        Ok(runtime.block_on(work(this)))
    }

    fn request(&self, body: String) -> Result<Request<String>, String> {
        let path = self.config.url.path_and_query().map_or("/", |p| p.as_str());
        let host = self.config.url.authority().map_or("", |a| a.as_str());
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(path)
            .header(HOST, host)
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .header(CONTENT_LENGTH, body.len())
            .header(USER_AGENT, concat!("ids/", env!("CARGO_PKG_VERSION")))
            .body(body)
            .map_err(|e| format!("building the request: {e}"))?;
        for (name, value) in &self.config.headers {
            request.headers_mut().insert(name.clone(), value.clone());
        }
        Ok(request)
    }

    async fn post(&self, request: Request<String>) -> Outcome {
        let tcp = match TcpStream::connect((self.host.as_str(), self.port)).await {
            Ok(tcp) => tcp,
            Err(e) => return Outcome::Error(format!("connecting to {}:{}: {e}", self.host, self.port)),
        };
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            None => exchange(tcp, request).await,
            Some((connector, name)) => match connector.connect(name.clone(), tcp).await {
                Ok(tls) => exchange(tls, request).await,
                Err(e) => Outcome::Error(format!("TLS with {}: {e}", self.host)),
            },
        }
    }
}

/// Sends one request on a fresh connection and returns the answer's status.
async fn exchange<S>(io: S, request: Request<String>) -> Outcome
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = match hyper::client::conn::http1::handshake(TokioIo::new(io)).await {
        Ok(handshake) => handshake,
        Err(e) => return Outcome::Error(format!("HTTP handshake: {e}")),
    };
    let driver = tokio::spawn(connection);
    let outcome = match sender.send_request(request).await {
        Ok(response) => Outcome::Status(response.status()),
        Err(e) => Outcome::Error(format!("sending: {e}")),
    };
    driver.abort();
    outcome
}

impl Deliver for Webhook {
    fn deliver(&mut self, alert: &Alert) -> Result<(), Failure> {
        let body = serde_json::to_string(alert).map_err(|e| Failure::Permanent(format!("encoding: {e}")))?;
        let request = self.request(body).map_err(Failure::Permanent)?;
        let timeout = self.config.timeout;
        let outcome = self
            .block_on(|this| {
                Box::pin(async move {
                    tokio::time::timeout(timeout, this.post(request))
                        .await
                        .unwrap_or_else(|_| Outcome::Error(format!("no answer within {timeout:?}")))
                })
            })
            .map_err(Failure::Retry)?;
        match outcome {
            Outcome::Status(status) if status.is_success() => Ok(()),
            Outcome::Status(status) if retried(status) => Err(Failure::Retry(format!("answered {status}"))),
            Outcome::Status(status) => Err(Failure::Permanent(format!("answered {status}"))),
            Outcome::Error(e) => Err(Failure::Retry(e)),
        }
    }

    fn check(&mut self) -> Result<(), String> {
        let timeout = self.config.timeout;
        self.block_on(|this| {
            Box::pin(async move {
                let address = (this.host.as_str(), this.port);
                match tokio::time::timeout(timeout, TcpStream::connect(address)).await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => Err(format!("connecting to {}:{}: {e}", this.host, this.port)),
                    Err(_) => Err(format!("connecting to {}:{}: no answer within {timeout:?}", this.host, this.port)),
                }
            })
        })?
    }

    fn describe(&self) -> String {
        self.config.url.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_errors_timeouts_and_throttling_are_retried_other_refusals_are_not() {
        for code in [500, 502, 503, 408, 429] {
            assert!(retried(StatusCode::from_u16(code).unwrap()), "{code}");
        }
        for code in [400, 401, 403, 404, 413, 301] {
            assert!(!retried(StatusCode::from_u16(code).unwrap()), "{code}");
        }
    }
}
