//! Live updates: `GET /events` is a Server-Sent Events stream of `alert` events (each stored
//! alert, as `/api/alerts` shows it) and `host` events (a host whose health changed). One poller
//! reads the database for every open stream, and only while one is open: new alerts every
//! half second, host health every two. A page passes the newest alert id it shows (`?after=ID`),
//! so an alert stored between the page and the stream is sent too, and none twice.
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use hyper::Response;
use hyper::body::Bytes;
use hyper::header::{self, HeaderValue};
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};

use super::views::{self, alert_json};
use super::{Body, Console, WebRequest};
use crate::fleet::central::AlertFilter;

const ALERT_POLL: Duration = Duration::from_millis(500);
/// Host health is looked at every this many alert polls.
const HOST_POLL_EVERY: u32 = 4;
/// Alerts read per poll; more wait for the next poll.
const ALERTS_PER_POLL: usize = 500;
/// A comment line this often keeps proxies and browsers from closing an idle stream.
const KEEPALIVE: Duration = Duration::from_secs(15);
/// Events a slow stream may fall behind before it catches up from the database.
const HUB_CAPACITY: usize = 1024;

#[derive(Debug, Clone)]
pub(crate) enum LiveEvent {
    Alert { id: i64, data: Value },
    Host(Value),
}

pub(crate) struct Hub {
    events: broadcast::Sender<LiveEvent>,
}

impl Hub {
    pub(crate) fn new() -> Self {
        Self { events: broadcast::channel(HUB_CAPACITY).0 }
    }
}

/// The poller: while a stream is open, reads new alerts and host health and broadcasts them.
pub(crate) async fn poll(console: Arc<Console>) {
    let mut last_id: Option<i64> = None;
    let mut health: BTreeMap<String, (&'static str, Vec<String>)> = BTreeMap::new();
    let mut round = 0u32;
    loop {
        tokio::time::sleep(ALERT_POLL).await;
        if console.live.events.receiver_count() == 0 {
            // Nobody watches: start from the newest alert when somebody does.
            last_id = None;
            continue;
        }
        let after = last_id;
        let polled = console
            .storage
            .call(move |store| match after {
                None => Ok((store.newest_alert_id()?, Vec::new())),
                Some(after) => {
                    let filter =
                        AlertFilter { after_id: Some(after), limit: ALERTS_PER_POLL, ..AlertFilter::default() };
                    let records = store.alerts(&filter)?;
                    Ok((records.last().map_or(after, |r| r.id), records))
                }
            })
            .await;
        match polled {
            Ok((newest, records)) => {
                last_id = Some(newest);
                let now = SystemTime::now();
                for record in &records {
                    let _ = console.live.events.send(LiveEvent::Alert { id: record.id, data: alert_json(record, now) });
                }
            }
            Err(error) => tracing::warn!("console live updates: {}", crate::error_text::one_line(error.as_ref())),
        }
        round = round.wrapping_add(1);
        if round.is_multiple_of(HOST_POLL_EVERY) {
            let now = SystemTime::now();
            match console.storage.call(move |store| views::host_views(store, now)).await {
                Ok(hosts) => {
                    // The first look only learns the fleet's state: the pages show it already.
                    let first_look = health.is_empty();
                    for host in hosts {
                        let state = (host.health, host.problems.clone());
                        if health.get(&host.record.host) != Some(&state) {
                            health.insert(host.record.host.clone(), state);
                            if !first_look {
                                let data = json!({
                                    "host": host.record.host,
                                    "hostname": host.record.hostname,
                                    "health": host.health,
                                    "problems": host.problems,
                                    "last_seen": host.record.last_seen,
                                });
                                let _ = console.live.events.send(LiveEvent::Host(data));
                            }
                        }
                    }
                }
                Err(error) => tracing::warn!("console live updates: {}", crate::error_text::one_line(error.as_ref())),
            }
        }
    }
}

fn frame(event: &str, id: Option<i64>, data: &Value) -> Bytes {
    let id = id.map(|id| format!("id: {id}\n")).unwrap_or_default();
    Bytes::from(format!("event: {event}\n{id}data: {data}\n\n"))
}

/// `GET /events[?after=ID]`.
pub(crate) fn events(console: &Arc<Console>, request: &WebRequest) -> Response<Body> {
    let after = request
        .param("after")
        .or_else(|| request.header(header::HeaderName::from_static("last-event-id")))
        .and_then(|id| id.parse::<i64>().ok());
    let (chunks, body) = mpsc::channel::<Bytes>(64);
    // Subscribed before the catch-up is read: nothing falls between the two.
    let mut events = console.live.events.subscribe();
    let console = console.clone();
    tokio::spawn(async move {
        if chunks.send(Bytes::from_static(b"retry: 2000\n\n")).await.is_err() {
            return;
        }
        let mut sent = after.unwrap_or(i64::MAX);
        if let Some(after) = after
            && !catch_up(&console, &chunks, after, &mut sent).await
        {
            return;
        }
        let mut keepalive = tokio::time::interval(KEEPALIVE);
        keepalive.tick().await;
        loop {
            let chunk = tokio::select! {
                _ = keepalive.tick() => Bytes::from_static(b": keepalive\n\n"),
                event = events.recv() => match event {
                    Ok(LiveEvent::Alert { id, data }) => {
                        if sent != i64::MAX && id <= sent {
                            continue;
                        }
                        sent = id;
                        frame("alert", Some(id), &data)
                    }
                    Ok(LiveEvent::Host(data)) => frame("host", None, &data),
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        if sent != i64::MAX && !catch_up(&console, &chunks, sent, &mut sent).await {
                            return;
                        }
                        continue;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            };
            if chunks.send(chunk).await.is_err() {
                return;
            }
        }
    });
    let mut response = Response::new(Body::Stream(body));
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    response
}

/// Sends the alerts stored after `after` from the database; false when the client is gone.
async fn catch_up(console: &Arc<Console>, chunks: &mpsc::Sender<Bytes>, after: i64, sent: &mut i64) -> bool {
    let filter = AlertFilter { after_id: Some(after), limit: ALERTS_PER_POLL, ..AlertFilter::default() };
    let records = match console.storage.call(move |store| store.alerts(&filter)).await {
        Ok(records) => records,
        Err(error) => {
            tracing::warn!("console live updates: {}", crate::error_text::one_line(error.as_ref()));
            return true;
        }
    };
    let now = SystemTime::now();
    *sent = after;
    for record in &records {
        if chunks.send(frame("alert", Some(record.id), &alert_json(record, now))).await.is_err() {
            return false;
        }
        *sent = record.id;
    }
    true
}
