//! The fleet's web console in a real browser: headless Chromium, driven through chromedriver,
//! against a real `ids collect` serving the console over TLS, fed by two real agents through a
//! real RabbitMQ broker. One of the agents' XDP ban filter is on a veth pair into a network
//! namespace of the test, so that a ban issued in the console is checked on packets.
//! They need root (the daemons, the namespace); CI runs them as root (`cargo xtask test`).
//! Screenshots of each page go to `$IDS_SCREENSHOTS`, by default target/console-screenshots/.
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use ids_tests::broker::Broker;
use ids_tests::fleet::{Agent, Collector, fleet_bans, wait_until_or};
use ids_tests::netns::{BAD4, GOOD4, HOST4, Net};
use ids_tests::service_process::{free_loopback_ports, processes_with_env};
use ids_tests::webdriver::Browser;
use ids_tests::{Scratch, ids_bin};
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
<a id="link" href="second.html" data-kind="integrity">link</a>
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

    // A link to another page: the wait ends on the new page, whose element it then finds.
    fs::write(scratch.0.join("second.html"), "<!doctype html><h1 id=second>second page</h1>").unwrap();
    browser.click_to_new_page(&link, Duration::from_secs(5));
    assert_eq!(browser.url(), format!("file://{}", scratch.0.join("second.html").display()));
    assert_eq!(browser.text(&browser.find("h1#second")), "second page");

    let running = browser.processes();
    assert!(running.len() >= 2, "chromedriver and Chromium run under the marker: {running:?}");
    drop(browser);
    let left = processes_with_env(&marker);
    assert!(left.is_empty(), "processes left after the browser was dropped: {left:?}");
}

/// The console user's password.
const PASSWORD: &str = "correct horse battery staple";
/// How long a new alert may take from the file's write to its row in the open Alerts page: the
/// agent's 200 ms quiet time, the broker, the collector's commit and the page's event stream.
const LIVE_ROW_WITHIN: Duration = Duration::from_secs(2);

/// A self-signed certificate for 127.0.0.1 and localhost, as PEM files in `dir`.
fn self_signed(dir: &Path) -> (PathBuf, PathBuf) {
    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
    let (cert, key) = (dir.join("console.pem"), dir.join("console.key"));
    fs::write(&cert, certified.cert.pem()).unwrap();
    fs::write(&key, certified.key_pair.serialize_pem()).unwrap();
    (cert, key)
}

/// The path part of a URL (`https://127.0.0.1:1234/login?x` gives `/login?x`).
fn path_of(url: &str) -> &str {
    let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    after_scheme.find('/').map_or("/", |at| &after_scheme[at..])
}

