//! The fleet end to end: real daemons (agents) publishing to a real RabbitMQ broker, a real
//! `ids collect` storing into its database, killed and restarted in the middle of bursts.
//! They need root (the daemons); CI runs them as root (`cargo xtask test`).
use std::fs;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ids_tests::broker::Broker;
use ids_tests::fleet::{Agent, Collector, fleet_bans, wait_until, wait_until_or};
use ids_tests::netns::{BAD4, GOOD4, HOST4, Net};
use ids_tests::postgres::Postgres;
use ids_tests::{Scratch, ids_bin};
use serde_json::Value;

/// Alerts of the bursts: each new file in a watched directory is one `integrity` alert.
const BURST: i64 = 5000;

/// The sequence numbers stored for `host`'s `epoch`, sorted, duplicates kept.
fn stored_seqs(collector: &Collector, host: &str, epoch: i64) -> Vec<i64> {
    let mut seqs: Vec<i64> = collector
        .alerts_of(host)
        .iter()
        .filter(|a| a["epoch"].as_i64() == Some(epoch))
        .filter_map(|a| a["seq"].as_i64())
        .collect();
    seqs.sort_unstable();
    seqs
}

/// Waits until the agent has stopped raising alerts (its newest id unchanged for a second: the
/// rehash of the burst's last files, or a restart's scan, may still raise some) and the collector
/// holds as many; then requires exactly 1..=last, panicking with what is missing or doubled.
fn assert_all_stored_once(collector: &Collector, agent: &Agent, timeout: Duration) {
    let epoch = agent.epoch();
    let deadline = Instant::now() + timeout;
    let mut last = agent.last_seq();
    let mut unchanged_since = Instant::now();
    loop {
        let before = agent.last_seq();
        let seqs = stored_seqs(collector, &agent.host, epoch);
        let after = agent.last_seq();
        if before != last || after != before {
            last = after;
            unchanged_since = Instant::now();
        }
        let settled = unchanged_since.elapsed() >= Duration::from_secs(1) && seqs.len() as i64 >= last;
        if settled || Instant::now() > deadline {
            let expected: Vec<i64> = (1..=last).collect();
            if seqs != expected {
                let missing: Vec<i64> =
                    expected.iter().filter(|s| seqs.binary_search(s).is_err()).copied().take(20).collect();
                let doubled: Vec<i64> = seqs.windows(2).filter(|w| w[0] == w[1]).map(|w| w[0]).take(20).collect();
                panic!(
                    "{}: {} stored of 1..={last}; missing (first 20) {missing:?}; doubled {doubled:?}\ncollector log:\n{}",
                    agent.host,
                    seqs.len(),
                    collector.log()
                );
            }
            return;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn two_agents_send_alerts_of_every_kind_and_the_collector_shows_them_by_host() {
    let broker = Broker::start("kinds", &["collector", "host-a", "host-b"]);
    let collector = Collector::new("kinds", &broker, "");
    // A TinyIDS server that is not there: the daemon's CHECK of its aggregate fails, a
    // `remote_check` alert.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_port = closed.local_addr().unwrap().port();
    drop(closed);
    let servers = format!(
        "remote_check_interval = 1\n[[servers]]\nname = \"gone\"\nhost = \"127.0.0.1\"\nport = {closed_port}\n"
    );
    let mut a = Agent::plain("host-a", &broker, "1s", "");
    let mut b = Agent::plain("host-b", &broker, "1s", &servers);
    a.write_files("before", 1);
    a.start();
    b.start();
    let kinds_of = |host: &str| -> std::collections::BTreeSet<String> {
        collector.alerts_of(host).iter().filter_map(|a| a["kind"].as_str().map(String::from)).collect()
    };
    // integrity on both; remote_check on b; sensor_miss on a (a file changed while it was stopped).
    a.write_files("a", 3);
    b.write_files("b", 2);
    wait_until_or(
        "host-a's integrity alerts at the collector",
        Duration::from_secs(30),
        || kinds_of("host-a").contains("integrity"),
        || format!("kinds {:?}; host-a {}; collector log:\n{}", kinds_of("host-a"), a.fleet_status(), collector.log()),
    );
    a.stop();
    fs::write(a.watch.join("before-0"), "changed while stopped\n").unwrap();
    a.start();
    wait_until_or(
        "host-a's sensor_miss alert at the collector",
        Duration::from_secs(30),
        || kinds_of("host-a").contains("sensor_miss"),
        || format!("kinds {:?}; host-a {}; collector log:\n{}", kinds_of("host-a"), a.fleet_status(), collector.log()),
    );
    wait_until_or(
        "host-b's integrity and remote_check alerts at the collector",
        Duration::from_secs(30),
        || {
            let kinds = kinds_of("host-b");
            kinds.contains("integrity") && kinds.contains("remote_check")
        },
        || format!("kinds {:?}; host-b {}; collector log:\n{}", kinds_of("host-b"), b.fleet_status(), collector.log()),
    );
    let alerts = collector.alerts_of("host-a");
    let first = &alerts[0];
    for key in ["host", "hostname", "epoch", "seq", "time", "kind", "alert"] {
        assert!(first.get(key).is_some(), "{key} missing from {first}");
    }
    assert!(alerts.iter().all(|a| a["host"] == "host-a"));
    assert!(alerts.iter().all(|a| a["alert"]["kind"] == a["kind"]), "the alert object keeps its kind");
    let integrity = alerts.iter().find(|a| a["kind"] == "integrity").unwrap();
    assert!(integrity["alert"]["id"].as_str().unwrap().starts_with("file:"), "{integrity}");
    assert!(collector.alerts_of("host-b").iter().all(|a| a["host"] == "host-b"));
    let hosts = collector.fleet(&["hosts"])["data"].as_array().cloned().unwrap();
    for host in ["host-a", "host-b"] {
        let row = hosts.iter().find(|h| h["host"] == host).unwrap_or_else(|| panic!("{host} not in {hosts:?}"));
        assert_eq!(row["status"], "ok");
        for key in ["hostname", "first_seen", "last_seen", "last_seq", "gaps", "backlog", "aggregate"] {
            assert!(row.get(key).is_some(), "{key} missing from {row}");
        }
    }
    // `ids fleet alerts --follow` prints a new alert as it arrives.
    let mut follow = Command::new(ids_bin())
        .args(["fleet", "alerts", "--follow", "--json", "--host", "host-b", "-n", "0", "--config"])
        .arg(&collector.config)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (lines_tx, lines_rx) = std::sync::mpsc::channel::<String>();
    let stdout = follow.stdout.take().unwrap();
    std::thread::spawn(move || {
        use std::io::BufRead as _;
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    std::thread::sleep(Duration::from_millis(500));
    b.write_files("followed", 1);
    let deadline = Instant::now() + Duration::from_secs(20);
    let followed = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = lines_rx.recv_timeout(left).expect("ids fleet alerts --follow printed nothing within 20 s");
        if line.contains("followed-0") {
            break line;
        }
    };
    let _ = follow.kill();
    let _ = follow.wait();
    let followed: Value = serde_json::from_str(&followed).unwrap();
    assert_eq!(followed["ok"], true, "{followed}");
    assert!(followed["data"].as_array().unwrap().iter().all(|a| a["host"] == "host-b"), "{followed}");
    let status = a.fleet_status();
    assert_eq!(status["connected"], true, "{status}");
    assert_eq!(status["backlog"], 0, "{status}");
    assert_eq!(status["last_confirmed_seq"].as_i64(), Some(a.last_seq()), "{status}");
    a.stop();
    b.stop();
}

/// The burst scenario: a burst of [`BURST`] alerts, `disrupt` in the middle of it, then every
/// alert stored exactly once.
fn burst_survives(name: &str, disrupt: impl FnOnce(&mut Broker, &mut Agent, &mut Collector)) {
    let mut broker = Broker::start(name, &["collector", "host-a"]);
    let mut collector = Collector::new(name, &broker, "");
    let mut agent = Agent::plain("host-a", &broker, "5s", "");
    agent.start();
    agent.burst("first", BURST / 2);
    disrupt(&mut broker, &mut agent, &mut collector);
    agent.burst("second", BURST);
    assert_all_stored_once(&collector, &agent, Duration::from_secs(120));
    agent.stop();
}

#[test]
fn a_broker_killed_mid_burst_loses_no_alert_and_stores_none_twice() {
    burst_survives("brokerkill", |broker, _, _| {
        broker.kill9();
        std::thread::sleep(Duration::from_secs(1));
        broker.restart();
    });
}

#[test]
fn an_agent_killed_mid_burst_sends_the_rest_after_its_restart() {
    burst_survives("agentkill", |_, agent, _| {
        agent.kill();
        agent.start();
    });
}

#[test]
fn a_collector_killed_before_it_acks_loses_nothing() {
    burst_survives("collectkill", |_, _, collector| {
        // Killed while it holds unacknowledged deliveries: the broker redelivers them.
        std::thread::sleep(Duration::from_millis(300));
        collector.kill9();
        std::thread::sleep(Duration::from_secs(1));
        collector.start();
    });
}

#[test]
fn alerts_wait_while_the_broker_is_down_and_an_overfull_backlog_leaves_a_gap_record() {
    let mut broker = Broker::start("down", &["collector", "host-a"]);
    broker.kill9();
    let mut agent = Agent::plain("host-a", &broker, "1s", "");
    let fleet_table = fs::read_to_string(&agent.config).unwrap() + "max_backlog = 50\n";
    fs::write(&agent.config, fleet_table).unwrap();
    agent.start();
    agent.write_files("offline", 80);
    wait_until("80 alerts stored", Duration::from_secs(20), || agent.last_seq() >= 80);
    wait_until("the backlog capped at 50", Duration::from_secs(10), || agent.fleet_status()["backlog"] == 50);
    let status = agent.fleet_status();
    assert_eq!(status["connected"], false, "{status}");
    assert!(status["last_error"].as_str().is_some_and(|e| !e.is_empty()), "{status}");
    let last = agent.last_seq();
    let dropped = last - 50;
    assert_eq!(status["dropped"].as_i64(), Some(dropped), "{status}");
    broker.restart();
    let collector = Collector::new("down", &broker, "");
    wait_until("the backlog drained", Duration::from_secs(30), || agent.fleet_status()["backlog"] == 0);
    let epoch = agent.epoch();
    wait_until("the 50 kept alerts stored", Duration::from_secs(30), || {
        stored_seqs(&collector, "host-a", epoch) == ((dropped + 1)..=last).collect::<Vec<_>>()
    });
    wait_until("the gap shown by ids fleet hosts", Duration::from_secs(20), || {
        collector.host("host-a").is_some_and(|h| h["gaps"].as_i64() == Some(dropped))
    });
    agent.stop();
}

#[test]
fn a_stopped_agent_is_called_silent_and_back_when_it_returns() {
    let broker = Broker::start("silent", &["collector", "host-a"]);
    let collector = Collector::new("silent", &broker, "silent_after = \"3s\"");
    let mut agent = Agent::plain("host-a", &broker, "1s", "");
    agent.start();
    wait_until("host-a seen", Duration::from_secs(20), || {
        collector.host("host-a").is_some_and(|h| h["status"] == "ok")
    });
    agent.stop();
    let stopped = Instant::now();
    wait_until("host-a silent", Duration::from_secs(15), || {
        collector.host("host-a").is_some_and(|h| h["status"] == "silent")
    });
    assert!(stopped.elapsed() >= Duration::from_secs(2), "called silent too early: {:?}", stopped.elapsed());
    let silent = collector.fleet(&["alerts", "--kind", "host_silent"])["data"].as_array().cloned().unwrap();
    assert_eq!(silent.len(), 1, "{silent:?}");
    assert_eq!(silent[0]["host"], "host-a");
    agent.start();
    wait_until("host-a back", Duration::from_secs(20), || {
        collector.host("host-a").is_some_and(|h| h["status"] == "ok")
    });
    let back = collector.fleet(&["alerts", "--kind", "host_back"])["data"].as_array().cloned().unwrap();
    assert_eq!(back.len(), 1, "{back:?}");
    agent.stop();
}

/// Publishes raw messages with pika (Debian's python3-pika): what no agent would send.
fn publish_raw(broker: &Broker, user: &str, messages: &[(&str, &str, &str)]) {
    let script = format!(
        r#"
import pika, sys
c = pika.BlockingConnection(pika.ConnectionParameters(host="127.0.0.1", port={port}, credentials=pika.PlainCredentials("{user}", "{password}")))
ch = c.channel()
ch.confirm_delivery()
for kind, user_id, body in {messages}:
    props = pika.BasicProperties(type=kind, delivery_mode=2, user_id=user_id or None)
    ch.basic_publish("ids.alerts", kind + ".raw", body.encode(), props, mandatory=True)
c.close()
"#,
        port = broker.port(),
        password = broker.password(user),
        messages =
            serde_json::to_string(&messages.iter().map(|(k, u, b)| vec![*k, *u, *b]).collect::<Vec<_>>()).unwrap(),
    );
    let out = Command::new("/usr/bin/python3").arg("-c").arg(script).output().unwrap();
    assert!(out.status.success(), "pika publisher: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn malformed_and_forged_messages_go_to_the_dead_letter_queue_and_the_collector_keeps_going() {
    let broker = Broker::start("dead", &["collector", "host-a", "host-b"]);
    let collector = Collector::new("dead", &broker, "");
    let forged = serde_json::json!({
        "v": 1, "host": "host-a", "hostname": "x", "epoch": 1, "seq": 1,
        "time": "2026-12-05T00:00:00Z", "kind": "integrity", "alert": {"kind": "integrity"}
    })
    .to_string();
    wait_until("the collector declared its queue", Duration::from_secs(20), || {
        broker.queue_messages("ids.alerts").is_some()
    });
    // Not JSON; a message of no known type; host-b's login claiming to be host-a.
    publish_raw(
        &broker,
        "host-b",
        &[("alert", "host-b", "{not json"), ("gossip", "host-b", "{}"), ("alert", "host-b", &forged)],
    );
    wait_until("three messages dead-lettered", Duration::from_secs(20), || {
        broker.queue_messages("ids.alerts.dead") == Some(3)
    });
    assert!(collector.alerts_of("host-a").is_empty(), "a forged alert was stored");
    // The collector still takes the real agents' alerts.
    let mut agent = Agent::plain("host-a", &broker, "1s", "");
    agent.start();
    agent.write_files("after", 3);
    wait_until("host-a's alerts stored", Duration::from_secs(30), || collector.alerts_of("host-a").len() >= 3);
    agent.stop();
    let log = collector.log();
    assert!(log.contains("host-a") && log.contains("host-b"), "the refusal names both ids:\n{log}");
}

#[test]
fn an_agent_with_a_client_certificate_logs_in_by_external_over_tls() {
    let broker = Broker::start("tls", &["collector", "host-c"]);
    let collector = Collector::new("tls", &broker, "");
    let (cert, key) = broker.client_cert("host-c");
    let fleet = format!(
        "url = \"amqps://127.0.0.1:{}/%2f\"\nhost_id = \"host-c\"\nheartbeat = \"1s\"\n[fleet.tls]\nca = {:?}\ncert = {:?}\nkey = {:?}",
        broker.tls_port(),
        broker.ca_pem_path().display().to_string(),
        cert.display().to_string(),
        key.display().to_string()
    );
    let mut agent = Agent::new("host-c", &fleet, "");
    agent.start();
    agent.write_files("tls", 2);
    wait_until("host-c's alerts over TLS", Duration::from_secs(30), || collector.alerts_of("host-c").len() >= 2);
    assert_eq!(agent.fleet_status()["connected"], true);
    agent.stop();
}

#[test]
fn a_fleet_ban_reaches_an_agent_that_was_stopped_when_it_was_issued_and_expires_everywhere_at_once() {
    let net = Net::new("fl");
    let broker = Broker::start("ban", &["collector", "host-a", "host-b"]);
    let collector = Collector::new("ban", &broker, "");
    let mut a = Agent::plain("host-a", &broker, "1s", "");
    let mut b = Agent::plain_on("host-b", &broker, "1s", "", &net.host_if);
    a.start();
    let listener = std::net::TcpListener::bind((HOST4, 0)).unwrap();
    let to = listener.local_addr().unwrap();
    assert!(net.tcp_passes(BAD4, to), "{BAD4} must pass before the ban");
    let issued = collector.fleet(&["ban", BAD4, "--for", "10s", "--reason", "fleet test"]);
    assert_eq!(issued["ok"], true, "{issued}");
    wait_until("host-a applies the fleet ban", Duration::from_secs(20), || !fleet_bans(&a).is_empty());
    // host-b was not running when the ban was issued: it gets it from the snapshot at connect.
    b.start();
    wait_until("host-b applies the fleet ban", Duration::from_secs(20), || !fleet_bans(&b).is_empty());
    let (on_a, on_b) = (fleet_bans(&a), fleet_bans(&b));
    assert!(on_a[0].0.starts_with(BAD4), "{on_a:?}");
    assert_eq!(on_a, on_b, "the same ban with the same expiry on both hosts");
    assert!(!net.tcp_passes(BAD4, to), "host-b's XDP filter lets the fleet-banned {BAD4} through");
    assert!(net.tcp_passes(GOOD4, to), "{GOOD4} is not banned");
    let listed = collector.fleet(&["bans"])["data"].as_array().cloned().unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    wait_until("the ban expires on both hosts", Duration::from_secs(20), || {
        fleet_bans(&a).is_empty() && fleet_bans(&b).is_empty()
    });
    assert!(net.tcp_passes(BAD4, to), "{BAD4} still dropped after the expiry");
    // A trusted address is not banned; each host says so in an alert that reaches the collector.
    collector.fleet(&["ban", "127.0.0.9", "--for", "1h", "--reason", "trusted here"]);
    wait_until("both hosts report the refused fleet ban", Duration::from_secs(20), || {
        let refused = collector.fleet(&["alerts", "--kind", "detect"])["data"].as_array().cloned().unwrap_or_default();
        ["host-a", "host-b"].iter().all(|host| {
            refused.iter().any(|a| {
                a["host"] == *host
                    && a["alert"]["rule"] == "fleet-ban"
                    && a["alert"]["action"]["type"] == "not_banned_trusted"
            })
        })
    });
    assert!(fleet_bans(&a).is_empty(), "a trusted address was banned: {:?}", fleet_bans(&a));
    a.stop();
    b.stop();
}

#[test]
fn two_collectors_sharing_the_queue_store_each_alert_once_in_postgresql() {
    let postgres = Postgres::start("fleet");
    let broker = Broker::start("pg", &["collector", "host-a"]);
    let database = format!("database = {:?}", postgres.url());
    let first = Collector::new("pg1", &broker, &database);
    let _second = Collector::new("pg2", &broker, &database);
    let mut agent = Agent::plain("host-a", &broker, "5s", "");
    agent.start();
    agent.burst("pg", BURST);
    assert_all_stored_once(&first, &agent, Duration::from_secs(120));
    let distinct = postgres.psql("SELECT COUNT(*) = COUNT(DISTINCT (host, epoch, seq)) FROM alerts");
    assert_eq!(distinct.trim(), "t");
    agent.stop();
}

#[test]
fn an_address_alerted_on_by_enough_hosts_is_banned_fleet_wide_by_the_fleet_rule() {
    let broker = Broker::start("rule", &["collector", "host-a", "host-b"]);
    let collector = Collector::new("rule", &broker, "rule_hosts = 2\nrule_window = \"5m\"\nrule_ban_for = \"1h\"");
    let attacker = "10.77.0.9";
    let logs = Scratch::new("/var/tmp", "fleet-rule-logs");
    let mut agents: Vec<Agent> = ["host-a", "host-b"]
        .iter()
        .map(|host| {
            let log = logs.0.join(format!("auth-{host}.log"));
            fs::write(&log, "").unwrap();
            let extra = format!("[[logs]]\nkind = \"sshd\"\npath = {:?}\n", log.display().to_string());
            let mut agent = Agent::plain(host, &broker, "1s", &extra);
            agent.start();
            // Five failed logins from the attacker in this host's sshd log: a detection.
            let lines: String = (0..5)
                .map(|port| {
                    format!(
                        "Nov 21 03:33:41 {host} sshd[77]: Failed password for root from {attacker} port {port} ssh2\n"
                    )
                })
                .collect();
            fs::OpenOptions::new()
                .append(true)
                .open(&log)
                .and_then(|mut f| std::io::Write::write_all(&mut f, lines.as_bytes()))
                .unwrap();
            agent
        })
        .collect();
    wait_until_or(
        "a fleet-rule ban of the attacker",
        Duration::from_secs(30),
        || {
            let bans = collector.fleet(&["bans"])["data"].as_array().cloned().unwrap_or_default();
            bans.iter()
                .any(|b| b["net"].as_str().is_some_and(|n| n.starts_with(attacker)) && b["origin"] == "fleet-rule")
        },
        || {
            format!(
                "fleet bans {}; detect alerts {:?}",
                collector.fleet(&["bans"]),
                collector.fleet(&["alerts", "--kind", "detect"])
            )
        },
    );
    for agent in &mut agents {
        agent.stop();
    }
}

#[test]
fn a_reload_pointing_the_agent_at_its_broker_sends_the_alerts_it_kept() {
    let broker = Broker::start("reload", &["collector", "host-a"]);
    let collector = Collector::new("reload", &broker, "");
    let mut agent = Agent::plain("host-a", &broker, "1s", "");
    let right = fs::read_to_string(&agent.config).unwrap();
    // A port nothing listens on: the agent keeps its alerts and retries with a growing backoff.
    let unused = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let wrong = right.replace(&format!("127.0.0.1:{}", broker.port()), &format!("127.0.0.1:{unused}"));
    assert_ne!(wrong, right);
    fs::write(&agent.config, &wrong).unwrap();
    agent.start();
    agent.write_files("kept", 20);
    wait_until("20 alerts stored", Duration::from_secs(20), || agent.last_seq() >= 20);
    // Several failed attempts: the backoff has grown past what the test waits below.
    std::thread::sleep(Duration::from_secs(6));
    let status = agent.fleet_status();
    assert_eq!(status["connected"], false, "{status}");
    let last = agent.last_seq();

    fs::write(&agent.config, &right).unwrap();
    agent.daemon.as_ref().unwrap().signal(libc::SIGHUP);
    let epoch = agent.epoch();
    // Connected with the new settings at once, not after the old backoff.
    wait_until("the kept alerts stored after the reload", Duration::from_secs(10), || {
        stored_seqs(&collector, "host-a", epoch) == (1..=last).collect::<Vec<_>>()
    });
    assert_eq!(agent.fleet_status()["connected"], true);
    agent.stop();
}
