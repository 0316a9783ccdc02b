use std::time::{Duration, SystemTime};

use super::*;
use crate::fleet::message::{AlertMessage, GapMessage, Heartbeat};

fn store() -> (tempfile::TempDir, CentralStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = CentralStore::open_sqlite(&dir.path().join("fleet.db")).unwrap();
    (dir, store)
}

fn at(seconds: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + seconds)
}

fn alert(host: &str, seq: i64, source: Option<&str>) -> Received {
    let mut body = serde_json::json!({"kind": "detect", "rule": "ssh", "time": rfc3339(at(0))});
    if let Some(source) = source {
        body["source"] = source.into();
    }
    Received {
        inbound: Inbound::Alert(AlertMessage {
            v: 1,
            host: host.into(),
            hostname: format!("{host}.example"),
            epoch: 1,
            seq,
            time: rfc3339(at(0)),
            kind: "detect".into(),
            alert: body,
        }),
        received: rfc3339(at(0)),
    }
}

fn heartbeat(host: &str, received: SystemTime) -> Received {
    Received {
        inbound: Inbound::Heartbeat(Box::new(Heartbeat {
            v: 1,
            host: host.into(),
            hostname: format!("{host}.example"),
            epoch: 1,
            time: rfc3339(received),
            version: "0.1.0".into(),
            interval_s: 10,
            uptime_s: 5,
            hooks: Default::default(),
            aggregate: Some("ab".repeat(32)),
            baseline_aggregate: None,
            lost_events: Default::default(),
            backlog: 7,
            last_seq: 3,
        })),
        received: rfc3339(received),
    }
}

#[test]
fn a_batch_stored_twice_is_stored_once() {
    let (_dir, mut store) = store();
    scenario_a_batch_stored_twice_is_stored_once(&mut store);
}

fn scenario_a_batch_stored_twice_is_stored_once(store: &mut CentralStore) {
    let batch: Vec<Received> = (1..=3).map(|seq| alert("web1", seq, Some("192.0.2.7"))).collect();
    let first = store.store_batch(&batch).unwrap();
    assert_eq!((first.alerts_stored, first.duplicates), (3, 0));
    assert_eq!(first.attackers, vec!["192.0.2.7".to_string()]);
    let second = store.store_batch(&batch).unwrap();
    assert_eq!((second.alerts_stored, second.duplicates), (0, 3));
    assert!(second.attackers.is_empty(), "a redelivery is no new witness");
    let alerts = store.alerts(&AlertFilter { limit: 50, ..AlertFilter::default() }).unwrap();
    assert_eq!(alerts.iter().map(|a| a.seq).collect::<Vec<_>>(), vec![1, 2, 3]);
    assert_eq!(alerts[0].alert["rule"], "ssh");
    let newest_two = store.alerts(&AlertFilter { limit: 2, ..AlertFilter::default() }).unwrap();
    assert_eq!(newest_two.iter().map(|a| a.seq).collect::<Vec<_>>(), vec![2, 3]);
    let after = store.alerts(&AlertFilter { limit: 50, after_id: Some(alerts[0].id), ..Default::default() }).unwrap();
    assert_eq!(after.len(), 2);
    // The same alert twice within one batch, and more than one statement's worth of alerts.
    let mut big: Vec<Received> = (4..=250).map(|seq| alert("web1", seq, None)).collect();
    big.push(alert("web1", 4, None));
    let third = store.store_batch(&big).unwrap();
    assert_eq!((third.alerts_stored, third.duplicates), (247, 1));
    let newest = store.alerts(&AlertFilter { limit: 2, ..AlertFilter::default() }).unwrap();
    assert_eq!(newest.iter().map(|a| a.seq).collect::<Vec<_>>(), vec![249, 250]);
}

#[test]
fn gaps_are_recorded_once_and_counted_per_host() {
    let (_dir, mut store) = store();
    scenario_gaps_are_recorded_once_and_counted_per_host(&mut store);
}

fn scenario_gaps_are_recorded_once_and_counted_per_host(store: &mut CentralStore) {
    let gap = Received {
        inbound: Inbound::Gap(GapMessage {
            v: 1,
            host: "web1".into(),
            hostname: "web1.example".into(),
            epoch: 1,
            from: 4,
            to: 9,
            time: rfc3339(at(0)),
        }),
        received: rfc3339(at(0)),
    };
    let outcome = store.store_batch(&[alert("web1", 3, None), gap.clone(), gap]).unwrap();
    assert_eq!((outcome.gaps_stored, outcome.duplicates), (1, 1));
    let hosts = store.hosts().unwrap();
    assert_eq!(hosts.len(), 1);
    assert_eq!((hosts[0].gaps, hosts[0].last_seq), (6, 9));
}

#[test]
fn hosts_are_tracked_by_alerts_and_heartbeats() {
    let (_dir, mut store) = store();
    scenario_hosts_are_tracked_by_alerts_and_heartbeats(&mut store);
}

