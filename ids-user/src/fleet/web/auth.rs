//! Who is asking: a session cookie (after a password login, or opened by a client certificate
//! the console's CA signed), or, under `/api/`, a bearer token. Sessions and tokens are stored
//! by the SHA-256 of their secret. Every state-changing request of a session carries its CSRF
//! token (form field `csrf` or header `X-CSRF-Token`) and, when the browser sends one, an
//! `Origin` of the console itself. Failed logins are throttled per user and per address.
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode};
use password_hash::rand_core::{OsRng, RngCore as _};
use sha2::Digest as _;
use subtle::ConstantTimeEq as _;

use super::{Body, Console, WebRequest, field, redirect};
use crate::fleet::central::rfc3339;

pub(crate) const SESSION_COOKIE: &str = "ids_session";
/// Failed logins allowed per user and per address before they are throttled.
const FREE_FAILURES: u32 = 5;
/// The first lock after them; it doubles with each further failure, up to the longest.
const FIRST_LOCK: Duration = Duration::from_secs(30);
const LONGEST_LOCK: Duration = Duration::from_secs(15 * 60);
/// Failures older than this are forgotten.
const FORGET_AFTER: Duration = Duration::from_secs(15 * 60);

/// Who a request is from.
pub(crate) struct Identity {
    /// A console user's name; `cert:<fingerprint>` for a client certificate; `token:<name>`.
    pub(crate) user: String,
    /// The session's CSRF token; `None` for a bearer token (nothing ambient to forge).
    pub(crate) csrf: Option<String>,
    /// A `Set-Cookie` to send: a client certificate just opened this session.
    pub(crate) new_cookie: Option<String>,
}

/// Failed logins, by `user:NAME` and `address:IP`.
#[derive(Default)]
pub(crate) struct Throttle {
    failures: HashMap<String, (u32, Instant)>,
}

impl Throttle {
    /// How long any of `keys` stays locked, if one is.
    fn locked_for(&self, keys: &[String], now: Instant) -> Option<Duration> {
        keys.iter()
            .filter_map(|key| self.failures.get(key))
            .filter(|(count, _)| *count >= FREE_FAILURES)
            .filter_map(|(count, last)| {
                let doublings = (count - FREE_FAILURES).min(10);
                let lock = (FIRST_LOCK * 2u32.pow(doublings)).min(LONGEST_LOCK);
                (*last + lock).checked_duration_since(now).filter(|left| !left.is_zero())
            })
            .max()
    }

    fn failed(&mut self, keys: &[String], now: Instant) {
        self.failures.retain(|_, (_, last)| now.duration_since(*last) < FORGET_AFTER);
        for key in keys {
            let entry = self.failures.entry(key.clone()).or_insert((0, now));
            entry.0 = entry.0.saturating_add(1);
            entry.1 = now;
        }
    }

    fn succeeded(&mut self, keys: &[String]) {
        for key in keys {
            self.failures.remove(key);
        }
    }
}

/// 32 random bytes, hex.
fn secret() -> String {
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    crate::integrity::hex(&bytes)
}

pub(crate) fn sha256_hex(text: &str) -> String {
    crate::integrity::hex(&sha2::Sha256::digest(text.as_bytes()).into())
}

/// A new API token's secret: what `ids fleet token add` prints once.
pub(crate) fn new_token() -> String {
    format!("ids_{}", secret())
}

/// A password's argon2id hash (PHC string), as `ids fleet user add` stores it.
pub(crate) fn hash_password(password: &str) -> anyhow::Result<String> {
    crate::tinyids::store::hash_passphrase(password).map_err(|e| anyhow::anyhow!("hashing the password: {e}"))
}