/// The rows of the Alerts page's table as the page shows them now: (id, host, kind, summary).
fn alert_rows(browser: &Browser) -> Vec<(String, String, String, String)> {
    let rows = browser.execute(
        "return Array.from(document.querySelectorAll('table#alerts tbody tr[data-alert-id]')).map(r => [
            r.getAttribute('data-alert-id'),
            (r.querySelector('td.host') || {}).textContent || '',
            (r.querySelector('td.kind') || {}).textContent || '',
            (r.querySelector('td.summary') || {}).textContent || '']);",
        &[],
    );
    rows.as_array()
        .map(|rows| {
            rows.iter()
                .map(|r| {
                    let cell = |i: usize| r[i].as_str().unwrap_or_default().trim().to_string();
                    (cell(0), cell(1), cell(2), cell(3))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The signals (exec, file, connect) whose hook is a fallback on this agent's kernel, not LSM:
/// what the console names when it calls a host degraded.
fn fallback_signals(agent: &Agent) -> Vec<String> {
    let status = agent.daemon.as_ref().expect("agent running").status();
    let signals = status["signals"].as_array().cloned().unwrap_or_default();
    signals
        .iter()
        .filter(|s| ["exec", "file", "connect"].iter().any(|name| s["signal"] == *name))
        .filter(|s| !s["hook"].as_str().unwrap_or("").starts_with("lsm:"))
        .map(|s| s["signal"].as_str().unwrap_or("").to_string())
        .collect()
}

/// Fills the login form and submits it.
fn log_in(browser: &Browser, user: &str, password: &str) {
    let form_user = browser.find("form#login input[name=user]");
    browser.clear(&form_user);
    browser.send_keys(&form_user, user);
    let form_password = browser.find("form#login input[name=password]");
    browser.clear(&form_password);
    browser.send_keys(&form_password, password);
    browser.click_to_new_page(&browser.find("button#login-submit"), Duration::from_secs(10));
}

/// Polls `check` against the page until it holds; panics after `timeout` with what the page shows.
fn wait_page(browser: &Browser, what: &str, timeout: Duration, mut check: impl FnMut(&Browser) -> bool) {
    let deadline = Instant::now() + timeout;
    while !check(browser) {
        assert!(
            Instant::now() < deadline,
            "{what}: not within {timeout:?} on {}:\n{}",
            browser.url(),
            browser.body_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn an_operator_logs_in_sees_the_fleet_follows_a_new_alert_live_and_bans_an_attacker_everywhere() {
    let began = Instant::now();
    let shots = screenshot_dir();
    // Left by an earlier failed run, it would be taken for this one's.
    let _ = fs::remove_file(shots.join("failure.png"));
    let shot = |browser: &Browser, name: &str| browser.screenshot(&shots.join(format!("{name}.png")));
    let net = Net::new("cb");
    let listener = std::net::TcpListener::bind((HOST4, 0)).unwrap();
    let to = listener.local_addr().unwrap();
    assert!(net.tcp_passes(BAD4, to), "{BAD4} must pass before the ban");

    let broker = Broker::start("console", &["collector", "host-a", "host-b"]);
    let pki = Scratch::new("/var/tmp", "console-pki");
    let (cert, key) = self_signed(&pki.0);
    let port = free_loopback_ports(1)[0];
    let web = format!(
        "\n[collect.web]\nlisten = \"127.0.0.1:{port}\"\ncert = {:?}\nkey = {:?}\n",
        cert.display().to_string(),
        key.display().to_string()
    );
    let collector = Collector::new("console", &broker, &web);
    let password_file = pki.0.join("operator.password");
    fs::write(&password_file, format!("{PASSWORD}\n")).unwrap();
    let added = Command::new(ids_bin())
        .args(["fleet", "user", "add", "operator", "--password-file"])
        .arg(&password_file)
        .arg("--config")
        .arg(&collector.config)
        .output()
        .unwrap();
    assert!(
        added.status.success(),
        "ids fleet user add: {}{}",
        String::from_utf8_lossy(&added.stdout),
        String::from_utf8_lossy(&added.stderr)
    );
    let mut a = Agent::plain("host-a", &broker, "1s", "");
    let mut b = Agent::plain_on("host-b", &broker, "1s", "", &net.host_if);
    a.start();
    b.start();
    wait_until_or(
        "both hosts known to the collector",
        Duration::from_secs(20),
        || collector.host("host-a").is_some() && collector.host("host-b").is_some(),
        || format!("hosts {}; collector log:\n{}", collector.fleet(&["hosts"]), collector.log()),
    );
    wait_until_or(
        "the console listening",
        Duration::from_secs(20),
        || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
        || collector.log(),
    );
    // An alert stored before the Alerts page opens: the page has a row and a timeline to show.
    b.write_files("console-earlier", 1);
    wait_until_or(
        "host-b's first alert stored",
        Duration::from_secs(20),
        || collector.alerts_of("host-b").iter().any(|a| a["kind"] == "integrity"),
        || collector.log(),
    );
    let fleet_ready = began.elapsed();

    let base = format!("https://127.0.0.1:{port}");
    let mut browser = Browser::start("console");
    browser.screenshot_on_panic(&shots.join("failure.png"));
    // Without a session, any page leads to the login.
    browser.navigate(&format!("{base}/alerts"));
    assert!(path_of(&browser.url()).starts_with("/login"), "not sent to the login: {}", browser.url());
    browser.wait_for("form#login", Duration::from_secs(5));
    shot(&browser, "login");
    log_in(&browser, "operator", "not the password");
    browser.wait_for("form#login", Duration::from_secs(5));
    assert!(browser.try_find("button#logout").is_none(), "a wrong password let the operator in");
    let refused = browser.text(&browser.find("p.error"));
    assert!(refused.contains("Wrong user or password"), "{refused}");
    log_in(&browser, "operator", PASSWORD);
    // Back to the page asked for before the login.
    browser.wait_for("table#alerts", Duration::from_secs(5));
    assert_eq!(path_of(&browser.url()), "/alerts", "the login leads back to the page asked for");
    browser.click_to_new_page(&browser.find("a#nav-fleet"), Duration::from_secs(10));
    browser.wait_for("table#hosts", Duration::from_secs(5));
    assert_eq!(path_of(&browser.url()), "/");

    // Fleet: both hosts, live. A host is healthy when nothing is wrong with it, degraded with
    // the reasons when something is: on kernels without LSM hooks (CI's), the fallback hooks.
    let expected: Vec<(&str, Vec<String>)> =
        [("host-a", &a), ("host-b", &b)].into_iter().map(|(host, agent)| (host, fallback_signals(agent))).collect();
    let shown = |browser: &Browser| {
        browser.execute(
            "return Array.from(document.querySelectorAll('table#hosts tr[data-host]')).map(r => [
                r.getAttribute('data-host'),
                ((r.querySelector('td.status') || {}).textContent || '').trim(),
                ((r.querySelector('td.why') || {}).textContent || '').trim()]);",
            &[],
        )
    };
    let fleet_as_expected = |browser: &Browser| {
        let rows = shown(browser);
        let rows = rows.as_array().cloned().unwrap_or_default();
        rows.len() == 2
            && expected.iter().all(|(host, fallbacks)| {
                rows.iter().any(|row| {
                    let (status, why) = (row[1].as_str().unwrap_or(""), row[2].as_str().unwrap_or(""));
                    row[0] == *host
                        && (status == "healthy" || status == "degraded")
                        && (status == "healthy") == why.is_empty()
                        && fallbacks.iter().all(|signal| why.contains(&format!("{signal} hook in fallback")))
                })
            })
    };
    wait_page(&browser, "both hosts live on the Fleet page", Duration::from_secs(15), fleet_as_expected);
    assert_eq!(browser.find_all("table#hosts tr[data-host]").len(), 2);
    shot(&browser, "fleet");

    // Alerts: a new alert shows up at the top of the open page, without a reload.
    browser.click_to_new_page(&browser.find("a#nav-alerts"), Duration::from_secs(10));
    browser.wait_for("table#alerts", Duration::from_secs(5));
    assert!(path_of(&browser.url()).starts_with("/alerts"), "{}", browser.url());
    browser.wait_for("svg#timeline", Duration::from_secs(5));
    let bars = browser.execute(
        "return Array.from(document.querySelectorAll('svg#timeline rect title')).map(t => t.textContent);",
        &[],
    );
    assert!(
        bars.as_array()
            .is_some_and(|bars| bars.iter().any(|bar| bar.as_str().is_some_and(|b| b.contains("integrity")))),
        "no integrity bar in the timeline: {bars}"
    );
    // Gone if the page is loaded again: proves the row came without navigation.
    browser.execute("window.idsSamePage = true;", &[]);
    let before = alert_rows(&browser);
    let file = a.watch.join("console-live.txt");
    let written = Instant::now();
    fs::write(&file, "written while the operator watches\n").unwrap();
    let name = file.file_name().unwrap().to_str().unwrap();
    let deadline = written + LIVE_ROW_WITHIN;
    let (row, live_after) = loop {
        let rows = alert_rows(&browser);
        if let Some(row) = rows.iter().find(|r| r.1 == "host-a" && r.3.contains(name)) {
            break (row.clone(), written.elapsed());
        }
        assert!(
            Instant::now() < deadline,
            "no row naming {name} within {LIVE_ROW_WITHIN:?} of the write; rows before {before:?}, now {rows:?}; \
             stored: {:?}",
            collector.alerts_of("host-a").iter().map(|a| a["alert"]["id"].clone()).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(browser.execute("return window.idsSamePage === true;", &[]), json!(true), "the page was reloaded");
    assert_eq!(row.2, "integrity", "{row:?}");
    // Newest first, the new alerts above every one the page had, none of those lost.
    let rows = alert_rows(&browser);
    let ids: Vec<i64> = rows.iter().map(|r| r.0.parse().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "alerts not newest first: {ids:?}");
    let newest_before = before.iter().map(|r| r.0.parse::<i64>().unwrap()).max().unwrap_or(0);
    assert!(row.0.parse::<i64>().unwrap() > newest_before, "{row:?} is not newer than {before:?}");
    assert!(before.iter().all(|old| rows.contains(old)), "rows lost: before {before:?}, now {rows:?}");
    shot(&browser, "alerts");

    // One alert, from its row's link: its JSON names the file.
    browser.click_to_new_page(
        &browser.find(&format!("tr[data-alert-id=\"{}\"] td.summary a", row.0)),
        Duration::from_secs(10),
    );
    assert_eq!(path_of(&browser.url()), format!("/alerts/{}", row.0));
    let json_text = browser.text(&browser.wait_for("pre#alert-json", Duration::from_secs(5)));
    let alert: serde_json::Value =
        serde_json::from_str(&json_text).unwrap_or_else(|e| panic!("pre#alert-json is not JSON ({e}): {json_text}"));
    assert_eq!(alert["kind"], "integrity", "{alert}");
    assert!(json_text.contains(&file.display().to_string()), "{} not in {json_text}", file.display());
    shot(&browser, "alert");

    // Its host, from the alert page's link.
    browser.click_to_new_page(&browser.find("a[href=\"/hosts/host-a\"]"), Duration::from_secs(10));
    let title = browser.text(&browser.wait_for("h1", Duration::from_secs(5)));
    assert!(title.contains("host-a"), "{title}");
    shot(&browser, "host");

    // Bans: issue one with its confirmation; host-b's XDP filter drops the address.
    browser.click_to_new_page(&browser.find("a#nav-bans"), Duration::from_secs(10));
    browser.wait_for("form#ban-form", Duration::from_secs(5));
    let banned_row = format!("table#bans tr[data-net^=\"{BAD4}\"]");
    assert!(browser.try_find(&banned_row).is_none(), "{BAD4} banned before the test banned it");
    for (field, value) in [("net", BAD4), ("reason", "seen in the console test"), ("duration", "1h")] {
        let input = browser.find(&format!("form#ban-form input[name={field}]"));
        browser.clear(&input);
        browser.send_keys(&input, value);
    }
    shot(&browser, "bans");
    browser.click_to_new_page(&browser.find("button#ban-submit"), Duration::from_secs(10));
    let confirm = browser.wait_for("button#confirm-submit", Duration::from_secs(5));
    assert!(browser.body_text().contains(BAD4), "the confirmation does not name {BAD4}");
    assert!(
        collector.fleet(&["bans"])["data"].as_array().is_none_or(|bans| bans.is_empty()),
        "banned before the confirmation"
    );
    shot(&browser, "ban-confirmation");
    browser.click_to_new_page(&confirm, Duration::from_secs(10));
    let confirmed = Instant::now();
    let banned = browser.wait_for(&banned_row, Duration::from_secs(5));
    assert!(browser.text(&banned).contains("seen in the console test"), "{}", browser.text(&banned));
    assert_eq!(path_of(&browser.url()), "/bans");
    wait_until_or(
        "host-b dropping the console-banned address",
        Duration::from_secs(5),
        || !net.tcp_passes(BAD4, to),
        || format!("host-b's fleet bans {:?}; collector log:\n{}", fleet_bans(&b), collector.log()),
    );
    let dropped_after = confirmed.elapsed();
    assert!(net.tcp_passes(GOOD4, to), "{GOOD4} is not banned");
    // The same ban as the command line lists it, issued in the operator's name.
    let listed = collector.fleet(&["bans"])["data"].as_array().cloned().unwrap_or_default();
    assert!(
        listed.len() == 1
            && listed[0]["net"].as_str().is_some_and(|net| net.starts_with(BAD4))
            && listed[0]["reason"] == "seen in the console test"
            && listed[0]["origin"].as_str().is_some_and(|origin| origin.contains("operator")),
        "{listed:?}"
    );
    // The Bans page names the hosts that applied it (from their reports), once they have.
    let applied_by = |browser: &Browser| {
        std::thread::sleep(Duration::from_millis(200));
        browser.navigate(&format!("{base}/bans"));
        browser.try_find(&format!("{banned_row} td.applied")).map(|cell| browser.text(&cell)).unwrap_or_default()
    };
    wait_page(&browser, "both hosts named as having applied the ban", Duration::from_secs(15), |browser| {
        let applied = applied_by(browser);
        applied.contains("host-a") && applied.contains("host-b")
    });
    shot(&browser, "bans-applied");

    // Logging out ends the session.
    browser.click_to_new_page(&browser.find("button#logout"), Duration::from_secs(10));
    browser.wait_for("form#login", Duration::from_secs(5));
    browser.navigate(&format!("{base}/"));
    assert!(path_of(&browser.url()).starts_with("/login"), "still logged in: {}", browser.url());
    drop(browser);
    a.stop();
    b.stop();
    eprintln!(
        "console test: fleet ready after {fleet_ready:?}; live row {live_after:?} after the write; \
         drops {dropped_after:?} after the confirmation; {:?} in all; screenshots in {}",
        began.elapsed(),
        shots.display()
    );
}