fn scenario_hosts_are_tracked_by_alerts_and_heartbeats(store: &mut CentralStore) {
    store.store_batch(&[alert("web1", 5, None), alert("web1", 2, None), alert("db1", 1, None)]).unwrap();
    store.store_batch(&[heartbeat("web1", at(1))]).unwrap();
    let hosts = store.hosts().unwrap();
    assert_eq!(hosts.iter().map(|h| h.host.as_str()).collect::<Vec<_>>(), vec!["db1", "web1"]);
    let web1 = &hosts[1];
    assert_eq!((web1.last_seq, web1.backlog, web1.status.as_str()), (5, 7, "ok"));
    assert_eq!(web1.hostname, "web1.example");
    assert_eq!(web1.heartbeat_interval_s, Some(10));
    assert_eq!(web1.last_heartbeat.as_deref(), Some(rfc3339(at(1)).as_str()));
    assert_eq!(hosts[0].last_heartbeat, None);
}

#[test]
fn a_host_goes_silent_and_comes_back_with_an_alert_each_time() {
    let (_dir, mut store) = store();
    scenario_a_host_goes_silent_and_comes_back_with_an_alert_each_time(&mut store);
}

fn scenario_a_host_goes_silent_and_comes_back_with_an_alert_each_time(store: &mut CentralStore) {
    store.store_batch(&[heartbeat("web1", at(0))]).unwrap();
    // Three intervals of 10 s by default: not yet at 30 s, silent after.
    assert!(store.mark_silent(at(30), None).unwrap().is_empty());
    let silent = store.mark_silent(at(31), None).unwrap();
    assert_eq!(silent.iter().map(|h| h.host.as_str()).collect::<Vec<_>>(), vec!["web1"]);
    assert!(store.mark_silent(at(40), None).unwrap().is_empty(), "silent once, alerted once");
    assert_eq!(store.hosts().unwrap()[0].status, "silent");
    let back = store.store_batch(&[heartbeat("web1", at(45))]).unwrap();
    assert_eq!(back.hosts_back, vec!["web1".to_string()]);
    assert_eq!(store.hosts().unwrap()[0].status, "ok");
    let central = store
        .alerts(&AlertFilter { host: Some("web1".into()), limit: 10, ..AlertFilter::default() })
        .unwrap()
        .into_iter()
        .map(|a| (a.epoch, a.seq, a.kind))
        .collect::<Vec<_>>();
    assert_eq!(central, vec![(0, 1, HOST_SILENT.to_string()), (0, 2, HOST_BACK.to_string())]);
    // A configured silent_after replaces the host's own interval.
    assert!(store.mark_silent(at(50), Some(Duration::from_secs(60))).unwrap().is_empty());
    assert_eq!(store.mark_silent(at(106), Some(Duration::from_secs(60))).unwrap().len(), 1);
}

#[test]
fn decisions_are_an_outbox_and_the_newest_per_net_counts() {
    let (_dir, mut store) = store();
    scenario_decisions_are_an_outbox_and_the_newest_per_net_counts(&mut store);
}

fn scenario_decisions_are_an_outbox_and_the_newest_per_net_counts(store: &mut CentralStore) {
    let net = BanNet::parse("198.51.100.0/24").unwrap();
    let now = rfc3339(at(0));
    let ban = store.record_decision(BanAction::Ban, &net, "manual ban", "manual", None, &now).unwrap();
    let expiring = BanNet::parse("192.0.2.1").unwrap();
    store.record_decision(BanAction::Ban, &expiring, "short", "manual", Some(rfc3339(at(10))), &now).unwrap();
    assert_eq!(store.active_bans(&rfc3339(at(5))).unwrap().len(), 2);
    assert_eq!(store.active_bans(&rfc3339(at(11))).unwrap().len(), 1, "expired");
    assert_eq!(store.unpublished_decisions().unwrap().len(), 2);
    store.mark_published(ban.rev).unwrap();
    assert_eq!(store.unpublished_decisions().unwrap().len(), 1);
    let unban = store.record_decision(BanAction::Unban, &net, "lifted", "manual", None, &now).unwrap();
    assert!(unban.rev > ban.rev);
    assert!(store.active_bans(&rfc3339(at(11))).unwrap().is_empty());
    let snapshot = store.snapshot(&rfc3339(at(5))).unwrap();
    assert_eq!((snapshot.rev, snapshot.bans.len()), (unban.rev, 1));
}

#[test]
fn the_fleet_rule_bans_once_enough_hosts_saw_the_attacker() {
    let (_dir, mut store) = store();
    scenario_the_fleet_rule_bans_once_enough_hosts_saw_the_attacker(&mut store);
}

