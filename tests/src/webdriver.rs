//! A small W3C WebDriver client for the console's browser test: a real headless Chromium driven
//! through Debian's `chromedriver`, spoken to in plain HTTP/1.1 on loopback, one request per
//! connection. Only the commands the tests use: navigation, elements by CSS selector, keys, clicks,
//! text, attributes, scripts and screenshots.
//!
//! Everything it starts (chromedriver, Chromium and Chromium's helpers) carries an environment
//! entry of its own and is killed on drop, also when a test panics.
use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};

use crate::Scratch;
use crate::service_process::{free_loopback_ports, processes_with_env, signal, stop_group, tail_of, wait_bounded};

pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
pub const CHROMIUM: &str = "/usr/bin/chromium";
/// The key under which WebDriver returns an element reference (W3C "web element identifier").
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";
/// chromedriver answers `/status` within a second here; Chromium's start is in the session request.
const DRIVER_READY: Duration = Duration::from_secs(20);
/// The longest one command may take: a navigation waits for the page's load (capped at 30 s by
/// the session's own `pageLoad` timeout below), a session's creation for Chromium's start.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// How often `wait_for` looks again.
const POLL: Duration = Duration::from_millis(50);

/// An error WebDriver answered with (`error` is its code: "no such element",
/// "stale element reference"...), or "io" when the driver could not be reached.
#[derive(Debug, Clone)]
pub struct WebDriverError {
    pub error: String,
    pub message: String,
}

impl std::fmt::Display for WebDriverError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.error, self.message)
    }
}

/// A headless Chromium session. Element ids are the strings WebDriver gives.
pub struct Browser {
    driver: Child,
    port: u16,
    session: Option<String>,
    /// `NAME=value` in the environment of chromedriver and of everything it starts: Chromium's
    /// helper processes leave the driver's process group, so they are found by it.
    marker: String,
    log: PathBuf,
    /// Where to save what the page showed when a test panics with this browser open.
    failure_screenshot: Option<PathBuf>,
    dir: Scratch,
}

