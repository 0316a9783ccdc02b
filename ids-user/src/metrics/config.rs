//! `[metrics]`: where the Prometheus endpoint listens. Absent: no endpoint.
use std::net::SocketAddr;

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMetrics {
    listen: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MetricsConfig {
    /// `ADDRESS:PORT` of the HTTP listener serving `GET /metrics`.
    pub listen: SocketAddr,
}

/// The key that is wrong and why.
pub(crate) fn validate(raw: RawMetrics) -> Result<MetricsConfig, (&'static str, String)> {
    let listen = raw.listen.parse::<SocketAddr>().map_err(|_| {
        (
            "metrics.listen",
            format!(
                "{:?} is not a socket address (ADDRESS:PORT, e.g. \"127.0.0.1:9464\" or \"[::1]:9464\")",
                raw.listen
            ),
        )
    })?;
    Ok(MetricsConfig { listen })
}
