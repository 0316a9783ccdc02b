//! The Prometheus endpoint (`[metrics] listen`): `GET /metrics` in the text exposition format
//! 0.0.4. The figures are those of `ids status`: each scrape sends `Request::Status` on the
//! control socket's request channel, so the daemon answers it in its main loop like any other
//! status request and nothing else is threaded through it.
pub(crate) mod config;
mod render;
mod serve;

pub use self::config::MetricsConfig;
pub(crate) use self::serve::{bind, serve};
