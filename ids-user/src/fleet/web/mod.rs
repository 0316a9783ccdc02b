//! The fleet console `ids collect` serves (`[collect.web]`, docs/console.md): server-rendered
//! pages (Fleet, Alerts, one alert, Host, Bans), a JSON API under `/api/` (the same data, for
//! scripts and SIEM pulls, with a bearer token) and live updates as Server-Sent Events.
//!
//! Server-rendered HTML with one small script (live rows, nothing else) keeps the front end to
//! two embedded files and no build step; every value reaches a page through [`html::esc`] and a
//! Content-Security-Policy allows only the console's own script and style.
//!
//! The console reads and writes the central database on a storage thread of its own, so a slow
//! page never holds up the collector's commits; a ban made here is recorded in `fleet_bans`
//! (the outbox) and the collector publishes it within a second.
mod api;
mod auth;
mod html;
mod live;
mod pages;
mod views;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::Context as _;
use hyper::body::{Bytes, Frame, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc};
use tracing::{debug, info, warn};

use super::collector::Storage;
use super::config::{CentralDatabase, WebConfig};

pub(crate) use self::auth::{hash_password, new_token, sha256_hex};

/// How long a client has to send a request head.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// A TLS handshake that takes longer is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once (a browser keeps a few, one of them for live updates).
const MAX_CONNECTIONS: usize = 256;
/// How long a client has to send its request body: one that trickles it holds a connection.
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest request body read (a login or ban form, an API ban).
const MAX_BODY: usize = 64 * 1024;

/// The console's shared state.
pub(crate) struct Console {
    storage: Storage,
    session_ttl: Duration,
    /// Cookies carry `Secure` unless served over plain HTTP on loopback.
    secure_cookies: bool,
    throttle: std::sync::Mutex<auth::Throttle>,
    live: live::Hub,
}

/// The running console: stops serving when dropped.
pub(crate) struct Running {
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Binds the console's address (a port already taken stops `ids collect` from starting) and
/// serves it from tasks of the current runtime.
pub(crate) async fn start(config: &WebConfig, database: &CentralDatabase) -> anyhow::Result<Running> {
    let tls = match &config.tls {
        Some(files) => {
            let (server, client_certificates) = crate::tinyids::tls::server_config_with(files, true)
                .context("[collect.web]: loading the console's certificate")?;
            Some((tokio_rustls::TlsAcceptor::from(server), client_certificates))
        }
        None => None,
    };
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("[collect.web]: binding the console on {}", config.listen))?;
    let storage = Storage::start(database.clone()).context("[collect.web]: opening the central database")?;
    let console = Arc::new(Console {
        storage,
        session_ttl: config.session_ttl,
        secure_cookies: config.tls.is_some() || !config.listen.ip().is_loopback(),
        throttle: std::sync::Mutex::new(auth::Throttle::default()),
        live: live::Hub::new(),
    });
    let scheme = if tls.is_some() { "https" } else { "http" };
    info!(listen = %config.listen, "console at {scheme}://{}/", config.listen);
    let poller = tokio::spawn(live::poll(console.clone()));
    let server = tokio::spawn(accept_loop(listener, tls.map(|(acceptor, _)| acceptor), console));
    Ok(Running { tasks: vec![poller, server] })
}

async fn accept_loop(listener: TcpListener, tls: Option<tokio_rustls::TlsAcceptor>, console: Arc<Console>) {
    let places = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut pause = Duration::from_millis(10);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => {
                pause = Duration::from_millis(10);
                accepted
            }
            Err(e) => {
                warn!(error = %e, "console: accept failed; retrying in {} ms", pause.as_millis());
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let Ok(place) = places.clone().try_acquire_owned() else {
            debug!(%peer, "console: too many connections; closing this one");
            continue;
        };
        let console = console.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                Some(acceptor) => match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => {
                        let certificate = stream
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|chain| chain.first())
                            .map(|cert| crate::integrity::hex(&crate::tinyids::tls::fingerprint(cert)));
                        serve_connection(stream, peer, certificate, console).await;
                    }
                    Ok(Err(e)) => debug!(%peer, error = %e, "console: TLS handshake failed"),
                    Err(_) => debug!(%peer, "console: TLS handshake timed out"),
                },
                None => serve_connection(stream, peer, None, console).await,
            }
            drop(place);
        });
    }
}

