//! Connecting to the broker: the URL, the password from its file or a client certificate
//! (EXTERNAL), the CA; the same for the agent, the collector and `ids fleet`.
use std::time::Duration;

use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use lapin::uri::{AMQPUri, SASLMechanism};
use lapin::{Connection, ConnectionProperties};

use super::config::BrokerConfig;

/// How long a connection attempt may take before it counts as failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// AMQP heartbeats: a broker that stopped answering is noticed within two of these.
const AMQP_HEARTBEAT_S: u16 = 10;

/// Why the broker could not be reached; the text never holds the password.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("reading {what} {path}: {source}")]
    File { what: &'static str, path: std::path::PathBuf, source: std::io::Error },
    #[error("broker URL {url}: {message}")]
    Url { url: String, message: String },
    #[error("connecting to {url}: {source}")]
    Amqp { url: String, source: lapin::Error },
    #[error("connecting to {url}: no answer within {}s", CONNECT_TIMEOUT.as_secs())]
    Timeout { url: String },
}

impl BrokerConfig {
    /// Opens a connection named `name` (shown by `rabbitmqctl list_connections`).
    pub async fn connect(&self, name: &str) -> Result<Connection, ConnectError> {
        let mut uri: AMQPUri =
            self.url.parse().map_err(|message| ConnectError::Url { url: self.url.clone(), message })?;
        let read = |what, path: &std::path::Path| {
            std::fs::read(path).map_err(|source| ConnectError::File { what, path: path.into(), source })
        };
        match &self.password_file {
            Some(path) => {
                let text = read("password_file", path)?;
                let text = String::from_utf8_lossy(&text);
                uri.authority.userinfo.password = text.lines().next().unwrap_or("").to_string();
            }
            // A client certificate and no password: the broker takes the user from the certificate.
            None if self.tls.cert.is_some() => uri.query.auth_mechanism = Some(SASLMechanism::External),
            None => {}
        }
        uri.query.heartbeat.get_or_insert(AMQP_HEARTBEAT_S);
        uri.query.connection_timeout.get_or_insert(CONNECT_TIMEOUT.as_millis() as u64);
        let mut tls = OwnedTLSConfig::default();
        if let Some(ca) = &self.tls.ca {
            tls.cert_chain = Some(String::from_utf8_lossy(&read("tls.ca", ca)?).into_owned());
        }
        if let (Some(cert), Some(key)) = (&self.tls.cert, &self.tls.key) {
            tls.identity = Some(OwnedIdentity::PKCS8 { pem: read("tls.cert", cert)?, key: read("tls.key", key)? });
        }
        let properties = ConnectionProperties::default().with_connection_name(name.into());
        let runtime =
            lapin::runtime::default_runtime().map_err(|source| ConnectError::Amqp { url: self.url.clone(), source })?;
        let connecting = Connection::connect_uri_with_config(uri, properties, tls, runtime);
        match tokio::time::timeout(CONNECT_TIMEOUT + Duration::from_secs(1), connecting).await {
            Ok(Ok(connection)) => Ok(connection),
            Ok(Err(source)) => Err(ConnectError::Amqp { url: self.url.clone(), source }),
            Err(_) => Err(ConnectError::Timeout { url: self.url.clone() }),
        }
    }

    /// The user the broker will know this connection as: the URL's, or the certificate's
    /// common name with EXTERNAL (not known here: `None`).
    pub fn user(&self) -> Option<String> {
        if self.password_file.is_none() && self.tls.cert.is_some() {
            return None;
        }
        let uri: AMQPUri = self.url.parse().ok()?;
        Some(uri.authority.userinfo.username)
    }
}