impl Browser {
    /// Starts chromedriver on a free loopback port and a headless Chromium session whose profile
    /// lives in a scratch directory of its own. `name` must be unique among the browsers of one
    /// test process.
    pub fn start(name: &str) -> Browser {
        let dir = Scratch::new("/var/tmp", &format!("browser-{name}"));
        let profile = dir.0.join("profile");
        let log = dir.0.join("chromedriver.log");
        std::fs::create_dir_all(&profile).unwrap();
        let port = free_loopback_ports(1)[0];
        let marker = format!("IDS_TEST_BROWSER={}-{name}", std::process::id());
        let (key, value) = marker.split_once('=').unwrap();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log.display()))
            .env(key, value)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own group: one signal reaches the driver and what stayed in its group.
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {CHROMEDRIVER} (Debian package chromium-driver): {e}"));
        let mut browser = Browser { driver, port, session: None, marker, log, failure_screenshot: None, dir };
        browser.wait_driver_ready();
        let capabilities = json!({
            "capabilities": {
                "alwaysMatch": {
                    "browserName": "chrome",
                    // The console's certificate is self-signed in the tests.
                    "acceptInsecureCerts": true,
                    "timeouts": {"implicit": 0, "pageLoad": 30_000, "script": 10_000},
                    "goog:chromeOptions": {
                        "binary": CHROMIUM,
                        "args": chromium_args(&profile),
                    },
                },
            },
        });
        let created = browser.request("POST", "/session", Some(&capabilities)).unwrap_or_else(|e| {
            panic!("creating a Chromium session: {e}\n{}", tail_of(&browser.log, 4000));
        });
        let id = created["sessionId"].as_str().unwrap_or_else(|| panic!("no sessionId in {created}"));
        browser.session = Some(id.to_string());
        browser
    }

    /// The scratch directory of this browser (its profile and chromedriver's log).
    pub fn dir(&self) -> &Path {
        &self.dir.0
    }

    fn wait_driver_ready(&mut self) {
        let deadline = Instant::now() + DRIVER_READY;
        loop {
            if let Ok(status) = self.request("GET", "/status", None)
                && status["ready"] == true
            {
                return;
            }
            if let Ok(Some(exit)) = self.driver.try_wait() {
                panic!("chromedriver exited during its start ({exit})\n{}", tail_of(&self.log, 4000));
            }
            assert!(Instant::now() < deadline, "chromedriver not ready within {DRIVER_READY:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// One WebDriver command: its `value`, or the error it answered with.
    pub fn request(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value, WebDriverError> {
        let io = |e: std::io::Error| WebDriverError { error: "io".into(), message: format!("{method} {path}: {e}") };
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).map_err(io)?;
        stream.set_read_timeout(Some(COMMAND_TIMEOUT)).map_err(io)?;
        stream.set_write_timeout(Some(COMMAND_TIMEOUT)).map_err(io)?;
        // POST always carries a JSON body, `{}` for commands without parameters, as the standard asks.
        let body = match (method, body) {
            (_, Some(body)) => body.to_string(),
            ("POST", None) => "{}".to_string(),
            _ => String::new(),
        };
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: {}\r\n\r\n",
            self.port,
            body.len()
        );
        stream.write_all(head.as_bytes()).map_err(io)?;
        stream.write_all(body.as_bytes()).map_err(io)?;
        let (status, payload) = read_response(&mut stream).map_err(io)?;
        let json: Value = serde_json::from_slice(&payload).map_err(|e| WebDriverError {
            error: "io".into(),
            message: format!("{method} {path}: HTTP {status}, not JSON ({e}): {}", String::from_utf8_lossy(&payload)),
        })?;
        let value = json.get("value").cloned().unwrap_or(Value::Null);
        if (200..300).contains(&status) {
            return Ok(value);
        }
        Err(WebDriverError {
            error: value["error"].as_str().unwrap_or("unknown error").to_string(),
            message: format!("{method} {path}: HTTP {status}: {}", value["message"].as_str().unwrap_or("")),
        })
    }

    /// A command of this session; panics with WebDriver's error.
    fn session_command(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        self.try_session_command(method, path, body).unwrap_or_else(|e| panic!("WebDriver: {e}"))
    }

    fn try_session_command(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value, WebDriverError> {
        let session = self.session.as_deref().expect("a session");
        self.request(method, &format!("/session/{session}{path}"), body)
    }

    /// Loads `url` and waits for its load event.
    pub fn navigate(&self, url: &str) {
        self.session_command("POST", "/url", Some(&json!({ "url": url })));
    }

    /// The URL of the page shown (after redirects).
    pub fn url(&self) -> String {
        self.session_command("GET", "/url", None).as_str().unwrap_or_default().to_string()
    }

    /// The first element matching the CSS selector `css`, if any.
    pub fn try_find(&self, css: &str) -> Option<String> {
        let body = json!({ "using": "css selector", "value": css });
        match self.try_session_command("POST", "/element", Some(&body)) {
            Ok(element) => Some(element_id(&element)),
            Err(e) if e.error == "no such element" => None,
            Err(e) => panic!("finding {css:?}: {e}"),
        }
    }

    /// The first element matching `css`; panics (naming the page) if there is none.
    pub fn find(&self, css: &str) -> String {
        self.try_find(css).unwrap_or_else(|| panic!("no {css:?} on {}:\n{}", self.url(), self.body_text()))
    }

    /// Every element matching `css`, in document order.
    pub fn find_all(&self, css: &str) -> Vec<String> {
        let body = json!({ "using": "css selector", "value": css });
        let found = self.session_command("POST", "/elements", Some(&body));
        found.as_array().map(|all| all.iter().map(element_id).collect()).unwrap_or_default()
    }

    /// Polls until an element matches `css`; panics after `timeout`, naming the page.
    pub fn wait_for(&self, css: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(element) = self.try_find(css) {
                return element;
            }
            assert!(
                Instant::now() < deadline,
                "no {css:?} within {timeout:?} on {}:\n{}",
                self.url(),
                self.body_text()
            );
            std::thread::sleep(POLL);
        }
    }

    /// Types `text` into the element (after what it holds).
    pub fn send_keys(&self, element: &str, text: &str) {
        self.session_command("POST", &format!("/element/{element}/value"), Some(&json!({ "text": text })));
    }

    /// Empties an input.
    pub fn clear(&self, element: &str) {
        self.session_command("POST", &format!("/element/{element}/clear"), None);
    }

    /// Clicks the element's centre, as a user would (it must be visible and not covered).
    pub fn click(&self, element: &str) {
        self.session_command("POST", &format!("/element/{element}/click"), None);
    }

    /// Clicks `element` and waits until another page has replaced the one it was on (a form's
    /// post, a link, a redirect), so that what is looked for next is on the new page and not on
    /// the old one about to go. Panics after `timeout`.
    pub fn click_to_new_page(&self, element: &str, timeout: Duration) {
        // A global of the old page: a new document does not have it.
        self.execute("window.idsWebDriverOldPage = true;", &[]);
        self.click(element);
        let deadline = Instant::now() + timeout;
        loop {
            // While the page is being replaced there may be no script context: an error, not a no.
            let loaded = self
                .try_execute("return window.idsWebDriverOldPage !== true && document.readyState === 'complete';", &[]);
            if loaded.is_ok_and(|loaded| loaded == json!(true)) {
                return;
            }
            assert!(Instant::now() < deadline, "no new page within {timeout:?} of the click; on {}", self.url());
            std::thread::sleep(POLL);
        }
    }

    /// The element's rendered text.
    pub fn text(&self, element: &str) -> String {
        self.session_command("GET", &format!("/element/{element}/text"), None).as_str().unwrap_or_default().to_string()
    }

    /// The element's attribute `name` as written in the document, `None` if absent.
    pub fn attribute(&self, element: &str, name: &str) -> Option<String> {
        self.session_command("GET", &format!("/element/{element}/attribute/{name}"), None).as_str().map(String::from)
    }

    /// Runs `script` as the body of a function in the page (`arguments[i]` are `args`) and returns
    /// what it returns.
    pub fn execute(&self, script: &str, args: &[Value]) -> Value {
        self.try_execute(script, args).unwrap_or_else(|e| panic!("WebDriver: {e}"))
    }

    /// [`Browser::execute`], with WebDriver's error (a page being replaced has no script context).
    pub fn try_execute(&self, script: &str, args: &[Value]) -> Result<Value, WebDriverError> {
        self.try_session_command("POST", "/execute/sync", Some(&json!({ "script": script, "args": args })))
    }

    /// The element reference to pass to [`Browser::execute`] as an argument.
    pub fn element_arg(element: &str) -> Value {
        json!({ ELEMENT_KEY: element })
    }

    /// The page's visible text, for failure messages (at most 4000 characters).
    pub fn body_text(&self) -> String {
        let script = "return document.body ? document.body.innerText : document.documentElement.outerHTML;";
        let text = self
            .try_execute(script, &[])
            .map(|v| v.as_str().unwrap_or_default().to_string())
            .unwrap_or_else(|e| format!("(page text unavailable: {e})"));
        text.chars().take(4000).collect()
    }

    /// Saves a PNG of the viewport to `path` (parent directories made as needed).
    pub fn screenshot(&self, path: &Path) {
        self.try_screenshot(path).unwrap_or_else(|e| panic!("screenshot {}: {e}", path.display()));
    }

    fn try_screenshot(&self, path: &Path) -> Result<(), String> {
        let encoded = self.try_session_command("GET", "/screenshot", None).map_err(|e| e.to_string())?;
        let png = base64::engine::general_purpose::STANDARD
            .decode(encoded.as_str().unwrap_or_default())
            .map_err(|e| format!("not base64: {e}"))?;
        if !png.starts_with(b"\x89PNG\r\n\x1a\n") {
            return Err("not a PNG".into());
        }
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| format!("creating {}: {e}", parent.display()))?;
        }
        std::fs::write(path, png).map_err(|e| format!("writing {}: {e}", path.display()))
    }

    /// If the test panics while this browser is open, the page it showed is saved to `path`.
    pub fn screenshot_on_panic(&mut self, path: &Path) {
        self.failure_screenshot = Some(path.to_path_buf());
    }

    /// The `NAME=value` environment entry of every process this browser started.
    pub fn marker(&self) -> &str {
        &self.marker
    }

    /// Pids of every process this browser started that is still alive.
    pub fn processes(&self) -> Vec<u32> {
        processes_with_env(&self.marker)
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", tail_of(&self.log, 3000));
            if let Some(path) = &self.failure_screenshot {
                // No panic here: one already unwinds.
                match self.try_screenshot(path) {
                    Ok(()) => eprintln!("the page at the panic: {}", path.display()),
                    Err(e) => eprintln!("no screenshot at the panic: {e}"),
                }
            }
        }
        // Closing the session lets Chromium exit by itself; whatever did not is killed below.
        if let Some(session) = self.session.take() {
            let _ = self.request("DELETE", &format!("/session/{session}"), None);
        }
        stop_group(&mut self.driver, libc::SIGTERM, Duration::from_secs(2));
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = processes_with_env(&self.marker);
            if left.is_empty() || Instant::now() > deadline {
                break;
            }
            for pid in left {
                signal(pid as i32, libc::SIGKILL);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        wait_bounded(&mut self.driver, Duration::from_secs(5));
    }
}