async fn serve_connection<S>(stream: S, peer: SocketAddr, certificate: Option<String>, console: Arc<Console>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let connection =
        http1::Builder::new().timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT).serve_connection(
            TokioIo::new(stream),
            service_fn(move |request| {
                let console = console.clone();
                let certificate = certificate.clone();
                async move { Ok::<_, Infallible>(handle(&console, peer, certificate, request).await) }
            }),
        );
    if let Err(e) = connection.await {
        debug!(%peer, error = %e, "console connection");
    }
}

/// A response body: whole, or a stream of chunks (live updates, exports) that ends when its
/// sender is dropped.
pub(crate) enum Body {
    Full(Option<Bytes>),
    Stream(mpsc::Receiver<Bytes>),
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            Body::Full(bytes) => Poll::Ready(bytes.take().map(|bytes| Ok(Frame::data(bytes)))),
            Body::Stream(chunks) => chunks.poll_recv(cx).map(|chunk| chunk.map(|bytes| Ok(Frame::data(bytes)))),
        }
    }
}

impl From<String> for Body {
    fn from(text: String) -> Self {
        Body::Full(Some(Bytes::from(text)))
    }
}

/// A request as the handlers see it: method, path, query, cookies, form body.
pub(crate) struct WebRequest {
    pub(crate) method: Method,
    pub(crate) path: String,
    pub(crate) query: Vec<(String, String)>,
    pub(crate) headers: hyper::HeaderMap,
    pub(crate) peer: SocketAddr,
    pub(crate) certificate: Option<String>,
    pub(crate) body: Bytes,
}

impl WebRequest {
    pub(crate) fn param(&self, name: &str) -> Option<&str> {
        self.query.iter().find(|(key, _)| key == name).map(|(_, value)| value.as_str()).filter(|v| !v.is_empty())
    }

    pub(crate) fn header(&self, name: header::HeaderName) -> Option<&str> {
        self.headers.get(name).and_then(|value| value.to_str().ok())
    }

    pub(crate) fn cookie(&self, name: &str) -> Option<&str> {
        self.headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(key, _)| *key == name)
            .map(|(_, value)| value)
    }

    /// The body's form fields (`application/x-www-form-urlencoded`).
    pub(crate) fn form(&self) -> Vec<(String, String)> {
        form_urlencoded::parse(&self.body).into_owned().collect()
    }
}

/// The value of `name` among form or query fields, empty treated as absent.
pub(crate) fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields.iter().find(|(key, _)| key == name).map(|(_, value)| value.trim()).filter(|v| !v.is_empty())
}

async fn handle(
    console: &Arc<Console>,
    peer: SocketAddr,
    certificate: Option<String>,
    request: Request<Incoming>,
) -> Response<Body> {
    let (parts, body) = request.into_parts();
    let body = match tokio::time::timeout(BODY_READ_TIMEOUT, read_body(body)).await {
        Ok(Ok(body)) => body,
        Ok(Err(why)) => return text(StatusCode::PAYLOAD_TOO_LARGE, why),
        Err(_) => return text(StatusCode::REQUEST_TIMEOUT, "the request body did not arrive in time\n".into()),
    };
    let query =
        parts.uri.query().map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect()).unwrap_or_default();
    let request = WebRequest {
        method: parts.method,
        path: parts.uri.path().to_string(),
        query,
        headers: parts.headers,
        peer,
        certificate,
        body,
    };
    let mut response = route(console, &request).await;
    secure_headers(response.headers_mut());
    response
}

/// Reads a request body of at most [`MAX_BODY`] bytes.
async fn read_body(mut body: Incoming) -> Result<Bytes, String> {
    use hyper::body::Body as _;
    let mut collected = Vec::new();
    while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
        let frame = frame.map_err(|e| format!("reading the request body: {e}\n"))?;
        if let Some(data) = frame.data_ref() {
            if collected.len() + data.len() > MAX_BODY {
                return Err(format!("request body larger than {MAX_BODY} bytes\n"));
            }
            collected.extend_from_slice(data);
        }
    }
    Ok(Bytes::from(collected))
}