/// Identifies the request's sender, if any.
pub(crate) async fn identify(
    console: &Arc<Console>,
    request: &WebRequest,
    bearer_allowed: bool,
) -> anyhow::Result<Option<Identity>> {
    if bearer_allowed && let Some(token) = request.header(header::AUTHORIZATION).and_then(|v| v.strip_prefix("Bearer "))
    {
        let hash = sha256_hex(token.trim());
        let name = console.storage.call(move |store| store.console_token_name(&hash)).await?;
        return Ok(name.map(|name| Identity { user: format!("token:{name}"), csrf: None, new_cookie: None }));
    }
    if let Some(cookie) = request.cookie(SESSION_COOKIE) {
        let hash = sha256_hex(cookie);
        let now = rfc3339(SystemTime::now());
        if let Some(session) = console.storage.call(move |store| store.console_session(&hash, &now)).await? {
            return Ok(Some(Identity { user: session.user, csrf: Some(session.csrf), new_cookie: None }));
        }
    }
    if let Some(fingerprint) = &request.certificate {
        // The TLS layer verified the certificate against [collect.web] client_ca.
        let user = format!("cert:{}", &fingerprint[..16.min(fingerprint.len())]);
        let (cookie, csrf) = open_session(console, &user).await?;
        return Ok(Some(Identity { user, csrf: Some(csrf), new_cookie: Some(cookie) }));
    }
    Ok(None)
}

/// Opens a session for `user`: its `Set-Cookie` value and CSRF token.
async fn open_session(console: &Arc<Console>, user: &str) -> anyhow::Result<(String, String)> {
    let (id, csrf) = (secret(), secret());
    let now = SystemTime::now();
    let expires = rfc3339(now + console.session_ttl);
    let (hash, user, csrf_stored, now) = (sha256_hex(&id), user.to_string(), csrf.clone(), rfc3339(now));
    console.storage.call(move |store| store.create_console_session(&hash, &user, &csrf_stored, &now, &expires)).await?;
    Ok((session_cookie(console, &id, console.session_ttl.as_secs()), csrf))
}

fn session_cookie(console: &Console, value: &str, max_age: u64) -> String {
    let secure = if console.secure_cookies { "; Secure" } else { "" };
    format!("{SESSION_COOKIE}={value}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Strict{secure}")
}

/// Whether a browser's `Origin`, when it sends one, is the console's own.
fn same_origin(request: &WebRequest) -> bool {
    let Some(origin) = request.header(header::ORIGIN) else { return true };
    let Some(host) = request.header(header::HOST) else { return false };
    origin.split_once("://").is_some_and(|(_, authority)| authority == host)
}

/// Whether a state-changing request may go on: same origin, and the session's CSRF token.
pub(crate) fn csrf_ok(identity: &Identity, request: &WebRequest) -> bool {
    let Some(expected) = &identity.csrf else { return true };
    if !same_origin(request) {
        return false;
    }
    let form = request.form();
    let sent = request.header(header::HeaderName::from_static("x-csrf-token")).or_else(|| field(&form, "csrf"));
    sent.is_some_and(|sent| bool::from(sent.as_bytes().ct_eq(expected.as_bytes())))
}

