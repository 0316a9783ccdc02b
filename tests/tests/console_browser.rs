//! The fleet's web console in a real browser: headless Chromium, driven through chromedriver,
//! against a real `ids collect` serving the console over TLS, fed by two real agents through a
//! real RabbitMQ broker. One of the agents' XDP ban filter is on a veth pair into a network
//! namespace of the test, so that a ban issued in the console is checked on packets.
//! They need root (the daemons, the namespace); CI runs them as root (`cargo xtask test`).
//! Screenshots of each page go to `$IDS_SCREENSHOTS`, by default target/console-screenshots/.
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ids_tests::Scratch;
use ids_tests::service_process::processes_with_env;
use ids_tests::webdriver::Browser;
use serde_json::json;

/// Where the screenshots go.
fn screenshot_dir() -> PathBuf {
    std::env::var_os("IDS_SCREENSHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/console-screenshots"))
}

/// The width and height a PNG's header gives.
fn png_size(path: &Path) -> (u32, u32) {
    let png = fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n") && &png[12..16] == b"IHDR", "{} is not a PNG", path.display());
    let word = |at: usize| u32::from_be_bytes(png[at..at + 4].try_into().unwrap());
    (word(16), word(20))
}

/// The client itself, on a page of its own (no server): every command the console test relies
/// on does what it says, and dropping the browser leaves no process behind.
#[test]
fn the_webdriver_client_drives_chromium_and_leaves_nothing_running() {
    let scratch = Scratch::new("/var/tmp", "webdriver-page");
    let page = scratch.0.join("page.html");
    fs::write(
        &page,
        r##"<!doctype html><title>client check</title>
<form id="f" onsubmit="event.preventDefault(); document.getElementById('out').textContent = 'hello ' + this.user.value;">
  <input name="user" value="x"><button id="go" type="submit">Go</button>
</form>
<p id="out">nothing yet</p>
<a id="link" href="#somewhere" data-kind="integrity">link</a>
<ul id="list"><li>one</li><li>two</li><li>three</li></ul>
<script>setTimeout(() => { const p = document.createElement('p'); p.id = 'late'; p.textContent = 'arrived'; document.body.append(p); }, 700);</script>
"##,
    )
    .unwrap();
    let browser = Browser::start("client");
    let marker = browser.marker().to_string();
    let url = format!("file://{}", page.display());
    browser.navigate(&url);
    assert_eq!(browser.url(), url);
    // Not there yet: added by the page 700 ms after its load.
    assert_eq!(browser.try_find("#late"), None);
    let waited = Instant::now();
    let late = browser.wait_for("#late", Duration::from_secs(5));
    assert_eq!(browser.text(&late), "arrived");
    assert!(waited.elapsed() < Duration::from_secs(2), "wait_for took {:?}", waited.elapsed());

    let input = browser.find("input[name=user]");
    browser.clear(&input);
    browser.send_keys(&input, "console");
    browser.click(&browser.find("button#go"));
    assert_eq!(browser.text(&browser.find("#out")), "hello console");
    let link = browser.find("a#link");
    assert_eq!(browser.attribute(&link, "data-kind").as_deref(), Some("integrity"));
    assert_eq!(browser.attribute(&link, "data-none"), None);
    assert_eq!(browser.find_all("#list li").len(), 3);
    assert!(browser.find_all("#list b").is_empty());
    assert_eq!(browser.execute("return arguments[0] * 6;", &[json!(7)]), json!(42));
    assert_eq!(browser.execute("return arguments[0].textContent;", &[Browser::element_arg(&late)]), json!("arrived"));
    let shot = scratch.0.join("shots/page.png");
    browser.screenshot(&shot);
    assert_eq!(png_size(&shot).0, 1280, "the viewport is 1280 pixels wide");

    let running = browser.processes();
    assert!(running.len() >= 2, "chromedriver and Chromium run under the marker: {running:?}");
    drop(browser);
    let left = processes_with_env(&marker);
    assert!(left.is_empty(), "processes left after the browser was dropped: {left:?}");
}
