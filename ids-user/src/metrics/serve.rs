//! The HTTP side of the endpoint: hyper's HTTP/1.1 server on a tokio listener, one connection per
//! task, each bounded in size and time so that a slow or hostile client holds nothing for long.
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use hyper::body::Incoming;
use hyper::header::{ALLOW, CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tracing::{debug, warn};

use super::render::{CONTENT_TYPE as EXPOSITION, render};
use crate::control::{Answer, Reply, Request, StatusAnswer};

/// How long a client has to send its request head; one that sends nothing is closed after it.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// A connection's whole life: request, status answer and response. A client that does not read
/// its response cannot hold its task beyond it.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a scrape waits for the daemon's status answer before it answers 503.
const STATUS_TIMEOUT: Duration = Duration::from_secs(5);
/// hyper's read buffer, and so the largest request head accepted (hyper's own minimum); a longer
/// one is refused with 431. A scrape's request is a few hundred bytes.
const MAX_REQUEST_HEAD: usize = 8192;
/// Connections served at once; one more is closed as soon as it is accepted, so that clients
/// cannot take every descriptor of the daemon.
const MAX_CONNECTIONS: usize = 32;
/// The one path served.
const PATH: &str = "/metrics";

/// Binds the endpoint's listener; a port already taken stops the daemon's start.
pub(crate) async fn bind(listen: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(listen).await.with_context(|| format!("binding the metrics endpoint on {listen}"))
}

/// Accepts connections and serves them until stop. Each scrape asks the daemon for its status on
/// `requests`, the channel the control socket uses. A failing accept (no descriptor left, say) is
/// retried after a pause that doubles up to a second.
pub(crate) async fn serve(
    listener: TcpListener,
    requests: mpsc::Sender<(Request, Reply)>,
    stop: crate::harness::Stop,
) -> anyhow::Result<()> {
    let places = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut pause = Duration::from_millis(10);
    loop {
        let accepted = tokio::select! {
            _ = stop.stopped() => return Ok(()),
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => {
                pause = Duration::from_millis(10);
                accepted
            }
            Err(e) => {
                warn!(error = %e, retry_ms = pause.as_millis() as u64, "metrics endpoint accept failed");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        // Dropping the stream closes it: the scraper sees a failed scrape and tries again later.
        let Ok(place) = places.clone().try_acquire_owned() else { continue };
        let requests = requests.clone();
        tokio::spawn(async move {
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .max_buf_size(MAX_REQUEST_HEAD)
                // One request per connection: no idle keep-alive connection waits between scrapes.
                .keep_alive(false)
                .serve_connection(
                    TokioIo::new(stream),
                    service_fn(move |request| {
                        let requests = requests.clone();
                        async move { Ok::<_, Infallible>(respond(&request, &requests).await) }
                    }),
                );
            match tokio::time::timeout(CONNECTION_TIMEOUT, connection).await {
                Ok(Ok(())) => {}
                // Clients that time out, close early or send garbage are theirs to mind.
                Ok(Err(e)) => debug!(%peer, error = %e, "metrics connection"),
                Err(_) => debug!(%peer, "metrics connection closed after its time"),
            }
            drop(place);
        });
    }
}

/// The response to one request: the exposition for `GET`/`HEAD /metrics`, 405 for another method
/// there, 404 elsewhere, 503 when the daemon does not answer.
async fn respond(request: &hyper::Request<Incoming>, requests: &mpsc::Sender<(Request, Reply)>) -> Response<String> {
    if request.uri().path() != PATH {
        return plain(StatusCode::NOT_FOUND, format!("not found; metrics are at {PATH}\n"));
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n".into());
        response.headers_mut().insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    match status(requests).await {
        Ok(status) => {
            let mut response = Response::new(render(&status));
            response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(EXPOSITION));
            response
        }
        Err(why) => plain(StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
    }
}

/// Asks the daemon's main loop for `ids status`'s answer, as the control socket does.
async fn status(requests: &mpsc::Sender<(Request, Reply)>) -> Result<StatusAnswer, String> {
    let asked = async {
        let (reply, answer) = oneshot::channel();
        requests.send((Request::Status, reply)).await.map_err(|_| "the daemon is shutting down".to_string())?;
        answer.await.map_err(|_| "the daemon dropped the request".to_string())
    };
    let value = tokio::time::timeout(STATUS_TIMEOUT, asked)
        .await
        .map_err(|_| format!("the daemon did not answer within {} s", STATUS_TIMEOUT.as_secs()))??;
    if value["ok"] != true {
        return Err(format!("the daemon refused: {}", value["error"].as_str().unwrap_or("no reason given")));
    }
    serde_json::from_value::<Answer<StatusAnswer>>(value)
        .map(|answer| answer.body)
        .map_err(|e| format!("the daemon's status has an unexpected shape: {e}"))
}

fn plain(code: StatusCode, text: String) -> Response<String> {
    let mut response = Response::new(text);
    *response.status_mut() = code;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}