async fn route(console: &Arc<Console>, request: &WebRequest) -> Response<Body> {
    let segments: Vec<&str> = request.path.trim_start_matches('/').split('/').collect();
    let method = &request.method;
    // Reachable without logging in: the login itself and the two static files it uses.
    match (method, segments.as_slice()) {
        (&Method::GET, ["login"]) => return pages::login_page(console, request, None).await,
        (&Method::POST, ["login"]) => return auth::login(console, request).await,
        (&Method::GET, ["static", name]) => return html::asset(name),
        _ => {}
    }
    let is_api = segments.first() == Some(&"api") || segments.first() == Some(&"events");
    let identity = match auth::identify(console, request, is_api).await {
        Ok(Some(identity)) => identity,
        Ok(None) if is_api => return auth::unauthorized(),
        Ok(None) => return auth::to_login(request),
        Err(error) => return server_error(&error),
    };
    if method == Method::POST && !auth::csrf_ok(&identity, request) {
        return text(StatusCode::FORBIDDEN, "missing or wrong CSRF token: reload the page and try again\n".into());
    }
    let mut response = match (method, segments.as_slice()) {
        (&Method::POST, ["logout"]) => auth::logout(console, request).await,
        (&Method::GET, [""]) => pages::fleet(console, &identity).await,
        (&Method::GET, ["alerts"]) => pages::alerts(console, &identity, request).await,
        (&Method::GET, ["alerts", id]) => pages::alert(console, &identity, id).await,
        (&Method::GET, ["hosts", host]) => pages::host(console, &identity, host).await,
        (&Method::GET, ["bans"]) => pages::bans(console, &identity, None).await,
        (&Method::POST, ["bans", "confirm"]) => pages::confirm_ban(console, &identity, request).await,
        (&Method::POST, ["bans"]) => pages::ban(console, &identity, request).await,
        (&Method::POST, ["bans", "unban", "confirm"]) => pages::confirm_unban(&identity, request),
        (&Method::POST, ["bans", "unban"]) => pages::unban(console, &identity, request).await,
        (&Method::GET, ["events"]) => live::events(console, request),
        (_, ["api", rest @ ..]) => api::route(console, &identity, request, rest).await,
        (&Method::GET | &Method::POST, _) => not_found(is_api),
        _ => text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n".into()),
    };
    if let Some(cookie) = identity.new_cookie.as_ref()
        && let Ok(value) = HeaderValue::from_str(cookie)
    {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    response
}

/// Headers every response carries: no framing, no sniffing, no referrer to other sites, only the console's
/// own script and style, and nothing cached (pages hold alerts).
fn secure_headers(headers: &mut hyper::HeaderMap) {
    let set = |headers: &mut hyper::HeaderMap, name: &'static str, value: &'static str| {
        headers.entry(name).or_insert(HeaderValue::from_static(value));
    };
    set(
        headers,
        "content-security-policy",
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; \
         form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    );
    set(headers, "x-content-type-options", "nosniff");
    // Not `no-referrer`: under it a browser sends `Origin: null` with the console's own forms,
    // which the origin check must refuse. `same-origin` still sends nothing to other sites.
    set(headers, "referrer-policy", "same-origin");
    set(headers, "x-frame-options", "DENY");
    set(headers, "cache-control", "no-store");
}

pub(crate) fn text(code: StatusCode, body: String) -> Response<Body> {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = code;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

pub(crate) fn json(code: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let mut response = Response::new(Body::from(value.to_string()));
    *response.status_mut() = code;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

pub(crate) fn redirect(to: &str) -> Response<Body> {
    let mut response = Response::new(Body::Full(None));
    *response.status_mut() = StatusCode::SEE_OTHER;
    if let Ok(value) = HeaderValue::from_str(to) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

fn not_found(is_api: bool) -> Response<Body> {
    if is_api {
        json(StatusCode::NOT_FOUND, &serde_json::json!({"ok": false, "error": "no such API route"}))
    } else {
        text(StatusCode::NOT_FOUND, "not found\n".into())
    }
}

/// A database failure: logged, and answered without its details.
pub(crate) fn server_error(error: &anyhow::Error) -> Response<Body> {
    warn!("console: {}", crate::error_text::one_line(error.as_ref()));
    text(StatusCode::SERVICE_UNAVAILABLE, "the central database did not answer; try again\n".into())
}