fn scenario_the_fleet_rule_bans_once_enough_hosts_saw_the_attacker(store: &mut CentralStore) {
    let window = Duration::from_secs(600);
    let now = SystemTime::now();
    // `alert()` stamps a fixed past receipt: restamp it now, inside the window.
    let fresh = |host: &str| {
        let mut item = alert(host, 1, Some("203.0.113.9"));
        item.received = rfc3339(now);
        item
    };
    let outcome = store.store_batch(&[fresh("a"), fresh("b")]);
    let attackers = outcome.unwrap().attackers;
    assert!(store.apply_fleet_rule(&attackers, 3, window, Some(Duration::from_secs(3600)), now).unwrap().is_empty());
    let attackers = store.store_batch(&[fresh("c")]).unwrap().attackers;
    let decided = store.apply_fleet_rule(&attackers, 3, window, Some(Duration::from_secs(3600)), now).unwrap();
    assert_eq!(decided.len(), 1);
    assert_eq!(decided[0].origin, "fleet-rule");
    assert_eq!(decided[0].reason, "3 hosts alerted on 203.0.113.9 within 10m");
    let attackers = store.store_batch(&[fresh("d")]).unwrap().attackers;
    assert!(store.apply_fleet_rule(&attackers, 3, window, None, now).unwrap().is_empty(), "already banned");
    assert!(store.apply_fleet_rule(&attackers, 0, window, None, now).unwrap().is_empty(), "rule off");
}

#[test]
fn attackers_are_single_addresses_and_fleet_echoes_are_not_witnesses() {
    assert_eq!(attacker_of("detect", &serde_json::json!({"source": "2001:db8::1"})).as_deref(), Some("2001:db8::1"));
    assert_eq!(
        attacker_of("ban", &serde_json::json!({"net": "192.0.2.1", "source": "ssh-bruteforce"})).as_deref(),
        Some("192.0.2.1")
    );
    assert_eq!(attacker_of("ban", &serde_json::json!({"net": "192.0.2.0/24", "source": "port-scan"})), None);
    assert_eq!(attacker_of("ban", &serde_json::json!({"net": "192.0.2.1", "source": "fleet"})), None);
    assert_eq!(attacker_of("detect", &serde_json::json!({"source": "not an address"})), None);
    assert_eq!(attacker_of("integrity", &serde_json::json!({"source": "192.0.2.1"})), None);
}

#[test]
fn a_newer_schema_is_refused_with_the_database_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fleet.db");
    drop(CentralStore::open_sqlite(&path).unwrap());
    rusqlite::Connection::open(&path).unwrap().pragma_update(None, "user_version", 99).unwrap();
    let error = CentralStore::open_sqlite(&path).err().unwrap().to_string();
    assert!(error.contains("fleet.db") && error.contains("99"), "{error}");
}

#[test]
fn central_alerts_number_themselves_per_host_under_epoch_zero() {
    let (_dir, mut store) = store();
    scenario_central_alerts_number_themselves_per_host_under_epoch_zero(&mut store);
}

fn scenario_central_alerts_number_themselves_per_host_under_epoch_zero(store: &mut CentralStore) {
    store.store_batch(&[heartbeat("web1", at(0))]).unwrap();
    let now = rfc3339(at(1));
    store.insert_fleet_alert("web1", "web1.example", "note", &serde_json::json!({"kind": "note"}), &now).unwrap();
    assert!(!store.mark_back("web1", "web1.example", &now).unwrap(), "it was not silent");
    assert_eq!(store.mark_silent(at(100), None).unwrap().len(), 1);
    assert!(store.mark_back("web1", "web1.example", &rfc3339(at(101))).unwrap());
    let seqs: Vec<(i64, String)> = store
        .alerts(&AlertFilter { limit: 10, ..AlertFilter::default() })
        .unwrap()
        .into_iter()
        .map(|a| (a.seq, a.kind))
        .collect();
    assert_eq!(seqs, vec![(1, "note".into()), (2, HOST_SILENT.into()), (3, HOST_BACK.into())]);
}

type Scenario = fn(&mut CentralStore);

/// The same scenarios on a real PostgreSQL of the test's own (Debian's postgresql, initdb'd in a
/// scratch directory; root, as CI runs), its `public` schema emptied before each.
#[test]
fn the_same_scenarios_pass_on_postgres() {
    let postgres = ids_tests::postgres::Postgres::start("central-scenarios");
    let url = postgres.url();
    let scenarios: &[(&str, Scenario)] = &[
        ("a_batch_stored_twice_is_stored_once", scenario_a_batch_stored_twice_is_stored_once),
        ("gaps_are_recorded_once", scenario_gaps_are_recorded_once_and_counted_per_host),
        ("hosts_are_tracked", scenario_hosts_are_tracked_by_alerts_and_heartbeats),
        ("silence_and_back", scenario_a_host_goes_silent_and_comes_back_with_an_alert_each_time),
        ("decisions", scenario_decisions_are_an_outbox_and_the_newest_per_net_counts),
        ("fleet_rule", scenario_the_fleet_rule_bans_once_enough_hosts_saw_the_attacker),
        ("central_alerts", scenario_central_alerts_number_themselves_per_host_under_epoch_zero),
    ];
    for (name, scenario) in scenarios {
        let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
        client.batch_execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public").unwrap();
        drop(client);
        let mut store = CentralStore::open(&CentralDatabase::Postgres(url.clone())).unwrap();
        eprintln!("postgres: {name}");
        scenario(&mut store);
    }
}
