//! SIGHUP: the configuration read again. What the daemon can take up while it runs is applied:
//! detectors, rules, trusted addresses, ban durations, TinyIDS servers, the sensor's watch set
//! (added paths walked into the kernel maps, removed ones taken out), the integrity collectors and
//! intervals, the alert outputs (an unchanged one runs on, a changed one is replaced), the metrics
//! endpoint, and the fleet's broker settings. What it cannot (the hooks, the XDP interfaces and
//! settings, state_dir, events_log's path, the map and channel sizes, process_context, turning the
//! fleet on or changing its host id) is named in the log and waits for a restart. A configuration
//! that does not load, or whose collectors, outputs or metrics address cannot be set up, changes
//! nothing.
use std::fmt::Debug;

use crate::config::Config;

/// Debug renders every field of these settings (not all of their types compare with `==`).
fn rendered<T: Debug>(value: &T) -> String {
    format!("{value:?}")
}

/// The configuration's sections as the daemon uses them, each named as the log names it.
#[expect(clippy::type_complexity, reason = "a table of accessors reads better than a trait here")]
const SECTIONS: &[(&str, fn(&Config) -> String)] = &[
    ("detectors ([[logs]], [[journal]], web_roots, rules)", |c| {
        rendered(&(&c.detect.logs, &c.detect.journal, &c.detect.web_roots, &c.detect.rules, c.detect.rules_mode))
    }),
    ("[xdp] trusted", |c| rendered(&c.xdp.trusted)),
    ("[bans]", |c| rendered(&c.bans)),
    ("[[servers]], remote_check_interval", |c| rendered(&(&c.servers, c.remote_check_interval))),
    ("[fleet]", |c| rendered(&c.fleet)),
    ("watch", |c| rendered(&c.watch)),
    ("[[collectors]]", |c| rendered(&c.collectors)),
    ("integrity_interval, verify_interval", |c| rendered(&(c.integrity_interval, c.verify_interval))),
    ("[xdp] (but trusted)", |c| {
        let mut xdp = c.xdp.clone();
        xdp.trusted.clear();
        rendered(&xdp)
    }),
    ("state_dir", |c| rendered(&c.state_dir)),
    ("events_log", |c| rendered(&c.events_log)),
    ("max_watched_inodes, channel_capacity", |c| rendered(&(c.max_watched_inodes, c.channel_capacity))),
    ("process_context", |c| rendered(&c.process_context)),
    ("exclude_hooks", |c| rendered(&c.exclude_hooks)),
    ("[metrics]", |c| rendered(&c.metrics)),
    ("[[outputs]]", |c| rendered(&c.outputs)),
];

/// The sections that differ between `a` and `b`, in table order.
fn differing(a: &Config, b: &Config) -> Vec<&'static str> {
    SECTIONS.iter().filter(|(_, section)| section(a) != section(b)).map(|(name, _)| *name).collect()
}

/// A configuration read again, as the running daemon takes it up.
pub(super) struct Reloaded {
    /// In force from now on: the sections taken up live as read, the others as they run (they
    /// still describe what runs, for the next reload and for what reads them, such as the events
    /// log's path).
    pub(super) config: Config,
    /// Sections changed and taken up now.
    pub(super) applied: Vec<&'static str>,
    /// Sections changed that wait for a restart.
    pub(super) at_restart: Vec<&'static str>,
}

/// What of `read` the running daemon (configured with `running`) takes up: the detectors, the
/// trusted addresses, ban durations, TinyIDS servers, the watch set, collectors and intervals,
/// the metrics endpoint, the outputs, and the fleet's broker settings when the fleet was and
/// stays on with the same host id.
pub(super) fn reload(running: &Config, read: Config) -> Reloaded {
    let mut config = running.clone();
    config.detect = read.detect.clone();
    config.watch = read.watch.clone();
    config.collectors = read.collectors.clone();
    config.integrity_interval = read.integrity_interval;
    config.verify_interval = read.verify_interval;
    config.metrics = read.metrics.clone();
    config.outputs = read.outputs.clone();
    config.xdp.trusted = read.xdp.trusted.clone();
    config.bans = read.bans.clone();
    config.servers = read.servers.clone();
    config.remote_check_interval = read.remote_check_interval;
    if let (Some(running_fleet), Some(read_fleet)) = (&running.fleet, &read.fleet)
        && running_fleet.host_id == read_fleet.host_id
    {
        config.fleet = Some(read_fleet.clone());
    }
    Reloaded { applied: differing(running, &config), at_restart: differing(&config, &read), config }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Config {
        Config::parse(text, "test").unwrap()
    }

    #[test]
    fn an_unchanged_configuration_changes_nothing() {
        let reloaded = reload(&parse(""), parse(""));
        assert!(reloaded.applied.is_empty() && reloaded.at_restart.is_empty());
    }

    #[test]
    fn live_sections_are_taken_up_and_the_others_wait_for_a_restart() {
        let running = parse("");
        let read = parse(
            "watch = [\"/srv\"]\nstate_dir = \"/var/lib/other\"\n[bans]\nmax_duration = \"2d\"\n\
             [xdp]\ntrusted = [\"192.0.2.1\"]\n[metrics]\nlisten = \"127.0.0.1:9464\"\n\
             [[logs]]\nkind = \"sshd\"\npath = \"/var/log/x.log\"\n",
        );
        let reloaded = reload(&running, read);
        assert_eq!(
            reloaded.applied,
            ["detectors ([[logs]], [[journal]], web_roots, rules)", "[xdp] trusted", "[bans]", "watch", "[metrics]"]
        );
        assert_eq!(reloaded.at_restart, ["state_dir"]);
        // The state directory stays what the daemon runs with.
        assert_eq!(reloaded.config.state_dir, running.state_dir);
        assert_eq!(reloaded.config.watch, [std::path::PathBuf::from("/srv")]);
        assert_eq!(reloaded.config.xdp.trusted.len(), 1);
        assert!(reload(&reloaded.config, reloaded.config.clone()).applied.is_empty());
    }

    const FLEET: &str = "[fleet]\nurl = \"amqp://127.0.0.1:5672\"\n";

    #[test]
    fn the_fleet_broker_changes_live_but_its_host_id_or_turning_it_on_waits_for_a_restart() {
        let running = parse(&format!("{FLEET}host_id = \"web1\"\n"));
        let moved = reload(&running, parse("[fleet]\nurl = \"amqp://127.0.0.1:5673\"\nhost_id = \"web1\"\n"));
        assert_eq!((moved.applied, moved.at_restart), (vec!["[fleet]"], vec![]));
        let renamed = reload(&running, parse(&format!("{FLEET}host_id = \"web2\"\n")));
        assert_eq!((renamed.applied, renamed.at_restart), (vec![], vec!["[fleet]"]));
        let turned_on = reload(&parse(""), parse(FLEET));
        assert_eq!((turned_on.applied, turned_on.at_restart), (vec![], vec!["[fleet]"]));
    }
}