/// Chromium's switches: headless without a sandbox (the tests run as root, where Chromium refuses
/// its sandbox), a fixed viewport for comparable screenshots, and nothing that would reach beyond
/// loopback on its own (updates, sync, safe browsing, metrics; every host name but the loopback
/// ones resolves to nothing).
fn chromium_args(profile: &Path) -> Vec<String> {
    [
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1280,900",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        "--disable-default-apps",
        "--disable-domain-reliability",
        "--disable-client-side-phishing-detection",
        "--disable-features=OptimizationHints,MediaRouter,Translate",
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([format!("--user-data-dir={}", profile.display())])
    .collect()
}

fn element_id(element: &Value) -> String {
    element[ELEMENT_KEY].as_str().unwrap_or_else(|| panic!("not an element reference: {element}")).to_string()
}

/// Reads one HTTP/1.1 response: its status code and body (by Content-Length, else to the end:
/// the request asked the driver to close the connection).
fn read_response(stream: &mut TcpStream) -> std::io::Result<(u16, Vec<u8>)> {
    let mut data = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let header_end = loop {
        if let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "connection closed in the headers"));
        }
        data.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&data[..header_end]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("no status line: {head:?}")))?;
    let header = |name: &str| {
        head.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim().eq_ignore_ascii_case(name).then(|| value.trim().to_ascii_lowercase())
        })
    };
    if header("transfer-encoding").is_some_and(|te| te.contains("chunked")) {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "chunked responses are not read here"));
    }
    let mut body = data.split_off(header_end);
    match header("content-length").and_then(|len| len.parse::<usize>().ok()) {
        Some(length) => {
            while body.len() < length {
                let n = stream.read(&mut buf)?;
                if n == 0 {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "connection closed in the body",
                    ));
                }
                body.extend_from_slice(&buf[..n]);
            }
            body.truncate(length);
        }
        None => {
            stream.read_to_end(&mut body)?;
        }
    }
    Ok((status, body))
}