/// `POST /login`.
pub(crate) async fn login(console: &Arc<Console>, request: &WebRequest) -> Response<Body> {
    if !same_origin(request) {
        return super::text(StatusCode::FORBIDDEN, "login from another site refused\n".into());
    }
    let form = request.form();
    let user = field(&form, "user").unwrap_or("").to_string();
    let password = form.iter().find(|(key, _)| key == "password").map(|(_, v)| v.clone()).unwrap_or_default();
    let next = field(&form, "next").filter(|next| is_local_path(next)).unwrap_or("/").to_string();
    let keys = vec![format!("user:{user}"), format!("address:{}", request.peer.ip())];
    let locked = console.throttle.lock().unwrap_or_else(|p| p.into_inner()).locked_for(&keys, Instant::now());
    if let Some(wait) = locked {
        let seconds = wait.as_secs().max(1);
        let message = format!("Too many failed logins: try again in {seconds} s.");
        let mut response = super::pages::login_page(console, request, Some(&message)).await;
        *response.status_mut() = StatusCode::TOO_MANY_REQUESTS;
        if let Ok(value) = HeaderValue::from_str(&seconds.to_string()) {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        return response;
    }
    let name = user.clone();
    let stored = match console.storage.call(move |store| store.console_user_hash(&name)).await {
        Ok(stored) => stored,
        Err(error) => return super::server_error(&error),
    };
    // An unknown user costs the same argon2 work as a wrong password.
    let verified = tokio::task::spawn_blocking(move || match stored {
        Some(hash) => crate::tinyids::store::verify_passphrase(&password, &hash),
        None => {
            let _ = crate::tinyids::store::verify_passphrase(&password, UNKNOWN_USER_HASH);
            false
        }
    })
    .await
    .unwrap_or(false);
    if !verified || user.is_empty() {
        console.throttle.lock().unwrap_or_else(|p| p.into_inner()).failed(&keys, Instant::now());
        tracing::warn!(user, address = %request.peer.ip(), "console: failed login");
        let mut response = super::pages::login_page(console, request, Some("Wrong user or password.")).await;
        *response.status_mut() = StatusCode::UNAUTHORIZED;
        return response;
    }
    console.throttle.lock().unwrap_or_else(|p| p.into_inner()).succeeded(&keys);
    match open_session(console, &user).await {
        Ok((cookie, _)) => {
            tracing::info!(user, address = %request.peer.ip(), "console: login");
            let mut response = redirect(&next);
            if let Ok(value) = HeaderValue::from_str(&cookie) {
                response.headers_mut().insert(header::SET_COOKIE, value);
            }
            response
        }
        Err(error) => super::server_error(&error),
    }
}

/// A hash of a random password, verified against when the user does not exist.
const UNKNOWN_USER_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$2fBq1ld7UV7ViNCVQ8+V0eY0CKQOMpc0GnFM5Plg0aE";

/// `POST /logout`: ends the session.
pub(crate) async fn logout(console: &Arc<Console>, request: &WebRequest) -> Response<Body> {
    if let Some(cookie) = request.cookie(SESSION_COOKIE) {
        let hash = sha256_hex(cookie);
        if let Err(error) = console.storage.call(move |store| store.delete_console_session(&hash)).await {
            return super::server_error(&error);
        }
    }
    let mut response = redirect("/login");
    if let Ok(value) = HeaderValue::from_str(&session_cookie(console, "", 0)) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

/// A path of this site (not `//host`, not a URL): where a login may send the browser next.
fn is_local_path(path: &str) -> bool {
    path.starts_with('/') && !path.starts_with("//") && !path.contains('\\') && !path.contains("://")
}

/// A page asked for without a session: to the login, coming back here after it.
pub(crate) fn to_login(request: &WebRequest) -> Response<Body> {
    if request.method != hyper::Method::GET {
        return redirect("/login");
    }
    let mut back = request.path.clone();
    if !request.query.is_empty() {
        back.push('?');
        back.push_str(&form_urlencoded::Serializer::new(String::new()).extend_pairs(&request.query).finish());
    }
    let next: String = form_urlencoded::byte_serialize(back.as_bytes()).collect();
    redirect(&format!("/login?next={next}"))
}

/// An API or live request without a session or a valid token.
pub(crate) fn unauthorized() -> Response<Body> {
    let mut response = super::json(
        StatusCode::UNAUTHORIZED,
        &serde_json::json!({"ok": false, "error": "log in, or send Authorization: Bearer TOKEN (ids fleet token add)"}),
    );
    response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"ids\""));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_logins_lock_after_five_and_the_lock_doubles() {
        let mut throttle = Throttle::default();
        let keys = vec!["user:alice".to_string()];
        let start = Instant::now();
        for _ in 0..FREE_FAILURES - 1 {
            throttle.failed(&keys, start);
        }
        assert_eq!(throttle.locked_for(&keys, start), None);
        throttle.failed(&keys, start);
        assert_eq!(throttle.locked_for(&keys, start), Some(FIRST_LOCK));
        assert_eq!(throttle.locked_for(&keys, start + FIRST_LOCK), None);
        throttle.failed(&keys, start);
        assert_eq!(throttle.locked_for(&keys, start), Some(FIRST_LOCK * 2));
        assert_eq!(throttle.locked_for(&["user:bob".to_string()], start), None);
        throttle.succeeded(&keys);
        assert_eq!(throttle.locked_for(&keys, start), None);
    }

    #[test]
    fn only_paths_of_this_site_are_followed_after_login() {
        assert!(is_local_path("/alerts?kind=detect"));
        for outside in ["//evil.example/", "https://evil.example/", "/\\evil", "alerts"] {
            assert!(!is_local_path(outside), "{outside}");
        }
    }

    #[test]
    fn the_unknown_user_hash_parses_and_matches_nothing_typed() {
        assert!(password_hash::PasswordHash::new(UNKNOWN_USER_HASH).is_ok());
        assert!(!crate::tinyids::store::verify_passphrase("", UNKNOWN_USER_HASH));
    }
}
